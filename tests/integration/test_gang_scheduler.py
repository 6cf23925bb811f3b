"""Real gang schedulers in the local cluster: scheduler-plugins' coscheduling, built from its Go module and
running next to kube-scheduler, kube-scheduler's own gang scheduling (scheduling.k8s.io PodGroups, its
alpha feature gates on), and Kueue's manager (built from its Go module; its pod integration admits a
gang's pods together when a ClusterQueue's quota has room for all of them). Under contention (two
deployments wanting more nodes than exist) no node is held by a gang that is not whole, and gangs still
start (no deadlock). A deployment naming a gang scheduler that is not installed is refused in status.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mimo_operator import labels as L
from mimo_operator.localcluster.binaries import binaries_missing
from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.controlplane import KUEUE_CLUSTER_QUEUE
from mimo_operator.localcluster.nodes import IB_BLOCK_LABEL
from tests.conftest import wait_for
from tests.helpers.podwatch import PodWatch, contending_deployments, gang_holding
from tests.helpers.specs import a_deployment
from tests.integration.operator_harness import RunningOperator, operator_fixture, wait_phase

pytestmark = pytest.mark.cluster

SIZE = 4
NODES = 10  # two deployments × 2 gangs × 4 nodes = 16 wanted


@pytest.fixture(scope="module")
def gang_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if missing := binaries_missing(("scheduler-plugins", "kueue")):
        message = f"not built: {', '.join(missing)} (run hack/build-binaries.sh)"
        if os.environ.get("MIMO_REQUIRE_CLUSTER"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = LocalCluster.up(tmp_path_factory.mktemp("gang") / "c", nodes=NODES, gpu_type="H100-80GB", blocks=2,
                              exit_with_parent=True, gang_schedulers=("scheduler-plugins", "kubernetes", "kueue"))
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def gang_operator(gang_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    # Unschedulable gangs are not recreated inside the test: what is tested is the scheduler.
    yield from operator_fixture(gang_cluster, tmp_path_factory.mktemp("op"), ["--unschedulable-seconds", "3600"])


@contextlib.contextmanager
def nodes_given_back(cluster: LocalCluster, ns: str, kinds: str = "mimodeployments") -> Iterator[PodWatch]:
    """A watch of the case's pods. However the case ends, its objects are deleted and their pods waited for:
    the next case needs every node, and a case that failed before its own clean-up failed the ones after it."""
    watch = PodWatch(cluster)

    def give_back() -> None:
        cluster.kubectl("delete", kinds, "--all", "-n", ns, "--wait=true", "--timeout=120s")
        wait_for(lambda: watch.count(ns) == 0, 120, what=f"the pods of {ns} gone")

    try:
        yield watch
    except BaseException:
        with contextlib.suppress(Exception):  # the case's own failure is the one to report
            give_back()
        raise
    else:
        give_back()
    finally:
        watch.stop()


# What each gang scheduler's group object is, and how its size reads (Kueue: the Workload its pod
# integration makes of a gang's pods).
GROUPS = {
    "scheduler-plugins": ("podgroups.scheduling.x-k8s.io", lambda g: g["spec"]["minMember"]),
    "kubernetes": ("podgroups.scheduling.k8s.io", lambda g: g["spec"]["schedulingPolicy"]["gang"]["minCount"]),
    "kueue": ("workloads.kueue.x-k8s.io", lambda g: sum(s["count"] for s in g["spec"]["podSets"])),
}



@pytest.mark.parametrize("scheduler", list(GROUPS))
def test_a_gang_scheduler_holds_no_node_for_an_incomplete_gang_under_contention(
        gang_cluster: LocalCluster, gang_operator: RunningOperator, scheduler: str) -> None:
    ns = f"contention-{scheduler}"
    gang_cluster.kubectl("create", "namespace", ns)
    items = contending_deployments(gang_cluster, ns, scheduler, 2, SIZE)
    with nodes_given_back(gang_cluster, ns) as watch:
        gang_cluster.kubectl("apply", "-n", ns, "-f", "-",
                             input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        # Two whole gangs fit in 10 nodes; the other two wait, holding nothing.
        wait_for(lambda: gang_holding(watch, [ns], SIZE, 0).complete_gangs == 2, 90,
                 what="two whole gangs (no deadlock)")
        held = gang_holding(watch, [ns], SIZE, 15)
        resource, size_of = GROUPS[scheduler]
        groups = gang_cluster.kubectl_json("get", resource, "-n", ns)["items"]
    assert held.complete_gangs == 2
    assert held.incomplete_gangs == 0
    assert held.bound_pods == 2 * SIZE
    # Sampled every 0.2 s: a gang caught between its members' binds would count 0.2 s per bound pod.
    assert held.node_seconds < 1.0
    assert len(groups) == 4
    assert {size_of(g) for g in groups} == {SIZE}


def test_a_gang_scheduler_that_is_not_installed_is_refused_in_status(
        gang_cluster: LocalCluster, gang_operator: RunningOperator, tmp_path: Path) -> None:
    ns = "not-installed"
    gang_cluster.kubectl("create", "namespace", ns)
    manifest = a_deployment("wants-volcano").pro().h100().set("parallelism.nodesPerReplica", SIZE) \
        .set("scheduling.gangScheduler", "volcano").build()
    gang_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    refused = wait_phase(gang_cluster, ns, "wants-volcano", "Refused", timeout=60)
    ready = next(c for c in refused["status"]["conditions"] if c["type"] == "Ready")
    assert "spec.scheduling.gangScheduler" in ready["message"]
    assert "'volcano' is not installed" in ready["message"]
    pods = gang_cluster.kubectl_json("get", "pods", "-n", ns)["items"]
    assert pods == []


def test_kubernetes_gang_scheduling_places_a_gang_inside_one_block_by_its_pod_group(
        gang_cluster: LocalCluster, gang_operator: RunningOperator) -> None:
    # The local cluster turns on the topology gate with the others; the operator finds it by a dry run and
    # puts the deployment's topology key into each gang's PodGroup.
    ns = "native-topology"
    gang_cluster.kubectl("create", "namespace", ns)
    manifest = a_deployment("blocked").pro().h100().set("parallelism.nodesPerReplica", SIZE) \
        .set("scheduling.gangScheduler", "kubernetes").set("scheduling.topologyKey", IB_BLOCK_LABEL).build()
    with nodes_given_back(gang_cluster, ns) as watch:
        gang_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        wait_for(lambda: gang_holding(watch, [ns], SIZE, 0).complete_gangs == 1, 90, what="the gang placed")
        groups = gang_cluster.kubectl_json("get", "podgroups.scheduling.k8s.io", "-n", ns)["items"]
        pods = gang_cluster.kubectl_json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=engine")["items"]
        nodes = {n["metadata"]["name"]: n["metadata"]["labels"][IB_BLOCK_LABEL]
                 for n in gang_cluster.kubectl_json("get", "nodes")["items"]}
    assert [g["spec"].get("schedulingConstraints") for g in groups] == [{"topology": [{"key": IB_BLOCK_LABEL}]}]
    assert len(pods) == SIZE
    assert len({nodes[p["spec"]["nodeName"]] for p in pods}) == 1, "the whole gang in one block"


def test_kueue_admits_a_gang_inside_the_one_block_that_has_room_for_all_of_it(
        gang_cluster: LocalCluster, gang_operator: RunningOperator) -> None:
    # The local cluster's Kueue flavor has a Topology of blocks and nodes; the operator finds the deployment's
    # topology key among its levels and asks for it on every pod of the gang.
    ns = "kueue-topology"
    gang_cluster.kubectl("create", "namespace", ns)
    gang_cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
        "metadata": {"name": "gpus", "namespace": ns}, "spec": {"clusterQueue": KUEUE_CLUSTER_QUEUE}}))
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"][IB_BLOCK_LABEL]
             for n in gang_cluster.kubectl_json("get", "nodes")["items"]}
    # Two nodes of the first block are taken by pods outside any gang: three of its nodes are free, too few for
    # a gang of four, which only the other block can hold whole. Without Kueue's topology the gang's first
    # pod may land in either block, and the others follow it.
    first = sorted(n for n, b in nodes.items() if b == nodes["gpu-node-0"])
    assert len(first) == NODES // 2
    blockers = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"blocker-{i}", "namespace": ns},
                 "spec": {"nodeName": node, "containers": [{"name": "c", "image": "example.invalid/busy:1",
                                                            "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}
                for i, node in enumerate(first[:2])]
    manifest = a_deployment("kueue-blocked").pro().h100().set("parallelism.nodesPerReplica", SIZE) \
        .set("scheduling.gangScheduler", "kueue").set("scheduling.queueName", "gpus") \
        .set("scheduling.topologyKey", IB_BLOCK_LABEL).build()
    with nodes_given_back(gang_cluster, ns, "mimodeployments,pods") as watch:
        gang_cluster.kubectl("apply", "-n", ns, "-f", "-",
                             input=json.dumps({"apiVersion": "v1", "kind": "List", "items": blockers}))
        wait_for(lambda: all(p.phase == "Running" for p in watch.snapshot(ns)) and len(watch.snapshot(ns)) == 2,
                 60, what="the blockers running")
        gang_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        wait_for(lambda: gang_holding(watch, [ns], SIZE, 0).complete_gangs == 1, 90, what="the gang placed")
        (workload,) = gang_cluster.kubectl_json("get", "workloads.kueue.x-k8s.io", "-n", ns)["items"]
        pods = gang_cluster.kubectl_json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=engine")["items"]
    assert len(pods) == SIZE
    assert {p["metadata"]["annotations"].get(L.KUEUE_REQUIRED_TOPOLOGY) for p in pods} == {IB_BLOCK_LABEL}
    (podset,) = workload["spec"]["podSets"]
    assert podset["count"] == SIZE, "head and members are one PodSet for Kueue"
    assert podset["topologyRequest"]["required"] == IB_BLOCK_LABEL
    (assignment,) = workload["status"]["admission"]["podSetAssignments"]
    assert assignment.get("topologyAssignment"), "Kueue placed the gang by its topology"
    blocks = {nodes[p["spec"]["nodeName"]] for p in pods}
    assert blocks == {nodes[sorted(n for n, b in nodes.items() if b != nodes["gpu-node-0"])[0]]}, \
        "the whole gang in the block with room for it"
