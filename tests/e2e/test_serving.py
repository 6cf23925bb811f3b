"""End to end on the local cluster: the operator (under its chart RBAC) runs gangs whose pods are real
processes — the worker with Ray, the simulated SGLang engine — behind the real sglang-router, and a load
generator drives the autoscaler up and back down."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.podrunner import PROCESS_LABEL
from tests.conftest import NodePool, wait_for
from tests.helpers.specs import DeploymentBuilder, a_deployment
from tests.integration.operator_harness import RunningOperator, get, operator_fixture, wait_phase

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (the worker extra)"),
    pytest.mark.skipif(importlib.util.find_spec("sglang_router") is None, reason="sglang-router is not installed"),
]


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(cluster, tmp_path_factory.mktemp("operator-e2e"),
                                ["--backoff-seconds", "2", "--distinct-gang-ports", "--resync-seconds", "5"])


def rehearsal(pool: NodePool, name: str = "v25") -> DeploymentBuilder:
    """MiMo-V2.5 on one 8×H200 node per replica, simulated: every pod a real process here. Pod network:
    the local cluster's nodes share one address, so hostNetwork pods could not be told apart."""
    return (a_deployment(name).v25().h200().simulated().network("podNetwork")
            .set("model.contextLength", 8192)
            .set("engine.maxRunningRequests", 8)
            .set("engine.simulation", {"speedup": 1.0})
            .set("hardware.nodeSelector", pool.selector)
            .set("hardware.tolerations", [pool.toleration])
            .set("podTemplate", {"labels": {PROCESS_LABEL: "true"}})
            .set("autoscaling.drainTimeoutSeconds", 60))


def router_address(cluster: LocalCluster, namespace: str, name: str) -> str:
    def ready_router() -> str | None:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                    f"mimo-operator.io/deployment={name},app.kubernetes.io/component=router")["items"]
        for pod in pods:
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
            if ready:
                return f"http://{pod['status']['podIP']}:8080"
        return None

    address: str = wait_for(ready_router, 90, what="the router pod to be ready")
    return address


def complete(base: str, max_tokens: int, prompt_tokens: int = 256, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"model": "XiaomiMiMo/MiMo-V2.5", "prompt": "x" * (4 * prompt_tokens),
                       "max_tokens": max_tokens, "mimo_prompt_tokens": prompt_tokens}).encode()
    request = urllib.request.Request(f"{base}/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, {"error": e.read().decode(errors="replace")}
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        return 0, {"error": str(e)}


def routed(base: str) -> bool:
    status, _ = complete(base, 4, prompt_tokens=16, timeout=30)
    return status == 200


def test_a_simulated_replica_serves_through_the_real_router(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(1)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(rehearsal(node_pool).replicas(1).build()))
    obj = wait_phase(cluster, namespace, "v25", "Ready", timeout=240)
    assert obj["status"]["readyReplicas"] == 1
    base = router_address(cluster, namespace, "v25")
    wait_for(lambda: routed(base), 120, what="the router to discover the ready head")
    status, body = complete(base, 32)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 32


class Load:
    """Closed-loop clients through the router; the number of clients can change while it runs."""

    def __init__(self, base: str, max_tokens: int) -> None:
        self.base = base
        self.max_tokens = max_tokens
        self.clients = 0
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def set_clients(self, n: int) -> None:
        self.clients = n
        while len(self.threads) < n:
            index = len(self.threads)
            t = threading.Thread(target=self._client, args=(index,), daemon=True)
            self.threads.append(t)
            t.start()

    def _client(self, index: int) -> None:
        while not self.stop.is_set():
            if index >= self.clients:
                time.sleep(0.2)
                continue
            status, body = complete(self.base, self.max_tokens)
            if status == 200:
                self.ok += 1
            else:
                self.failed.append(f"{status}: {body}")

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)


