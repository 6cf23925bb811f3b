"""The baselines: HPA's and KEDA's arithmetic as Kubernetes does it, and the clairvoyant oracle."""

from __future__ import annotations

import pytest

from mimo_operator.autoscaling import Gang, GangPhase, MetricSample, Observation
from mimo_operator.autoscaling.baselines import (
    HpaUtilisation,
    KedaQueue,
    Oracle,
    StaticPeak,
    burst_requirement,
    demand_per_bin,
    oracle_schedule,
)
from mimo_operator.autoscaling.trace import Request, Trace


def observe(
    now: float, usages: list[float], *, starting: int = 0, queues: list[float] | None = None, pending: int = 0
) -> Observation:
    """Ready gangs g0, g1, … reporting one sample each (usage as token_usage and running requests)."""
    queues = queues or [0.0] * len(usages)
    gangs = [Gang(f"g{i}", GangPhase.READY, 0.0) for i in range(len(usages))]
    gangs += [Gang(f"s{i}", GangPhase.STARTING, now) for i in range(starting)]
    samples = {
        f"g{i}": (MetricSample(at=now, token_usage=u, queue_requests=q, running_requests=u * 100),)
        for i, (u, q) in enumerate(zip(usages, queues, strict=True))
    }
    return Observation(now=now, gangs=tuple(gangs), samples=samples, pending_requests=pending)


@pytest.mark.parametrize(
    ("usages", "expected"),
    [
        ([0.75, 0.75], 2),  # ratio 1.07: inside the 10 % tolerance
        ([0.9, 0.9], 3),  # ratio 1.29: ceil(2 × 1.29) = 3
        ([1.0, 1.0, 1.0, 1.0], 6),  # ceil(4 × 1.43) = 6
    ],
    ids=[
        "keeps the scale inside the tolerance",
        "scales up to ceil(current × metric / target)",
        "scales up by the ratio, several gangs at once",
    ],
)
def test_hpa_scale_up_arithmetic(usages: list[float], expected: int) -> None:
    hpa = HpaUtilisation(min_replicas=1, max_replicas=10, metric="token_usage", target=0.7)
    assert hpa.decide(observe(0.0, usages)).desired_replicas == expected


def test_hpa_counts_starting_gangs_as_pods_without_metrics_at_zero_on_the_way_up() -> None:
    hpa = HpaUtilisation(min_replicas=1, max_replicas=10, metric="token_usage", target=0.7)
    # Two ready at 0.9 and two starting: (0.9 + 0.9 + 0 + 0) / (4 × 0.7) = 0.64: no scale-up.
    assert hpa.decide(observe(0.0, [0.9, 0.9], starting=2)).desired_replicas <= 4


def test_hpa_scale_up_is_limited_to_double_or_four_more() -> None:
    hpa = HpaUtilisation(min_replicas=1, max_replicas=50, metric="token_usage", target=0.1)
    # ratio 10 on one gang would ask for 10; the default policy allows max(2 × 1, 1 + 4) = 5.
    assert hpa.decide(observe(0.0, [1.0])).desired_replicas == 5


def test_hpa_scales_down_only_to_the_highest_recommendation_of_the_last_five_minutes() -> None:
    hpa = HpaUtilisation(min_replicas=1, max_replicas=10, metric="token_usage", target=0.5)
    sequence = []
    current = 4
    for t in range(0, 601, 15):
        usage = 0.5 if t < 60 else 0.1  # at target for a minute, then idle
        desired = hpa.decide(observe(float(t), [usage] * current)).desired_replicas
        sequence.append((t, desired))
        current = desired
    changes = [(t, d) for (t, d), (_, before) in zip(sequence[1:], sequence, strict=False) if d != before]
    # Recommendations were 4 until 45 s; the window holds them until 345 s, then one step to ceil(4 × 0.2).
    assert changes == [(360, 1)]


def test_hpa_acts_once_per_sync_period() -> None:
    hpa = HpaUtilisation(min_replicas=1, max_replicas=10, metric="token_usage", target=0.7)
    assert hpa.decide(observe(0.0, [0.7])).desired_replicas == 1
    # Five seconds later the load doubled, but the next sync is at 15 s.
    assert hpa.decide(observe(5.0, [1.4])).desired_replicas == 1
    assert hpa.decide(observe(15.0, [1.4])).desired_replicas == 2


def test_hpa_on_running_requests_uses_the_count_as_its_metric() -> None:
    hpa = HpaUtilisation(min_replicas=1, max_replicas=10, metric="running_requests", target=40)
    # Running requests are usage × 100 in this helper: 90 and 90 against 40 per gang, ratio 2.25,
    # ceil(2 × 2.25) = 5, within the scale-up limit max(2 × 2, 2 + 4) = 6.
    assert hpa.decide(observe(0.0, [0.9, 0.9])).desired_replicas == 5


