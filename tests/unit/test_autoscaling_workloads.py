"""The scenario suite's workload families: seeded, reproducible, and shaped as their names say."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mimo_operator.autoscaling import workloads
from mimo_operator.autoscaling.trace import Trace


def rate_between(trace: Trace, start: float, end: float) -> float:
    return sum(1 for r in trace.requests if start <= r.arrival < end) / (end - start)


def test_the_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    family = workloads.multi_tenant(hours=0.5)
    first, again, other = family.trace(5.0, 3), family.trace(5.0, 3), family.trace(5.0, 4)
    assert first.requests == again.requests
    assert first.requests != other.requests
    arrivals = [r.arrival for r in first.requests]
    assert arrivals == sorted(arrivals)
    assert arrivals[0] >= 0
    assert arrivals[-1] < first.span_seconds == 1800


def test_a_flash_crowd_multiplies_the_load_by_its_height() -> None:
    trace = workloads.flash_crowd(height=6, ramp_seconds=60, hold_seconds=900, lead_seconds=900).trace(12.0, 1)
    before = rate_between(trace, 0, 900)
    during = rate_between(trace, 960, 1860)
    assert during / before == pytest.approx(6.0, rel=0.1)
    assert rate_between(trace, trace.span_seconds - 600, trace.span_seconds) == pytest.approx(before, rel=0.15)


def test_on_off_bursts_come_at_their_period() -> None:
    trace = workloads.on_off(on_seconds=300, off_seconds=600, cycles=3, lead_seconds=600).trace(4.0, 2)
    for k in range(3):
        onset = 600 + 900 * k
        on = rate_between(trace, onset, onset + 300)
        off = rate_between(trace, onset + 300, onset + 900)
        assert on == pytest.approx(4.0, rel=0.15)
        assert off == pytest.approx(0.4, rel=0.35)
    assert min(r.context_tokens for r in trace.requests) >= 2_000


def test_heavy_tailed_outputs_follow_the_clipped_pareto_mean() -> None:
    law = workloads.Pareto(60.0, 1.3, 8_000)
    rng = random.Random(0)
    drawn = [law.draw(rng) for _ in range(50_000)]
    assert sum(drawn) / len(drawn) == pytest.approx(law.mean(), rel=0.08)
    assert max(drawn) == 8_000, "the tail reaches the clip"


def test_mean_work_sizes_the_peak_rate() -> None:
    family = workloads.diurnal(hours=1.0, sizes=workloads.RAG)

    def work(context: int, generated: int) -> float:
        return context / 30_000 + generated / 1_500

    per_request = family.mean_work(work)
    expected = workloads.RAG.context.mean() / 30_000 + workloads.RAG.generated.mean() / 1_500
    assert per_request == pytest.approx(expected, rel=0.1)


def test_a_peak_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="peak rate"):
        workloads.slow_ramp().trace(0.0, 1)


def load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "scenarios.py"
    spec = importlib.util.spec_from_file_location("bench_scenarios", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_reactive_bound_orders_when_the_crowd_arrives_and_the_oracle_a_start_up_earlier() -> None:
    bench = load_bench()
    family = workloads.flash_crowd(height=6, ramp_seconds=60, hold_seconds=600, lead_seconds=1200, tail_seconds=300)
    trace = family.trace(20.0, 1)
    comparison = bench._comparison(trace)
    reactive, oracle = bench.reactive_bound(comparison, trace), comparison.oracle(trace)
    startup = comparison.fleet.startup_seconds

    def first_above(schedule: Any, level: int) -> float:
        return float(min(t for t, n in zip(schedule.times, schedule.counts, strict=True) if n > level))

    base = reactive.at(600.0)
    assert 1200 <= first_above(reactive, base) <= 1200 + 60, "it sees the crowd only when it arrives"
    assert first_above(oracle, base) <= first_above(reactive, base) - startup + 60, "the oracle starts a start-up early"
    assert max(reactive.counts) == max(oracle.counts), "both size the crowd the same way"


def test_drawn_scenarios_are_reproducible_varied_and_marked_long_by_their_own_start_up() -> None:
    bench = load_bench()
    suite = bench.drawn_suite(18, 5)
    assert [s.key for s in suite] == [s.key for s in bench.drawn_suite(18, 5)], "a seed names the same draws"
    assert [s.key for s in suite] != [s.key for s in bench.drawn_suite(18, 6)], "another seed draws others"
    assert len({s.key for s in suite}) == len(suite)
    assert len({s.startup_seconds for s in suite}) > 1
    assert len({s.peak for s in suite}) > 1
    for scenario in suite:
        workload = scenario.make()
        assert workload.span_seconds > 0
        startup = scenario.startup_seconds
        if scenario.key.split(":")[1].startswith("on-off"):
            on = float(scenario.make.keywords["on_seconds"])
            assert scenario.long == (on >= 2 * startup), scenario.key
        if scenario.key.split(":")[1].startswith("flash"):
            hold = float(scenario.make.keywords["hold_seconds"])
            assert scenario.long == (hold >= 2 * startup), scenario.key


def test_a_drawn_scenario_runs_on_its_own_start_up() -> None:
    bench = load_bench()
    scenario = next(s for s in bench.drawn_suite(9, 3) if s.startup_seconds != 330.0)
    trace, comparison = bench.build(scenario, 3)
    assert comparison.fleet.startup_seconds == scenario.startup_seconds
    assert comparison.policy.startup_seconds == scenario.startup_seconds
    assert trace.requests


def test_a_run_that_reuses_the_recorded_baselines_writes_what_a_whole_run_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    whole, reused = tmp_path / "whole.json", tmp_path / "reused.json"
    args = ["--quick", "--only", "on-off-5/10-20k", "--markdown"]
    assert bench.main([*args, "--json", str(whole)]) == 0
    table = capsys.readouterr().out
    assert bench.main([*args, "--reuse", str(whole), "--json", str(reused)]) == 0
    again = capsys.readouterr().out

    def figures(path: Path) -> dict[str, Any]:
        raw = json.loads(path.read_text())
        for scenario in raw.values():
            for summary in scenario["policies"].values():
                summary.pop("cpuSeconds")
        return raw

    assert figures(reused) == figures(whole)

    def rows(out: str) -> list[str]:  # the rows and the Markdown, not the CPU time
        return [line for line in out.splitlines() if not line.startswith("targets met")]

    assert rows(again) == rows(table)
    with pytest.raises(SystemExit):  # a plot needs every policy's timeline
        bench.main([*args, "--reuse", str(whole), "--plot", str(tmp_path / "p.png")])
