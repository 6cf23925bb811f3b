"""The autoscaling policy: how many gangs a deployment should run, from what its gangs report.

Pure: one call takes everything it needs (the recent metric samples of every gang, which gangs are
starting, ready or draining, the configuration and the time) and returns a `Decision` with the desired
number of gangs, the reason in words and the signal values it acted on. It keeps no state, reads no
clock and does no I/O, so the operator's loop, `mimoctl simulate autoscaling` and the unit tests run the
same code.

The unit of scaling is a whole gang (one replica, several 8-GPU nodes). Every signal is turned into
"replicas' worth of load at the target", so the KV-cache pool, the running-request limit and the
compute (prefill and decode time from the plan's performance model) can be compared and added:

* utilisation: served prompt and generated tokens per second over the replica's modelled throughput;
* KV cache: `sglang:token_usage` (the fuller of the full-attention and sliding-window pools);
* running requests against the replica's running-request limit;
* queue growth: requests piling up in the queue mean demand beyond what the gangs serve; the growth
  rate (not the backlog) is added, so a backlog that waits for gangs still loading is not counted again
  on every tick;
* TTFT p95 above the SLO: asks for one more gang when nothing is on its way.

Gangs still loading count as capacity on its way. Scale-up is immediate on the stable window, and a
short panic window catches bursts of at least `panic_threshold` times the ready capacity. Scale-down
waits until the peak load over the whole stabilisation window fits in one gang fewer with a margin,
then removes one gang (a starting one first, else the least-loaded ready one to drain), and never
while another gang is still draining.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Action",
    "Decision",
    "Gang",
    "GangPhase",
    "MetricSample",
    "Observation",
    "PolicyConfig",
    "ReplicaCapacity",
    "Signals",
    "decide",
]


class GangPhase(enum.Enum):
    """Where a gang is in its life, as the operator sees it."""

    STARTING = "Starting"  # created, pods scheduling or the engine loading; serves nothing yet
    READY = "Ready"  # behind the router, serving
    DRAINING = "Draining"  # out of the router, finishing its in-flight requests


class Action(enum.Enum):
    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    HOLD = "Hold"
    NO_DATA = "NoData"  # a ready gang has no fresh metrics: nothing is changed on a guess


@dataclass(frozen=True)
class Gang:
    name: str
    phase: GangPhase
    since: float  # when the gang entered this phase, on the clock of `Observation.now`


@dataclass(frozen=True)
class MetricSample:
    """One scrape of one gang's head: the SGLang `/metrics` values the policy reads.

    Gauges are as scraped; with DP attention the loop sums queue and running requests over the
    recording ranks and takes the largest token usage. Counters are cumulative (a restart resets them;
    a negative step is read as "unknown").
    """

    at: float
    token_usage: float  # sglang:token_usage, 0..1: the fuller of the full and SWA KV pools
    queue_requests: float  # sglang:num_queue_reqs
    running_requests: float  # sglang:num_running_reqs
    ttft_p95_seconds: float | None = None  # from sglang:time_to_first_token_seconds, since the last scrape
    prompt_tokens_total: float | None = None  # sglang:prompt_tokens_total
    generation_tokens_total: float | None = None  # sglang:generation_tokens_total
    requests_total: float | None = None  # sglang:num_requests_total (finished requests)


@dataclass(frozen=True)
class ReplicaCapacity:
    """What one replica can serve, from the plan's performance model.

    `decode_tokens_per_second` is the aggregate decode throughput at the concurrency the replica is
    meant to run at (its ITL budget or its running-request limit), not at batch 1.
    """

    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    max_running_requests: int


@dataclass(frozen=True)
class PolicyConfig:
    capacity: ReplicaCapacity
    min_replicas: int = 1
    max_replicas: int = 4
    # Targets: the share of a replica's capacity the policy aims to use. Each signal has its own.
    target_utilisation: float = 0.7  # of the modelled prefill + decode throughput
    target_token_usage: float = 0.8  # of the fuller KV pool
    target_running_fraction: float = 0.8  # of max_running_requests
    ttft_slo_seconds: float | None = None
    # Scale up when demand exceeds the capacity (ready + starting) by more than this share.
    tolerance: float = 0.1
    stable_window_seconds: float = 60.0
    panic_window_seconds: float = 30.0
    panic_threshold: float = 2.0  # panic-window demand ≥ this × ready gangs acts at once
    scale_down_window_seconds: float = 300.0
    scale_down_interval_seconds: float = 60.0  # between two scale-downs
    scale_down_margin: float = 0.1  # remaining gangs must stay this far under the target
    max_sample_age_seconds: float = 45.0  # an older newest sample from a ready gang is missing data

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(
                f"need 0 ≤ minReplicas ≤ maxReplicas and maxReplicas ≥ 1, "
                f"got min {self.min_replicas}, max {self.max_replicas}"
            )
        for name in ("target_utilisation", "target_token_usage", "target_running_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.panic_window_seconds > self.stable_window_seconds:
            raise ValueError("the panic window must not be longer than the stable window")


@dataclass(frozen=True)
class Observation:
    """Everything the policy looks at, at one moment.

    `samples` holds the recent history per gang name, oldest first. It may keep the samples of gangs
    that have since drained until they leave the stabilisation window: they carried part of the load.
    `pending_requests` is the router's count of requests waiting with no ready replica (scale from
    zero); None when the loop cannot see it.
    """

    now: float
    gangs: tuple[Gang, ...]
    samples: Mapping[str, Sequence[MetricSample]]
    last_scale_down_at: float | None = None
    pending_requests: int | None = None


@dataclass(frozen=True)
class Signals:
    """The values behind a decision, in replicas' worth of load at the targets."""

    ready: int
    starting: int
    draining: int
    demand: float = 0.0  # stable window
    panic_demand: float = 0.0  # panic window
    peak_demand: float = 0.0  # highest stable-window demand over the scale-down window
    utilisation: float | None = None  # mean over ready gangs, latest stable window, 0..1
    token_usage: float | None = None  # mean over ready gangs, newest samples
    queue_requests: float | None = None  # sum over ready gangs, newest samples
    running_requests: float | None = None  # sum over ready gangs, newest samples
    ttft_p95_seconds: float | None = None  # worst ready gang, panic window


