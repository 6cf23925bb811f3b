"""The operator against the real control plane with kwok GPU nodes, running under the chart's RBAC."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.nodes import IB_BLOCK_LABEL
from tests.conftest import NodePool, wait_for
from tests.helpers.specs import DeploymentBuilder, a_deployment
from tests.integration.operator_harness import (
    RunningOperator,
    engine_pods,
    get,
    operator_fixture,
    wait_phase,
)

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(cluster, tmp_path_factory.mktemp("operator"),
                                ["--backoff-seconds", "1", "--unschedulable-seconds", "15", "--resync-seconds", "5"])


def pro_on(pool: NodePool, name: str = "pro") -> DeploymentBuilder:
    return (a_deployment(name).pro().h200()
            .set("hardware.nodeSelector", pool.selector)
            .set("hardware.tolerations", [pool.toleration])
            .set("autoscaling.drainTimeoutSeconds", 3))


def apply(cluster: LocalCluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def gang_uids(cluster: LocalCluster, namespace: str, name: str) -> dict[str, set[str]]:
    gangs: dict[str, set[str]] = {}
    for pod in engine_pods(cluster, namespace, name):
        gangs.setdefault(pod["metadata"]["labels"]["mimo-operator.io/gang"], set()).add(pod["metadata"]["uid"])
    return gangs


def test_a_pro_deployment_on_h200_becomes_two_ready_gangs_of_the_planned_size(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(4)
    apply(cluster, namespace, pro_on(node_pool).replicas(2).build())
    obj = wait_phase(cluster, namespace, "pro", "Ready")
    status = obj["status"]
    nodes = status["plan"]["nodesPerReplica"]
    assert nodes == 2, "Pro fp8 on 8×H200 plans 2 nodes per replica"
    assert status["readyReplicas"] == 2
    assert status["replicas"] == 2
    assert status["endpoint"] == f"http://pro-router.{namespace}.svc:80"
    gangs = gang_uids(cluster, namespace, "pro")
    assert len(gangs) == 2
    assert all(len(uids) == nodes for uids in gangs.values())
    pods = engine_pods(cluster, namespace, "pro")
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert {p["spec"]["nodeName"] for p in pods} == set(node_pool.names), "one pod per node"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Degraded"]["status"] == "False"
    names = {kind: {o["metadata"]["name"] for o in cluster.kubectl_json(
        "get", kind, "-n", namespace, "-l", "mimo-operator.io/deployment=pro")["items"]}
        for kind in ("service", "configmap", "networkpolicy")}
    assert names["networkpolicy"] == {*gangs, "pro-engines-closed"}, \
        "one NetworkPolicy per gang, and the deployment's that closes every engine pod"
    assert names["service"] == {"pro-gangs", "pro-router"}, "the pods' DNS names come from one headless Service"
    assert names["configmap"] == set(), "the launch plan travels in the pods"
    assert {p["spec"]["subdomain"] for p in pods} == {"pro-gangs"}
    assert get(cluster, "deployment", namespace, "pro-router") is not None
    assert get(cluster, "pdb", namespace, "pro-engine") is not None
    failed = [line for line in operator.log.read_text().splitlines() if f"{namespace}/pro: reconcile failed" in line]
    assert not failed, "the first reconciles apply the shared objects in an order the API accepts"

    # Idempotent: with nothing changed, a reconcile writes nothing.
    time.sleep(2)
    writes, reconciles = operator.writes_by_kind(), operator.reconciles()
    cluster.kubectl("annotate", "mimodeployment", "pro", "-n", namespace, "test/poke=1")
    wait_for(lambda: operator.reconciles() > reconciles + 1, 30, what="two more reconciles")
    made = {k: v - writes.get(k, 0.0) for k, v in operator.writes_by_kind().items() if v != writes.get(k, 0.0)}
    assert not made, f"a reconcile of an unchanged deployment made API writes: {made}"

    # The periodic checks (shared objects, the gangs' sweep: every 30 s) find the objects as the API keeps them
    # (with its defaults), and write nothing; a policy opened by hand is put back, and so are the router's
    # Deployment and Role edited by hand.
    time.sleep(32)
    made = {k: v - writes.get(k, 0.0) for k, v in operator.writes_by_kind().items() if v != writes.get(k, 0.0)}
    assert not made, f"the periodic checks of an unchanged deployment made API writes: {made}"
    opened = ["pro-engines-closed", sorted(gangs)[0]]
    built = {n: get(cluster, "networkpolicy", namespace, n)["spec"] for n in opened}
    for name in opened:
        cluster.kubectl("patch", "networkpolicy", name, "-n", namespace, "--type", "merge",
                        "-p", json.dumps({"spec": {"ingress": [{}]}}))

    def router() -> tuple[int, list[str], str, list[Any]]:
        deployment = get(cluster, "deployment", namespace, "pro-router")
        role = get(cluster, "role", namespace, "pro-router")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return (deployment["spec"]["replicas"], [e["name"] for e in container.get("env") or []], container["image"],
                role["rules"])

    as_built = router()
    cluster.kubectl("scale", "deployment/pro-router", "-n", namespace, "--replicas=0")
    cluster.kubectl("set", "env", "deployment/pro-router", "-n", namespace, "RUST_LOG=trace")
    cluster.kubectl("set", "image", "deployment/pro-router", "-n", namespace, "router=elsewhere/router:latest")
    cluster.kubectl("patch", "role", "pro-router", "-n", namespace, "--type", "json", "-p", json.dumps([
        {"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}}]))
    assert router() != as_built
    wait_for(lambda: all(get(cluster, "networkpolicy", namespace, n)["spec"] == built[n] for n in opened), 45,
             what="the opened policies put back as built")
    wait_for(lambda: router() == as_built, 45, what="the router's Deployment and Role put back as built")
    writes = operator.writes_by_kind()
    time.sleep(31)
    kept = ("Deployment", "Role", "NetworkPolicy")
    made = {k: v - writes.get(k, 0.0) for k, v in operator.writes_by_kind().items()
            if v != writes.get(k, 0.0) and any(f'kind="{kind}"' in k for kind in kept)}
    assert not made, f"the objects put back read as edited again: {made}"

    # A status wiped by hand (HPA reads its selector through /scale) is written again, and a head that lost the
    # router's serving label by hand gets it back.
    head = next(p["metadata"]["name"] for p in engine_pods(cluster, namespace, "pro")
                if p["metadata"]["labels"]["mimo-operator.io/role"] == "head")
    cluster.kubectl("patch", "mimodeployment", "pro", "-n", namespace, "--subresource=status", "--type", "merge",
                    "-p", json.dumps({"status": {"phase": "Degraded", "selector": None, "readyReplicas": 0}}))
    cluster.kubectl("label", "pod", head, "-n", namespace, "mimo-operator.io/serving-")
    wait_for(lambda: {k: get(cluster, "mimodeployment", namespace, "pro")["status"].get(k)
                      for k in ("phase", "selector", "readyReplicas")} == {
                          k: status[k] for k in ("phase", "selector", "readyReplicas")}, 45,
             what="the status written again as decided")
    wait_for(lambda: get(cluster, "pod", namespace, head)["metadata"]["labels"].get("mimo-operator.io/serving")
             == "true", 45, what="the head's serving label put back")


def evict(cluster: LocalCluster, namespace: str, pod: str) -> subprocess.CompletedProcess[str]:
    """Ask the eviction API to evict ``pod``, as a node drain does (the disruption budget decides)."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
    return cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
                           input=json.dumps(body), check=False)


