"""A quantised copy through the running operator: the weights download reads config.json, refuses an AWQ
checkpoint for an FP8 plan, and the deployment's status says why and what would work; no gang is created
and the Job is not retried in a loop (a person must change the spec)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.podrunner import PROCESS_LABEL
from tests.conftest import NodePool, wait_for
from tests.helpers.fakehub import AWQ_QUANTIZATION, FakeHub, tiny_checkpoint
from tests.helpers.specs import a_deployment
from tests.integration.operator_harness import RunningOperator, engine_pods, get, operator_fixture
from tests.integration.test_weights_cluster import claim

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    repo: Path = tmp_path_factory.mktemp("hub-awq") / "repo"
    with FakeHub(tiny_checkpoint(repo, quantization=AWQ_QUANTIZATION), repo="someone/MiMo-V2.5-AWQ") as running:
        yield running


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, hub: FakeHub,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(cluster, tmp_path_factory.mktemp("operator-precision"), [
        "--resync-seconds", "3", "--weights-pod-label", f"{PROCESS_LABEL}=true", "--hub-endpoint", hub.url])


def test_an_awq_copy_is_refused_in_status_with_what_would_work_and_no_gang(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool, hub: FakeHub) -> None:
    node_pool.add(1)
    claim(cluster, namespace, "models")
    manifest = (a_deployment("awq").v25().h200().source(huggingFaceId=hub.repo)
                .cache("shared-volume", claimName="models")
                .set("hardware.nodeSelector", node_pool.selector)
                .set("hardware.tolerations", [node_pool.toleration]).build())
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def refused() -> dict[str, str] | None:
        status = (get(cluster, "mimodeployment", namespace, "awq") or {}).get("status", {})
        condition = next((c for c in status.get("conditions") or [] if c["type"] == "WeightsReady"), None)
        return condition if condition and condition.get("reason") == "UnsupportedPrecision" else None

    condition = wait_for(refused, 120, what="WeightsReady False with reason UnsupportedPrecision")
    assert condition["status"] == "False"
    assert "AWQ checkpoint" in condition["message"]
    assert "spec.model.source.huggingFaceId" in condition["message"]
    assert engine_pods(cluster, namespace, "awq") == []
    # No shard crossed the wire: the refusal came from config.json.
    assert not any(p.endswith(".safetensors") for m, p, _ in hub.requests if m == "GET")
    jobs = cluster.kubectl_json("get", "jobs", "-n", namespace)["items"]
    assert len(jobs) == 1
    assert jobs[0]["status"].get("failed", 0) == 1, "a permanent refusal is not retried by the Job"