def wait_spec_replicas(cluster: LocalCluster, namespace: str, name: str, replicas: int,
                       timeout: float) -> dict[str, Any]:
    """The deployment once the autoscaler has set ``replicas`` and said why in status."""
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = get(cluster, "mimodeployment", namespace, name) or {}
        # spec.replicas is written through /scale mid-reconcile and the decision with the reconcile's status
        # write at its end: both, or a read between them finds the count without its reason.
        decision = last.get("status", {}).get("lastScaleDecision") or {}
        return last if last.get("spec", {}).get("replicas") == replicas and decision.get("to") == replicas else None

    try:
        result: dict[str, Any] = wait_for(check, timeout, what=f"the autoscaler to set {replicas} replicas")
    except pytest.fail.Exception as e:
        status = last.get("status", {})
        raise AssertionError(f"{e}; autoscaling said: {status.get('autoscaling')}, kv {status.get('kvCacheUsage')}, "
                             f"queue {status.get('queue')}") from None
    return result


def scale_events(cluster: LocalCluster, namespace: str) -> list[str]:
    items = cluster.kubectl_json("get", "events", "-n", namespace)["items"]
    return [f"{e['reason']}: {e['message']}" for e in items if e["reason"] in ("ScaledUp", "ScaledDown")]


def test_rising_load_adds_a_gang_and_falling_load_drains_one_without_failing_a_request(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(3)
    spec = rehearsal(node_pool).replicas(1).set("autoscaling", {
        "enabled": True, "minReplicas": 1, "maxReplicas": 2, "scaleUpWindowSeconds": 30,
        "scaleDownWindowSeconds": 60, "drainTimeoutSeconds": 120})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(spec.build()))
    wait_phase(cluster, namespace, "v25", "Ready", timeout=240)
    base = router_address(cluster, namespace, "v25")
    wait_for(lambda: routed(base), 120, what="the router to discover the ready head")

    load = Load(base, max_tokens=256)
    try:
        load.set_clients(24)  # three times what one replica runs at once (maxRunningRequests 8)
        obj = wait_spec_replicas(cluster, namespace, "v25", 2, 150)
        decision = obj["status"]["lastScaleDecision"]
        assert (decision["from"], decision["to"]) == (1, 2)
        wait_for(lambda: (get(cluster, "mimodeployment", namespace, "v25") or {}).get("status", {})
                 .get("readyReplicas") == 2, 240, what="the second gang to serve")
        time.sleep(20)
        obj = get(cluster, "mimodeployment", namespace, "v25")
        assert obj is not None
        assert obj["spec"]["replicas"] == 2, "no further gang at maxReplicas"

        load.set_clients(1)
        wait_spec_replicas(cluster, namespace, "v25", 1, 300)
        wait_for(lambda: len({p["metadata"]["labels"]["mimo-operator.io/gang"] for p in cluster.kubectl_json(
            "get", "pods", "-n", namespace, "-l", "mimo-operator.io/deployment=v25,app.kubernetes.io/component=engine")
            ["items"]}) == 1, 240, what="the drained gang's pods to go")
    finally:
        load.close()
    assert load.ok > 20
    assert load.failed == [], load.failed[:5]
    events = scale_events(cluster, namespace)
    assert any(e.startswith("ScaledUp: 1 → 2") for e in events), events
    assert any(e.startswith("ScaledDown: 2 → 1") for e in events), events
    drained = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "GangDraining" in drained


def test_a_deployment_at_zero_gangs_scales_from_zero_on_the_routers_refusals_and_back_to_zero(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(1)
    spec = rehearsal(node_pool, "zero").replicas(0).set("autoscaling", {
        "enabled": True, "minReplicas": 0, "maxReplicas": 1, "scaleUpWindowSeconds": 30,
        "scaleDownWindowSeconds": 30, "drainTimeoutSeconds": 30})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(spec.build()))
    base = router_address(cluster, namespace, "zero")
    time.sleep(25)  # two scrapes of the router with no request: nothing to serve, no gang
    obj = get(cluster, "mimodeployment", namespace, "zero")
    assert obj is not None
    assert obj["spec"]["replicas"] == 0, obj.get("status", {}).get("autoscaling")
    engines = "mimo-operator.io/deployment=zero,app.kubernetes.io/component=engine"
    assert cluster.kubectl_json("get", "pods", "-n", namespace, "-l", engines)["items"] == []

    # A client retries while the router answers 503 (no available workers); those refusals are the demand.
    refused = 0

    def served() -> bool:
        nonlocal refused
        status, _ = complete(base, 8, prompt_tokens=64, timeout=30)
        if status == 503:
            refused += 1
            time.sleep(1.0)
        return status == 200

    wait_for(served, 360, what="a request to be served after scaling from zero")
    assert refused > 0, "the first requests found no gang"
    obj = get(cluster, "mimodeployment", namespace, "zero")
    assert obj is not None
    decision = obj["status"]["lastScaleDecision"]
    assert (decision["from"], decision["to"]) == (0, 1)
    assert "scale from zero" in decision["reason"]

    # No request for the stabilisation window: back to zero gangs.
    wait_spec_replicas(cluster, namespace, "zero", 0, 240)
    wait_for(lambda: cluster.kubectl_json("get", "pods", "-n", namespace, "-l", engines)["items"] == [], 180,
             what="the gang's pods to go")


