"""The operator's command line: a watched namespace is a namespace's name (the operator's pod watch opens
one watch per name), never a pattern."""

from __future__ import annotations

import pytest

from mimo_operator.__main__ import parse_args


def test_watched_namespaces_are_names() -> None:
    assert parse_args(["-n", "team-a", "--namespace", "b2"]).namespace == ["team-a", "b2"]
    assert parse_args([]).namespace == []


@pytest.mark.parametrize("bad", ["team-*", "!kube-system", "Team", "-a", "a" * 64, ""])
def test_a_pattern_or_an_invalid_name_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([f"--namespace={bad}"])
    assert "a namespace's name" in capsys.readouterr().err
