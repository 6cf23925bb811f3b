"""The fleet simulator: the engine's rules per replica, the fleet's life cycle, and the trace loader.

Most tests use ``RoundReplica``, a stand-in for the plan's performance model with round numbers (a
prefill of N tokens takes 0.01 + N / 40,000 s, every decode step 0.02 s), so the expected latencies can
be worked out by hand. One test compares the fleet model with the simulated engine on the real plan.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from mimo_operator.autoscaling import Action, Decision, GangPhase, Observation, Signals
from mimo_operator.autoscaling.baselines import StaticPeak
from mimo_operator.autoscaling.capacity import capacity_of
from mimo_operator.autoscaling.simulator import FleetConfig, PolicyResult, Router, _Engine, simulate
from mimo_operator.autoscaling.trace import Request, Trace, TraceError, load_trace, reshape


@dataclass(frozen=True)
class RoundReplica:
    gpus: int = 16
    max_total_num_tokens: int = 100_000
    swa_max_tokens: int = 1_000_000
    swa_window: int = 128
    max_running_requests: int = 64
    context_length: int = 32_768
    chunked_prefill_size: int = 8192
    page_size: int = 1

    def prefill_seconds(self, new_tokens: int, cached_context_tokens: int = 0) -> float:
        return 0.01 + new_tokens / 40_000

    def decode_step_seconds(self, batch_size: int, kv_tokens: int) -> float:
        return 0.02

    def decode_tokens_per_second(self, concurrency: int, context_tokens: int) -> float:
        return concurrency / 0.02


def fleet(**overrides: object) -> FleetConfig:
    values: dict[str, object] = {
        "performance": RoundReplica(),
        "startup_seconds": 60.0,
        "ttft_slo_seconds": 1.0,
        "itl_slo_seconds": 0.05,
        "initial_replicas": 1,
        "decision_interval_seconds": 15.0,
    }
    values.update(overrides)
    return FleetConfig(**values)  # type: ignore[arg-type]


def trace_of(*requests: tuple[float, int, int], span: float | None = None) -> Trace:
    items = tuple(Request(a, c, g) for a, c, g in requests)
    return Trace("test", items, span if span is not None else max(r.arrival for r in items) + 1.0)


def engine_run(trace: Trace, config: FleetConfig, autoscaler: object | None = None) -> _Engine:
    engine = _Engine(trace, config, autoscaler or StaticPeak(config.initial_replicas))  # type: ignore[arg-type]
    engine.run()
    return engine


def ttft(engine: _Engine, i: int) -> float:
    return engine.first_token[i] - engine.arrival[i]


# --- one replica: the engine's rules --------------------------------------------------------------


def test_a_lone_request_waits_only_for_its_prefill_then_decodes_a_token_a_step() -> None:
    engine = engine_run(trace_of((1.0, 4000, 11)), fleet())
    assert ttft(engine, 0) == pytest.approx(0.01 + 4000 / 40_000)
    assert engine.finish[0] - engine.first_token[0] == pytest.approx(10 * 0.02)


def test_prompts_arriving_together_share_one_prefill_pass() -> None:
    engine = engine_run(trace_of((1.0, 2000, 1), (1.0, 2000, 1), (1.0, 2000, 1)), fleet())
    # One pass of 6,000 tokens: one fixed cost, 0.01 + 0.15 s, and every first token at its end.
    assert [ttft(engine, i) for i in range(3)] == pytest.approx([0.16, 0.16, 0.16])


def test_a_prompt_longer_than_the_chunk_is_prefilled_in_chunks_and_holds_the_next_pass() -> None:
    engine = engine_run(trace_of((1.0, 20_000, 1), (1.0, 1000, 1)), fleet())
    # 8192 + 8192 + 3616 tokens: three passes; the short prompt fills the last one's budget.
    three_passes = 3 * 0.01 + 20_000 / 40_000 + 1000 / 40_000
    assert ttft(engine, 0) == pytest.approx(three_passes)
    assert ttft(engine, 1) == pytest.approx(three_passes)


def test_prefill_comes_first_and_running_requests_wait_for_it() -> None:
    # A decodes; B's long prompt arrives mid-way and A's next tokens wait for B's two passes.
    engine = engine_run(trace_of((0.0, 1000, 21), (0.1, 16_000, 1)), fleet())
    a_decode = engine.finish[0] - engine.first_token[0]
    prefill_b = 2 * 0.01 + 16_000 / 40_000
    assert a_decode > 20 * 0.02 + prefill_b - 0.02
    assert ttft(engine, 1) < prefill_b + 0.02 + 1e-9, "B waits at most for the decode step in progress"


def test_admission_waits_until_the_kv_pool_can_hold_the_whole_request() -> None:
    # Each request needs 60,000 tokens (prompt + output) of a 100,000-token pool: one at a time.
    long_context = fleet(performance=replace(RoundReplica(), context_length=100_000))
    engine = engine_run(trace_of((0.0, 10_000, 50_000), (0.0, 10_000, 50_000)), long_context)
    assert engine.first_token[1] >= engine.finish[0]


def test_the_running_request_limit_queues_the_rest() -> None:
    config = fleet(performance=replace(RoundReplica(), max_running_requests=2))
    engine = engine_run(trace_of((0.0, 100, 10), (0.0, 100, 10), (0.0, 100, 10)), config)
    assert engine.first_token[2] >= min(engine.finish[0], engine.finish[1])


def test_a_request_longer_than_the_context_is_refused_not_queued() -> None:
    engine = engine_run(trace_of((0.0, 40_000, 10), (0.5, 100, 2)), fleet())
    assert engine.failed == [True, False]


def test_the_fleet_model_agrees_with_the_simulated_engine_on_one_planned_replica() -> None:
    """Same trace, one MiMo-V2.5-Pro replica of the real plan: latencies within a few tens of percent."""
    from mimo_operator.perf import performance_of
    from mimo_operator.planner import plan_deployment
    from mimo_operator.spec import parse_spec
    from mimo_worker.simengine.engine import (
        AdmissionPolicy,
        Arrival,
        EngineLimits,
        OpenLoop,
        ReplicaEngine,
        run_virtual,
    )

    plan = plan_deployment(parse_spec({"model": {"variant": "MiMo-V2.5-Pro"}, "hardware": {"gpuType": "H200-141GB"}}))
    perf = performance_of(plan)
    shared = load_trace(Path(__file__).resolve().parents[2] / "examples" / "traces" / "azure-2023-code.csv")
    # Ten busy minutes of the shared trace: about 70 % of the replica's prefill throughput on average.
    window = [r for r in shared.requests if 1080 <= r.arrival < 1680]
    trace = Trace("slice", tuple(Request(r.arrival - 1080, r.context_tokens, r.generated_tokens) for r in window), 600)
    ours = engine_run(trace, replace(fleet(), performance=perf, ttft_slo_seconds=2.0, itl_slo_seconds=0.1))
    engine = ReplicaEngine(
        EngineLimits.of(perf), perf, attention_dp=plan.attention_data_parallel, policy=AdmissionPolicy.reserve_all()
    )
    run = run_virtual(
        engine, OpenLoop([Arrival(r.arrival, r.context_tokens, max(1, r.generated_tokens)) for r in trace.requests])
    )
    theirs = sorted(run.finished, key=lambda r: r.arrival)
    assert len(theirs) == len(trace.requests)

    def quantile(values: Sequence[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    our_ttft = [ttft(ours, i) for i in range(len(trace.requests))]
    their_ttft = [r.ttft for r in theirs if r.ttft is not None]
    for q in (0.5, 0.9, 0.99):
        assert quantile(our_ttft, q) == pytest.approx(quantile(their_ttft, q), rel=0.2), f"TTFT p{q * 100:g}"
    our_itl = statistics.mean(
        (ours.finish[i] - ours.first_token[i]) / (ours.generated[i] - 1)
        for i in range(len(trace.requests))
        if ours.generated[i] > 1
    )
    their_itl = statistics.mean(
        (r.finished_at - r.first_token_at) / (r.max_new_tokens - 1)
        for r in theirs
        if r.max_new_tokens > 1 and r.finished_at is not None and r.first_token_at is not None
    )
    assert our_itl == pytest.approx(their_itl, rel=0.2)


# --- the fleet ------------------------------------------------------------------------------------


@dataclass
class Scripted:
    """An autoscaler that asks for given replica counts from given times on (and records what it saw)."""

    plan: list[tuple[float, int]]
    remove: str | None = None  # the gang to take away on a scale-down
    name: str = "scripted"
    seen: list[Observation] = field(default_factory=list)

    def decide(self, observation: Observation) -> Decision:
        self.seen.append(observation)
        desired = [n for at, n in self.plan if observation.now >= at][-1]
        ready = sum(1 for g in observation.gangs if g.phase is GangPhase.READY)
        signals = Signals(ready=ready, starting=0, draining=0)
        return Decision(desired, Action.HOLD, "scripted", signals, remove=self.remove)


def test_a_new_gang_serves_only_after_its_start_up() -> None:
    config = fleet(initial_replicas=0, startup_seconds=60.0)
    engine = engine_run(trace_of((1.0, 4000, 1), span=120.0), config, Scripted([(0.0, 1)]))
    # Ordered at the t = 0 tick, ready at 60 s; the request waited at the router until then.
    assert engine.first_token[0] == pytest.approx(60.0 + 0.11)


def test_gpu_hours_count_every_gpu_of_every_gang_over_the_trace() -> None:
    result = simulate(trace_of((10.0, 100, 2), span=3600.0), fleet(initial_replicas=2), StaticPeak(2))
    assert result.gpu_hours == pytest.approx(2 * 16 * 1.0)


def test_gpu_hours_include_start_up_and_stop_when_a_drain_ends() -> None:
    # One gang all hour; a second ordered at 0 s (60 s start-up), drained at 1800 s when idle.
    result = simulate(trace_of((10.0, 100, 2), span=3600.0), fleet(), Scripted([(0.0, 2), (1800.0, 1)]))
    assert result.gpu_hours == pytest.approx(16 * (3600 + 1800) / 3600)
    assert (result.gangs_started, result.gangs_drained, result.scale_events) == (1, 1, 2)


def test_a_draining_gang_finishes_its_requests_and_then_stops() -> None:
    # A 2,000-token answer (0.0125 s of prefill, then 40 s of decoding) runs on gang-1 (round robin
    # starts there), which is drained at 15 s; the next request goes to gang-0.
    drained = engine_run(
        trace_of((1.0, 100, 2001), (20.0, 100, 2), span=600.0),
        fleet(initial_replicas=2, router=Router.ROUND_ROBIN),
        Scripted([(0.0, 2), (15.0, 1)], remove="gang-1"),
    )
    assert drained.failed == [False, False]
    assert drained.finish[0] == pytest.approx(1.0 + 0.0125 + 2000 * 0.02)
    gang = next(r for r in drained.replicas if r.name == "gang-1")
    assert gang.phase is GangPhase.DRAINING
    assert gang.ended == pytest.approx(drained.finish[0])


def test_the_drain_timeout_cuts_what_is_left_and_fails_it() -> None:
    engine = engine_run(
        trace_of((1.0, 100, 5001), span=600.0),
        fleet(initial_replicas=2, router=Router.ROUND_ROBIN, drain_timeout_seconds=30.0),
        Scripted([(0.0, 2), (15.0, 1)], remove="gang-1"),
    )
    # 100 s of decoding left when the drain starts at 15 s; cut at 45 s.
    assert engine.failed == [True]
    gang = next(r for r in engine.replicas if r.name == "gang-1")
    assert gang.ended == pytest.approx(45.0)


@pytest.mark.parametrize(
    ("router", "expected"),
    [(Router.LEAST_OUTSTANDING, [1, 1]), (Router.ROUND_ROBIN, [1, 1])],
    ids=["least-outstanding spreads two long requests over two gangs", "round robin alternates"],
)
def test_routing(router: str, expected: list[int]) -> None:
    engine = engine_run(
        trace_of((1.0, 100, 1001), (1.5, 100, 1001), span=60.0), fleet(initial_replicas=2, router=router)
    )
    # Both requests ran side by side: the second did not queue behind the first.
    assert ttft(engine, 1) < 0.1
    assert sorted(r.finished_total for r in engine.replicas) == expected


def test_least_outstanding_avoids_the_busy_gang_where_round_robin_does_not() -> None:
    requests = [(0.0, 100, 3001), (0.1, 100, 2), (0.2, 100, 2), (0.3, 100, 2)]
    least = engine_run(trace_of(*requests, span=60.0), fleet(initial_replicas=2))
    loads = sorted(r.finished_total for r in least.replicas)
    assert loads == [1, 3], "the three short requests all avoid the gang with the long one"


def test_the_autoscaler_sees_each_ready_gang_with_its_metrics_and_the_gangs_still_starting() -> None:
    script = Scripted([(0.0, 1), (30.0, 2)])
    engine_run(trace_of(*[(t * 0.5, 1000, 5) for t in range(240)], span=120.0), fleet(startup_seconds=60.0), script)
    at_45 = next(o for o in script.seen if o.now == 45.0)
    assert [(g.phase, g.since) for g in at_45.gangs] == [(GangPhase.READY, 0.0), (GangPhase.STARTING, 30.0)]
    newest = at_45.samples["gang-0"][-1]
    assert newest.at == 45.0
    assert newest.requests_total is not None
    assert newest.requests_total > 0
    assert newest.prompt_tokens_total == newest.requests_total * 1000
    assert at_45.last_scale_up_at == 30.0


def test_results_report_attainment_against_both_slos() -> None:
    # A short request meets both SLOs (TTFT 0.0125 s, two decode steps of 0.02 s); a 40,000-token
    # prompt takes five passes, 1.05 s, past the 1 s TTFT SLO (and has no ITL: one output token).
    result: PolicyResult = simulate(
        trace_of((0.0, 100, 3), (0.5, 40_000, 1), span=10.0),
        fleet(performance=replace(RoundReplica(), context_length=100_000, max_total_num_tokens=200_000)),
        StaticPeak(1),
    )
    assert result.requests == 2
    assert result.ttft_attainment == pytest.approx(0.5)
    assert result.itl_attainment == pytest.approx(1.0)


def test_capacity_of_takes_decode_at_the_largest_batch_within_the_itl_slo() -> None:
    @dataclass(frozen=True)
    class Linear(RoundReplica):
        def decode_step_seconds(self, batch_size: int, kv_tokens: int) -> float:
            return 0.01 + 0.001 * batch_size

    capacity = capacity_of(Linear(), itl_slo_seconds=0.05, context_tokens=2000, output_tokens=100)
    # 0.01 + 0.001 b ≤ 0.05 → b = 40 sequences, 40 / 0.05 = 800 tok/s; prefill 2000 / 0.06 s.
    assert capacity.decode_tokens_per_second == pytest.approx(800)
    assert capacity.prefill_tokens_per_second == pytest.approx(2000 / 0.06)
    assert capacity.typical_request_seconds == pytest.approx(0.06 + 100 / 800)


# --- traces ---------------------------------------------------------------------------------------


def test_the_azure_format_loads_with_seven_fractional_digits(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:17:05.9799600,110,27\n"
    )
    trace = load_trace(path)
    assert [r.arrival for r in trace.requests] == pytest.approx([0.0, 0.052, 2.0])
    assert [(r.context_tokens, r.generated_tokens) for r in trace.requests] == [(4808, 10), (3180, 8), (110, 27)]
    assert trace.span_seconds == pytest.approx(3.0)  # one mean inter-arrival after the last


def test_timestamps_may_be_seconds(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n5.5,10,1\n7,20,2\n")
    assert [r.arrival for r in load_trace(path).requests] == [0.0, 1.5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,ContextTokens,GeneratedTokens\n1,2,3\n", r"missing column\(s\) TIMESTAMP"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1,two,3\n", ":2:"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,-3\n", "must not be negative"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ],
    ids=["names the missing column", "names the bad line", "refuses negative counts", "refuses an empty trace"],
)
def test_bad_traces_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(path)


def test_reshape_compresses_time_and_overlays_copies_that_wrap_around() -> None:
    trace = trace_of((0.0, 1, 1), (6.0, 2, 1), span=10.0)
    faster = reshape(trace, speedup=2.0)
    assert [r.arrival for r in faster.requests] == [0.0, 3.0]
    assert faster.span_seconds == 5.0
    stacked = reshape(trace, copies=3, copy_offset_seconds=3.0)
    # Copy k is shifted by 3k s, wrapped at 10 s: 0, 6 | 3, 9 | 6, 12 → 2.
    assert [r.arrival for r in stacked.requests] == [0.0, 2.0, 3.0, 6.0, 6.0, 9.0]
    assert stacked.span_seconds == 10.0
    assert len(stacked.requests) == 3 * len(trace.requests)
