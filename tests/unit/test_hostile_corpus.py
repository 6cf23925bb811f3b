"""The hostile corpus (tests/helpers/hostile.py) through the typed spec and the planner: every case is refused
naming its field, as `mimoctl plan` shows it. tests/integration/test_hostile_corpus.py sends the same cases to
the real apiserver and, for a few that only the operator can refuse, to the running operator."""

from __future__ import annotations

from collections import Counter

import pytest

from mimo_operator.errors import SpecError
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from tests.helpers.hostile import BASE, Case, corpus

CASES = corpus()


def test_the_base_manifest_is_valid_and_plans() -> None:
    assert plan_deployment(parse_spec(BASE)).nodes_per_replica >= 1


def test_the_corpus_is_large_and_covers_every_kind_of_wrong() -> None:
    kinds = Counter(c.id.split(" ")[0] for c in CASES)
    assert len(CASES) >= 300
    for kind in ("type", "enum", "below", "above", "too", "format", "name", "extraArgs"):
        assert kinds[kind] >= 3, kinds
    assert len({c.manifest["metadata"]["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_case_is_refused_naming_its_field(case: Case) -> None:
    with pytest.raises(SpecError) as raised:
        plan_deployment(parse_spec(case.manifest))
    assert raised.value.field.startswith(case.field), str(raised.value)
    assert str(raised.value).startswith(raised.value.field)