def router_workers(base: str) -> str:
    try:
        with urllib.request.urlopen(f"{base}/workers", timeout=10) as resp:
            return str(resp.read()[:2000])
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        return str(e)


def pool_gangs(cluster: LocalCluster, namespace: str, name: str, pool: str) -> set[str]:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                f"mimo-operator.io/deployment={name},app.kubernetes.io/component=engine,"
                                f"mimo-operator.io/pool={pool}")["items"]
    return {p["metadata"]["labels"]["mimo-operator.io/gang"] for p in pods}


def wait_pool_ready(cluster: LocalCluster, namespace: str, name: str, pool: str, ready: int, timeout: float) -> None:
    def check() -> bool:
        status = (get(cluster, "mimodeployment", namespace, name) or {}).get("status", {})
        return bool(((status.get("pools") or {}).get(pool) or {}).get("readyReplicas") == ready)

    wait_for(check, timeout, what=f"{ready} ready {pool} gang(s)")


def test_a_pd_rehearsal_serves_through_the_router_in_pd_mode_while_each_pool_scales_up_and_drains(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(3)
    spec = rehearsal(node_pool, "pd").set("disaggregation", {
        "typicalPromptTokens": 1024, "prefill": {"replicas": 1}, "decode": {"replicas": 1}})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(spec.build()))
    obj = wait_phase(cluster, namespace, "pd", "Ready", timeout=300)
    assert {p: obj["status"]["pools"][p]["phase"] for p in ("prefill", "decode")} == {
        "prefill": "Ready", "decode": "Ready"}
    base = router_address(cluster, namespace, "pd")
    wait_for(lambda: routed(base), 120, what="the PD router to discover both pools")

    load = Load(base, max_tokens=64)
    try:
        load.set_clients(4)
        for pool in ("prefill", "decode"):
            first = pool_gangs(cluster, namespace, "pd", pool)
            cluster.kubectl("patch", "mimodeployment", "pd", "-n", namespace, "--type", "merge", "-p",
                            json.dumps({"spec": {"disaggregation": {pool: {"replicas": 2}}}}))
            wait_pool_ready(cluster, namespace, "pd", pool, 2, 240)
            served = load.ok + 8
            try:
                wait_for(lambda n=served: load.ok > n, 120,  # type: ignore[misc]
                         what=f"requests served with two {pool} gangs")
            except pytest.fail.Exception as e:
                raise AssertionError(f"{e}: {load.ok} served, failed {load.failed[:3]}; the router's workers: "
                                     f"{router_workers(base)}") from None
            cluster.kubectl("patch", "mimodeployment", "pd", "-n", namespace, "--type", "merge", "-p",
                            json.dumps({"spec": {"disaggregation": {pool: {"replicas": 1}}}}))
            wait_for(lambda p=pool: len(pool_gangs(cluster, namespace, "pd", p)) == 1, 240,  # type: ignore[misc]
                     what=f"the drained {pool} gang's pods to go")
            # The slot kept is the lowest: the first gang serves on, the scale-up's gang drained.
            assert pool_gangs(cluster, namespace, "pd", pool) == first
    finally:
        load.close()
    assert load.ok > 20
    assert load.failed == [], load.failed[:5]
    drained = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert drained.count("GangDraining") >= 2
