"""What the policy is shown: scrapes turned into an `Observation`, the same way in the operator and the simulator.

* `parse_sglang_metrics` reads one SGLang ``/metrics`` exposition into a `Scrape` (with the TTFT histogram, and
  the per-request time-per-output-token histogram a decode pool's ITL is read from); `combine` merges the
  scrapes of every pod of a gang that hosts an attention-DP group's scheduler (with DP attention over
  several nodes each node's schedulers export their own groups: queues and running requests add up,
  token usage is the fullest group's, counters and the TTFT histogram (with its sum and count) come from
  the tokenizer on node 0 and add up too);
* `dp_leader_ranks` says which node ranks of a plan host a DP group's first rank, i.e. which pods to scrape;
* `parse_router_metrics` reads sglang-router's own Prometheus metrics: the requests it turned away for
  want of a worker, the only demand a deployment at zero gangs has;
* `ScaleMemory` keeps the history between decisions (samples per gang, the TTFT histogram at the previous
  scrape, when each gang was first seen serving, the last scale-up and scale-down) and builds the
  `Observation` the policy (or a baseline) decides on.

The operator's loop (`mimo_operator.autoscaler`) feeds `ScaleMemory` from HTTP scrapes, the simulator
from its modelled replicas; both then call the same `observe`, and carry out a scale-down in the order of
`removal_order`.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.autoscaling.policy import Decision, Gang, GangPhase, MetricSample, Observation, remember

__all__ = [
    "ROUTER_NO_WORKER_ERROR",
    "TPOT_BUCKETS",
    "TTFT_BUCKETS",
    "Buckets",
    "GangState",
    "RouterScrape",
    "ScaleMemory",
    "Scrape",
    "combine",
    "dp_leader_ranks",
    "histogram_of",
    "p95_between",
    "parse_router_metrics",
    "parse_sglang_metrics",
    "removal_order",
]

# SGLang's default buckets of sglang:time_to_first_token_seconds: the resolution the operator sees TTFT at.
TTFT_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
# sglang-router (0.3.x) answers 503 with this error code when no worker can take a request; it counts them
# in smg_http_responses_total{error_code=...}. It does not queue them: clients retry.
ROUTER_NO_WORKER_ERROR = "no_available_workers"

# SGLang's default buckets of sglang:request_time_per_output_token_seconds (per finished request, (finish − first
# token) / (tokens − 1): the mean ITL the fleet's attainment is measured on) and of its inter-token latency.
TPOT_BUCKETS: tuple[float, ...] = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06,
                                   0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8)

Buckets = tuple[tuple[float, float], ...]  # cumulative (upper bound, count), ascending, +Inf last

# The TTFT histogram's sum and count, cumulative like counters (summed over label sets): the mean TTFT between scrapes.
_TTFT_TOTALS = frozenset({"sglang:time_to_first_token_seconds_sum", "sglang:time_to_first_token_seconds_count"})


@dataclass(frozen=True)
class Scrape:
    """One gang's metrics at one moment: a sample (without its p95s) and the cumulative TTFT and TPOT histograms."""

    sample: MetricSample
    ttft_buckets: Buckets = ()
    tpot_buckets: Buckets = ()


@dataclass(frozen=True)
class RouterScrape:
    """One router pod's counter of requests refused for want of a worker, and its in-flight connections."""

    refused_total: float
    connections: float = 0.0


def parse_sglang_metrics(text: str, at: float) -> Scrape:
    """One SGLang ``/metrics`` exposition → a scrape: queues and running requests summed over the DP
    ranks it shows, the largest token usage, counters and TTFT histogram summed over label sets."""
    gauges: dict[str, list[float]] = {}
    counters: dict[str, float] = {}
    buckets: dict[float, float] = {}
    tpot: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for point in family.samples:
            name = point.name
            if name.startswith("sglang:time_to_first_token_seconds_bucket"):
                le = point.labels.get("le", "+Inf")
                bound = math.inf if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + point.value
            elif name.startswith("sglang:request_time_per_output_token_seconds_bucket"):
                le = point.labels.get("le", "+Inf")
                bound = math.inf if le == "+Inf" else float(le)
                tpot[bound] = tpot.get(bound, 0.0) + point.value
            elif name.endswith("_total") or name in _TTFT_TOTALS:
                counters[name] = counters.get(name, 0.0) + point.value
            else:
                gauges.setdefault(name, []).append(point.value)

    def gauge(name: str, how: str) -> float:
        values = gauges.get(name) or [0.0]
        return max(values) if how == "max" else sum(values)

    usage = gauge("sglang:token_usage", "max")
    if "sglang:token_usage" not in gauges:
        usage = max(gauge("sglang:full_token_usage", "max"), gauge("sglang:swa_token_usage", "max"))
    sample = MetricSample(
        at=at,
        token_usage=usage,
        queue_requests=gauge("sglang:num_queue_reqs", "sum"),
        running_requests=gauge("sglang:num_running_reqs", "sum"),
        prompt_tokens_total=counters.get("sglang:prompt_tokens_total"),
        generation_tokens_total=counters.get("sglang:generation_tokens_total"),
        requests_total=counters.get("sglang:num_requests_total"),
        cached_tokens_total=counters.get("sglang:cached_tokens_total"),
        ttft_seconds_sum=counters.get("sglang:time_to_first_token_seconds_sum"),
        ttft_count=counters.get("sglang:time_to_first_token_seconds_count"),
    )
    return Scrape(sample, tuple(sorted(buckets.items())), tuple(sorted(tpot.items())))