def test_a_node_drain_evicts_one_gang_pod_at_a_time_by_the_disruption_budget(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    # The real disruption controller (kube-controller-manager) reads the budget: counted in pods, not through
    # the deployment's /scale, which counts gangs.
    node_pool.add(4)
    apply(cluster, namespace, pro_on(node_pool).replicas(2).build())
    wait_phase(cluster, namespace, "pro", "Ready")
    budget = wait_for(lambda: (b := get(cluster, "pdb", namespace, "pro-engine"))
                      and (b.get("status") or {}).get("currentHealthy") == 4 and b, 60, what="the budget counted")
    assert budget["spec"]["minAvailable"] == 3
    assert budget["status"]["disruptionsAllowed"] == 1
    first, second = sorted(gang_uids(cluster, namespace, "pro"))
    pods = {p["metadata"]["labels"]["mimo-operator.io/gang"]: p["metadata"]["name"]
            for p in engine_pods(cluster, namespace, "pro")}
    evicted = evict(cluster, namespace, pods[first])
    assert evicted.returncode == 0, evicted.stderr
    refused = evict(cluster, namespace, pods[second])
    assert refused.returncode != 0, "a second gang's pod while the first gang is down"
    assert "disruption budget" in refused.stderr, refused.stderr
    def replaced() -> bool:
        gangs = gang_uids(cluster, namespace, "pro")
        return second in gangs and first not in gangs and len(gangs) == 2

    wait_for(replaced, 90, what="the evicted gang replaced, the other kept")
    wait_phase(cluster, namespace, "pro", "Ready")


def test_deleting_one_member_replaces_that_whole_gang_only(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(4)
    apply(cluster, namespace, pro_on(node_pool).replicas(2).build())
    wait_phase(cluster, namespace, "pro", "Ready")
    before = gang_uids(cluster, namespace, "pro")
    victim_gang, other_gang = sorted(before)
    member = next(p for p in engine_pods(cluster, namespace, "pro")
                  if p["metadata"]["labels"]["mimo-operator.io/gang"] == victim_gang
                  and p["metadata"]["labels"]["mimo-operator.io/role"] == "member")
    cluster.kubectl("delete", "pod", member["metadata"]["name"], "-n", namespace, "--wait=false")

    def replaced() -> dict[str, set[str]] | None:
        now = gang_uids(cluster, namespace, "pro")
        return now if victim_gang not in now and len(now) == 2 else None

    after = wait_for(replaced, 60, what="the broken gang to be replaced")
    wait_phase(cluster, namespace, "pro", "Ready")
    assert after[other_gang] == before[other_gang], "the healthy gang was not touched"
    new_gang = next(g for g in after if g != other_gang)
    assert not after[new_gang] & before[victim_gang]
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "GangFailed" in events
    assert victim_gang in events


def test_an_unschedulable_gang_is_degraded_with_the_schedulers_reason_and_no_restart_storm(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(1)  # Pro needs 2 nodes per replica
    apply(cluster, namespace, pro_on(node_pool).replicas(1).build())
    obj = wait_phase(cluster, namespace, "pro", "Degraded", timeout=60)
    degraded = next(c for c in obj["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "cannot be scheduled" in degraded["message"]
    assert "node" in degraded["message"]
    time.sleep(40)
    obj = get(cluster, "mimodeployment", namespace, "pro")
    assert obj is not None
    (record,) = obj["status"]["replicaRecords"]
    # 15 s unschedulable deadline, back-off 1, 2, 4 … s: a handful of attempts in 40 s, not a storm.
    assert 1 <= record["attempt"] <= 5, record


def test_an_invalid_or_impossible_spec_creates_nothing_and_says_why_while_others_are_served(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(2)
    impossible = a_deployment("too-big").pro().h100().set("parallelism.nodesPerReplica", 1).build()
    apply(cluster, namespace, impossible)
    good = pro_on(node_pool, "good").replicas(1).build()
    apply(cluster, namespace, good)
    obj = wait_phase(cluster, namespace, "too-big", "Refused")
    planned = next(c for c in obj["status"]["conditions"] if c["type"] == "Planned")
    assert planned["status"] == "False"
    assert planned["reason"] == "PlanRefused"
    assert "GB" in planned["message"]
    assert engine_pods(cluster, namespace, "too-big") == []
    assert get(cluster, "deployment", namespace, "too-big-router") is None
    wait_phase(cluster, namespace, "good", "Ready")


def test_an_image_change_rolls_gangs_one_at_a_time_above_the_permitted_minimum(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(6)  # 2 replicas × 2 nodes, plus room for one surge gang
    base = pro_on(node_pool).replicas(2).set("rollout", {"maxSurge": 1, "maxUnavailable": 0})
    apply(cluster, namespace, base.build())
    wait_phase(cluster, namespace, "pro", "Ready")
    first = set(gang_uids(cluster, namespace, "pro"))
    lowest: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            obj = get(cluster, "mimodeployment", namespace, "pro")
            if obj:
                lowest.append(int(obj["status"].get("readyReplicas", 0)))
            time.sleep(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        apply(cluster, namespace, base.engine(image="example.invalid/mimo-worker:next").build())

        def rolled() -> bool:
            gangs = set(gang_uids(cluster, namespace, "pro"))
            return len(gangs) == 2 and not gangs & first
        wait_for(rolled, 120, what="both gangs replaced")
        wait_phase(cluster, namespace, "pro", "Ready")
    finally:
        stop.set()
        watcher.join()
    assert min(lowest) >= 2, "the ready count never dropped below replicas − maxUnavailable"
    images = {p["spec"]["containers"][0]["image"] for p in engine_pods(cluster, namespace, "pro")}
    assert images == {"example.invalid/mimo-worker:next"}


def test_gangs_stay_inside_one_block_and_spread_over_blocks_with_room(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    # Three nodes per block: each block has room for one gang of two and a spare node. Without the spread,
    # the second gang's first pod may take the first block's spare node, and its second pod then finds no
    # room in that block.
    for block in (0, 1):
        node_pool.add(3, block=block)
    apply(cluster, namespace, pro_on(node_pool).replicas(2).set("scheduling.topologyKey", IB_BLOCK_LABEL).build())
    wait_phase(cluster, namespace, "pro", "Ready")
    block_of = {n["metadata"]["name"]: n["metadata"]["labels"][IB_BLOCK_LABEL]
                for n in cluster.kubectl_json("get", "nodes", "-l", f"mimo-test/pool={node_pool.key}")["items"]}
    blocks: dict[str, set[str]] = {}
    for pod in engine_pods(cluster, namespace, "pro"):
        blocks.setdefault(pod["metadata"]["labels"]["mimo-operator.io/gang"], set()).add(
            block_of[pod["spec"]["nodeName"]])
    assert len(blocks) == 2
    assert all(len(b) == 1 for b in blocks.values()), f"each gang inside one block: {blocks}"
    assert set.union(*blocks.values()) == {"block-0", "block-1"}, f"one gang per block: {blocks}"


def test_kubectl_scale_up_and_down(cluster: LocalCluster, operator: RunningOperator, namespace: str,
                                   node_pool: NodePool) -> None:
    node_pool.add(6)
    apply(cluster, namespace, pro_on(node_pool).replicas(1).build())
    wait_phase(cluster, namespace, "pro", "Ready")
    cluster.kubectl("scale", "mimodeployment", "pro", "-n", namespace, "--replicas=3")
    wait_for(lambda: (get(cluster, "mimodeployment", namespace, "pro") or {}).get("status", {})
             .get("readyReplicas") == 3, 60, what="3 ready replicas")
    cluster.kubectl("scale", "mimodeployment", "pro", "-n", namespace, "--replicas=1")
    wait_for(lambda: len(gang_uids(cluster, namespace, "pro")) == 1, 60, what="scale-down to one gang")
    (gang,) = gang_uids(cluster, namespace, "pro")
    assert gang.startswith("pro-0-"), "scale-down removes the highest replica indexes"
    scale = json.loads(cluster.kubectl("get", "--raw", f"/apis/serving.mimo-operator.io/v1alpha1/namespaces/"
                                       f"{namespace}/mimodeployments/pro/scale").stdout)
    assert scale["spec"]["replicas"] == 1


def test_deleting_the_deployment_removes_every_child(cluster: LocalCluster, operator: RunningOperator,
                                                    namespace: str, node_pool: NodePool) -> None:
    node_pool.add(2)
    apply(cluster, namespace, pro_on(node_pool).replicas(1).build())
    wait_phase(cluster, namespace, "pro", "Ready")
    cluster.kubectl("delete", "mimodeployment", "pro", "-n", namespace, "--wait=true", "--timeout=60s")

    def nothing_left() -> bool:
        for kind in ("pods", "services", "configmaps", "networkpolicies", "deployments", "pdb", "roles",
                     "rolebindings", "serviceaccounts"):
            items = cluster.kubectl_json("get", kind, "-n", namespace, "-l", "mimo-operator.io/deployment=pro")["items"]
            if items:
                return False
        return True

    wait_for(nothing_left, 60, what="the garbage collector to remove every child")


def test_an_operator_killed_mid_rollout_converges_without_duplicates(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool,
        tmp_path: Path) -> None:
    node_pool.add(6)
    base = pro_on(node_pool).replicas(2)
    apply(cluster, namespace, base.build())
    wait_phase(cluster, namespace, "pro", "Ready")
    apply(cluster, namespace, base.engine(image="example.invalid/mimo-worker:v2").build())
    wait_for(lambda: len(gang_uids(cluster, namespace, "pro")) == 3, 30, what="the surge gang")
    operator.kill()
    operator.start()
    wait_for(lambda: {p["spec"]["containers"][0]["image"] for p in engine_pods(cluster, namespace, "pro")}
             == {"example.invalid/mimo-worker:v2"} and len(gang_uids(cluster, namespace, "pro")) == 2, 120,
             what="the rollout to finish after the restart")
    obj = wait_phase(cluster, namespace, "pro", "Ready")
    pods = engine_pods(cluster, namespace, "pro")
    names = [p["metadata"]["name"] for p in pods]
    assert len(names) == len(set(names)) == 2 * obj["status"]["plan"]["nodesPerReplica"]
    replicas = sorted(p["metadata"]["labels"]["mimo-operator.io/replica"] for p in pods
                      if p["metadata"]["labels"]["mimo-operator.io/role"] == "head")
    assert replicas == ["0", "1"], "one gang per replica"
