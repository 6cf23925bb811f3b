"""One reconcile of one MiMoDeployment: observe → decide (pure) → act → status. A straight line.

Level-based: the desired state comes from the spec, the actual state from what the API shows now; the
only memory kept between reconciles in this process is a guard (expectations: gangs just created that
the API does not show whole yet, so a lagging read never creates them twice) and the status this process
wrote last. The restart records live in the deployment's status; decisions are taken from the status as
this process last wrote it (the leader is its only writer), or from a fresh read — never from the body of
the last watch event, which may predate our own last write (a stale record would skip a back-off, erase a
reason or reuse a gang name).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from mimo_operator import autoscaler, metrics
from mimo_operator import labels as L
from mimo_operator.autoscaling.policy import Action
from mimo_operator.build import (
    BuildContext,
    OperatorIdentity,
    OperatorUpgrade,
    Pool,
    gang_network_policy,
    gang_objects,
    operator_upgrade,
    outdated_marker,
    owner_reference,
    pools_of,
    revision_of,
    router_url,
    shared_objects,
    template_of,
)
from mimo_operator.build.weights import WeightsOptions
from mimo_operator.errors import MimoError, PlanRefused, SpecError
from mimo_operator.gangs import GangHealth, Health, ObservedGang, epoch, gangs_from_pods
from mimo_operator.heads import Heads
from mimo_operator.kube import ApiError, Kube
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import DisaggregatedPlan, plan_disaggregated
from mimo_operator.schedulers import (
    GANG_SCHEDULER_APIS,
    KueueTopology,
    gang_topology_served,
    kueue_topology,
    missing_gang_scheduler,
    missing_queue,
    served_gang_api,
)
from mimo_operator.spec import DeploymentSpec, SchedulingSpec, parse_spec
from mimo_operator.status import (
    condition,
    disaggregated_status,
    merge_conditions,
    records_from_status,
    refusal_from_api,
    refusal_from_status,
    refusal_text,
    refused_status,
    running_status,
    spec_values,
)
from mimo_operator.steps import (
    CreateGang,
    DeleteGang,
    Desired,
    Gates,
    Outcome,
    ReplicaRecord,
    StartDrain,
    health_map,
    next_steps,
)
from mimo_operator.weights import WeightsProbe, WeightsState, ensure_weights

__all__ = ["CONCURRENT_GANG_CREATES", "MAX_GANG_CREATES", "Creations", "Event", "Memory",
           "ReconcileResult", "Reconciler", "ReconcilerOptions"]

log = logging.getLogger("mimo.operator")

# Seconds between a gang leaving the router (its head loses the serving label) and its engine being told
# to drain: the router's pod watch must see the label go first.
ROUTER_GRACE_SECONDS = 5.0
# Seconds a just-created gang may take to show whole in the API before the guard lets go.
_EXPECTATION_SECONDS = 30.0
_ORPHAN_CHECK_SECONDS = 30.0
_ORPHANS = " orphans"  # the orphan collection among a deployment's gang writes (no gang has that name)
_SHARED_CHECK_SECONDS = 30.0
# How long what a Kueue queue's flavors say of topology is trusted (four reads to learn it).
_KUEUE_TOPOLOGY_SECONDS = 60.0
# Gangs of one deployment whose objects are being created at once. Not more: a hundred gangs created together
# interleave their requests, one gang's pods then land tens of seconds apart, and a gang seen with ranks
# missing that long counts as failed.
_CREATE_CONCURRENCY = 8
# Gangs being created at once by the whole operator, every deployment's together (``ReconcilerOptions``). At
# 500 gangs of five deployments on 2,000 nodes, 8 per deployment (40 gangs, 200 creates in flight) had the
# API server answer creates at p50 2.3–3.1 s, ahead of the scheduler's binds; 8 in all had it answer at p50
# 0.25 s, and every gang was created sooner (docs/scale.md, "Creations bounded operator-wide").
CONCURRENT_GANG_CREATES = 8
# Gangs one reconcile hands to the creations at most; the rest are planned by the next reconcile, which
# follows at once. The creations run outside the reconcile (see ``Creations``): the bound keeps one
# reconcile's plan and status small, not its duration.
MAX_GANG_CREATES = 32
# After a creation failed for a reason other than a refusal (the API was unavailable, a quota said no), no
# gang is created for this long, doubling with each failure in a row up to the cap.
_CREATE_RETRY_SECONDS = 2.0
_CREATE_RETRY_CAP_SECONDS = 60.0
# A download's progress reaches status at most this often (the gauges mimo_weights_bytes_* are live): a
# status write is a watch event for every client of the deployment, and a 1 TB download lasts long.
PROGRESS_STATUS_SECONDS = 60.0
# A status write that failed is tried again after this long, doubling with each failure in a row up to the cap
# (a newer status decided meanwhile is what is written then).
_STATUS_RETRY_SECONDS = 1.0
_STATUS_RETRY_CAP_SECONDS = 30.0
# A Ready gang's head that could not report its fabric check (still running it, or not answering) is asked
# again after this long: not on every reconcile, which at a hundred starting gangs meant a hundred requests each.
_FABRIC_ASK_SECONDS = 10.0
# Requests to a deployment's gang heads and routers at once (drain progress, fabric checks, leaving a router).
_PROBE_CONCURRENCY = 32
# A draining gang's head and the routers are asked again at most this often (reconciles come every second
# while gangs drain; a drain's progress and a router that missed the leave need no more).
_PROBE_AGAIN_SECONDS = 2.0
# A gang with a pod not Ready for this many first starts (and never under the floor) counts as failed.
START_DEADLINE_FACTOR = 3.0
MIN_START_DEADLINE_SECONDS = 3600.0
# How soon a deployment whose only unready gangs are stalled (see the requeue in ``_reconcile``) is looked at.
_STALLED_REQUEUE_SECONDS = 10.0
# A reconcile slower than this is logged with the time each of its phases took, as the API server traces its
# slow requests: what a slow reconcile waited for, told without a profiler.
SLOW_RECONCILE_SECONDS = 1.0
# How much of an unforeseen error status shows (the operator's log has all of it).
_ERROR_TEXT_CHARS = 300
# Objects whose whole spec is the operator's: one edited by hand is put back as it was (the periodic check of
# the shared objects, the orphan sweep for the gangs' own). The network policies are what keeps Ray's
# unauthenticated ports closed. The other shared objects are kept as client-go's controllers keep theirs
# (``_derives``): every field the operator sets must hold its value, and the fields the API defaults are left
# alone, so a router scaled, re-imaged or given an extra environment variable by hand is put back too.
_KEPT_EXACTLY = frozenset({"NetworkPolicy"})
# What of an object is compared: its content, not its metadata (labels select it, the spec hash says which spec
# it was applied from) nor what the API reports.
_NOT_CONTENT = frozenset({"apiVersion", "kind", "metadata", "status"})
# Maps compared whole, where a key added changes what the object does (see ``_derives``).
_SELECTORS = frozenset({"selector", "matchLabels", "nodeSelector"})
# Shared objects gangs do not wait for (see ``SharedWrites.gate``).
_SHARED_UNGATED = frozenset({"PodDisruptionBudget"})
# The shared objects' kinds, in the order they are applied: the policy that closes the engine pods first.
_SHARED_KINDS = [("networking.k8s.io/v1", "NetworkPolicy"), ("v1", "ServiceAccount"),
                 ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
                 ("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget")]
# Shared kinds applied only once the others are in place (see ``_apply_shared``).
_SHARED_SECOND = frozenset({"Deployment", "RoleBinding"})
# A gang's objects besides its pods and PodGroup: its NetworkPolicy, and the launch-plan ConfigMap and headless
# Service that gangs made by earlier operators still have (today's carry the plan in their pods and share the
# deployment's Service), so that those go with their gangs too.
_GANG_KINDS = [("networking.k8s.io/v1", "NetworkPolicy"), ("v1", "ConfigMap"), ("v1", "Service")]


@dataclass(frozen=True)
class ReconcilerOptions:
    operator: OperatorIdentity = field(default_factory=OperatorIdentity)
    restart_budget: int = 5
    backoff_base: float = 10.0
    backoff_cap: float = 600.0
    unschedulable_deadline: float = 300.0
    surge_unschedulable_deadline: float = 60.0
    distinct_gang_ports: bool = False
    max_gang_creates: int = MAX_GANG_CREATES
    # Gangs the operator creates at once, every deployment's together: on a shared API server, creates beyond
    # what it answers at once only queue there, ahead of the scheduler's binds and the kubelets' status writes.
    concurrent_gang_creates: int = CONCURRENT_GANG_CREATES
    weights: WeightsOptions = field(default_factory=WeightsOptions)


@dataclass
class Expected:
    """A gang this process created that the pod list may not show whole yet (the pod watch lags the writes)."""

    pods: int
    deadline: float
    # The gang's pods as the API answered their creation (empty until every create has been answered): the
    # reconciler plans from them until the list shows the gang, as client-go's controllers plan from their
    # expectations, so a lagging list neither makes it create the gang again nor holds back other gangs.
    created: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Event:
    type: str      # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Created:
    """What one gang creation came to, for the next reconcile to report (its events) and act on."""

    gang: str
    event: Event
    # The API refused one of the gang's objects (422): the refusal, with the generation and revision the
    # gang was built from (a refusal of an older spec is only reported).
    refusal: dict[str, Any] | None = None
    failed: bool = False  # neither created nor refused (the API was unavailable): creation pauses a while
    # A surge gang the API refused for want of room (a ResourceQuota): the revision whose rollout goes in place.
    surge_refused: str | None = None


@dataclass
class _Job:
    gang: str
    pool: str
    revision: str
    run: Callable[[], Awaitable[Created]]
    done: asyncio.Future[None] | None = None  # set once started: a deletion of the gang waits for it


class Creations:
    """The gang creations of one deployment, run outside its reconcile.

    A reconcile plans gangs and hands each to this queue, which creates their objects in the background, a
    few gangs at once; the reconcile plans from what it handed over (``Expected.created``) until the API
    shows it. So a deployment's reconcile lasts as long as its decisions, not as long as a hundred gangs'
    creates, and every other event of the deployment (a failed gang, a scale decision, a
    new spec) is acted on meanwhile. What each creation came to is collected by the next reconcile.
    """

    def __init__(self, concurrency: int = _CREATE_CONCURRENCY) -> None:
        self.concurrency = concurrency
        self._queued: deque[_Job] = deque()
        self._started: dict[str, _Job] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._finished: list[Created] = []
        # Called when a creation ended in a way no pod event shows (a refusal, a failure): the deployment's
        # loop is poked so that status says so at once.
        self.wake: Callable[[], None] | None = None
        # The operator's gang creations in flight, every deployment's together (``Reconciler``): a creation
        # leaves the queue (where it can still be dropped) only once one is free.
        self.slots: asyncio.Semaphore | None = None

    def submit(self, gang: str, pool: str, revision: str, run: Callable[[], Awaitable[Created]]) -> None:
        self._queued.append(_Job(gang, pool, revision, run))
        # A worker that is not done waits inside a creation and takes the next queued one after it.
        self._workers -= {t for t in self._workers if t.done()}
        while len(self._workers) < min(self.concurrency, len(self._queued) + len(self._started)):
            task = asyncio.create_task(self._work(), name=f"create gangs ({gang})")
            self._workers.add(task)
            task.add_done_callback(lambda t: self._workers.discard(t))

    def busy(self, gang: str | None = None) -> bool:
        """Whether ``gang`` (any gang, when None) is queued or being created."""
        if gang is None:
            return bool(self._queued or self._started)
        return gang in self._started or any(j.gang == gang for j in self._queued)

    def drop_queued(self, keep: Callable[[_Job], bool] = lambda _: False) -> list[str]:
        """Take the queued creations that ``keep`` refuses out of the queue (none of their objects exists);
        their gangs."""
        dropped = [j.gang for j in self._queued if not keep(j)]
        self._queued = deque(j for j in self._queued if keep(j))
        return dropped

    async def withdraw(self, gang: str) -> bool:
        """Make sure ``gang`` is not being created any more: a queued creation is dropped (True), a started one
        is waited for (False, as when there is none)."""
        if any(j.gang == gang for j in self._queued):
            self._queued = deque(j for j in self._queued if j.gang != gang)
            return True
        job = self._started.get(gang)
        if job is not None and job.done is not None:
            await asyncio.shield(job.done)
        return False

    def collect(self) -> list[Created]:
        """What the creations that ended since the last call came to, oldest first."""
        finished, self._finished = self._finished, []
        return finished

    async def settle(self) -> None:
        """Wait until no creation is queued or running."""
        while live := [t for t in self._workers if not t.done()]:
            await asyncio.gather(*live, return_exceptions=True)

    async def cancel(self) -> list[str]:
        """Stop: nothing queued is created, and a creation under way is cancelled (this process stopped
        leading, or the deployment is gone: whatever landed is the next leader's to see); their gangs."""
        gangs = [*self._started, *(j.gang for j in self._queued)]
        self._queued.clear()
        for task in list(self._workers):
            task.cancel()
        await asyncio.gather(*list(self._workers), return_exceptions=True)
        self._started.clear()
        return gangs

    async def _work(self) -> None:
        while self._queued:
            if self.slots is None:
                await self._create_next()
                continue
            async with self.slots:
                if self._queued:  # dropped meanwhile
                    await self._create_next()

    async def _create_next(self) -> None:
        job = self._queued.popleft()
        job.done = asyncio.get_running_loop().create_future()
        self._started[job.gang] = job
        try:
            created = await job.run()
        except Exception as e:  # a bug in creating: reported as a failure, never lost with the task
            log.exception("creating gang %s failed", job.gang)
            created = Created(job.gang, Event("Warning", "GangCreateFailed", f"gang {job.gang}: {e}"),
                              failed=True)
        finally:
            self._started.pop(job.gang, None)
            job.done.set_result(None)
        self._finished.append(created)
        if (created.refusal is not None or created.failed) and self.wake is not None:
            self.wake()


def _doubled(first: float, cap: float, failures: int) -> float:
    """A back-off after ``failures`` failures in a row: ``first``, doubling with each, at most ``cap``."""
    return min(cap, first * 2.0 ** (failures - 1))


class GangWrites:
    """The writes to a deployment's existing gangs, run outside its reconcile (as ``Creations`` for new ones):
    deletions, drain starts, and the collection of what deleted gangs left behind, by key (a gang's name).

    A reconcile that deletes a gang or starts its drain hands that over here and plans the gang as being
    deleted or draining (``Memory.deleting``, ``Memory.draining``) until the pod list shows it so: a rolling
    update deletes and drains a tenth of the gangs at a time, and on a loaded API server each of those
    writes was answered in seconds, which every decision of the deployment waited for.

    The same queue, as ``Memory.probes``, asks the gangs' heads and the routers (a drain's progress, the
    fabric check, taking a head out of a router): a run that returns True got an answer that changes a
    decision, and pokes the deployment's loop (``wake``).
    """

    def __init__(self, concurrency: int = _CREATE_CONCURRENCY) -> None:
        self.concurrency = concurrency
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._limit: asyncio.Semaphore | None = None
        self.wake: Callable[[], None] | None = None

    def submit(self, gang: str, run: Callable[[], Awaitable[bool | None]], what: str) -> None:
        if self.busy(gang):
            return
        task_name = f"{what} {gang.strip()}"
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.concurrency)
        limit = self._limit

        async def work() -> None:
            async with limit:
                try:
                    changed = await run()
                except Exception:  # a bug: ``run`` reports what it expects; never lost with the task
                    log.exception("%s failed", task_name)
                    return
            if changed and self.wake is not None:
                self.wake()

        task = asyncio.create_task(work(), name=task_name)
        self._tasks[gang] = task
        task.add_done_callback(lambda t: self._tasks.pop(gang, None) if self._tasks.get(gang) is t else None)

    def busy(self, gang: str | None = None) -> bool:
        """Whether a write of ``gang`` (of any gang, when None) is under way."""
        if gang is None:
            return any(not t.done() for t in self._tasks.values())
        task = self._tasks.get(gang)
        return task is not None and not task.done()

    async def settle(self) -> None:
        """Wait until no write is under way."""
        while live := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.gather(*live, return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()


class StatusWrites:
    """A deployment's status, written outside its reconcile: the newest status decided, one write at a time.

    A reconcile decides from the status it last decided (``Memory.latest``), not from what the API has taken,
    so it never waits for the write: on a loaded API server a status patch of a hundred gangs took seconds,
    and every event of the deployment waited behind it. A status decided while an older one is still on its
    way replaces it (only the newest is written, so a burst of reconciles makes one or two writes). A write
    that fails is tried again with back-off, and a reconcile goes on deciding meanwhile; before, the failure
    failed the reconcile, and the loop's back-off held every decision of the deployment.
    """

    def __init__(self) -> None:
        self._pending: Callable[[], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # in a row

    def submit(self, write: Callable[[], Awaitable[None]]) -> None:
        """Write this status next, in place of any not yet started."""
        self._pending = write
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work(), name="write status")

    def pending(self) -> bool:
        """Whether a newer status than the last one written waits to be written."""
        return self._pending is not None

    async def settle(self) -> None:
        """Wait until the newest status is written (retrying what fails)."""
        while self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)

    async def cancel(self) -> None:
        """Stop writing (this process stopped leading, or the deployment is gone): nothing more is written."""
        self._pending = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _work(self) -> None:
        while (write := self._pending) is not None:
            self._pending = None
            try:
                await write()
                self.failures = 0
            except Exception as e:
                self.failures += 1
                delay = _doubled(_STATUS_RETRY_SECONDS, _STATUS_RETRY_CAP_SECONDS, self.failures)
                log.warning("status write failed (%d in a row; again in %.0f s): %s", self.failures, delay, e)
                if self._pending is None:
                    self._pending = write
                await asyncio.sleep(delay)


