"""The scheduler model of the simulated SGLang engine: one replica, continuous batching, in any time.

This module owns *what happens to requests*: the waiting queue, admission against the KV cache, chunked
prefill, decode steps, retraction, pause and abort. It owns no clock and no I/O: every call takes the
current time (simulated seconds) as an argument, so the same core runs

* in real time behind the HTTP server (``server.py`` passes a wall clock scaled by ``--mimo-speedup``), and
* in virtual time (:func:`run_virtual`), where a whole trace replays in a fraction of a second — the form
  the tests and the autoscaling simulator use.

The model
=========

It follows the scheduler loop of SGLang 0.5 (a "unified" scheduler, no mixed chunks — SGLang's
defaults; a decode server of a prefill/decode pair runs the same loop over transferred KV, item 10).
:class:`Engine` is one scheduler; :class:`ReplicaEngine` is a replica, with one scheduler per
attention-DP group stepping in lockstep (item 7). Each step is one forward pass:

1. **Prefill first.** If a prompt is half-prefilled (chunked prefill), or waiting requests can be
   admitted, the step is a prefill (extend) batch and running requests do not decode in it. Otherwise
   the step decodes one token for every running request. SGLang behaves the same way without
   ``--enable-mixed-chunk``: a long prompt stalls decoding while its chunks run, which is why the TTFT of
   queued requests and the inter-token latency of running ones both grow under load.
2. **Admission (FCFS by arrival, head-of-line blocking).** The head of the waiting queue is admitted
   while all of these hold, and admission stops at the first request that fails one:

   * running requests (those decoding plus those admitted and still prefilling) stay below
     ``max_running_requests``;
   * the per-step prefill budget (``chunked_prefill_size`` tokens) is not used up; a prompt longer than
     what is left of the budget is cut into chunks, and at most one request is mid-chunk at a time;
   * the *full-attention pool* can hold the request's whole prompt, page-rounded, plus a *reservation*
     for its future output, after the reservations of the requests already running. The reservation is
     ``new_token_ratio × min(remaining output, 4096)`` tokens per request — SGLang's estimate that a
     request will not use all of its ``max_tokens``. The ratio starts at 0.7, decays linearly to
     0.7 × 0.14 over 600 decode steps without trouble, and is raised again after a retraction (to the
     fraction of the running requests' ``max_tokens`` that they will have used 20 steps from now).
     The constants are SGLang's defaults (its global config: initial ratio 0.7, minimum factor 0.14,
     600 decay steps, 20 retraction look-ahead steps, 4096-token clip); they are arguments of
     :class:`AdmissionPolicy`, so a caller can also reserve the whole output (ratio 1.0, no decay)
     and never retract;
   * the *sliding-window pool* can hold this step's prefill chunk: the SWA layers write every token of
     the chunk before the tokens that left the window are freed.
3. **KV accounting.** A request holds, in the full pool, its computed tokens (prompt, then one more
   per decoded token) rounded up to whole pages of ``page_size``; in the SWA pool only the pages that
   cover its last ``swa_window`` tokens (MiMo: 128) — that is why the SWA pool can be a fraction
   (``--swa-full-tokens-ratio``) of the full one. Usage = held / capacity per pool, as SGLang's
   ``full_token_usage`` and ``swa_token_usage``; ``token_usage`` is the fuller of the two.
4. **Retraction.** Admission only *estimates* output lengths, so a decode step can find the full pool
   short of the pages its requests need. Then, as SGLang does, running requests are retracted until
   the rest fit — the one with the fewest output tokens first (ties: the longer prompt first). A
   retracted request frees all its KV and goes back to the waiting queue at its arrival position; its
   output so far is kept (already streamed to the client) and is prefilled again with the prompt when it
   is readmitted. Every retraction counts (``sglang:num_retracted_reqs``).
5. **Step time** comes from the planned replica's performance model (``mimo_operator.perf``): a prefill
   step takes ``prefill_seconds`` of all its chunks' new tokens together (one forward pass) plus, for a
   chunk that continues a long prompt, the extra its attention over the cached context costs
   (:func:`prefill_pass_seconds`); a decode step ``decode_step_seconds(batch size, KV tokens of the
   batch)``, which with MTP is the time per *output token* (the model divides its forward step by the
   accept length), so one decode step here emits one token per sequence. Those formulas (a roofline
   over the plan's GPUs: HBM bandwidth for weights and KV reads, FP8 compute for prefill, all-to-all
   over the interconnect; constants from ``mimo-facts.md``) live beside the planner, not here.
6. **Tokens.** Prefill produces a request's first output token when its last chunk completes (TTFT);
   each decode step produces one more. A request finishes after exactly ``max_new_tokens`` output
   tokens: the simulated model never stops early (as with ``ignore_eos``), so a trace's
   ``GeneratedTokens`` become each request's ``max_tokens``.
7. **Data-parallel attention.** With N attention-DP groups (MiMo-V2.5-Pro on two nodes: 2) SGLang runs
   N schedulers, each with its own pools (``max_total_num_tokens`` is per group) and ``--max-running-
   requests`` and ``--chunked-prefill-size`` divided by N, and scales its schedule conservativeness by
   0.3 (initial ratio 0.21). Requests go to the groups in turn. The groups step together — the MoE
   all-to-all needs every rank — so a step lasts as long as the replica needs for the union of their
   work: the larger of the prefill time of all their chunks and the decode time of all their sequences.

8. **Prefix cache** (``prefix.py``; on unless ``--disable-radix-cache``): at admission a request locks
   the longest run of whole pages of its prompt already cached and computes only the rest (at least one
   token); the pass still attends over the cached context. Each computed chunk's whole prompt pages go
   into the cache; cached pages count once in the full pool however many requests read them, and pages
   no running request reads are *evictable*: admission and decode count them as room and evict them,
   least recently used first, before anything is retracted. ``token_usage`` leaves them out, as
   SGLang's does. ``cache_hit_rate`` is the last prefill batch's hit / (hit + computed) tokens, SGLang's
   gauge. Only prompts are cached, not generated tokens (the simulated output is filler no client
   sends back), so a conversation's next turn recomputes the previous answer.
9. **Media.** A request may carry encoder seconds (its images and audio through the vision and audio
   encoders; the server prices them from the catalog): its first prefill pass lasts that much longer.
10. **Transferred KV** (a decode server of a prefill/decode pair, ``disaggregation.py``): a request
    submitted with ``transferred=True`` arrives with its prompt's KV cache already computed by the
    prefill server, and the token that prefill sampled. It is admitted as any other (the full pool must
    hold its prompt and output reservation: SGLang's decode preallocates exactly that), whole, outside
    the step's prefill budget, and its admission pass computes nothing: it costs no forward time, counts
    no prefill tokens, and hands out the prefill's token as the request's first. Submitted with
    ``awaiting_kv=True`` as well, it is admitted before its KV arrives — its pages are reserved then
    (SGLang's decode preallocates them, and only then tells the prefill where to write) — and waits,
    holding them and a running slot but taking no step, until :meth:`Engine.kv_arrived`. On the other side, a
    request submitted with ``hold_kv=True`` (a prefill server's) keeps its KV cache after it finishes,
    until :meth:`Engine.release`: SGLang's prefill holds it in the inflight queue while it moves.

Not modelled: speculative decoding as a separate mechanism (the performance model's per-step time
already folds its speed-up in), overlap scheduling, hierarchical (host/storage) caching, and grammar /
LoRA inputs.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mimo_worker.simengine.prefix import CacheNode, RadixCache

__all__ = [
    "AdmissionPolicy",
    "Arrival",
    "Batch",
    "BatchKind",
    "ClosedLoop",
    "Engine",
    "EngineLimits",
    "EngineStats",
    "OpenLoop",
    "PauseMode",
    "Progress",
    "ReplicaBatch",
    "ReplicaEngine",
    "Request",
    "RequestRejected",
    "RequestState",
    "StepTimer",
    "VirtualRun",
    "Workload",
    "check_request",
    "run_virtual",
]

# SGLang's defaults for the output-token reservation (its global scheduler config); see the docstring.
SGLANG_INIT_NEW_TOKEN_RATIO = 0.7
SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS = 600
SGLANG_RETRACT_DECODE_STEPS = 20
SGLANG_CLIP_MAX_NEW_TOKENS = 4096

# A step never takes less than this (simulated seconds): a performance model that answers 0 for a tiny
# batch must not let virtual time stand still.
MIN_STEP_SECONDS = 1e-6

# How far back gen_throughput and the retraction gauge look (simulated seconds). SGLang reports them per
# log interval (every 40 decode steps, about a second on a busy replica); a fixed window is steadier for
# scrapers and falls to zero when the replica idles.
STATS_WINDOW_SECONDS = 5.0


class StepTimer(Protocol):
    """How long one forward pass of the planned replica takes: ``mimo_operator.perf.ReplicaPerformance``."""

    def prefill_seconds(self, new_tokens: int, cached_context_tokens: int = 0) -> float: ...

    def decode_step_seconds(self, batch_size: int, kv_tokens: int) -> float: ...


class PerformanceLimits(Protocol):
    """The capacity fields of ``ReplicaPerformance`` that the scheduler obeys."""

    @property
    def max_total_num_tokens(self) -> int: ...
    @property
    def swa_max_tokens(self) -> int: ...
    @property
    def swa_window(self) -> int: ...
    @property
    def max_running_requests(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def chunked_prefill_size(self) -> int: ...
    @property
    def page_size(self) -> int: ...


@dataclass(frozen=True)
class EngineLimits:
    """The capacities one scheduler works within (SGLang's names)."""

    max_total_num_tokens: int
    swa_max_tokens: int
    swa_window: int
    max_running_requests: int
    context_length: int
    chunked_prefill_size: int
    page_size: int

    def __post_init__(self) -> None:
        for name in (
            "max_total_num_tokens",
            "swa_max_tokens",
            "swa_window",
            "max_running_requests",
            "context_length",
            "chunked_prefill_size",
            "page_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def of(cls, perf: PerformanceLimits) -> EngineLimits:
        return cls(
            max_total_num_tokens=perf.max_total_num_tokens,
            swa_max_tokens=perf.swa_max_tokens,
            swa_window=perf.swa_window,
            max_running_requests=perf.max_running_requests,
            context_length=perf.context_length,
            chunked_prefill_size=perf.chunked_prefill_size,
            page_size=perf.page_size,
        )

    @property
    def max_request_tokens(self) -> int:
        """The longest request (prompt + output) this replica accepts at all."""
        return min(self.context_length, self.max_total_num_tokens - self.page_size)


@dataclass(frozen=True)
class AdmissionPolicy:
    """How much future output admission reserves KV for. Defaults are SGLang's (module docstring)."""

    init_new_token_ratio: float = SGLANG_INIT_NEW_TOKEN_RATIO
    min_new_token_ratio: float = SGLANG_INIT_NEW_TOKEN_RATIO * SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR
    decay_steps: int = SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS
    retract_lookahead_steps: int = SGLANG_RETRACT_DECODE_STEPS
    clip_max_new_tokens: int = SGLANG_CLIP_MAX_NEW_TOKENS

    @classmethod
    def sglang(cls, schedule_conservativeness: float = 1.0) -> AdmissionPolicy:
        """SGLang's ratios for a conservativeness (``--schedule-conservativeness``; SGLang multiplies it
        by 0.3 when attention is data-parallel)."""
        init = min(SGLANG_INIT_NEW_TOKEN_RATIO * schedule_conservativeness, 1.0)
        return cls(init_new_token_ratio=init, min_new_token_ratio=min(init * SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR, 1.0))

    @classmethod
    def reserve_all(cls) -> AdmissionPolicy:
        """Reserve every request's whole output at admission: queues sooner, never retracts."""
        return cls(init_new_token_ratio=1.0, min_new_token_ratio=1.0, clip_max_new_tokens=2**62)

    @property
    def decay_per_step(self) -> float:
        return (self.init_new_token_ratio - self.min_new_token_ratio) / max(self.decay_steps, 1)


class RequestRejected(ValueError):
    """A request the replica can never serve (too long for its context or its KV cache)."""


class RequestState(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"  # admitted, holds KV, prompt not fully computed yet
    RECEIVING = "receiving"  # admitted with KV reserved, waiting for a prefill server's KV (awaiting_kv)
    RUNNING = "running"  # decoding
    FINISHED = "finished"
    ABORTED = "aborted"


class PauseMode(enum.Enum):
    """``/pause_generation`` modes (SGLang's names)."""

    ABORT = "abort"  # drop every request in the replica
    RETRACT = "retract"  # move running requests back to the waiting queue, freeing their KV
    IN_PLACE = "in_place"  # keep everything where it is, just stop stepping


class BatchKind(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(eq=False)
class Request:
    """One generation request and its progress through the scheduler."""

    rid: str
    prompt_tokens: int
    max_new_tokens: int
    arrival: float
    state: RequestState = RequestState.WAITING
    output_tokens: int = 0
    computed: int = 0  # tokens whose KV is in the cache (prompt first, then output)
    admitted_at: float | None = None  # first admission; queue time = admitted_at - arrival
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    retractions: int = 0
    group: int = 0  # the attention-DP group (scheduler) that serves it
    full_held: int = 0  # full-pool token slots held privately (whole pages; not the shared prefix)
    swa_held: int = 0  # SWA-pool token slots held (whole pages)
    blocks: tuple[int, ...] = ()  # keys of the prompt's whole pages (prefix.py); () never hits the cache
    cached_tokens: int = 0  # prompt tokens the prefix cache gave at first admission (usage.cached_tokens)
    prefix: list[CacheNode] = field(default_factory=list)  # locked path of cached pages it reads
    encoder_seconds: float = 0.0  # vision/audio encoder time its first prefill chunk carries
    encoded: bool = False
    transferred: bool = False  # its prompt's KV came from a prefill server: admission computes nothing
    hold_kv: bool = False  # keeps its KV after it finishes, until released (a prefill's, while it transfers)
    awaiting_kv: bool = False  # transferred, and the KV is not there yet: admitted, it waits for kv_arrived()

    shared: int = 0  # tokens of its KV that live in the prefix cache (locked pages), not in full_held

    @property
    def prefill_target(self) -> int:
        """Tokens a (re)admitted request computes before it decodes: its prompt, plus the output it kept
        over a retraction. The pass over the last of them samples its next output token."""
        return self.prompt_tokens + self.output_tokens

    @property
    def remaining_output(self) -> int:
        return self.max_new_tokens - self.output_tokens

    @property
    def done(self) -> bool:
        return self.state in (RequestState.FINISHED, RequestState.ABORTED)

    @property
    def queue_seconds(self) -> float | None:
        return None if self.admitted_at is None else self.admitted_at - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    @property
    def e2e_seconds(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.arrival


@dataclass(frozen=True)
class Chunk:
    """Part of one request's prompt computed in a prefill batch."""

    request: Request
    tokens: int
    cached_before: int  # tokens of this request already in the cache when the chunk runs
    hit: int = 0  # of those, tokens the prefix cache supplied at this admission (SGLang's hit tokens)
    encoder_seconds: float = 0.0  # the request's media encoders run in this pass


def prefill_pass_seconds(timer: StepTimer, chunks: Sequence[Chunk]) -> float:
    """One forward pass over several requests' prompt chunks: the new tokens of all of them go through
    the model together (one pass, one fixed cost), and each attends to its own cached context. Chunks of
    transferred KV cost nothing (the prefill server computed them)."""
    chunks = [c for c in chunks if not c.request.transferred]
    if not chunks:
        return 0.0
    together = timer.prefill_seconds(sum(c.tokens for c in chunks), 0)
    context = sum(
        max(timer.prefill_seconds(c.tokens, c.cached_before) - timer.prefill_seconds(c.tokens, 0), 0.0)
        for c in chunks
        if c.cached_before
    )
    return together + context + sum(c.encoder_seconds for c in chunks)


@dataclass(frozen=True)
class Batch:
    """One planned forward pass: what runs, from when, for how long (simulated seconds)."""

    kind: BatchKind
    start: float
    duration: float
    chunks: tuple[Chunk, ...] = ()  # prefill
    requests: tuple[Request, ...] = ()  # decode
    retracted: tuple[Request, ...] = ()  # sent back to the queue to make room for this batch

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Progress:
    """What one request got from a finished step: ``new_tokens`` output tokens, maybe its last."""

    request: Request
    new_tokens: int
    first: bool  # carries the request's first output token
    finished: bool
    interval: float  # seconds since the request's previous token (0 for the first)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the scheduler's gauges, in SGLang's terms."""

    num_running_reqs: int
    num_queue_reqs: int
    full_used_tokens: int
    full_capacity: int
    swa_used_tokens: int
    swa_capacity: int
    gen_throughput: float  # output tokens/s over the last STATS_WINDOW_SECONDS
    num_retracted_reqs: int  # retractions over the last STATS_WINDOW_SECONDS
    new_token_ratio: float
    tokens_in_flight: int  # prompt + output tokens of every admitted request (what its KV will cover)
    paused: bool
    full_evictable_tokens: int = 0  # prefix-cache pages no running request uses (not in full_used_tokens)
    cache_hit_rate: float = 0.0  # SGLang's gauge: hit / (hit + computed) prompt tokens of the last prefill
    prealloc_full_tokens: int = 0  # of full_used_tokens, reserved for KV on its way (awaiting_kv requests)
    prealloc_swa_tokens: int = 0  # of swa_used_tokens, the same

    @property
    def full_token_usage(self) -> float:
        return self.full_used_tokens / self.full_capacity

    @property
    def swa_token_usage(self) -> float:
        return self.swa_used_tokens / self.swa_capacity

    @property
    def token_usage(self) -> float:
        return max(self.full_token_usage, self.swa_token_usage)

    @property
    def kv_available_tokens(self) -> int:
        return self.full_capacity - self.full_used_tokens


@dataclass
class _Counters:
    """Totals since start (for Prometheus counters and tests)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0
    retracted_requests: int = 0
    prefill_tokens_computed: int = 0
    prefill_tokens_cached: int = 0  # prompt tokens the prefix cache supplied at admission (SGLang: hit)
    cached_prompt_tokens: int = 0  # finished requests' usage.cached_tokens
    steps: int = 0


def check_request(limits: EngineLimits, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise :class:`RequestRejected` for a request a scheduler with ``limits`` can never serve."""
    if prompt_tokens < 1:
        raise RequestRejected("the prompt must have at least one token")
    if max_new_tokens < 1:
        raise RequestRejected("max_tokens must be at least 1")
    total = prompt_tokens + max_new_tokens
    if total > limits.context_length:
        raise RequestRejected(
            f"Requested token count exceeds the model's maximum context length of "
            f"{limits.context_length} tokens. You requested a total of {total} tokens: "
            f"{prompt_tokens} tokens from the input messages and {max_new_tokens} tokens for the "
            f"completion. Please reduce the number of tokens in the input messages or the completion "
            f"to fit within the limit."
        )
    if math.ceil(total / limits.page_size) * limits.page_size > limits.max_total_num_tokens:
        raise RequestRejected(
            f"the request needs {total} KV tokens but the replica's KV cache holds "
            f"{limits.max_total_num_tokens} (max_total_num_tokens)"
        )


class Engine:
    """One replica's scheduler. Not thread-safe; drive it from one task or one loop.

    Protocol: :meth:`submit` / :meth:`abort` at any time; :meth:`next_batch` plans the next forward pass
    (it may retract to make room) and returns ``None`` when there is nothing to do; :meth:`complete`
    applies that pass at its end time and returns what each request got. A caller plans one batch at a
    time and completes it before planning the next.
    """

    def __init__(
        self,
        limits: EngineLimits,
        timer: StepTimer,
        policy: AdmissionPolicy | None = None,
        *,
        prefix_cache: bool = True,
    ):
        self.limits = limits
        self.timer = timer
        self.policy = policy or AdmissionPolicy()
        # SGLang's radix cache is on unless --disable-radix-cache
        self.cache: RadixCache | None = RadixCache(limits.page_size) if prefix_cache else None
        self.last_cache_hit_rate = 0.0
        self.new_token_ratio = self.policy.init_new_token_ratio
        self.paused = False
        self.counters = _Counters()
        self._waiting: list[Request] = []  # sorted by (arrival, sequence)
        self._waiting_keys: list[tuple[float, int]] = []
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self._prefilling: list[Request] = []  # admitted, prompt not complete (at most one is mid-chunk)
        self._receiving: list[Request] = []  # admitted with KV reserved, waiting for it to arrive
        self._running: list[Request] = []  # decoding
        self._requests: dict[str, Request] = {}
        self._held: dict[str, Request] = {}  # finished, KV kept until release()
        self._in_flight: Batch | None = None
        self._full_used = 0  # private pages of requests; the prefix cache's pages are counted apart
        self._swa_used = 0
        self._recent_tokens: deque[tuple[float, int]] = deque()  # (step end, output tokens of the step)
        self._recent_token_sum = 0
        self._recent_retractions: deque[float] = deque()
        self._epoch: float | None = None  # first submission: gen_throughput's window never reaches before it

    # ---- requests in -------------------------------------------------------------------------------

    def submit(
        self,
        rid: str,
        prompt_tokens: int,
        max_new_tokens: int,
        now: float,
        *,
        blocks: Sequence[int] = (),
        encoder_seconds: float = 0.0,
        transferred: bool = False,
        hold_kv: bool = False,
        awaiting_kv: bool = False,
    ) -> Request:
        """Queue a request. Raises :class:`RequestRejected` if the replica can never serve it.

        ``blocks`` are the keys of the prompt's whole pages (``prefix.py``) for the prefix cache;
        ``encoder_seconds`` the time its images and audio take in the encoders (added to its prefill);
        ``transferred``: its prompt's KV comes from a prefill server (``awaiting_kv``: not yet, see
        :meth:`kv_arrived`); ``hold_kv``: its KV stays after it finishes, until :meth:`release`
        (docstring item 10).
        """
        if rid in self._requests:
            raise ValueError(f"request id {rid!r} is already in the engine")
        check_request(self.limits, prompt_tokens, max_new_tokens)
        request = Request(
            rid=rid,
            prompt_tokens=prompt_tokens,
            max_new_tokens=max_new_tokens,
            arrival=now,
            blocks=tuple(blocks[: prompt_tokens // self.limits.page_size]),
            encoder_seconds=max(encoder_seconds, 0.0),
            transferred=transferred or awaiting_kv,
            hold_kv=hold_kv,
            awaiting_kv=awaiting_kv,
        )
        if self._epoch is None:
            self._epoch = now
        self._requests[rid] = request
        self._seq[rid] = self._next_seq
        self._next_seq += 1
        self._enqueue(request)
        return request

    def abort(self, rid: str, now: float) -> Request | None:
        """Drop a request wherever it is (client went away); frees its KV. Returns it, or None."""
        request = self._requests.get(rid)
        if request is None or request.done:
            return None
        self._remove_everywhere(request, now)
        request.state = RequestState.ABORTED
        request.finished_at = now
        self.counters.aborted_requests += 1
        self._forget(request)
        return request

    def kv_arrived(self, rid: str) -> bool:
        """An ``awaiting_kv`` request's KV is there: it runs from the next step. False if it was not
        admitted yet (or is gone); a request not admitted yet runs at admission once this was said."""
        request = self._requests.get(rid)
        if request is None or not request.awaiting_kv:
            return False
        request.awaiting_kv = False
        if request.state is not RequestState.RECEIVING:
            return False
        self._receiving.remove(request)
        request.state = RequestState.PREFILLING
        self._prefilling.append(request)
        return True

    def release(self, rid: str, now: float) -> bool:
        """Free the KV a finished ``hold_kv`` request kept; False if there is none."""
        request = self._held.pop(rid, None)
        if request is None:
            return False
        self._set_full_held(request, 0)
        self._set_swa_held(request, 0)
        self._release_prefix(request, now)
        return True

    def pause(self, mode: PauseMode, now: float) -> list[Request]:
        """Stop stepping (``/pause_generation``). Returns the requests that abort mode dropped."""
        self.paused = True
        dropped: list[Request] = []
        if mode is PauseMode.ABORT:
            for request in list(self._requests.values()):
                if self.abort(request.rid, now) is not None:
                    dropped.append(request)
        elif mode is PauseMode.RETRACT:
            for request in list(self._running) + list(self._prefilling):
                self._retract(request, now, count=False)
        return dropped

    def resume(self) -> None:
        self.paused = False

    # ---- scheduling --------------------------------------------------------------------------------

    def next_batch(self, now: float) -> Batch | None:
        """Plan the forward pass that starts at ``now``; ``None`` if there is nothing to run."""
        if self._in_flight is not None:
            raise RuntimeError("complete() the batch in flight before planning the next one")
        if self.paused:
            return None
        batch = self._plan_prefill(now) or self._plan_decode(now)
        self._in_flight = batch
        return batch

    def complete(self, batch: Batch, now: float | None = None) -> list[Progress]:
        """Apply a planned batch at its end (or at ``now`` if later). Returns per-request progress."""
        if batch is not self._in_flight:
            raise RuntimeError("complete() takes the batch the last next_batch() returned")
        self._in_flight = None
        end = batch.end if now is None else max(now, batch.end)
        self.counters.steps += 1
        progress: list[Progress] = []
        if batch.kind is BatchKind.PREFILL:
            hit = sum(c.hit for c in batch.chunks)
            computed = sum(c.tokens for c in batch.chunks)
            # SGLang's gauge describes the last prefill batch: hit / (hit + computed) tokens
            self.last_cache_hit_rate = hit / (hit + computed) if hit + computed else 0.0
            for chunk in batch.chunks:
                request = chunk.request
                if request.done:
                    continue  # aborted while the batch ran
                request.computed = chunk.cached_before + chunk.tokens
                request.encoded = True
                if not request.transferred:
                    self.counters.prefill_tokens_computed += chunk.tokens
                self.counters.prefill_tokens_cached += chunk.hit
                self._set_swa_held(request, self._swa_need(request.computed))
                self._cache_prompt(request, end)
                if request.computed < request.prefill_target:
                    continue
                # the pass over the last chunk samples the next (usually the first) output token
                self._prefilling.remove(request)
                progress.append(self._emit(request, end))
                if not request.done:
                    request.state = RequestState.RUNNING
                    self._running.append(request)
        else:
            for request in batch.requests:
                if request.done or request.state is not RequestState.RUNNING:
                    continue  # aborted or retracted meanwhile
                request.computed += 1
                self._set_swa_held(request, self._swa_need(request.computed))
                progress.append(self._emit(request, end))
            if not batch.retracted:
                self.new_token_ratio = max(
                    self.policy.min_new_token_ratio, self.new_token_ratio - self.policy.decay_per_step
                )
        if progress:
            self._recent_tokens.append((end, len(progress)))
            self._recent_token_sum += len(progress)
        self._trim_windows(end)
        return progress

    # ---- what a scraper sees -----------------------------------------------------------------------

    def stats(self, now: float) -> EngineStats:
        self._trim_windows(now)
        window = 0.0 if self._epoch is None else min(STATS_WINDOW_SECONDS, now - self._epoch)
        produced = self._recent_token_sum
        admitted = self._running + self._prefilling
        return EngineStats(
            num_running_reqs=len(admitted),
            num_queue_reqs=len(self._waiting),
            full_used_tokens=self._full_used + (self.cache.protected_tokens if self.cache else 0),
            full_capacity=self.limits.max_total_num_tokens,
            swa_used_tokens=self._swa_used,
            swa_capacity=self.limits.swa_max_tokens,
            gen_throughput=produced / window if window > 0 else 0.0,
            num_retracted_reqs=len(self._recent_retractions),
            new_token_ratio=self.new_token_ratio,
            tokens_in_flight=sum(r.prompt_tokens + r.output_tokens for r in admitted),
            paused=self.paused,
            full_evictable_tokens=self.cache.evictable_tokens if self.cache else 0,
            cache_hit_rate=self.last_cache_hit_rate,
            prealloc_full_tokens=sum(r.full_held for r in self._receiving),
            prealloc_swa_tokens=sum(r.swa_held for r in self._receiving),
        )

    def flush_cache(self) -> bool:
        """``/flush_cache``: empty the prefix cache; False while requests are running (SGLang refuses too)."""
        return self.cache is None or (self.idle and not self._held and self.cache.clear())

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing admitted."""
        return not (self._waiting or self._prefilling or self._running or self._receiving)

    @property
    def num_requests(self) -> int:
        """Requests in the engine (waiting, prefilling or running)."""
        return len(self._waiting) + len(self._prefilling) + len(self._running) + len(self._receiving)

    def request(self, rid: str) -> Request | None:
        return self._requests.get(rid)

    # ---- internals ---------------------------------------------------------------------------------

    def _page_round(self, tokens: int) -> int:
        page = self.limits.page_size
        return -(-tokens // page) * page

    def _swa_need(self, tokens: int) -> int:
        """SWA-pool slots a sequence of ``tokens`` computed tokens holds: the pages over its window."""
        page = self.limits.page_size
        if tokens <= self.limits.swa_window:
            return self._page_round(tokens)
        first_kept = tokens - self.limits.swa_window
        return self._page_round(tokens) - (first_kept // page) * page

    def _set_full_held(self, request: Request, held: int) -> None:
        self._full_used += held - request.full_held
        request.full_held = held

    def _set_swa_held(self, request: Request, held: int) -> None:
        self._swa_used += held - request.swa_held
        request.swa_held = held

    def _output_reservation(self, request: Request) -> int:
        """Full-pool tokens kept back for a request's future output: SGLang's estimate, not the maximum."""
        output = min(request.remaining_output, self.policy.clip_max_new_tokens)
        return math.ceil(output * self.new_token_ratio)

    def _reservation(self, request: Request) -> int:
        """Full-pool tokens an admitted request will still take: the rest of its prompt, estimated output."""
        prompt_rest = 0
        if request.state is RequestState.PREFILLING:
            prompt_rest = max(self._private(request, request.prefill_target) - request.full_held, 0)
        return prompt_rest + self._output_reservation(request)

    # ---- the prefix cache's share of the full pool ---------------------------------------------------

    def _private(self, request: Request, tokens: int) -> int:
        """Full-pool slots a request holds itself for ``tokens`` computed tokens: the pages past the
        cached prefix it reads (those pages belong to the cache, counted once however many read them)."""
        return max(self._page_round(tokens) - request.shared, 0)

    def _pool_free(self) -> int:
        cached = self.cache.total_tokens if self.cache is not None else 0
        return self.limits.max_total_num_tokens - self._full_used - cached

    def _evictable(self) -> int:
        return self.cache.evictable_tokens if self.cache is not None else 0

    def _reclaim(self, tokens: int) -> None:
        """Make ``tokens`` slots free, evicting unused cached pages (least recently used first) if need be."""
        short = tokens - self._pool_free()
        if short > 0 and self.cache is not None:
            self.cache.evict(short)

    def _match_prefix(self, request: Request, now: float) -> int:
        """Lock the longest cached prefix of a request being admitted; the tokens it saves. At least one
        prompt token is always computed (its pass samples the first output token), as in SGLang."""
        if self.cache is None or not request.blocks:
            return 0
        usable = min(len(request.blocks), (request.prefill_target - 1) // self.limits.page_size)
        path = self.cache.match(request.blocks[:usable], now)
        self.cache.lock(path)
        request.prefix = path
        request.shared = len(path) * self.limits.page_size
        return request.shared

    def _release_prefix(self, request: Request, now: float) -> None:
        if request.prefix and self.cache is not None:
            self.cache.unlock(request.prefix, now)
        request.prefix = []
        request.shared = 0

    def _cache_prompt(self, request: Request, now: float) -> None:
        """Put the prompt's computed whole pages into the cache (SGLang caches each chunk as it is done).
        The request's own copy of those pages moves to the cache, or is freed where another request
        cached the same pages first."""
        if self.cache is None:
            return
        done = min(len(request.blocks), request.computed // self.limits.page_size)
        have = len(request.prefix)
        if done <= have:
            return
        self.cache.extend(request.prefix, request.blocks[have:done], now)
        request.shared = len(request.prefix) * self.limits.page_size
        self._set_full_held(request, self._private(request, request.computed))

    def _plan_prefill(self, now: float) -> Batch | None:
        budget = self.limits.chunked_prefill_size
        swa_free = self.limits.swa_max_tokens - self._swa_used
        chunks: list[Chunk] = []
        retracted: list[Request] = []
        # a half-prefilled request continues first: it already holds KV and a running slot
        for request in list(self._prefilling):
            chunk = self._take_chunk(request, budget, swa_free)
            if chunk is None or not self._chunk_fits(chunk):
                # decode outgrew the reservations and ate this prompt's room: queue it again
                self._retract(request, now, count=True)
                retracted.append(request)
                continue
            chunks.append(chunk)
            if request.transferred:
                swa_free -= self._swa_need(chunk.cached_before + chunk.tokens)
                continue
            budget -= chunk.tokens
            swa_free -= chunk.tokens
        mid_chunk = any(c.cached_before + c.tokens < c.request.prefill_target for c in chunks)
        if self._waiting and not mid_chunk:
            reserved = sum(self._reservation(r) for r in self._running + self._prefilling + self._receiving)
            # cached pages nobody uses are as good as free: admission evicts them when it needs the room
            full_free = self._pool_free() + self._evictable() - reserved
            admitted = len(self._running) + len(self._prefilling) + len(self._receiving)
            while self._waiting and budget > 0 and admitted < self.limits.max_running_requests:
                request = self._waiting[0]
                evictable = self._evictable()
                hit = self._match_prefix(request, now)
                full_free -= evictable - self._evictable()  # pages it locked are no longer evictable
                need = self._private(request, request.prefill_target) + self._output_reservation(request)
                if need > full_free:
                    full_free += evictable - self._evictable()
                    self._release_prefix(request, now)
                    break  # head-of-line blocking, as SGLang's FCFS admission
                if request.awaiting_kv:
                    self._reserve_for_transfer(request, now)
                    admitted += 1
                    full_free -= need
                    swa_free -= self._swa_need(request.prefill_target)
                    continue
                request.computed = hit
                chunk = self._take_chunk(request, budget, swa_free, hit=hit)
                if chunk is None:
                    request.computed = 0
                    self._release_prefix(request, now)
                    break
                if request.admitted_at is None:
                    request.cached_tokens = hit
                self._set_swa_held(request, self._swa_need(hit))
                self._admit(request, now)
                chunks.append(chunk)
                admitted += 1
                full_free -= need
                if request.transferred:
                    # received whole, outside the step's prefill budget; the SWA layers keep their window
                    swa_free -= self._swa_need(chunk.cached_before + chunk.tokens)
                    continue
                budget -= chunk.tokens
                swa_free -= chunk.tokens
                if chunk.cached_before + chunk.tokens < request.prefill_target:
                    break  # this request is now the one mid-chunk
        if not chunks:
            return None
        self._reclaim(
            sum(max(self._private(c.request, c.cached_before + c.tokens) - c.request.full_held, 0) for c in chunks)
        )
        for chunk in chunks:
            # the pass writes the chunk's KV: its pages are held from the start of the step
            full = self._private(chunk.request, chunk.cached_before + chunk.tokens)
            self._set_full_held(chunk.request, max(full, chunk.request.full_held))
            if chunk.request.transferred:
                self._set_swa_held(chunk.request, self._swa_need(chunk.cached_before + chunk.tokens))
            else:
                self._set_swa_held(chunk.request, chunk.request.swa_held + chunk.tokens)
        duration = prefill_pass_seconds(self.timer, chunks)
        return Batch(
            BatchKind.PREFILL,
            now,
            max(duration, MIN_STEP_SECONDS),
            chunks=tuple(chunks),
            retracted=tuple(retracted),
        )

    def _chunk_fits(self, chunk: Chunk) -> bool:
        pages = self._private(chunk.request, chunk.cached_before + chunk.tokens) - chunk.request.full_held
        return pages <= self._pool_free() + self._evictable()

    def _take_chunk(self, request: Request, budget: int, swa_free: int, *, hit: int = 0) -> Chunk | None:
        """The next piece of a request's prompt that fits this step's prefill budget and the SWA pool."""
        remaining = request.prefill_target - request.computed
        if request.transferred:
            return Chunk(request, remaining, request.computed, hit=hit)
        tokens = min(remaining, budget, swa_free)
        page = self.limits.page_size
        if tokens < remaining and tokens > page:
            tokens -= tokens % page  # a cut falls on a page boundary
        if tokens <= 0:
            return None
        encoder = 0.0 if request.encoded else request.encoder_seconds
        return Chunk(request, tokens, request.computed, hit=hit, encoder_seconds=encoder)

    def _reserve_for_transfer(self, request: Request, now: float) -> None:
        """Admit an ``awaiting_kv`` request: reserve the pages its KV will land in, then wait for it."""
        self._dequeue(request)
        full = self._private(request, request.prefill_target)
        self._reclaim(full)
        self._set_full_held(request, full)
        self._set_swa_held(request, self._swa_need(request.prefill_target))
        request.state = RequestState.RECEIVING
        if request.admitted_at is None:
            request.admitted_at = now
        self._receiving.append(request)

    def _admit(self, request: Request, now: float) -> None:
        self._dequeue(request)
        request.state = RequestState.PREFILLING
        if request.admitted_at is None:
            request.admitted_at = now
        self._prefilling.append(request)

    def _plan_decode(self, now: float) -> Batch | None:
        if not self._running:
            return None
        retracted = self._make_room_for_decode(now)
        if not self._running:
            return None
        batch = tuple(self._running)
        if self._pool_free() < len(batch) * self.limits.page_size:
            self._reclaim(self._decode_need()[0])
        for request in batch:
            # this step writes one more token of KV per request
            self._set_full_held(request, self._private(request, request.computed + 1))
            self._set_swa_held(request, self._swa_need(request.computed + 1))
        kv_tokens = sum(r.computed for r in batch)
        duration = self.timer.decode_step_seconds(len(batch), kv_tokens)
        return Batch(BatchKind.DECODE, now, max(duration, MIN_STEP_SECONDS), requests=batch, retracted=retracted)

    def _decode_need(self) -> tuple[int, int]:
        """New full-pool and SWA-pool slots the next decode step takes."""
        full = sum(max(self._private(r, r.computed + 1) - r.full_held, 0) for r in self._running)
        swa = sum(max(self._swa_need(r.computed + 1) - r.swa_held, 0) for r in self._running)
        return full, swa

    def _decode_fits(self) -> bool:
        worst = len(self._running) * self.limits.page_size  # at most one new page per request and pool
        room = self._pool_free() + self._evictable()  # evicting cached pages comes before retracting
        if worst <= room and self._swa_used + worst <= self.limits.swa_max_tokens:
            return True
        full, swa = self._decode_need()
        return full <= room and self._swa_used + swa <= self.limits.swa_max_tokens

    def _make_room_for_decode(self, now: float) -> tuple[Request, ...]:
        if self._decode_fits():
            return ()
        # least progress first; among equals the longest prompt, which frees the most
        victims = sorted(self._running + self._prefilling, key=lambda r: (r.output_tokens, -r.prompt_tokens))
        retracted: list[Request] = []
        while victims and len(self._running) + len(self._prefilling) > 1 and not self._decode_fits():
            victim = victims.pop(0)
            self._retract(victim, now, count=True)
            retracted.append(victim)
        if self._running:
            # re-estimate how much of max_tokens requests use, from those still running
            decoded = sum(r.output_tokens for r in self._running)
            budgeted = sum(r.max_new_tokens for r in self._running)
            lookahead = self.policy.retract_lookahead_steps * len(self._running)
            estimate = (decoded + lookahead) / max(budgeted, 1)
            self.new_token_ratio = min(1.0, max(self.new_token_ratio, estimate))
        return tuple(retracted)

    def _retract(self, request: Request, now: float, count: bool) -> None:
        if request in self._running:
            self._running.remove(request)
        if request in self._prefilling:
            self._prefilling.remove(request)
        self._set_full_held(request, 0)
        self._set_swa_held(request, 0)
        self._release_prefix(request, now)
        request.computed = 0
        request.state = RequestState.WAITING
        if count:
            request.retractions += 1
            self.counters.retracted_requests += 1
            self._recent_retractions.append(now)
        self._enqueue(request)

    def _emit(self, request: Request, now: float) -> Progress:
        first = request.output_tokens == 0
        interval = 0.0 if request.last_token_at is None else now - request.last_token_at
        request.output_tokens += 1
        if first:
            request.first_token_at = now
        request.last_token_at = now
        self.counters.generation_tokens += 1
        finished = request.output_tokens >= request.max_new_tokens
        if finished:
            if request in self._running:
                self._running.remove(request)
            if request.hold_kv:
                self._held[request.rid] = request
            else:
                self._set_full_held(request, 0)
                self._set_swa_held(request, 0)
                self._release_prefix(request, now)
            request.state = RequestState.FINISHED
            request.finished_at = now
            self.counters.finished_requests += 1
            self.counters.prompt_tokens += request.prompt_tokens
            self.counters.cached_prompt_tokens += request.cached_tokens
            self._forget(request)
        return Progress(request, 1, first=first, finished=finished, interval=interval)

    def _enqueue(self, request: Request) -> None:
        key = (request.arrival, self._seq[request.rid])
        index = bisect.bisect(self._waiting_keys, key)
        self._waiting_keys.insert(index, key)
        self._waiting.insert(index, request)

    def _dequeue(self, request: Request) -> None:
        index = self._waiting.index(request)
        del self._waiting[index]
        del self._waiting_keys[index]

    def _remove_everywhere(self, request: Request, now: float) -> None:
        if request.state is RequestState.WAITING:
            self._dequeue(request)
        elif request in self._prefilling:
            self._prefilling.remove(request)
        elif request in self._receiving:
            self._receiving.remove(request)
        elif request in self._running:
            self._running.remove(request)
        self._set_full_held(request, 0)
        self._set_swa_held(request, 0)
        self._release_prefix(request, now)

    def _forget(self, request: Request) -> None:
        self._requests.pop(request.rid, None)
        self._seq.pop(request.rid, None)

    def _trim_windows(self, now: float) -> None:
        horizon = now - STATS_WINDOW_SECONDS
        while self._recent_tokens and self._recent_tokens[0][0] <= horizon:
            self._recent_token_sum -= self._recent_tokens.popleft()[1]
        while self._recent_retractions and self._recent_retractions[0] <= horizon:
            self._recent_retractions.popleft()


# ---- one replica: attention-DP groups in lockstep -----------------------------------------------------


@dataclass(frozen=True)
class ReplicaBatch:
    """One forward pass of the replica: what each attention-DP group runs in it (None: idles)."""

    start: float
    duration: float
    parts: tuple[Batch | None, ...]

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def kind(self) -> BatchKind:
        kinds = {p.kind for p in self.parts if p is not None}
        return BatchKind.PREFILL if BatchKind.PREFILL in kinds else BatchKind.DECODE

    @property
    def retracted(self) -> tuple[Request, ...]:
        return tuple(r for p in self.parts if p is not None for r in p.retracted)


class ReplicaEngine:
    """The engine of one replica: one scheduler (:class:`Engine`) per attention-DP group.

    With data-parallel attention (``--dp-size N --enable-dp-attention``; MiMo-V2.5-Pro on two nodes
    runs two groups) SGLang runs one scheduler per group, each with its own KV pools and its share of
    the limits: ``max_total_num_tokens`` and the SWA pool per group (the planner's ``tokens_per_group``),
    ``--max-running-requests`` and ``--chunked-prefill-size`` divided by N, and a bolder admission
    (SGLang scales the schedule conservativeness by 0.3). A controller hands requests to the groups in
    turn (round robin, SGLang's default load-balance method). The groups step in lockstep — the MoE
    layers' all-to-all needs every rank in every forward pass — so a step lasts as long as the whole
    replica needs for the union of the groups' work: the prefill of all their chunks or the decode of
    all their sequences, whichever is longer, from the replica-level performance model.

    With one group it is exactly one :class:`Engine`.
    """

    def __init__(
        self,
        limits: EngineLimits,
        timer: StepTimer,
        *,
        attention_dp: int = 1,
        policy: AdmissionPolicy | None = None,
        prefix_cache: bool = True,
    ) -> None:
        if attention_dp < 1:
            raise ValueError(f"attention_dp must be at least 1, got {attention_dp}")
        self.limits = limits
        self.timer = timer
        self.attention_dp = attention_dp
        if policy is None:
            policy = AdmissionPolicy.sglang(0.3 if attention_dp > 1 else 1.0)
        self.group_limits = EngineLimits(
            max_total_num_tokens=limits.max_total_num_tokens // attention_dp,
            swa_max_tokens=limits.swa_max_tokens // attention_dp,
            swa_window=limits.swa_window,
            max_running_requests=max(limits.max_running_requests // attention_dp, 1),
            context_length=limits.context_length,
            chunked_prefill_size=max(limits.chunked_prefill_size // attention_dp, limits.page_size),
            page_size=limits.page_size,
        )
        self.groups = [Engine(self.group_limits, timer, policy, prefix_cache=prefix_cache) for _ in range(attention_dp)]
        self._owner: dict[str, Engine] = {}
        self._holder: dict[str, Engine] = {}  # finished hold_kv requests, by the group that keeps their KV
        self._next_group = 0
        self._in_flight: ReplicaBatch | None = None

    @classmethod
    def of(cls, engine: Engine) -> ReplicaEngine:
        """A one-group replica around an existing scheduler."""
        replica = cls(engine.limits, engine.timer, policy=engine.policy)
        replica.groups = [engine]
        return replica

    def submit(
        self,
        rid: str,
        prompt_tokens: int,
        max_new_tokens: int,
        now: float,
        *,
        blocks: Sequence[int] = (),
        encoder_seconds: float = 0.0,
        transferred: bool = False,
        hold_kv: bool = False,
        awaiting_kv: bool = False,
        group: int | None = None,
    ) -> Request:
        """Queue a request on the next group in turn, or on ``group`` (a prefill server follows the
        bootstrap room: SGLang's ``follow_bootstrap_room`` load-balance method)."""
        index = self._next_group if group is None else group % len(self.groups)
        engine = self.groups[index]
        request = engine.submit(
            rid,
            prompt_tokens,
            max_new_tokens,
            now,
            blocks=blocks,
            encoder_seconds=encoder_seconds,
            transferred=transferred,
            hold_kv=hold_kv,
            awaiting_kv=awaiting_kv,
        )
        request.group = index
        if group is None:
            self._next_group = (self._next_group + 1) % len(self.groups)
        self._owner[rid] = engine
        return request

    def abort(self, rid: str, now: float) -> Request | None:
        group = self._owner.pop(rid, None)
        return None if group is None else group.abort(rid, now)

    def pause(self, mode: PauseMode, now: float) -> list[Request]:
        dropped = [r for g in self.groups for r in g.pause(mode, now)]
        for request in dropped:
            self._owner.pop(request.rid, None)
        return dropped

    def resume(self) -> None:
        for group in self.groups:
            group.resume()

    def flush_cache(self) -> bool:
        """Empty every group's prefix cache; False (nothing flushed) while requests are in the replica."""
        if not self.idle:
            return False
        return all([g.flush_cache() for g in self.groups])

    @property
    def paused(self) -> bool:
        return self.groups[0].paused

    def next_batch(self, now: float) -> ReplicaBatch | None:
        parts = tuple(g.next_batch(now) for g in self.groups)
        if all(p is None for p in parts):
            return None
        chunks = [c for p in parts if p is not None for c in p.chunks]
        decoding = [r for p in parts if p is not None for r in p.requests]
        if len(self.groups) == 1:
            duration = next(p for p in parts if p is not None).duration
        else:
            duration = max(
                prefill_pass_seconds(self.timer, chunks) if chunks else 0.0,
                self.timer.decode_step_seconds(len(decoding), sum(r.computed for r in decoding)) if decoding else 0.0,
                MIN_STEP_SECONDS,
            )
        self._in_flight = ReplicaBatch(now, duration, parts)
        return self._in_flight

    def complete(self, batch: ReplicaBatch) -> list[Progress]:
        if batch is not self._in_flight:
            raise RuntimeError("complete() takes the batch the last next_batch() returned")
        self._in_flight = None
        progress: list[Progress] = []
        for group, part in zip(self.groups, batch.parts, strict=True):
            if part is not None:
                progress.extend(group.complete(part, batch.end))
        for item in progress:
            if item.finished:
                owner = self._owner.pop(item.request.rid, None)
                if owner is not None and item.request.hold_kv:
                    self._holder[item.request.rid] = owner
        return progress

    def kv_arrived(self, rid: str) -> bool:
        """An ``awaiting_kv`` request's KV is there (see :meth:`Engine.kv_arrived`)."""
        group = self._owner.get(rid)
        return group is not None and group.kv_arrived(rid)

    def release(self, rid: str, now: float) -> bool:
        """Free the KV a finished ``hold_kv`` request kept; False if there is none."""
        group = self._holder.pop(rid, None)
        return group is not None and group.release(rid, now)

    def stats(self, now: float) -> EngineStats:
        """The replica as a whole (sums; usage over the replica's pools)."""
        parts = self.group_stats(now)
        return EngineStats(
            num_running_reqs=sum(p.num_running_reqs for p in parts),
            num_queue_reqs=sum(p.num_queue_reqs for p in parts),
            full_used_tokens=sum(p.full_used_tokens for p in parts),
            full_capacity=sum(p.full_capacity for p in parts),
            swa_used_tokens=sum(p.swa_used_tokens for p in parts),
            swa_capacity=sum(p.swa_capacity for p in parts),
            gen_throughput=sum(p.gen_throughput for p in parts),
            num_retracted_reqs=sum(p.num_retracted_reqs for p in parts),
            new_token_ratio=max(p.new_token_ratio for p in parts),
            tokens_in_flight=sum(p.tokens_in_flight for p in parts),
            paused=self.paused,
            full_evictable_tokens=sum(p.full_evictable_tokens for p in parts),
            cache_hit_rate=sum(p.cache_hit_rate for p in parts) / len(parts),
            prealloc_full_tokens=sum(p.prealloc_full_tokens for p in parts),
            prealloc_swa_tokens=sum(p.prealloc_swa_tokens for p in parts),
        )

    def group_stats(self, now: float) -> list[EngineStats]:
        """One snapshot per attention-DP group: what SGLang reports per ``dp_rank``."""
        return [g.stats(now) for g in self.groups]

    @property
    def counters(self) -> _Counters:
        total = _Counters()
        for group in self.groups:
            for name in total.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(group.counters, name))
        return total

    @property
    def idle(self) -> bool:
        return all(g.idle for g in self.groups)

    @property
    def num_requests(self) -> int:
        return sum(g.num_requests for g in self.groups)


# ---- virtual time ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """A request arriving at ``at`` (simulated seconds)."""

    at: float
    prompt_tokens: int
    max_new_tokens: int
    blocks: tuple[int, ...] = ()  # keys of the prompt's pages (prefix.py); () shares nothing


class Workload(Protocol):
    """What arrives when; may react to finished requests (closed loop)."""

    def initial(self) -> Iterable[Arrival]: ...

    def on_finish(self, request: Request, now: float) -> Iterable[Arrival]: ...


@dataclass
class OpenLoop:
    """Arrivals at fixed times, whatever the replica does (a replayed trace)."""

    arrivals: Sequence[Arrival]

    def initial(self) -> Iterable[Arrival]:
        return self.arrivals

    def on_finish(self, request: Request, now: float) -> Iterable[Arrival]:
        return ()


@dataclass
class ClosedLoop:
    """``concurrency`` clients, each sending its next request as soon as the last one finishes."""

    concurrency: int
    prompt_tokens: int
    max_new_tokens: int
    total_requests: int
    _sent: int = 0

    def initial(self) -> Iterable[Arrival]:
        first = min(self.concurrency, self.total_requests)
        self._sent = first
        return [Arrival(0.0, self.prompt_tokens, self.max_new_tokens) for _ in range(first)]

    def on_finish(self, request: Request, now: float) -> Iterable[Arrival]:
        if self._sent >= self.total_requests:
            return ()
        self._sent += 1
        return (Arrival(now, self.prompt_tokens, self.max_new_tokens),)


@dataclass
class VirtualRun:
    """The outcome of :func:`run_virtual`: every request, and the gauges after every step."""

    requests: list[Request] = field(default_factory=list)
    rejected: list[Arrival] = field(default_factory=list)
    samples: list[tuple[float, EngineStats]] = field(default_factory=list)
    end: float = 0.0

    @property
    def finished(self) -> list[Request]:
        return [r for r in self.requests if r.state is RequestState.FINISHED]


def run_virtual(
    engine: Engine | ReplicaEngine,
    workload: Workload,
    *,
    until: float = math.inf,
    sample_every: float = 0.0,
    on_step: Callable[[ReplicaBatch, list[Progress]], None] | None = None,
) -> VirtualRun:
    """Drive ``engine`` through ``workload`` in virtual time, as fast as the CPU allows.

    Arrivals that land while a batch runs join the queue at their own time and are considered when the
    next batch is planned — the same as a request reaching a busy SGLang scheduler. Stops when the
    workload is exhausted and the engine is idle, or at ``until``. ``sample_every`` > 0 records the
    engine's gauges at most that often (after a step); 0 records after every step.
    """
    replica = engine if isinstance(engine, ReplicaEngine) else ReplicaEngine.of(engine)
    run = VirtualRun()
    pending: list[tuple[float, int, Arrival]] = []
    counter = 0

    def add(arrivals: Iterable[Arrival]) -> None:
        nonlocal counter
        for arrival in arrivals:
            bisect.insort(pending, (arrival.at, counter, arrival))
            counter += 1

    def admit_until(t: float) -> None:
        while pending and pending[0][0] <= t:
            at, index, arrival = pending.pop(0)
            try:
                run.requests.append(
                    engine.submit(f"v{index}", arrival.prompt_tokens, arrival.max_new_tokens, at, blocks=arrival.blocks)
                )
            except RequestRejected:
                run.rejected.append(arrival)

    add(workload.initial())
    now = 0.0
    last_sample = -math.inf
    while now < until:
        admit_until(now)
        batch = replica.next_batch(now)
        if batch is None:
            if not pending:
                break
            now = max(now, pending[0][0])
            continue
        admit_until(batch.end)
        progress = replica.complete(batch)
        now = batch.end
        for item in progress:
            if item.finished:
                add(workload.on_finish(item.request, now))
        if on_step is not None:
            on_step(batch, progress)
        if now - last_sample >= sample_every:
            run.samples.append((now, replica.stats(now)))
            last_sample = now
    run.end = now
    return run
