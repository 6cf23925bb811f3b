"""Per-pool autoscaling of a PD deployment: each pool on its own signals, the decode:prefill ratio kept.

The observations are scripted: every gang reports a sample every 10 s for the last 15 minutes, with counters
growing at a steady rate of requests of one shape (prompt and output tokens) and gauges as given. Both pools see
the same requests, as in a PD fleet; what differs is what each pool's gangs do with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

from mimo_operator.autoscaling.policy import Action, Gang, GangPhase, MetricSample, Observation, decide
from mimo_operator.autoscaling.pools import (
    DECODE,
    PREFILL,
    SHAPE_SPREAD,
    PoolsConfig,
    decide_pools,
    pool_configs,
    ratio_bounds,
)
from mimo_operator.commands.simulate_autoscaling import DEFAULT_MANIFEST
from mimo_operator.planner_pd import plan_disaggregated
from mimo_operator.spec import parse_spec

NOW = 10_000.0
HISTORY = 900.0
SCRAPE = 10.0


def pd_manifest(**pools: Any) -> dict[str, Any]:
    """The simulator's default fleet (Pro fp8, 2 × 8 H200 gangs, node-local cache) as a PD deployment."""
    spec = dict(DEFAULT_MANIFEST["spec"])
    spec["network"] = {"mode": "hostNetwork", "ibDevices": [f"mlx5_{i}" for i in range(8)]}
    spec["disaggregation"] = {
        "typicalPromptTokens": 8192,
        "prefill": {"nodesPerGang": 2, "minReplicas": 1, "maxReplicas": 16, **pools.get("prefill", {})},
        "decode": {"nodesPerGang": 2, "minReplicas": 1, "maxReplicas": 16, **pools.get("decode", {})},
    }
    return {**DEFAULT_MANIFEST, "spec": spec}


@pytest.fixture(scope="module")
def config() -> PoolsConfig:
    spec = parse_spec(pd_manifest())
    return pool_configs(spec, plan_disaggregated(spec))


@dataclass(frozen=True)
class Load:
    """What each gang of a pool reports: its share of the requests and its gauges."""

    gangs: int
    rate: float = 0.0  # requests per second per gang
    prompt: int = 8192
    output: int = 200
    usage: float = 0.1
    running: float = 2.0
    queue: float = 0.0
    tpot_p95: float | None = None


def observation(load: Load, role: str) -> Observation:
    samples = {}
    gangs = []
    for k in range(load.gangs):
        name = f"{role}-{k}"
        gangs.append(Gang(name, GangPhase.READY, since=0.0))
        history = []
        t = NOW - HISTORY
        while t <= NOW + 1e-9:
            served = load.rate * t
            history.append(MetricSample(
                at=t, token_usage=load.usage, queue_requests=load.queue, running_requests=load.running,
                prompt_tokens_total=served * load.prompt,
                generation_tokens_total=served * (1 if role == PREFILL else load.output),
                requests_total=served, tpot_p95_seconds=load.tpot_p95))
            t += SCRAPE
        samples[name] = tuple(history)
    return Observation(now=NOW, gangs=tuple(gangs), samples=samples)


def test_each_pool_is_priced_on_its_own_phase_and_only_prefill_holds_to_ttft(config: PoolsConfig) -> None:
    prefill, decode = config.policies[PREFILL], config.policies[DECODE]
    assert math.isinf(prefill.capacity.decode_tokens_per_second)
    assert math.isinf(decode.capacity.prefill_tokens_per_second)
    assert prefill.ttft_slo_seconds == 2.0
    assert decode.ttft_slo_seconds is None
    # A decode gang's TTFT runs through the prefill pool's queue: its rise is not the decode gang's own wait.
    assert prefill.queue_wait_view
    assert not decode.queue_wait_view
    assert (prefill.min_replicas, prefill.max_replicas, decode.min_replicas, decode.max_replicas) == (1, 16, 1, 16)


def test_the_ratio_bound_is_the_typical_requests_balance_spread_either_way(config: PoolsConfig) -> None:
    spec = parse_spec(pd_manifest())
    pd = plan_disaggregated(spec)
    low, high = ratio_bounds(pd.prefill, pd.decode, prompt_tokens=8192, output_tokens=256)
    assert (config.min_decode_per_prefill, config.max_decode_per_prefill) == (low, high)
    assert high / low == pytest.approx(SHAPE_SPREAD**2)
    # A prompt twice as long doubles a prefill gang's work per request: half the decode gangs per prefill gang.
    longer = ratio_bounds(pd.prefill, pd.decode, prompt_tokens=16384, output_tokens=256)
    assert longer[0] == pytest.approx(low / 2, rel=0.1)


