"""The autoscaling policy: how many gangs a deployment should run, from what its gangs report.

Pure: one call takes everything it needs (the recent metric samples of every gang, which gangs are
starting, ready or draining, the configuration and the time) and returns a `Decision` with the desired
number of gangs, the reason in words and the signal values it acted on. It keeps no state, reads no
clock and does no I/O, so the operator's loop, `mimoctl simulate autoscaling` and the unit tests run the
same code.

The unit of scaling is a whole gang (one replica, several 8-GPU nodes). Every signal is turned into
*demand*: replicas' worth of load at a target share of a replica's capacity, so that compute, the KV
pool and the running-request limit can be compared:

* compute: the requests that reached each gang (finished + the change of queued and running, so an
  overloaded prefill-first engine that finishes nothing still shows its load, and a backlog that is
  clearing is not read as new load), priced at the mean prefill + decode work of a finished request
  under the plan's performance model;
* KV: `sglang:token_usage` (the fuller of the full-attention and sliding-window pools);
* running requests against the replica's running-request limit;
* TTFT p95 above the SLO asks for one more gang when none is on its way;
* queueing time: a gang whose queue never emptied over the panic or the stable window serves its requests
  first come, first served, so their time to first token rises at 1 − served ÷ arrived seconds per second.
  Its slope gives arrivals ÷ service whatever the requests' sizes, which the other signals learn only as the
  requests finish (a burst of 100k-token prompts, priced at the chat requests that finished before it,
  read as half a gang while it needed three or four).

Four views of demand drive scale-up: the stable window's mean (at `target_utilisation`), the
busiest panic window inside it (at `burst_utilisation`: the panic path, which reacts to a burst on the
next tick and may add several gangs at once), the stable demand projected `forecast_seconds`
ahead along its recent trend (a gang ordered now serves only after its start-up), and the stable demand
with each backlogged gang counted at its queueing time's slope. Gangs still loading count as capacity on
its way, so a burst that waits for them does not order more.

Scale-down waits until the highest demand over the whole stabilisation window fits in one gang fewer
with a margin, then removes one gang (a starting one first, else the least-loaded ready one, to be
drained), and never while another gang is still draining. Nothing changes on missing data.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEMAND_HISTORY_SECONDS",
    "Action",
    "Decision",
    "Gang",
    "GangPhase",
    "MetricSample",
    "Observation",
    "PolicyConfig",
    "Recurrence",
    "ReplicaCapacity",
    "Signals",
    "decide",
    "recurrence",
    "remember",
]


# How far back the policy's own record of demand (`Observation.demand_history`) reaches: it finds bursts
# that recur within it (two alike onsets at least), so periods of up to about 40 minutes are recognised.
DEMAND_HISTORY_SECONDS = 7200.0
# Requests a gang must have taken in a window, without queueing, for its TTFT p95 to count as a capacity
# signal: over fewer, the p95 is the slowest request's TTFT.
TTFT_TAIL_REQUESTS = 20
# Stretches of burst-level demand less than this apart are one burst.
BURST_MERGE_SECONDS = 60.0
# The steepest rise of a backlogged gang's queueing time (seconds per second) the queue-wait view reads: at 0.8
# arrivals are 5 times what the gang serves. Nearer 1 the ratio diverges, and a scrape's noise would order a fleet.
MAX_WAIT_SLOPE = 0.8
# The shortest window a trend is read over, in stable windows: each of its four parts at least one, so that a
# step, which the stable window smears over one stable window, lifts at most two neighbouring parts.
TREND_STABLE_WINDOWS = 4


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
    # sglang:cached_tokens_total: prompt tokens the prefix cache supplied; they cost no prefill
    cached_tokens_total: float | None = None
    # From sglang:request_time_per_output_token_seconds, since the last scrape: a decode pool's ITL.
    tpot_p95_seconds: float | None = None
    # sglang:time_to_first_token_seconds_sum and _count (cumulative): the mean TTFT between two samples.
    ttft_seconds_sum: float | None = None
    ttft_count: float | None = None


@dataclass(frozen=True)
class ReplicaCapacity:
    """What one replica can serve, from the plan's performance model.

    `decode_tokens_per_second` is the aggregate decode throughput at the concurrency the replica is
    meant to run at (its ITL budget or its running-request limit), not at batch 1.
    """

    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    max_running_requests: int
    # Replica-seconds of work of a typical request, used until finished requests give a measured mean.
    typical_request_seconds: float


@dataclass(frozen=True)
class PolicyConfig:
    capacity: ReplicaCapacity
    min_replicas: int = 1
    max_replicas: int = 4
    # Targets: the share of a replica's capacity each signal may use before another gang is wanted.
    target_utilisation: float = 0.8  # of modelled compute, averaged over the stable window
    burst_utilisation: float = 0.9  # of modelled compute, in the busiest panic window
    target_token_usage: float = 0.8  # of the fuller KV pool
    target_running_fraction: float = 0.8  # of max_running_requests
    ttft_slo_seconds: float | None = None
    # How far ahead the trend of demand is projected: the gangs' start-up time (0 turns it off).
    forecast_seconds: float = 0.0
    # Scale up when demand exceeds the capacity (ready + starting) by more than this share.
    tolerance: float = 0.1
    stable_window_seconds: float = 60.0
    panic_window_seconds: float = 30.0
    scale_down_window_seconds: float = 300.0
    scale_down_interval_seconds: float = 30.0  # between two scale-downs
    scale_down_margin: float = 0.1  # the remaining gangs must stay this far under the targets
    max_sample_age_seconds: float = 45.0  # an older newest sample from a ready gang is missing data
    # A gang's start-up, for holding and pre-warming the capacity of recurring bursts; None: forecast_seconds.
    startup_seconds: float | None = None
    # Read a backlogged gang's queueing time from its TTFT (the queue-wait view). Off where a gang's TTFT also
    # holds another pool's queue: a PD decode gang's first token waits for the prompt's prefill elsewhere.
    queue_wait_view: bool = True

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(
                f"need 0 ≤ minReplicas ≤ maxReplicas and maxReplicas ≥ 1, "
                f"got min {self.min_replicas}, max {self.max_replicas}"
            )
        for name in ("target_utilisation", "burst_utilisation", "target_token_usage", "target_running_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if not 0.0 < self.panic_window_seconds <= self.stable_window_seconds <= self.scale_down_window_seconds:
            raise ValueError("need 0 < panic window ≤ stable window ≤ scale-down window")
        if self.forecast_seconds < 0:
            raise ValueError(f"forecast_seconds must not be negative, got {self.forecast_seconds}")


@dataclass(frozen=True)
class Observation:
    """Everything the policy looks at, at one moment.

    `samples` holds the recent history per gang name, oldest first, at least the scale-down window
    long. It should keep the samples of gangs that have since drained until they age out: they
    carried part of the load. `pending_requests` is the router's count of requests waiting with no
    ready replica (scale from zero); None when the loop cannot see it.
    """

    now: float
    gangs: tuple[Gang, ...]
    samples: Mapping[str, Sequence[MetricSample]]
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    pending_requests: int | None = None
    # The policy's own demand figures from earlier decisions, (time, replicas), oldest first: what the
    # loop kept with `remember`. It reaches back further than the samples, to recognise recurring bursts.
    demand_history: Sequence[tuple[float, float]] = ()


@dataclass(frozen=True)
class Recurrence:
    """Bursts that recur at a steady period, as read from the demand history."""

    period_seconds: float
    next_onset: float  # when the next burst is expected to begin (demand crossing the burst level)
    last_onset: float
    duration_seconds: float  # how long a burst has lasted, on average
    demand: float  # replicas the recent bursts needed at their peak
    lead_seconds: float  # how early before an onset the capacity must serve (the onsets' jitter + a margin)


@dataclass(frozen=True)
class Signals:
    """The values behind a decision; demands are in replicas' worth of load at the targets."""

    ready: int
    starting: int
    draining: int
    demand: float = 0.0  # stable window
    panic_demand: float = 0.0  # busiest panic window inside the stable window
    forecast_demand: float = 0.0  # stable demand projected forecast_seconds ahead
    peak_demand: float = 0.0  # highest demand over the scale-down window
    utilisation: float | None = None  # mean share of modelled compute over ready gangs, stable window
    token_usage: float | None = None  # mean over ready gangs, newest samples
    queue_requests: float | None = None  # sum over ready gangs, newest samples
    running_requests: float | None = None  # sum over ready gangs, newest samples
    ttft_p95_seconds: float | None = None  # worst ready gang over the panic window
    target_correction: float = 1.0  # the factor the TTFT SLO has put on the targets (1: none)
    recurring_demand: float = 0.0  # replicas held or pre-warmed for a recurring burst (0: none expected)
    wait_demand: float = 0.0  # stable demand with backlogged gangs read from their queueing time


