"""Faults a gang meets outside its engine, and what the operator makes of them: a container the kubelet cannot
start (its image, a Secret), a pod that stays Terminating, a cluster without room for hours, a pod evicted or
preempted.

Each is read from pods as the API shows them (`gangs_from_pods`), planned (`next_steps`) and, where the user
reads it, run through the reconciler against the in-memory API (`World`) to what status says.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from mimo_operator import labels as L
from mimo_operator.gangs import STUCK_TERMINATING_SECONDS, GangHealth, ObservedGang, epoch, gangs_from_pods, health_of
from mimo_operator.labels import gang_name
from mimo_operator.steps import CreateGang, DeleteGang, Desired, ReplicaRecord, next_steps
from tests.helpers.operator_world import NS, World
from tests.helpers.specs import DeploymentBuilder, a_deployment

CREATED = "2026-12-05T00:00:00Z"
T0 = epoch(CREATED)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def a_pod(gang: str, rank: int, size: int = 2, *, replica: int = 0, revision: str = "r", attempt: int = 1,
          created: float = T0, node: str | None = None, deleted: float | None = None,
          **status: Any) -> dict[str, Any]:
    """One engine pod as the API shows it: ``node`` None leaves it unplaced; ``status`` is its status
    (phase Running unless given); ``deleted`` its deletionTimestamp."""
    meta: dict[str, Any] = {
        "name": f"{gang}-{rank}", "uid": f"{gang}-{rank}", "creationTimestamp": _iso(created),
        "labels": {L.LABEL_GANG: gang, L.LABEL_RANK: str(rank), L.LABEL_GANG_SIZE: str(size),
                   L.LABEL_REPLICA: str(replica), L.LABEL_REVISION: revision, L.LABEL_ATTEMPT: str(attempt)}}
    if deleted is not None:
        meta["deletionTimestamp"] = _iso(deleted)
    spec = {"nodeName": node} if node else {}
    return {"metadata": meta, "spec": spec, "status": {"phase": "Running", **status}}


def one_gang(pods: list[dict[str, Any]]) -> ObservedGang:
    (gang,) = gangs_from_pods(pods)
    return gang


def engine_waiting(reason: str, message: str, *, init: bool = False,
                   image: str = "registry.example/sglang:typo") -> dict[str, Any]:
    """The status of a placed pod one of whose containers waits for ``reason``."""
    waiting = {"name": "fetch" if init else "engine", "ready": False, "restartCount": 0, "image": image,
               "state": {"waiting": {"reason": reason, "message": message}}}
    return {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            "initContainerStatuses" if init else "containerStatuses": [waiting]}


# --- 1. A container the kubelet cannot start: named in status, kept (not recreated), no budget spent.

# (reason, the kubelet's message, whether no retry clears it)
CANNOT_START = {
    "an image the registry does not have": (
        "ErrImagePull", 'rpc error: code = NotFound desc = failed to pull and unpack image '
        '"registry.example/sglang:typo": not found', False),
    "a pull in back-off": ("ImagePullBackOff", 'Back-off pulling image "registry.example/sglang:typo"', False),
    "a registry that refuses the pull": (
        "ErrImagePull", 'failed to pull image "registry.example/sglang:typo": 401 Unauthorized', False),
    "an image name that does not parse": (
        "InvalidImageName", 'Failed to apply default image tag "registry.example/SGLang:": couldn\'t parse image '
        'reference "registry.example/SGLang:": invalid reference format', True),
    "an image never pulled with pull policy Never": (
        "ErrImageNeverPull", 'Container image "registry.example/sglang:typo" is not present with pull policy of '
        'Never', True),
    "a missing token Secret": ("CreateContainerConfigError", 'secret "hf" not found', False),
    "a missing key of the token Secret": ("CreateContainerConfigError", "couldn't find key token in Secret ns/hf",
                                          False),
    "a container the runtime cannot create": (
        "CreateContainerError", 'failed to generate container "abc" spec: failed to mkdir "/models": permission '
        'denied', False),
}


@pytest.mark.parametrize("case", list(CANNOT_START), ids=list(CANNOT_START))
@pytest.mark.parametrize("init", [False, True], ids=["engine container", "init container"])
@pytest.mark.parametrize("rank", [0, 1], ids=["head", "member"])
def test_a_container_that_cannot_start_is_named_with_its_pod_reason_and_message(
        case: str, init: bool, rank: int) -> None:
    reason, message, permanent = CANNOT_START[case]
    pods = [a_pod("g", r, node=f"node-{r}", **(engine_waiting(reason, message, init=init) if r == rank else
                                               {"phase": "Pending"})) for r in range(2)]
    health = health_of(one_gang(pods), T0 + 3600, unschedulable_deadline=300)
    assert health.state is GangHealth.STARTING, "kept: a new gang would meet the same image or Secret"
    assert health.degraded
    assert health.extra["cannot_start"] == reason
    assert bool(health.extra["permanent"]) is permanent
    assert f"g-{rank}" in health.reason
    assert f"node-{rank}" in health.reason
    assert reason in health.reason
    assert message in health.reason
    assert ("the spec must change" in health.reason) is permanent


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"])
@pytest.mark.parametrize("message", ["", "Back-off pulling image"], ids=["no message", "a message without it"])
def test_a_pull_error_names_the_image_even_when_the_kubelets_message_does_not(reason: str, message: str) -> None:
    pods = [a_pod("g", 0, 1, node="n", **engine_waiting(reason, message, image="registry.example/sglang:v9"))]
    health = health_of(one_gang(pods), T0 + 60, unschedulable_deadline=300)
    assert "registry.example/sglang:v9" in health.reason
    assert reason in health.reason


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing"])
def test_a_container_on_its_way_is_no_trouble(reason: str) -> None:
    pods = [a_pod("g", 0, 1, node="n", **engine_waiting(reason, ""))]
    health = health_of(one_gang(pods), T0 + 60, unschedulable_deadline=300)
    assert health.state is GangHealth.STARTING
    assert not health.degraded
    assert "cannot start" not in health.reason


def _waiting_everywhere(w: World, reason: str, message: str) -> None:
    for i, p in enumerate(w.pods()):
        if not p["metadata"].get("deletionTimestamp"):
            w.kube.set_pod(p["metadata"]["name"], node=f"node-{i}", **engine_waiting(reason, message))


@pytest.mark.parametrize("case", list(CANNOT_START), ids=list(CANNOT_START))
def test_a_deployment_whose_containers_cannot_start_says_why_in_degraded_and_keeps_its_gangs(case: str) -> None:
    reason, message, _ = CANNOT_START[case]
    w = World(a_deployment("d").pro().replicas(2))
    w.reconcile()
    first = set(w.created)
    _waiting_everywhere(w, reason, message)
    for _ in range(180):  # an hour of reconciles, 20 s apart
        w.reconcile()
        w.now += 20
    status = w.status()
    assert set(w.created) == first, "no gang is recreated: the same image or Secret would stop the next one"
    assert all(r["restarts"] == 0 and not r["failed"] for r in status["replicaRecords"]), "no budget is spent"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert status["phase"] == "Degraded"
    for gang in status["gangs"]:
        assert gang["phase"] == "Starting"
        assert f"{gang['name']}-0" in gang["message"]
        assert reason in gang["message"]
        assert message[:80] in gang["message"]
        assert f"gang {gang['name']}: pod {gang['name']}-0" in degraded["message"]
    assert message[:80] in degraded["message"]
    w.reconcile()  # one whose periodic checks (shared objects, orphans) were due: those are looked at in 1 s
    assert w.reconcile().requeue_after == 10.0, "looked at every 10 s, not every 2: its pod events wake it"
    # The kubelet gets through (the Secret is created, the registry is back): the same gangs serve.
    w.run_pods()
    w.reconcile()
    status = w.status()
    assert status["phase"] == "Ready"
    assert next(c for c in status["conditions"] if c["type"] == "Degraded")["status"] == "False"
    assert set(w.created) == first


# --- 2. A pod stuck Terminating: named under Degraded once overdue; it does not hold the phase at Progressing.


@pytest.mark.parametrize("grace", [0, 30, 630], ids=lambda g: f"grace {g} s")
@pytest.mark.parametrize("stuck", [(0,), (1,), (0, 1)], ids=["the head", "a member", "both"])
def test_a_pod_terminating_past_its_grace_period_and_a_margin_is_named_with_its_node(
        grace: int, stuck: tuple[int, ...]) -> None:
    asked = T0 + 1000
    # The API sets deletionTimestamp to when the deletion was asked plus the grace period.
    pods = [a_pod("g", r, node=f"node-{r}", deleted=asked + grace) for r in stuck]
    gang = one_gang(pods)
    in_time = health_of(gang, asked + grace + STUCK_TERMINATING_SECONDS - 1, unschedulable_deadline=300)
    assert in_time.state is GangHealth.TERMINATING
    assert not in_time.degraded, "a pod within its grace period (and the margin) is merely going"
    late = health_of(gang, asked + grace + STUCK_TERMINATING_SECONDS + 100, unschedulable_deadline=300)
    assert late.state is GangHealth.TERMINATING
    assert late.degraded
    assert late.extra["stuck"]
    assert f"g-{stuck[0]}" in late.reason
    assert f"node node-{stuck[0]}" in late.reason
    assert f"{STUCK_TERMINATING_SECONDS + 100:.0f} s after its grace period" in late.reason


def _deleted_by_someone(w: World) -> None:
    asyncio.run(w.kube.delete("v1", "Pod", NS, w.pods()[0]["metadata"]["name"]))


def _failed(w: World) -> None:
    w.fail_pods()


def _oom_killed_and_held(w: World) -> None:
    """Its pod OOM-killed: the operator deletes the gang, and a finalizer holds the pod."""
    name = w.pods()[0]["metadata"]["name"]
    w.kube.set_pod(name, phase="Failed", containerStatuses=[
        {"name": "engine", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
    w.kube.objects[("v1", "Pod", NS, name)]["metadata"]["finalizers"] = ["example.com/hold"]


HOW_IT_WENT = {"its pod deleted by someone (its node gone)": _deleted_by_someone,
               "its pod failed and the operator deleted the gang": _failed,
               "its pod OOM-killed and held by a finalizer": _oom_killed_and_held}


@pytest.mark.parametrize("how", list(HOW_IT_WENT), ids=list(HOW_IT_WENT))
def test_a_pod_stuck_terminating_is_degraded_but_does_not_keep_the_deployment_progressing(how: str) -> None:
    w = World(a_deployment("d").replicas(1))
    w.reconcile()
    w.run_pods()
    w.now += 100
    w.reconcile()
    (old,) = w.live_gangs()
    stuck = f"{old}-0"
    HOW_IT_WENT[how](w)
    for _ in range(6):  # the old gang is deleted (never finishes), the new one created and Ready
        w.now += 5
        w.reconcile()
        w.run_pods()
    w.reconcile()
    (new,) = w.live_gangs()
    assert new != old
    status = w.status()
    assert status["readyReplicas"] == 1
    assert status["phase"] == "Progressing", "a pod within its grace period is a deletion going on"
    w.now += STUCK_TERMINATING_SECONDS + 30
    for _ in range(3):
        w.reconcile()
        w.now += 30
    status = w.status()
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Ready", "the replacement serves: nothing the operator does makes the old pod go"
    assert conditions["Progressing"]["status"] == "False"
    assert conditions["Degraded"]["status"] == "True"
    assert stuck in conditions["Degraded"]["message"]
    assert f"node-{stuck}" in conditions["Degraded"]["message"], "the node is named: it may be gone"
    (entry,) = [g for g in status["gangs"] if g["name"] == old]
    assert entry["phase"] == "Terminating"
    assert "grace period" in entry["message"]


# --- 3. The restart budget: spent by the replica's own failures only, and a spent budget is tried again at the cap.

UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/40 nodes are available: 40 Insufficient nvidia.com/gpu."}


def _disrupted(condition_reason: str, message: str) -> dict[str, Any]:
    return {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": condition_reason,
                            "message": message}]}


# How rank 1 of a gang was lost when it was not the replica's fault: (pod fields, deleted, words status names).
NOT_THE_REPLICAS = {
    "no room in the cluster past the deadline": (
        {"node": None, "phase": "Pending", "conditions": [UNSCHEDULABLE]}, False, "Insufficient nvidia.com/gpu"),
    "evicted for node pressure": (
        {"phase": "Failed", "reason": "Evicted",
         "message": "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi",
         "containerStatuses": [{"name": "engine", "state": {"terminated": {
             "exitCode": 137, "reason": "ContainerStatusUnknown"}}}]}, False, "Evicted: The node was low"),
    "preempted by the scheduler": (
        _disrupted("PreemptionByScheduler", "default-scheduler: preempting to accommodate a higher priority pod"),
        True, "PreemptionByScheduler"),
    "evicted by a node drain": (_disrupted("EvictionByEvictionAPI", "Eviction API: evicting"), True,
                                "EvictionByEvictionAPI"),
    "deleted for its node's NoExecute taint": (
        _disrupted("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint"), True,
        "DeletionByTaintManager"),
    "deleted after its node was lost": (_disrupted("DeletionByPodGC", "PodGC: node no longer exists"), True,
                                        "DeletionByPodGC"),
    "lost with its node": ({"phase": "Failed", "reason": "NodeLost", "message": "Node node-1 which was running pod "
                            "is unresponsive"}, False, "NodeLost"),
    "stopped by its node's shutdown": (
        {"phase": "Failed", "reason": "Terminated",
         "message": "Pod was terminated in response to imminent node shutdown.",
         **_disrupted("TerminationByKubelet", "Pod was terminated in response to imminent node shutdown.")},
        False, "imminent node shutdown"),
    "preempted for a critical pod": ({"phase": "Failed", "reason": "Preempting",
                                      "message": "Preempted in order to admit critical pod"}, False, "Preempting"),
}

PEER = {"running": {}, "ended because it lost its peer": {
    "phase": "Failed", "containerStatuses": [{"name": "engine", "state": {"terminated": {
        "exitCode": 1, "reason": "Error", "message": "NCCL error: remote process exited"}}}]}}


def _lost_gang(case: str, peer: str, attempt: int, now: float, deadline: float) -> ObservedGang:
    fields, deleted, _ = NOT_THE_REPLICAS[case]
    name = gang_name("d", 0, "r", attempt)
    # An unplaced gang was created before its deadline; a disrupted one ran a while.
    created = now - deadline - 10
    head = a_pod(name, 0, attempt=attempt, created=created, node="node-0", **PEER[peer])
    rest = {k: v for k, v in fields.items() if k != "node"}
    member = a_pod(name, 1, attempt=attempt, created=created, node=fields.get("node", "node-1"),
                   deleted=now - 1 if deleted else None, **rest)
    return one_gang([head, member])


# A gang that was never placed has no peer that ran.
LOSSES = [(case, peer) for case in NOT_THE_REPLICAS for peer in PEER if peer == "running" or "no room" not in case]


@pytest.mark.parametrize(("case", "peer"), LOSSES, ids=[f"{c}, its peer {p}" for c, p in LOSSES])
def test_a_gang_lost_to_the_cluster_spends_no_budget_and_never_backs_off_longer(case: str, peer: str) -> None:
    desired = Desired(replicas=1, revision="r", size=2, restart_budget=2, backoff_base=10, backoff_cap=600)
    records = {0: ReplicaRecord(attempt=1)}
    now = T0 + 10_000
    for attempt in range(1, 2 * desired.restart_budget + 3):  # far more losses than the budget
        gang = _lost_gang(case, peer, attempt, now, desired.unschedulable_deadline)
        out = next_steps(desired, [gang], records, now)
        assert out.health[gang.name].state is GangHealth.FAILED
        assert out.steps == [DeleteGang(gang.name, f"gang failed: {out.health[gang.name].reason}")]
        records = out.records
        assert records[0].restarts == 0, "not the replica's failure"
        assert not records[0].failed
        assert NOT_THE_REPLICAS[case][2] in records[0].last_failure
        # The first back-off every time, never doubling: nothing is wrong with the replica.
        assert records[0].next_attempt_at == now + desired.backoff_base
        assert next_steps(desired, [], records, now + desired.backoff_base - 1).steps == []
        out = next_steps(desired, [], records, now + desired.backoff_base)
        assert out.steps == [CreateGang(0, attempt + 1, "replica has no gang")]
        records = out.records
        now += 600


CRASHES = {
    "an engine error": {"exitCode": 1, "reason": "Error"},
    "an engine out of memory": {"exitCode": 137, "reason": "OOMKilled"},
    "a failed fabric check": {"exitCode": 3, "reason": "Error", "message": "fabric check failed: all-to-all 12 GB/s"},
}


@pytest.mark.parametrize("crash", list(CRASHES), ids=list(CRASHES))
@pytest.mark.parametrize("budget", [0, 2, 3])
def test_a_crashing_engine_still_spends_the_budget_with_doubling_back_off(crash: str, budget: int) -> None:
    desired = Desired(replicas=1, revision="r", size=1, restart_budget=budget, backoff_base=10, backoff_cap=600)
    records = {0: ReplicaRecord(attempt=1)}
    now, attempt, gaps = T0, 1, []
    while True:
        name = gang_name("d", 0, "r", attempt)
        gang = one_gang([a_pod(name, 0, 1, attempt=attempt, node="n", phase="Failed", containerStatuses=[
            {"name": "engine", "state": {"terminated": CRASHES[crash]}}])])
        records = next_steps(desired, [gang], records, now).records
        if records[0].failed:
            break
        failed_at = now
        while not (out := next_steps(desired, [], records, now)).steps:
            now += 1
        gaps.append(now - failed_at)
        records = out.records
        attempt = out.records[0].attempt
    assert gaps == [10 * 2 ** i for i in range(budget)]
    assert records[0].restarts == budget + 1
    assert CRASHES[crash]["reason"] in records[0].last_failure


@pytest.mark.parametrize("budget", [0, 1, 3])
@pytest.mark.parametrize("cap", [300.0, 600.0])
def test_a_spent_budget_is_tried_again_at_the_back_off_cap_and_a_gang_that_serves_clears_it(
        budget: int, cap: float) -> None:
    desired = Desired(replicas=1, revision="r", size=1, restart_budget=budget, backoff_base=10, backoff_cap=cap)
    records = {0: ReplicaRecord(attempt=1, restarts=budget, revision="r")}
    now = T0

    def crashed(attempt: int) -> ObservedGang:
        name = gang_name("d", 0, "r", attempt)
        return one_gang([a_pod(name, 0, 1, attempt=attempt, node="n", phase="Failed", containerStatuses=[
            {"name": "engine", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}])])

    attempt = 1
    for retry in range(3):  # each retry that fails again waits the cap again, never the base
        records = next_steps(desired, [crashed(attempt)], records, now).records
        assert records[0].failed
        assert records[0].restarts == budget + 1 + retry
        waiting = next_steps(desired, [], records, now + cap - 1)
        assert waiting.steps == []
        assert f"tried again in 1 s, at the back-off cap of {cap:.0f} s" in waiting.waiting[0]
        assert "exit code 1 (Error)" in waiting.waiting[0]
        now += cap
        out = next_steps(desired, [], records, now)
        (create,) = out.steps
        assert isinstance(create, CreateGang)
        assert "restart budget is spent" in create.reason
        records, attempt = out.records, create.attempt
        now += 1
    # This time the gang serves: once it has proven itself, the replica is whole again.
    name = gang_name("d", 0, "r", attempt)
    serving = one_gang([a_pod(name, 0, 1, attempt=attempt, node="n", conditions=[
        {"type": "Ready", "status": "True", "lastTransitionTime": _iso(now)}])])
    still = next_steps(desired, [serving], records, now + desired.proven_after - 1).records
    assert still[0].failed, "Ready for a moment proves nothing"
    proven = next_steps(desired, [serving], records, now + desired.proven_after).records
    assert not proven[0].failed
    assert proven[0].restarts == 0


def _full_cluster_then_room(w: World, full_for: float, total: float) -> None:
    start = w.now
    while w.now < start + total:
        w.reconcile()
        for p in w.pods():
            if p["metadata"].get("deletionTimestamp") or (p.get("spec") or {}).get("nodeName"):
                continue
            if w.now < start + full_for:
                w.kube.set_pod(p["metadata"]["name"], phase="Pending", conditions=[UNSCHEDULABLE])
            else:
                w.run_pods()
        w.kube.finish_deletions()
        w.now += 30


@pytest.mark.parametrize("hours", [0.5, 3.0])
@pytest.mark.parametrize("budget", [0, 3])
def test_a_replica_comes_back_when_a_cluster_full_for_hours_has_room_again(hours: float, budget: int) -> None:
    w = World(a_deployment("d").pro().replicas(2), budget=budget)
    _full_cluster_then_room(w, hours * 3600, hours * 3600 + 900)
    status = w.status()
    assert status["readyReplicas"] == 2, "the replicas come back as soon as there is room"
    assert status["phase"] == "Ready"
    assert all(r["restarts"] == 0 and not r["failed"] for r in status["replicaRecords"])
    assert "Insufficient nvidia.com/gpu" in status["replicaRecords"][0]["lastFailure"]


def test_a_replica_whose_budget_an_outage_spent_comes_back_at_the_back_off_cap_and_status_says_so() -> None:
    w = World(a_deployment("d").replicas(1), budget=1)
    start = w.now
    spent_at: float | None = None
    created_at: dict[str, float] = {}
    while w.now < start + 2000:
        w.reconcile()
        created_at.update({g: w.now for g in w.created if g not in created_at})
        if spent_at is None:
            w.run_pods()
            w.reconcile()
            w.fail_pods()  # the engine crashes while, say, the shared storage is down
        elif any(not (p.get("spec") or {}).get("nodeName") for p in w.pods()):
            w.run_pods()  # a new gang starts and serves (once: its pods stay Ready from then on)
        w.kube.finish_deletions()
        if spent_at is None and (w.status().get("replicaRecords") or [{}])[0].get("failed"):
            spent_at = w.now  # the outage ends; nobody edits the spec
            degraded = next(c for c in w.status()["conditions"] if c["type"] == "Degraded")
            assert degraded["status"] == "True"
            assert "at the back-off cap of 600 s" in degraded["message"]
            assert "exit code 1 (Error)" in degraded["message"]
        w.now += 10
    assert spent_at is not None
    retries = [g for g, t in created_at.items() if t > spent_at]
    assert len(retries) == 1, "one retry at the cap, not a restart storm"
    assert spent_at + 600 - 10 <= created_at[retries[0]] <= spent_at + 600 + 10
    status = w.status()
    assert list(w.live_gangs()) == retries
    assert status["readyReplicas"] == 1
    assert status["phase"] == "Ready"
    assert not status["replicaRecords"][0]["failed"], "a gang that served a minute clears the spent budget"


# --- 4. What took a pod away is named, not the exit code its container was given.


DISRUPTIONS = [(case, peer) for case, peer in LOSSES if "no room" not in case]


@pytest.mark.parametrize(("case", "peer"), DISRUPTIONS, ids=[f"{c}, its peer {p}" for c, p in DISRUPTIONS])
def test_a_disrupted_pod_is_named_by_what_took_it_with_its_node(case: str, peer: str) -> None:
    gang = _lost_gang(case, peer, 1, T0 + 1000, 300)
    health = health_of(gang, T0 + 1000, unschedulable_deadline=300)
    assert health.state is GangHealth.FAILED
    assert health.extra.get("disrupted")
    assert NOT_THE_REPLICAS[case][2] in health.reason
    assert f"{gang.name}-1 (rank 1) on node node-1" in health.reason, "the disrupted rank, not its peer"
    assert "ContainerStatusUnknown" not in health.reason
    assert "NCCL" not in health.reason


FAILED_WITHOUT_DISRUPTION = {
    "out of memory": ({"containerStatuses": [{"name": "engine", "state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled"}}}]}, "exit code 137 (OOMKilled)"),
    "refused by the kubelet for lack of GPUs": (
        {"reason": "OutOfnvidia.com/gpu", "message": "Node didn't have enough resource: nvidia.com/gpu, requested: 8, "
         "used: 0, capacity: 0"}, "OutOfnvidia.com/gpu: Node didn't have enough resource"),
    "refused by a device plugin": ({"reason": "UnexpectedAdmissionError", "message": "Allocate failed due to "
                                    "device plugin GetPreferredAllocation rpc failed"}, "UnexpectedAdmissionError"),
    "an init container that failed": ({"initContainerStatuses": [
        {"name": "fetch", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        {"name": "check", "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "no GPU visible"}}}]},
        "exit code 2 (Error): no GPU visible"),
}


@pytest.mark.parametrize("case", list(FAILED_WITHOUT_DISRUPTION), ids=list(FAILED_WITHOUT_DISRUPTION))
def test_a_pod_that_failed_on_its_own_is_named_by_its_reason_and_is_the_replicas_failure(case: str) -> None:
    fields, words = FAILED_WITHOUT_DISRUPTION[case]
    gang = one_gang([a_pod("g", 0, 1, node="n", **{"phase": "Failed", **fields})])
    health = health_of(gang, T0 + 1000, unschedulable_deadline=300)
    assert health.state is GangHealth.FAILED
    assert not health.extra.get("disrupted")
    assert words in health.reason
    assert not health.reason.endswith("ended: Failed")


EVICTIONS = {
    "node pressure": ({"phase": "Failed", "reason": "Evicted",
                       "message": "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi",
                       "containerStatuses": [{"name": "engine", "state": {"terminated": {
                           "exitCode": 137, "reason": "ContainerStatusUnknown"}}}]},
                      "Evicted: The node was low on resource: ephemeral-storage"),
    "memory pressure": ({"phase": "Failed", "reason": "Evicted",
                         "message": "The node was low on resource: memory. Container engine was using 900Gi.",
                         "containerStatuses": [{"name": "engine", "state": {"terminated": {
                             "exitCode": 137, "reason": "Error"}}}]}, "Evicted: The node was low on resource: memory"),
    "a critical pod": ({"phase": "Failed", "reason": "Preempting",
                        "message": "Preempted in order to admit critical pod"}, "Preempting: Preempted in order"),
}


@pytest.mark.parametrize("case", list(EVICTIONS), ids=list(EVICTIONS))
def test_an_evicted_gangs_event_and_record_name_the_eviction_and_spend_no_budget(case: str) -> None:
    status, words = EVICTIONS[case]
    w = World(a_deployment("d").replicas(1))
    w.reconcile()
    w.run_pods()
    w.now += 100
    w.reconcile()
    w.kube.set_pod(w.pods()[0]["metadata"]["name"], **status)
    w.now += 1
    result = w.reconcile()
    (event,) = [e for e in result.events if e.reason == "GangFailed"]
    assert words in event.message
    assert "ContainerStatusUnknown" not in event.message
    (record,) = w.status()["replicaRecords"]
    assert words in record["lastFailure"]
    assert record["restarts"] == 0


# ------------------------------------------------------------------------------------- pods edited by hand


def serving(builder: DeploymentBuilder) -> World:
    """A deployment whose gangs have all turned Ready."""
    w = World(builder)
    w.reconcile()
    w.run_pods()
    w.now += 60
    w.reconcile()
    return w


@pytest.mark.parametrize("label", [L.LABEL_RANK, L.LABEL_REPLICA, L.LABEL_ATTEMPT, L.LABEL_GANG_SIZE])
def test_a_label_that_is_no_number_fails_its_gang_and_names_it(label: str) -> None:
    pods = [a_pod("g", 0, node="n0", conditions=[{"type": "Ready", "status": "True"}]),
            a_pod("g", 1, node="n1", conditions=[{"type": "Ready", "status": "True"}])]
    pods[1]["metadata"]["labels"][label] = "oops"
    health = health_of(one_gang(pods), T0 + 100, 300.0)
    assert health.state is GangHealth.FAILED
    assert f"pod g-1: {label}='oops'" in health.reason


def test_pods_with_a_gangs_labels_that_are_not_its_ranks_are_not_counted() -> None:
    ready = {"node": "n0", "conditions": [{"type": "Ready", "status": "True"}]}
    copy_of_head = a_pod("g", 0, **ready)
    copy_of_head["metadata"]["name"] = "g-0-debug"  # kubectl debug --copy-to keeps the labels
    extra = a_pod("g", 5, **ready)                    # a rank past the gang's size
    gang = one_gang([a_pod("g", 0, **ready), a_pod("g", 1, **ready), copy_of_head, extra])
    assert [p.name for p in gang.pods] == ["g-0", "g-1"]
    assert health_of(gang, T0 + 100, 300.0).state is GangHealth.READY


def test_a_label_edited_on_one_gang_replaces_that_gang_and_the_others_are_still_served() -> None:
    w = serving(a_deployment("d").pro().h200().replicas(2))
    assert w.status()["phase"] == "Ready"
    first, second = sorted(w.live_gangs())
    victim = next(p["metadata"]["name"] for p in w.pods() if p["metadata"]["labels"][L.LABEL_GANG] == first
                  and p["metadata"]["labels"][L.LABEL_RANK] == "1")
    asyncio.run(w.kube.merge_patch("v1", "Pod", NS, victim, {"metadata": {"labels": {L.LABEL_RANK: "one"}}}))
    for _ in range(4):
        w.now += 15
        w.reconcile()
        w.run_pods()
    gangs = set(w.live_gangs())
    assert second in gangs, "the other gang is kept"
    assert first not in gangs, "the edited gang is replaced"
    assert len(gangs) == 2, gangs
    assert "ReconcileError" not in str(w.status()["conditions"])


# ---------------------------------------------------------------------------------- gangs that never start


@pytest.mark.parametrize(("member", "why"), [
    ({"node": "n1", "conditions": [{"type": "Ready", "status": "False"}]}, "g-1 (rank 1) on node n1 has not been"),
    ({"node": "n1", "phase": "Pending", "containerStatuses": [
        {"name": "engine", "state": {"waiting": {"reason": "ContainerCreating"}}}]}, "its containers not started"),
    ({}, "no scheduler has said why"),
], ids=["a member never Ready", "a member creating its containers for good", "a member no scheduler answers for"])
def test_a_gang_that_makes_no_progress_fails_past_its_start_deadline(member: dict[str, Any], why: str) -> None:
    head = a_pod("g", 0, node="n0", conditions=[{"type": "Ready", "status": "True"}])
    gang = one_gang([head, a_pod("g", 1, **member)])
    before = health_of(gang, T0 + 1_799, 300.0, start_deadline=1_800.0)
    after = health_of(gang, T0 + 1_801, 300.0, start_deadline=1_800.0)
    assert before.state in (GangHealth.STARTING, GangHealth.PENDING)
    assert after.state is GangHealth.FAILED
    assert why in after.reason
    assert health_of(gang, T0 + 99_999, 300.0).state is before.state, "no deadline, no limit"


def test_a_gang_that_served_fails_only_once_a_pod_has_been_unready_for_the_deadline() -> None:
    # Its engine's health check failing under load for a minute is no reason to replace a gang a day old; the
    # same check failing for longer than a start may take is (the engine hung).
    def gang_unready_since(t: float) -> ObservedGang:
        unready = [{"type": "Ready", "status": "False", "lastTransitionTime": _iso(t)}]
        return one_gang([a_pod("g", 0, node="n0", conditions=unready),
                         a_pod("g", 1, node="n1", conditions=[{"type": "Ready", "status": "True"}])])

    day = T0 + 86_400
    assert health_of(gang_unready_since(day - 60), day, 300.0, start_deadline=3_600.0).state is GangHealth.STARTING
    failed = health_of(gang_unready_since(day - 3_700), day, 300.0, start_deadline=3_600.0)
    assert failed.state is GangHealth.FAILED
    assert "has not been Ready for 3700 s" in failed.reason


def test_a_gang_whose_image_cannot_be_pulled_is_kept_past_its_start_deadline() -> None:
    # Someone must act (the image, a Secret): a new gang would meet the same; status names it.
    gang = one_gang([a_pod("g", 0, node="n0", **engine_waiting("ImagePullBackOff", "Back-off pulling image")),
                     a_pod("g", 1, node="n1", **engine_waiting("ImagePullBackOff", "Back-off pulling image"))])
    health = health_of(gang, T0 + 99_999, 300.0, start_deadline=1_800.0)
    assert health.state is GangHealth.STARTING
    assert health.extra["cannot_start"] == "ImagePullBackOff"


def test_the_reconciler_replaces_a_gang_not_ready_past_three_first_starts() -> None:
    w = World(a_deployment("d").pro().h200().replicas(1))
    w.reconcile()
    w.run_pods()
    (gang,) = w.live_gangs()
    member = next(p["metadata"]["name"] for p in w.pods() if p["metadata"]["labels"][L.LABEL_RANK] == "1")
    asyncio.run(w.kube.merge_patch("v1", "Pod", NS, member, {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}}))
    cold = w.status()["plan"]["startupSeconds"]
    w.now += 60
    w.reconcile()
    assert set(w.live_gangs()) == {gang}
    w.now += 10 * max(cold, 3_600)  # well past the deadline (three cold starts, at least an hour)
    w.reconcile()
    w.now += 60
    w.reconcile()
    assert gang not in w.live_gangs(), "replaced"
    assert "has not been Ready" in str(w.status())


# ------------------------------------------------------------------------------------------ a full quota

_QUOTA = ('pods "d-0-x-0" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=8, '
          'used: requests.nvidia.com/gpu=16, limited: requests.nvidia.com/gpu=16')


@pytest.mark.parametrize(("unavailable", "replaced"), [(1, True), (0, False)])
def test_a_surge_gang_a_quota_refuses_turns_the_rollout_in_place(unavailable: int, replaced: bool) -> None:
    # The namespace's GPU quota holds exactly the running gangs: a surge gang is refused, as one the scheduler
    # cannot place would be; the rollout goes on in place where maxUnavailable allows, and says why where not.
    w = World(a_deployment("d").replicas(2).set("rollout", {"maxSurge": 1, "maxUnavailable": unavailable}))
    for _ in range(3):
        w.reconcile()
        w.run_pods()
        w.now += 30
    old = set(w.live_gangs())
    w.edit("engine.image", "registry.example.com/mimo/worker:v2")
    w.kube.fail("create", "Pod", 403, _QUOTA, times=1)
    for _ in range(60):
        w.reconcile()
        w.run_pods()
        w.kube.finish_deletions()
        w.now += 5
    surges = [x for x in w.kube.writes if x[:2] == ("create", "Pod")]
    assert bool(old & set(w.live_gangs())) is not replaced
    if replaced:
        assert len(w.live_gangs()) == 2
    else:
        progressing = next(c for c in w.status()["conditions"] if c["type"] == "Progressing")
        assert "below the minimum of 2" in progressing["message"]
        assert len(surges) == 3, "the surge is not tried again and again"


def test_a_pod_whose_gang_label_was_removed_is_deleted_and_its_gang_replaced() -> None:
    w = serving(a_deployment("d").pro().h200().replicas(1))
    (gang,) = w.live_gangs()
    member = next(p["metadata"]["name"] for p in w.pods() if p["metadata"]["labels"][L.LABEL_RANK] == "1")
    asyncio.run(w.kube.merge_patch("v1", "Pod", NS, member, {"metadata": {"labels": {L.LABEL_GANG: None}}}))
    w.gang_names = lambda: {p["metadata"]["labels"][L.LABEL_GANG] for p in w.pods()  # type: ignore[method-assign]
                            if L.LABEL_GANG in p["metadata"]["labels"]}
    for _ in range(6):
        w.now += 15
        w.reconcile()
        w.run_pods()
        w.kube.finish_deletions()
    names = {p["metadata"]["name"] for p in w.kube.of("Pod", NS)}
    assert member not in names, "the pod in no gang holds its GPUs no more"
    assert gang not in w.live_gangs(), "its gang, a rank short, was replaced"
    assert len(w.live_gangs()) == 1


def test_a_head_that_lost_the_serving_label_by_hand_gets_it_back() -> None:
    w = serving(a_deployment("d").replicas(2))
    head = next(p["metadata"]["name"] for p in w.pods() if p["metadata"]["labels"][L.LABEL_RANK] == "0")
    asyncio.run(w.kube.merge_patch("v1", "Pod", NS, head, {"metadata": {"labels": {L.LABEL_SERVING: None}}}))
    w.now += 31  # the gangs' sweep comes every 30 s
    w.reconcile()
    w.reconcile()
    labels = w.kube.objects[("v1", "Pod", NS, head)]["metadata"]["labels"]
    assert labels.get(L.LABEL_SERVING) == "true", "the router selects heads by it"
    assert len(w.live_gangs()) == 2


@pytest.mark.parametrize(("kind", "name"), [
    ("Pod", None), ("Deployment", "d-router"), ("PodDisruptionBudget", "d-engine")])
def test_an_object_that_lost_the_deployment_as_its_owner_gets_it_back(kind: str, name: str | None) -> None:
    # Deleting the deployment deletes what it owns: an object without the reference would stay on (a pod on its GPUs).
    w = serving(a_deployment("d").replicas(1))
    key = next(k for k in w.kube.objects if k[1] == kind and (name is None or k[3] == name))
    owners = w.kube.objects[key]["metadata"]["ownerReferences"]
    asyncio.run(w.kube.merge_patch(key[0], kind, NS, key[3], {"metadata": {"ownerReferences": None}}))
    w.now += 31  # the shared objects' check and the gangs' sweep come every 30 s
    w.reconcile()
    w.reconcile()
    assert w.kube.objects[key]["metadata"].get("ownerReferences") == owners