@dataclass(frozen=True)
class Decision:
    desired_replicas: int  # gangs that should be serving or starting; draining ones excluded
    action: Action
    reason: str
    signals: Signals
    # On scale-down, the gang to remove: a starting one (deleted) or a ready one (drained first).
    remove: str | None = None
    notes: tuple[str, ...] = field(default=())


def decide(observation: Observation, config: PolicyConfig) -> Decision:
    """The desired number of gangs for this observation, and why."""
    now = observation.now
    ready = sorted((g for g in observation.gangs if g.phase is GangPhase.READY), key=lambda g: g.name)
    starting = sorted((g for g in observation.gangs if g.phase is GangPhase.STARTING), key=lambda g: (g.since, g.name))
    draining = [g for g in observation.gangs if g.phase is GangPhase.DRAINING]
    current = len(ready) + len(starting)
    base = Signals(ready=len(ready), starting=len(starting), draining=len(draining))

    # Bounds first: they do not depend on metrics.
    if current < config.min_replicas:
        return Decision(
            config.min_replicas,
            Action.SCALE_UP,
            f"{current} gangs (ready + starting) is below minReplicas {config.min_replicas}",
            base,
        )
    if current > config.max_replicas:
        victim = starting[-1].name if starting else _least_loaded(ready, observation.samples)
        return Decision(
            current - 1,
            Action.SCALE_DOWN,
            f"{current} gangs is above maxReplicas {config.max_replicas}",
            base,
            remove=victim,
        )

    if not ready:
        return _decide_without_ready_gangs(observation, config, starting, base)

    stale = [g.name for g in ready if not _fresh(observation.samples.get(g.name, ()), now, config)]
    if stale:
        return Decision(
            current,
            Action.NO_DATA,
            f"no metrics newer than {config.max_sample_age_seconds:g}s from ready gang(s) "
            f"{', '.join(stale)}: holding at {current}",
            base,
        )

    loads = _Loads(observation, config, [g.name for g in ready])
    demand = loads.demand(now - config.stable_window_seconds, now)
    panic_demand = loads.demand(now - config.panic_window_seconds, now)
    peak_demand, covered = loads.peak_demand(now - config.scale_down_window_seconds, now)
    ttft = loads.worst_ttft(now - config.panic_window_seconds, now)
    signals = Signals(
        ready=len(ready),
        starting=len(starting),
        draining=len(draining),
        demand=demand,
        panic_demand=panic_demand,
        peak_demand=peak_demand,
        utilisation=loads.mean_utilisation(now - config.stable_window_seconds, now),
        token_usage=loads.latest_mean("token_usage"),
        queue_requests=loads.latest_sum("queue_requests"),
        running_requests=loads.latest_sum("running_requests"),
        ttft_p95_seconds=ttft,
    )

    # Scale up: demand beyond what is ready or already on its way.
    panic = panic_demand >= config.panic_threshold * len(ready) and panic_demand > current
    wanted = max(demand, panic_demand) if panic else demand
    if wanted > current * (1.0 + config.tolerance) and current < config.max_replicas:
        desired = min(config.max_replicas, max(current + 1, math.ceil(wanted)))
        window = "panic" if panic else "stable"
        return Decision(
            desired,
            Action.SCALE_UP,
            f"{window}-window demand {wanted:.2f} replicas exceeds {len(ready)} ready + "
            f"{len(starting)} starting: add {desired - current}",
            signals,
        )
    slo = config.ttft_slo_seconds
    if slo is not None and ttft is not None and ttft > slo and current < config.max_replicas:
        if starting:
            return Decision(
                current,
                Action.HOLD,
                f"TTFT p95 {ttft:.2f}s above the SLO {slo:g}s, but {len(starting)} gang(s) still "
                f"starting: waiting for them",
                signals,
            )
        return Decision(
            current + 1,
            Action.SCALE_UP,
            f"TTFT p95 {ttft:.2f}s above the SLO {slo:g}s with demand {demand:.2f} replicas: add 1",
            signals,
        )

    # Scale down: slowly, one gang at a time, only if the rest would stay under the target.
    blocker = _scale_down_blocker(observation, config, draining, covered, current)
    fewer = current - 1
    limit = fewer * (1.0 - config.scale_down_margin)
    fits = peak_demand <= limit if fewer > 0 else loads.idle(now - config.scale_down_window_seconds, now)
    if blocker is None and fits and not (slo is not None and loads.slo_missed(slo, config, now)):
        victim = starting[-1].name if starting else _least_loaded(ready, observation.samples)
        what = "cancel starting" if starting else "drain"
        return Decision(
            fewer,
            Action.SCALE_DOWN,
            f"peak demand {peak_demand:.2f} replicas over the last "
            f"{config.scale_down_window_seconds:g}s fits in {fewer} gang(s): {what} {victim}",
            signals,
            remove=victim,
        )

    reason = f"demand {demand:.2f} replicas for {len(ready)} ready + {len(starting)} starting"
    if blocker is not None and fits:
        reason += f"; not scaling down: {blocker}"
    return Decision(current, Action.HOLD, reason, signals)


