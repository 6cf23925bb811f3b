"""Autoscaling in virtual time: our policy against HPA, KEDA, static peak and a clairvoyant oracle.

    .venv/bin/python bench/autoscaling.py [--trace FILE] [--quick] [--json FILE]

The fleet is MiMo-V2.5-Pro fp8 on 8×H200 nodes as the planner plans it (two nodes, 16 GPUs per
replica), with a node-local weights cache, so a new gang serves after the plan's warm start-up
estimate (≈ 5.5 minutes). The shared Azure code trace is overlaid on itself (copies one minute apart,
which keeps the hour's shape) until its peak needs 8 gangs. SLOs: TTFT ≤ 2 s, mean ITL ≤ 0.1 s.

Every policy sees the same trace and the same fleet, starting from what the first minutes need.
The baselines are swept over their targets, so that "fewer GPU-hours than every baseline that
reaches the same attainment" is checked against each baseline at its best setting, not its default.

Targets (issue 6): ≥ 99 % of requests within the TTFT SLO; GPU-hours ≤ 1.15 × the oracle's; fewer
GPU-hours than every baseline reaching the same TTFT attainment. The sensitivity section re-runs
ours and the oracle on other shapes of load and other start-up times — where a reactive policy
cannot meet the SLO, it says so. Speed: virtual hours simulated per CPU second.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mimo_operator.autoscaling.baselines import Comparison, HpaUtilisation, KedaQueue, copies_for_peak
from mimo_operator.autoscaling.simulator import Autoscaler, PolicyResult, simulate
from mimo_operator.autoscaling.trace import Request, Trace, load_trace, reshape
from mimo_operator.commands.simulate_autoscaling import DEFAULT_MANIFEST, comparison_for

SHARED_TRACE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "azure-2023-code.csv"
TTFT_TARGET = 0.99
ORACLE_RATIO_TARGET = 1.15


@dataclass(frozen=True)
class Scenario:
    name: str
    speedup: float = 1.0
    copy_offset_seconds: float = 60.0
    peak_replicas: int = 8
    startup_seconds: float | None = None  # None: the plan's estimate
    synthetic: str | None = None  # a synthetic shape instead of the shared trace's


def build(base: Trace, scenario: Scenario) -> tuple[Trace, Comparison, int]:
    def comparison(trace: Trace) -> Comparison:
        return comparison_for(DEFAULT_MANIFEST, trace, startup_seconds=scenario.startup_seconds)[2]

    if scenario.synthetic is not None:
        trace = synthetic(base, scenario.synthetic, comparison(base), scenario.peak_replicas)
        return trace, comparison(trace), 1
    sizing = comparison(base)
    sizing = replace(sizing, policy=replace(sizing.policy, max_replicas=10_000))
    copies = copies_for_peak(
        base,
        sizing,
        peak_replicas=scenario.peak_replicas,
        speedup=scenario.speedup,
        copy_offset_seconds=scenario.copy_offset_seconds,
    )
    trace = reshape(base, speedup=scenario.speedup, copies=copies, copy_offset_seconds=scenario.copy_offset_seconds)
    return trace, comparison(trace), copies


def synthetic(base: Trace, shape: str, comparison: Comparison, peak_replicas: int) -> Trace:
    """Poisson arrivals with the shared trace's request sizes and a rate shape; sized by the oracle."""
    sizes = [(r.context_tokens, r.generated_tokens) for r in base.requests]
    mean_work = sum(c / comparison.policy.capacity.prefill_tokens_per_second for c, _ in sizes) / len(sizes)
    shapes: dict[str, tuple[float, Callable[[float], float]]] = {
        # A working day compressed into four hours: night, morning ramp, plateau, evening decline.
        "diurnal": (4.0, lambda t: 0.15 + 0.85 * max(0.0, math.sin(math.pi * t / (4 * 3600))) ** 2),
        # A batch job lands every hour for twenty minutes on top of a steady base.
        "hourly-batch": (3.0, lambda t: 1.0 if (t % 3600) >= 2400 else 0.35),
    }
    hours, shape_of = shapes[shape]
    rng = random.Random(11)
    # Peak rate: the requests per second that keep peak_replicas gangs at ~75 % of their compute.
    peak_rate = 0.75 * peak_replicas / mean_work
    requests: list[Request] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= hours * 3600:
            break
        if rng.random() < shape_of(t):
            context, generated = rng.choice(sizes)
            requests.append(Request(t, context, generated))
    return Trace(f"synthetic {shape} ({hours:g} h, Poisson, shared trace's sizes)", tuple(requests), hours * 3600)