@dataclass(frozen=True)
class Case:
    prefill: Load
    decode: Load
    actions: tuple[Action, Action]  # prefill, decode
    desired: tuple[int, int] | None = None
    reason: tuple[str, str] = ("", "")  # a part of each pool's reason


CASES = {
    "long prompts with short answers scale the prefill pool, the decode pool holds": Case(
        prefill=Load(1, rate=8.0, prompt=8192, output=64, running=1, queue=4),
        decode=Load(1, rate=8.0, prompt=8192, output=64, usage=0.2, running=8),
        actions=(Action.SCALE_UP, Action.HOLD), reason=("demand", "")),
    "a full KV cache scales the decode pool, the prefill pool holds": Case(
        prefill=Load(2, rate=2.5, prompt=8192, output=100),
        decode=Load(2, rate=2.5, prompt=8192, output=100, usage=0.97, running=60),
        actions=(Action.HOLD, Action.SCALE_UP), reason=("", "demand")),
    "a decode ITL above the budget on most gangs adds one decode gang": Case(
        prefill=Load(2, rate=2.5, prompt=8192, output=100),
        decode=Load(2, rate=2.5, prompt=8192, output=100, usage=0.5, running=20, tpot_p95=0.2),
        actions=(Action.HOLD, Action.SCALE_UP), desired=(2, 3), reason=("", "ITL p95 0.2s above 0.1s")),
    "requests queued on most decode gangs throughout the panic window add one decode gang": Case(
        prefill=Load(2, rate=2.5, prompt=8192, output=100),
        decode=Load(2, rate=2.5, prompt=8192, output=100, usage=0.5, running=90, queue=30),
        actions=(Action.HOLD, Action.SCALE_UP), desired=(2, 3), reason=("", "60 request(s) queued for KV")),
    "a prefill pool that grows past the bound raises the decode pool with it": Case(
        prefill=Load(1, rate=40.0, prompt=8192, output=16, running=1, queue=20),
        decode=Load(1, rate=40.0, prompt=8192, output=16, usage=0.1, running=10),
        actions=(Action.SCALE_UP, Action.SCALE_UP), reason=("demand", "to keep the ratio to the prefill pool's")),
    "an idle decode pool is held where the prefill pool needs it": Case(
        prefill=Load(12, rate=2.8, prompt=8192, output=16, running=1),
        decode=Load(3, rate=11.2, prompt=8192, output=16, usage=0.02, running=1),
        actions=(Action.HOLD, Action.HOLD), reason=("", "the prefill pool needs at least")),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_each_pool_scales_on_its_own_signals_within_the_ratio(config: PoolsConfig, case: Case) -> None:
    observations = {PREFILL: observation(case.prefill, PREFILL), DECODE: observation(case.decode, DECODE)}
    decisions = decide_pools(observations, config)
    got = (decisions[PREFILL].action, decisions[DECODE].action)
    assert got == case.actions, (decisions[PREFILL].reason, decisions[DECODE].reason)
    if case.desired is not None:
        assert (decisions[PREFILL].desired_replicas, decisions[DECODE].desired_replicas) == case.desired
    for role, part in zip((PREFILL, DECODE), case.reason, strict=True):
        assert part in decisions[role].reason
    p, d = decisions[PREFILL].desired_replicas, decisions[DECODE].desired_replicas
    assert d >= math.ceil(p * config.min_decode_per_prefill - 1e-9)
    assert p >= math.ceil(d / config.max_decode_per_prefill - 1e-9)


def test_the_bound_is_what_holds_the_idle_decode_pool_and_raises_it(config: PoolsConfig) -> None:
    """Without the ratio bound the decode pool's own policy would shrink (or keep) it: the bound did it."""
    held = CASES["an idle decode pool is held where the prefill pool needs it"]
    alone = decide(observation(held.decode, DECODE), config.policies[DECODE])
    assert alone.action is Action.SCALE_DOWN
    raised = CASES["a prefill pool that grows past the bound raises the decode pool with it"]
    alone = decide(observation(raised.decode, DECODE), config.policies[DECODE])
    assert alone.action is Action.HOLD


def test_pools_bounds_come_from_the_pool_specs_and_fall_back_to_the_autoscaling_block() -> None:
    manifest = pd_manifest(prefill={"minReplicas": 0, "maxReplicas": 3})
    del manifest["spec"]["disaggregation"]["decode"]["maxReplicas"]
    spec = parse_spec(manifest)
    config = pool_configs(spec, plan_disaggregated(spec))
    assert (config.policies[PREFILL].min_replicas, config.policies[PREFILL].max_replicas) == (0, 3)
    assert config.policies[DECODE].max_replicas == spec.autoscaling.max_replicas
