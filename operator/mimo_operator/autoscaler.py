"""The autoscaler's loop in the operator: scrape each ready gang's head, ask the pure policy, act.

Per deployment with ``spec.autoscaling.enabled``: every scrape interval, each Ready gang's node-0
SGLang ``/metrics`` is read directly (the head's IP, the plan's port: the gang's NetworkPolicy admits
the operator); the samples feed :func:`mimo_operator.autoscaling.policy.decide` with the gangs' phases,
so gangs still loading count as capacity on its way; a changed decision is written to ``spec.replicas``
(the planner of steps then creates a gang, or drains the highest one before deleting it). A ready gang
without fresh metrics means no action. The signals are exported as the operator's metrics, so KEDA or
HPA can scale on them instead when autoscaling is off.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.autoscaling.policy import (
    Decision,
    Gang,
    GangPhase,
    MetricSample,
    Observation,
    PolicyConfig,
    decide,
)
from mimo_operator.autoscaling.simulator import capacity_of
from mimo_operator.gangs import GangHealth, Health, ObservedGang
from mimo_operator.perf import performance_of
from mimo_operator.plan import Plan
from mimo_operator.spec import DeploymentSpec

__all__ = ["AutoscalerMemory", "observe_gangs", "parse_sglang_metrics", "policy_config", "scrape", "step"]

log = logging.getLogger("mimo.operator.autoscaler")

# Exported for KEDA/HPA (through an adapter) and dashboards: what the policy sees, per deployment.
SIGNAL = prometheus_client.Gauge("mimo_autoscaler_signal", "Signals the autoscaling policy reads",
                                 ["namespace", "deployment", "signal"])
DESIRED = prometheus_client.Gauge("mimo_autoscaler_desired_replicas", "The policy's desired replicas",
                                  ["namespace", "deployment"])
DECISIONS = prometheus_client.Counter("mimo_autoscaler_decisions_total", "Scale decisions taken",
                                      ["namespace", "deployment", "action"])
SCRAPE_FAILURES = prometheus_client.Counter("mimo_autoscaler_scrape_failures_total",
                                            "Scrapes of a gang head's /metrics that failed",
                                            ["namespace", "deployment"])

SCRAPE_INTERVAL_SECONDS = 10.0
# Typical request shape for the capacity summary when no finished request has been measured yet.
_TYPICAL_CONTEXT_TOKENS = 2048
_TYPICAL_OUTPUT_TOKENS = 256
_ITL_BUDGET_SECONDS = 0.1
_MAX_FORECAST_SECONDS = 300.0


@dataclass
class AutoscalerMemory:
    """Recent samples per gang (observations, refilled after an operator restart) and the TTFT
    histogram seen at the previous scrape, to take the p95 of what happened in between."""

    samples: dict[str, deque[MetricSample]] = field(default_factory=dict)
    ttft_buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    last_scrape: float = 0.0
    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None


def policy_config(spec: DeploymentSpec, plan: Plan) -> PolicyConfig:
    a = spec.autoscaling
    capacity = capacity_of(performance_of(plan), itl_slo_seconds=_ITL_BUDGET_SECONDS,
                           context_tokens=min(_TYPICAL_CONTEXT_TOKENS, plan.context_length),
                           output_tokens=_TYPICAL_OUTPUT_TOKENS)
    stable = float(max(30, a.scale_up_window_seconds))
    return PolicyConfig(
        capacity=capacity,
        min_replicas=a.min_replicas,
        max_replicas=a.max_replicas,
        target_token_usage=a.target_kv_cache_usage,
        stable_window_seconds=stable,
        panic_window_seconds=min(stable, 30.0),
        scale_down_window_seconds=float(max(stable, a.scale_down_window_seconds)),
        # Demand is projected over a gang's start-up (one ordered now serves only after it), but no further
        # than a few minutes: beyond that a trend says little, and a cold Pro start can take a quarter hour.
        forecast_seconds=float(min(plan.startup.expected_seconds, _MAX_FORECAST_SECONDS)),
        max_sample_age_seconds=3 * SCRAPE_INTERVAL_SECONDS + 5,
        ttft_slo_seconds=a.ttft_slo_seconds,
    )


def parse_sglang_metrics(text: str, at: float) -> tuple[MetricSample, list[tuple[float, float]]]:
    """One scrape of SGLang's /metrics → a sample (summing queues and running requests over DP ranks,
    the largest token usage) and the cumulative TTFT histogram buckets (le, count)."""
    gauges: dict[str, list[float]] = {}
    counters: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for point in family.samples:
            name = point.name
            if name.startswith("sglang:time_to_first_token_seconds_bucket"):
                le = point.labels.get("le", "+Inf")
                bound = math.inf if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + point.value
            elif name.endswith("_total"):
                counters[name] = counters.get(name, 0.0) + point.value
            else:
                gauges.setdefault(name, []).append(point.value)

    def gauge(name: str, combine: str) -> float:
        values = gauges.get(name) or [0.0]
        return max(values) if combine == "max" else sum(values)

    usage = gauge("sglang:token_usage", "max")
    if "sglang:token_usage" not in gauges:
        usage = max(gauge("sglang:full_token_usage", "max"), gauge("sglang:swa_token_usage", "max"))
    sample = MetricSample(
        at=at, token_usage=usage,
        queue_requests=gauge("sglang:num_queue_reqs", "sum"),
        running_requests=gauge("sglang:num_running_reqs", "sum"),
        prompt_tokens_total=counters.get("sglang:prompt_tokens_total"),
        generation_tokens_total=counters.get("sglang:generation_tokens_total"),
        requests_total=counters.get("sglang:num_requests_total"),
    )
    return sample, sorted(buckets.items())


def p95_between(before: Sequence[tuple[float, float]] | None, after: Sequence[tuple[float, float]]) -> float | None:
    """The 95th percentile of TTFT over the requests observed between two scrapes (bucket upper bound)."""
    if not after:
        return None
    prev = dict(before or [])
    deltas = [(le, count - prev.get(le, 0.0)) for le, count in after]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for le, count in deltas:
        if count >= 0.95 * total:
            return le if math.isfinite(le) else None
    return None


async def scrape(session: aiohttp.ClientSession, ip: str, port: int,
                 at: float) -> tuple[MetricSample, list[tuple[float, float]]] | None:
    try:
        async with session.get(f"http://{ip}:{port}/metrics", timeout=aiohttp.ClientTimeout(total=3.0)) as r:
            if r.status != 200:
                return None
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return parse_sglang_metrics(text, at)


def observe_gangs(gangs: Iterable[ObservedGang], health: Mapping[str, Health], now: float) -> tuple[Gang, ...]:
    out = []
    for g in gangs:
        state = health[g.name].state
        if state is GangHealth.READY:
            phase = GangPhase.READY
        elif state is GangHealth.DRAINING:
            phase = GangPhase.DRAINING
        elif state in (GangHealth.PENDING, GangHealth.STARTING):
            phase = GangPhase.STARTING
        else:
            continue
        since = g.drain_started if phase is GangPhase.DRAINING and g.drain_started else g.created
        out.append(Gang(g.name, phase, since or now))
    return tuple(out)


async def step(*, session: aiohttp.ClientSession, namespace: str, name: str, spec: DeploymentSpec, plan: Plan,
               gangs: Sequence[ObservedGang], health: Mapping[str, Health], memory: AutoscalerMemory,
               now: float) -> Decision | None:
    """Scrape and decide, at most once per scrape interval; None between intervals."""
    if now - memory.last_scrape < SCRAPE_INTERVAL_SECONDS:
        return None
    memory.last_scrape = now
    config = policy_config(spec, plan)
    ready = [g for g in gangs if health[g.name].state is GangHealth.READY and g.head and g.head.ip]

    async def one(g: ObservedGang) -> None:
        assert g.head is not None
        assert g.head.ip is not None
        got = await scrape(session, g.head.ip, plan.port, now)
        if got is None:
            SCRAPE_FAILURES.labels(namespace, name).inc()
            return
        sample, buckets = got
        sample = MetricSample(**{**sample.__dict__,
                                 "ttft_p95_seconds": p95_between(memory.ttft_buckets.get(g.name), buckets)})
        memory.ttft_buckets[g.name] = buckets
        history = memory.samples.setdefault(g.name, deque())
        history.append(sample)

    await asyncio.gather(*(one(g) for g in ready))
    horizon = now - config.scale_down_window_seconds - config.stable_window_seconds
    for gang_name in list(memory.samples):
        history = memory.samples[gang_name]
        while history and history[0].at < horizon:
            history.popleft()
        if not history:
            del memory.samples[gang_name]
    observation = Observation(now=now, gangs=observe_gangs(gangs, health, now),
                              samples={k: tuple(v) for k, v in memory.samples.items()},
                              last_scale_up_at=memory.last_scale_up_at,
                              last_scale_down_at=memory.last_scale_down_at)
    decision = decide(observation, config)
    signals = decision.signals
    for key, value in (("demand", signals.demand), ("panic_demand", signals.panic_demand),
                       ("forecast_demand", signals.forecast_demand), ("token_usage", signals.token_usage),
                       ("queue_requests", signals.queue_requests), ("running_requests", signals.running_requests),
                       ("ttft_p95_seconds", signals.ttft_p95_seconds), ("utilisation", signals.utilisation)):
        if value is not None:
            SIGNAL.labels(namespace, name, key).set(value)
    DESIRED.labels(namespace, name).set(decision.desired_replicas)
    return decision
