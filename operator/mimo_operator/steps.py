"""What to do next with a deployment's gangs — a pure planner.

``next_steps(desired, gangs, records, now)`` looks at the gangs as they are and returns the steps that
move them toward what the spec asks, with the reasons; a small executor (the reconciler) carries them
out, and the next reconcile looks again. Level-based: nothing here depends on what was done before,
except the per-replica restart records, which live in the deployment's status.

Rules, in order:
1. a failed gang is deleted whole; its replica is recreated after an exponential back-off, until its
   restart budget is spent — then the replica is marked Failed with the last reason (no restart storm);
2. an empty replica slot gets a gang of the current revision;
3. a rollout replaces outdated gangs one at a time: it surges a new gang first when ``maxSurge`` allows
   (and falls back to replacing in place if the surge gang cannot be scheduled), and otherwise replaces
   in place only while the ready count stays ≥ replicas − ``maxUnavailable``;
4. a gang leaves by draining: out of the router first, in-flight requests finish (or the drain timeout
   passes), then its pods go. Scale-down drains the highest replica indexes first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from mimo_operator.gangs import GangHealth, Health, ObservedGang, health_of

__all__ = [
    "CreateGang",
    "DeleteGang",
    "Desired",
    "Outcome",
    "ReplicaRecord",
    "StartDrain",
    "Step",
    "next_steps",
]


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


@dataclass(frozen=True)
class ReplicaRecord:
    """Restart bookkeeping of one replica slot, kept in ``status.replicaRecords``."""

    attempt: int = 0                   # the attempt number of the newest gang created for the slot
    restarts: int = 0                  # recreations after failures since the slot last ran Ready
    next_attempt_at: float = 0.0
    failed: bool = False               # restart budget spent: no more recreations until the spec changes
    last_failure: str = ""
    last_failed_gang: str = ""         # so one failure is counted once, however often it is seen
    surge_blocked_revision: str = ""   # a surge gang of this revision could not be scheduled


@dataclass(frozen=True)
class CreateGang:
    replica: int
    attempt: int
    reason: str


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


def backoff(desired: Desired, restarts: int) -> float:
    return float(min(desired.backoff_cap, desired.backoff_base * 2 ** max(0, restarts - 1)))


def next_steps(desired: Desired, gangs: Sequence[ObservedGang], records: Mapping[int, ReplicaRecord],
               now: float, drained: frozenset[str] = frozenset()) -> Outcome:
    """The steps to take now. ``drained``: draining gangs whose head reports no request in flight."""
    out = Outcome(records=dict(records))
    for g in gangs:
        # A surge gang that cannot be placed gives up sooner: the rollout can go on in place.
        surge = _is_surge(g, gangs, desired)
        deadline = desired.surge_unschedulable_deadline if surge else desired.unschedulable_deadline
        out.health[g.name] = health_of(g, now, deadline)

    def state(g: ObservedGang) -> GangHealth:
        return out.health[g.name].state

    def record(replica: int) -> ReplicaRecord:
        return out.records.get(replica, ReplicaRecord())

    # 1. Failed gangs go whole; failures of current gangs count against their replica's budget.
    for g in gangs:
        if state(g) is not GangHealth.FAILED:
            continue
        reason = out.health[g.name].reason
        out.steps.append(DeleteGang(g.name, f"gang failed: {reason}"))
        rec = record(g.replica)
        if "cannot be scheduled" in reason and _is_surge(g, gangs, desired):
            # A surge gang that does not fit is not the replica's failure: replace in place instead.
            out.records[g.replica] = replace(rec, surge_blocked_revision=desired.revision)
        elif g.replica < desired.replicas and g.revision == desired.revision and rec.last_failed_gang != g.name:
            restarts = rec.restarts + 1
            out.records[g.replica] = replace(
                rec, restarts=restarts, last_failure=reason, last_failed_gang=g.name,
                next_attempt_at=now + backoff(desired, restarts), failed=restarts > desired.restart_budget)
    live = [g for g in gangs if state(g) not in (GangHealth.FAILED, GangHealth.TERMINATING)]

    # A gang that ran Ready has proven its replica: its restart count starts over.
    for g in live:
        rec = record(g.replica)
        if state(g) is GangHealth.READY and g.revision == desired.revision and (rec.restarts or rec.failed):
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

    # Scale-down: every gang above the desired count drains, highest replica first.
    for g in sorted((g for g in active if g.replica >= desired.replicas), key=lambda g: -g.replica):
        out.steps.append(_leave(g, state(g), f"scale-down to {desired.replicas} replicas"))
    for replica in [r for r in out.records if r >= desired.replicas]:
        del out.records[replica]
    in_range = [g for g in active if g.replica < desired.replicas]

    # 2. Empty slots get a gang of the current revision (after any back-off).
    occupied = {g.replica for g in live if g.replica < desired.replicas}
    for replica in range(desired.replicas):
        if replica in occupied:
            continue
        rec = record(replica)
        if rec.failed:
            out.waiting.append(f"replica {replica} failed {rec.restarts} times (budget {desired.restart_budget}); "
                               f"last: {rec.last_failure}")
        elif now < rec.next_attempt_at:
            out.waiting.append(f"replica {replica} is recreated in {rec.next_attempt_at - now:.0f} s "
                               f"(back-off after: {rec.last_failure})")
        else:
            out.steps.append(CreateGang(replica, rec.attempt + 1, "replica has no gang"))
            out.records[replica] = replace(rec, attempt=rec.attempt + 1)

    # 3. Rollout: one outdated replica at a time.
    outdated = sorted((g for g in in_range if g.revision != desired.revision), key=lambda g: g.replica)
    if outdated:
        _roll_one(desired, in_range, outdated[0], out, state, record)
    return out


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


def _roll_one(desired: Desired, in_range: list[ObservedGang], old: ObservedGang, out: Outcome,
              st: Callable[[ObservedGang], GangHealth], rec_of: Callable[[int], ReplicaRecord]) -> None:
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
    # Once one surge gang of this revision did not fit, the rest of the rollout goes in place.
    blocked = any(r.surge_blocked_revision == desired.revision for r in out.records.values())
    if desired.max_surge > surging and not blocked:
        out.steps.append(CreateGang(replica, rec.attempt + 1, f"rollout: surge gang for replica {replica}"))
        out.records[replica] = replace(rec, attempt=rec.attempt + 1)
        return
    after = ready - (1 if st(old) is GangHealth.READY else 0)
    if after >= min_ready:
        why = "no surge allowed" if desired.max_surge == 0 else "the surge gang could not be scheduled"
        out.steps.append(_leave(old, st(old), f"rollout: replacing in place ({why})"))
    else:
        out.waiting.append(f"rollout: replacing replica {replica} would leave {after} ready gangs, "
                           f"below the minimum of {min_ready} (replicas − maxUnavailable)")
