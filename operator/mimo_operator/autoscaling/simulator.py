"""A virtual-time simulator of a fleet of gangs behind a router, driven by a request trace.

It runs an autoscaler (our policy or a baseline) against the trace and reports what users and the bill
would see: per-request TTFT and ITL, GPU-hours (every GPU of every gang, from its creation through
start-up, serving and drain), and scale events. Hours of traffic take seconds of CPU, because it is
event-driven: a replica costs work only when a request arrives, a prefill batch ends or a request
finishes, never per decode step.

Each replica follows the engine's semantics (SGLang's scheduler, as the simulated engine models it):

* a waiting queue, admitted first-come-first-served while the KV pool can hold the request's prompt and
  its output, the sliding-window pool has room for one more sequence, and the running-request limit
  is not reached;
* prefill first: while requests can be admitted, the replica runs prefill batches of up to
  `chunked_prefill_size` new tokens and decoding waits; the first token is out when a request's
  prefill ends;
* otherwise one decode step at a time for every running request, each step taking
  `decode_step_seconds(batch, kv_tokens)`. Decode progress is tracked as a per-replica counter of
  tokens each running sequence has produced (the virtual-time trick of fair queueing), so a request's
  finish is an event in a heap, not a loop over steps.

Prompts that share a prefix (a trace's `segments`: a system prompt, a document, a conversation's earlier
turns) hit each replica's prefix cache, the simulated engine's own model (`prefix_cache.RadixCache`): the
cached pages skip their prefill, stay in the KV pool while unused and are evicted least recently used
first when admission needs the room; the replica's `sglang:cached_tokens_total` reaches the policy.

The router sends each request to the ready replica with the fewest requests outstanding, round robin,
or as sglang-router's `cache_aware` (the replica whose routed prompts share the longest prefix).
Requests that arrive with no ready replica wait at the router. A draining gang leaves the router at once,
finishes what it holds (or is cut at the drain timeout, which fails the rest) and then stops counting GPU
time.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from mimo_operator.autoscaling.capacity import PerformanceModel
from mimo_operator.autoscaling.config import SCRAPE_INTERVAL_SECONDS
from mimo_operator.autoscaling.observation import (
    Buckets,
    GangState,
    RouterScrape,
    ScaleMemory,
    Scrape,
    histogram_of,
    removal_order,
)
from mimo_operator.autoscaling.policy import (
    Decision,
    GangPhase,
    MetricSample,
    Observation,
    ReplicaCapacity,
)
from mimo_operator.autoscaling.prefix_cache import CacheNode, RadixCache, segment_blocks
from mimo_operator.autoscaling.trace import Trace

__all__ = [
    "Autoscaler",
    "FleetConfig",
    "PerformanceModel",
    "PolicyResult",
    "Router",
    "Tick",
    "TimelinePoint",
    "request_work_seconds",
    "simulate",
    "trace_blocks",
]


class Autoscaler(Protocol):
    """Anything that turns an observation into a decision: our policy or a baseline."""

    @property
    def name(self) -> str: ...

    def decide(self, observation: Observation) -> Decision: ...


class Router:
    LEAST_OUTSTANDING = "least-outstanding"
    ROUND_ROBIN = "round-robin"
    # sglang-router's cache_aware with its defaults (--cache-threshold 0.3, --balance-abs-threshold 64,
    # --balance-rel-threshold 1.5), as mimo_worker.simengine.fleet emulates it.
    CACHE_AWARE = "cache-aware"
    ALL = (LEAST_OUTSTANDING, ROUND_ROBIN, CACHE_AWARE)


@dataclass(frozen=True)
class FleetConfig:
    performance: PerformanceModel
    startup_seconds: float  # from a gang's creation to serving
    ttft_slo_seconds: float
    itl_slo_seconds: float
    initial_replicas: int = 1  # ready at t = 0: the fleet was running before the trace starts
    decision_interval_seconds: float = SCRAPE_INTERVAL_SECONDS  # scrape + decide, as often as the operator
    history_seconds: float = 420.0  # metric history handed to the autoscaler
    drain_timeout_seconds: float = 600.0
    router: str = Router.LEAST_OUTSTANDING
    prefix_cache: bool = True  # SGLang's radix cache (on by default in SGLang), for traces with segments
    # False: the policy is not shown sglang:cached_tokens_total (a bench's what-if: a policy blind to caching)
    report_cached_tokens: bool = True


@dataclass(frozen=True)
class Tick:
    """What one decision saw and did, for a caller that wants to replay it (the operator-parity test)."""

    at: float
    gangs: tuple[GangState, ...]
    scrapes: Mapping[str, Scrape]  # per ready gang, what its /metrics would have shown
    router_refused_total: float  # the router's counter of requests that found no gang
    index: Mapping[str, int]  # each live gang's replica slot
    decision: Decision
    current: int  # gangs ready or starting before the decision
    removed: tuple[str, ...]  # gangs taken out by this decision, in order


@dataclass(frozen=True)
class TimelinePoint:
    at: float
    arrivals_per_second: float
    prompt_tokens_per_second: float
    ready: int
    starting: int
    draining: int
    desired: int
    ttft_p95_seconds: float | None  # over requests whose first token came in this interval


@dataclass(frozen=True)
class PolicyResult:
    name: str
    requests: int
    ttft_attainment: float
    itl_attainment: float
    gpu_hours: float
    scale_events: int
    gangs_started: int
    gangs_drained: int
    failed_requests: int
    ttft_p50_seconds: float
    ttft_p99_seconds: float
    itl_p99_seconds: float
    peak_replicas: int
    virtual_seconds: float
    cpu_seconds: float
    timeline: tuple[TimelinePoint, ...] = field(repr=False)
    ttft_p95_seconds: float = math.nan
    prefix_hit_rate: float = 0.0  # prompt tokens the gangs' prefix caches supplied, of all prompt tokens served

    def summary(self) -> dict[str, float | int]:
        return {
            "ttftAttainment": round(self.ttft_attainment, 5),
            "itlAttainment": round(self.itl_attainment, 5),
            "gpuHours": round(self.gpu_hours, 3),
            "scaleEvents": self.scale_events,
            "gangsStarted": self.gangs_started,
            "gangsDrained": self.gangs_drained,
            "failedRequests": self.failed_requests,
            "requests": self.requests,
            "ttftP50Seconds": round(self.ttft_p50_seconds, 4),
            "ttftP99Seconds": round(self.ttft_p99_seconds, 4),
            "itlP99Seconds": round(self.itl_p99_seconds, 5),
            "peakReplicas": self.peak_replicas,
            "prefixHitRate": round(self.prefix_hit_rate, 4),
            "cpuSeconds": round(self.cpu_seconds, 3),
        }


# The page keys of the last trace's prompts: a bench runs a dozen autoscalers on one trace, and hashing every
# prompt's pages is most of a run's CPU time. One entry, so memory stays that of one run.
_BLOCKS: list[tuple[Trace, int, list[tuple[int, ...]]]] = []


def trace_blocks(trace: Trace, page_size: int) -> list[tuple[int, ...]]:
    """Each request's prompt page keys (`prefix_cache.segment_blocks`; empty without segments)."""
    if _BLOCKS and _BLOCKS[0][0] is trace and _BLOCKS[0][1] == page_size:
        return _BLOCKS[0][2]
    blocks = [
        segment_blocks(r.segments, r.context_tokens, page_size, str(i)) if r.segments else ()
        for i, r in enumerate(trace.requests)
    ]
    _BLOCKS[:] = [(trace, page_size, blocks)]
    return blocks


