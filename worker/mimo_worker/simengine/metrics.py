"""SGLang's Prometheus metrics, fed by the simulated engine.

Names, label sets and histogram buckets are SGLang 0.5's (``reference/sglang-mimo-facts.md`` §3), so a
dashboard, an alert or the autoscaler written against this engine works against the real one:

* scheduler metrics carry ``model_name``, ``engine_type``, ``tp_rank``, ``pp_rank``, ``moe_ep_rank``,
  one series per scheduler that records: with data-parallel attention that is the first rank of each
  attention-DP group, labelled ``dp_rank`` too (``tp_rank`` = group × attention TP size);
* tokenizer (request-level) metrics carry ``model_name`` and ``is_streaming``.

A prefill or decode server (``--disaggregation-mode``) labels its scheduler series ``engine_type``
``prefill`` or ``decode``, as SGLang does, and adds SGLang's PD metrics (its scheduler metrics
collector, "PD disaggregation"): the queue gauges ``sglang:num_prefill_bootstrap_queue_reqs``,
``sglang:num_prefill_inflight_queue_reqs``, ``sglang:num_decode_prealloc_queue_reqs`` and
``sglang:num_decode_transfer_queue_reqs``; the decode's ``sglang:prealloc_full_token_usage`` and
``sglang:prealloc_swa_token_usage`` (the pools' share reserved for KV on its way); the prefill's transfer
histograms
``sglang:kv_transfer_latency_ms``, ``sglang:kv_transfer_total_mb`` and ``sglang:kv_transfer_speed_gb_s``;
both sides' ``sglang:kv_transfer_bootstrap_ms`` and ``sglang:kv_transfer_alloc_ms``; and the failure
counters ``sglang:num_bootstrap_failed_reqs_total`` and ``sglang:num_transfer_failed_reqs_total``. The
queues are the server's (the simulation keeps them before the schedulers): their counts go on the first
scheduler's series, 0 on the others, so a sum over series is the server's count.

Times are simulated seconds: with ``--mimo-speedup 10`` a TTFT of 4 s in the metrics took 0.4 s of wall
time. Everything lives in a private ``CollectorRegistry`` — several engines can share a process (tests)
and nothing leaks into a host program's global registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mimo_worker.simengine.engine import EngineLimits, EngineStats, Progress

_DP_RANK = re.compile(r'[{,]dp_rank="(\d+)"')


@dataclass(frozen=True)
class GroupTotals:
    """A scheduler's running totals, which the Prometheus counters follow."""

    retracted: int
    prefill: int  # prompt tokens computed
    decode: int  # output tokens produced
    cached: int = 0  # prompt tokens the prefix cache supplied


@dataclass
class _Seen:
    retracted: int = 0
    prefill: int = 0
    decode: int = 0
    cached: int = 0


__all__ = [
    "SCHEDULER_LABELS",
    "TOKENIZER_LABELS",
    "EngineMetrics",
    "GroupTotals",
    "PdQueues",
    "empty_exposition",
]

SCHEDULER_LABELS = ("model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank")
TOKENIZER_LABELS = ("model_name", "is_streaming")

# SGLang's default buckets (its tokenizer metrics collector).
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1,
    2,
    4,
    6,
    8,
    10,
    20,
    40,
    60,
    80,
    100,
    200,
    400,
    600,
    1200,
    1800,
    2400,
)
ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
    0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
)  # fmt: skip
QUEUE_BUCKETS = (
    0.0, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100,
    200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000, 2500, 3000,
)  # fmt: skip
# SGLang's PD buckets (its scheduler metrics collector)
KV_TRANSFER_LATENCY_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
KV_TRANSFER_SPEED_GB_S_BUCKETS = (0.1, 0.5, 1, 5, 10, 25, 50, 100, 200, 400)
KV_TRANSFER_TOTAL_MB_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)
KV_TRANSFER_BOOTSTRAP_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


@dataclass(frozen=True)
class PdQueues:
    """A PD server's requests outside its schedulers, by SGLang's queue."""

    prefill_bootstrap: int = 0  # prefill: waiting for the decode server's handshake
    prefill_inflight: int = 0  # prefill: prompt computed, KV in transfer
    decode_prealloc: int = 0  # decode: handshake with the prefill's bootstrap server not done
    decode_transfer: int = 0  # decode: waiting for the KV to arrive


