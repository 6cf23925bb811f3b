"""What to do next with a deployment's gangs — a pure planner.

``next_steps(desired, gangs, records, now)`` looks at the gangs as they are and returns the steps that
move them toward what the spec asks, with the reasons; a small executor (the reconciler) carries them
out, and the next reconcile looks again. Level-based: nothing here depends on what was done before,
except the per-replica restart records, which live in the deployment's status.

Rules, in order:
1. a failed gang is deleted whole; its replica is recreated after an exponential back-off, until its
   restart budget is spent — then the replica is marked Failed with the last reason and tried again only
   at the back-off cap (no restart storm, and no replica dead for good after a bad hour). A gang that was
   never placed (no room, or its queue would not admit it) and one whose pod was taken away from outside
   (evicted, preempted, its node lost) spends no budget and is replaced after the first back-off, never a
   longer one: neither says that the replica is broken, and a cluster full for hours must not use up the
   budget of every replica;
2. an empty replica slot gets a gang of the current revision;
3. a rollout replaces outdated gangs one at a time: it surges a new gang first when ``maxSurge`` allows
   (and falls back to replacing in place if the surge gang cannot be scheduled), and otherwise replaces
   in place only while the ready count stays ≥ replicas − ``maxUnavailable``;
4. a gang leaves by draining: out of the router first, in-flight requests finish (or the drain timeout
   passes), then its pods go.

Replica indexes are slots. Scale-down takes slots out in the order: a slot whose gang is still pending or
starting (it has never served), then the autoscaler's ``remove_first``, then the highest index; scale-up
fills the lowest free index. A slot's record keeps its attempt after the slot is taken out, so a gang name
(which carries the attempt) is never used twice, even when a 3 → 2 → 3 flap refills a slot whose gang is
still draining.

Gates (``Desired.gates``) are inputs, not filters afterwards: while the weights are not ready, a gang
just created is not yet shown by the API, or the API refused this revision's objects, no gang is created,
no attempt is raised and no rollout step is taken, so a blocked wait leaves the records — and so the
status — as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from mimo_operator.autoscaling.observation import GangState
from mimo_operator.autoscaling.observation import removal_order as gang_removal_order
from mimo_operator.autoscaling.policy import GangPhase
from mimo_operator.gangs import GangHealth, Health, ObservedGang, health_of

__all__ = [
    "CreateGang",
    "DeleteGang",
    "Desired",
    "Gates",
    "Outcome",
    "ReplicaRecord",
    "StartDrain",
    "Step",
    "backoff",
    "health_map",
    "next_attempt",
    "next_steps",
    "removal_order",
]


@dataclass(frozen=True)
class Gates:
    """What holds gang creation back, decided outside the planner (each None or empty when open)."""

    weights: str | None = None             # what the weights wait for; None when ready (or not managed)
    expectations: tuple[str, ...] = ()     # gangs created but not yet shown whole by the API
    refused: str | None = None             # the API refused this spec's objects: the field and the API's message
    shared: str | None = None              # the deployment's shared objects are not in place yet: why
    paused: str | None = None              # creating gangs failed just now (the API was unavailable): why, until when

    def blocking(self) -> str | None:
        """Why no gang may be created now, or None."""
        if self.refused:
            return f"the API refused this spec's objects: {self.refused}"
        if self.weights:
            return f"weights: {self.weights}"
        if self.shared:
            return self.shared
        if self.paused:
            return self.paused
        if self.expectations:
            return f"waiting for the API to show {', '.join(self.expectations)}"
        return None


@dataclass(frozen=True)
class Desired:
    replicas: int
    revision: str
    size: int                          # pods per gang (nodes per replica)
    max_surge: int = 1
    max_unavailable: int = 0
    restart_budget: int = 5
    backoff_base: float = 10.0         # seconds before the first recreation; doubles each time
    backoff_cap: float = 600.0
    unschedulable_deadline: float = 300.0
    surge_unschedulable_deadline: float = 60.0
    drain_timeout: float = 600.0
    # Seconds a gang may take from its creation to Ready before it counts as failed (gangs.health_of); None: no
    # limit. A pod placed that never turns Ready (a hung rank, a volume that never mounts) otherwise holds its
    # nodes and its slot for good while status says it is starting.
    start_deadline: float | None = None
    # The API refused a surge gang of this revision for want of room (a ResourceQuota): no more surge gangs.
    surge_refused: bool = False
    # A gang Ready this long has proven its replica: the restart count starts over. Pods that turn Ready
    # and fail a second later (as fast as they start) must not reset it, or the budget never runs out.
    proven_after: float = 60.0
    gates: Gates = field(default_factory=Gates)
    remove_first: tuple[str, ...] = ()  # gang names the autoscaler's policy would take out first
    # Gangs created by one reconcile at most (None: no bound). A reconcile that creates a hundred gangs
    # lasts tens of seconds and holds every other event of the deployment back; with a bound the rest are
    # created by the next reconcile, which comes at once (``Outcome.deferred``).
    max_creates: int | None = None


@dataclass(frozen=True)
class ReplicaRecord:
    """Restart bookkeeping of one replica slot, kept in ``status.replicaRecords``."""

    attempt: int = 0                   # the attempt number of the newest gang created for the slot
    restarts: int = 0                  # recreations after failures since the slot last ran Ready
    next_attempt_at: float = 0.0
    failed: bool = False               # restart budget spent: recreated only at the back-off cap until it serves
    last_failure: str = ""
    last_failed_gang: str = ""         # so one failure is counted once, however often it is seen
    surge_blocked_revision: str = ""   # a surge gang of this revision could not be scheduled
    revision: str = ""                 # the revision the restarts were counted under; a new one starts over


@dataclass(frozen=True)
class CreateGang:
    replica: int
    attempt: int
    reason: str
    surge: bool = False  # a rollout's gang beside the replica's outdated one


@dataclass(frozen=True)
class DeleteGang:
    gang: str
    reason: str


@dataclass(frozen=True)
class StartDrain:
    gang: str
    reason: str


Step = CreateGang | DeleteGang | StartDrain


@dataclass
class Outcome:
    steps: list[Step] = field(default_factory=list)
    records: dict[int, ReplicaRecord] = field(default_factory=dict)
    health: dict[str, Health] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)   # why nothing more was done this time (for status)
    slots: tuple[int, ...] = ()        # the replica slots in service: kept gangs' slots and slots to fill
    deferred: tuple[int, ...] = ()     # slots left for the next reconcile by ``Desired.max_creates``


def backoff(desired: Desired, restarts: int) -> float:
    return float(min(desired.backoff_cap, desired.backoff_base * 2 ** max(0, restarts - 1)))


def health_map(desired: Desired, gangs: Sequence[ObservedGang], now: float) -> dict[str, Health]:
    """Every gang's health. A surge gang that cannot be placed gives up sooner: the rollout can go on in place.
    That holds for a surge gang its queue holds too (Kueue with no quota left for it): while it waited, the
    old gang it would replace keeps the quota, and neither would move."""
    out = {}
    for g in gangs:
        surge = _is_surge(g, gangs, desired)
        deadline = desired.surge_unschedulable_deadline if surge else desired.unschedulable_deadline
        out[g.name] = health_of(g, now, deadline, gated_deadline=deadline if surge else None,
                                start_deadline=desired.start_deadline)
    return out


def next_attempt(replica: int, record: ReplicaRecord, gangs: Sequence[ObservedGang]) -> int:
    """The attempt of the slot's next gang: above its record and above every gang of the slot still seen,
    so a name (which carries the attempt) is never used again while objects of that name may exist."""
    seen = max((g.attempt for g in gangs if g.replica == replica), default=0)
    return max(record.attempt, seen) + 1


def next_steps(desired: Desired, gangs: Sequence[ObservedGang], records: Mapping[int, ReplicaRecord],
               now: float, drained: frozenset[str] = frozenset()) -> Outcome:
    """The steps to take now. ``drained``: draining gangs whose head reports no request in flight."""
    out = Outcome(records=dict(records), health=health_map(desired, gangs, now))

    def state(g: ObservedGang) -> GangHealth:
        return out.health[g.name].state

    def record(replica: int) -> ReplicaRecord:
        return out.records.get(replica, ReplicaRecord())

    # A changed spec is a new chance: restarts counted under another revision (a spent budget too) start over.
    for replica, rec in list(out.records.items()):
        if rec.revision != desired.revision and (rec.restarts or rec.failed):
            out.records[replica] = replace(rec, restarts=0, failed=False, next_attempt_at=0.0,
                                           revision=desired.revision)

    # 1. Failed gangs go whole; failures of current gangs count against their replica's budget.
    for g in gangs:
        if state(g) is not GangHealth.FAILED:
            continue
        reason = out.health[g.name].reason
        out.steps.append(DeleteGang(g.name, f"gang failed: {reason}"))
        rec = record(g.replica)
        extra = out.health[g.name].extra
        if extra.get("unplaced") and _is_surge(g, gangs, desired):
            # A surge gang that does not fit (or that its queue will not admit) is not the replica's failure:
            # replace in place instead.
            out.records[g.replica] = replace(rec, surge_blocked_revision=desired.revision)
        elif g.revision == desired.revision and g.drain_started is None and rec.last_failed_gang != g.name:
            if extra.get("unplaced") or extra.get("disrupted"):
                # Not the replica's failure: no budget is spent, and the pause is the first back-off every time,
                # never doubling. It lets the old pods go (and free their GPUs) before the new gang comes, and
                # keeps a pod that is evicted as fast as it starts from turning into a loop.
                out.records[g.replica] = replace(rec, last_failure=reason, last_failed_gang=g.name,
                                                 revision=desired.revision,
                                                 next_attempt_at=max(rec.next_attempt_at, now + desired.backoff_base))
                continue
            restarts = rec.restarts + 1
            spent = restarts > desired.restart_budget
            # A spent budget is tried again at the cap: what failed may have been the cluster's (a node, a
            # registry, a storage outage), and the replica comes back without anyone editing the spec.
            wait = desired.backoff_cap if spent else backoff(desired, restarts)
            out.records[g.replica] = replace(
                rec, restarts=restarts, last_failure=reason, last_failed_gang=g.name, revision=desired.revision,
                next_attempt_at=now + wait, failed=spent)
    live = [g for g in gangs if state(g) not in (GangHealth.FAILED, GangHealth.TERMINATING)]

    # A gang that ran Ready for a while has proven its replica: its restart count starts over.
    for g in live:
        rec = record(g.replica)
        since = g.ready_since
        proven = since is not None and now - since >= desired.proven_after
        if state(g) is GangHealth.READY and proven and g.revision == desired.revision and (rec.restarts or rec.failed):
            out.records[g.replica] = replace(rec, restarts=0, failed=False)

    # 4. Draining gangs go once drained, or at the drain timeout.
    for g in live:
        if state(g) is GangHealth.DRAINING:
            started = g.drain_started if g.drain_started is not None else now
            if g.name in drained:
                out.steps.append(DeleteGang(g.name, f"drained ({g.drain_reason or 'drain'})"))
            elif now - started >= desired.drain_timeout:
                out.steps.append(DeleteGang(g.name, f"drain timeout of {desired.drain_timeout:.0f} s passed"))
    active = [g for g in live if state(g) is not GangHealth.DRAINING]
    # A replica has one gang of the current revision. A second (a replica label edited by hand onto another gang's
    # slot) leaves, the one that serves or came first staying: the slot it came from is refilled below.
    slots: dict[int, list[ObservedGang]] = {}
    for g in active:
        if g.revision == desired.revision:
            slots.setdefault(g.replica, []).append(g)
    for replica, same in slots.items():
        for second in sorted(same, key=lambda g: (state(g) is not GangHealth.READY, g.attempt, g.created))[1:]:
            out.steps.append(_leave(second, state(second), f"a second gang of the current revision in replica "
                                                         f"{replica} (its replica label was changed)"))
            active.remove(second)

    # Scale-down: slots above the desired count leave, in the agreed order (see removal_order).
    by_slot: dict[int, list[ObservedGang]] = {}
    for g in active:
        by_slot.setdefault(g.replica, []).append(g)
    victims = removal_order(by_slot, out.health, desired.remove_first)[:max(0, len(by_slot) - desired.replicas)]
    for replica in victims:
        for g in by_slot[replica]:
            out.steps.append(_leave(g, state(g), f"scale-down to {desired.replicas} replicas"))
    kept = sorted(set(by_slot) - set(victims))
    # An outdated gang draining for an in-place replacement holds its slot until it is gone (no surge);
    # a current gang drained by a scale-down does not: a quick scale back up refills the slot at once
    # with a new attempt, so a new name.
    reserved = sorted({g.replica for g in live if state(g) is GangHealth.DRAINING
                       and g.revision != desired.revision} - set(by_slot))[:max(0, desired.replicas - len(kept))]
    # Scale-up (and recovery) fills the lowest free slots.
    wanted: list[int] = []
    index = 0
    while len(kept) + len(reserved) + len(wanted) < desired.replicas:
        if index not in by_slot and index not in reserved:
            wanted.append(index)
        index += 1
    out.slots = tuple(sorted([*kept, *reserved, *wanted]))
    # A slot out of service keeps only what keeps names unique: its attempt (and the failure already counted).
    for replica, rec in list(out.records.items()):
        if replica not in out.slots:
            slim = ReplicaRecord(attempt=rec.attempt, last_failed_gang=rec.last_failed_gang)
            if rec != slim:
                out.records[replica] = slim
    blocked = desired.gates.blocking()

    # 2. Empty slots get a gang of the current revision (after any back-off, and only with every gate open).
    held = False
    creates = 0
    deferred: list[int] = []
    for replica in wanted:
        rec = record(replica)
        longest = desired.backoff_cap if rec.failed else backoff(desired, max(1, rec.restarts))
        if rec.next_attempt_at > now + longest:
            # Later than the record's back-off can be: written by a clock ahead of this one (a leader on another node,
            # a clock stepped back), and the slot would wait for the difference.
            rec = replace(rec, next_attempt_at=now + longest)
            out.records[replica] = rec
        if rec.failed and now < rec.next_attempt_at:
            out.waiting.append(f"replica {replica} failed {rec.restarts} times (budget {desired.restart_budget}); "
                               f"tried again in {rec.next_attempt_at - now:.0f} s, at the back-off cap of "
                               f"{desired.backoff_cap:.0f} s; last: {rec.last_failure}")
        elif now < rec.next_attempt_at:
            out.waiting.append(f"replica {replica} is recreated in {rec.next_attempt_at - now:.0f} s "
                               f"(back-off after: {rec.last_failure})")
        elif blocked:
            held = True
        elif desired.max_creates is not None and creates >= desired.max_creates:
            # Left for the next reconcile: no step, so no attempt is raised for it.
            deferred.append(replica)
        else:
            attempt = next_attempt(replica, rec, gangs)
            why = (f"replica has no gang (its restart budget is spent: tried again at the back-off cap after "
                   f"{rec.restarts} failures)" if rec.failed else "replica has no gang")
            out.steps.append(CreateGang(replica, attempt, why))
            out.records[replica] = replace(rec, attempt=attempt)
            creates += 1

    # 3. Rollout: one outdated replica at a time, and none while a gate holds creation back — nor while the
    # bound on creations is spent (a surge gang is a creation; replacing in place instead would drop a ready
    # gang that a surge could have spared).
    in_range = [g for g in active if g.replica in kept]
    outdated = sorted((g for g in in_range if g.revision != desired.revision), key=lambda g: g.replica)
    # A surge gang of a revision the spec has since moved past (changed again before the surge gang served) is
    # no longer anyone's replacement: it goes at once, or a second surge gang would run beside it.
    for g in [g for g in outdated if _abandoned_surge(g, in_range, state)]:
        out.steps.append(DeleteGang(g.name, f"rollout: surge gang of revision {g.revision}, which revision "
                                            f"{desired.revision} replaces before it served"))
        outdated.remove(g)
    if outdated and blocked:
        held = True
    elif outdated and desired.max_creates is not None and creates >= desired.max_creates:
        deferred.append(outdated[0].replica)
    elif outdated:
        _roll_one(desired, in_range, outdated[0], gangs, out, state, record)
    if held and blocked:
        out.waiting.append(blocked)
    if deferred:
        out.deferred = tuple(deferred)
        out.waiting.append(f"{len(deferred)} more replicas are acted on by the next reconcile "
                           f"(at most {desired.max_creates} gangs are created per reconcile)")
    return out


def removal_order(by_slot: Mapping[int, Sequence[ObservedGang]], health: Mapping[str, Health],
                  remove_first: Sequence[str] = ()) -> list[int]:
    """Slots in the order scale-down takes them out: the autoscaling simulator's and the policy's order
    (`autoscaling.observation.removal_order`: a gang that has never served first, then the policy's
    ``remove_first``, then the highest index), a slot taken out with its first gang in that order."""
    phases = {GangHealth.READY: GangPhase.READY, GangHealth.DRAINING: GangPhase.DRAINING}
    members = [g for gangs in by_slot.values() for g in gangs]
    states = [GangState(g.name, phases.get(health[g.name].state, GangPhase.STARTING), g.created, g.drain_started)
              for g in members]
    order: list[int] = []
    slot_of = {g.name: g.replica for g in members}
    for name in gang_removal_order(states, remove_first, slot_of):
        if slot_of[name] not in order:
            order.append(slot_of[name])
    return order


def _abandoned_surge(g: ObservedGang, in_range: Sequence[ObservedGang], st: Callable[[ObservedGang], GangHealth]
                     ) -> bool:
    """An outdated gang that has never served and shares its replica with an older gang: a surge gang of a
    revision that was itself replaced (the older gang is still the replica's)."""
    return (st(g) is not GangHealth.READY and g.ready_since is None
            and any(o.replica == g.replica and o is not g and (o.attempt, o.created) < (g.attempt, g.created)
                    for o in in_range))


def _is_surge(g: ObservedGang, gangs: Sequence[ObservedGang], desired: Desired) -> bool:
    """A current-revision gang sharing its replica with an outdated one."""
    return g.revision == desired.revision and any(
        o.replica == g.replica and o.revision != desired.revision for o in gangs)


def _leave(g: ObservedGang, health: GangHealth, reason: str) -> Step:
    # A gang whose pods all run may have served, even if its head is not Ready right now (a slow health
    # check): it drains. One still being scheduled has never served and goes at once.
    if health in (GangHealth.READY, GangHealth.STARTING):
        return StartDrain(g.name, reason)
    return DeleteGang(g.name, reason)


def _roll_one(desired: Desired, in_range: list[ObservedGang], old: ObservedGang, gangs: Sequence[ObservedGang],
              out: Outcome, st: Callable[[ObservedGang], GangHealth],
              rec_of: Callable[[int], ReplicaRecord]) -> None:
    replica = old.replica
    new = [g for g in in_range if g.replica == replica and g.revision == desired.revision]
    ready = sum(1 for g in in_range if st(g) is GangHealth.READY)
    min_ready = max(0, desired.replicas - desired.max_unavailable)
    if new:
        if st(new[0]) is GangHealth.READY:
            out.steps.append(_leave(old, st(old), f"rollout: replaced by {new[0].name}"))
        else:
            out.waiting.append(f"rollout: surge gang {new[0].name} for replica {replica} is "
                               f"{st(new[0]).value.lower()}: {out.health[new[0].name].reason}")
        return
    rec = rec_of(replica)
    surging = sum(1 for g in in_range if _is_surge(g, in_range, desired))
    # Once one surge gang of this revision did not fit (the scheduler, its queue or a quota said no), the rest of
    # the rollout goes in place.
    blocked = desired.surge_refused or any(r.surge_blocked_revision == desired.revision for r in out.records.values())
    if desired.max_surge > surging and not blocked:
        attempt = next_attempt(replica, rec, gangs)
        out.steps.append(CreateGang(replica, attempt, f"rollout: surge gang for replica {replica}", surge=True))
        out.records[replica] = replace(rec, attempt=attempt)
        return
    after = ready - (1 if st(old) is GangHealth.READY else 0)
    if after >= min_ready:
        why = ("no surge allowed" if desired.max_surge == 0 else "the namespace's quota has no room for a surge gang"
               if desired.surge_refused else "the surge gang could not be placed")
        out.steps.append(_leave(old, st(old), f"rollout: replacing in place ({why})"))
    else:
        out.waiting.append(f"rollout: replacing replica {replica} would leave {after} ready gangs, "
                           f"below the minimum of {min_ready} (replicas − maxUnavailable)")
