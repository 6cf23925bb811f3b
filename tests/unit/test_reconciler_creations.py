"""Gang creation outside the reconcile: a reconcile hands its gangs to the deployment's creations and returns;
what it hands over is planned from until the API shows it; a scale-down, a new revision, a failure or a lost
lease acts on what is still queued.

Each scenario runs in one event loop (the creations are tasks of it), against the fake `Kube` boundary whose
pod creates wait while ``hold`` is not released.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Mapping
from typing import Any

import pytest

from mimo_operator import labels as L
from mimo_operator.handlers import Loops
from mimo_operator.reconciler import Created, Creations, Event, Memory, ReconcileResult
from tests.helpers.operator_world import CRD, NS, World
from tests.helpers.specs import a_deployment


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


async def reconcile(w: World) -> ReconcileResult:
    """One reconcile, then the status it decided written (the gangs' creations may still be under way)."""
    result = await w.reconciler.reconcile(w.body(), w.memory)
    await w.memory.gang_writes.settle()
    await w.memory.status.settle()
    return result


async def edit(w: World, path: str, value: Any) -> None:
    """A user's edit of the spec (a new generation), as ``World.edit`` makes it, from inside the loop."""
    obj = w.body()
    node = obj["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    await w.kube.merge_patch(CRD, L.KIND, NS, obj["metadata"]["name"], {"spec": obj["spec"]})
    w.kube.writes.pop()


def pod_creates(w: World, since: int = 0) -> list[str]:
    return [name for verb, kind, name in w.kube.writes_since(since) if (verb, kind) == ("create", "Pod")]


def gang_of(pod: str) -> str:
    return pod.rsplit("-", 1)[0]


def test_a_reconcile_returns_while_its_gangs_are_created_and_plans_from_them_until_the_api_shows_them() -> None:
    w = World(a_deployment("d").replicas(3))
    w.apply_shared()

    async def scenario() -> None:
        w.kube.hold = asyncio.Event()
        await reconcile(w)
        assert w.memory.creations.busy(), "the reconcile returned with its gangs still being created"
        assert w.pods() == []
        # Reconciles while they are being created (a pod event, a resync) plan from them: nothing twice.
        for _ in range(3):
            result = await reconcile(w)
            assert result.requeue_after <= 1.0, "the loop comes back soon to see them land"
        assert len(w.status()["gangs"]) == 3, "status shows the gangs handed over"
        w.kube.hold.set()
        await w.memory.creations.settle()
        assert len(pod_creates(w)) == len({gang_of(p) for p in pod_creates(w)}) == 3, "no gang twice"
        assert len(w.live_gangs()) == 3
        assert sorted(w.live_gangs().values()) == [0, 1, 2]
        result = await reconcile(w)
        assert sorted(e.message.split()[1] for e in result.events if e.reason == "GangCreated") == sorted(
            w.live_gangs()), "each creation is reported once, by the next reconcile"
        assert not [e for e in (await reconcile(w)).events if e.reason == "GangCreated"]

    run(scenario())


def test_a_scale_down_drops_gangs_still_queued_and_waits_for_those_being_created() -> None:
    w = World(a_deployment("d").replicas(12))
    w.apply_shared()

    async def scenario() -> None:
        w.kube.hold = asyncio.Event()
        await reconcile(w)
        assert w.memory.creations.busy()
        queued = sorted(w.memory.expectations)
        assert len(queued) == 12
        await edit(w, "replicas", 2)
        # The reconcile returns at once; a gang already being created is deleted once its creation ended.
        await w.reconciler.reconcile(w.body(), w.memory)
        being_created = [g for g in queued if int(g.split("-")[1]) >= 2 and w.memory.creations.busy(g)]
        assert being_created
        assert all(w.memory.gang_writes.busy(g) for g in being_created), "their deletion waits outside"
        w.kube.hold.set()  # the gangs already being created finish; only then are they deleted
        await w.memory.gang_writes.settle()
        await w.memory.status.settle()
        await w.memory.creations.settle()
        for _ in range(2):
            w.kube.finish_deletions()
            await reconcile(w)
            await w.memory.creations.settle()
        w.kube.finish_deletions()
        assert sorted(w.live_gangs().values()) == [0, 1]
        started = {gang_of(p) for p in pod_creates(w)}
        assert len(started) <= w.memory.creations.concurrency + 2, \
            "a gang still queued when the scale-down came was never created"
        assert w.orphans() == []
        assert not w.memory.creations.busy()

    run(scenario())


def test_a_new_revision_drops_the_queued_gangs_of_the_old_one() -> None:
    w = World(a_deployment("d").replicas(12))
    w.apply_shared()

    async def scenario() -> None:
        w.kube.hold = asyncio.Event()
        await reconcile(w)
        old = set(w.memory.expectations)
        await edit(w, "podTemplate", {"labels": {"team": "b"}})
        await reconcile(w)
        # The pod template is part of what the shared objects say: the new revision's gangs follow them.
        await w.memory.shared.settle()
        await reconcile(w)
        w.kube.hold.set()
        await w.memory.creations.settle()
        created = {gang_of(p) for p in pod_creates(w)}
        dropped = old - created
        assert len(dropped) == 12 - w.memory.creations.concurrency, \
            "the old revision's gangs not yet started are never created"
        assert not dropped & set(w.memory.expectations), "and are not planned from"
        assert len([g for g in w.memory.expectations if g not in old]) >= len(dropped), \
            "their slots get gangs of the new revision"

    run(scenario())


def test_a_creation_the_api_fails_leaves_nothing_behind_pauses_creation_then_the_slot_gets_a_new_gang() -> None:
    w = World(a_deployment("d").replicas(2))
    w.kube.fail("create", "Pod", 503, "the server is currently unable to handle the request")
    result = w.reconcile()  # the failed creation wakes a second reconcile, which reports it
    failed = [e for e in result.events if e.reason == "GangCreateFailed"]
    assert len(failed) == 1
    assert "unable to handle the request" in failed[0].message
    gang = failed[0].message.split()[1].rstrip(":")
    assert gang not in w.gang_names(), "nothing of the failed gang stays behind"
    assert w.orphans() == []
    assert len(w.live_gangs()) == 1
    assert "gang creation resumes in" in json.dumps(w.status())
    mark = len(w.kube.writes)
    w.now += 1
    w.reconcile()
    assert pod_creates(w, mark) == [], "paused"
    w.now += 2
    w.reconcile()
    assert sorted(w.live_gangs().values()) == [0, 1]
    assert gang not in w.live_gangs(), "a new attempt, so a new name"
    w.reconcile()  # collects the new gang's creation
    assert w.memory.create_failures == 0
    assert "gang creation resumes in" not in json.dumps(w.status())


def test_failures_in_a_row_double_the_pause() -> None:
    w = World(a_deployment("d").replicas(1))
    pauses = []
    for _ in range(4):
        w.kube.fail("create", "NetworkPolicy", 500, "etcdserver: request timed out")
        w.reconcile()
        pauses.append(w.memory.create_retry_at - w.now)
        w.now = w.memory.create_retry_at
    assert pauses == [2.0, 4.0, 8.0, 16.0]
    w.reconcile()
    w.reconcile()
    assert len(w.live_gangs()) == 1
    assert w.memory.create_failures == 0


def test_losing_the_lease_cancels_what_is_queued_and_nothing_of_it_is_planned_from() -> None:
    w = World(a_deployment("d").replicas(3))
    w.apply_shared()

    async def scenario() -> None:
        w.kube.hold = asyncio.Event()
        await reconcile(w)
        assert len(w.memory.expectations) == 3
        await w.memory.stop()
        assert not w.memory.creations.busy()
        assert w.memory.expectations == {}
        w.kube.hold.set()
        await asyncio.sleep(0)
        assert w.pods() == [], "a cancelled creation lands nothing more"

    run(scenario())


class _HoldingReconciler:
    """Hands one gang to the creations on its first reconcile; the creation lands only once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.landed: list[str] = []

    async def reconcile(self, body: Mapping[str, Any], memory: Memory) -> ReconcileResult:
        if not self.landed and not memory.creations.busy():
            async def create() -> Created:
                await self.release.wait()
                self.landed.append("g")
                return Created("g", Event("Normal", "GangCreated", "gang g"))
            memory.creations.submit("g", "", "r", create)
        return ReconcileResult(requeue_after=30.0)


async def test_a_deleted_deployment_has_nothing_more_created() -> None:
    reconciler = _HoldingReconciler()
    loops = Loops(reconciler, None, 30.0)  # type: ignore[arg-type]
    body = {"metadata": {"namespace": NS, "name": "d", "uid": "u", "generation": 1}, "spec": {}}
    loops.seen(body, deleted=False)
    for _ in range(5):
        await asyncio.sleep(0)
    loop = loops.loops[(NS, "d")]
    assert loop.memory.creations.busy()
    assert loop.task is not None
    loops.seen(body, deleted=True)
    await asyncio.gather(loop.task, return_exceptions=True)
    assert not loop.memory.creations.busy()
    reconciler.release.set()
    await asyncio.sleep(0.01)
    assert reconciler.landed == []


def test_a_gang_handed_over_for_deletion_is_planned_as_going_and_deleted_once() -> None:
    w = World(a_deployment("d").replicas(1), budget=5)
    w.reconcile()
    (first,) = w.live_gangs()
    w.fail_pods()
    release = asyncio.Event()
    delete_collection = w.kube.delete_collection

    async def held(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        await delete_collection(*args, **kwargs)

    w.kube.delete_collection = held  # type: ignore[method-assign]

    async def scenario() -> None:
        w.now += 1
        result = await w.reconciler.reconcile(w.body(), w.memory)
        assert "GangFailed" in [e.reason for e in result.events]
        assert w.memory.gang_writes.busy(first), "the reconcile returned with the gang still being deleted"
        mark = len(w.kube.writes)
        for _ in range(3):  # pod events, a resync: the gang is going, not failed again
            w.now += 1
            again = await w.reconciler.reconcile(w.body(), w.memory)
            assert "GangFailed" not in [e.reason for e in again.events]
        release.set()
        await w.memory.gang_writes.settle()
        deletes = [name for verb, kind, name in w.kube.writes[mark:] if verb == "deletecollection" and kind == "Pod"]
        assert deletes == [f"{L.LABEL_GANG}={first}"], "deleted once"
        await w.memory.status.settle()

    run(scenario())
    w.kube.finish_deletions()
    w.now += 60
    w.reconcile()
    (second,) = w.live_gangs()
    assert second != first
    assert not w.memory.deleting, "forgotten once the list shows the gang gone"


def test_a_gang_handed_over_to_drain_is_planned_as_draining_and_its_drain_started_once() -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    release = asyncio.Event()
    patch = w.kube.merge_patch

    async def held(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if args[1] == "Pod":
            await release.wait()
        return await patch(*args, **kwargs)

    w.kube.merge_patch = held  # type: ignore[method-assign]
    w.edit("replicas", 1)

    async def scenario() -> None:
        result = await w.reconciler.reconcile(w.body(), w.memory)
        assert "GangDraining" in [e.reason for e in result.events]
        (gang,) = w.memory.draining
        assert w.memory.gang_writes.busy(gang), "the reconcile returned with the drain still being started"
        for _ in range(2):  # a pod event, a resync: not drained again
            again = await w.reconciler.reconcile(w.body(), w.memory)
            assert "GangDraining" not in [e.reason for e in again.events]
        await w.memory.status.settle()
        assert [g["name"] for g in w.status()["gangs"] if g["phase"] == "Draining"] == [gang], \
            "planned as draining while its head has not been told yet"
        release.set()
        await w.memory.gang_writes.settle()
        patched = [name for verb, kind, name in w.kube.writes if verb == "patch" and kind == "Pod"]
        assert len(patched) == 1, "the head's drain started once"

    run(scenario())
    head = next(p for p in w.pods() if L.ANNOTATION_DRAIN_STARTED in (p["metadata"].get("annotations") or {}))
    assert L.LABEL_SERVING not in head["metadata"]["labels"]
    w.reconcile()
    assert not w.memory.draining, "forgotten once the list shows it"


def hold_applies(w: World) -> asyncio.Event:
    """Every apply of the fake API waits until the returned event is set."""
    held = asyncio.Event()
    apply = w.kube.apply

    async def slow_apply(obj: Mapping[str, Any]) -> dict[str, Any]:
        await held.wait()
        return await apply(obj)

    w.kube.apply = slow_apply  # type: ignore[method-assign]
    return held


def test_a_reconcile_returns_while_the_shared_objects_are_applied_and_gangs_follow_them() -> None:
    w = World(a_deployment("d").replicas(2))
    held = hold_applies(w)
    woken: list[bool] = []
    w.memory.shared.wake = lambda: woken.append(True)

    async def scenario() -> None:
        result = await reconcile(w)
        assert w.memory.shared.busy(), "the reconcile returned with the shared objects still being applied"
        assert not w.memory.creations.busy(), "no gang before the shared objects"
        assert not w.gang_names()
        assert result.requeue_after <= 1.0
        progressing = next(c for c in w.status()["conditions"] if c["type"] == "Progressing")
        assert "shared objects" in progressing["message"]
        await reconcile(w)
        held.set()
        await w.memory.shared.settle()
        applied = [(kind, name) for verb, kind, name in w.kube.writes if verb == "apply"]
        assert applied
        assert len(applied) == len(set(applied)), "one apply at a time: each object applied once"
        assert woken, "the end of the apply pokes the deployment's loop"
        await reconcile(w)
        await w.memory.creations.settle()
        assert len(w.gang_names()) == 2

    run(scenario())


def test_a_scale_up_waits_for_no_apply_of_the_disruption_budget_it_changes() -> None:
    w = World(a_deployment("d").replicas(1))
    w.reconcile()
    w.run_pods()
    (budget,) = [o for (_, kind, _, _), o in w.kube.objects.items() if kind == "PodDisruptionBudget"]
    held = hold_applies(w)

    async def scenario() -> None:
        await edit(w, "replicas", 3)
        await reconcile(w)
        assert w.memory.shared.busy(), "the budget's apply is under way"
        assert w.memory.creations.busy() or len(w.gang_names()) == 3, "the new gangs did not wait for it"
        held.set()
        await w.memory.shared.settle()
        await w.memory.creations.settle()
        assert len(w.gang_names()) == 3
        (after,) = [o for (_, kind, _, _), o in w.kube.objects.items() if kind == "PodDisruptionBudget"]
        assert (budget["spec"]["minAvailable"], after["spec"]["minAvailable"]) == (0, 2)

    run(scenario())


def test_shared_objects_the_api_failed_to_take_hold_gangs_back_say_why_and_are_applied_again_after_a_back_off(
        ) -> None:
    w = World(a_deployment("d").replicas(1))
    w.kube.fail("apply", "NetworkPolicy", 503, "etcdserver: request timed out", times=2)
    w.reconcile()
    assert not w.gang_names()
    degraded = next(c for c in w.status()["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "etcdserver: request timed out" in degraded["message"]
    mark = len(w.kube.writes)
    w.now += 1
    w.reconcile()
    assert not [verb for verb, _, _ in w.kube.writes_since(mark) if verb == "apply"], "not before the back-off"
    w.now += 2
    w.reconcile()  # fails again: the back-off doubles
    assert w.memory.shared.failures == 2
    assert not w.gang_names()
    w.now += 3
    w.reconcile()
    assert not w.gang_names(), "still within the doubled back-off"
    w.now += 2
    w.reconcile()
    assert len(w.gang_names()) == 1
    degraded = next(c for c in w.status()["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"


@pytest.mark.parametrize(("kind", "api_version", "name"), [
    ("Deployment", "apps/v1", "d-router"), ("ServiceAccount", "v1", "d-router"),
    ("PodDisruptionBudget", "policy/v1", "d-engine"), ("Service", "v1", "d-gangs"),
])
def test_an_object_of_that_name_that_is_not_the_deployment_s_is_never_taken_over(
        kind: str, api_version: str, name: str) -> None:
    w = World(a_deployment("d").replicas(1))
    theirs = {"apiVersion": api_version, "kind": kind,
              "metadata": {"name": name, "namespace": NS, "labels": {"team": "search"}}, "spec": {"theirs": True}}
    asyncio.run(w.kube.create(theirs))
    w.reconcile()
    assert not w.gang_names()
    assert w.kube.objects[(api_version, kind, NS, name)]["spec"] == {"theirs": True}, "left as it was"
    degraded = next(c for c in w.status()["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert f"{kind} {name} already exists in namespace {NS} and is not this deployment's" in degraded["message"]
    asyncio.run(w.kube.delete(api_version, kind, NS, name))
    w.now += 3  # past the back-off
    w.reconcile()
    assert len(w.gang_names()) == 1
    assert L.LABEL_DEPLOYMENT in w.kube.objects[(api_version, kind, NS, name)]["metadata"]["labels"]


def one_of_two_gangs_draining_with_silent_heads(w: World) -> list[str]:
    """Two gangs serving, then one to drain, with heads that take every request and never answer (no drain is
    ever said done); the IPs the heads were asked at."""
    w.reconcile()
    w.run_pods()
    w.reconcile()
    silent = asyncio.Event()  # never set
    asked: list[str] = []

    async def no_answer(ip: str, port: int, *_: Any) -> None:
        asked.append(ip)
        await silent.wait()

    w.heads.drain_state = no_answer  # type: ignore[method-assign,assignment]
    w.heads.fabric = no_answer  # type: ignore[method-assign,assignment]
    w.edit("replicas", 1)
    return asked


def test_a_gang_head_that_does_not_answer_holds_no_reconcile_and_its_drain_ends_at_the_timeout() -> None:
    w = World(a_deployment("d").replicas(2))
    asked = one_of_two_gangs_draining_with_silent_heads(w)

    async def scenario() -> None:
        await reconcile(w)
        (gang,) = w.memory.draining
        w.now += 10  # past the router's grace: the head is asked for its drain
        for _ in range(3):
            await reconcile(w)
        assert w.memory.probes.busy(f"drain {gang}"), "the reconciles returned while the head has not answered"
        assert len([ip for ip in asked if ip]) >= 1
        probes = len(asked)
        await reconcile(w)
        assert len(asked) == probes, "a head is asked again only once it answered"
        w.now += 3600  # past any drain timeout: the gang goes, answer or not
        await reconcile(w)
        assert gang in w.memory.deleting
        await w.memory.stop()

    run(scenario())


def test_a_drain_times_out_on_time_after_the_clock_stepped_back() -> None:
    w = World(a_deployment("d").replicas(2).set("autoscaling.drainTimeoutSeconds", 120))
    one_of_two_gangs_draining_with_silent_heads(w)

    async def scenario() -> None:
        await reconcile(w)
        (gang,) = w.memory.draining
        for _ in range(3):
            w.now += 10
            await reconcile(w)
        assert gang not in w.memory.deleting
        w.now -= 3600  # the clock stepped back an hour: the drain's annotation is now in the future
        for _ in range(8):  # 80 s more of draining: 110 s in all, short of the timeout
            w.now += 10
            await reconcile(w)
        assert gang not in w.memory.deleting, "a drain is not cut short by the step"
        for _ in range(2):
            w.now += 10
            await reconcile(w)
        assert gang in w.memory.deleting, "the timeout passed 120 s after the drain began, not an hour later"
        await w.memory.stop()

    run(scenario())


def test_every_deployment_s_creations_share_the_operator_s_slots_and_a_creation_waiting_for_one_can_be_dropped(
) -> None:
    async def scenario() -> None:
        slots = asyncio.Semaphore(2)
        queues = [Creations(concurrency=8), Creations(concurrency=8)]
        for q in queues:
            q.slots = slots
        running: set[str] = set()
        most = 0
        gate = asyncio.Event()

        def creating(gang: str) -> Any:
            async def run() -> Created:
                nonlocal most
                running.add(gang)
                most = max(most, len(running))
                await gate.wait()
                running.discard(gang)
                return Created(gang, None)
            return run

        for d, q in enumerate(queues):
            for g in range(4):
                q.submit(f"d{d}-g{g}", "", "r", creating(f"d{d}-g{g}"))
        await asyncio.sleep(0.01)
        assert len(running) == 2, "two slots for both deployments' eight gangs"
        # A gang still waiting for a slot was never started: a scale-down can drop it.
        assert queues[1].drop_queued(lambda j: j.gang != "d1-g3") == ["d1-g3"]
        gate.set()
        for q in queues:
            await q.settle()
        assert most == 2
        done = sorted(c.gang for q in queues for c in q.collect())
        assert done == ["d0-g0", "d0-g1", "d0-g2", "d0-g3", "d1-g0", "d1-g1", "d1-g2"]

    run(scenario())
