"""Operator upgrades and edits that change no pod, through the reconciler against the in-memory API."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mimo_operator.build import OperatorIdentity
from mimo_operator.reconciler import Memory, Reconciler
from tests.helpers.operator_world import World
from tests.helpers.specs import a_deployment


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(dict(c) for c in status.get("conditions") or [] if c["type"] == kind)


def ready_world(replicas: int = 2) -> World:
    w = World(a_deployment("d").replicas(replicas).set("autoscaling.drainTimeoutSeconds", 30))
    for _ in range(3):
        w.reconcile()
        w.run_pods()
        w.now += 1
    assert len(w.live_gangs()) == replicas
    return w


def new_operator(w: World) -> None:
    """The operator restarted as a version whose builders render the gangs differently."""
    options = replace(w.reconciler.options, operator=OperatorIdentity(namespace="mimo-next"))
    w.reconciler = Reconciler(w.kube, w.heads, options, clock=lambda: w.now)  # type: ignore[arg-type]
    w.memory = Memory()


def test_an_upgraded_operator_leaves_running_gangs_alone_and_says_so() -> None:
    w = ready_world()
    uids = {p["metadata"]["uid"] for p in w.pods()}
    assert condition(w.status(), "OperatorUpgradeAvailable")["status"] == "False"
    new_operator(w)
    for _ in range(5):
        w.reconcile()
        w.now += 5
    assert {p["metadata"]["uid"] for p in w.pods()} == uids, "no gang was restarted"
    said = condition(w.status(), "OperatorUpgradeAvailable")
    assert said["status"] == "True"
    assert said["reason"] == "PodsOutdatedByOperatorTemplate"
    assert all(gang in said["message"] for gang in w.live_gangs())


def test_a_replacement_after_a_failure_gets_the_new_operators_pods() -> None:
    w = ready_world(replicas=1)
    new_operator(w)
    w.reconcile()
    w.fail_pods()
    for _ in range(30):
        w.reconcile()
        w.kube.finish_deletions()
        w.run_pods()
        w.now += 1
    assert len(w.live_gangs()) == 1
    assert condition(w.status(), "OperatorUpgradeAvailable")["status"] == "False"


def test_gangs_roll_to_the_new_operators_pods_once_the_user_opts_in() -> None:
    w = ready_world()
    first = set(w.live_gangs())
    new_operator(w)
    w.reconcile()
    w.edit("rollout.operatorUpgrades", "Automatic")
    for _ in range(60):
        w.reconcile()
        w.kube.finish_deletions()
        w.run_pods()
        w.now += 5
    assert len(w.live_gangs()) == 2
    assert not set(w.live_gangs()) & first, "every gang was replaced"
    assert len(set(w.created)) == len(w.created), "no gang name is used twice"
    assert condition(w.status(), "OperatorUpgradeAvailable")["status"] == "False"


def test_a_drain_timeout_or_router_edit_restarts_nothing() -> None:
    w = ready_world()
    uids = {p["metadata"]["uid"] for p in w.pods()}
    revision = w.status()["plan"]["revision"]
    w.edit("autoscaling.drainTimeoutSeconds", 900)
    w.edit("router.replicas", 3)
    writes = len(w.kube.writes)
    for _ in range(5):
        w.reconcile()
        w.now += 5
    assert {p["metadata"]["uid"] for p in w.pods()} == uids
    assert w.status()["plan"]["revision"] == revision
    assert not [wr for wr in w.kube.writes[writes:] if wr[1] == "Pod"], "no pod was written"


def test_a_drain_asks_the_head_for_the_drain_timeout_the_spec_has_when_it_starts() -> None:
    w = ready_world()
    asked: list[float | None] = []
    start_drain = w.heads.start_drain

    async def recording(ip: str, port: int, seconds: float | None = None) -> bool:
        asked.append(seconds)
        return await start_drain(ip, port, seconds)

    w.heads.start_drain = recording  # type: ignore[method-assign]
    w.edit("autoscaling.drainTimeoutSeconds", 900)
    w.edit("replicas", 1)
    for _ in range(4):
        w.reconcile()
        w.now += 5
    assert asked, "the draining gang's head was asked to drain"
    assert 880 <= (asked[0] or 0) <= 900, "what is left of the spec's current timeout, not a value in the pods"
