"""The operator gates gangs on their weights: with a shared-volume cache, a 2-replica deployment causes one
download (a real one, from the fake hub, by a Job whose pod runs as a local process), no gang exists until
the checkpoint is verified, and then both gangs start reading the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.podrunner import PROCESS_LABEL
from tests.conftest import NodePool, wait_for
from tests.helpers.fakehub import Checkpoint, FakeHub, tiny_checkpoint
from tests.helpers.specs import a_deployment
from tests.integration.operator_harness import RunningOperator, engine_pods, get, operator_fixture, wait_phase
from tests.integration.test_weights_cluster import TOKEN, claim, secret

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return tiny_checkpoint(tmp_path_factory.mktemp("hub") / "repo")


@pytest.fixture(scope="module")
def hub(ckpt: Checkpoint) -> Iterator[FakeHub]:
    with FakeHub(ckpt) as running:
        running.faults.require_token = TOKEN
        yield running


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, hub: FakeHub,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(cluster, tmp_path_factory.mktemp("operator-weights"), [
        "--resync-seconds", "3", "--weights-pod-label", f"{PROCESS_LABEL}=true", "--hub-endpoint", hub.url])


def test_gangs_wait_for_one_verified_download_then_read_the_cache(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool, hub: FakeHub,
        ckpt: Checkpoint) -> None:
    node_pool.add(2)
    claim(cluster, namespace, "models")
    secret(cluster, namespace)
    shard = ckpt.shards()[0]
    hub.faults.stall_after[shard] = ckpt.files[shard] // 2  # hold the download half-way
    manifest = (a_deployment("cached").v25().h200().replicas(2).source(huggingFaceId=hub.repo)
                .set("model.tokenSecretRef", {"name": "hf"}).cache("shared-volume", claimName="models")
                .set("hardware.nodeSelector", node_pool.selector)
                .set("hardware.tolerations", [node_pool.toleration]).build())
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    # The hub holds the shard half-way; it is released well inside the client's read timeout (10 s), so the shard
    # crosses the wire once. Progress in status is written at most once a minute, so the wait is on the hub.
    wait_for(lambda: hub.bytes_sent.get(shard, 0) >= ckpt.files[shard] // 2, 90, interval=0.2,
             what="the download to reach the held shard")

    def waiting() -> dict[str, object] | None:
        status = (get(cluster, "mimodeployment", namespace, "cached") or {}).get("status", {})
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        return status if conditions.get("WeightsReady", {}).get("status") == "False" else None

    status = wait_for(waiting, 5, interval=0.2, what="WeightsReady False while the download runs")
    assert status["weights"], "the download's state is in status"  # type: ignore[index]
    assert engine_pods(cluster, namespace, "cached") == [], "no GPU waits on a download"

    hub.release_stalls()
    obj = wait_phase(cluster, namespace, "cached", "Ready", timeout=120)
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "WeightsReady")["status"] == "True"
    jobs = cluster.kubectl_json("get", "jobs", "-n", namespace)["items"]
    assert len(jobs) == 1, "one download for the whole deployment"
    for path in ckpt.needed():
        assert hub.bytes_sent[path] == ckpt.files[path], f"{path} crossed the wire exactly once"
    pods = engine_pods(cluster, namespace, "cached")
    assert len({p["metadata"]["labels"]["mimo-operator.io/gang"] for p in pods}) == 2
    plan = json.loads(pods[0]["metadata"]["annotations"]["mimo-operator.io/launch-plan"])
    argv = plan["engine"]["ranks"][0]["argv"]
    assert argv[argv.index("--model-path") + 1] == obj["status"]["weights"]["modelPath"]
    assert Path(obj["status"]["weights"]["modelPath"]).parts[1] == "mimo-cache"
    for kind in ("configmaps", "events", "jobs", "pods", "mimodeployments"):
        assert TOKEN not in cluster.kubectl("get", kind, "-n", namespace, "-o", "json").stdout, kind
