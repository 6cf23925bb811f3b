"""The weights cache on the local cluster: ensure_weights against the real API, the real Job controller
and scheduler, with download and prefetch pods running the real download code as local processes
against the fake hub on loopback.

The local cluster's fake nodes share one machine, so a hostPath is one directory for all of them; the
download's per-directory lock makes their prefetch pods take turns (on real nodes each has its own disk).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mimo_operator.build import BuildContext
from mimo_operator.build.weights import WeightsOptions, cache_ref, weights_node_affinity
from mimo_operator.kube import Kube, KubeConfig
from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.podrunner import PROCESS_LABEL
from mimo_operator.localcluster.processes import free_port
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from mimo_operator.weights import WeightsProbe, WeightsState, ensure_weights
from tests.conftest import NodePool
from tests.helpers.fakehub import Checkpoint, FakeHub, tiny_checkpoint
from tests.helpers.specs import a_deployment

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TOKEN = "hf_clusterTOKEN0123456789abcdefghij"  # what must never show up in the cluster


def kube_of(cluster: LocalCluster) -> Kube:
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    server, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    return Kube(KubeConfig(server=server["server"], ca_data=server["certificate-authority-data"],
                           cert_data=user["client-certificate-data"], key_data=user["client-key-data"]))


@pytest.fixture
def ckpt(tmp_path: Path) -> Checkpoint:
    return tiny_checkpoint(tmp_path / "repo")


@pytest.fixture
def hub(ckpt: Checkpoint) -> Iterator[FakeHub]:
    with FakeHub(ckpt) as running:
        running.faults.require_token = TOKEN
        yield running


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[Kube]:
    client = kube_of(cluster)
    yield client
    await client.close()


@pytest.fixture
async def probe() -> AsyncIterator[WeightsProbe]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield WeightsProbe(session)


def options_for(hub: FakeHub) -> WeightsOptions:
    # The operator passes its configured extra pod labels; here the local cluster's process label. The
    # status port is free on this machine: kwok hands out pod IPs per node, so pods on two fake nodes may
    # share an IP here (never in a real cluster) and a fixed port could already be taken on it.
    return WeightsOptions(pod_labels=((PROCESS_LABEL, "true"),), hub_endpoint=hub.url, workers=4,
                          cpu="100m", memory="256Mi", status_port=free_port())


def context(manifest: dict[str, Any], namespace: str) -> BuildContext:
    spec = parse_spec(manifest)
    name = manifest["metadata"]["name"]
    return BuildContext(name=name, namespace=namespace, uid=f"uid-{name}", spec=spec, plan=plan_deployment(spec))


def secret(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": namespace},
        "data": {"token": base64.b64encode(TOKEN.encode()).decode()}}))


def claim(cluster: LocalCluster, namespace: str, name: str) -> None:
    """A PVC bound to a PV of its own, so the scheduler admits pods mounting it (the pod runner maps every
    claim to one directory per namespace and claim, as a ReadWriteMany volume would be shared)."""
    pv = f"pv-{namespace}-{name}"[:63]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
                  "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/{pv}"},
                  "claimRef": {"namespace": namespace, "name": name}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": pv,
                  "resources": {"requests": {"storage": "100Gi"}}}},
    ]}))


async def until(predicate: Any, limit: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out after {limit:.0f} s waiting for {what}")
        await asyncio.sleep(0.5)


def no_token_anywhere(cluster: LocalCluster, namespace: str, states: list[WeightsState]) -> None:
    for kind in ("configmaps", "events", "jobs", "pods"):
        text = cluster.kubectl("get", kind, "-n", namespace, "-o", "json").stdout
        assert TOKEN not in text, kind
    for state in states:
        assert TOKEN not in json.dumps(state.status()) + "".join(e.message for e in state.events)
    logs = list((cluster.state_dir / "pods" / namespace).rglob("*.log"))
    assert logs  # the download pods did run and log
    for log in logs:
        assert TOKEN not in log.read_text(errors="replace"), log


async def test_two_deployments_with_a_shared_volume_cause_one_download(
        cluster: LocalCluster, namespace: str, hub: FakeHub, ckpt: Checkpoint, kube: Kube,
        probe: WeightsProbe) -> None:
    claim(cluster, namespace, "models")
    secret(cluster, namespace)
    base = (a_deployment().v25().h200().simulated().source(huggingFaceId=hub.repo)
            .set("model.tokenSecretRef", {"name": "hf"}).cache("shared-volume", claimName="models"))
    a, b = context(base.named("alpha").replicas(2).build(), namespace), context(base.named("beta").build(), namespace)
    options = options_for(hub)
    shard = ckpt.shards()[0]
    hub.faults.stall_after[shard] = ckpt.files[shard] // 2  # hold the download so its progress can be seen
    states: list[WeightsState] = []

    async def downloading() -> WeightsState | None:
        for ctx in (a, b):
            states.append(await ensure_weights(kube, ctx, options, probe=probe))
        last = states[-1]
        return last if last.progress is not None and last.progress.bytes_done > 0 else None

    seen = await until(downloading, 90, "the download Job's progress")
    assert seen.reason == "Downloading"
    assert seen.blocks_gangs
    assert seen.progress is not None
    assert seen.progress.bytes_total == sum(ckpt.files[p] for p in ckpt.needed())
    hub.release_stalls()

    async def ready() -> bool:
        got = [await ensure_weights(kube, ctx, options, probe=probe) for ctx in (a, b)]
        states.extend(got)
        return all(s.ready for s in got)

    await until(ready, 90, "the weights to be ready for both deployments")
    jobs = cluster.kubectl_json("get", "jobs", "-n", namespace, "-l", "app.kubernetes.io/component=weights")["items"]
    assert len(jobs) == 1
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "weights.mimo-operator.io/role=download")
    assert len(pods["items"]) == 1
    # One actual download: every needed file crossed the wire once, and nothing else did.
    for path in ckpt.needed():
        assert hub.bytes_sent[path] == ckpt.files[path], path
    assert set(hub.bytes_sent) == set(ckpt.needed())
    ref = cache_ref(a.spec, a.plan)
    assert ref is not None
    on_volume = cluster.state_dir / "volumes" / namespace / "models" / "weights" / ref.key
    assert (on_volume / ".mimo" / "complete.json").is_file()
    assert (on_volume / shard).read_bytes() == (ckpt.root / shard).read_bytes()
    assert states[-1].model_path == f"/mimo-cache/weights/{ref.key}"
    no_token_anywhere(cluster, namespace, states)


def pod_with(name: str, pool: NodePool, affinity: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeSelector": pool.selector, "tolerations": [pool.toleration],
        "containers": [{"name": "engine", "image": "engine", "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
    }
    if affinity:
        spec["affinity"] = {"nodeAffinity": affinity}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def test_node_local_weights_label_the_nodes_and_gangs_land_only_there(
        cluster: LocalCluster, namespace: str, hub: FakeHub, ckpt: Checkpoint, kube: Kube, probe: WeightsProbe,
        node_pool: NodePool, tmp_path: Path) -> None:
    secret(cluster, namespace)
    pool_nodes = node_pool.add(2)
    base = (a_deployment().v25().h200().simulated().source(huggingFaceId=hub.repo)
            .set("model.tokenSecretRef", {"name": "hf"})
            .cache("node-local", nodeLocalPath=str(tmp_path / "node-disk"))
            .set("hardware.nodeSelector", node_pool.selector)
            .set("hardware.tolerations", [node_pool.toleration]))
    first = context(base.named("first").build(), namespace)
    options = options_for(hub)
    ref = cache_ref(first.spec, first.plan)
    assert ref is not None
    states: list[WeightsState] = []

    async def all_labelled() -> bool:
        state = await ensure_weights(kube, first, options, probe=probe)
        states.append(state)
        return len(state.nodes_ready) == len(pool_nodes)

    await until(all_labelled, 120, "both pool nodes to hold the weights")
    assert states[-1].ready
    assert states[-1].nodes_eligible == len(pool_nodes)
    labelled = {n["metadata"]["name"] for n in cluster.kubectl_json("get", "nodes", "-l", f"{ref.node_label}=ready")[
        "items"]}
    assert labelled == set(pool_nodes)  # the cluster's other GPU nodes are not eligible: not labelled
    for path in ckpt.needed():  # one download: the second prefetch pod waited and found it complete
        assert hub.bytes_sent[path] == ckpt.files[path], path
    assert not cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "weights.mimo-operator.io/role=prefetch")[
        "items"]

    # A second deployment of the same checkpoint: ready at once, no pod, no byte from the hub.
    hub.reset_counters()
    second = context(base.named("second").build(), namespace)
    again = await ensure_weights(kube, second, options, probe=probe)
    assert again.ready
    assert again.events == ()  # the record exists: this deployment is only added to its users
    assert hub.requests == []
    assert not cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "weights.mimo-operator.io/role")["items"]

    # The real scheduler: a new eligible node without the weights gets no gang pod; without the terms it would.
    fresh = node_pool.add(1)[0]
    affinity = weights_node_affinity(first.spec, first.plan)
    assert affinity is not None
    for i in range(3):
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod_with(f"gang-{i}", node_pool,
                                                                                     affinity)))

    async def placed() -> dict[str, str] | None:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-o", "json")["items"]
        gang = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods
                if p["metadata"]["name"].startswith("gang-")}
        unschedulable = [p for p in pods if p["metadata"]["name"].startswith("gang-") and any(
            c.get("reason") == "Unschedulable" for c in (p.get("status") or {}).get("conditions") or [])]
        return gang if len([n for n in gang.values() if n]) == 2 and unschedulable else None

    gang = await until(placed, 60, "two gang pods placed and one unschedulable")
    assert {n for n in gang.values() if n} == set(pool_nodes)
    assert fresh not in gang.values()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod_with("control", node_pool, None)))

    async def control_on_fresh() -> bool:
        pod = cluster.kubectl_json("get", "pod", "control", "-n", namespace)
        return bool(pod["spec"].get("nodeName") == fresh)

    await until(control_on_fresh, 60, "a pod without the weights terms to use the fresh node")
    no_token_anywhere(cluster, namespace, states)
    for node in pool_nodes:  # leave the shared cluster's nodes as they were
        cluster.kubectl("label", "node", node, f"{ref.node_label}-", check=False)