def combine(scrapes: Sequence[Scrape]) -> Scrape:
    """The scrapes of one gang's pods (node 0 first) as one: the gang's whole load."""
    if not scrapes:
        raise ValueError("combine needs at least one scrape")
    first = scrapes[0].sample

    def total(values: Iterable[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    samples = [s.sample for s in scrapes]
    sample = replace(
        first,
        token_usage=max(s.token_usage for s in samples),
        queue_requests=sum(s.queue_requests for s in samples),
        running_requests=sum(s.running_requests for s in samples),
        prompt_tokens_total=total(s.prompt_tokens_total for s in samples),
        generation_tokens_total=total(s.generation_tokens_total for s in samples),
        requests_total=total(s.requests_total for s in samples),
        cached_tokens_total=total(s.cached_tokens_total for s in samples),
        ttft_seconds_sum=total(s.ttft_seconds_sum for s in samples),
        ttft_count=total(s.ttft_count for s in samples),
    )
    merged: dict[float, float] = {}
    tpot: dict[float, float] = {}
    for s in scrapes:
        for le, count in s.ttft_buckets:
            merged[le] = merged.get(le, 0.0) + count
        for le, count in s.tpot_buckets:
            tpot[le] = tpot.get(le, 0.0) + count
    return Scrape(sample, tuple(sorted(merged.items())), tuple(sorted(tpot.items())))


def dp_leader_ranks(
    *, attention_data_parallel: int, attention_tensor_parallel: int, gpus_per_node: int, nodes: int
) -> tuple[int, ...]:
    """The node ranks that host the first GPU of an attention-DP group: whose schedulers export that
    group's metrics. Node 0 is always in (its tokenizer exports the request counters and TTFT)."""
    ranks = {0}
    for group in range(max(1, attention_data_parallel)):
        rank = group * max(1, attention_tensor_parallel) // max(1, gpus_per_node)
        if rank < nodes:
            ranks.add(rank)
    return tuple(sorted(ranks))


def parse_router_metrics(text: str) -> RouterScrape:
    refused = 0.0
    connections = 0.0
    for family in text_string_to_metric_families(text):
        for point in family.samples:
            if point.name == "smg_http_responses_total" and point.labels.get("error_code") == ROUTER_NO_WORKER_ERROR:
                refused += point.value
            elif point.name == "smg_http_connections_active":
                connections += point.value
    return RouterScrape(refused, connections)


def histogram_of(values: Iterable[float], into: Buckets = (), bounds: Sequence[float] = TTFT_BUCKETS) -> Buckets:
    """`into` (cumulative buckets at `bounds`, possibly empty) with `values` observed: SGLang's histogram."""
    finite = tuple(bounds)
    counts = [0.0] * (len(finite) + 1)
    for le, count in into:
        index = len(finite) if math.isinf(le) else finite.index(le)
        counts[index] = count
    every = (*finite, math.inf)
    for value in values:
        for index in range(bisect.bisect_left(finite, value), len(every)):
            counts[index] += 1
    return tuple(zip(every, counts, strict=True))


def p95_between(before: Buckets | None, after: Buckets) -> float | None:
    """The 95th percentile (TTFT or TPOT) over the requests seen between two scrapes (its bucket's upper bound)."""
    if not after:
        return None
    prev = dict(before or ())
    deltas = [(le, count - prev.get(le, 0.0)) for le, count in after]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for le, count in deltas:
        if count >= 0.95 * total:
            return le if math.isfinite(le) else None
    return None


@dataclass(frozen=True)
class GangState:
    """A gang as whoever runs the loop sees it at one moment: its phase and the times that phase dates from."""

    name: str
    phase: GangPhase
    created: float
    drain_started: float | None = None


def removal_order(
    gangs: Sequence[GangState], remove_first: Sequence[str] = (), index: Mapping[str, int] | None = None
) -> list[str]:
    """The order in which a scale-down takes gangs out, as the operator's steps planner does: gangs that
    have never served (starting) first, then the policy's choice (`Decision.remove`) in its order, then
    the highest replica index (`index`; without one, the newest). Draining gangs are already going."""
    rank = {name: i for i, name in enumerate(remove_first)}
    slots = index or {}

    def key(g: GangState) -> tuple[int, int, float, float, str]:
        serving = 1 if g.phase is GangPhase.READY else 0
        return (serving, rank.get(g.name, len(rank)), -slots.get(g.name, -1), -g.created, g.name)

    return [g.name for g in sorted((g for g in gangs if g.phase is not GangPhase.DRAINING), key=key)]


@dataclass
class ScaleMemory:
    """What the loop keeps between decisions; never the source of truth (an operator restart refills it)."""

    history_seconds: float
    samples: dict[str, deque[MetricSample]] = field(default_factory=dict)
    ttft_buckets: dict[str, Buckets] = field(default_factory=dict)
    tpot_buckets: dict[str, Buckets] = field(default_factory=dict)
    # When this loop first saw a gang serve, for gangs it saw starting: their counters start at zero there.
    serving_since: dict[str, float] = field(default_factory=dict)
    seen_starting: set[str] = field(default_factory=set)
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    router_refused: float | None = None
    # The policy's demand at each decision (`policy.remember`), longer than the samples: recurring bursts.
    demand_history: tuple[tuple[float, float], ...] = ()

    def record(self, gang: str, scrape: Scrape) -> None:
        """One gang's scrape; its TTFT (and TPOT) p95 is that of the requests since the gang's previous scrape."""
        p95 = p95_between(self.ttft_buckets.get(gang), scrape.ttft_buckets)
        self.ttft_buckets[gang] = scrape.ttft_buckets
        sample = replace(scrape.sample, ttft_p95_seconds=p95)
        if scrape.tpot_buckets:
            tpot = p95_between(self.tpot_buckets.get(gang), scrape.tpot_buckets)
            self.tpot_buckets[gang] = scrape.tpot_buckets
            sample = replace(sample, tpot_p95_seconds=tpot)
        self.samples.setdefault(gang, deque()).append(sample)

    def pending(self, routers: Sequence[RouterScrape] | None) -> int | None:
        """Requests the routers turned away for want of a gang since the previous scrape; None when unknown
        (no router read, or the first read since this loop started)."""
        if routers is None:
            return None
        refused = sum(r.refused_total for r in routers)
        before, self.router_refused = self.router_refused, refused
        if before is None:
            return None
        # A router restart resets its counter: what it shows now is all new.
        return int(refused - before) if refused >= before else int(refused)

    def decided(self, decision: Decision, now: float) -> None:
        """A decision was taken: its demand joins the history the next observation carries."""
        self.demand_history = remember(self.demand_history, decision, now)

    def scaled(self, desired: int, current: int, now: float) -> None:
        """A decision was carried out (the desired count changed): what the policy's blockers read."""
        if desired > current:
            self.last_scale_up_at = now
        elif desired < current:
            self.last_scale_down_at = now

    def observe(self, now: float, gangs: Sequence[GangState], pending_requests: int | None) -> Observation:
        """The policy's view: gangs with the time their phase began, and the recent samples of every gang."""
        horizon = now - self.history_seconds
        for name in list(self.samples):
            history = self.samples[name]
            while history and history[0].at < horizon:
                history.popleft()
            if not history:
                del self.samples[name]
                self.ttft_buckets.pop(name, None)
                self.tpot_buckets.pop(name, None)
        live = {g.name for g in gangs}
        for name in list(self.serving_since):
            if name not in live:
                del self.serving_since[name]
        self.seen_starting &= live
        out = []
        for g in gangs:
            since = g.created
            if g.phase is GangPhase.STARTING:
                self.seen_starting.add(g.name)
            elif g.phase is GangPhase.READY:
                if g.name in self.seen_starting:
                    since = self.serving_since.setdefault(g.name, now)
            elif g.drain_started is not None:
                since = g.drain_started
            out.append(Gang(g.name, g.phase, since))
        return Observation(
            now=now,
            gangs=tuple(out),
            samples={k: tuple(v) for k, v in self.samples.items()},
            last_scale_up_at=self.last_scale_up_at,
            last_scale_down_at=self.last_scale_down_at,
            pending_requests=pending_requests,
            demand_history=self.demand_history,
        )