def test_keda_queue_asks_for_ceil_of_queue_over_target() -> None:
    keda = KedaQueue(min_replicas=1, max_replicas=20, target_queue_per_replica=5.0)
    assert keda.decide(observe(0.0, [0.1, 0.1], queues=[12.0, 10.0])).desired_replicas == 5
    # Within the tolerance: 10.5 queued over 2 × 5 is 1.05, less than 10 % off.
    keda2 = KedaQueue(min_replicas=1, max_replicas=20, target_queue_per_replica=5.0)
    assert keda2.decide(observe(0.0, [0.1, 0.1], queues=[5.5, 5.0])).desired_replicas == 2


def test_keda_goes_to_zero_only_after_its_cooldown_and_only_with_min_zero() -> None:
    keda = KedaQueue(min_replicas=0, max_replicas=4, target_queue_per_replica=5.0, cooldown_seconds=300)
    decisions = [(t, keda.decide(observe(float(t), [0.0], queues=[3.0 if t == 0 else 0.0]))) for t in range(0, 451, 15)]
    zero_at = [t for t, d in decisions if d.desired_replicas == 0]
    assert zero_at[:1] == [300]
    keeper = KedaQueue(min_replicas=1, max_replicas=4, target_queue_per_replica=5.0)
    assert all(keeper.decide(observe(float(t), [0.0])).desired_replicas == 1 for t in range(0, 451, 15))


def test_keda_activates_from_zero_on_requests_waiting_at_the_router() -> None:
    keda = KedaQueue(min_replicas=0, max_replicas=4)
    empty = Observation(now=0.0, gangs=(), samples={}, pending_requests=7)
    assert keda.decide(empty).desired_replicas == 1


def test_static_peak_never_changes() -> None:
    static = StaticPeak(6)
    assert {static.decide(observe(float(t), [u])).desired_replicas for t, u in [(0, 0.0), (15, 1.0)]} == {6}


# --- the oracle ----------------------------------------------------------------------------------


def test_demand_per_bin_is_work_per_second_of_the_bin() -> None:
    trace = Trace("t", (Request(0.5, 100, 0), Request(1.5, 100, 0), Request(1.7, 300, 0)), 4.0)
    assert demand_per_bin(trace, lambda context, generated: context / 100, 2.0) == [2.5, 0.0]


def test_the_burst_requirement_is_the_fluid_bound_over_every_stretch() -> None:
    # 10 replica-seconds arrive in the 5 s bin starting at 10 s, nothing else; SLO 5 s.
    need = burst_requirement([0.0, 0.0, 2.0, 0.0, 0.0], bin_seconds=5, slo_seconds=5, longest_burst_seconds=25)
    # The bin itself needs 10 / (5 + 5) = 1.0. The bins after it are where a smaller capacity would
    # still be working the burst off: 10 / (10 + 5) and 10 / (15 + 5). Nothing is needed before it.
    assert need == pytest.approx([0.0, 0.0, 1.0, 10 / 15, 10 / 20])
    spread = burst_requirement([1.0, 1.0, 1.0], bin_seconds=10, slo_seconds=0, longest_burst_seconds=30)
    assert spread == [1.0, 1.0, 1.0], "a steady load needs exactly its rate"


@pytest.mark.parametrize(
    ("need", "startup", "expected"),
    [
        # One gang all along, a second needed from 60 s to 120 s: started at 60 − 30 = 30 s.
        ([0.9, 0.9, 1.8, 1.8, 0.9, 0.9], 30.0, ([0.0, 30.0, 120.0], [1, 2, 1])),
        # The second gang's two stretches are 60 s apart, longer than the 30 s start-up: released
        # between them and started again 30 s early.
        ([1.8, 0.9, 0.9, 1.8, 0.9, 0.9], 30.0, ([0.0, 30.0, 60.0, 120.0], [2, 1, 2, 1])),
        # Same need with a 90 s start-up: idling through the 60 s lull is cheaper; kept.
        ([1.8, 0.9, 0.9, 1.8, 0.9, 0.9], 90.0, ([0.0, 120.0], [2, 1])),
    ],
    ids=[
        "starts a gang one start-up before it is needed",
        "releases a gang over a lull longer than a start-up",
        "keeps a gang through a lull shorter than a start-up",
    ],
)
def test_oracle_schedule(need: list[float], startup: float, expected: tuple[list[float], list[int]]) -> None:
    schedule = oracle_schedule(
        need, bin_seconds=30, startup_seconds=startup, headroom=0.9, min_replicas=1, max_replicas=8
    )
    assert schedule == expected


def test_oracle_never_acts_late_between_two_ticks() -> None:
    oracle = Oracle([0.0, 40.0], [1, 2], lookahead_seconds=15.0)
    # The second gang is due at 40 s; the tick at 30 s already orders it.
    assert [oracle.decide(observe(float(t), [0.5])).desired_replicas for t in (15, 30, 45)] == [1, 2, 2]
