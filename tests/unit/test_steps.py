"""Whole sequences of the gang planner: rollouts, scale, recovery — asserted as sequences.

A tiny world executes the planner's steps the way the reconciler would: created gangs get scheduled
and become Ready after a start-up time, drains finish after a while, deleted gangs vanish. Each test
runs it to a fixed point and asserts what happened along the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from mimo_operator.gangs import GangHealth, ObservedGang, ObservedPod
from mimo_operator.labels import gang_name
from mimo_operator.steps import CreateGang, DeleteGang, Desired, ReplicaRecord, StartDrain, next_steps

START_UP = 30.0  # seconds from creation to Ready
DRAIN = 20.0  # seconds for in-flight requests to finish
TICK = 5.0


def pods(
    name: str, size: int, t: float, *, node: bool = True, ready: bool = False, unschedulable: str | None = None,
    gates: tuple[str, ...] = (),
) -> tuple[ObservedPod, ...]:
    return tuple(
        ObservedPod(
            name=f"{name}-{r}",
            uid=f"{name}-{r}",
            rank=r,
            phase="Running" if node else "Pending",
            ready=ready,
            deleting=False,
            node=f"node-{name}-{r}" if node else None,
            created=t,
            unschedulable=None if node else unschedulable,
            gates=() if node else gates,
        )
        for r in range(size)
    )


@dataclass
class World:
    desired: Desired
    capacity: int = 100  # gangs that fit; more stay unschedulable
    queued: bool = False  # the gangs beyond capacity are held by their queue (Kueue's gate) instead
    now: float = 0.0
    gangs: dict[str, ObservedGang] = field(default_factory=dict)
    born: dict[str, float] = field(default_factory=dict)
    records: dict[int, ReplicaRecord] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    ready_history: list[int] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def seed(self, replicas: int, revision: str) -> None:
        for r in range(replicas):
            name = gang_name("d", r, revision, 1)
            self.gangs[name] = ObservedGang(
                name, r, revision, 1, self.desired.size, pods(name, self.desired.size, -1000, ready=True)
            )
            self.records[r] = ReplicaRecord(attempt=1)

    def ready(self) -> int:
        return sum(
            1
            for g in self.gangs.values()
            if g.drain_started is None and all(p.ready for p in g.pods) and g.replica < self.desired.replicas
        )

    def advance(self) -> None:
        placed = 0
        for name, g in sorted(self.gangs.items(), key=lambda kv: self.born.get(kv[0], -1e9)):
            fits = placed < self.capacity
            placed += 1
            if not fits:
                self.gangs[name] = replace(
                    g,
                    pods=pods(
                        name,
                        g.size,
                        self.born[name],
                        node=False,
                        unschedulable=None if self.queued else "0/8 nodes are available: Insufficient nvidia.com/gpu",
                        gates=("kueue.x-k8s.io/admission",) if self.queued else (),
                    ),
                )
                continue
            if name in self.born and self.now - self.born[name] >= START_UP and not g.pods[0].ready:
                self.gangs[name] = replace(g, pods=pods(name, g.size, self.born[name], ready=True))

    def step(self) -> list[str]:
        drained = frozenset(
            n for n, g in self.gangs.items() if g.drain_started is not None and self.now - g.drain_started >= DRAIN
        )
        out = next_steps(self.desired, list(self.gangs.values()), self.records, self.now, drained)
        self.records = out.records
        done = []
        for s in out.steps:
            if isinstance(s, CreateGang):
                name = gang_name("d", s.replica, self.desired.revision, s.attempt)
                self.gangs[name] = ObservedGang(
                    name,
                    s.replica,
                    self.desired.revision,
                    s.attempt,
                    self.desired.size,
                    pods(name, self.desired.size, self.now),
                )
                self.born[name] = self.now
                self.created.append(name)
                done.append(f"create r{s.replica}")
            elif isinstance(s, StartDrain):
                self.gangs[s.gang] = replace(self.gangs[s.gang], drain_started=self.now, drain_reason=s.reason)
                done.append(f"drain r{self.gangs[s.gang].replica}")
            elif isinstance(s, DeleteGang):
                done.append(f"delete r{self.gangs.pop(s.gang).replica}")
        self.log += [f"t={self.now:.0f} {d}" for d in done]
        return done

    def run(self, until: float = 2000.0) -> None:
        while self.now <= until:
            self.advance()
            self.step()
            self.ready_history.append(self.ready())
            self.now += TICK


def test_a_rollout_surges_one_gang_at_a_time_and_never_drops_below_the_ready_count() -> None:
    world = World(Desired(replicas=3, revision="new", size=2, max_surge=1, max_unavailable=0))
    world.seed(3, "old")
    world.run()
    assert {g.revision for g in world.gangs.values()} == {"new"}
    assert len(world.gangs) == 3
    assert min(world.ready_history) >= 3, world.log
    # one at a time: each surge gang comes only after the previous old gang started draining
    assert world.log == [
        "t=0 create r0",
        "t=30 drain r0",
        "t=35 create r1",
        "t=50 delete r0",
        "t=65 drain r1",
        "t=70 create r2",
        "t=85 delete r1",
        "t=100 drain r2",
        "t=120 delete r2",
    ]


def test_a_surge_gang_of_a_revision_changed_again_before_it_served_goes_at_once() -> None:
    # "old" rolls to "v2"; before v2's surge gang serves, the spec changes again to "new": that gang is no one's
    # replacement any more and goes at once, so the rollout to "new" never runs two surge gangs beside the old.
    world = World(Desired(replicas=2, revision="v2", size=2, max_surge=1, max_unavailable=0))
    world.seed(2, "old")
    world.advance()
    assert world.step() == ["create r0"]
    world.now += TICK
    world.desired = replace(world.desired, revision="new")
    world.advance()
    assert world.step() == ["delete r0", "create r0"]
    assert sorted(g.revision for g in world.gangs.values()) == ["new", "old", "old"]
    world.run()
    assert {g.revision for g in world.gangs.values()} == {"new"}
    assert len(world.gangs) == 2
    assert min(world.ready_history) >= 2, world.log


def test_a_second_gang_of_the_current_revision_in_a_slot_leaves_and_its_own_slot_is_refilled() -> None:
    # Gang 1's replica label edited to 0 by hand: slot 0 has two gangs, slot 1 none.
    world = World(Desired(replicas=2, revision="r", size=2))
    world.seed(2, "r")
    moved = gang_name("d", 1, "r", 1)
    world.gangs[moved] = replace(world.gangs[moved], replica=0)
    world.advance()
    assert world.step() == ["drain r0", "create r1"]
    world.run()
    assert sorted(g.replica for g in world.gangs.values()) == [0, 1]
    assert moved not in world.gangs


def test_a_back_off_written_by_a_clock_ahead_of_this_one_waits_no_longer_than_the_back_off() -> None:
    # The record says an hour from now (an earlier leader's clock was an hour ahead); one restart waits 10 s.
    desired = Desired(replicas=1, revision="r", size=2, backoff_base=10.0)
    records = {0: ReplicaRecord(attempt=1, restarts=1, next_attempt_at=3_600.0, last_failure="exit code 1",
                                revision="r")}
    held = next_steps(desired, [], records, 0.0, frozenset())
    assert held.steps == []
    assert held.records[0].next_attempt_at == 10.0
    assert [type(s) for s in next_steps(desired, [], held.records, 10.0, frozenset()).steps] == [CreateGang]


def test_a_rollout_without_surge_replaces_in_place_within_max_unavailable() -> None:
    world = World(Desired(replicas=3, revision="new", size=4, max_surge=0, max_unavailable=1))
    world.seed(3, "old")
    world.run()
    assert {g.revision for g in world.gangs.values()} == {"new"}
    assert min(world.ready_history) == 2, "one gang at a time is out of service"
    assert world.log == [
        "t=0 drain r0",
        "t=20 delete r0",
        "t=25 create r0",
        "t=55 drain r1",
        "t=75 delete r1",
        "t=80 create r1",
        "t=110 drain r2",
        "t=130 delete r2",
        "t=135 create r2",
    ]


def test_a_rollout_that_may_neither_surge_nor_drop_a_gang_waits_and_says_why() -> None:
    desired = Desired(replicas=2, revision="new", size=2, max_surge=0, max_unavailable=0)
    world = World(desired)
    world.seed(2, "old")
    out = next_steps(desired, list(world.gangs.values()), world.records, 0.0)
    assert out.steps == []
    assert any("below the minimum of 2" in w for w in out.waiting)


def test_a_surge_gang_that_cannot_be_scheduled_gives_way_to_an_in_place_replacement() -> None:
    world = World(
        Desired(replicas=2, revision="new", size=2, max_surge=1, max_unavailable=1, surge_unschedulable_deadline=60),
        capacity=2,
    )
    world.seed(2, "old")
    world.born.update({n: -1000.0 for n in world.gangs})
    world.run()
    assert {g.revision for g in world.gangs.values()} == {"new"}, world.log
    assert world.log == [
        "t=0 create r0",
        "t=65 delete r0",
        "t=65 drain r0",
        "t=85 delete r0",
        "t=90 create r0",
        "t=120 drain r1",
        "t=140 delete r1",
        "t=145 create r1",
    ]
    assert min(world.ready_history) >= 1


def test_a_surge_gang_its_queue_holds_gives_way_to_an_in_place_replacement() -> None:
    # Kueue with no quota for a surge gang: the old gangs keep theirs while it waits, so it gives up as an
    # unschedulable surge gang does, and the rollout goes on in place.
    world = World(
        Desired(replicas=2, revision="new", size=2, max_surge=1, max_unavailable=1, surge_unschedulable_deadline=60),
        capacity=2, queued=True,
    )
    world.seed(2, "old")
    world.born.update({n: -1000.0 for n in world.gangs})
    world.run()
    assert {g.revision for g in world.gangs.values()} == {"new"}, world.log
    assert world.log[:2] == ["t=0 create r0", "t=65 delete r0"]
    assert min(world.ready_history) >= 1


def test_a_gang_its_queue_holds_waits_without_a_deadline_unless_it_is_a_surge_gang() -> None:
    desired = Desired(replicas=1, revision="r", size=2, unschedulable_deadline=300)
    name = gang_name("d", 0, "r", 1)
    gang = ObservedGang(name, 0, "r", 1, 2, pods(name, 2, 0.0, node=False, gates=("kueue.x-k8s.io/admission",)))
    out = next_steps(desired, [gang], {0: ReplicaRecord(attempt=1)}, 10_000.0)
    assert out.health[name].state is GangHealth.PENDING
    assert "kueue.x-k8s.io/admission" in out.health[name].reason
    assert out.steps == []


def test_a_failed_gang_is_recreated_with_growing_back_off_until_its_budget_is_spent() -> None:
    desired = Desired(replicas=1, revision="r", size=2, restart_budget=3, backoff_base=10, backoff_cap=600)
    records: dict[int, ReplicaRecord] = {0: ReplicaRecord(attempt=1)}
    now = 0.0
    create_times = []
    attempt = 1
    for _ in range(6):
        name = gang_name("d", 0, "r", attempt)
        failed_pod = replace(pods(name, 2, now)[1], phase="Failed", terminated="exit code 1 (Error)")
        gang = ObservedGang(name, 0, "r", attempt, 2, (pods(name, 2, now)[0], failed_pod))
        out = next_steps(desired, [gang], records, now)
        assert out.steps[0] == DeleteGang(name, f"gang failed: pod {name}-1 (rank 1) ended: exit code 1 (Error)")
        records = out.records
        # the same failure seen again is not counted twice
        again = next_steps(desired, [gang], records, now + 1)
        assert again.records[0].restarts == records[0].restarts
        # no gang until the back-off passes, then exactly one
        while True:
            out = next_steps(desired, [], records, now)
            if out.steps or records[0].failed:
                break
            now += 1
        if records[0].failed:
            assert out.steps == []
            assert "failed 4 times (budget 3)" in out.waiting[0]
            break
        create_times.append(now)
        (create,) = out.steps
        assert isinstance(create, CreateGang)
        attempt = create.attempt
        records = out.records
    gaps = [b - a for a, b in zip([0.0, *create_times], create_times, strict=False)]
    assert gaps == [10, 20, 40], "exponential back-off between recreations, never a tight loop"


def test_a_gang_missing_a_pod_fails_whole() -> None:
    desired = Desired(replicas=1, revision="r", size=3)
    name = gang_name("d", 0, "r", 1)
    two_of_three = ObservedGang(name, 0, "r", 1, 3, pods(name, 3, 0.0, ready=True)[:2])
    out = next_steps(desired, [two_of_three], {0: ReplicaRecord(attempt=1)}, 100.0)
    assert out.steps == [DeleteGang(name, "gang failed: rank(s) 2 of 3 missing")]
    assert out.health[name].state is GangHealth.FAILED


def test_an_unschedulable_gang_is_pending_with_the_schedulers_reason_then_fails_at_its_deadline() -> None:
    desired = Desired(replicas=1, revision="r", size=2, unschedulable_deadline=300)
    name = gang_name("d", 0, "r", 1)
    gang = ObservedGang(name, 0, "r", 1, 2, pods(name, 2, 0.0, node=False, unschedulable="Insufficient nvidia.com/gpu"))
    early = next_steps(desired, [gang], {0: ReplicaRecord(attempt=1)}, 100.0)
    assert early.steps == []
    assert early.health[name].state is GangHealth.PENDING
    assert "Insufficient nvidia.com/gpu" in early.health[name].reason
    late = next_steps(desired, [gang], {0: ReplicaRecord(attempt=1)}, 301.0)
    assert isinstance(late.steps[0], DeleteGang)


@pytest.mark.parametrize(
    ("start", "target", "expected"),
    [
        (1, 3, ["create r1", "create r2"]),
        (3, 1, ["drain r2", "drain r1"]),
    ],
)
def test_scaling_adds_missing_replicas_and_drains_the_highest_first(
    start: int, target: int, expected: list[str]
) -> None:
    world = World(Desired(replicas=target, revision="r", size=2))
    world.seed(start, "r")
    assert world.step() == expected


def test_a_drained_gang_goes_only_when_drained_or_at_the_drain_timeout() -> None:
    desired = Desired(replicas=0, revision="r", size=2, drain_timeout=100)
    name = gang_name("d", 0, "r", 1)
    gang = ObservedGang(name, 0, "r", 1, 2, pods(name, 2, 0.0, ready=True), drain_started=0.0, drain_reason="x")
    assert next_steps(desired, [gang], {}, 50.0).steps == []
    assert next_steps(desired, [gang], {}, 50.0, drained=frozenset({name})).steps == [DeleteGang(name, "drained (x)")]
    assert next_steps(desired, [gang], {}, 100.0).steps == [DeleteGang(name, "drain timeout of 100 s passed")]


def test_a_gang_still_being_scheduled_is_deleted_without_a_drain_but_a_running_one_drains() -> None:
    desired = Desired(replicas=0, revision="r", size=2)
    name = gang_name("d", 0, "r", 1)
    pending = ObservedGang(name, 0, "r", 1, 2, pods(name, 2, 0.0, node=False))
    assert next_steps(desired, [pending], {}, 10.0).steps == [DeleteGang(name, "scale-down to 0 replicas")]
    # all pods run but the head's health check lags: it may have served, so it drains
    running = ObservedGang(name, 0, "r", 1, 2, pods(name, 2, 0.0, ready=False))
    assert next_steps(desired, [running], {}, 10.0).steps == [StartDrain(name, "scale-down to 0 replicas")]


@pytest.mark.parametrize(
    ("case", "remove_first", "starting", "expected"),
    [
        ("without a choice the highest slot goes", (), None, ["drain r2"]),
        ("the policy's choice goes before the highest slot", ("r1",), None, ["drain r1"]),
        ("a gang that never served goes before the policy's choice", ("r1",), 0, ["delete r0"]),
    ],
)
def test_scale_down_order(case: str, remove_first: tuple[str, ...], starting: int | None, expected: list[str]) -> None:
    world = World(Desired(replicas=2, revision="r", size=2))
    world.seed(3, "r")
    names = {g.replica: n for n, g in world.gangs.items()}
    if starting is not None:
        name = names[starting]
        world.gangs[name] = replace(world.gangs[name], pods=pods(name, 2, 0.0, node=False))
    world.desired = replace(world.desired, remove_first=tuple(names[int(r[1:])] for r in remove_first))
    assert world.step() == expected


def test_scale_up_fills_the_lowest_free_slot_and_a_refilled_slot_gets_a_new_attempt() -> None:
    world = World(Desired(replicas=3, revision="r", size=2))
    world.seed(3, "r")
    name1 = next(n for n, g in world.gangs.items() if g.replica == 1)
    world.desired = replace(world.desired, replicas=2, remove_first=(name1,))
    assert world.step() == ["drain r1"]
    world.desired = replace(world.desired, replicas=3, remove_first=())
    assert world.step() == ["create r1"]
    attempts = sorted(g.attempt for g in world.gangs.values() if g.replica == 1)
    assert attempts == [1, 2], "the draining gang keeps its name; the new one has the next attempt"


def test_a_bound_on_creations_leaves_the_rest_for_the_next_call_without_raising_their_attempts() -> None:
    desired = Desired(replicas=5, revision="r", size=2, max_creates=2)
    first = next_steps(desired, [], {}, 0.0)
    assert [s.replica for s in first.steps if isinstance(s, CreateGang)] == [0, 1]
    assert first.deferred == (2, 3, 4)
    assert set(first.records) == {0, 1}, "a slot left for later gets no attempt"
    assert any("next reconcile" in w for w in first.waiting)
    world = World(desired)
    created = [world.step() for _ in range(3)]
    assert created == [["create r0", "create r1"], ["create r2", "create r3"], ["create r4"]]
    assert {g.attempt for g in world.gangs.values()} == {1}, "every slot's first gang is its attempt 1"


def test_a_bound_on_creations_spent_on_new_slots_holds_the_rollout_rather_than_replacing_in_place() -> None:
    world = World(Desired(replicas=2, revision="r1", size=2, max_surge=1, max_unavailable=1))
    world.seed(2, "r1")
    world.desired = replace(world.desired, replicas=3, revision="r2", max_creates=1)
    outcome = next_steps(world.desired, list(world.gangs.values()), world.records, world.now)
    assert outcome.steps == [CreateGang(2, 1, "replica has no gang")]
    assert outcome.deferred == (0,), "the rollout waits for the next call: no gang is drained for it"