def variants(comparison: Comparison) -> list[tuple[Autoscaler, str]]:
    """The baselines at several targets each: (autoscaler, family)."""
    low, high = comparison.policy.min_replicas, comparison.policy.max_replicas
    made: list[tuple[Autoscaler, str]] = []
    for target in (0.3, 0.8):
        made.append((HpaUtilisation(low, high, "token_usage", target, name=f"hpa-utilisation[kv {target:g}]"), "hpa"))
    for target in (8, 16, 32, 64):
        made.append(
            (HpaUtilisation(low, high, "running_requests", target, name=f"hpa-utilisation[running {target}]"), "hpa")
        )
    for target in (1.0, 4.0, 16.0):
        made.append((KedaQueue(low, high, target, name=f"keda-queue[{target:g}/gang]"), "keda"))
    return made


def run_all(trace: Trace, comparison: Comparison, *, sweep: bool) -> dict[str, PolicyResult]:
    results = comparison.run(trace, ["mimo", "oracle", "static-peak"])
    if sweep:
        start = max(
            comparison.policy.min_replicas, min(comparison.policy.max_replicas, comparison.oracle(trace).at(0.0))
        )
        for autoscaler, _ in variants(comparison):
            results[autoscaler.name] = simulate(trace, replace(comparison.fleet, initial_replicas=start), autoscaler)
    return results


def table(results: dict[str, PolicyResult]) -> str:
    oracle = results["oracle"].gpu_hours
    ours = results["mimo"].gpu_hours
    lines = [
        f"  {'policy':<30}{'TTFT ok':>9}{'ITL ok':>9}{'GPU-h':>9}{'/oracle':>9}{'ours/it':>9}{'events':>8}"
        f"{'peak':>6}{'failed':>8}{'TTFT p99':>10}"
    ]
    for name, r in results.items():
        lines.append(
            f"  {name:<30}{r.ttft_attainment:>9.2%}{r.itl_attainment:>9.2%}{r.gpu_hours:>9.1f}"
            f"{r.gpu_hours / oracle:>9.3f}{ours / r.gpu_hours:>9.3f}{r.scale_events:>8}{r.peak_replicas:>6}"
            f"{r.failed_requests:>8}{r.ttft_p99_seconds:>9.2f}s"
        )
    return "\n".join(lines)


