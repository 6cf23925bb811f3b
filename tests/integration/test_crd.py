"""The CRD in a real apiserver: it loads, teaches through kubectl explain, refuses the invalid corpus and
defaults the valid one exactly as the typed spec does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mimo_operator.errors import PlanRefused, SpecError
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from mimo_operator.versions import WORKER_IMAGE
from tests.conftest import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "mimodeployment.yaml"
CRD_NAME = "mimodeployments.serving.mimo-operator.io"
INVALID = sorted((REPO / "tests" / "manifests" / "invalid").glob("*.yaml"))
VALID = sorted((REPO / "tests" / "manifests" / "valid").glob("*.yaml"))


def expected_error(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            return line.removeprefix("# expect: ").strip()
    raise AssertionError(f"{path.name} has no '# expect:' line")


def python_refusal(obj: Any) -> SpecError | None:
    try:
        plan_deployment(parse_spec(obj))
    except SpecError as error:
        return error
    return None


@pytest.fixture(scope="module")
def crd(cluster: Any) -> Any:
    cluster.apply_crd(CRD_PATH)
    return cluster


@pytest.fixture(scope="module")
def ns(crd: Any) -> Iterator[str]:
    name = f"crd-{uuid.uuid4().hex[:8]}"
    crd.kubectl("create", "namespace", name)
    yield name
    crd.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_the_crd_is_established_and_answers_to_its_short_name(crd: Any, ns: str) -> None:
    result = crd.kubectl("get", "mimo", "-n", ns)
    assert result.returncode == 0
    names = crd.kubectl_json("get", "crd", CRD_NAME)["spec"]["names"]
    assert names["shortNames"] == ["mimo"]
    assert names["kind"] == "MiMoDeployment"


def explain(crd: Any, field: str) -> str:
    # The apiserver publishes a new CRD's OpenAPI a little after it is Established.
    def attempt() -> str:
        result = crd.kubectl("explain", field, check=False)
        return result.stdout if result.returncode == 0 else ""

    text: str = wait_for(attempt, timeout=90, what=f"kubectl explain {field}")
    return text


def test_kubectl_explain_shows_the_descriptions(crd: Any) -> None:
    model = explain(crd, "mimodeployment.spec.model")
    assert "The checkpoint to serve and where its weights come from." in model
    for field in ("variant", "precision", "contextLength", "cache"):
        assert field in model
    gpu = explain(crd, "mimo.spec.hardware.gpuType")
    assert "A GPU from the operator's table" in gpu
    parallelism = explain(crd, "mimo.spec.parallelism.attentionDataParallel")
    assert "--attn-dp-size" in parallelism


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_refused_with_the_field_named(crd: Any, ns: str, path: Path) -> None:
    expect = expected_error(path)
    text = path.read_text()
    manifest = yaml.safe_load(text)
    refusal = python_refusal(manifest)
    assert refusal is not None, f"{path.name}: the planner accepts it"
    created = crd.kubectl("create", "-n", ns, "-f", "-", input=text, check=False)
    if isinstance(refusal, PlanRefused):
        # Well-formed but unplannable: the apiserver stores it, the operator refuses it with the reason.
        assert created.returncode == 0, f"apiserver refused a plannable-shape object: {created.stderr}"
        live = crd.kubectl_json("get", "mimodeployment", manifest["metadata"]["name"], "-n", ns)
        crd.kubectl("delete", "mimodeployment", manifest["metadata"]["name"], "-n", ns)
        live_refusal = python_refusal(live)
        assert live_refusal is not None
        assert expect in str(live_refusal)
    else:
        # A schema or rule violation: the apiserver must refuse it as parse_spec does.
        assert created.returncode != 0, f"the apiserver accepted {path.name}; parse_spec says: {refusal}"
        assert expect in created.stderr, created.stderr


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_manifest_is_accepted_with_the_model_s_defaults(crd: Any, ns: str, path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    name = manifest["metadata"]["name"]
    crd.kubectl("create", "-n", ns, "-f", "-", input=path.read_text())
    try:
        live = crd.kubectl_json("get", "mimodeployment", name, "-n", ns)
    finally:
        crd.kubectl("delete", "mimodeployment", name, "-n", ns, "--wait=false")
    # What the apiserver stored, defaults applied, is exactly what the typed spec makes of the manifest.
    typed = parse_spec(manifest).model_dump(by_alias=True, exclude_none=True)
    assert live["spec"] == typed
    assert live["spec"]["engine"]["image"] == WORKER_IMAGE
    # Defaults no manifest of the corpus sets, filled in by the apiserver:
    assert live["spec"]["engine"]["watchdogTimeoutSeconds"] == 3600
    assert live["spec"]["router"]["replicas"] == 1
    assert live["spec"]["model"]["cache"]["gateOnWeightsReady"] is True
    assert plan_deployment(parse_spec(live)).nodes_per_replica >= 1


def test_scale_and_status_subresources_and_printer_columns(crd: Any, ns: str) -> None:
    path = REPO / "tests" / "manifests" / "valid" / "pro-fp8-h200-rdma.yaml"
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    crd.kubectl("create", "-n", ns, "-f", "-", input=path.read_text())
    try:
        crd.kubectl("scale", "mimodeployment", name, "-n", ns, "--replicas=3")
        assert crd.kubectl_json("get", "mimodeployment", name, "-n", ns)["spec"]["replicas"] == 3
        status = {"status": {"phase": "Progressing", "replicas": 3, "desiredReplicas": 3, "nodes": 6,
                             "readyReplicas": 1, "queue": 7,
                             "kvCacheUsage": 0.42, "selector": "mimo.dev/deployment=" + name,
                             "plan": {"nodesPerReplica": 2, "gpusPerReplica": 16}}}
        crd.kubectl("patch", "mimodeployment", name, "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))
        scale = json.loads(crd.kubectl(
            "get", "--raw", f"/apis/serving.mimo-operator.io/v1alpha1/namespaces/{ns}/mimodeployments/{name}/scale"
        ).stdout)
        assert scale["spec"]["replicas"] == 3
        assert scale["status"]["replicas"] == 3
        assert scale["status"]["selector"] == "mimo.dev/deployment=" + name
        table = crd.kubectl("get", "mimo", name, "-n", ns).stdout.splitlines()
        assert table[0].split() == ["NAME", "VARIANT", "READY", "DESIRED", "NODES", "KV", "QUEUE", "PHASE", "AGE"]
        assert table[1].split()[:8] == [name, "MiMo-V2.5-Pro", "1", "3", "6", "0.42", "7", "Progressing"]
        # A spec write does not touch status, and a status write does not touch spec.
        assert crd.kubectl_json("get", "mimodeployment", name, "-n", ns)["spec"]["replicas"] == 3
    finally:
        crd.kubectl("delete", "mimodeployment", name, "-n", ns, "--wait=false")