def _decide_without_ready_gangs(
    observation: Observation, config: PolicyConfig, starting: list[Gang], base: Signals
) -> Decision:
    current = len(starting)
    if starting:
        return Decision(current, Action.HOLD, f"{current} gang(s) starting, none ready yet", base)
    pending = observation.pending_requests
    if pending is None:
        return Decision(0, Action.NO_DATA, "no gangs and no router queue to read: holding at zero", base)
    if pending > 0:
        return Decision(
            max(1, config.min_replicas),
            Action.SCALE_UP,
            f"{pending} request(s) waiting at the router with no gang: scale from zero",
            base,
        )
    return Decision(0, Action.HOLD, "no gangs and no requests waiting", base)


def _fresh(samples: Sequence[MetricSample], now: float, config: PolicyConfig) -> bool:
    return bool(samples) and now - samples[-1].at <= config.max_sample_age_seconds


def _scale_down_blocker(
    observation: Observation,
    config: PolicyConfig,
    draining: list[Gang],
    covered: bool,
    current: int,
) -> str | None:
    if current <= config.min_replicas:
        return f"at minReplicas {config.min_replicas}"
    if draining:
        return f"gang {draining[0].name} is still draining"
    last = observation.last_scale_down_at
    if last is not None and observation.now - last < config.scale_down_interval_seconds:
        return f"last scale-down {observation.now - last:.0f}s ago"
    if not covered:
        return f"less than {config.scale_down_window_seconds:g}s of metrics"
    return None


def _least_loaded(ready: list[Gang], samples: Mapping[str, Sequence[MetricSample]]) -> str:
    """The ready gang with the fewest requests in flight; the newest name on a tie (deterministic)."""

    def outstanding(gang: Gang) -> tuple[float, float, str]:
        history = samples.get(gang.name, ())
        if not history:
            return (0.0, -gang.since, gang.name)
        newest = history[-1]
        return (newest.queue_requests + newest.running_requests, -gang.since, gang.name)

    return min(ready, key=outstanding).name


