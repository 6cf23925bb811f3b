"""The simulator's PD fleet: a request's path through a prefill gang, the KV hand-over and a decode gang."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from mimo_operator.autoscaling.baselines import StaticPeak
from mimo_operator.autoscaling.pd_simulator import StaticPools, simulate_pools
from mimo_operator.autoscaling.pools import DECODE, PREFILL
from mimo_operator.autoscaling.simulator import simulate
from mimo_operator.autoscaling.trace import Request, Trace
from mimo_operator.commands.simulate_autoscaling import (
    PoolsComparison,
    colocated_manifest,
    comparison_for,
    pools_comparison_for,
)
from mimo_operator.perf import performance_of
from mimo_operator.planner_pd import kv_transfer
from tests.unit.test_autoscaling_pools import pd_manifest


@pytest.fixture(scope="module")
def pools() -> PoolsComparison:
    return pools_comparison_for(pd_manifest())


def one(prompt: int, output: int) -> Trace:
    return Trace("one request", (Request(1.0, prompt, output),), 60.0)


def test_ttft_is_prefill_then_the_planners_kv_transfer_then_one_decode_step(pools: PoolsComparison) -> None:
    prompt, output = 8000, 50
    result = simulate_pools(one(prompt, output), pools.fleet, StaticPools(1, 1)).fleet
    prefill = performance_of(pools.pd.prefill.plan)
    decode = performance_of(pools.pd.decode.plan)
    transfer = kv_transfer(pools.spec, pools.pd.prefill.plan, prompt).seconds
    step = decode.decode_step_seconds(1, prompt)
    assert transfer > 0
    assert result.ttft_p50_seconds == pytest.approx(prefill.prefill_seconds(prompt, 0) + transfer + step, rel=1e-9)
    assert result.itl_p99_seconds == pytest.approx(step, rel=1e-9)
    assert (result.requests, result.failed_requests) == (1, 0)


def test_a_slower_fabric_adds_exactly_its_extra_transfer_time_to_ttft(pools: PoolsComparison) -> None:
    prompt = 30_000
    fast = simulate_pools(one(prompt, 20), pools.fleet, StaticPools(1, 1)).fleet
    slow_fleet = replace(pools.fleet, transfer_seconds=lambda tokens: 1000 * pools.fleet.transfer_seconds(tokens))
    slow = simulate_pools(one(prompt, 20), slow_fleet, StaticPools(1, 1))
    extra = 999 * kv_transfer(pools.spec, pools.pd.prefill.plan, prompt).seconds
    assert slow.fleet.ttft_p50_seconds - fast.ttft_p50_seconds == pytest.approx(extra, rel=1e-6)
    assert slow.transfer_seconds_p99 == pytest.approx(1000 * kv_transfer(pools.spec, pools.pd.prefill.plan,
                                                                         prompt).seconds)


def test_a_long_prompt_pauses_colocated_decoding_but_not_a_decode_gang(pools: PoolsComparison) -> None:
    """A stream decodes while a 100k-token prompt arrives: colocated, its steps wait for the prompt's chunks."""
    trace = Trace("stream and a long prompt", (Request(0.0, 1000, 400), Request(1.0, 100_000, 10)), 60.0)
    pd = simulate_pools(trace, pools.fleet, StaticPools(1, 1))
    _, _, colocated = comparison_for(colocated_manifest(pd_manifest()), trace)
    colo = simulate(trace, replace(colocated.fleet, initial_replicas=1), StaticPeak(1))
    # The stream's mean ITL (the p99 of two requests is the stream's, the long prompt's 10 tokens are faster).
    assert pd.fleet.itl_p99_seconds < 0.8 * colo.itl_p99_seconds
    assert pd.fleet.itl_p99_seconds == pytest.approx(performance_of(pools.pd.decode.plan).decode_step_seconds(
        2, 1000 + 100_000), rel=0.05)


def test_gpu_hours_count_both_pools_gangs(pools: PoolsComparison) -> None:
    trace = Trace("idle hour", (Request(1.0, 100, 10),), 3600.0)
    result = simulate_pools(trace, pools.fleet, StaticPools(2, 3))
    gpus = pools.pd.prefill.plan.gpus_per_replica
    assert result.pools[PREFILL].gpu_hours == pytest.approx(2 * gpus, rel=1e-3)
    assert result.pools[DECODE].gpu_hours == pytest.approx(3 * gpus, rel=1e-3)
    assert result.fleet.gpu_hours == pytest.approx(5 * gpus, rel=1e-3)
    assert result.fleet.peak_replicas == 5


def test_a_prompt_longer_than_the_context_fails_without_reaching_either_pool(pools: PoolsComparison) -> None:
    limit = performance_of(pools.pd.prefill.plan).context_length
    result = simulate_pools(one(limit, 10), pools.fleet, StaticPools(1, 1))
    assert result.fleet.failed_requests == 1
    assert math.isnan(result.transfer_seconds_p99)
