"""The hostile corpus against the real apiserver, and its status-only part against the running operator.

Every admission case is refused by the apiserver naming its field; every status case is stored, and the
operator refuses it in status naming the field, creating nothing, while it keeps serving a valid deployment.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from tests.helpers.hostile import BASE, Case, corpus
from tests.integration.operator_harness import RunningOperator, engine_pods, get, operator_fixture, wait_phase

pytestmark = [pytest.mark.cluster]

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "mimodeployment.yaml"
CASES = corpus()
ADMISSION = [c for c in CASES if c.where == "admission"]
STATUS = [c for c in CASES if c.where == "status"]
_REFUSED = re.compile(r'MiMoDeployment\.serving\.mimo-operator\.io "([^"]*)" is invalid: (.*)')


@pytest.fixture(scope="module")
def created(cluster: LocalCluster) -> Iterator[tuple[str, dict[str, str], set[str]]]:
    """Every case sent in one `kubectl create` of a List: (namespace, refusals by name, names stored)."""
    cluster.apply_crd(CRD_PATH)
    ns = f"hostile-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    items = [c.manifest for c in CASES]
    # A stream of documents, not a List: kubectl validates a List on the client and would refuse it whole.
    result = cluster.kubectl("create", "-n", ns, "-f", "-", check=False, timeout=300,
                             input="\n---\n".join(json.dumps(i) for i in items))
    lines = result.stderr.splitlines()
    refusals = {m.group(1): m.group(2) for m in map(_REFUSED.search, lines) if m}
    # Strict field validation refuses an unknown field before the object has a name to report.
    for case in CASES:
        unknown = next((line for line in lines if f'unknown field "{case.field}"' in line), None)
        if unknown is not None:
            refusals.setdefault(case.manifest["metadata"]["name"], unknown)
    stored = {o["metadata"]["name"] for o in cluster.kubectl_json("get", "mimodeployments", "-n", ns)["items"]}
    try:
        yield ns, refusals, stored
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_crd_s_rules_are_within_the_apiserver_s_cost_limits(created: Any, cluster: LocalCluster) -> None:
    # The CRD was accepted (a rule over its cost budget makes `apply` fail) and is Established.
    crd = cluster.kubectl_json("get", "crd", "mimodeployments.serving.mimo-operator.io")
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"


@pytest.mark.parametrize("case", ADMISSION, ids=lambda c: c.id)
def test_the_apiserver_refuses_it_naming_the_field(created: Any, case: Case) -> None:
    _, refusals, stored = created
    name = case.manifest["metadata"]["name"]
    assert name not in stored, f"the apiserver stored {case.id}"
    message = refusals.get(name)
    assert message is not None, f"no refusal for {name}"
    assert case.field in message, message


@pytest.mark.parametrize("case", STATUS, ids=lambda c: c.id)
def test_what_only_the_operator_can_check_is_stored(created: Any, case: Case) -> None:
    _, refusals, stored = created
    name = case.manifest["metadata"]["name"]
    assert name in stored, refusals.get(name)


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(cluster, tmp_path_factory.mktemp("operator"), ["--resync-seconds", "5"])


# One of each way the operator refuses: SGLang's parser, a flag the plan owns, the planner's arithmetic.
_REPRESENTATIVE = ("extraArgs int flag given a word", "extraArgs flag the plan owns", "pro on one h100 node")


def test_the_operator_refuses_in_status_naming_the_field_and_creates_nothing(
        cluster: LocalCluster, operator: RunningOperator, namespace: str) -> None:
    cases = [c for c in STATUS if c.id in _REPRESENTATIVE]
    assert len(cases) == len(_REPRESENTATIVE)
    good = json.loads(json.dumps(BASE))
    good["metadata"]["name"] = "good"
    good["spec"]["engine"] = {"type": "simulated"}
    good["spec"]["network"] = {"mode": "podNetwork"}
    good["spec"]["model"] = {"variant": "MiMo-V2.5"}
    good["spec"]["scheduling"] = {}
    good["spec"]["hardware"] = {"gpuType": "H200-141GB"}
    for manifest in [good] + [c.manifest for c in cases]:
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    for case in cases:
        name = case.manifest["metadata"]["name"]
        obj = wait_phase(cluster, namespace, name, "Refused", timeout=60)
        planned = next(c for c in obj["status"]["conditions"] if c["type"] == "Planned")
        assert planned["status"] == "False"
        assert case.field in planned["message"], planned
        assert engine_pods(cluster, namespace, name) == []
        assert get(cluster, "deployment", namespace, f"{name}-router") is None
        assert get(cluster, "service", namespace, f"{name}-router") is None
    # The operator kept serving the valid one throughout.
    assert (get(cluster, "mimodeployment", namespace, "good") or {}).get("status", {}).get("phase") != "Refused"