class SharedWrites:
    """A deployment's shared objects (the router, its account and role, the policy that closes the engine pods,
    the headless Service, the PDB), applied outside its reconcile.

    A reconcile decides what the spec asks of them (a digest of their names and spec hashes) and hands the
    list-and-apply over here when it differs from what was last applied, or when the last check is
    ``_SHARED_CHECK_SECONDS`` old (nobody deleted or edited one). Gangs wait until this spec's shared
    objects are in place: the policy that closes the engine pods must exist before any of them, and a
    refusal of one holds every gang back. On a loaded API server those writes took seconds (two rounds
    of applies), and the deployment's first reconcile, every event of it, waited for them.
    """

    def __init__(self) -> None:
        self.in_place = ""  # the digest of the shared objects as last found in place
        self.checked_at = float("-inf")  # and when
        self.failures = 0  # in a row (not refusals)
        self.error = ""  # what the last failure said
        self.retry_at = float("-inf")  # no apply before then, after a failure
        self.refused: tuple[str, dict[str, str]] | None = None  # a digest the API refused, and its refusal
        # What the API said of the objects gangs do not wait for (the PDB) at the last apply: reported, not blocking.
        self.ungated_error = ""
        # Called when an apply ended: the deployment's loop is poked, so gangs follow their shared objects at once.
        self.wake: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def due(self, wanted: str, now: float) -> bool:
        """Whether to apply now: the digest changed, or the last check is old (not while one runs, nor before
        the back-off after a failure has passed)."""
        if self.busy() or now < self.retry_at:
            return False
        return wanted != self.in_place or now - self.checked_at >= _SHARED_CHECK_SECONDS

    def gate(self, wanted: str, now: float) -> str | None:
        """What holds gangs back while this digest's objects are not known to be in place, or None. The
        disruption budgets hold nothing back: they follow the replica count, and a scale-up need not wait
        for their apply."""
        if _gating(wanted) == _gating(self.in_place):
            return None
        if self.error and not self.busy():
            return (f"the shared objects could not be applied ({self.failures} failed in a row, again in "
                    f"{max(0.0, self.retry_at - now):.0f} s): {self.error}")
        return "applying the deployment's shared objects (router, network policy, Service, PDB)"

    def take_refusal(self, wanted: str) -> dict[str, str] | None:
        """The API's refusal of this digest's objects, once (status keeps it from then on)."""
        refused, self.refused = self.refused, None
        return refused[1] if refused is not None and refused[0] == wanted else None

    def submit(self, wanted: str, now: float, apply: Callable[[], Awaitable[dict[str, str] | None]],
               clock: Callable[[], float]) -> None:
        async def work() -> None:
            news = True  # what gangs wait for changed (a refusal, a failure, this spec's objects now in place)
            try:
                refusal = await apply()
            except Exception as e:  # the API unavailable, a timeout, a 403: tried again with back-off
                self.failures += 1
                self.error = str(e) or type(e).__name__
                delay = _doubled(_CREATE_RETRY_SECONDS, _CREATE_RETRY_CAP_SECONDS, self.failures)
                self.retry_at = clock() + delay
                log.warning("applying the shared objects failed (%d in a row; again in %.0f s): %s", self.failures,
                            delay, self.error)
            else:
                news = refusal is not None or self.failures > 0 or wanted != self.in_place
                self.failures, self.error = 0, ""
                if refusal is not None:
                    self.refused = (wanted, refusal)
                else:
                    self.in_place, self.checked_at = wanted, now
            if news and self.wake is not None:
                self.wake()

        self._task = asyncio.create_task(work(), name="apply shared objects")

    async def settle(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _gating(digest: str) -> list[list[str]] | None:
    """The entries of a shared-objects digest (kind, name, spec hash) that gangs wait for."""
    if not digest:
        return None
    return [entry for entry in json.loads(digest) if entry[0] not in _SHARED_UNGATED]


class ObjectTaken(MimoError):
    """An object the deployment needs exists, and something else owns it."""


@dataclass
class Memory:
    """What one operator process keeps per deployment: guards only, never the source of truth."""

    expectations: dict[str, Expected] = field(default_factory=dict)  # by gang
    creations: Creations = field(default_factory=Creations)
    status: StatusWrites = field(default_factory=StatusWrites)
    gang_writes: GangWrites = field(default_factory=GangWrites)
    # Gangs handed to ``gang_writes`` to be deleted, and when: planned as being deleted until the list shows
    # their pods going; and those to drain: when, and why (planned as draining until the head shows it).
    deleting: dict[str, float] = field(default_factory=dict)
    draining: dict[str, tuple[float, str]] = field(default_factory=dict)
    # After a creation failed (not refused): how many failed in a row, what the last said, and when the next
    # gang may be created.
    create_failures: int = 0
    create_error: str = ""
    create_retry_at: float = float("-inf")
    # Revisions whose surge gangs the API refused for want of room: their rollouts go in place.
    surge_refused: set[str] = field(default_factory=set)
    autoscaler: autoscaler.AutoscalerMemory = field(default_factory=autoscaler.AutoscalerMemory)
    # The deployment with the status this process last decided (written, or on its way: ``status``), as the
    # API answered the last write or a fresh read: None until read, and again whenever this process may not
    # have been the only writer (it just became leader).
    latest: dict[str, Any] | None = None
    weights_shown: WeightsState | None = None   # the weights as status last showed them, and when
    weights_shown_at: float = 0.0
    # The highest attempt this process used per slot: should a status write fail after a gang was created,
    # the next reconcile still never hands out that name again.
    attempts: dict[int, int] = field(default_factory=dict)
    # Each gang's fabric check as its head reported it once the gang was Ready (read once per gang).
    fabric: dict[str, dict[str, Any]] = field(default_factory=dict)
    fabric_told: list[Event] = field(default_factory=list)  # the checks heads reported since the last reconcile
    # Requests to the gangs' heads and the routers, outside the reconcile (see ``GangWrites``), and the
    # draining gangs whose head said its drain is done.
    probes: GangWrites = field(default_factory=lambda: GangWrites(_PROBE_CONCURRENCY))
    drained: set[str] = field(default_factory=set)
    probe_again: dict[str, float] = field(default_factory=dict)  # when each probe (by key) may be made again
    # Per draining gang: the clock at the last reconcile and the time it has drained since, counted forward only
    # (``_drain_clock``), so that a clock stepped back does not hold a drain past its timeout.
    drain_clock: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Gangs whose pods are still listed and being deleted with the deployment still there: this process deleted
    # them, or asked the API once (``_deleted_meanwhile``).
    deleted: set[str] = field(default_factory=set)
    orphans_checked_at: float = float("-inf")  # when the gangs' objects were last listed for orphans
    shared: SharedWrites = field(default_factory=SharedWrites)

    # A disaggregated deployment's pools: each keeps its own attempts and autoscaler (gang names, the
    # expectations and the fabric checks are the deployment's).
    pools: dict[str, Memory] = field(default_factory=dict)

    def forget_status(self) -> None:
        self.latest = None

    async def stop(self) -> None:
        """Cancel the gang creations under way or queued (what did not land is not planned from any more), the
        writes to its gangs and the status writes: this process no longer acts for the deployment."""
        for gang in await self.creations.cancel():
            self.expectations.pop(gang, None)
        await self.gang_writes.cancel()
        await self.probes.cancel()
        await self.shared.cancel()
        self.deleting.clear()
        self.draining.clear()
        await self.status.cancel()

    def pool(self, key: str) -> Memory:
        """What one pool keeps: this memory for a colocated deployment (key ""), else the pool's own."""
        if not key:
            return self
        return self.pools.setdefault(key, Memory())


class _Trace:
    """The phases of one reconcile and how long each took."""

    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def step(self, phase: str) -> None:
        now = time.monotonic()
        self.phases.append((phase, now - self._last))
        self._last = now

    def text(self) -> str:
        return ", ".join(f"{phase} {seconds * 1000:.0f} ms" for phase, seconds in self.phases if seconds >= 0.001)


@dataclass
class ReconcileResult:
    events: list[Event] = field(default_factory=list)
    requeue_after: float = 10.0
    gangs_by_state: dict[str, int] = field(default_factory=dict)


@dataclass
class PoolRun:
    """What one reconcile did with one pool: the status is written from it once every pool has run."""

    pool: Pool
    revision: str
    gangs: list[ObservedGang]
    desired: Desired
    outcome: Outcome
    upgrade: OperatorUpgrade
    autoscaling: dict[str, Any]


def _stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with the hash of its desired content, so an unchanged child is never written again."""
    digest = L.short_hash(json.dumps(obj, sort_keys=True), length=16)
    obj = dict(obj)
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), L.ANNOTATION_SPEC_HASH: digest}
    obj["metadata"] = meta
    return obj


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, kube: Kube, heads: Heads, options: ReconcilerOptions | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.heads = heads
        self.options = options or ReconcilerOptions()
        self.clock = clock
        self._create_slots = asyncio.Semaphore(self.options.concurrent_gang_creates)
        self._kueue_topology: dict[tuple[str, str], tuple[float, KueueTopology]] = {}

    async def reconcile(self, body: Mapping[str, Any], memory: Memory) -> ReconcileResult:
        trace = _Trace()
        memory.creations.slots = self._create_slots
        try:
            return await self._reconcile(body, memory, trace)
        finally:
            took = time.monotonic() - trace.started
            metrics.RECONCILE_SECONDS.observe(took)
            if took >= SLOW_RECONCILE_SECONDS:
                meta = body["metadata"]
                log.info("reconcile of %s/%s took %.2f s: %s", meta["namespace"], meta["name"], took,
                         trace.text() or "no phase finished")

    async def report_error(self, body: Mapping[str, Any], memory: Memory, error: Exception, retry_in: float) -> None:
        """A reconcile that failed on what no rule foresaw (a bug, or input the planner let through) is told in
        status: the deployment must not look healthy while nothing is done for it. Degraded names the error and
        when the operator tries again; the other fields stay as the last reconcile left them."""
        latest = memory.latest or body
        meta = latest["metadata"]
        old: Mapping[str, Any] = latest.get("status") or {}
        first_line = (str(error).strip().splitlines() or [""])[0]
        what = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
        text = (f"the operator could not reconcile this deployment ({_clip(what, _ERROR_TEXT_CHARS)}); it tries "
                f"again in {retry_in:.0f} s, and its log has the whole error")
        generation = int(meta.get("generation", 0))
        new = {"conditions": merge_conditions(old.get("conditions") or [],
                                              [condition("Degraded", True, "ReconcileError", text, generation)])}
        await self._write_status(meta["namespace"], meta["name"], old, new, memory)

    async def _reconcile(self, event_body: Mapping[str, Any], memory: Memory, trace: _Trace) -> ReconcileResult:
        result = ReconcileResult()
        refusals = self._creations_ended(memory, result)
        body = await self._freshest(event_body, memory)
        trace.step("read")
        if body is None:
            return result  # deleted meanwhile
        meta = body["metadata"]
        name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation", 0))
        old_status: Mapping[str, Any] = body.get("status") or {}
        try:
            spec = parse_spec(body)
            # A disaggregated deployment is planned per side; its colocated plan is never used (and Pro's
            # may not even exist on the pools' node counts). The deployment-wide plan is the decode side's.
            pd = plan_disaggregated(spec) if spec.disaggregation is not None else None
            plan = pd.decode.plan if pd is not None else plan_deployment(spec)
            if missing := await missing_gang_scheduler(self.kube, spec.scheduling.gang_scheduler):
                raise PlanRefused("spec.scheduling.gangScheduler", missing)
            if missing := await missing_queue(self.kube, spec.scheduling.gang_scheduler, namespace,
                                              spec.scheduling.queue_name):
                raise PlanRefused("spec.scheduling.queueName", missing)
            gang_api = await served_gang_api(self.kube, spec.scheduling.gang_scheduler)
            topology = spec.scheduling.topology_key
            gang_topology = bool(gang_api and topology
                                 and await self._gang_topology(spec.scheduling, gang_api, namespace, topology))
        except SpecError as e:
            trace.step("plan")
            reason = "PlanRefused" if isinstance(e, PlanRefused) else "InvalidSpec"
            status = refused_status(old_status, generation, e.field, str(e), reason)
            if await self._write_status(namespace, name, old_status, status, memory):
                result.events.append(Event("Warning", reason, str(e)))
            result.requeue_after = 300.0
            return result

        ctx = BuildContext(name=name, namespace=namespace, uid=meta["uid"], spec=spec, plan=plan,
                           operator=self.options.operator, distinct_gang_ports=self.options.distinct_gang_ports,
                           pod_labels=_pod_template(spec, "labels"),
                           pod_annotations=_pod_template(spec, "annotations"), disaggregated=pd, gang_api=gang_api,
                           gang_topology=gang_topology)
        pools = pools_of(ctx)
        trace.step("plan")
        now = self.clock()
        # Queued creations of an older revision are never started: their slots get gangs of the new one.
        current = {p.key: revision_of(p.ctx) for p in pools}
        for stale in memory.creations.drop_queued(keep=lambda job: current.get(job.pool) == job.revision):
            memory.expectations.pop(stale, None)

        listed = await self.kube.list("v1", "Pod", namespace, {L.LABEL_DEPLOYMENT: name, L.LABEL_COMPONENT: "engine"})
        expected = self._unmet_expectations(memory, listed, now)
        pods = [*listed, *self._as_created(memory, expected, listed)]
        pods = self._as_handed_over(memory, pods, now)
        # Only a gang whose pods are not all known holds creation back: the others are planned as created.
        unknown = tuple(g for g in expected if not memory.expectations[g].created)
        gangs = _drain_clock(gangs_from_pods(pods), memory, now)
        if await self._deleted_meanwhile(meta, memory, listed):
            return result
        trace.step("list")

        # The gates every pool shares, decided before the planner and handed to it.
        weights = await ensure_weights(self.kube, ctx, self.options.weights,
                                       probe=WeightsProbe(self.heads.session))
        result.events.extend(Event(e.type, e.reason, e.message) for e in weights.events)
        result.requeue_after = min(result.requeue_after, weights.requeue_after)
        shown = _weights_shown(weights, memory, now)
        trace.step("weights")
        # GPUs do not wait on a download: no gang until its weights are ready where it will run.
        weights_gate = shown.message if weights.blocks_gangs else None
        refused = refusal_from_status(old_status, generation)
        # A gang the API refused since the last reconcile: refused gangs of an older spec are only reported.
        refused = refused or next((r for r in refusals if r["generation"] == generation), None)
        if expected:
            result.requeue_after = 1.0
        # The shared objects before any gang: among them the policy that closes every engine pod of the
        # deployment from its creation on (see ``build.shared``), and a refusal of one holds the gangs back.
        shared_gate = None
        if refused is None:
            refusal, shared_gate = self._shared(ctx, memory, now)
            if refusal is not None:
                refused = {**refusal, "generation": generation, "revision": current[pools[0].key]}
                result.events.append(Event("Warning", "ChildRefused", refusal_text(refused)))

        # Gangs of a pool the deployment no longer has (it turned disaggregated, or colocated again).
        keys = {p.key for p in pools}
        for g in gangs:
            if g.pool not in keys:
                await memory.creations.withdraw(g.name)
                memory.expectations.pop(g.name, None)
                await self._delete_gang_objects(ctx, g.name, memory)
                what = f"the {g.pool} pool" if g.pool else "colocated gangs"
                result.events.append(Event("Normal", "GangDeleted",
                                           f"gang {g.name}: the deployment has no {what} any more"))
        scaling: dict[str, dict[str, Any]] = {}
        if pd is not None and spec.autoscaling.enabled:
            # Both pools decided at once (their ratio is bounded); each pool's count is written to its spec.
            scaling = await self._autoscale_pools(ctx, pd, pools, gangs, memory, now, result, old_status)
            result.requeue_after = min(result.requeue_after, autoscaler.SCRAPE_INTERVAL_SECONDS)
            pools = [dataclasses.replace(p, replicas=int(scaling[p.key]["replicas"])) if p.key in scaling else p
                     for p in pools]
        ran: list[PoolRun] = []
        for pool in pools:
            run = await self._reconcile_pool(pool, [g for g in gangs if g.pool == pool.key], pods, memory, now,
                                             old_status, generation, weights_gate, shared_gate, refused, unknown,
                                             result, trace)
            if pool.key in scaling:
                run.autoscaling = scaling[pool.key]["status"]
            if memory.shared.ungated_error:
                run.outcome.waiting.append(f"the disruption budget failed to apply (gangs go on without it; tried "
                                           f"again every {_SHARED_CHECK_SECONDS:.0f} s): {memory.shared.ungated_error}")
            ran.append(run)
        trace.step("pools")

        live = [g for g in gangs if g.pool in keys]
        # An orphan comes of an interrupted creation or deletion and may wait a little: the gangs' objects
        # are listed for it at most every _ORPHAN_CHECK_SECONDS, not on every reconcile (at a hundred gangs
        # that list was a large part of the operator's CPU), and outside the reconcile, with the gang writes.
        if now - memory.orphans_checked_at >= _ORPHAN_CHECK_SECONDS and not memory.gang_writes.busy(_ORPHANS):
            memory.orphans_checked_at = now
            strays, unowned = _strays(ctx, pods, now), _unowned(ctx, pods)
            memory.gang_writes.submit(_ORPHANS, lambda: self._collect_orphans(ctx, live, strays, unowned, memory, now),
                                      "collect orphans of")

        health = {n: h for run in ran for n, h in run.outcome.health.items()}
        fabric = self._fabric(live, health, ctx.ports.worker_http, old_status, memory, now, result)
        memory.drained &= {g.name for g in live if g.drain_started is not None}
        memory.probe_again = {k: at for k, at in memory.probe_again.items() if at > now}
        trace.step("fabric")
        endpoint = router_url(ctx) if spec.router.enabled else None
        statuses = {}
        for run in ran:
            old = old_status if run.pool.role is None else ((old_status.get("pools") or {}).get(run.pool.key) or {})
            statuses[run.pool.key] = running_status(
                old=old, name=name, generation=generation, replicas=run.desired.replicas, plan=run.pool.ctx.plan,
                revision=run.revision, gangs=run.gangs, outcome=run.outcome, endpoint=endpoint,
                autoscaling=run.autoscaling, weights=shown, operator_upgrade=run.upgrade.condition(),
                refused=refused, fabric=fabric)
        status = (statuses[""] if pd is None
                  else disaggregated_status(old=old_status, name=name, generation=generation, pools=statuses,
                                            endpoint=endpoint, weights=shown, refused=refused))
        await self._write_status(namespace, name, old_status, status, memory)
        trace.step("status")
        for g in live:
            state = health[g.name].state.value
            result.gangs_by_state[state] = result.gangs_by_state.get(state, 0) + 1
        for run in ran:
            unready = [health[g.name] for g in run.gangs if health[g.name].state is not GangHealth.READY]
            # A pod stuck terminating or a container that cannot start changes on its own only rarely (its pod
            # events wake the loop when it does): looked at again in 10 s, not every 2.
            moving = [h for h in unready if not (h.extra.get("stuck") or h.extra.get("cannot_start"))]
            if run.outcome.steps or moving:
                result.requeue_after = min(result.requeue_after, 2.0)
            elif unready:
                result.requeue_after = min(result.requeue_after, _STALLED_REQUEUE_SECONDS)
            if run.outcome.deferred:
                result.requeue_after = 0.0  # the bound on creations left work: the next reconcile does it now
        if memory.creations.busy() or memory.deleting or memory.draining or memory.shared.busy():
            result.requeue_after = min(result.requeue_after, 1.0)
        return result

    def _creations_ended(self, memory: Memory, result: ReconcileResult) -> list[dict[str, Any]]:
        """Report the gang creations that ended since the last reconcile (their events), pause creation
        after a failure, and return the refusals among them."""
        refusals = []
        for ended in memory.creations.collect():
            result.events.append(ended.event)
            if ended.refusal is not None:
                refusals.append(ended.refusal)
            elif ended.failed and ended.surge_refused is not None:
                # Not a failure to back off from: the rollout replaces in place instead (``Desired.surge_refused``).
                memory.surge_refused.add(ended.surge_refused)
            elif ended.failed:
                memory.create_failures += 1
                memory.create_error = ended.event.message
                memory.create_retry_at = self.clock() + _doubled(
                    _CREATE_RETRY_SECONDS, _CREATE_RETRY_CAP_SECONDS, memory.create_failures)
            else:
                memory.create_failures = 0
        return refusals

    async def _reconcile_pool(self, pool: Pool, gangs: list[ObservedGang], pods: list[dict[str, Any]],
                              memory: Memory, now: float, old_status: Mapping[str, Any], generation: int,
                              weights_gate: str | None, shared_gate: str | None, refused: Mapping[str, Any] | None,
                              unknown: tuple[str, ...], result: ReconcileResult, trace: _Trace) -> PoolRun:
        """One pool's gangs: plan the steps from its spec, records and gangs, and carry them out."""
        ctx, spec = pool.ctx, pool.ctx.spec
        own = memory.pool(pool.key)
        revision = revision_of(ctx)
        names = {g.name for g in gangs}
        upgrade = operator_upgrade(ctx, revision, [p for p in pods if (p["metadata"].get("labels") or {}).get(
            L.LABEL_GANG) in names])
        if upgrade.automatic:
            # The user opted in: gangs an older operator rendered roll like gangs of an older revision.
            gangs = [dataclasses.replace(g, revision=outdated_marker(revision)) if g.name in upgrade.outdated else g
                     for g in gangs]
        drained = self._drained(ctx, gangs, memory, now)
        trace.step("drains")
        desired = self._desired(spec, pool.replicas, revision, ctx.plan)
        mine = tuple(g for g in unknown if g.startswith(f"{ctx.gang_prefix}-"))
        paused = None
        if now < memory.create_retry_at:
            paused = (f"gang creation resumes in {memory.create_retry_at - now:.0f} s, after "
                      f"{memory.create_failures} failed in a row (last: {memory.create_error})")
        desired = dataclasses.replace(desired, gates=Gates(
            weights=weights_gate,
            shared=shared_gate,
            paused=paused,
            # A read that does not show a gang we just created must not make us create it again.
            expectations=mine,
            refused=refusal_text(refused) if refused else None),
            surge_refused=revision in memory.surge_refused)

        # The autoscaler decides first: its count and its choice of gang to remove feed the planner.
        autoscaling: dict[str, Any] = {}
        if spec.autoscaling.enabled and pool.role is None:
            autoscaling = await self._autoscale(ctx, gangs, Outcome(health=health_map(desired, gangs, now)), own,
                                                now, result, old_status)
            result.requeue_after = min(result.requeue_after, autoscaler.SCRAPE_INTERVAL_SECONDS)
            scaled = autoscaling.get("lastScaleDecision")
            if scaled and scaled != old_status.get("lastScaleDecision"):
                # Written through /scale just now: the planner acts on it in this same reconcile.
                desired = dataclasses.replace(desired, replicas=int(scaled["to"]))
            desired = dataclasses.replace(desired, remove_first=own.autoscaler.remove_first)
            trace.step("autoscale")
        if spec.autoscaling.enabled and pool.role is not None:
            desired = dataclasses.replace(desired, remove_first=own.autoscaler.remove_first)
        shown = old_status if pool.role is None else ((old_status.get("pools") or {}).get(pool.key) or {})
        records = {r: dataclasses.replace(rec, attempt=max(rec.attempt, own.attempts.get(r, 0)))
                   for r, rec in records_from_status(shown).items()}
        records.update({r: ReplicaRecord(attempt=a) for r, a in own.attempts.items() if r not in records})
        outcome = next_steps(desired, gangs, records, now, drained)
        trace.step("steps")

        # Every step is handed over: gangs are created by ``Creations``, deleted and drained by ``GangWrites``.
        for step in outcome.steps:
            if isinstance(step, CreateGang):
                self._submit(step, pool.key, ctx, revision, generation, memory, own, now)
            else:
                result.events.append(self._execute(step, ctx, gangs, memory, now))
        trace.step("hand over")
        return PoolRun(pool=pool, revision=revision, gangs=gangs, desired=desired, outcome=outcome,
                       upgrade=upgrade, autoscaling=autoscaling)

    def _fabric(self, gangs: list[ObservedGang], health: Mapping[str, Health], port: int,
                old_status: Mapping[str, Any], memory: Memory, now: float,
                result: ReconcileResult) -> dict[str, dict[str, Any]]:
        """Each gang's fabric check: what status already shows, and for a gang that turned Ready since, its
        head's figures, read once outside the reconcile (``Memory.probes``; one Event per gang, posted by the
        reconcile after the answer; a head that cannot say is asked again ``_FABRIC_ASK_SECONDS`` later)."""
        live = {g.name for g in gangs}
        for shown in old_status.get("gangs") or []:
            if shown.get("fabric") and shown.get("name") in live:
                memory.fabric.setdefault(shown["name"], dict(shown["fabric"]))
        result.events.extend(memory.fabric_told)
        memory.fabric_told.clear()
        for g in gangs:
            if (g.name not in memory.fabric and g.head is not None and g.head.ip
                    and health[g.name].state is GangHealth.READY):
                self._probe(memory, f"fabric {g.name}", now, functools.partial(
                    self._ask_fabric, g.name, g.head.ip, port, memory), "ask the fabric check of", _FABRIC_ASK_SECONDS)
        for gone in set(memory.fabric) - live:
            del memory.fabric[gone]
        return {n: f for n, f in memory.fabric.items() if n in live}

    async def _ask_fabric(self, gang: str, ip: str, port: int, memory: Memory) -> bool:
        got = await self.heads.fabric(ip, port)
        if got is None:
            return False
        memory.fabric[gang] = got
        figures = ", ".join(f"{k} {got[k]} GB/s" for k in ("allReduceGBps", "allToAllGBps", "expectedGBps")
                            if k in got)
        memory.fabric_told.append(Event("Warning" if got["verdict"] == "fail" else "Normal", "FabricChecked",
                                        f"gang {gang}: fabric {got['verdict']}"
                                        + (f" ({figures})" if figures else "") + f": {got['message']}"))
        return True

    async def _autoscale(self, ctx: BuildContext, gangs: list[ObservedGang], outcome: Outcome, memory: Memory,
                         now: float, result: ReconcileResult, old_status: Mapping[str, Any]) -> dict[str, Any]:
        """One autoscaler step; returns the status fields it owns (kept from before between scrapes).

        A scale decision is written through /scale; its choice of gang to take out first is kept in
        ``memory.autoscaler.remove_first`` for the steps planner (``Desired.remove_first``).
        """
        kept = {k: old_status[k] for k in ("lastScaleDecision", "kvCacheUsage", "queue", "autoscaling")
                if k in old_status}
        # The router's own metrics say how many requests found no gang: the demand at zero gangs.
        routers = [f"http://{ip}:{ctx.ports.router_metrics}/metrics" for ip in await self._router_ips(ctx)]
        decision = await autoscaler.step(port=autoscaler.HttpMetrics(self.heads.session), namespace=ctx.namespace,
                                         name=ctx.name, spec=ctx.spec, plan=ctx.plan, gangs=gangs,
                                         health=outcome.health, memory=memory.autoscaler, now=now, routers=routers)
        if decision is None:
            return kept
        signals = decision.signals
        fields: dict[str, Any] = {**kept, "autoscaling": {
            "action": decision.action.value, "reason": decision.reason, "desiredReplicas": decision.desired_replicas}}
        if signals.token_usage is not None:
            fields["kvCacheUsage"] = round(signals.token_usage, 4)
        if signals.queue_requests is not None:
            fields["queue"] = int(signals.queue_requests)
        current = ctx.spec.replicas
        if decision.action in (Action.SCALE_UP, Action.SCALE_DOWN) and decision.desired_replicas != current:
            # spec.replicas is the one place the desired count lives; the steps planner acts on it.
            await self.kube.merge_patch(f"{L.GROUP}/{L.VERSION}", L.KIND, ctx.namespace, ctx.name,
                                        {"spec": {"replicas": decision.desired_replicas}}, subresource="scale")
            autoscaler.DECISIONS.labels(ctx.namespace, ctx.name, decision.action.value).inc()
            memory.autoscaler.scaled(decision.desired_replicas, current, now)
            memory.autoscaler.remove_first = (decision.remove,) if decision.remove else ()
            fields["lastScaleDecision"] = {"time": _iso(now), "from": current, "to": decision.desired_replicas,
                                           "reason": decision.reason}
            verb = "ScaledUp" if decision.action is Action.SCALE_UP else "ScaledDown"
            result.events.append(Event("Normal", verb, f"{current} → {decision.desired_replicas} replicas: "
                                                       f"{decision.reason}"))
        elif decision.action is Action.NO_DATA and kept.get("autoscaling", {}).get("action") != Action.NO_DATA.value:
            result.events.append(Event("Warning", "AutoscalingNoData", decision.reason))
        return fields

    async def _autoscale_pools(self, ctx: BuildContext, pd: DisaggregatedPlan, pools: list[Pool],
                               gangs: list[ObservedGang], memory: Memory, now: float, result: ReconcileResult,
                               old_status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """One autoscaler step of a disaggregated deployment (``autoscaler.step_pools``): per pool, the count
        it serves at now and the status fields the autoscaler owns (kept from before between scrapes).

        A pool has no /scale of its own: a changed count is written to ``spec.disaggregation.<pool>.replicas``
        (and nothing else of the spec), where the user set it; the policy's gang to take out first goes to
        the pool's ``Desired.remove_first``.
        """
        by_role = {p.key: [g for g in gangs if g.pool == p.key] for p in pools}
        health = {n: h for p in pools for n, h in health_map(
            self._desired(p.ctx.spec, p.replicas, "", p.ctx.plan), by_role[p.key], now).items()}
        routers = [f"http://{ip}:{ctx.ports.router_metrics}/metrics" for ip in await self._router_ips(ctx)]
        decisions = await autoscaler.step_pools(
            port=autoscaler.HttpMetrics(self.heads.session), namespace=ctx.namespace, name=ctx.name, spec=ctx.spec,
            pd_plan=pd, gangs_by_role=by_role, health=health,
            memory_by_role={p.key: memory.pool(p.key).autoscaler for p in pools}, now=now, routers=routers)
        out: dict[str, dict[str, Any]] = {}
        written: dict[str, int] = {}
        for pool in pools:
            own = memory.pool(pool.key)
            shown = (old_status.get("pools") or {}).get(pool.key) or {}
            kept = {k: shown[k] for k in ("lastScaleDecision", "kvCacheUsage", "queue", "autoscaling") if k in shown}
            decision = (decisions or {}).get(pool.key)
            if decision is None:
                out[pool.key] = {"replicas": pool.replicas, "status": kept}
                continue
            fields: dict[str, Any] = {**kept, "autoscaling": {
                "action": decision.action.value, "reason": decision.reason,
                "desiredReplicas": decision.desired_replicas}}
            if decision.signals.token_usage is not None:
                fields["kvCacheUsage"] = round(decision.signals.token_usage, 4)
            if decision.signals.queue_requests is not None:
                fields["queue"] = int(decision.signals.queue_requests)
            replicas = pool.replicas
            if decision.action in (Action.SCALE_UP, Action.SCALE_DOWN) and decision.desired_replicas != pool.replicas:
                replicas = written[pool.key] = decision.desired_replicas
                autoscaler.DECISIONS.labels(ctx.namespace, ctx.name, f"{pool.key}_{decision.action.value}").inc()
                own.autoscaler.scaled(replicas, pool.replicas, now)
                own.autoscaler.remove_first = (decision.remove,) if decision.remove else ()
                fields["lastScaleDecision"] = {"time": _iso(now), "from": pool.replicas, "to": replicas,
                                               "reason": decision.reason}
                verb = "ScaledUp" if decision.action is Action.SCALE_UP else "ScaledDown"
                result.events.append(Event("Normal", verb, f"{pool.key} pool: {pool.replicas} → {replicas} "
                                                           f"gangs: {decision.reason}"))
            out[pool.key] = {"replicas": replicas, "status": fields}
        if written:
            await self.kube.merge_patch(f"{L.GROUP}/{L.VERSION}", L.KIND, ctx.namespace, ctx.name, {
                "spec": {"disaggregation": {role: {"replicas": n} for role, n in written.items()}}})
        return out

    async def _router_ips(self, ctx: BuildContext) -> list[str]:
        """The pod IPs of the deployment's router pods (none when the router is off)."""
        if not ctx.spec.router.enabled:
            return []
        pods = await self.kube.list("v1", "Pod", ctx.namespace,
                                    {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "router"})
        return [ip for p in pods if not p["metadata"].get("deletionTimestamp")
                and (ip := (p.get("status") or {}).get("podIP"))]

    async def _leave_routers(self, ctx: BuildContext, gangs: list[ObservedGang]) -> None:
        """Take the heads of ``gangs`` out of every router pod's worker set (``Heads.leave_router``): asked on
        every reconcile while a gang drains, so a router that missed it (down, restarted) is asked again."""
        heads = [g.head.ip for g in gangs if g.head is not None and g.head.ip]
        if not heads:
            return
        routers = await self._router_ips(ctx)
        await asyncio.gather(*(self.heads.leave_router(f"http://{r}:{ctx.ports.router_http}",
                                                       f"http://{h}:{ctx.plan.port}")
                               for r in routers for h in heads))

    def _desired(self, spec: DeploymentSpec, replicas: int, revision: str, plan: Plan) -> Desired:
        o = self.options
        return Desired(
            size=plan.nodes_per_replica,
            # Three first starts (download, load, kernels, graphs), and never under an hour: what the plan expects
            # is an estimate, and a registry at a third of the assumed speed is no reason to replace a gang.
            start_deadline=max(START_DEADLINE_FACTOR * plan.startup.cold_seconds, MIN_START_DEADLINE_SECONDS),
            replicas=replicas, revision=revision, max_surge=spec.rollout.max_surge,
            max_unavailable=spec.rollout.max_unavailable, restart_budget=o.restart_budget,
            backoff_base=o.backoff_base, backoff_cap=o.backoff_cap, unschedulable_deadline=o.unschedulable_deadline,
            surge_unschedulable_deadline=o.surge_unschedulable_deadline,
            drain_timeout=float(spec.autoscaling.drain_timeout_seconds), max_creates=o.max_gang_creates,
        )

    def _unmet_expectations(self, memory: Memory, listed: list[dict[str, Any]], now: float) -> tuple[str, ...]:
        """The gangs this process created that ``listed`` does not show whole yet (an expectation whose
        deadline has passed is dropped: what the API shows then is the truth)."""
        if not memory.expectations:
            return ()
        seen: dict[str, int] = {}
        for pod in listed:
            gang = (pod["metadata"].get("labels") or {}).get(L.LABEL_GANG)
            if gang in memory.expectations:
                seen[gang] = seen.get(gang, 0) + 1
        unmet = []
        for gang, expected in list(memory.expectations.items()):
            if memory.creations.busy(gang):
                unmet.append(gang)  # its deadline counts from when the API answered its creation
            elif seen.get(gang, 0) >= expected.pods or now > expected.deadline:
                del memory.expectations[gang]
            else:
                unmet.append(gang)
        return tuple(sorted(unmet))

    @staticmethod
    def _as_handed_over(memory: Memory, pods: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """``pods`` as the writes handed to ``memory.gang_writes`` will leave them: a deleted gang's pods being
        deleted, a draining gang's head out of the router with its drain started. Until the list shows that
        itself, or the write ended ``_EXPECTATION_SECONDS`` ago (then the list is the truth)."""
        if not memory.deleting and not memory.draining:
            return pods
        shown: set[str] = set()  # gangs some listed pod does not show as the write leaves it yet
        out = []
        for pod in pods:
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            gang = labels.get(L.LABEL_GANG)
            if gang in memory.deleting and not meta.get("deletionTimestamp"):
                shown.add(gang)
                meta = {**meta, "deletionTimestamp": _iso(memory.deleting[gang])}
            annotations = meta.get("annotations") or {}
            if (gang in memory.draining and labels.get(L.LABEL_RANK, "0") == "0"
                    and L.ANNOTATION_DRAIN_STARTED not in annotations):
                shown.add(gang)
                since, reason = memory.draining[gang]
                meta = {**meta, "labels": {k: v for k, v in labels.items() if k != L.LABEL_SERVING},
                        "annotations": {**annotations, L.ANNOTATION_DRAIN_STARTED: _iso(since),
                                        L.ANNOTATION_DRAIN_REASON: reason}}
            out.append(pod if meta is pod["metadata"] else {**pod, "metadata": meta})

        def settled(gang: str, since: float) -> bool:
            return not memory.gang_writes.busy(gang) and (gang not in shown or now - since > _EXPECTATION_SECONDS)

        for gang in [g for g, since in memory.deleting.items() if settled(g, since)]:
            del memory.deleting[gang]
        for gang in [g for g, (since, _) in memory.draining.items() if settled(g, since)]:
            del memory.draining[gang]
        return out

    @staticmethod
    def _as_created(memory: Memory, unmet: tuple[str, ...], listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The pods of the gangs in ``unmet`` that ``listed`` lacks, as the API answered their creation."""
        names = {p["metadata"]["name"] for p in listed}
        return [p for gang in unmet for p in memory.expectations[gang].created if p["metadata"]["name"] not in names]

    async def _deleted_meanwhile(self, meta: Mapping[str, Any], memory: Memory, listed: list[dict[str, Any]]) -> bool:
        """Whether the deployment is gone, asked of the API when some of its pods are being deleted that this
        process did not delete. Deleting a deployment leaves its pods to the garbage collector, and their
        events can reach this process before the deployment's own: read from the status it last decided,
        the reconcile would see failed gangs and create new ones for a deployment that no longer exists."""
        memory.deleted &= {(p["metadata"].get("labels") or {}).get(L.LABEL_GANG) for p in listed}
        foreign: set[str] = {gang for p in listed if p["metadata"].get("deletionTimestamp")
                             and (gang := (p["metadata"].get("labels") or {}).get(L.LABEL_GANG, ""))
                             not in memory.deleted and gang not in memory.deleting}
        if not foreign:
            return False
        current = await self.kube.get(f"{L.GROUP}/{L.VERSION}", L.KIND, meta["namespace"], meta["name"])
        gone = current is None or current["metadata"].get("uid") != meta.get("uid")
        if not gone:
            # Asked once per gang: the deployment outlived the start of their deletion (a pod stuck Terminating
            # on a lost node, after a restart of the operator, was asked about on every reconcile).
            memory.deleted |= foreign
        return gone

    async def _freshest(self, event_body: Mapping[str, Any], memory: Memory) -> Mapping[str, Any] | None:
        """The deployment to decide from: its status as this process last wrote it (a fresh read the first
        time, or after a change of leader), and the newer spec of that and the watch event's."""
        meta = event_body["metadata"]
        latest = memory.latest
        if latest is None or latest["metadata"].get("uid") != meta.get("uid"):
            latest = await self.kube.get(f"{L.GROUP}/{L.VERSION}", L.KIND, meta["namespace"], meta["name"])
            if latest is None or latest["metadata"].get("uid") != meta.get("uid"):
                return None
            memory.latest = latest
        newer = (int(meta.get("generation", 0)), _version(meta)) > (int(latest["metadata"].get("generation", 0)),
                                                                   _version(latest["metadata"]))
        if (newer and not memory.status.pending() and _version(meta) > _version(latest["metadata"])
                and (event_body.get("status") or {}) != (latest.get("status") or {})):
            # Someone else wrote the status since ours landed (a hand edit, a backup restored): the API's copy is
            # what the next decision is compared with, so what it lacks or says wrongly is written again.
            memory.latest = dict(event_body)
            return event_body
        # The spec and metadata of whichever is newer; the status always ours.
        return {**event_body, "status": latest.get("status") or {}} if newer else latest

    def _drained(self, ctx: BuildContext, gangs: list[ObservedGang], memory: Memory, now: float) -> frozenset[str]:
        """Draining gangs whose head reported no request in flight; the heads of the others asked outside the
        reconcile (``Memory.probes``: a head that does not answer held every decision of its deployment for the
        client's timeout, on every reconcile).

        A drain has two steps. First the head loses the serving label, so the router's pod watch drops it,
        and every router is asked to take it out (asked again while the gang drains, so a router that missed
        it, down or restarted, is asked again); only after ``ROUTER_GRACE_SECONDS`` is the engine told to
        drain (it then refuses new requests, and a router that still sent some would see them fail). Asking
        again is harmless: the head's drain is idempotent, which also covers an operator restarted between
        the two steps.
        """
        port = ctx.ports.worker_http
        done = set()
        for g in gangs:
            if g.drain_started is None or g.head is None:
                continue
            if not g.head.ip or g.name in memory.drained:
                done.add(g.name)  # an IP-less head never served: nothing in flight
                continue
            self._probe(memory, f"leave {g.name}", now, functools.partial(self._leave_routers, ctx, [g]),
                        "take out of the routers")
            if now - g.drain_started >= ROUTER_GRACE_SECONDS:
                self._probe(memory, f"drain {g.name}", now, functools.partial(
                    self._ask_drain, g.name, g.head.ip, port, g.drain_started,
                    float(ctx.spec.autoscaling.drain_timeout_seconds), memory), "ask the drain of")
        return frozenset(done)

    @staticmethod
    def _probe(memory: Memory, key: str, now: float, run: Callable[[], Awaitable[bool | None]], what: str,
               again: float = _PROBE_AGAIN_SECONDS) -> None:
        """Hand one request to a gang head or the routers to ``memory.probes``, unless the last of its kind is
        still under way or younger than ``again`` seconds."""
        if memory.probes.busy(key) or now < memory.probe_again.get(key, float("-inf")):
            return
        memory.probe_again[key] = now + again
        memory.probes.submit(key, run, what)

    async def _ask_drain(self, gang: str, ip: str, port: int, started: float, drain_timeout: float,
                         memory: Memory) -> bool:
        state = await self.heads.drain_state(ip, port)
        if state is not None and state.done:
            memory.drained.add(gang)
            return True
        if state is None or state.idle:
            # The timeout as the spec says now: the gang's pods do not carry it, so editing it restarts nothing.
            # What is left of it, since the operator deletes the gang when it has passed.
            await self.heads.start_drain(ip, port, drain_timeout - (self.clock() - started))
        return False

    def _submit(self, step: CreateGang, pool: str, ctx: BuildContext, revision: str, generation: int,
                memory: Memory, own: Memory, now: float) -> None:
        """Hand one gang to the creations; until the API answers, the reconciler plans from what was built."""
        objects = gang_objects(ctx, step.replica, step.attempt, revision)
        pods = [o for o in objects if o["kind"] == "Pod"]
        gang = pods[0]["metadata"]["labels"][L.LABEL_GANG]
        built = tuple({**o, "metadata": {**o["metadata"], "creationTimestamp": _iso(now)}} for o in pods)
        memory.expectations[gang] = Expected(len(pods), now + _EXPECTATION_SECONDS, built)
        own.attempts[step.replica] = max(own.attempts.get(step.replica, 0), step.attempt)
        handed = time.monotonic()

        async def create() -> Created:
            created = await self._create(ctx, gang, objects, step, generation, revision, memory)
            if created.refusal is None and not created.failed:
                metrics.GANG_CREATE_SECONDS.observe(time.monotonic() - handed)
            return created

        memory.creations.submit(gang, pool, revision, create)

    async def _create(self, ctx: BuildContext, gang: str, objects: list[dict[str, Any]], step: CreateGang,
                      generation: int, revision: str, memory: Memory) -> Created:
        """Create one gang's objects (run by ``Creations``, outside the reconcile)."""
        ns = ctx.namespace
        pods = [o for o in objects if o["kind"] == "Pod"]
        # A gang's objects never change after creation (a change is a new revision, so a new gang): they are
        # created, not applied. A PodGroup comes first, since a gang scheduler places pods by it. The gang's
        # NetworkPolicy goes with the pods: the deployment's own policy closes every engine pod from its
        # creation (a shared object, in place before any gang), and the gang's opens Ray's ports to the gang.
        groups = [o for o in objects if o["kind"] not in ("Pod", "NetworkPolicy")]
        policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        try:
            for batch in ([groups] if groups else []) + [[*pods, *policies]]:
                # Every create of a batch ends before a failure is acted on: none may land after the clean-up.
                done = await asyncio.gather(*(self.kube.create(o, exist_ok=True) for o in batch),
                                            return_exceptions=True)
                errors = [r for r in done if isinstance(r, BaseException)]
                if errors:
                    raise next((r for r in errors if isinstance(r, ApiError) and r.code == 422), errors[0])
        except ApiError as e:
            if e.code != 422:  # the API said no for now (a quota, a webhook down): tried again later
                created = await self._creation_failed(ctx, gang, e, memory)
                if step.surge and e.code == 403 and "exceeded quota" in e.message:
                    return dataclasses.replace(created, surge_refused=revision)
                return created
            # Invalid: the same objects would be refused again. Nothing of the gang stays behind, and the
            # refusal (recorded in status) stops gang creation until the spec changes.
            memory.expectations.pop(gang, None)
            for dropped in memory.creations.drop_queued():
                memory.expectations.pop(dropped, None)
            await self._delete_gang_objects(ctx, gang, memory)
            refusal = refusal_from_api(e.message, spec_values(ctx.spec))
            log.warning("%s/%s: the API refused gang %s: %s", ns, ctx.name, gang, e)
            return Created(gang, Event("Warning", "ChildRefused", f"gang {gang}: {refusal['field']}: {e.message}"),
                           refusal={**refusal, "generation": generation, "revision": revision})
        except Exception as e:  # the API was unavailable: tried again later
            return await self._creation_failed(ctx, gang, e, memory)
        now = self.clock()
        expectation = memory.expectations.get(gang)
        if expectation is not None:
            # Planned from the API's answers from now on (a pod that existed already, created by an earlier
            # try, from what was built), until the list shows the gang or the deadline passes.
            expectation.created = tuple(
                r if isinstance(r, dict) else {**o, "metadata": {**o["metadata"], "creationTimestamp": _iso(now)}}
                for r, o in zip(done[:len(pods)], pods, strict=True))
            expectation.deadline = now + _EXPECTATION_SECONDS
        metrics.GANGS_CREATED.labels(ns, ctx.name).inc()
        log.info("%s/%s: created gang %s (replica %d, attempt %d): %s", ns, ctx.name, gang, step.replica,
                 step.attempt, step.reason)
        return Created(gang, Event("Normal", "GangCreated", f"gang {gang} for replica {step.replica}: {step.reason}"))

    async def _creation_failed(self, ctx: BuildContext, gang: str, error: Exception, memory: Memory) -> Created:
        """A gang that could not be created for now: nothing of it stays behind, nothing queued after it is
        created, and creation pauses (``Memory.create_retry_at``); its slot gets a new gang after that."""
        memory.expectations.pop(gang, None)
        for dropped in memory.creations.drop_queued():
            memory.expectations.pop(dropped, None)
        log.warning("%s/%s: could not create gang %s: %s", ctx.namespace, ctx.name, gang, error)
        try:
            await self._delete_gang_objects(ctx, gang, memory)
        except Exception as e:  # what is left is collected as an orphan, or fails as an incomplete gang
            log.warning("%s/%s: could not delete what was created of gang %s: %s", ctx.namespace, ctx.name, gang, e)
        return Created(gang, Event("Warning", "GangCreateFailed", f"gang {gang}: {error}"), failed=True)

    def _execute(self, step: DeleteGang | StartDrain, ctx: BuildContext, gangs: list[ObservedGang],
                 memory: Memory, now: float) -> Event:
        """Hand over one step of a gang that exists (or is being created); the event to post.

        Nothing here waits: a gang whose creation is under way is deleted once it ended (in the background:
        on a loaded API server a creation took seconds, and a reconcile that waited for it held every other
        decision of the deployment, and, sharing the event loop, of the others)."""
        ns = ctx.namespace
        if memory.creations.drop_queued(keep=lambda job: job.gang != step.gang):
            # Still queued: nothing of it exists, and nothing will.
            memory.expectations.pop(step.gang, None)
            log.info("%s/%s: gang %s is not created after all: %s", ns, ctx.name, step.gang, step.reason)
            return Event("Normal", "GangDeleted", f"gang {step.gang}: not created after all: {step.reason}")
        if isinstance(step, DeleteGang):
            doomed = [g for g in gangs if g.name == step.gang]

            async def delete() -> None:
                try:
                    await memory.creations.withdraw(step.gang)  # a creation under way ends first
                    await self._leave_routers(ctx, doomed)
                    await self._delete_gang_objects(ctx, step.gang, memory)
                except Exception as e:  # the API was unavailable: planned again by the next reconcile
                    memory.deleting.pop(step.gang, None)
                    log.warning("%s/%s: deleting gang %s failed: %s", ns, ctx.name, step.gang, e)

            # Outside the reconcile (``GangWrites``): planned as being deleted from now on.
            memory.deleting[step.gang] = now
            memory.draining.pop(step.gang, None)
            memory.gang_writes.submit(step.gang, delete, "delete gang")
            memory.expectations.pop(step.gang, None)  # not planned from its creates any more: it is going
            failed = step.reason.startswith("gang failed")
            if failed:
                metrics.GANG_FAILURES.labels(ns, ctx.name).inc()
            log.info("%s/%s: deleted gang %s: %s", ns, ctx.name, step.gang, step.reason)
            return Event("Warning" if failed else "Normal", "GangFailed" if failed else "GangDeleted",
                         f"gang {step.gang}: {step.reason}")
        gang = next(g for g in gangs if g.name == step.gang)
        head = gang.head
        if head is not None:
            head_name, reason = head.name, step.reason

            async def drain() -> None:
                try:
                    await memory.creations.withdraw(step.gang)  # a creation under way ends first
                    # Out of the router first: its pod discovery selects on the serving label.
                    await self.kube.merge_patch("v1", "Pod", ns, head_name, {"metadata": {
                        "labels": {L.LABEL_SERVING: None},
                        "annotations": {L.ANNOTATION_DRAIN_STARTED: _iso(now), L.ANNOTATION_DRAIN_REASON: reason}}})
                    await self._leave_routers(ctx, [gang])
                except Exception as e:  # the API was unavailable: planned again by the next reconcile
                    memory.draining.pop(step.gang, None)
                    log.warning("%s/%s: starting the drain of gang %s failed: %s", ns, ctx.name, step.gang, e)

            # Outside the reconcile (``GangWrites``): planned as draining from now on.
            memory.draining[step.gang] = (now, reason)
            memory.gang_writes.submit(step.gang, drain, "drain gang")
            # The drain's start takes the head out of the routers: the probe that asks again waits its turn.
            memory.probe_again[f"leave {step.gang}"] = now + _PROBE_AGAIN_SECONDS
        log.info("%s/%s: draining gang %s: %s", ns, ctx.name, step.gang, step.reason)
        return Event("Normal", "GangDraining", f"gang {step.gang}: {step.reason}")

    async def _gang_topology(self, scheduling: SchedulingSpec, gang_api: str, namespace: str, key: str) -> bool:
        """Whether the gang scheduler can be asked to keep each gang inside one domain of ``key`` (see
        ``BuildContext.gang_topology``); what Kueue's queues say is remembered for a minute.

        Raises PlanRefused when Kueue would place the gangs by a Topology that has no level ``key``: every
        flavor of the queue has a Topology, so Kueue chooses each gang's nodes by it alone, and the pods'
        affinity to one domain of ``key`` could then leave a gang partly placed."""
        if scheduling.gang_scheduler == "kubernetes":
            return await gang_topology_served(self.kube, gang_api, namespace, key)
        if scheduling.gang_scheduler != "kueue":
            return False
        # Kueue's pod integration gives a pod without a queue name the namespace's LocalQueue "default".
        queue = (namespace, scheduling.queue_name or "default")
        now = self.clock()
        cached = self._kueue_topology.get(queue)
        if cached is None or now - cached[0] >= _KUEUE_TOPOLOGY_SECONDS:
            cached = self._kueue_topology[queue] = (now, await kueue_topology(self.kube, *queue))
        topology = cached[1]
        if topology.tas_only and key not in topology.levels:
            raise PlanRefused("spec.scheduling.topologyKey", (
                f"{key!r} is not a level of the Kueue Topology that places every gang of queue {queue[1]!r} "
                f"(levels: {', '.join(sorted(topology.levels)) or 'none'}): name one of those levels, or leave "
                "topologyKey out; Kueue chooses each gang's nodes by its Topology alone, so an affinity to one "
                f"domain of {key!r} could leave a gang partly placed"))
        return key in topology.levels

    async def _pod_group_kinds(self) -> list[tuple[str, str]]:
        """The PodGroup kinds a gang may have: every gang scheduler's that this cluster serves, not only the
        one the spec names now, since a gang made before the spec named another keeps its own PodGroup
        until the gang goes (discovery is cached: no round trip in most reconciles)."""
        kinds = []
        for name, api in GANG_SCHEDULER_APIS.items():
            if api.resource == "podgroups" and (served := await served_gang_api(self.kube, name)):
                kinds.append((served, "PodGroup"))
        return kinds

    async def _delete_gang_objects(self, ctx: BuildContext, gang: str, memory: Memory) -> None:
        ns = ctx.namespace
        memory.deleted.add(gang)  # its pods going are this process' doing (see ``_deleted_meanwhile``)
        await asyncio.gather(*(self.kube.delete_collection(api_version, kind, ns, {L.LABEL_GANG: gang})
                               for api_version, kind in [("v1", "Pod"), *_GANG_KINDS]))
        groups = await self._pod_group_kinds()
        await asyncio.gather(*(self.kube.delete(api_version, kind, ns, gang) for api_version, kind in groups))

    async def _collect_orphans(self, ctx: BuildContext, gangs: list[ObservedGang], strays: list[dict[str, Any]],
                               unowned: list[str], memory: Memory, now: float) -> None:
        """No gang object outlives its pods: a ConfigMap, Service, NetworkPolicy or PodGroup of a gang that
        has no pod (and was not just created: its objects come before its pods) is deleted, and so is an engine
        pod of the deployment's that is in no gang (``_strays``). And a live gang's NetworkPolicy edited by hand
        is put back, and so is a gang pod's owner (``_unowned``). Run with the gang writes, outside the reconcile: a
        failure is logged, and the next check comes as usual."""
        try:
            for name in unowned:
                log.warning("%s/%s: pod %s lost the deployment as its owner; putting it back", ctx.namespace, ctx.name,
                            name)
                await self.kube.merge_patch("v1", "Pod", ctx.namespace, name,
                                            {"metadata": {"ownerReferences": [owner_reference(ctx)]}})
            for pod in strays:
                meta = pod["metadata"]
                log.warning("%s/%s: deleting pod %s, an engine pod of the deployment in no gang (its gang label "
                            "was removed)", ctx.namespace, ctx.name, meta["name"])
                await self.kube.delete("v1", "Pod", ctx.namespace, meta["name"], uid=meta.get("uid"))
            await self._serve_again(ctx, gangs, memory)
            await self._delete_orphans(ctx, gangs, memory, now)
        except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as e:
            log.warning("%s/%s: looking for what is left of deleted gangs failed: %s", ctx.namespace, ctx.name, e)

    async def _serve_again(self, ctx: BuildContext, gangs: list[ObservedGang], memory: Memory) -> None:
        """A head that lost the router's serving label by hand, not by a drain (which marks it draining in the same
        write), gets it back: without it the router never sends the gang a request, though it reports Ready."""
        for g in gangs:
            head = g.head
            if (g.serving or g.drain_started is not None or head is None or head.deleting
                    or g.name in memory.draining or g.name in memory.deleting):
                continue
            log.warning("%s/%s: the head of gang %s lost the label %s=true; putting it back", ctx.namespace, ctx.name,
                        g.name, L.LABEL_SERVING)
            await self.kube.merge_patch("v1", "Pod", ctx.namespace, head.name,
                                        {"metadata": {"labels": {L.LABEL_SERVING: "true"}}})

    async def _delete_orphans(self, ctx: BuildContext, gangs: list[ObservedGang], memory: Memory,
                              now: float) -> None:
        with_pods = {g.name for g in gangs}
        kinds = [*_GANG_KINDS, *await self._pod_group_kinds()]
        orphans: dict[str, tuple[str, str]] = {}
        # One round trip for all kinds: on a busy apiserver each list waits its turn, and a reconcile's
        # latency is the sum of its sequential round trips.
        listed = await asyncio.gather(*(self.kube.list(api_version, kind, ctx.namespace, {
            L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "engine"}) for api_version, kind in kinds))
        for (_, kind), objects in zip(kinds, listed, strict=True):
            for obj in objects:
                meta = obj["metadata"]
                gang = (meta.get("labels") or {}).get(L.LABEL_GANG)
                if (not gang or gang in with_pods or gang in memory.expectations or meta.get("deletionTimestamp")
                        or now - epoch(meta.get("creationTimestamp")) < _EXPECTATION_SECONDS):
                    continue
                orphans[gang] = (kind, meta["name"])
        policies = next(objects for (_, kind), objects in zip(kinds, listed, strict=True) if kind == "NetworkPolicy")
        await self._keep_gang_policies(ctx, gangs, policies, memory, now)
        for gang, (kind, obj_name) in sorted(orphans.items()):
            log.info("%s/%s: deleting what is left of gang %s (a %s %s with no pods)", ctx.namespace, ctx.name,
                     gang, kind, obj_name)
            await self._delete_gang_objects(ctx, gang, memory)

    async def _keep_gang_policies(self, ctx: BuildContext, gangs: list[ObservedGang],
                                  policies: list[dict[str, Any]], memory: Memory, now: float) -> None:
        """Each live gang of the current revision keeps its NetworkPolicy as built (``_KEPT_EXACTLY``): one edited
        by hand is put back, one deleted by hand is created again (without it the router cannot reach the gang,
        since the deployment's own policy closes every engine pod, though the gang reports Ready)."""
        current = {pool.role or "": (pool.ctx, revision_of(pool.ctx), template_of(pool.ctx)) for pool in pools_of(ctx)}
        by_name = {p["metadata"]["name"]: p for p in policies}
        edited: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for g in gangs:
            pool_ctx, revision, template = current.get(g.pool, (None, "", ""))
            if pool_ctx is None or g.revision != revision:
                continue
            live = by_name.get(g.name)
            built = gang_network_policy(pool_ctx, g.name, g.replica, g.attempt, g.revision, template)
            if live is not None:
                meta = live["metadata"]
                if (not meta.get("deletionTimestamp") and (meta.get("labels") or {}).get(L.LABEL_TEMPLATE) == template
                        and live.get("spec") != built["spec"]):
                    edited.append((live, built))
            elif not (g.name in memory.expectations or g.name in memory.deleting or any(p.deleting for p in g.pods)
                      or now - g.created < _EXPECTATION_SECONDS):
                log.warning("%s/%s: the NetworkPolicy of gang %s is gone; creating it again", ctx.namespace,
                            ctx.name, g.name)
                await self.kube.create(built, exist_ok=True)
        await self._restore(ctx, edited)

    def _shared(self, ctx: BuildContext, memory: Memory, now: float) -> tuple[dict[str, str] | None, str | None]:
        """The shared objects: their apply handed to ``memory.shared`` when due; the API's refusal of them, and
        what holds gangs back until they are in place."""
        desired = {(o["kind"], o["metadata"]["name"]): _stamp(o) for o in shared_objects(ctx)}
        wanted = json.dumps(sorted((kind, obj_name, o["metadata"]["annotations"][L.ANNOTATION_SPEC_HASH])
                                   for (kind, obj_name), o in desired.items()))
        if (refusal := memory.shared.take_refusal(wanted)) is not None:
            return refusal, None
        if memory.shared.due(wanted, now):
            memory.shared.submit(wanted, now, lambda: self._apply_shared(ctx, desired, memory.shared), self.clock)
        return None, memory.shared.gate(wanted, now)

    async def _apply_shared(self, ctx: BuildContext, desired: Mapping[tuple[str, str], dict[str, Any]],
                            shared: SharedWrites) -> dict[str, str] | None:
        """Apply the shared objects that are missing or differ from ``desired`` (by kind and name), and delete
        those the spec no longer has; the refusal when the API refused one (422). The objects gangs do not wait
        for (``_SHARED_UNGATED``) go last, and what the API says of them is only reported
        (``SharedWrites.ungated_error``): a disruption budget that a policy engine or a narrower RBAC refuses must
        not keep the deployment from serving."""
        # Every kind listed at once (one round trip, not six); the writes below keep their order. The gangs'
        # own objects (a hundred policies at a hundred gangs) are left out by the selector: decoding them on
        # every check was a large part of the operator's CPU at scale.
        listed = await asyncio.gather(*(self.kube.list(api_version, kind, ctx.namespace,
                                                       {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_GANG: None})
                                        for api_version, kind in _SHARED_KINDS))
        stale: list[tuple[str, str, dict[str, Any]]] = []
        changed: list[dict[str, Any]] = []
        missing: list[dict[str, Any]] = []
        edited: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for (api_version, kind), objects in zip(_SHARED_KINDS, listed, strict=True):
            existing = {o["metadata"]["name"]: o for o in objects
                if o["metadata"].get("labels", {}).get(L.LABEL_COMPONENT) in ("router", "engine")
                and not o["metadata"].get("labels", {}).get(L.LABEL_GANG)}
            for (k, obj_name), obj in desired.items():
                have = (existing.get(obj_name, {}).get("metadata") or {}).get("annotations") or {}
                if k != kind:
                    continue
                if have.get(L.ANNOTATION_SPEC_HASH) != obj["metadata"]["annotations"][L.ANNOTATION_SPEC_HASH]:
                    changed.append(obj)
                    if obj_name not in existing:
                        missing.append(obj)
                elif _edited(existing[obj_name], obj):
                    edited.append((existing[obj_name], obj))
            # e.g. the router after router.enabled turned false
            stale += [(api_version, kind, o) for n, o in existing.items() if (kind, n) not in desired]
        await self._none_taken(ctx, missing)
        # Two rounds: the router's pods need its ServiceAccount, and its RoleBinding needs its Role (the API
        # checks that the operator holds what a binding grants by reading the Role, and refuses the binding
        # while the Role is not there); the rest needs nothing of the others.
        ungated = [o for o in changed if o["kind"] in _SHARED_UNGATED]
        changed = [o for o in changed if o["kind"] not in _SHARED_UNGATED]
        later = [o for o in changed if o["kind"] in _SHARED_SECOND]
        for batch in ([o for o in changed if o["kind"] not in _SHARED_SECOND], later):
            done = await asyncio.gather(*(self.kube.apply(o) for o in batch), return_exceptions=True)
            for obj, outcome in zip(batch, done, strict=True):
                if isinstance(outcome, ApiError) and outcome.code == 422:
                    log.warning("%s/%s: the API refused %s %s: %s", ctx.namespace, ctx.name, obj["kind"],
                                obj["metadata"]["name"], outcome)
                    return refusal_from_api(outcome.message, spec_values(ctx.spec))
            if errors := [e for e in done if isinstance(e, BaseException)]:
                raise errors[0]
        done = await asyncio.gather(*(self.kube.apply(o) for o in ungated), return_exceptions=True)
        failed = [f"{o['kind']} {o['metadata']['name']}: {e}" for o, e in zip(ungated, done, strict=True)
                  if isinstance(e, Exception)]
        shared.ungated_error = "; ".join(failed)
        if failed:
            log.warning("%s/%s: could not apply %s", ctx.namespace, ctx.name, shared.ungated_error)
        await self._restore(ctx, edited)
        await asyncio.gather(*(self.kube.delete(api_version, kind, ctx.namespace, o["metadata"]["name"],
                                                uid=o["metadata"]["uid"]) for api_version, kind, o in stale))
        return None

    async def _restore(self, ctx: BuildContext, edited: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Put back objects edited by hand (``_edited``). An apply keeps fields another manager added (an
        ``ingress: [{}]`` that opens every port, an environment variable), so this is a merge patch that replaces
        what was changed: for ``_KEPT_EXACTLY`` kinds it also removes what the spec lacks; for the others it
        replaces the lists that were changed and leaves the API's defaults alone."""
        for live, desired in edited:
            meta = live["metadata"]
            log.warning("%s/%s: %s %s was edited by hand; restoring it", ctx.namespace, ctx.name,
                        desired["kind"], meta["name"])  # the items of a list carry no kind
            exact = desired["kind"] in _KEPT_EXACTLY
            patch = {key: (_merge_patch_to if exact else _derive_patch)(live.get(key) or {}, value)
                     if isinstance(value, Mapping) and isinstance(live.get(key), Mapping) else value
                     for key, value in desired.items() if key not in _NOT_CONTENT and value is not None}
            if not _owned(live, desired):
                # The owners as built and any other the object has since been given (a merge patch replaces lists).
                mine = desired["metadata"]["ownerReferences"]
                others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") not in {m["uid"] for m in mine}]
                patch["metadata"] = {"ownerReferences": [*mine, *others]}
            await self.kube.merge_patch(desired["apiVersion"], desired["kind"], ctx.namespace, meta["name"], patch)

    async def _none_taken(self, ctx: BuildContext, missing: list[dict[str, Any]]) -> None:
        """Raise when an object the deployment is about to create already exists and is not its own: an apply
        would take it over (a team's own Deployment named ``<name>-router``, say). The apply fails, status says
        which object is in the way, and it is tried again with back-off, until it is renamed or deleted."""
        found = await asyncio.gather(*(self.kube.get(o["apiVersion"], o["kind"], ctx.namespace,
                                                     o["metadata"]["name"]) for o in missing))
        for obj, there in zip(missing, found, strict=True):
            if there is None or any(ref.get("uid") == ctx.uid
                                    for ref in there["metadata"].get("ownerReferences") or []):
                continue
            owners = ", ".join(f"{r.get('kind')} {r.get('name')}" for r in there["metadata"].get("ownerReferences")
                               or []) or "no owner"
            raise ObjectTaken(f"{obj['kind']} {obj['metadata']['name']} already exists in namespace {ctx.namespace} "
                              f"and is not this deployment's ({owners}): the operator does not take it over; "
                              "rename or delete it, or give this deployment another name")

    async def _write_status(self, namespace: str, name: str, old: Mapping[str, Any], new: dict[str, Any],
                            memory: Memory) -> bool:
        """Decide ``new`` as the deployment's status (False when ``old`` already says it all): the next reconcile
        decides from it, and ``memory.status`` writes it."""
        if all(old.get(k) == v for k, v in new.items()):
            return False
        if memory.latest is not None:
            memory.latest = {**memory.latest, "status": _merge_patched(memory.latest.get("status") or {}, new)}

        async def write() -> None:
            try:
                written: dict[str, Any] = await self.kube.merge_patch(
                    f"{L.GROUP}/{L.VERSION}", L.KIND, namespace, name, {"status": new}, subresource="status")
            except ApiError as e:
                if e.code == 404:
                    memory.forget_status()  # gone: nothing to write, and a new one of that name is another
                    return
                raise
            if not memory.status.pending():
                # The API's answer is the deployment with our status in it: the next reconcile decides from it,
                # whatever older body a watch event still carries.
                memory.latest = written

        memory.status.submit(write)
        return True


def _edited(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``live`` no longer holds what ``desired`` says: exactly for ``_KEPT_EXACTLY`` kinds, else every
    field ``desired`` sets (``_derives``); and whether it lost the deployment as its owner (deleting the deployment
    would then leave it behind)."""
    if not _owned(live, desired):
        return True
    if desired["kind"] in _KEPT_EXACTLY:
        return any(live.get(key) != desired.get(key) for key in {*live, *desired} - _NOT_CONTENT)
    return not all(_derives(value, live.get(key)) for key, value in desired.items() if key not in _NOT_CONTENT)


def _owned(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``live`` still names the owner ``desired`` names (the deployment, as its controller)."""
    have = {ref.get("uid") for ref in (live.get("metadata") or {}).get("ownerReferences") or []}
    return all(ref.get("uid") in have for ref in (desired.get("metadata") or {}).get("ownerReferences") or [])


def _derives(desired: Any, live: Any) -> bool:
    """Whether ``live`` is ``desired`` with defaults filled in, as client-go's ``Semantic.DeepDerivative``: a
    field ``desired`` leaves unset (None, or an empty map) may hold anything; a map's fields derive one by one; a
    list keeps its length (an element added by hand is an edit) and each element derives; a value is equal. A
    selector is equal as a whole: a label added to it selects other pods (or none)."""
    if desired is None:
        return True
    if isinstance(desired, Mapping):
        return not desired or (isinstance(live, Mapping) and all(_holds(k, v, live.get(k)) for k, v in desired.items()))
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(_derives(d, have) for d, have in zip(desired, live, strict=True)))
    return bool(desired == live)


def _holds(key: str, desired: Any, live: Any) -> bool:
    """Whether the field ``key`` of ``live`` derives from ``desired``'s (``_derives``)."""
    return desired is None or desired == live if key in _SELECTORS else _derives(desired, live)


def _derive_patch(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that makes ``live`` derive from ``desired`` again (``_derives``), touching nothing else: a
    changed list is replaced whole (the API defaults its items again)."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        have = live.get(key)
        if _holds(key, value, have):
            continue
        if isinstance(value, Mapping) and isinstance(have, Mapping):
            patch[key] = (_merge_patch_to if key in _SELECTORS else _derive_patch)(have, value)
        else:
            patch[key] = value
    return patch


def _drain_clock(gangs: list[ObservedGang], memory: Memory, now: float) -> list[ObservedGang]:
    """Each draining gang with its drain's start as far back as the time it has drained says. The start is the
    head's annotation (wall clock, which survives a restart of the operator); the time drained is also counted
    here from reconcile to reconcile, forward only. A clock stepped back an hour puts the annotation an hour in
    the future, and the drain timeout would wait that hour more; with the count it passes on time."""
    kept: dict[str, tuple[float, float]] = {}
    out = []
    for g in gangs:
        if g.drain_started is None:
            out.append(g)
            continue
        last, drained = memory.drain_clock.get(g.name, (now, max(0.0, now - g.drain_started)))
        drained += max(0.0, now - last)
        kept[g.name] = (now, drained)
        out.append(dataclasses.replace(g, drain_started=min(g.drain_started, now - drained)))
    memory.drain_clock = kept
    return out


def _strays(ctx: BuildContext, pods: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Engine pods this deployment made that are in no gang: a gang label removed by hand leaves a pod on its
    GPUs that nothing manages (its gang, a rank short, was replaced)."""
    out = []
    for pod in pods:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        if (labels.get(L.LABEL_COMPONENT) == "engine" and not labels.get(L.LABEL_GANG)
                and not meta.get("deletionTimestamp")
                and any(ref.get("uid") == ctx.uid for ref in meta.get("ownerReferences") or [])
                and now - epoch(meta.get("creationTimestamp")) >= _EXPECTATION_SECONDS):
            out.append(pod)
    return out


def _unowned(ctx: BuildContext, pods: list[dict[str, Any]]) -> list[str]:
    """Gang pods of the deployment that no longer name it as their owner (edited, or restored from a backup without
    it): deleting the deployment would leave them on their GPUs."""
    return [p["metadata"]["name"] for p in pods
            if (p["metadata"].get("labels") or {}).get(L.LABEL_GANG) and not p["metadata"].get("deletionTimestamp")
            and not any(ref.get("uid") == ctx.uid for ref in p["metadata"].get("ownerReferences") or [])]


def _merge_patch_to(live: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``live`` into ``desired``: what the latter lacks is nulled."""
    patch: dict[str, Any] = {k: None for k in live if k not in desired}
    for key, value in desired.items():
        have = live.get(key)
        if isinstance(value, Mapping) and isinstance(have, Mapping):
            if inner := _merge_patch_to(have, value):
                patch[key] = inner
        elif have != value:
            patch[key] = value
    return patch


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"


def _merge_patched(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``target`` with a JSON merge patch (RFC 7386) applied, as the API server applies one."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_patched(out[key], value)
        else:
            out[key] = value
    return out


def _version(meta: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number, to tell which of two copies is newer (0 when it is not one)."""
    try:
        return int(meta.get("resourceVersion") or 0)
    except ValueError:
        return 0


def _weights_shown(weights: WeightsState, memory: Memory, now: float) -> WeightsState:
    """The weights as status shows them: a change of progress alone waits ``PROGRESS_STATUS_SECONDS``."""
    last = memory.weights_shown
    if (last is not None and last.progress is not None and weights.progress is not None
            and (last.ready, last.reason, last.cache_key) == (weights.ready, weights.reason, weights.cache_key)
            and now - memory.weights_shown_at < PROGRESS_STATUS_SECONDS):
        return last
    memory.weights_shown, memory.weights_shown_at = weights, now
    return weights


def _pod_template(spec: DeploymentSpec, key: str) -> tuple[tuple[str, str], ...]:
    values: Mapping[str, str] = getattr(spec.pod_template, key) or {}
    return tuple(sorted(values.items()))
