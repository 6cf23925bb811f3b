"""Operator upgrades and edits that change no pod, against the real control plane with kwok GPU nodes.

A new operator version is simulated by restarting the operator with a builder default changed
(``--distinct-gang-ports``: every gang on a pod network gets its own Ray ports, so its pods render
differently; hostNetwork gangs have their own ports either way).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from tests.conftest import NodePool, wait_for
from tests.helpers.specs import DeploymentBuilder, a_deployment
from tests.integration.operator_harness import RunningOperator, engine_pods, get, operator_fixture, wait_phase

pytestmark = [pytest.mark.cluster]

OPTIONS = ["--backoff-seconds", "1", "--unschedulable-seconds", "15", "--resync-seconds", "2"]
# Reconciles the operator gets (resync every 2 s) to show that it leaves the gangs alone.
SETTLE_SECONDS = 8.0


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(cluster, tmp_path_factory.mktemp("operator-upgrade"), list(OPTIONS))


def pro_on(pool: NodePool) -> DeploymentBuilder:
    return (a_deployment("pro").pro().h200()
            .set("hardware.nodeSelector", pool.selector)
            .set("hardware.tolerations", [pool.toleration])
            .network("podNetwork")
            .set("autoscaling.drainTimeoutSeconds", 3))


def apply(cluster: LocalCluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def pod_uids(cluster: LocalCluster, namespace: str) -> set[str]:
    return {p["metadata"]["uid"] for p in engine_pods(cluster, namespace, "pro")}


def replaced(cluster: LocalCluster, namespace: str, uids: set[str]) -> bool:
    """Every pod is new, and there are as many as before (the old gangs are gone, none is left over)."""
    now = pod_uids(cluster, namespace)
    return not now & uids and len(now) == len(uids)


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def observed(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    """The deployment once the operator has reconciled its current generation."""
    def check() -> dict[str, Any] | None:
        obj = get(cluster, "mimodeployment", namespace, "pro")
        if obj and obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]:
            return obj
        return None
    result: dict[str, Any] = wait_for(check, 30, what="the operator to observe the edit")
    return result


def test_edits_that_change_no_pod_restart_nothing(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(6)  # room for a surge gang, should one (wrongly) be made
    base = pro_on(node_pool).replicas(2)
    apply(cluster, namespace, base.build())
    before = wait_phase(cluster, namespace, "pro", "Ready")
    uids = pod_uids(cluster, namespace)
    assert len(uids) == 2 * before["status"]["plan"]["nodesPerReplica"]

    edited = (base.set("autoscaling.drainTimeoutSeconds", 900)
              .set("router.replicas", 2)
              .set("rollout", {"maxSurge": 0, "maxUnavailable": 1}))
    apply(cluster, namespace, edited.build())
    after = observed(cluster, namespace)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["status"]["plan"]["revision"] == before["status"]["plan"]["revision"]
    time.sleep(SETTLE_SECONDS)
    assert pod_uids(cluster, namespace) == uids, "no gang was restarted"
    assert (get(cluster, "mimodeployment", namespace, "pro") or {})["status"]["phase"] == "Ready"
    grace = {p["spec"]["terminationGracePeriodSeconds"] for p in engine_pods(cluster, namespace, "pro")}
    assert len(grace) == 1, "the pods do not carry the drain timeout"


def test_an_operator_restarted_with_new_builder_defaults_leaves_running_gangs_alone_until_asked(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(6)
    base = pro_on(node_pool).replicas(2)
    apply(cluster, namespace, base.build())
    wait_phase(cluster, namespace, "pro", "Ready")
    uids = pod_uids(cluster, namespace)
    first = get(cluster, "mimodeployment", namespace, "pro")
    assert condition(first, "OperatorUpgradeAvailable")["status"] == "False"
    revision = (first or {})["status"]["plan"]["revision"]

    # "A new operator version": the same spec now renders pods with other Ray ports.
    operator.stop()
    operator.extra = [*OPTIONS, "--distinct-gang-ports"]
    operator.start()
    upgraded = wait_for(lambda: (o := get(cluster, "mimodeployment", namespace, "pro"))
                        and condition(o, "OperatorUpgradeAvailable").get("status") == "True" and o,
                        30, what="status to say the gangs' pods are outdated")
    said = condition(upgraded, "OperatorUpgradeAvailable")
    assert said["reason"] == "PodsOutdatedByOperatorTemplate"
    assert all(g["name"] in said["message"] for g in upgraded["status"]["gangs"])
    assert upgraded["status"]["plan"]["revision"] == revision
    time.sleep(SETTLE_SECONDS)
    assert pod_uids(cluster, namespace) == uids, "an operator upgrade restarts no running gang on its own"
    assert (get(cluster, "mimodeployment", namespace, "pro") or {})["status"]["phase"] == "Ready"

    # The user opts in: the gangs roll, one at a time, to the pods this operator renders.
    apply(cluster, namespace, base.set("rollout.operatorUpgrades", "Automatic").build())
    wait_for(lambda: replaced(cluster, namespace, uids), 120, what="both gangs rolled to the new operator's pods")
    done = wait_for(lambda: (o := get(cluster, "mimodeployment", namespace, "pro"))
                    and condition(o, "OperatorUpgradeAvailable").get("status") == "False"
                    and o["status"].get("phase") == "Ready" and o, 60, what="the roll to finish")
    assert done["status"]["plan"]["revision"] == revision
