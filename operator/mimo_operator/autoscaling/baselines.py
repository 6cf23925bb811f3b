"""The autoscalers ours is measured against, as the simulator runs them.

* `StaticPeak`: as many gangs as the trace's peak needs, all the time (what most multi-node
  deployments do today).
* `HpaUtilisation`: the Horizontal Pod Autoscaler's algorithm on a per-gang utilisation metric (KV
  usage or running requests): desired = ceil(current × metric / target), nothing within the 10 %
  tolerance, gangs still starting counted as pods without metrics (0 on the way up, the target on the
  way down), the highest recommendation of the last 5 minutes on the way down, and its default
  scale-up limit (double, or +4, per period).
* `KedaQueue`: a KEDA ScaledObject on the summed queue length with an AverageValue target per gang:
  desired = ceil(queue / target) through the same HPA machinery, plus KEDA's cooldown before scaling
  to zero.
* `Oracle`: clairvoyant. It knows every future request and the start-up time, and starts each gang
  exactly one start-up time before the modelled capacity needs it; it keeps a gang through a lull
  shorter than a start-up (restarting would cost more GPU time than idling) and releases it otherwise.

All return the policy's `Decision`, so the simulator treats every autoscaler alike. The baselines
keep the state their real counterparts keep (recommendation history, last poll), in the object.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from mimo_operator.autoscaling.policy import (
    Action,
    Decision,
    GangPhase,
    Observation,
    PolicyConfig,
    Signals,
    decide,
)
from mimo_operator.autoscaling.simulator import (
    Autoscaler,
    FleetConfig,
    PolicyResult,
    request_work_seconds,
    simulate,
    trace_blocks,
)
from mimo_operator.autoscaling.trace import Trace, reshape

__all__ = [
    "POLICY_NAMES",
    "Comparison",
    "HpaUtilisation",
    "KedaQueue",
    "MimoPolicy",
    "Oracle",
    "StaticPeak",
    "burst_requirement",
    "copies_for_peak",
    "demand_per_bin",
    "oracle_schedule",
    "prefix_hits",
]


def _counts(observation: Observation) -> tuple[int, int, int]:
    ready = sum(1 for g in observation.gangs if g.phase is GangPhase.READY)
    starting = sum(1 for g in observation.gangs if g.phase is GangPhase.STARTING)
    draining = sum(1 for g in observation.gangs if g.phase is GangPhase.DRAINING)
    return ready, starting, draining


def _decision(observation: Observation, desired: int, reason: str) -> Decision:
    ready, starting, draining = _counts(observation)
    current = ready + starting
    action = Action.HOLD
    if desired > current:
        action = Action.SCALE_UP
    elif desired < current:
        action = Action.SCALE_DOWN
    return Decision(desired, action, reason, Signals(ready=ready, starting=starting, draining=draining))


@dataclass
class MimoPolicy:
    """Our policy, as an autoscaler object (the policy itself is the pure `decide`)."""

    config: PolicyConfig
    name: str = "mimo"

    def decide(self, observation: Observation) -> Decision:
        return decide(observation, self.config)


@dataclass
class StaticPeak:
    replicas: int
    name: str = "static-peak"

    def decide(self, observation: Observation) -> Decision:
        return _decision(observation, self.replicas, f"static: {self.replicas} gangs for the peak")


@dataclass
class _HpaCore:
    """The HPA controller's replica arithmetic, shared by the HPA and KEDA baselines."""

    min_replicas: int
    max_replicas: int
    tolerance: float = 0.1
    sync_period_seconds: float = 15.0
    downscale_stabilisation_seconds: float = 300.0
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    last_sync: float | None = None
    last_desired: int | None = None

    def due(self, now: float) -> bool:
        return self.last_sync is None or now - self.last_sync >= self.sync_period_seconds - 1e-9

    def stabilise(self, now: float, current: int, recommendation: int) -> int:
        if self.last_sync is None:
            # The controller was running before the trace starts: its window holds the current scale.
            self.recommendations.append((now, current))
        self.last_sync = now
        recommendation = max(self.min_replicas, min(self.max_replicas, recommendation))
        self.recommendations.append((now, recommendation))
        while self.recommendations and self.recommendations[0][0] < now - self.downscale_stabilisation_seconds:
            self.recommendations.popleft()
        desired = current
        if recommendation > current:
            # Scale-up stabilisation is 0 s by default; the default policy allows doubling or +4.
            desired = min(recommendation, max(2 * current, current + 4))
        else:
            highest = max(r for _, r in self.recommendations)
            desired = min(current, highest)
        desired = max(self.min_replicas, min(self.max_replicas, desired))
        self.last_desired = desired
        return desired


