"""The autoscaling policy counts prefix caching: cached prompt tokens cost no prefill, so no gangs."""

from __future__ import annotations

from mimo_operator.autoscaling import Gang, GangPhase, MetricSample, Observation, PolicyConfig, ReplicaCapacity, decide
from mimo_operator.autoscaling.observation import parse_sglang_metrics

CAPACITY = ReplicaCapacity(
    prefill_tokens_per_second=10_000.0,
    decode_tokens_per_second=1_000.0,
    max_running_requests=1_000,
    typical_request_seconds=0.1,
)


def history(now: float, per_second: float, cached_share: float) -> list[MetricSample]:
    """Ten minutes of a gang serving `per_second` requests of 1,000 prompt tokens each."""
    samples = []
    for t in range(int(now) - 600, int(now) + 1, 15):
        served = per_second * t
        samples.append(
            MetricSample(
                at=float(t),
                token_usage=0.1,
                queue_requests=0.0,
                running_requests=0.0,
                prompt_tokens_total=served * 1_000,
                generation_tokens_total=0.0,
                requests_total=served,
                cached_tokens_total=served * 1_000 * cached_share if cached_share else None,
            )
        )
    return samples


def desired(cached_share: float) -> int:
    now = 1_000.0
    gangs = tuple(Gang(n, GangPhase.READY, 0.0) for n in ("a", "b"))
    observation = Observation(now=now, gangs=gangs, samples={n: history(now, 8.0, cached_share) for n in ("a", "b")})
    config = PolicyConfig(capacity=CAPACITY, min_replicas=1, max_replicas=8, target_utilisation=0.7)
    return decide(observation, config).desired_replicas


def test_the_same_traffic_needs_fewer_gangs_when_most_of_each_prompt_is_cached() -> None:
    # 16 req/s × 0.1 replica-s = 1.6 replicas flat out: 3 at a 0.7 target; with 80 % of every prompt
    # cached the prefill work is a fifth, 0.32 replicas: one gang is enough.
    assert desired(0.0) == 3
    assert desired(0.8) == 1


def test_the_cached_token_counter_is_read_from_sglangs_metrics() -> None:
    text = (
        "# TYPE sglang:cached_tokens_total counter\n"
        'sglang:cached_tokens_total{model_name="m",cache_source="device"} 700.0\n'
        'sglang:cached_tokens_total{model_name="m",cache_source="host"} 50.0\n'
    )
    assert parse_sglang_metrics(text, at=1.0).sample.cached_tokens_total == 750.0
