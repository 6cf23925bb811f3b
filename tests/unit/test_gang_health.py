"""How a gang that is not placed yet reads: held by its queue's scheduling gate (it waits its turn, however
long), or refused by the scheduler (replaced after the unschedulable deadline)."""

from __future__ import annotations

from typing import Any

from mimo_operator import labels as L
from mimo_operator.gangs import GangHealth, epoch, gangs_from_pods, health_of


def _pod(rank: int, gates: list[str] | None = None, unschedulable: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending"}
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/10 nodes are available: 10 Insufficient nvidia.com/gpu."}]
    elif gates:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]
    return {"metadata": {"name": f"g-{rank}", "uid": f"u{rank}", "creationTimestamp": CREATED,
                         "labels": {L.LABEL_GANG: "g", L.LABEL_RANK: str(rank), L.LABEL_GANG_SIZE: "2"}},
            "spec": {"schedulingGates": [{"name": g} for g in gates or []]}, "status": status}


CREATED = "2026-12-05T00:00:00Z"
LONG_AFTER = epoch(CREATED) + 3600  # an hour after the pods were created


def test_a_gang_held_by_its_queue_waits_and_says_which_gate_holds_it() -> None:
    (gang,) = gangs_from_pods([_pod(0, ["kueue.x-k8s.io/admission"]), _pod(1, ["kueue.x-k8s.io/admission"])])
    health = health_of(gang, LONG_AFTER, unschedulable_deadline=300)
    assert health.state is GangHealth.PENDING
    assert "kueue.x-k8s.io/admission" in health.reason
    assert not health.extra.get("unschedulable")


def test_a_gang_the_scheduler_cannot_place_fails_after_the_deadline() -> None:
    (gang,) = gangs_from_pods([_pod(0, unschedulable=True), _pod(1, unschedulable=True)])
    health = health_of(gang, LONG_AFTER, unschedulable_deadline=300)
    assert health.state is GangHealth.FAILED
    assert "Insufficient nvidia.com/gpu" in health.reason