@dataclass
class HpaUtilisation:
    """HPA on a Pods metric: `token_usage` (target a fraction) or `running_requests` (a count)."""

    min_replicas: int
    max_replicas: int
    metric: str = "token_usage"
    target: float = 0.7
    name: str = "hpa-utilisation"
    core: _HpaCore = field(init=False)

    def __post_init__(self) -> None:
        if self.metric not in ("token_usage", "running_requests"):
            raise ValueError(f"unsupported HPA metric {self.metric!r}")
        self.core = _HpaCore(self.min_replicas, self.max_replicas)

    def decide(self, observation: Observation) -> Decision:
        ready, starting, _ = _counts(observation)
        current = ready + starting
        core = self.core
        if not core.due(observation.now):
            return _decision(observation, core.last_desired or current, "between HPA sync periods")
        values = [
            getattr(observation.samples[g.name][-1], self.metric)
            for g in observation.gangs
            if g.phase is GangPhase.READY and observation.samples.get(g.name)
        ]
        if not values:
            desired = core.stabilise(observation.now, current, current)
            return _decision(observation, desired, "no metrics: HPA keeps the current scale")
        ratio = sum(values) / len(values) / self.target
        missing = current - len(values)
        if missing > 0:
            # Pods without metrics: 0 when scaling up, the target when scaling down.
            fill = 0.0 if ratio > 1.0 else self.target
            ratio = (sum(values) + missing * fill) / (current * self.target)
        recommendation = current if abs(ratio - 1.0) <= core.tolerance else math.ceil(ratio * current)
        desired = core.stabilise(observation.now, current, recommendation)
        return _decision(observation, desired, f"{self.metric} at {ratio:.2f} of target {self.target:g}: {desired}")


@dataclass
class KedaQueue:
    """KEDA ScaledObject, Prometheus trigger `sum(sglang:num_queue_reqs)`, metricType AverageValue."""

    min_replicas: int
    max_replicas: int
    target_queue_per_replica: float = 5.0
    cooldown_seconds: float = 300.0  # KEDA's cooldownPeriod: only for the last replica → 0
    name: str = "keda-queue"
    core: _HpaCore = field(init=False)
    last_active: float | None = None

    def __post_init__(self) -> None:
        self.core = _HpaCore(max(1, self.min_replicas), self.max_replicas)

    def decide(self, observation: Observation) -> Decision:
        ready, starting, _ = _counts(observation)
        current = ready + starting
        now = observation.now
        queue = sum(
            observation.samples[g.name][-1].queue_requests
            for g in observation.gangs
            if g.phase is GangPhase.READY and observation.samples.get(g.name)
        )
        queue += observation.pending_requests or 0
        if queue > 0 or self.last_active is None:
            self.last_active = now
        if current == 0:
            if queue > 0:
                return _decision(observation, max(1, self.min_replicas), "KEDA activation from zero")
            return _decision(observation, 0, "KEDA: inactive")
        core = self.core
        if not core.due(now):
            return _decision(observation, core.last_desired or current, "between HPA sync periods")
        ratio = queue / (self.target_queue_per_replica * current)
        recommendation = (
            current if abs(ratio - 1.0) <= core.tolerance else math.ceil(queue / self.target_queue_per_replica)
        )
        desired = core.stabilise(now, current, recommendation)
        if self.min_replicas == 0 and queue == 0 and now - self.last_active >= self.cooldown_seconds:
            desired = 0
        return _decision(
            observation, desired, f"queue {queue:g} over target {self.target_queue_per_replica:g}/gang: {desired}"
        )


