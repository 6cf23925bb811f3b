"""The one translation of a deployment into the autoscaling policy's configuration.

`policy_config(spec, plan)` is what the operator's loop runs with, and `mimoctl simulate autoscaling` and
`bench/` call the same function on the same MiMoDeployment spec (their what-if flags edit the manifest
before it is parsed, never the configuration after), so the simulator measures the configuration the
operator runs. Pure: no I/O, no clock.
"""

from __future__ import annotations

from mimo_operator.autoscaling.capacity import capacity_of
from mimo_operator.autoscaling.policy import PolicyConfig
from mimo_operator.perf import performance_of
from mimo_operator.plan import Plan
from mimo_operator.sglang_flags import parse_extra_args
from mimo_operator.spec import DeploymentSpec

__all__ = [
    "ITL_BUDGET_SECONDS",
    "MAX_FORECAST_SECONDS",
    "SCRAPE_INTERVAL_SECONDS",
    "TYPICAL_CONTEXT_TOKENS",
    "TYPICAL_OUTPUT_TOKENS",
    "history_seconds",
    "policy_config",
]

# How often the operator scrapes the gangs and decides; the simulator decides as often by default.
SCRAPE_INTERVAL_SECONDS = 10.0
# The request shape the capacity summary is priced at. The policy measures the mean work of finished
# requests from SGLang's counters and uses these only until a request has finished, so they are a
# starting point, not a tuning knob: a typical chat/code request.
TYPICAL_CONTEXT_TOKENS = 2048
TYPICAL_OUTPUT_TOKENS = 256
# The decode step a replica should not be pushed beyond (10 tokens/s per request): it sizes the
# aggregate decode throughput the capacity summary counts.
ITL_BUDGET_SECONDS = 0.1
# Demand is projected over a gang's start-up (one ordered now serves only after it), but no further
# than a few minutes: beyond that a trend says little, and a cold Pro start can take a quarter hour.
MAX_FORECAST_SECONDS = 300.0


def policy_config(
    spec: DeploymentSpec,
    plan: Plan,
    *,
    startup_seconds: float | None = None,
    scrape_interval_seconds: float = SCRAPE_INTERVAL_SECONDS,
) -> PolicyConfig:
    """The policy's configuration for a deployment: its spec's autoscaling block and its plan.

    The stable window is the spec's scale-up window (at least 30 s), the stabilisation window its
    scale-down window, the KV target its targetKVCacheUsage, the TTFT objective its ttftSloSeconds;
    capacity comes from the plan's performance model, and the trend is projected one start-up ahead
    (`startup_seconds`, default the plan's estimate; capped at MAX_FORECAST_SECONDS), while recurring
    bursts are pre-warmed a whole start-up ahead. A ready gang whose newest sample is older than three
    scrape intervals is missing data. The queue-wait view reads a queue served first come, first served: it is
    off where ``spec.engine.extraArgs`` sets another ``--schedule-policy`` (LPM reorders a queue of up to 128).
    """
    a = spec.autoscaling
    capacity = capacity_of(
        performance_of(plan),
        itl_slo_seconds=ITL_BUDGET_SECONDS,
        context_tokens=min(TYPICAL_CONTEXT_TOKENS, plan.context_length),
        output_tokens=TYPICAL_OUTPUT_TOKENS,
    )
    startup = plan.startup.expected_seconds if startup_seconds is None else startup_seconds
    stable = float(max(30, a.scale_up_window_seconds))
    return PolicyConfig(
        capacity=capacity,
        min_replicas=a.min_replicas,
        max_replicas=max(a.max_replicas, a.min_replicas, 1),
        target_token_usage=a.target_kv_cache_usage,
        ttft_slo_seconds=a.ttft_slo_seconds,
        stable_window_seconds=stable,
        panic_window_seconds=min(stable, 30.0),
        scale_down_window_seconds=float(max(stable, a.scale_down_window_seconds)),
        forecast_seconds=float(min(max(startup, 0.0), MAX_FORECAST_SECONDS)),
        startup_seconds=float(max(startup, 0.0)),
        max_sample_age_seconds=3 * scrape_interval_seconds + 5,
        queue_wait_view=_schedule_policy(spec) == "fcfs",
    )


def _schedule_policy(spec: DeploymentSpec) -> str:
    """The engines' ``--schedule-policy``: the last one in ``spec.engine.extraArgs`` (as argparse reads it), else
    SGLang's default."""
    chosen = "fcfs"
    for flag in parse_extra_args(spec.engine.extra_args or []):
        if flag.dest == "schedule_policy" and flag.values:
            chosen = flag.values[-1]
    return chosen


def history_seconds(config: PolicyConfig) -> float:
    """How much metric history the policy reads: its windows reach back this far."""
    return config.scale_down_window_seconds + config.stable_window_seconds
