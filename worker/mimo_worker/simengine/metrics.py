"""SGLang's Prometheus metrics, fed by the simulated engine.

Names, label sets and histogram buckets are SGLang 0.5's (``reference/sglang-mimo-facts.md`` §3), so a
dashboard, an alert or the autoscaler written against this engine works against the real one:

* scheduler metrics carry ``model_name``, ``engine_type``, ``tp_rank``, ``pp_rank``, ``moe_ep_rank``
  (one series: the simulated replica is one scheduler, so there is no ``dp_rank``);
* tokenizer (request-level) metrics carry ``model_name`` and ``is_streaming``.

Times are simulated seconds: with ``--mimo-speedup 10`` a TTFT of 4 s in the metrics took 0.4 s of wall
time. Everything lives in a private ``CollectorRegistry`` — several engines can share a process (tests)
and nothing leaks into a host program's global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mimo_worker.simengine.engine import EngineLimits, EngineStats, Progress

__all__ = ["SCHEDULER_LABELS", "TOKENIZER_LABELS", "EngineMetrics", "empty_exposition"]

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


class EngineMetrics:
    """The metrics of one simulated replica; :meth:`observe` per step, :meth:`render` per scrape."""

    def __init__(self, model_name: str, limits: EngineLimits) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._scheduler_labels = {
            "model_name": model_name,
            "engine_type": "unified",
            "tp_rank": "0",
            "pp_rank": "0",
            "moe_ep_rank": "0",
        }
        self._model_name = model_name
        reg = self.registry
        labels = SCHEDULER_LABELS

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
            "sglang:cached_tokens_total", "Number of cached prompt tokens.", labelnames=tok, registry=reg
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
        self.e2e_request_latency = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of end-to-end request latency in seconds.",
            labelnames=tok,
            buckets=E2E_BUCKETS,
            registry=reg,
        )

        sched = self._scheduler_labels
        self.max_total_num_tokens.labels(**sched).set(limits.max_total_num_tokens)
        self.max_total_num_tokens_swa.labels(**sched).set(limits.swa_max_tokens)
        self.context_len.labels(**sched).set(limits.context_length)
        self.page_size.labels(**sched).set(limits.page_size)
        self._retracted_seen = 0
        self._prefill_seen = 0
        self._decode_seen = 0
        self.update(None)

    def observe(self, progress: Progress, streaming: bool) -> None:
        """Record one request's progress from a finished step (tokenizer-side metrics)."""
        tok = {"model_name": self._model_name, "is_streaming": "true" if streaming else "false"}
        request = progress.request
        if progress.first and request.ttft is not None:
            self.time_to_first_token.labels(**tok).observe(request.ttft)
            if request.queue_seconds is not None:
                self.queue_time.labels(**self._scheduler_labels).observe(request.queue_seconds)
        elif progress.new_tokens:
            self.inter_token_latency.labels(**tok).observe(progress.interval / progress.new_tokens)
        if progress.finished and request.e2e_seconds is not None:
            self.prompt_tokens_total.labels(**tok).inc(request.prompt_tokens)
            self.generation_tokens_total.labels(**tok).inc(request.output_tokens)
            self.num_requests_total.labels(**tok).inc()
            self.e2e_request_latency.labels(**tok).observe(request.e2e_seconds)

    def observe_abort(self, streaming: bool) -> None:
        tok = {"model_name": self._model_name, "is_streaming": "true" if streaming else "false"}
        self.num_aborted_requests_total.labels(**tok).inc()

    def update(
        self,
        stats: EngineStats | None,
        *,
        retracted_total: int = 0,
        prefill_tokens_total: int = 0,
        decode_tokens_total: int = 0,
    ) -> None:
        """Set the scheduler gauges from a snapshot (``None``: an engine that is not serving yet)."""
        sched = self._scheduler_labels
        if stats is None:
            for g in (self.num_running_reqs, self.num_queue_reqs, self.token_usage, self.gen_throughput):
                g.labels(**sched).set(0)
            return
        self.num_running_reqs.labels(**sched).set(stats.num_running_reqs)
        self.num_queue_reqs.labels(**sched).set(stats.num_queue_reqs)
        self.token_usage.labels(**sched).set(stats.token_usage)
        self.full_token_usage.labels(**sched).set(stats.full_token_usage)
        self.swa_token_usage.labels(**sched).set(stats.swa_token_usage)
        self.num_used_tokens.labels(**sched).set(max(stats.full_used_tokens, stats.swa_used_tokens))
        self.kv_used_tokens.labels(**sched).set(stats.full_used_tokens)
        self.kv_available_tokens.labels(**sched).set(stats.kv_available_tokens)
        self.kv_evictable_tokens.labels(**sched).set(0)
        self.swa_used_tokens.labels(**sched).set(stats.swa_used_tokens)
        self.swa_available_tokens.labels(**sched).set(stats.swa_capacity - stats.swa_used_tokens)
        self.gen_throughput.labels(**sched).set(stats.gen_throughput)
        self.cache_hit_rate.labels(**sched).set(0.0)
        self.num_retracted_reqs.labels(**sched).set(stats.num_retracted_reqs)
        self.num_paused_reqs.labels(**sched).set(0)
        self.new_token_ratio.labels(**sched).set(stats.new_token_ratio)
        # counters only move forward: add what happened since the last update
        self.num_retracted_requests_total.labels(**sched).inc(max(retracted_total - self._retracted_seen, 0))
        self._retracted_seen = max(retracted_total, self._retracted_seen)
        self.realtime_tokens_total.labels(**sched, mode="prefill_compute").inc(
            max(prefill_tokens_total - self._prefill_seen, 0)
        )
        self._prefill_seen = max(prefill_tokens_total, self._prefill_seen)
        self.realtime_tokens_total.labels(**sched, mode="decode").inc(max(decode_tokens_total - self._decode_seen, 0))
        self._decode_seen = max(decode_tokens_total, self._decode_seen)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def empty_exposition() -> bytes:
    """What a non-zero node rank's dummy server shows at /metrics: a valid, empty exposition."""
    return generate_latest(CollectorRegistry(auto_describe=True))