def prefix_hits(trace: Trace, page_size: int) -> list[int]:
    """Prompt tokens of each request that one unbounded prefix cache, warmed by every earlier request,
    would supply (whole pages, at least one token computed): what a clairvoyant fleet saves by caching."""
    seen: set[int] = set()
    hits: list[int] = []
    for request, keys in zip(trace.requests, trace_blocks(trace, page_size), strict=True):
        if not keys:
            hits.append(0)
            continue
        usable = min(len(keys), (request.context_tokens - 1) // page_size)
        depth = 0
        while depth < usable and keys[depth] in seen:
            depth += 1
        hits.append(depth * page_size)
        seen.update(keys)
    return hits


def demand_per_bin(
    trace: Trace, work: Callable[[int, int], float], bin_seconds: float, *, page_size: int = 0
) -> list[float]:
    """Replica-seconds of work arriving in each bin, per second of the bin (1.0 = one busy replica).

    With a `page_size`, prompts that share prefixes (`segments`) are priced without their `prefix_hits`.
    """
    bins = max(1, math.ceil(trace.span_seconds / bin_seconds))
    load = [0.0] * bins
    hits = prefix_hits(trace, page_size) if page_size > 0 else [0] * len(trace.requests)
    for request, cached in zip(trace.requests, hits, strict=True):
        index = min(bins - 1, int(request.arrival // bin_seconds))
        load[index] += work(request.context_tokens - cached, request.generated_tokens)
    return [value / bin_seconds for value in load]


def burst_requirement(
    demand: list[float], *, bin_seconds: float, slo_seconds: float, longest_burst_seconds: float
) -> list[float]:
    """Replicas' worth of capacity each bin needs so that no burst misses the SLO (a fluid bound).

    Work W arriving over any stretch of τ seconds is done in time only if the capacity serving it
    is at least W / (τ + SLO): the last request of the stretch may wait at most the SLO. Every bin
    needs the largest such figure over the stretches (up to `longest_burst_seconds`) that contain it.
    """
    n = len(demand)
    longest = max(1, round(longest_burst_seconds / bin_seconds))
    need = [0.0] * n
    for first in range(n):
        if demand[first] <= 0.0:
            continue  # a stretch starting in an empty bin is never the binding one
        last = min(n, first + longest)
        work = 0.0
        figures = []
        for end in range(first, last):
            work += demand[end] * bin_seconds
            figures.append(work / ((end - first + 1) * bin_seconds + slo_seconds))
        # The bins of a stretch need at least its figure: a suffix maximum gives, for each bin,
        # the largest figure of the stretches from `first` that cover it.
        best = 0.0
        for offset in range(len(figures) - 1, -1, -1):
            best = max(best, figures[offset])
            if best > need[first + offset]:
                need[first + offset] = best
    return need


def oracle_schedule(
    need: list[float],
    *,
    bin_seconds: float,
    startup_seconds: float,
    headroom: float,
    min_replicas: int,
    max_replicas: int,
) -> tuple[list[float], list[int]]:
    """The oracle's desired gangs (ready + starting) as a step function: (times, counts).

    Gang k (k = 1, 2, …) is needed in every bin whose requirement needs k gangs, each gang used up
    to `headroom` (requests are whole and the router is not a perfect balancer). Lulls shorter than a
    start-up are bridged (idling is cheaper than restarting); each remaining stretch starts one
    start-up earlier.
    """
    needed = [max(min_replicas, min(max_replicas, math.ceil(d / headroom - 1e-9))) for d in need]
    top = max(needed, default=0)
    span = len(needed) * bin_seconds
    changes: dict[float, int] = {}
    for k in range(1, top + 1):
        stretches: list[list[float]] = []
        for index, n in enumerate(needed):
            if n < k:
                continue
            begin, end = index * bin_seconds, (index + 1) * bin_seconds
            if stretches and begin - stretches[-1][1] <= startup_seconds:
                stretches[-1][1] = end
            else:
                stretches.append([begin, end])
        for begin, end in stretches:
            start = max(0.0, begin - startup_seconds)
            changes[start] = changes.get(start, 0) + 1
            if end < span:
                changes[end] = changes.get(end, 0) - 1
    times = sorted(changes)
    counts: list[int] = []
    level = 0
    for at in times:
        level += changes[at]
        counts.append(level)
    if not times or times[0] > 0:
        times.insert(0, 0.0)
        counts.insert(0, 0)
    return times, counts


@dataclass
class Oracle:
    times: list[float]
    counts: list[int]
    lookahead_seconds: float = 15.0  # one decision interval: never act late between two ticks
    name: str = "oracle"

    def at(self, moment: float) -> int:
        index = bisect.bisect_right(self.times, moment) - 1
        return self.counts[max(index, 0)]

    def decide(self, observation: Observation) -> Decision:
        now = observation.now
        # The highest need in the coming interval: a change between two ticks is made at the first.
        end = now + self.lookahead_seconds
        lo = bisect.bisect_right(self.times, now)
        hi = bisect.bisect_left(self.times, end)
        desired = max([self.at(now), *self.counts[lo:hi]])
        return _decision(observation, desired, f"clairvoyant: {desired} gangs")


POLICY_NAMES: tuple[str, ...] = ("mimo", "static-peak", "hpa-utilisation", "keda-queue", "oracle")


@dataclass(frozen=True)
class Comparison:
    """Everything that makes one run of every autoscaler comparable: the same fleet and trace."""

    fleet: FleetConfig
    policy: PolicyConfig
    hpa_metric: str = "token_usage"
    hpa_target: float = 0.8
    keda_queue_target: float = 4.0
    oracle_bin_seconds: float = 5.0
    oracle_headroom: float = 0.9  # the oracle fills a gang to this share of its modelled capacity
    oracle_longest_burst_seconds: float = 300.0

    def oracle(self, trace: Trace) -> Oracle:
        work = request_work_seconds(self.policy.capacity)
        need = burst_requirement(
            demand_per_bin(trace, work, self.oracle_bin_seconds, page_size=self._cache_page_size()),
            bin_seconds=self.oracle_bin_seconds,
            slo_seconds=self.fleet.ttft_slo_seconds,
            longest_burst_seconds=self.oracle_longest_burst_seconds,
        )
        times, counts = oracle_schedule(
            need,
            bin_seconds=self.oracle_bin_seconds,
            startup_seconds=self.fleet.startup_seconds,
            headroom=self.oracle_headroom,
            min_replicas=self.policy.min_replicas,
            max_replicas=self.policy.max_replicas,
        )
        return Oracle(times, counts, lookahead_seconds=self.fleet.decision_interval_seconds)

    def _cache_page_size(self) -> int:
        """The oracle counts prefix hits where the simulated fleet caches (0: it does not)."""
        return self.fleet.performance.page_size if self.fleet.prefix_cache else 0

    def autoscalers(self, trace: Trace, names: Sequence[str] = POLICY_NAMES) -> list[tuple[Autoscaler, int]]:
        """Each named autoscaler with the gangs it starts with (ready at t = 0).

        The fleet was running before the trace begins: the reactive policies start where the oracle
        starts (what the first minutes need); static-peak starts, and stays, at the oracle's peak.
        """
        unknown = [n for n in names if n not in POLICY_NAMES]
        if unknown:
            raise ValueError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICY_NAMES)}")
        config = self.policy
        oracle = self.oracle(trace)
        peak = max(oracle.counts)
        start = max(config.min_replicas, min(config.max_replicas, oracle.at(0.0)))
        made: dict[str, tuple[Autoscaler, int]] = {
            "mimo": (MimoPolicy(config), start),
            "static-peak": (StaticPeak(peak), peak),
            "hpa-utilisation": (
                HpaUtilisation(config.min_replicas, config.max_replicas, self.hpa_metric, self.hpa_target),
                start,
            ),
            "keda-queue": (KedaQueue(config.min_replicas, config.max_replicas, self.keda_queue_target), start),
            "oracle": (oracle, oracle.at(0.0)),
        }
        return [made[name] for name in names]

    def run(self, trace: Trace, names: Sequence[str] = POLICY_NAMES) -> dict[str, PolicyResult]:
        results: dict[str, PolicyResult] = {}
        for autoscaler, initial in self.autoscalers(trace, names):
            fleet = replace(self.fleet, initial_replicas=initial)
            results[autoscaler.name] = simulate(trace, fleet, autoscaler)
        return results


def copies_for_peak(
    trace: Trace,
    comparison: Comparison,
    *,
    peak_replicas: int,
    speedup: float,
    copy_offset_seconds: float,
    most: int = 512,
) -> int:
    """The number of copies of `trace` whose load needs about `peak_replicas` gangs at its peak.

    "Needs" is the oracle's requirement (bursts meeting the TTFT SLO at the oracle's headroom), so
    that the fleet in a benchmark is sized by the same yardstick for every trace.
    """

    def peak(copies: int) -> int:
        shaped = reshape(trace, speedup=speedup, copies=copies, copy_offset_seconds=copy_offset_seconds)
        return max(comparison.oracle(shaped).counts)

    low, high = 1, 1
    while peak(high) < peak_replicas and high < most:
        low, high = high, min(most, high * 2)
    while low < high:
        middle = (low + high) // 2
        if peak(middle) >= peak_replicas:
            high = middle
        else:
            low = middle + 1
    return high