def request_work_seconds(capacity: ReplicaCapacity) -> Callable[[int, int], float]:
    """Replica-seconds one request costs (prefill + its share of decode), by the capacity summary."""
    prefill = capacity.prefill_tokens_per_second
    decode = capacity.decode_tokens_per_second

    def work(context_tokens: int, generated_tokens: int) -> float:
        return context_tokens / prefill + generated_tokens / decode

    return work


# --- the engine of one replica -------------------------------------------------------------------

_EPS = 1e-9


class _Replica:
    __slots__ = (
        "cache",
        "cached_total",
        "chunks",
        "created",
        "ctx_sum",
        "decode_heap",
        "drain_deadline",
        "ended",
        "epoch",
        "finished_total",
        "generated_total",
        "index",
        "last_t",
        "name",
        "partial",
        "partial_done",
        "phase",
        "prefill_tokens",
        "prefilling",
        "progress",
        "prompt_total",
        "ready_at",
        "reserved",
        "routed",
        "since",
        "start_sum",
        "step",
        "tpot_buckets",
        "tpots",
        "tree_running",
        "tree_tokens",
        "ttft_buckets",
        "ttft_count",
        "ttft_sum",
        "ttfts",
        "waiting",
    )

    def __init__(self, name: str, created: float, ready_at: float, phase: GangPhase) -> None:
        self.name = name
        self.created = created
        self.ready_at = ready_at
        self.phase = phase
        self.since = created if phase is GangPhase.STARTING else ready_at
        self.ended: float | None = None
        self.drain_deadline = math.inf
        self.waiting: deque[int] = deque()
        self.chunks: list[tuple[int, int, int]] = []  # the prefill step running: (request, new, cached)
        self.prefill_tokens = 0  # KV the running prefill step holds
        self.partial = -1  # the request whose prompt is half-prefilled (chunked prefill), if any
        self.partial_done = 0
        self.prefilling = False
        self.decode_heap: list[tuple[float, int]] = []
        self.progress = 0.0
        self.last_t = created
        self.step = 0.0
        self.epoch = 0
        self.reserved = 0
        self.ctx_sum = 0
        self.start_sum = 0.0
        self.prompt_total = 0
        self.generated_total = 0
        self.finished_total = 0
        self.ttfts: list[float] = []
        self.ttft_sum = 0.0  # sglang:time_to_first_token_seconds_sum and _count
        self.ttft_count = 0
        self.ttft_buckets: Buckets = ()
        self.tpots: list[float] = []  # per finished request: (finish − first token) / (tokens − 1)
        self.tpot_buckets: Buckets = ()
        self.index = 0
        self.cache: RadixCache | None = None
        self.cached_total = 0  # sglang:cached_tokens_total (of finished requests, as prompt_total)
        self.tree_running = 0  # prompt tokens of decoding requests that sit in the cache (counted once there)
        self.routed: set[int] = set()  # cache_aware: page keys of the prompts routed here
        self.tree_tokens = 0  # cache_aware: prompt tokens routed here

    def outstanding(self) -> int:
        return len(self.waiting) + len(self.chunks) + len(self.decode_heap)

    def empty(self) -> bool:
        return not self.waiting and not self.chunks and not self.decode_heap and self.partial < 0


