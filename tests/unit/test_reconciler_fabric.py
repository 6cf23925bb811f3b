"""A gang's fabric check reaches the deployment's status and an Event once, when the gang turns Ready."""

from __future__ import annotations

from mimo_operator.heads import fabric_of
from mimo_operator.reconciler import Memory
from tests.helpers.operator_world import World
from tests.helpers.specs import a_deployment

HEAD_STATUS = {"fabric": {"backend": "nccl", "expected_bus_gbps": 200.0, "min_fraction": 0.25, "verdict": "pass",
                          "message": "all-reduce 181.3 GB/s, all-to-all 95.1 GB/s", "bus_gbps": 181.349,
                          "all_to_all_bus_gbps": 95.12, "world_size": 16}}


def ready_world() -> World:
    w = World(a_deployment("d").replicas(1))
    w.reconcile()
    w.run_pods()
    w.heads.fabric_reports = {f"10.0.0.{i}": fabric_of(HEAD_STATUS) or {} for i in range(1, 9)}
    return w


def test_the_fabric_verdict_is_in_status_and_one_event_once_the_gang_is_ready() -> None:
    w = ready_world()
    w.now += 1
    result = w.reconcile()
    gang = w.status()["gangs"][0]
    assert gang["phase"] == "Ready"
    assert gang["fabric"] == {"verdict": "pass", "message": "all-reduce 181.3 GB/s, all-to-all 95.1 GB/s",
                              "backend": "nccl", "allReduceGBps": 181.35, "allToAllGBps": 95.12,
                              "expectedGBps": 200.0}
    events = [e for e in result.events if e.reason == "FabricChecked"]
    assert len(events) == 1
    assert events[0].type == "Normal"
    assert "181.35" in events[0].message
    asked = len(w.heads.fabric_asked)
    writes = len(w.kube.writes)
    w.now += 1
    again = w.reconcile()
    assert len(w.heads.fabric_asked) == asked  # once per gang, not every reconcile
    assert not [e for e in again.events if e.reason == "FabricChecked"]
    assert len(w.kube.writes) == writes  # nothing changed: no status write
    # A new operator process (empty memory) takes the figures from status and neither asks nor tells again.
    w.memory = Memory()
    w.now += 1
    third = w.reconcile()
    assert len(w.heads.fabric_asked) == asked
    assert not [e for e in third.events if e.reason == "FabricChecked"]
    assert w.status()["gangs"][0]["fabric"]["verdict"] == "pass"


def test_a_failed_verdict_is_a_warning_and_a_head_that_cannot_say_is_asked_again() -> None:
    w = ready_world()
    reports = w.heads.fabric_reports
    w.heads.fabric_reports = {}
    w.now += 1
    w.reconcile()
    assert "fabric" not in w.status()["gangs"][0]
    asked = len(w.heads.fabric_asked)
    failed = fabric_of({"fabric": {**HEAD_STATUS["fabric"], "verdict": "fail", "message": "all-to-all too slow"}})
    w.heads.fabric_reports = {ip: failed or {} for ip in reports}
    w.now += 1
    w.reconcile()
    assert len(w.heads.fabric_asked) == asked, "not asked again on every reconcile"
    w.now += 10
    result = w.reconcile()
    assert [e.type for e in result.events if e.reason == "FabricChecked"] == ["Warning"]
    assert w.status()["gangs"][0]["fabric"]["verdict"] == "fail"


def test_a_head_status_without_a_verdict_gives_nothing() -> None:
    assert fabric_of({"fabric": None}) is None
    assert fabric_of({}) is None