@dataclass(frozen=True)
class Decision:
    desired_replicas: int  # gangs that should be serving or starting; draining ones excluded
    action: Action
    reason: str
    signals: Signals
    # On scale-down, the gang to remove: a starting one (deleted) or a ready one (drained first).
    remove: str | None = None


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
            f"{current} gang(s) ready or starting, below minReplicas {config.min_replicas}",
            base,
        )
    if current > config.max_replicas:
        return Decision(
            config.max_replicas,
            Action.SCALE_DOWN,
            f"{current} gang(s) ready or starting, above maxReplicas {config.max_replicas}",
            base,
            remove=starting[-1].name if starting else _least_loaded(ready, observation.samples),
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
    demand = loads.stable()
    panic_demand = loads.panic(now)
    # Under a growing backlog the ready gangs finish a biased sample of requests (the mean work drifts)
    # and the gangs already ordered are what helps: a trend then is an artefact, not a forecast. So it
    # is while a backlog clears (the queues shrank over the stable window and still hold more than a
    # request per gang): the gangs that hold it count at their KV use, whatever arrives, and the gangs
    # that joined since rise from zero as they take their share; the rise is the fleet catching up with
    # a burst, and projected a start-up ahead it ordered 21 gangs for a burst of 12. A few requests
    # queued for a scrape or two are no backlog: read over the panic window, such a blip held back a
    # RAG crowd's first forecast gang.
    growing = loads.backlog_growing(now)
    catching_up = growing or (
        loads.backlog_clearing(now, config.stable_window_seconds)
        and (loads.latest_sum("queue_requests") or 0.0) > len(ready)
    )
    forecast_demand = demand if catching_up else demand + loads.trend() * config.forecast_seconds
    wait_demand = loads.wait(now)
    peak_demand = loads.peak()
    ttft = loads.worst_ttft(now - config.panic_window_seconds, now)
    pattern = recurrence(observation.demand_history, now, config)
    warm, lull = _recurring(pattern, now, config)
    if pattern is not None and lull is not None:
        # Only the burst's gangs go early: a gang ordered since it ended (the lull's own load missed
        # the SLO) waits for the stabilisation window like any other, or the two would flap.
        up = observation.last_scale_up_at
        if up is not None and up > pattern.last_onset + pattern.duration_seconds:
            lull = None
    signals = Signals(
        ready=len(ready),
        starting=len(starting),
        draining=len(draining),
        demand=demand,
        panic_demand=panic_demand,
        forecast_demand=forecast_demand,
        peak_demand=peak_demand,
        utilisation=loads.mean_utilisation(now - config.stable_window_seconds, now),
        token_usage=loads.latest_mean("token_usage"),
        queue_requests=loads.latest_sum("queue_requests"),
        running_requests=loads.latest_sum("running_requests"),
        ttft_p95_seconds=ttft,
        target_correction=loads.correction,
        recurring_demand=warm,
        wait_demand=wait_demand,
    )

    # Scale up: demand beyond what is ready or already on its way.
    views = {
        "stable": demand,
        "panic": panic_demand,
        "forecast": forecast_demand,
        "recurring-burst": warm,
        "queue-wait": wait_demand,
    }
    view, wanted = max(views.items(), key=lambda item: item[1])
    # The tolerance keeps noise from ordering gangs; a queue that keeps growing on the ready gangs is
    # not noise: they are short of capacity now, and a gang ordered a tick later serves a tick later.
    tolerance = 0.0 if growing else config.tolerance
    # (Demand that exactly fills the gangs there are, up to rounding, asks for none more.)
    if wanted > current * (1.0 + tolerance) + 1e-6 and current < config.max_replicas:
        desired = min(config.max_replicas, max(current + 1, math.ceil(wanted - 1e-6)))
        return Decision(
            desired,
            Action.SCALE_UP,
            f"{view} demand {wanted:.2f} replicas exceeds {len(ready)} ready + "
            f"{len(starting)} starting: add {desired - current}",
            signals,
        )
    slo = config.ttft_slo_seconds
    slo_missed = loads.ttft_view() > 0
    if slo is not None and ttft is not None and slo_missed and current < config.max_replicas:
        if loads.backlog_clearing(now):
            # Late first tokens of requests queued while capacity was short: the queue is shrinking
            # on the gangs there are, and a gang ordered now would serve a start-up after it is gone
            # (and the router does not move queued requests to it anyway).
            return Decision(
                current,
                Action.HOLD,
                f"TTFT p95 up to {ttft:.2f}s, above the SLO {slo:g}s, while a backlog of "
                f"{loads.latest_sum('queue_requests') or 0:.0f} request(s) clears: not adding a gang for it",
                signals,
            )
        if starting:
            return Decision(
                current,
                Action.HOLD,
                f"TTFT p95 up to {ttft:.2f}s, above the SLO {slo:g}s on most gangs, but {len(starting)} gang(s) still "
                f"starting: waiting for them",
                signals,
            )
        return Decision(
            current + 1,
            Action.SCALE_UP,
            f"TTFT p95 up to {ttft:.2f}s, above the SLO {slo:g}s on most gangs, at demand {demand:.2f} replicas: add 1",
            signals,
        )

    backlog = loads.latest_sum("queue_requests") or 0.0
    rising = _rising(observation, config, max(demand, panic_demand) * loads.correction)
    if lull is not None and not slo_missed and backlog <= len(ready) and rising is None:
        # A recurring burst is over and the next is further away than a start-up: the burst's gangs
        # go now, all at once, instead of a stabilisation window later (the window guards against
        # bursts nobody expects; this one's time is known, and its gangs are pre-warmed for it).
        now_demand = max(demand, loads.panic(now))
        keep = max(config.min_replicas, math.ceil(now_demand / (1.0 - config.scale_down_margin) - 1e-9), 1)
        if keep < current:
            victim = starting[-1].name if starting else _least_loaded(ready, observation.samples)
            return Decision(
                keep,
                Action.SCALE_DOWN,
                f"recurring burst over, the next due in {lull:.0f}s: demand {now_demand:.2f} replicas "
                f"fits in {keep} gang(s)",
                signals,
                remove=victim,
            )

    # Scale down: slowly, one gang at a time, only if the rest would stay under the targets.
    fewer = current - 1
    if fewer > 0:
        # The forecast counts too: a gang ordered for a ramp is not cancelled while the ramp lasts.
        # So does a recurring burst that is due or under way.
        fits = max(peak_demand, forecast_demand, warm) <= fewer * (1.0 - config.scale_down_margin)
    else:
        fits = loads.idle(now - config.scale_down_window_seconds, now)
    blocker = _scale_down_blocker(observation, config, draining, loads.covered(), current)
    if blocker is None and slo_missed:
        blocker = "TTFT p95 above the SLO on most gangs"
    blocker = blocker or rising
    if fits and blocker is None:
        # Every gang the window's peak does not need goes at once: the window has already shown that
        # they were idle, and releasing them one by one keeps a burst's gangs minutes longer.
        if fewer > 0:
            needed = max(peak_demand, forecast_demand, warm) / (1.0 - config.scale_down_margin)
            fewer = max(config.min_replicas, 1, min(fewer, math.ceil(needed - 1e-9)))
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
    reason = f"demand {max(views.values()):.2f} replicas for {len(ready)} ready + {len(starting)} starting"
    if warm > max(peak_demand, forecast_demand) and warm > fewer * (1.0 - config.scale_down_margin):
        reason += f"; holding {warm:.2f} replicas for a recurring burst"
    if fits and blocker is not None:
        reason += f"; not scaling down: {blocker}"
    return Decision(current, Action.HOLD, reason, signals)


def remember(history: Sequence[tuple[float, float]], decision: Decision, now: float) -> tuple[tuple[float, float], ...]:
    """The demand history to pass with the next observation: this decision's demand added, old ones dropped.

    Only decisions taken on fresh metrics of ready gangs add a point (a guess would teach a false burst).
    """
    kept = tuple(p for p in history if p[0] >= now - DEMAND_HISTORY_SECONDS)
    signals = decision.signals
    if decision.action is Action.NO_DATA or signals.ready == 0:
        return kept
    # At the targets before the TTFT correction: the correction is about this moment's gangs, and a
    # burst's size is remembered for later ones.
    demand = max(signals.demand, signals.panic_demand) * signals.target_correction
    return (*kept, (now, demand))


def recurrence(history: Sequence[tuple[float, float]], now: float, config: PolicyConfig) -> Recurrence | None:
    """Bursts that recur at a steady period in the demand history, or None.

    A burst is a stretch of demand above the midpoint between the history's low (its 5th percentile)
    and its peak, stretches less than a minute apart taken as one; the history must hold at least three
    burst onsets whose last intervals agree within 15 %, or two bursts alike in size and length
    (`_alike`), and the bursts must differ from the low by a gang or more (smaller swings are the stable
    and panic views' business). A pattern that misses its
    next onset by a quarter period is over. Bursts that began before the history are not counted: their
    onset is unknown.
    """
    points = [p for p in history if p[0] >= now - DEMAND_HISTORY_SECONDS]
    if len(points) < 8:
        return None
    values = sorted(d for _, d in points)
    # The lulls' level: bursts can fill most of the history (25 minutes on, 6 off), and a 20th percentile then
    # read the bursts' edges as the low; the pattern fell apart in the middle of a burst and the next one found
    # its gangs released. Lower still, a flat load's wobble passes for bursts more often.
    low, high = values[len(values) // 20], values[-1]
    if high - low < 1.0:
        return None
    level = low + 0.5 * (high - low)
    merge = BURST_MERGE_SECONDS
    episodes: list[list[float]] = []  # [onset, last time above the level]
    sizes: list[list[float]] = []  # the demand figures of each episode
    for at, demand in points:
        if demand < level:
            continue
        if episodes and at - episodes[-1][1] <= merge:
            episodes[-1][1] = at
            sizes[-1].append(demand)
        else:
            episodes.append([at, at])
            sizes.append([demand])
    if episodes and episodes[0][0] <= points[0][0]:
        episodes.pop(0)
        sizes.pop(0)
    if len(episodes) < 2 or (len(episodes) == 2 and not _alike(episodes, sizes)):
        return None
    onsets = [e[0] for e in episodes]
    intervals = [b - a for a, b in itertools.pairwise(onsets)][-3:]
    period = sorted(intervals)[len(intervals) // 2]
    if period < 2 * merge or any(abs(i - period) > 0.15 * period for i in intervals):
        return None
    last = episodes[-1]
    if now > last[0] + 1.25 * period:
        return None
    ongoing = points[-1][1] >= level
    complete = episodes[:-1] if ongoing else episodes
    tick = (points[-1][0] - points[0][0]) / max(len(points) - 1, 1)
    duration = sum(e[1] - e[0] for e in complete[-3:]) / len(complete[-3:]) + tick
    return Recurrence(
        period_seconds=period,
        next_onset=last[0] + period,
        last_onset=last[0],
        duration_seconds=duration,
        # The upper quartile of the last two bursts' figures: their size, without the noise of the
        # busiest half-minute (a maximum over a hundred noisy windows orders a gang or two too many).
        demand=_quantile([d for figures in sizes[-2:] for d in figures], 0.75),
        # Onsets are read from windowed demand, which crosses the burst level up to a stable window late.
        lead_seconds=config.stable_window_seconds + 2 * tick + (max(intervals) - min(intervals)),
    )


def _alike(episodes: Sequence[Sequence[float]], sizes: Sequence[Sequence[float]]) -> bool:
    """Whether two bursts are enough to call a period: the first is over, and they match in size and length.

    A workload of recurring bursts pays one unforeseen burst less than waiting for a third onset; a guess
    that fails costs one pre-warm, ended when the expected onset passes a quarter period without a burst.
    """
    (first_at, first_end), (second_at, second_end) = episodes
    first, second = _quantile(sizes[0], 0.75), _quantile(sizes[1], 0.75)
    if abs(first - second) > 0.25 * max(first, second):
        return False
    first_length, second_length = first_end - first_at, second_end - second_at
    # The second may still be on: it must have lasted most of the first by now, and not much longer.
    slack = BURST_MERGE_SECONDS  # a burst's ends are known to within the gap that merges its stretches
    return 0.75 * first_length <= second_length + slack and second_length <= 1.25 * first_length + slack


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _recurring(found: Recurrence | None, now: float, config: PolicyConfig) -> tuple[float, float | None]:
    """(warm, lull): the replicas a recurring burst needs serving or ordered now, and, in a lull of a
    recurring pattern long enough to release gangs in, the seconds until the next burst (else None).

    Warm: from one start-up (plus the lead) before the next onset until the burst is expected to end,
    and through the current burst. Lull: after a burst, while the next one is more than a start-up
    (plus the lead) away: a gang released now and started again for the next burst costs less than
    keeping it idle (the oracle's rule); one kept through a shorter lull costs less than restarting.
    """
    if found is None:
        return 0.0, None
    startup = config.forecast_seconds if config.startup_seconds is None else config.startup_seconds
    order_at = found.next_onset - startup - found.lead_seconds
    warm = order_at <= now <= found.next_onset + found.duration_seconds
    warm = warm or found.last_onset <= now <= found.last_onset + found.duration_seconds
    if warm:
        return found.demand, None
    return 0.0, (found.next_onset - now if now < order_at else None)


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
    observation: Observation, config: PolicyConfig, draining: list[Gang], covered: bool, current: int
) -> str | None:
    if current <= config.min_replicas:
        return f"at minReplicas {config.min_replicas}"
    if draining:
        return f"gang {draining[0].name} is still draining"
    up = observation.last_scale_up_at
    if up is not None and observation.now - up < config.scale_down_window_seconds:
        # What was ordered within the window stays: scaling down now would be a flap.
        return f"last scale-up {observation.now - up:.0f}s ago"
    last = observation.last_scale_down_at
    if last is not None and observation.now - last < config.scale_down_interval_seconds:
        return f"last scale-down {observation.now - last:.0f}s ago"
    if not covered:
        return f"less than {config.scale_down_window_seconds:g}s of metrics"
    return None


def _rising(observation: Observation, config: PolicyConfig, now_demand: float) -> str | None:
    """Why no gang may go while demand rises: when it stands a gang or more above the stabilisation window's
    median (the policy's own record, `remember`), the window's peak says what has been, not what is coming.
    A burst that comes late to a recognised pattern (the pattern given up as its demand begins to rise) or
    unannounced at the end of a quiet window would otherwise find its gangs just released."""
    window = [d for at, d in observation.demand_history if at >= observation.now - config.scale_down_window_seconds]
    if len(window) < 4:
        return None
    typical = _quantile(window, 0.5)
    if now_demand < typical + 1.0:
        return None
    return f"demand {now_demand:.2f} replicas is rising (the window's median {typical:.2f})"


def _least_loaded(ready: list[Gang], samples: Mapping[str, Sequence[MetricSample]]) -> str:
    """The ready gang with the fewest requests in flight; the newest on a tie (deterministic)."""

    def outstanding(gang: Gang) -> tuple[float, float, str]:
        history = samples.get(gang.name, ())
        if not history:
            return (0.0, -gang.since, gang.name)
        newest = history[-1]
        return (newest.queue_requests + newest.running_requests, -gang.since, gang.name)

    return min(ready, key=outstanding).name


class _Loads:
    """Demand over windows of the sample history, in replicas' worth of load at the targets."""

    def __init__(self, observation: Observation, config: PolicyConfig, ready: list[str]) -> None:
        self._config = config
        self._ready = ready
        self._now = observation.now
        self._samples = {name: list(history) for name, history in observation.samples.items() if history}
        self._times = {name: [s.at for s in history] for name, history in self._samples.items()}
        self._ready_since = {g.name: g.since for g in observation.gangs if g.phase is GangPhase.READY}
        self._work_per_request = self._mean_work_per_request(observation.now - config.scale_down_window_seconds)
        # Window ends every half panic window back from now, over the scale-down window.
        step = config.panic_window_seconds / 2
        count = int(config.scale_down_window_seconds / step + 1e-9)
        self._ends = [observation.now - k * step for k in range(count)]
        self._ttft = [self._ttft_view(end - step, end) for end in self._ends]
        self.correction = self._correction()
        self._stable = [
            self._demand(end - config.stable_window_seconds, end, config.target_utilisation * self.correction)
            for end in self._ends
        ]
        self._panic = [
            self._demand(end - config.panic_window_seconds, end, config.burst_utilisation * self.correction)
            for end in self._ends
        ]

    def _correction(self) -> float:
        """How much of the modelled capacity the SLO has shown to be usable, as a factor on the targets.

        Where most gangs missed the TTFT SLO, the gangs were fuller than this workload allows: bursts
        shorter than a scrape, or a replica slower than its plan. The lowest compute utilisation
        (panic window, per serving gang) at which that happened, with a 10 % margin, caps the
        targets for as long as it stays in the scale-down window. Never below half the targets.
        """
        config = self._config
        if config.ttft_slo_seconds is None:
            return 1.0
        seen = []
        for end, view in zip(self._ends, self._ttft, strict=True):
            if view <= 0:
                continue
            start = end - config.panic_window_seconds
            if self._backlog_at(start) or self._piling_up(start, end):
                # A queue explains the miss: requests queued before the window waited for gangs
                # (after a burst the backlog clears at a low arrival rate), or a burst began inside
                # the window and outran the gangs. Neither says the gangs are slower than modelled,
                # and reading either as the usable capacity halves the targets (an on/off load then
                # orders half again the gangs its bursts need).
                continue
            counts = [self._arrivals(name, start, end) for name in self._samples]
            serving = sum(1 for name in self._samples if self._in(name, start, end)[1])
            known = [c for c in counts if c is not None]
            if serving and known:
                seen.append(sum(known) * self._work_per_request / config.panic_window_seconds / serving)
        if not seen:
            return 1.0
        usable = 0.9 * min(seen)
        return max(0.5, min(1.0, usable / config.target_utilisation))

    def _piling_up(self, start: float, end: float) -> bool:
        """Whether the requests in flight (queued or running) more than doubled over (start, end]."""
        before = 0.0
        after = 0.0
        gangs = 0
        for name in self._samples:
            base, inside = self._in(name, start, end)
            if base is None or not inside:
                continue
            before += base.queue_requests + base.running_requests
            after += inside[-1].queue_requests + inside[-1].running_requests
            gangs += 1
        return gangs > 0 and after > 2 * before + gangs

    def _backlog_at(self, moment: float) -> bool:
        """Whether the serving gangs had more requests queued at `moment` than one per gang."""
        queued = 0.0
        gangs = 0
        for name in self._samples:
            base, _ = self._in(name, moment, moment)
            if base is not None and base.at >= moment - self._config.panic_window_seconds:
                queued += base.queue_requests
                gangs += 1
        return gangs > 0 and queued > gangs

    def backlog_growing(self, now: float) -> bool:
        """Whether the ready gangs' queues grew by more than a request per gang over the stable window."""
        before = 0.0
        after = 0.0
        for name in self._ready:
            base, inside = self._in(name, now - self._config.stable_window_seconds, now)
            if not inside:
                continue
            first = base if base is not None else inside[0]
            before += first.queue_requests
            after += inside[-1].queue_requests
        return after > before + len(self._ready)

    def backlog_clearing(self, now: float, window: float | None = None) -> bool:
        """Whether the ready gangs' queues hold a backlog that shrank over the window (default: the panic window)."""
        before = 0.0
        after = 0.0
        span = self._config.panic_window_seconds if window is None else window
        for name in self._ready:
            base, inside = self._in(name, now - span, now)
            if not inside:
                continue
            first = base if base is not None else inside[0]
            before += first.queue_requests
            after += inside[-1].queue_requests
        return before >= len(self._ready) and after < before

    # -- the views of demand

    def stable(self) -> float:
        return self._stable[0]

    def panic(self, now: float) -> float:
        """The busiest panic window that ends inside the stable window."""
        config = self._config
        inside = [
            v
            for end, v in zip(self._ends, self._panic, strict=True)
            if end > now - config.stable_window_seconds + config.panic_window_seconds - 1e-9
        ]
        return max(inside, default=0.0)

    def wait(self, now: float) -> float:
        """Stable demand, with each gang whose backlog grew all through the stable or the panic window read from
        its queueing time.

        Such a gang admits its requests first come, first served, so the time to first token of the request it
        serves at t is t − (when that request arrived): it rises at 1 − μ/λ seconds per second, where λ is the
        work arriving and μ the work the gang does, in whatever unit binds (prefill, the KV pool, the
        running-request limit). λ/μ = 1 / (1 − slope) is what the gang's share of the load needs, at full use;
        the stable view prices the same requests at the mean of those that finished, which a burst of long
        prompts outruns until its first requests finish, minutes after the onset. The panic window reads a
        burst's first half minute of queue; the stable window, a backlog whose wait has grown past half a minute.
        """
        config = self._config
        if not config.queue_wait_view:
            return self.stable()
        start = now - config.stable_window_seconds
        target = config.target_utilisation * self.correction
        extra = 0.0
        for name in self._ready:
            readings = [self._overload(name, begin, now) for begin in (start, now - config.panic_window_seconds)]
            ratio = max((r for r in readings if r is not None), default=None)
            if ratio is not None:
                extra += max(0.0, ratio / target - (self._gang_demand(name, start, now, target) or 0.0))
        return self.stable() + extra

    def _overload(self, name: str, start: float, end: float) -> float | None:
        """Arrivals ÷ service of a gang that served all through (start, end] with a queue that never emptied and
        grew, from the slope of its mean TTFT between the window's halves; None where that does not hold.

        Two readings would be wrong, and are left out:

        * a gang that turned ready less than a window before (start, end]: the router sends it every request
          until its outstanding count matches the others', so its queueing time rises whatever the load (5
          times what it serves, on a flash crowd's first new gang);
        * a queueing time longer than the window: the slope tells what arrived a queueing time ago, not
          now. In a flash crowd's third minute the first gangs' queues still rose at 0.6 s a second while
          the gang that had just joined took every new request.
        """
        window = end - start
        since = self._ready_since.get(name)
        base, inside = self._in(name, start, end)
        if (since is not None and since > start - window) or base is None or len(inside) < 2:
            return None
        points = [base, *inside]
        if any(p.queue_requests < 1 for p in points) or inside[-1].queue_requests <= base.queue_requests:
            return None
        middle = points[len(points) // 2]
        halves = []
        for first, last in ((base, middle), (middle, inside[-1])):
            count = _delta(first.ttft_count, last.ttft_count)
            total = _delta(first.ttft_seconds_sum, last.ttft_seconds_sum)
            if not count or total is None:
                return None  # no first token in half the window: nothing to read a slope from
            halves.append((total / count, (first.at + last.at) / 2))
        (early, early_at), (late, late_at) = halves
        slope = (late - early) / (late_at - early_at)
        if slope <= 0 or late > window:
            return None
        return 1.0 / (1.0 - min(slope, MAX_WAIT_SLOPE))

    def trend(self) -> float:
        """Growth of stable demand per second; 0 unless it rose across the trend window like a ramp.

        The trend window looks back as far as the forecast looks ahead (at least four stable windows,
        at most the scale-down window) and is cut in four parts; the slope counts only if the mean
        demand rose from the first part to the second and from the third to the fourth, each by at least
        a quarter of the largest rise between neighbours, dipped between the two by less than half the
        smaller of them, and the whole rise is twice the spread of demand inside the parts: a ramp. A step
        or a lone burst, which lifts one or two neighbouring parts (the stable window smears it into its
        neighbours a little), is not extrapolated, nor is the wobble of a level load. The slope is the mean
        rise from the first part to the last.
        """
        config = self._config
        window = min(
            config.scale_down_window_seconds,
            max(config.forecast_seconds, TREND_STABLE_WINDOWS * config.stable_window_seconds),
        )
        if config.forecast_seconds <= 0 or not self.covered(window):
            return 0.0
        series = [v for end, v in zip(self._ends, self._stable, strict=True) if end > self._now - window]
        series.reverse()  # oldest first
        parts = 4
        size = len(series) // parts
        if size == 0:
            return 0.0
        means = [sum(series[k * size : (k + 1) * size]) / size for k in range(parts)]
        rises = [later - earlier for earlier, later in itertools.pairwise(means)]
        # A ramp rises in both halves of the window, and by comparable amounts. A step, which the stable
        # window smears over at most two neighbouring parts, lifts one half only, or the middle, or lifts
        # the newest part far more than a rise before it (a burst of long prompts on a gentle rise). The middle
        # may dip a little: on a noisy swell (chat traffic over an hour) one of three successive rises often
        # does, and a forecast that then never came ordered each gang at 110 %. By more than half the
        # smaller end rise, it is a wobble (up, down, up within minutes), not a ramp.
        ends = min(rises[0], rises[-1])
        if ends <= 0 or ends < max(rises) / 4 or rises[1] < -ends / 2:
            return 0.0
        # Nor is noise a ramp: on a level load the two end rises are both positive one time in four. The
        # whole rise must stand out of the wobble inside the parts (twice their spread about their means).
        deviations = [v - means[k] for k in range(parts) for v in series[k * size : (k + 1) * size]]
        spread = math.sqrt(sum(d * d for d in deviations) / len(deviations))
        if means[-1] - means[0] < 2 * spread:
            return 0.0
        slope = (means[-1] - means[0]) / ((parts - 1) * size * config.panic_window_seconds / 2)
        # A ramp that has stopped is no longer a trend: a flash crowd's steep rise, smeared by the
        # stable window over a few minutes, looks like a ramp until its plateau shows in the newest
        # stable window. Projecting it then orders the next start-up's worth of growth that never
        # comes (24 gangs for a crowd that needs 9). The newest stable window must still rise by at
        # least half the slope's pace.
        back = round(config.stable_window_seconds / (config.panic_window_seconds / 2))
        if back < len(self._stable):
            recent = self._stable[0] - self._stable[back]
            if recent < 0.5 * slope * config.stable_window_seconds:
                return 0.0
        return slope

    def peak(self) -> float:
        return max(max(self._stable, default=0.0), max(self._panic, default=0.0), max(self._ttft, default=0.0))

    def ttft_view(self) -> float:
        """Gangs + 1 if most gangs saw TTFT p95 above the SLO within the panic window, else 0."""
        recent = [
            v
            for end, v in zip(self._ends, self._ttft, strict=True)
            if end > self._now - self._config.panic_window_seconds
        ]
        return max(recent, default=0.0)

    def _ttft_view(self, start: float, end: float) -> float:
        """When most gangs saw TTFT p95 above the SLO, one gang more than were serving then.

        The demand model cannot see bursts shorter than a scrape interval, nor a replica slower
        than its plan; the SLO can. It is kept as a demand over the scale-down window, so that a
        gang ordered for it is not cancelled by the other views a minute later. It needs at least
        half of the serving gangs to miss: one gang stuck with an old backlog (the router does
        not move queued requests) is not helped by another gang.
        """
        slo = self._config.ttft_slo_seconds
        if slo is None:
            return 0.0
        serving = 0
        missing = 0
        for name in self._samples:
            base, inside = self._in(name, start, end)
            if not inside:
                continue
            serving += 1
            missed = any(s.ttft_p95_seconds is not None and s.ttft_p95_seconds > slo for s in inside)
            if missed and self._loaded(name, start, end, base, inside):
                missing += 1
        return float(serving + 1) if serving and 2 * missing >= serving else 0.0

    def _loaded(
        self, name: str, start: float, end: float, base: MetricSample | None, inside: Sequence[MetricSample]
    ) -> bool:
        """Whether the gang was busy enough in (start, end] for a TTFT miss to say it lacked capacity.

        Busy: a request waited in its queue; or, without a queue, its compute ran at half the target or
        more over enough requests (20) that their p95 is not the slowest one's TTFT. A miss on a gang with
        neither is one prompt whose prefill is longer than the SLO, or the tail of a handful of requests:
        another gang does not shorten it, and reading it as capacity ordered a gang in the lulls of an
        on/off load and cut the targets by 40 % for its next burst.
        """
        if any(s.queue_requests >= 1 for s in inside) or (base is not None and base.queue_requests >= 1):
            return True
        arrivals = self._arrivals(name, start, end)
        if arrivals is None:
            return True  # no count to judge by: the miss stands
        busy = arrivals * self._work_per_request / (end - start)
        return arrivals >= TTFT_TAIL_REQUESTS and busy >= 0.5 * self._config.target_utilisation

    def covered(self, window: float | None = None) -> bool:
        """Whether the history reaches back over the window (default: the scale-down window)."""
        span = self._config.scale_down_window_seconds if window is None else window
        oldest = min((times[0] for times in self._times.values()), default=self._now)
        return oldest <= self._now - span + 1e-6

    # -- per gang

    def _in(self, name: str, start: float, end: float) -> tuple[MetricSample | None, list[MetricSample]]:
        """The last sample at or before `start` (the base for counters) and the samples in (start, end]."""
        times = self._times.get(name)
        if not times:
            return None, []
        history = self._samples[name]
        lo = bisect.bisect_right(times, start)
        hi = bisect.bisect_right(times, end)
        return (history[lo - 1] if lo > 0 else None), history[lo:hi]

    def _mean_work_per_request(self, start: float) -> float:
        """Replica-seconds of prefill + decode work per finished request, over all gangs' counters."""
        # The mean request of the recent past prices the requests arriving now: their sizes are not
        # in SGLang's metrics until they finish.
        capacity = self._config.capacity
        work = 0.0
        finished = 0.0
        for name in self._samples:
            base, inside = self._in(name, start, self._now)
            first = base if base is not None else (inside[0] if inside else None)
            if first is None or not inside:
                continue
            last = inside[-1]
            prompt = _delta(first.prompt_tokens_total, last.prompt_tokens_total)
            generated = _delta(first.generation_tokens_total, last.generation_tokens_total)
            requests = _delta(first.requests_total, last.requests_total)
            if prompt is None or generated is None or requests is None:
                continue
            # A prompt's cached prefix skips its prefill: a fleet whose users share prefixes needs fewer
            # gangs. SGLang exports the counter only after the first hit, so a missing one counts as 0.
            cached = _delta(first.cached_tokens_total, last.cached_tokens_total) or 0.0
            work += max(prompt - cached, 0.0) / capacity.prefill_tokens_per_second
            work += generated / capacity.decode_tokens_per_second
            finished += requests
        if finished > 0:
            return work / finished
        return capacity.typical_request_seconds

    def _arrivals(self, name: str, start: float, end: float) -> float | None:
        """Requests that reached the gang in (start, end]: finished + growth of queued and running.

        Counters move only when a request finishes, and a prefill-first engine that is overloaded
        finishes nothing for a while, so the served rate alone reads zero just when demand is
        highest; while a backlog clears, the served rate is above demand. Counting the change of
        what is in flight corrects both. A gang that became ready inside the window starts from
        zero at that moment (it had no traffic before).
        """
        base, inside = self._in(name, start, end)
        if not inside:
            return None
        last = inside[-1]
        if base is None:
            since = self._ready_since.get(name)
            if since is not None and since >= start:
                base = MetricSample(
                    at=since, token_usage=0.0, queue_requests=0.0, running_requests=0.0, requests_total=0.0
                )
            elif len(inside) > 1:
                base = inside[0]
            else:
                return None
        finished = _delta(base.requests_total, last.requests_total)
        if finished is None:
            return None
        in_flight = (last.queue_requests + last.running_requests) - (base.queue_requests + base.running_requests)
        return max(0.0, finished + in_flight)

    def _gang_demand(self, name: str, start: float, end: float, target: float) -> float | None:
        config = self._config
        _, inside = self._in(name, start, end)
        if not inside:
            return None
        usage = sum(s.token_usage for s in inside) / len(inside) / config.target_token_usage
        running_target = config.target_running_fraction * config.capacity.max_running_requests
        running = sum(s.running_requests for s in inside) / len(inside) / running_target
        demand = max(usage, running)
        base, _ = self._in(name, start, end)
        if (
            base is not None
            and inside[-1].queue_requests < base.queue_requests
            and base.queue_requests >= 1.0
        ):
            # A gang clearing a backlog runs requests that arrived before the window, and one with any
            # queue runs at its running-request limit: its running count says how much was late, not
            # how much is arriving, and counting it orders gangs for load already in a queue (the
            # router never moves it to a new gang), however short the queue.
            # Its KV use still counts: where prompts are long the pool, not compute, is what binds.
            demand = usage
        arrivals = self._arrivals(name, start, end)
        if arrivals is not None:
            # Divided by the whole window, so that gangs that served part of it add up correctly.
            demand = max(demand, arrivals * self._work_per_request / (end - start) / target)
        return demand

    def _demand(self, start: float, end: float, target: float) -> float:
        total = 0.0
        for name in self._samples:
            value = self._gang_demand(name, start, end, target)
            if value is not None:
                total += value
        return total

    # -- other signals

    def idle(self, start: float, end: float) -> bool:
        """No request seen anywhere in [start, end]: the only load that allows scaling to zero."""
        for name in self._samples:
            base, window = self._in(name, start, end)
            if any(s.queue_requests > 0 or s.running_requests > 0 for s in window):
                return False
            first = base if base is not None else (window[0] if window else None)
            if first is not None and window:
                moved = _delta(first.requests_total, window[-1].requests_total)
                if moved is None or moved > 0:
                    return False
        return True

    def worst_ttft(self, start: float, end: float) -> float | None:
        values = [
            s.ttft_p95_seconds
            for name in self._ready
            for s in self._in(name, start, end)[1]
            if s.ttft_p95_seconds is not None
        ]
        return max(values, default=None)

    def mean_utilisation(self, start: float, end: float) -> float | None:
        """The share of modelled compute the arriving requests need, per ready gang."""
        counts = [self._arrivals(name, start, end) for name in self._ready]
        known = [c for c in counts if c is not None]
        if not known:
            return None
        return sum(known) * self._work_per_request / (end - start) / len(self._ready)

    def latest_mean(self, attribute: str) -> float | None:
        values = [float(getattr(self._samples[n][-1], attribute)) for n in self._ready if n in self._samples]
        return sum(values) / len(values) if values else None

    def latest_sum(self, attribute: str) -> float | None:
        values = [float(getattr(self._samples[n][-1], attribute)) for n in self._ready if n in self._samples]
        return sum(values) if values else None


def _delta(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or last < first:
        return None
    return last - first