@dataclass
class _Seen:
    """What one scrape of the fleet saw: the input of a decision."""

    router_refused_total: float
    ttfts: list[float] = field(default_factory=list)  # first tokens since the previous tick, fleet-wide
    scrapes: dict[str, Scrape] = field(default_factory=dict)
    gangs: tuple[GangState, ...] = ()
    observation: Observation = field(default_factory=lambda: Observation(0.0, (), {}))


# Event kinds, ordered so that at equal times engine events come before the autoscaler tick.
_PREFILL_DONE = 0
_DECODE = 1
_GANG_READY = 2
_DRAIN_DEADLINE = 3
_TICK = 4


@dataclass
class _Run:
    trace: Trace
    fleet: FleetConfig
    autoscaler: Autoscaler
    arrival: list[float] = field(default_factory=list)
    context: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)


def simulate(
    trace: Trace, fleet: FleetConfig, autoscaler: Autoscaler, *, on_tick: Callable[[Tick], None] | None = None
) -> PolicyResult:
    """Replay `trace` against a fleet scaled by `autoscaler`; see the module docstring."""
    clock = time.process_time()
    engine = _Engine(trace, fleet, autoscaler, on_tick)
    engine.run()
    return engine.result(time.process_time() - clock)


class _Engine:
    # Gang names are "<prefix>-<serial>": a PD fleet's two pools name theirs apart.
    gang_prefix = "gang"

    def __init__(
        self, trace: Trace, fleet: FleetConfig, autoscaler: Autoscaler, on_tick: Callable[[Tick], None] | None = None
    ) -> None:
        self.on_tick = on_tick
        self.trace = trace
        self.fleet = fleet
        self.autoscaler = autoscaler
        self.perf = fleet.performance
        n = len(trace.requests)
        self.arrival = [r.arrival for r in trace.requests]
        self.context = [r.context_tokens for r in trace.requests]
        self.generated = [max(1, r.generated_tokens) for r in trace.requests]
        self.first_token = [math.nan] * n
        self.finish = [math.nan] * n
        self.failed = [False] * n
        # The replica's decode progress when each request started decoding: with the sum of these,
        # the KV tokens in use are known in O(1) (context + progress since the start, per sequence).
        self.decode_start = [0.0] * n
        # Prefix caching: each request's page keys, cached tokens, cached path and private KV.
        self.page = self.perf.page_size
        self.use_cache = fleet.prefix_cache and any(r.segments for r in trace.requests)
        self.blocks: list[tuple[int, ...]] = trace_blocks(trace, self.page) if self.use_cache else [()] * n
        self.cached = [0] * n
        self.private = [0] * n
        self.paths: dict[int, list[CacheNode]] = {}
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.replicas: list[_Replica] = []
        self.serving: list[_Replica] = []  # ready replicas, in the router
        self.pending: deque[int] = deque()  # requests waiting at the router with no ready replica
        # The operator's memory between decisions, fed from the modelled replicas instead of HTTP.
        self.memory = ScaleMemory(history_seconds=fleet.history_seconds)
        self.refused_total = 0  # requests that found no ready gang (the router's 503 counter)
        self.next_name = 0
        self.rr = 0
        self.scale_events = 0
        self.gangs_started = 0
        self.gangs_drained = 0
        self.timeline: list[TimelinePoint] = []
        self.last_tick = 0.0
        self.arrived_since_tick = 0
        self.prompt_since_tick = 0
        self.horizon = trace.span_seconds
        # Per-request limits from the plan.
        self.kv_capacity = self.perf.max_total_num_tokens
        self.max_running = self.perf.max_running_requests
        self.swa_per_seq = self.perf.swa_window + self.perf.page_size
        self.swa_capacity = self.perf.swa_max_tokens
        self.chunk = max(1, self.perf.chunked_prefill_size)
        self.context_limit = self.perf.context_length
        groups = max(1, int(getattr(self.perf, "attention_data_parallel", 1)))
        self.lockstep_decode = (groups - 1) / groups
        for _ in range(max(0, fleet.initial_replicas)):
            replica = self._new_replica(0.0, GangPhase.READY)
            self.serving.append(replica)

    # -- plumbing

    def _push(self, at: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, kind, self.seq, payload))

    def _new_replica(self, now: float, phase: GangPhase) -> _Replica:
        name = f"{self.gang_prefix}-{self.next_name}"
        self.next_name += 1
        ready_at = now if phase is GangPhase.READY else now + self.fleet.startup_seconds
        replica = _Replica(name, now, ready_at, phase)
        if self.use_cache:
            replica.cache = RadixCache(self.page)
        # Replica indexes are slots, as the operator's: a new gang fills the lowest free one.
        taken = {r.index for r in self.replicas if r.ended is None and r.phase is not GangPhase.DRAINING}
        replica.index = next(k for k in range(len(taken) + 1) if k not in taken)
        self.replicas.append(replica)
        return replica

    # -- main loop

    def run(self) -> None:
        arrival = self.arrival
        n = len(arrival)
        self._push(0.0, _TICK, None)
        i = 0
        events = self.events
        while i < n or events:
            if i < n and (not events or arrival[i] < events[0][0]):
                # Requests arriving at the same moment are all queued before a replica plans its
                # next pass, as the engine admits everything that has arrived.
                now = arrival[i]
                touched: list[_Replica] = []
                while i < n and arrival[i] == now:
                    replica = self._arrive(i, now)
                    if replica is not None and replica not in touched:
                        touched.append(replica)
                    i += 1
                for replica in touched:
                    if not replica.prefilling:
                        self._kick(replica, now)
                continue
            at, kind, _, payload = heapq.heappop(events)
            if kind == _TICK:
                self._tick(at)
                if i < n or at < self.horizon or self.busy():
                    self._push(at + self.fleet.decision_interval_seconds, _TICK, None)
            else:
                self._handle(kind, payload, at)
        self._close(max(self.horizon, max((t for t in self.finish if not math.isnan(t)), default=0.0)))

    def _handle(self, kind: int, payload: object, at: float) -> None:
        """One engine event (everything but the autoscaler's tick)."""
        if kind == _DECODE:
            replica, epoch = cast(tuple[_Replica, int], payload)
            if replica.epoch == epoch:
                self._kick(replica, at)
        elif kind == _PREFILL_DONE:
            self._prefill_done(cast(_Replica, payload), at)
        elif kind == _GANG_READY:
            self._gang_ready(cast(_Replica, payload), at)
        elif kind == _DRAIN_DEADLINE:
            self._drain_deadline(cast(_Replica, payload), at)

    def busy(self) -> bool:
        """Whether a live gang holds requests or requests wait at the router."""
        return any(not r.empty() for r in self.replicas if r.ended is None) or bool(self.pending)

    def _close(self, end: float) -> None:
        """The run is over: gangs still up stop counting at `end`."""
        for replica in self.replicas:
            if replica.ended is None:
                replica.ended = end

    # -- requests

    def _arrive(self, i: int, now: float) -> _Replica | None:
        """Route one request; the replica that queued it (to be kicked), or None."""
        self.arrived_since_tick += 1
        self.prompt_since_tick += self.context[i]
        if self.context[i] + self.generated[i] > self.context_limit:
            self.failed[i] = True
            return None
        if not self.serving:
            # The router refuses it (503, no available workers); the client retries until a gang serves.
            self.refused_total += 1
            self.pending.append(i)
            return None
        replica = self._route(i)
        replica.waiting.append(i)
        return replica

    def _route(self, i: int) -> _Replica:
        serving = self.serving
        if self.fleet.router == Router.CACHE_AWARE:
            target = self._cache_aware(i)
            target.routed.update(self.blocks[i])
            target.tree_tokens += self.context[i]
            return target
        if self.fleet.router == Router.ROUND_ROBIN:
            self.rr = (self.rr + 1) % len(serving)
            return serving[self.rr]
        best = serving[0]
        best_load = best.outstanding()
        for replica in serving[1:]:
            load = replica.outstanding()
            if load < best_load:
                best, best_load = replica, load
        return best

    def _cache_aware(self, i: int) -> _Replica:
        serving = self.serving
        loads = [r.outstanding() for r in serving]
        low, high = min(loads), max(loads)
        if high - low > 64 and high > 1.5 * low:
            return serving[loads.index(low)]
        blocks = self.blocks[i]
        best, matched = serving[0], -1
        for replica in serving:
            depth = 0
            while depth < len(blocks) and blocks[depth] in replica.routed:
                depth += 1
            if depth > matched:
                best, matched = replica, depth
        if matched * self.page / max(self.context[i], 1) > 0.3:
            return best
        return min(serving, key=lambda r: r.tree_tokens)

    # -- the prefix cache of one replica

    def _match(self, replica: _Replica, i: int, now: float) -> int:
        """Lock the longest cached prefix of request `i` (at least one prompt token is computed, as in
        SGLang and the simulated engine); the tokens it saves."""
        cache = replica.cache
        if cache is None or not self.blocks[i]:
            return 0
        usable = min(len(self.blocks[i]), (self.context[i] - 1) // self.page)
        path = cache.match(self.blocks[i][:usable], now)
        cache.lock(path)
        self.paths[i] = path
        self.cached[i] = len(path) * self.page
        return self.cached[i]

    def _unmatch(self, replica: _Replica, i: int, now: float) -> None:
        path = self.paths.pop(i, None)
        if path and replica.cache is not None:
            replica.cache.unlock(path, now)
        self.cached[i] = 0

    def _cache_prompt(self, replica: _Replica, i: int, now: float) -> None:
        """Put a prefilled prompt's whole pages into the cache: its own copy of them moves to the cache
        (or is freed where another request cached the same pages first)."""
        path = self.paths.get(i)
        if replica.cache is None or path is None:
            return
        usable = min(len(self.blocks[i]), self.context[i] // self.page)
        have = len(path)
        replica.cache.extend(path, self.blocks[i][have:usable], now)
        moved = (len(path) - have) * self.page
        self.private[i] -= moved
        replica.reserved -= moved

    def _finished(self, replica: _Replica, i: int, now: float) -> None:
        replica.reserved -= self.private[i]
        replica.prompt_total += self.context[i]
        replica.generated_total += self.generated[i]
        replica.cached_total += self.cached[i]
        replica.finished_total += 1
        path = self.paths.pop(i, None)
        if path and replica.cache is not None:
            replica.cache.unlock(path, now)

    def _tree_tokens(self, replica: _Replica) -> int:
        return replica.cache.total_tokens if replica.cache is not None else 0

    # -- one replica's scheduler

    def _advance(self, replica: _Replica, now: float) -> None:
        """Move decode progress to `now` (decode runs unless a prefill batch holds the replica)."""
        if replica.decode_heap and not replica.prefilling and replica.step > 0:
            replica.progress += (now - replica.last_t) / replica.step
        replica.last_t = now

    def _kick(self, replica: _Replica, now: float) -> None:
        """Bring the replica up to `now` and schedule its next event."""
        self._advance(replica, now)
        heap = replica.decode_heap
        finish = self.finish
        while heap and heap[0][0] <= replica.progress + _EPS:
            _, i = heapq.heappop(heap)
            finish[i] = now
            replica.ctx_sum -= self.context[i]
            replica.start_sum -= self.decode_start[i]
            replica.tree_running -= len(self.paths.get(i, ())) * self.page
            self._finished(replica, i, now)
        replica.epoch += 1
        if replica.prefilling:
            return
        if (replica.waiting or replica.partial >= 0) and self._start_prefill(replica, now):
            return
        if heap:
            kv = replica.ctx_sum + len(heap) * replica.progress - replica.start_sum
            replica.step = self.perf.decode_step_seconds(len(heap), max(0, int(kv)))
            wait = (heap[0][0] - replica.progress) * replica.step
            self._push(now + max(wait, 0.0), _DECODE, (replica, replica.epoch))
        elif replica.phase is GangPhase.DRAINING and replica.empty():
            self._end_drain(replica, now)

    def _cut(self, remaining: int, budget: int) -> int:
        """The next piece of a prompt that fits the step's budget; a cut falls on a page boundary."""
        tokens = min(remaining, budget)
        page = self.perf.page_size
        if tokens < remaining and tokens > page:
            tokens -= tokens % page
        return tokens

    def _start_prefill(self, replica: _Replica, now: float) -> bool:
        """Plan one prefill step (the engine's rules); False when nothing can be prefilled."""
        budget = self.chunk
        chunks: list[tuple[int, int, int]] = []  # (request, new tokens, tokens already computed)
        context = self.context
        mid_chunk = False
        if replica.partial >= 0:  # a half-prefilled prompt continues first
            i, done = replica.partial, replica.partial_done
            tokens = self._cut(context[i] - done, budget)
            chunks.append((i, tokens, done))
            budget -= tokens
            mid_chunk = done + tokens < context[i]
        if not mid_chunk:
            waiting = replica.waiting
            admitted = len(replica.decode_heap) + len(chunks)
            swa_free = self.swa_capacity - admitted * self.swa_per_seq - sum(c[1] for c in chunks)
            while waiting and budget > 0 and admitted < self.max_running:
                i = waiting[0]
                cached = self._match(replica, i, now)
                need = self._pages(context[i]) - cached + self.generated[i]
                short = replica.reserved + self._tree_tokens(replica) + need - self.kv_capacity
                if short > 0 and replica.cache is not None:
                    replica.cache.evict(short)  # cached pages nobody uses are room, least recently used first
                    short = replica.reserved + self._tree_tokens(replica) + need - self.kv_capacity
                if short > 0:
                    self._unmatch(replica, i, now)
                    if admitted == 0:  # can never fit this replica's pool: refused
                        waiting.popleft()
                        self.failed[i] = True
                        continue
                    break  # head-of-line blocking, as SGLang's FCFS admission
                tokens = self._cut(context[i] - cached, min(budget, swa_free - self.swa_per_seq))
                if tokens <= 0:
                    self._unmatch(replica, i, now)
                    break
                waiting.popleft()
                replica.reserved += need
                self.private[i] = need
                chunks.append((i, tokens, cached))
                admitted += 1
                budget -= tokens
                swa_free -= tokens + self.swa_per_seq
                if cached + tokens < context[i]:
                    break  # this request is now the one mid-chunk
        if not chunks:
            return False
        prefill = self.perf.prefill_seconds
        replica.chunks = chunks
        replica.prefill_tokens = sum(done + tokens for _, tokens, done in chunks)
        replica.prefilling = True
        # One forward pass: the new tokens of every chunk go through the model together (one fixed
        # cost), and each chunk attends to its own cached context (the simulated engine's rule).
        seconds = prefill(sum(tokens for _, tokens, _ in chunks), 0)
        seconds += sum(max(prefill(tokens, done) - prefill(tokens, 0), 0.0) for _, tokens, done in chunks if done)
        self._push(now + max(seconds, 1e-6), _PREFILL_DONE, replica)
        return True

    def _pages(self, tokens: int) -> int:
        page = self.perf.page_size
        return -(-tokens // page) * page

    def _prefill_done(self, replica: _Replica, now: float) -> None:
        replica.prefilling = False
        replica.last_t = now  # decode was paused for the prefill step
        if replica.decode_heap:
            # With attention data parallelism the groups step in lockstep, and a group with nothing
            # to prefill decodes in the same pass: on average (dp − 1) / dp of a token per sequence.
            replica.progress += self.lockstep_decode
        replica.partial = -1
        for i, tokens, done in replica.chunks:
            if done + tokens < self.context[i]:
                replica.partial, replica.partial_done = i, done + tokens
                continue
            self.first_token[i] = now
            replica.ttfts.append(now - self.arrival[i])
            self._cache_prompt(replica, i, now)
            remaining = self.generated[i] - 1
            if remaining <= 0:
                self.finish[i] = now
                self._finished(replica, i, now)
                continue
            heapq.heappush(replica.decode_heap, (replica.progress + remaining, i))
            replica.tree_running += len(self.paths.get(i, ())) * self.page
            replica.ctx_sum += self.context[i]
            replica.start_sum += replica.progress
            self.decode_start[i] = replica.progress
        replica.chunks = []
        replica.prefill_tokens = 0
        self._kick(replica, now)

    # -- gangs

    def _gang_ready(self, replica: _Replica, now: float) -> None:
        if replica.phase is not GangPhase.STARTING:
            return  # cancelled while starting
        replica.phase = GangPhase.READY
        replica.since = now
        replica.last_t = now
        self.serving.append(replica)
        while self.pending:
            i = self.pending.popleft()
            target = self._route(i)
            target.waiting.append(i)
        for target in self.serving:
            if target.waiting and not target.prefilling:
                self._kick(target, now)

    def _drain(self, replica: _Replica, now: float) -> None:
        self.serving.remove(replica)
        replica.phase = GangPhase.DRAINING
        replica.since = now
        self.gangs_drained += 1
        if replica.empty() and not replica.prefilling:
            self._end_drain(replica, now)
        else:
            replica.drain_deadline = now + self.fleet.drain_timeout_seconds
            self._push(replica.drain_deadline, _DRAIN_DEADLINE, replica)

    def _drain_deadline(self, replica: _Replica, now: float) -> None:
        if replica.ended is not None:
            return
        self._advance(replica, now)
        cut = list(replica.waiting) + [c[0] for c in replica.chunks] + [i for _, i in replica.decode_heap]
        if replica.partial >= 0:
            cut.append(replica.partial)
        for i in cut:
            self.failed[i] = True
        replica.waiting.clear()
        replica.chunks = []
        replica.partial = -1
        replica.decode_heap = []
        replica.prefilling = False
        replica.epoch += 1
        self._end_drain(replica, now)

    def _end_drain(self, replica: _Replica, now: float) -> None:
        if replica.ended is None:
            replica.ended = now

    # -- the autoscaler

    def _scrape(self, replica: _Replica, now: float) -> Scrape:
        """What the replica's /metrics would show now (TTFT as SGLang's cumulative histogram)."""
        self._advance(replica, now)
        running = len(replica.decode_heap)
        kv = replica.ctx_sum + running * replica.progress - replica.start_sum + replica.prefill_tokens
        if replica.cache is not None:
            # A cached prefix is in the pool once however many running requests read it; pages no
            # request uses are free to SGLang's token_usage.
            kv += replica.cache.protected_tokens - replica.tree_running
        sequences = running + len(replica.chunks)
        full = kv / self.kv_capacity if self.kv_capacity else 0.0
        swa = sequences * self.perf.swa_window / self.swa_capacity if self.swa_capacity else 0.0
        replica.ttft_buckets = histogram_of(replica.ttfts, replica.ttft_buckets)
        replica.ttft_sum += sum(replica.ttfts)
        replica.ttft_count += len(replica.ttfts)
        replica.ttfts = []
        sample = MetricSample(
            at=now,
            token_usage=min(1.0, max(full, swa)),
            queue_requests=float(len(replica.waiting)),
            running_requests=float(sequences),
            prompt_tokens_total=float(replica.prompt_total),
            generation_tokens_total=float(replica.generated_total),
            requests_total=float(replica.finished_total),
            ttft_seconds_sum=replica.ttft_sum,
            ttft_count=float(replica.ttft_count),
            cached_tokens_total=(
                float(replica.cached_total) if replica.cache is not None and self.fleet.report_cached_tokens else None
            ),
        )
        return Scrape(sample, replica.ttft_buckets)

    def _tick(self, now: float) -> None:
        seen = self._observe(now, float(self.refused_total))
        tick = self._carry_out(seen, self.autoscaler.decide(seen.observation), now)
        if self.on_tick is not None:
            self.on_tick(tick)

    def _observe(self, now: float, router_refused_total: float) -> _Seen:
        """Scrape every ready gang into the memory and build the observation, as the operator's loop does."""
        seen = _Seen(router_refused_total)
        for replica in self.serving:
            seen.ttfts.extend(replica.ttfts)
            seen.scrapes[replica.name] = scrape = self._scrape(replica, now)
            self.memory.record(replica.name, scrape)
        seen.gangs = self._gang_states()
        seen.observation = self.memory.observe(
            now, seen.gangs, self.memory.pending([RouterScrape(router_refused_total)])
        )
        return seen

    def _carry_out(self, seen: _Seen, decision: Decision, now: float) -> Tick:
        """Carry out a decision on what `_observe` saw, and record the interval in the timeline."""
        self.memory.decided(decision, now)
        gangs = seen.gangs
        current = sum(1 for g in gangs if g.phase is not GangPhase.DRAINING)
        index = {r.name: r.index for r in self.replicas if r.ended is None}
        removed = self._apply(decision, now)
        tick = Tick(now, gangs, seen.scrapes, seen.router_refused_total, index, decision, current, removed)
        fleet_ttfts = seen.ttfts
        interval = max(now - self.last_tick, _EPS)
        ready = sum(1 for r in self.replicas if r.ended is None and r.phase is GangPhase.READY)
        starting = sum(1 for r in self.replicas if r.ended is None and r.phase is GangPhase.STARTING)
        draining = sum(1 for r in self.replicas if r.ended is None and r.phase is GangPhase.DRAINING)
        self.timeline.append(
            TimelinePoint(
                at=now,
                arrivals_per_second=self.arrived_since_tick / interval if now > 0 else 0.0,
                prompt_tokens_per_second=self.prompt_since_tick / interval if now > 0 else 0.0,
                ready=ready,
                starting=starting,
                draining=draining,
                desired=decision.desired_replicas,
                ttft_p95_seconds=_percentile(sorted(fleet_ttfts), 0.95) if fleet_ttfts else None,
            )
        )
        self.last_tick = now
        self.arrived_since_tick = 0
        self.prompt_since_tick = 0
        return tick

    def _gang_states(self) -> tuple[GangState, ...]:
        live = [r for r in self.replicas if r.ended is None]
        return tuple(
            GangState(r.name, r.phase, r.created, r.since if r.phase is GangPhase.DRAINING else None) for r in live
        )

    def _apply(self, decision: Decision, now: float) -> tuple[str, ...]:
        """Carry out a decision as the operator does; the gangs taken out, in order."""
        active = [r for r in self.replicas if r.ended is None and r.phase is not GangPhase.DRAINING]
        current = len(active)
        desired = max(0, decision.desired_replicas)
        if desired == current:
            return ()
        self.scale_events += 1
        self.memory.scaled(desired, current, now)
        if desired > current:
            for _ in range(desired - current):
                replica = self._new_replica(now, GangPhase.STARTING)
                self.gangs_started += 1
                self._push(replica.ready_at, _GANG_READY, replica)
            return ()
        # The operator's steps planner takes gangs out in this order (starting first, then the policy's
        # choice, then the highest replica index).
        order = removal_order(
            self._gang_states(),
            (decision.remove,) if decision.remove else (),
            index={r.name: r.index for r in active},
        )
        by_name = {r.name: r for r in active}
        removed = tuple(order[: current - desired])
        for name in removed:
            victim = by_name[name]
            if victim.phase is GangPhase.STARTING:
                victim.phase = GangPhase.DRAINING
                victim.ended = now
            else:
                self._drain(victim, now)
        return removed

    # -- results

    def result(self, cpu_seconds: float) -> PolicyResult:
        fleet = self.fleet
        ttft_ok = 0
        itl_ok = 0
        itl_count = 0
        ttfts: list[float] = []
        itls: list[float] = []
        failed = 0
        for i in range(len(self.arrival)):
            if self.failed[i] or math.isnan(self.first_token[i]):
                failed += 1
                itl_count += 1
                continue
            ttft = self.first_token[i] - self.arrival[i]
            ttfts.append(ttft)
            if ttft <= fleet.ttft_slo_seconds:
                ttft_ok += 1
            if self.generated[i] > 1:
                itl = (self.finish[i] - self.first_token[i]) / (self.generated[i] - 1)
                itls.append(itl)
                itl_count += 1
                if itl <= fleet.itl_slo_seconds:
                    itl_ok += 1
        n = len(self.arrival)
        horizon = self.horizon
        gpus = self.perf.gpus
        gpu_seconds = 0.0
        for replica in self.replicas:
            end = min(replica.ended if replica.ended is not None else horizon, horizon)
            if end > replica.created:
                gpu_seconds += gpus * (end - replica.created)
        served = [i for i in range(n) if not math.isnan(self.finish[i]) and not self.failed[i]]
        prompt = sum(self.context[i] for i in served)
        hit_rate = sum(self.cached[i] for i in served) / prompt if prompt else 0.0
        ttfts.sort()
        itls.sort()
        peak = max((p.ready + p.starting for p in self.timeline), default=fleet.initial_replicas)
        return PolicyResult(
            name=self.autoscaler.name,
            requests=n,
            ttft_attainment=ttft_ok / n if n else 1.0,
            itl_attainment=itl_ok / itl_count if itl_count else 1.0,
            gpu_hours=gpu_seconds / 3600.0,
            scale_events=self.scale_events,
            gangs_started=self.gangs_started,
            gangs_drained=self.gangs_drained,
            failed_requests=failed,
            ttft_p50_seconds=_percentile(ttfts, 0.5) if ttfts else math.nan,
            ttft_p99_seconds=_percentile(ttfts, 0.99) if ttfts else math.nan,
            ttft_p95_seconds=_percentile(ttfts, 0.95) if ttfts else math.nan,
            itl_p99_seconds=_percentile(itls, 0.99) if itls else math.nan,
            peak_replicas=max(peak, fleet.initial_replicas),
            virtual_seconds=max((t for t in self.finish if not math.isnan(t)), default=0.0),
            cpu_seconds=cpu_seconds,
            timeline=tuple(self.timeline),
            prefix_hit_rate=hit_rate,
        )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]
