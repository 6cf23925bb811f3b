"""Ending a gang's Kueue pod group: once one of its pods is being deleted and Kueue still holds it, the
group's Workload is deleted (Kueue then lets every pod of the group go), once per group, only where Kueue's
API is served, never for a pod that is not being deleted or not held by Kueue, and (from the pod watch's
events) by the leader alone."""

from __future__ import annotations

import asyncio
from typing import Any

from mimo_operator import labels as L
from mimo_operator.handlers import PodEvents
from mimo_operator.labels import KUEUE_FINALIZER, KUEUE_GROUP_LABEL
from mimo_operator.schedulers import KueueGroups
from tests.helpers.fakekube import FakeKube


def _pod(name: str, group: str | None = "gang-a", deleting: bool = True, held: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": {KUEUE_GROUP_LABEL: group} if group else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    if held:
        meta["finalizers"] = [KUEUE_FINALIZER]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta}


def _workload(name: str, api: str = "kueue.x-k8s.io/v1beta2") -> dict[str, Any]:
    return {"apiVersion": api, "kind": "Workload", "metadata": {"name": name, "namespace": "ns"}}


async def test_the_workload_of_a_group_whose_pod_is_being_deleted_is_deleted_once() -> None:
    kube = FakeKube()
    kube.served["kueue.x-k8s.io/v1beta2"] = frozenset({"workloads"})
    for name in ("gang-a", "gang-b"):
        await kube.create(_workload(name))
    groups = KueueGroups(kube)
    assert await groups.pod_seen(_pod("gang-a-0"))
    # The group's other pods, and the same pod's later events, ask for nothing more.
    mark = len(kube.writes)
    assert not await groups.pod_seen(_pod("gang-a-1"))
    assert not await groups.pod_seen(_pod("gang-a-0"))
    assert kube.writes_since(mark) == []
    assert [w["metadata"]["name"] for w in kube.of("Workload")] == ["gang-b"]


async def test_pods_not_being_deleted_or_not_held_by_kueue_leave_the_group_alone() -> None:
    kube = FakeKube()
    kube.served["kueue.x-k8s.io/v1beta2"] = frozenset({"workloads"})
    await kube.create(_workload("gang-a"))
    groups = KueueGroups(kube)
    for pod in (_pod("p", deleting=False), _pod("p", held=False), _pod("p", group=None)):
        assert not await groups.pod_seen(pod)
    assert len(kube.of("Workload")) == 1
    assert [w for w in kube.writes if w[0] == "delete"] == []


async def test_nothing_is_deleted_where_kueue_is_not_served_and_v1beta1_is_used_where_only_it_is() -> None:
    kube = FakeKube()
    await kube.create(_workload("gang-a", "kueue.x-k8s.io/v1beta1"))
    assert not await KueueGroups(kube).pod_seen(_pod("gang-a-0"))
    assert [w for w in kube.writes if w[0] == "delete"] == []
    kube.served["kueue.x-k8s.io/v1beta1"] = frozenset({"workloads"})
    assert await KueueGroups(kube).pod_seen(_pod("gang-a-0"))
    assert kube.of("Workload") == []


class _Loops:
    def __init__(self, leading: bool) -> None:
        self.poked: list[tuple[str, str]] = []
        self._leading = leading

    def poke(self, namespace: str, name: str) -> None:
        self.poked.append((namespace, name))

    def leading(self) -> bool:
        return self._leading


async def test_a_pod_event_pokes_its_deployment_and_the_leader_alone_ends_the_group() -> None:
    for leading in (True, False):
        kube = FakeKube()
        kube.served["kueue.x-k8s.io/v1beta2"] = frozenset({"workloads"})
        await kube.create(_workload("gang-a"))
        loops = _Loops(leading)
        events = PodEvents(loops, KueueGroups(kube))  # type: ignore[arg-type]
        pod = _pod("gang-a-0")
        pod["metadata"]["labels"][L.LABEL_DEPLOYMENT] = "d"
        events.seen("MODIFIED", pod)
        events.seen("MODIFIED", _pod("lone", group=None))  # no deployment label: no loop to poke
        await asyncio.gather(*events._tasks)
        assert loops.poked == [("ns", "d")]
        assert [w["metadata"]["name"] for w in kube.of("Workload")] == ([] if leading else ["gang-a"])
        await events.stop()