class _Loads:
    """Per-gang load, in replicas' worth at the targets, over windows of the sample history."""

    def __init__(self, observation: Observation, config: PolicyConfig, ready: list[str]) -> None:
        self._config = config
        self._ready = ready
        self._samples = observation.samples
        self._now = observation.now
        self._work_per_request = self._mean_work_per_request(
            observation.now - config.scale_down_window_seconds, observation.now
        )

    def _mean_work_per_request(self, start: float, end: float) -> float | None:
        """Replica-seconds of prefill + decode work per finished request, over all gangs' counters."""
        capacity = self._config.capacity
        work = 0.0
        finished = 0.0
        for name in self._samples:
            base, inside = self._in(name, start, end)
            first = base if base is not None else (inside[0] if inside else None)
            if first is None or not inside:
                continue
            last = inside[-1]
            prompt = _delta(first.prompt_tokens_total, last.prompt_tokens_total)
            generated = _delta(first.generation_tokens_total, last.generation_tokens_total)
            requests = _delta(first.requests_total, last.requests_total)
            if prompt is None or generated is None or requests is None:
                continue
            work += prompt / capacity.prefill_tokens_per_second
            work += generated / capacity.decode_tokens_per_second
            finished += requests
        return work / finished if finished > 0 else None

    def _in(self, name: str, start: float, end: float) -> tuple[MetricSample | None, list[MetricSample]]:
        """The last sample at or before `start` (the base for counters) and the samples in (start, end]."""
        base: MetricSample | None = None
        inside: list[MetricSample] = []
        for sample in self._samples.get(name, ()):
            if sample.at <= start:
                base = sample
            elif sample.at <= end:
                inside.append(sample)
        return base, inside

    def _utilisation(self, base: MetricSample | None, inside: list[MetricSample]) -> float | None:
        first = base if base is not None else (inside[0] if len(inside) > 1 else None)
        if first is None or not inside:
            return None
        last = inside[-1]
        seconds = last.at - first.at
        if seconds <= 0:
            return None
        prompt = _delta(first.prompt_tokens_total, last.prompt_tokens_total)
        generated = _delta(first.generation_tokens_total, last.generation_tokens_total)
        if prompt is None or generated is None:
            return None
        capacity = self._config.capacity
        return (prompt / capacity.prefill_tokens_per_second + generated / capacity.decode_tokens_per_second) / seconds

    def _gang_demand(self, name: str, start: float, end: float) -> float | None:
        config = self._config
        base, inside = self._in(name, start, end)
        if not inside:
            return None
        usage = sum(s.token_usage for s in inside) / len(inside) / config.target_token_usage
        running_target = config.target_running_fraction * config.capacity.max_running_requests
        running = sum(s.running_requests for s in inside) / len(inside) / running_target
        demand = max(usage, running)
        utilisation = self._utilisation(base, inside)
        if utilisation is not None:
            demand = max(demand, utilisation / config.target_utilisation)
            # Requests piling up are demand the gang does not serve: add the growth rate of the
            # queue, priced at the mean work of a request it did serve.
            first = base if base is not None else inside[0]
            growth = (inside[-1].queue_requests - first.queue_requests) / max(inside[-1].at - first.at, 1e-9)
            if growth > 0 and self._work_per_request is not None:
                demand += growth * self._work_per_request / config.target_utilisation
        return demand

    def demand(self, start: float, end: float) -> float:
        total = 0.0
        for name in self._samples:
            value = self._gang_demand(name, start, end)
            if value is not None:
                total += value
        return total

    def peak_demand(self, start: float, end: float) -> tuple[float, bool]:
        """Highest stable-window demand over [start, end] and whether the history covers it."""
        step = self._config.stable_window_seconds
        oldest = min((s[0].at for s in self._samples.values() if s), default=end)
        covered = oldest <= start + self._config.max_sample_age_seconds
        peak = 0.0
        window_end = end
        while window_end > start + 1e-9:
            peak = max(peak, self.demand(window_end - step, window_end))
            window_end -= step
        return peak, covered

    def idle(self, start: float, end: float) -> bool:
        """No request seen anywhere in [start, end]: the only load that allows scaling to zero."""
        for history in self._samples.values():
            window = [s for s in history if start < s.at <= end]
            if any(s.queue_requests > 0 or s.running_requests > 0 for s in window):
                return False
            if len(window) > 1:
                for field_name in ("prompt_tokens_total", "generation_tokens_total"):
                    moved = _delta(getattr(window[0], field_name), getattr(window[-1], field_name))
                    if moved is None or moved > 0:
                        return False
        return True

    def worst_ttft(self, start: float, end: float) -> float | None:
        worst: float | None = None
        for name in self._ready:
            for sample in self._in(name, start, end)[1]:
                if sample.ttft_p95_seconds is not None:
                    worst = sample.ttft_p95_seconds if worst is None else max(worst, sample.ttft_p95_seconds)
        return worst

    def slo_missed(self, slo: float, config: PolicyConfig, now: float) -> bool:
        worst = self.worst_ttft(now - config.scale_down_window_seconds, now)
        return worst is not None and worst > slo

    def mean_utilisation(self, start: float, end: float) -> float | None:
        values = [self._utilisation(*self._in(name, start, end)) for name in self._ready]
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def latest_mean(self, attribute: str) -> float | None:
        values = [getattr(self._samples[n][-1], attribute) for n in self._ready if self._samples.get(n)]
        return sum(values) / len(values) if values else None

    def latest_sum(self, attribute: str) -> float | None:
        values = [getattr(self._samples[n][-1], attribute) for n in self._ready if self._samples.get(n)]
        return float(sum(values)) if values else None


def _delta(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or last < first:
        return None
    return last - first