class EngineMetrics:
    """The metrics of one simulated replica; :meth:`observe` per step, :meth:`update` before a scrape."""

    def __init__(
        self,
        model_name: str,
        limits: EngineLimits,
        *,
        attention_dp: int = 1,
        tp_size: int = 1,
        ep_size: int = 1,
        disaggregation_mode: str = "null",
        nnodes: int = 1,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._nodes = max(nnodes, 1)
        self._attention_tp = max(tp_size // max(attention_dp, 1), 1)
        self._gpus_per_node = max(tp_size // self._nodes, 1)
        self.disaggregation_mode = disaggregation_mode
        engine_type = disaggregation_mode if disaggregation_mode in ("prefill", "decode") else "unified"
        attention_tp = max(tp_size // attention_dp, 1)
        self._group_labels: list[dict[str, str]] = []
        for group in range(attention_dp):
            tp_rank = group * attention_tp
            group_labels = {
                "model_name": model_name,
                "engine_type": engine_type,
                "tp_rank": str(tp_rank),
                "pp_rank": "0",
                "moe_ep_rank": str(tp_rank % max(ep_size, 1)),
            }
            if attention_dp > 1:
                group_labels["dp_rank"] = str(group)
            self._group_labels.append(group_labels)
        self._model_name = model_name
        reg = self.registry
        labels = SCHEDULER_LABELS + (("dp_rank",) if attention_dp > 1 else ())

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labelnames=labels, registry=reg)

        self.num_running_reqs = gauge("sglang:num_running_reqs", "The number of running requests.")
        self.num_queue_reqs = gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.")
        self.token_usage = gauge("sglang:token_usage", "The token usage of the fullest KV pool.")
        self.full_token_usage = gauge("sglang:full_token_usage", "The token usage of the full-attention pool.")
        self.swa_token_usage = gauge("sglang:swa_token_usage", "The token usage of the sliding-window pool.")
        self.num_used_tokens = gauge("sglang:num_used_tokens", "The larger of the pools' used tokens.")
        self.kv_used_tokens = gauge("sglang:kv_used_tokens", "Used token slots of the full-attention pool.")
        self.kv_available_tokens = gauge("sglang:kv_available_tokens", "Free token slots of the full-attention pool.")
        self.kv_evictable_tokens = gauge(
            "sglang:kv_evictable_tokens", "Evictable (prefix-cached) token slots of the full pool."
        )
        self.swa_used_tokens = gauge("sglang:swa_used_tokens", "Used token slots of the sliding-window pool.")
        self.swa_available_tokens = gauge("sglang:swa_available_tokens", "Free token slots of the sliding-window pool.")
        self.max_total_num_tokens = gauge(
            "sglang:max_total_num_tokens", "Token capacity of the full-attention KV pool."
        )
        self.max_total_num_tokens_swa = gauge(
            "sglang:max_total_num_tokens_swa", "Token capacity of the sliding-window KV pool."
        )
        self.gen_throughput = gauge("sglang:gen_throughput", "The generation throughput (token/s).")
        self.cache_hit_rate = gauge("sglang:cache_hit_rate", "The prefix cache hit rate.")
        self.num_retracted_reqs = gauge("sglang:num_retracted_reqs", "The number of retracted requests.")
        self.num_paused_reqs = gauge("sglang:num_paused_reqs", "The number of paused requests.")
        self.new_token_ratio = gauge("sglang:new_token_ratio", "The new token ratio.")
        self.context_len = gauge("sglang:context_len", "The context length.")
        self.page_size = gauge("sglang:page_size", "The KV cache page size.")

        self.num_retracted_requests_total = Counter(
            "sglang:num_retracted_requests_total",
            "Total number of retracted requests.",
            labelnames=labels,
            registry=reg,
        )
        self.realtime_tokens_total = Counter(
            "sglang:realtime_tokens_total",
            "Total number of tokens processed. mode: prefill_compute, prefill_cache, decode.",
            labelnames=(*labels, "mode"),
            registry=reg,
        )
        self.queue_time = Histogram(
            "sglang:queue_time_seconds",
            "Histogram of queueing time in seconds.",
            labelnames=labels,
            buckets=QUEUE_BUCKETS,
            registry=reg,
        )

        tok = TOKENIZER_LABELS
        self.prompt_tokens_total = Counter(
            "sglang:prompt_tokens_total", "Number of prefill tokens processed.", labelnames=tok, registry=reg
        )
        self.generation_tokens_total = Counter(
            "sglang:generation_tokens_total",
            "Number of generation tokens processed.",
            labelnames=tok,
            registry=reg,
        )
        self.cached_tokens_total = Counter(
            "sglang:cached_tokens_total",
            "Number of cached prompt tokens by source (device/host/storage).",
            labelnames=("model_name", "cache_source"),
            registry=reg,
        )
        self.num_requests_total = Counter(
            "sglang:num_requests_total", "Number of requests processed.", labelnames=tok, registry=reg
        )
        self.num_aborted_requests_total = Counter(
            "sglang:num_aborted_requests_total", "Number of requests aborted.", labelnames=tok, registry=reg
        )
        self.time_to_first_token = Histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labelnames=tok,
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self.inter_token_latency = Histogram(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labelnames=tok,
            buckets=ITL_BUCKETS,
            registry=reg,
        )
        self.request_time_per_output_token = Histogram(
            "sglang:request_time_per_output_token_seconds",
            "Histogram of request time per output token in seconds.",
            labelnames=tok,
            buckets=ITL_BUCKETS,
            registry=reg,
        )
        self.e2e_request_latency = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of end-to-end request latency in seconds.",
            labelnames=tok,
            buckets=E2E_BUCKETS,
            registry=reg,
        )

        if disaggregation_mode in ("prefill", "decode"):
            self._pd_metrics(gauge, labels)

        for sched in self._group_labels:
            self.max_total_num_tokens.labels(**sched).set(limits.max_total_num_tokens)
            self.max_total_num_tokens_swa.labels(**sched).set(limits.swa_max_tokens)
            self.context_len.labels(**sched).set(limits.context_length)
            self.page_size.labels(**sched).set(limits.page_size)
        self._seen = [_Seen() for _ in self._group_labels]
        self.update(None)

    def _pd_metrics(self, gauge: Callable[[str, str], Gauge], labels: tuple[str, ...]) -> None:
        reg = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labelnames=labels, buckets=buckets, registry=reg)

        self.num_prefill_bootstrap_queue_reqs = gauge(
            "sglang:num_prefill_bootstrap_queue_reqs", "The number of requests in the prefill bootstrap queue."
        )
        self.num_prefill_inflight_queue_reqs = gauge(
            "sglang:num_prefill_inflight_queue_reqs", "The number of requests in the prefill inflight queue."
        )
        self.num_decode_prealloc_queue_reqs = gauge(
            "sglang:num_decode_prealloc_queue_reqs", "The number of requests in the decode prealloc queue."
        )
        self.num_decode_transfer_queue_reqs = gauge(
            "sglang:num_decode_transfer_queue_reqs", "The number of requests in the decode transfer queue."
        )
        self.kv_transfer_latency_ms = histogram(
            "sglang:kv_transfer_latency_ms", "Histogram of KV cache transfer latency in ms.",
            KV_TRANSFER_LATENCY_MS_BUCKETS,
        )  # fmt: skip
        self.kv_transfer_speed_gb_s = histogram(
            "sglang:kv_transfer_speed_gb_s", "Histogram of KV cache transfer speed in GB/s.",
            KV_TRANSFER_SPEED_GB_S_BUCKETS,
        )  # fmt: skip
        self.kv_transfer_total_mb = histogram(
            "sglang:kv_transfer_total_mb", "Histogram of KV cache transfer size in MB.", KV_TRANSFER_TOTAL_MB_BUCKETS
        )
        self.kv_transfer_bootstrap_ms = histogram(
            "sglang:kv_transfer_bootstrap_ms", "Histogram of KV transfer bootstrap time in ms.",
            KV_TRANSFER_BOOTSTRAP_MS_BUCKETS,
        )  # fmt: skip
        self.kv_transfer_alloc_ms = histogram(
            "sglang:kv_transfer_alloc_ms", "Histogram of KV transfer allocation waiting time in ms.",
            KV_TRANSFER_BOOTSTRAP_MS_BUCKETS,
        )  # fmt: skip
        self.prealloc_full_token_usage = gauge(
            "sglang:prealloc_full_token_usage",
            "Share of the full-attention KV pool held by decode requests whose KV transfer is pending.",
        )
        self.prealloc_swa_token_usage = gauge(
            "sglang:prealloc_swa_token_usage",
            "Share of the SWA KV pool held by decode requests whose KV transfer is pending.",
        )
        self.num_bootstrap_failed_reqs_total = Counter(
            "sglang:num_bootstrap_failed_reqs_total", "The number of bootstrap failed requests.",
            labelnames=labels, registry=reg,
        )  # fmt: skip
        self.num_transfer_failed_reqs_total = Counter(
            "sglang:num_transfer_failed_reqs_total", "The number of transfer failed requests.",
            labelnames=labels, registry=reg,
        )  # fmt: skip
        self.set_pd_queues(PdQueues())

    def set_pd_queues(self, queues: PdQueues) -> None:
        """The PD queue gauges: the counts on the first scheduler's series, 0 on the others."""
        for index, sched in enumerate(self._group_labels):
            first = index == 0
            self.num_prefill_bootstrap_queue_reqs.labels(**sched).set(queues.prefill_bootstrap if first else 0)
            self.num_prefill_inflight_queue_reqs.labels(**sched).set(queues.prefill_inflight if first else 0)
            self.num_decode_prealloc_queue_reqs.labels(**sched).set(queues.decode_prealloc if first else 0)
            self.num_decode_transfer_queue_reqs.labels(**sched).set(queues.decode_transfer if first else 0)

    def observe_kv_transfer(self, group: int, seconds: float, total_bytes: int) -> None:
        """A prefill server's finished hand-over of one request's KV (simulated seconds)."""
        sched = self._group_labels[group % len(self._group_labels)]
        total_mb = total_bytes / (1024 * 1024)
        self.kv_transfer_latency_ms.labels(**sched).observe(seconds * 1000)
        self.kv_transfer_total_mb.labels(**sched).observe(total_mb)
        if seconds > 0:
            self.kv_transfer_speed_gb_s.labels(**sched).observe(total_mb / 1024 / seconds)

    def observe_kv_bootstrap(self, group: int, bootstrap_seconds: float, alloc_seconds: float) -> None:
        """How long a request waited for the other side's handshake, then for its KV slots."""
        sched = self._group_labels[group % len(self._group_labels)]
        self.kv_transfer_bootstrap_ms.labels(**sched).observe(bootstrap_seconds * 1000)
        self.kv_transfer_alloc_ms.labels(**sched).observe(alloc_seconds * 1000)

    def count_pd_failure(self, stage: str) -> None:
        """One request failed in ``stage`` ``"bootstrap"`` (no handshake) or ``"transfer"`` (no KV)."""
        counter = self.num_bootstrap_failed_reqs_total if stage == "bootstrap" else self.num_transfer_failed_reqs_total
        counter.labels(**self._group_labels[0]).inc()

    def observe(self, progress: Progress, streaming: bool) -> None:
        """Record one request's progress from a finished step (tokenizer-side metrics)."""
        tok = {"model_name": self._model_name, "is_streaming": "true" if streaming else "false"}
        request = progress.request
        if progress.first and request.ttft is not None:
            self.time_to_first_token.labels(**tok).observe(request.ttft)
            if request.queue_seconds is not None:
                self.queue_time.labels(**self._group_labels[request.group]).observe(request.queue_seconds)
        elif progress.new_tokens:
            self.inter_token_latency.labels(**tok).observe(progress.interval / progress.new_tokens)
        if progress.finished and request.e2e_seconds is not None:
            self.prompt_tokens_total.labels(**tok).inc(request.prompt_tokens)
            if request.cached_tokens:
                # SGLang reports a hit in GPU memory as source "device" (no host or storage tier here)
                self.cached_tokens_total.labels(model_name=self._model_name, cache_source="device").inc(
                    request.cached_tokens
                )
            self.generation_tokens_total.labels(**tok).inc(request.output_tokens)
            self.num_requests_total.labels(**tok).inc()
            self.e2e_request_latency.labels(**tok).observe(request.e2e_seconds)
            if request.ttft is not None and request.output_tokens > 1 and request.e2e_seconds > request.ttft:
                # SGLang's time per output token: the decode latency after the first token over the tokens after it.
                self.request_time_per_output_token.labels(**tok).observe(
                    (request.e2e_seconds - request.ttft) / (request.output_tokens - 1))

    def observe_abort(self, streaming: bool) -> None:
        tok = {"model_name": self._model_name, "is_streaming": "true" if streaming else "false"}
        self.num_aborted_requests_total.labels(**tok).inc()

    def update(self, groups: Sequence[tuple[EngineStats, GroupTotals]] | None) -> None:
        """Set the scheduler metrics, one snapshot per attention-DP group (``None``: not serving yet)."""
        if groups is None:
            for sched in self._group_labels:
                for g in (self.num_running_reqs, self.num_queue_reqs, self.token_usage, self.gen_throughput):
                    g.labels(**sched).set(0)
            return
        for sched, seen, (stats, totals) in zip(self._group_labels, self._seen, groups, strict=True):
            self.num_running_reqs.labels(**sched).set(stats.num_running_reqs)
            self.num_queue_reqs.labels(**sched).set(stats.num_queue_reqs)
            self.token_usage.labels(**sched).set(stats.token_usage)
            self.full_token_usage.labels(**sched).set(stats.full_token_usage)
            self.swa_token_usage.labels(**sched).set(stats.swa_token_usage)
            self.num_used_tokens.labels(**sched).set(max(stats.full_used_tokens, stats.swa_used_tokens))
            self.kv_used_tokens.labels(**sched).set(stats.full_used_tokens)
            self.kv_available_tokens.labels(**sched).set(stats.kv_available_tokens)
            self.kv_evictable_tokens.labels(**sched).set(stats.full_evictable_tokens)
            self.swa_used_tokens.labels(**sched).set(stats.swa_used_tokens)
            self.swa_available_tokens.labels(**sched).set(stats.swa_capacity - stats.swa_used_tokens)
            self.gen_throughput.labels(**sched).set(stats.gen_throughput)
            self.cache_hit_rate.labels(**sched).set(stats.cache_hit_rate)
            self.num_retracted_reqs.labels(**sched).set(stats.num_retracted_reqs)
            self.num_paused_reqs.labels(**sched).set(0)
            self.new_token_ratio.labels(**sched).set(stats.new_token_ratio)
            if self.disaggregation_mode in ("prefill", "decode"):
                self.prealloc_full_token_usage.labels(**sched).set(stats.prealloc_full_tokens / stats.full_capacity)
                self.prealloc_swa_token_usage.labels(**sched).set(stats.prealloc_swa_tokens / stats.swa_capacity)
            # counters only move forward: add what happened since the last update
            self.num_retracted_requests_total.labels(**sched).inc(max(totals.retracted - seen.retracted, 0))
            self.realtime_tokens_total.labels(**sched, mode="prefill_compute").inc(
                max(totals.prefill - seen.prefill, 0)
            )
            self.realtime_tokens_total.labels(**sched, mode="prefill_cache").inc(max(totals.cached - seen.cached, 0))
            self.realtime_tokens_total.labels(**sched, mode="decode").inc(max(totals.decode - seen.decode, 0))
            seen.retracted = max(totals.retracted, seen.retracted)
            seen.prefill = max(totals.prefill, seen.prefill)
            seen.decode = max(totals.decode, seen.decode)
            seen.cached = max(totals.cached, seen.cached)

    def render(self, node: int = 0) -> bytes:
        """The exposition one node's /metrics shows: node 0 the tokenizer's series and the schedulers of the
        attention-DP groups whose first GPU it hosts; node ``n`` ≥ 1 only its own groups' schedulers (SGLang
        exports a scheduler's metrics on the node it runs on)."""
        text = generate_latest(self.registry).decode()
        if self._nodes <= 1:
            return text.encode() if node == 0 else empty_exposition()
        kept = []
        for line in text.splitlines():
            if line.startswith("#"):
                kept.append(line)
                continue
            match = _DP_RANK.search(line)
            owner = self._leader_node(int(match.group(1))) if match else 0
            if owner == node:
                kept.append(line)
        return ("\n".join(kept) + "\n").encode()

    def _leader_node(self, group: int) -> int:
        """The node rank hosting the first GPU of attention-DP group ``group``."""
        return min(group * self._attention_tp // self._gpus_per_node, self._nodes - 1)


def empty_exposition() -> bytes:
    """What a non-zero node rank's dummy server shows at /metrics: a valid, empty exposition."""
    return generate_latest(CollectorRegistry(auto_describe=True))