def verdicts(results: dict[str, PolicyResult]) -> list[str]:
    ours = results["mimo"]
    oracle = results["oracle"]
    ratio = ours.gpu_hours / oracle.gpu_hours
    lines = [
        f"  TTFT attainment {ours.ttft_attainment:.2%} (target ≥ {TTFT_TARGET:.0%}): "
        f"{'PASS' if ours.ttft_attainment >= TTFT_TARGET else 'MISS'}",
        f"  GPU-hours ours/oracle {ratio:.3f} (target ≤ {ORACLE_RATIO_TARGET}): "
        f"{'PASS' if ratio <= ORACLE_RATIO_TARGET else 'MISS'}",
    ]
    rivals = {n: r for n, r in results.items() if n not in ("mimo", "oracle")}
    reaching = {n: r for n, r in rivals.items() if r.ttft_attainment >= ours.ttft_attainment}
    beaten = [n for n, r in reaching.items() if ours.gpu_hours < r.gpu_hours]
    lines.append(
        f"  baselines reaching our TTFT attainment: {len(reaching)} of {len(rivals)}; ours uses fewer GPU-hours "
        f"than {len(beaten)} of them: {'PASS' if len(beaten) == len(reaching) else 'MISS'}"
    )
    for name, r in sorted(reaching.items(), key=lambda item: item[1].gpu_hours):
        share = ours.gpu_hours / r.gpu_hours
        lines.append(f"    {name:<30} {r.ttft_attainment:.2%}  {r.gpu_hours:.1f} GPU-h  ours/it {share:.3f}")
    below = sorted((r.ttft_attainment, n) for n, r in rivals.items() if n not in reaching)
    if below:
        best, name = below[-1]
        lines.append(f"  the best baseline below our attainment: {name} at {best:.2%}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trace", type=Path, default=SHARED_TRACE)
    parser.add_argument("--quick", action="store_true", help="the main scenario only")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    base = load_trace(args.trace)
    raw: dict[str, Any] = {}

    main_scenario = Scenario("main: shared trace, copies 60 s apart, 8 gangs at peak, plan's start-up")
    trace, comparison, copies = build(base, main_scenario)
    fleet = comparison.fleet
    print(main_scenario.name)
    bounds = f"{comparison.policy.min_replicas}–{comparison.policy.max_replicas}"
    print(
        f"  fleet: MiMo-V2.5-Pro fp8, {fleet.performance.gpus} GPUs per replica, "
        f"start-up {fleet.startup_seconds:.0f} s, SLOs TTFT ≤ {fleet.ttft_slo_seconds:g} s and "
        f"ITL ≤ {fleet.itl_slo_seconds:g} s, decisions every {fleet.decision_interval_seconds:g} s, replicas {bounds}"
    )
    print(
        f"  trace: {trace.name}: {len(trace.requests):,} requests in {trace.span_seconds / 3600:.2f} h "
        f"({copies} copies)"
    )
    clock = time.process_time()
    results = run_all(trace, comparison, sweep=True)
    cpu = time.process_time() - clock
    print(table(results))
    print("\n".join(verdicts(results)))
    virtual_hours = trace.span_seconds / 3600 * len(results)
    print(
        f"  speed: {len(results)} policies × {trace.span_seconds / 3600:.2f} h of traffic "
        f"({len(trace.requests):,} requests each) in {cpu:.1f} CPU s: {virtual_hours / cpu * 3600:,.0f} s of traffic "
        f"per CPU second (mimo alone: {results['mimo'].cpu_seconds:.1f} CPU s for its run)"
    )
    raw["main"] = {name: r.summary() for name, r in results.items()}

    if not args.quick:
        print("\nsensitivity: ours against the oracle (and the cheapest baseline at ≥ our attainment)")
        print(f"  {'scenario':<58}{'ours TTFT':>10}{'oracle':>8}{'ours/oracle':>12}{'best baseline ≥ ours':>34}")
        scenarios = [
            Scenario("bursts aligned: copies 7 s apart", copy_offset_seconds=7.0),
            Scenario("bursts spread: copies 5 min apart", copy_offset_seconds=300.0),
            Scenario("shorter start-up: 3 min", startup_seconds=180.0),
            Scenario("longer start-up: 8 min", startup_seconds=480.0),
            Scenario("stretched ×4 (4 h), copies 60 s apart", speedup=0.25),
            Scenario("synthetic diurnal, 4 h", synthetic="diurnal"),
            Scenario("synthetic hourly batch on a base, 3 h", synthetic="hourly-batch"),
        ]
        for scenario in scenarios:
            trace, comparison, _ = build(base, scenario)
            results = run_all(trace, comparison, sweep=True)
            ours, oracle = results["mimo"], results["oracle"]
            reaching = [
                (r.gpu_hours, n)
                for n, r in results.items()
                if n not in ("mimo", "oracle") and r.ttft_attainment >= ours.ttft_attainment
            ]
            best = "none reaches it"
            if reaching:
                hours, name = min(reaching)
                best = f"{name} ours/it {ours.gpu_hours / hours:.2f}"
            print(
                f"  {scenario.name:<58}{ours.ttft_attainment:>10.2%}{oracle.ttft_attainment:>8.2%}"
                f"{ours.gpu_hours / oracle.gpu_hours:>12.3f}   {best}"
            )
            raw[scenario.name] = {name: r.summary() for name, r in results.items()}
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
