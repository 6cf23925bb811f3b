"""The autoscaling scenario suite: our policy against its baselines on families of load it was not tuned on.

    .venv/bin/python bench/scenarios.py [--quick] [--seed N] [--draw N] [--plot FILE.png] [--json FILE] [--only NAME]

Each scenario is a seeded synthetic workload (operator/mimo_operator/autoscaling/workloads.py) in the
shared trace's format, or the shared Azure code trace, sized so that its peak needs about `peak` gangs
of MiMo-V2.5-Pro fp8 on 2×8 H200 (the fleet of `mimoctl simulate autoscaling` without -f: the plan's
330 s warm start-up, TTFT ≤ 2 s, mean ITL ≤ 0.1 s). On each, the simulator runs:

* ours (`mimo`), built by the same entry point as `mimoctl simulate autoscaling` (`comparison_for`);
* `static-peak` (the oracle's peak, all the time);
* HPA on KV use and on running requests, and KEDA on the queue, each at several targets;
* the `oracle` (clairvoyant: starts each gang one start-up before it is needed);
* the `reactive` bound: the best a policy can do that sees demand only when it arrives: it orders a
  gang the moment the arrivals so far need it, waits one start-up for it, and (with hindsight)
  releases it exactly when it is no longer needed, keeping it through lulls shorter than a start-up.

Two families share prompt prefixes (`chat-sessions`, `rag-documents`): their requests carry segments,
the simulated gangs' prefix caches (the simulated engine's radix cache) supply the shared part, the
policy sees `sglang:cached_tokens_total`, the router is cache_aware, and the oracle prices each prompt
without what one unbounded cache would supply. `--cache off` runs them without caches, `--cache blind`
with caches the policy is not shown (what a policy that ignores caching would spend).

Targets checked per scenario (issue 11): no baseline has both higher TTFT attainment and fewer GPU-hours
than ours; attainment ≥ the reactive bound − 2 points; GPU-hours ≤ 1.2 × the oracle's; ≥ 99 % within the
TTFT SLO where every burst outlasts two start-ups (marked `long` in the table).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from mimo_operator.autoscaling import workloads
from mimo_operator.autoscaling.baselines import (
    Comparison,
    HpaUtilisation,
    KedaQueue,
    Oracle,
    copies_for_peak,
    demand_per_bin,
)
from mimo_operator.autoscaling.simulator import Autoscaler, PolicyResult, Router, request_work_seconds, simulate
from mimo_operator.autoscaling.trace import Trace, load_trace, reshape
from mimo_operator.commands.simulate_autoscaling import DEFAULT_MANIFEST, comparison_for

SHARED_TRACE = Path(__file__).resolve().parents[1] / "examples" / "traces" / "azure-2023-code.csv"
# The seed of the published table; run other seeds (--seed) to see the policy on draws it was not tuned on.
TABLE_SEED = 1
REACTIVE_SLACK = 0.02
ORACLE_RATIO = 1.2
LONG_BURST_ATTAINMENT = 0.99


@dataclass(frozen=True)
class Scenario:
    key: str
    make: Callable[[], workloads.Workload] | None  # None: the shared Azure trace
    peak: int = 8  # gangs the peak needs (the oracle's count)
    # Every burst outlasts two start-ups (11 minutes at 330 s): the 99 % target applies. Where the first burst
    # comes unannounced (a flash crowd, the first on/off cycles), no policy that sees only the past reaches it:
    # the reactive bound, printed beside it, says how far it is.
    long: bool = False
    router: str | None = None  # the router's policy in the simulated fleet (None: the simulator's default)
    startup_seconds: float | None = None  # a gang's start-up (None: the plan's, 330 s)


# Sizes and peaks keep each scenario to some tens of thousands of requests: the whole suite (thirteen
# autoscalers on each) runs in a few CPU minutes.
RAG = workloads.RAG
CACHE_AWARE = Router.CACHE_AWARE
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("flash-6x-2min", lambda: workloads.flash_crowd(height=6, ramp_seconds=120, hold_seconds=900, sizes=RAG),
             long=True),
    Scenario("flash-3x-10min", lambda: workloads.flash_crowd(height=3, ramp_seconds=600, hold_seconds=1500, sizes=RAG),
             long=True),
    Scenario("diurnal-3h", lambda: workloads.diurnal(hours=3.0, sizes=RAG), peak=6, long=True),
    Scenario("on-off-5/10-20k", lambda: workloads.on_off(on_seconds=300, off_seconds=600, cycles=7)),
    Scenario("on-off-15/15", lambda: workloads.on_off(on_seconds=900, off_seconds=900, cycles=4), long=True),
    Scenario("long-context", lambda: workloads.long_context_bursts(hours=1.5)),
    Scenario("heavy-tail-out", lambda: workloads.heavy_tailed_outputs(hours=1.5), long=True),
    Scenario("slow-ramp-1h", lambda: workloads.slow_ramp(ramp_seconds=3600, sizes=RAG), long=True),
    Scenario("multi-tenant", lambda: workloads.multi_tenant(hours=2.0)),
    Scenario("azure-code", None, peak=6),
    # Prompt caching: requests share prefixes (a conversation's history, a document set) and the gangs'
    # prefix caches supply them; behind sglang-router's cache_aware, the policy suited to them.
    Scenario("chat-sessions", lambda: workloads.chat_sessions(hours=1.5), peak=4, long=True, router=CACHE_AWARE),
    Scenario("rag-documents", lambda: workloads.rag_documents(height=4), peak=4, long=True, router=CACHE_AWARE),
)
CACHING = ("chat-sessions", "rag-documents")
QUICK = ("flash-6x-2min", "on-off-5/10-20k")


def drawn_suite(count: int, seed: int) -> tuple[Scenario, ...]:
    """`count` scenarios whose family parameters, peak and start-up are drawn too (`--draw`), not only the arrivals.

    The table's scenarios are one setting of each family; these are others, from ranges wide enough that
    none was tuned on: flash crowds from 1.5× to 8× over 0–15 minute ramps, on/off bursts of 2–25 minutes,
    days of 1.5–6 hours, peaks of 3–12 gangs, start-ups of 2–8 minutes. A scenario is `long` (the 99 %
    target) where every burst outlasts two of its start-ups.
    """
    rng = random.Random(seed)  # reproducible draws, not secrets
    families = ("flash", "on-off", "diurnal", "long-context", "heavy-tail", "slow-ramp", "multi-tenant",
                "chat-sessions", "rag-documents")
    # Every family in turn; fewer draws than families start at a drawn one.
    first = 0 if count >= len(families) else rng.randrange(len(families))
    made: list[Scenario] = []
    for index in range(count):
        family = families[(first + index) % len(families)]
        startup = float(rng.choice((120, 180, 240, 330, 420, 480)))
        peak = rng.randint(3, 12)
        sizes = rng.choice((workloads.CODE, workloads.CHAT, workloads.RAG))
        u = rng.uniform
        router = None
        if family == "flash":
            height, ramp, hold = u(1.5, 8.0), u(0.0, 900.0), u(300.0, 2400.0)
            make = partial(workloads.flash_crowd, height=height, ramp_seconds=ramp, hold_seconds=hold, sizes=sizes)
            label, long = f"flash-{height:.1f}x-{ramp / 60:.0f}min-{hold / 60:.0f}", hold >= 2 * startup
        elif family == "on-off":
            on, off = u(120.0, 1500.0), u(120.0, 1800.0)
            cycles = max(3, min(8, int(14_400 // (on + off))))
            make = partial(workloads.on_off, on_seconds=on, off_seconds=off, cycles=cycles, base=u(0.0, 0.3),
                           sizes=rng.choice((None, sizes)))
            label, long = f"on-off-{on / 60:.0f}/{off / 60:.0f}", on >= 2 * startup
        elif family == "diurnal":
            hours = u(1.5, 6.0)
            make = partial(workloads.diurnal, hours=hours, floor=u(0.05, 0.5), sizes=sizes)
            label, long = f"diurnal-{hours:.1f}h", True
        elif family == "long-context":
            bursts = rng.randint(2, 6)
            make = partial(workloads.long_context_bursts, hours=u(1.0, 2.5), bursts=bursts,
                           burst_seconds=u(300.0, 1200.0), seed=rng.randrange(1000), share=u(0.3, 0.8))
            label, long = f"long-context-{bursts}", False
        elif family == "heavy-tail":
            alpha = u(1.1, 2.0)
            make = partial(workloads.heavy_tailed_outputs, hours=u(1.0, 3.0), alpha=alpha, floor=u(0.2, 0.8))
            label, long = f"heavy-tail-{alpha:.1f}", True
        elif family == "slow-ramp":
            ramp = u(1200.0, 7200.0)
            make = partial(workloads.slow_ramp, start=u(0.05, 0.5), ramp_seconds=ramp, hold_seconds=u(300.0, 1800.0),
                           sizes=sizes)
            label, long = f"slow-ramp-{ramp / 60:.0f}min", True
        elif family == "multi-tenant":
            period = u(600.0, 3600.0)
            make = partial(workloads.multi_tenant, hours=u(1.0, 3.0), batch_period=period,
                           batch_on=period * u(0.2, 0.6))
            label, long = f"multi-tenant-{period / 60:.0f}", False
        elif family == "chat-sessions":
            hours = u(1.0, 3.0)
            make = partial(workloads.chat_sessions, hours=hours, floor=u(0.1, 0.4))
            label, long, router = f"chat-sessions-{hours:.1f}h", True, CACHE_AWARE
            peak = min(peak, 6)
        else:
            height, ramp, hold = u(2.0, 6.0), u(60.0, 900.0), u(600.0, 2400.0)
            make = partial(workloads.rag_documents, height=height, ramp_seconds=ramp, hold_seconds=hold,
                           documents=rng.randint(16, 128))
            label, long, router = f"rag-{height:.1f}x-{ramp / 60:.0f}min", hold >= 2 * startup, CACHE_AWARE
            peak = min(peak, 6)
        made.append(Scenario(f"d{index}:{label}@{startup:.0f}s/{peak}", make, peak=peak, long=long, router=router,
                             startup_seconds=startup))
    return tuple(made)


def _comparison(trace: Trace, scenario: Scenario | None = None, cache: str = "on") -> Comparison:
    startup = None if scenario is None else scenario.startup_seconds
    comparison = comparison_for(DEFAULT_MANIFEST, trace, startup_seconds=startup)[2]
    fleet = replace(comparison.fleet, prefix_cache=cache != "off", report_cached_tokens=cache == "on")
    if scenario is not None and scenario.router is not None:
        fleet = replace(fleet, router=scenario.router)
    return replace(comparison, fleet=fleet)


def build(scenario: Scenario, seed: int, cache: str = "on") -> tuple[Trace, Comparison]:
    """The scenario's trace, sized for its peak, and the comparison `mimoctl simulate autoscaling` would make."""
    if scenario.make is None:
        base = load_trace(SHARED_TRACE)
        sizing = _comparison(base)
        sizing = replace(sizing, policy=replace(sizing.policy, max_replicas=10_000))
        copies = copies_for_peak(base, sizing, peak_replicas=scenario.peak, speedup=1.0, copy_offset_seconds=60.0)
        trace = reshape(base, copies=copies, copy_offset_seconds=60.0)
        return trace, _comparison(trace)
    workload = scenario.make()
    # Sized with the prefix caches on, whatever the run: the same trace with and without them.
    sizing = _comparison(workload.trace(1.0, seed), scenario)
    sizing = replace(sizing, policy=replace(sizing.policy, max_replicas=10_000))
    work = request_work_seconds(sizing.policy.capacity)
    # The rate that keeps `peak` gangs at the oracle's headroom at the peak; then one correction by the
    # oracle's own count (bursts inside the peak need a little more than the mean).
    rate = scenario.peak * sizing.oracle_headroom / workload.mean_work(work)
    for _ in range(2):
        peak = max(sizing.oracle(workload.trace(rate, seed)).counts)
        if peak == scenario.peak:
            break
        rate *= scenario.peak / max(peak, 1)
    trace = workload.trace(rate, seed)
    return trace, _comparison(trace, scenario, cache)


def reactive_bound(comparison: Comparison, trace: Trace) -> Oracle:
    """The best schedule of a policy that sees demand only when it arrives (see the module docstring).

    Demand at the end of each bin is the burst requirement of the stretches that end there (arrivals
    up to now only): work W over the last τ seconds needs W / (τ + SLO). Gang k is ordered the moment
    that requirement needs k gangs and serves one start-up later; it is released at the end of its
    need, kept through lulls shorter than a start-up.
    """
    fleet, config = comparison.fleet, comparison.policy
    step = comparison.oracle_bin_seconds
    page = fleet.performance.page_size if fleet.prefix_cache else 0
    demand = demand_per_bin(trace, request_work_seconds(config.capacity), step, page_size=page)
    longest = max(1, round(comparison.oracle_longest_burst_seconds / step))
    need = []
    for end in range(len(demand)):
        work = 0.0
        best = 0.0
        for first in range(end, max(-1, end - longest), -1):
            work += demand[first] * step
            best = max(best, work / ((end - first + 1) * step + fleet.ttft_slo_seconds))
        need.append(best)
    needed = [
        max(config.min_replicas, min(config.max_replicas, math.ceil(d / comparison.oracle_headroom - 1e-9)))
        for d in need
    ]
    span = len(needed) * step
    changes: dict[float, int] = {}
    for k in range(1, max(needed, default=0) + 1):
        stretches: list[list[float]] = []
        for index, n in enumerate(needed):
            if n < k:
                continue
            begin, end_ = index * step, (index + 1) * step
            if stretches and begin - stretches[-1][1] <= fleet.startup_seconds:
                stretches[-1][1] = end_
            else:
                stretches.append([begin, end_])
        for begin, end_ in stretches:
            # Ordered when the need is seen (the end of the bin that shows it), not a start-up ahead.
            changes[begin + step] = changes.get(begin + step, 0) + 1
            if end_ + step < span:
                changes[end_ + step] = changes.get(end_ + step, 0) - 1
    times = sorted(changes)
    counts = []
    level = 0
    for at in times:
        level += changes[at]
        counts.append(level)
    times.insert(0, 0.0)
    counts.insert(0, needed[0] if needed else 0)
    return Oracle(times, counts, lookahead_seconds=0.0, name="reactive")


def baselines(comparison: Comparison) -> list[Autoscaler]:
    """HPA and KEDA at several targets each, so each is compared at its best setting."""
    low, high = comparison.policy.min_replicas, comparison.policy.max_replicas
    made: list[Autoscaler] = [HpaUtilisation(low, high, "token_usage", 0.8, name="hpa[kv 0.8]")]
    for running in (16, 32, 64):
        made.append(HpaUtilisation(low, high, "running_requests", running, name=f"hpa[running {running}]"))
    for queue in (1.0, 4.0):
        made.append(KedaQueue(low, high, queue, name=f"keda[queue {queue:g}]"))
    return made


def recorded_result(name: str, summary: Mapping[str, Any]) -> PolicyResult:
    """A policy's figures as a run wrote them with ``--json`` (`PolicyResult.summary`), without its timeline."""
    return PolicyResult(
        name=name, requests=int(summary["requests"]), ttft_attainment=summary["ttftAttainment"],
        itl_attainment=summary["itlAttainment"], gpu_hours=summary["gpuHours"], scale_events=summary["scaleEvents"],
        gangs_started=summary["gangsStarted"], gangs_drained=summary["gangsDrained"],
        failed_requests=summary["failedRequests"], ttft_p50_seconds=summary["ttftP50Seconds"],
        ttft_p99_seconds=summary["ttftP99Seconds"], itl_p99_seconds=summary["itlP99Seconds"],
        peak_replicas=summary["peakReplicas"], virtual_seconds=math.nan, cpu_seconds=summary["cpuSeconds"],
        timeline=(), prefix_hit_rate=summary["prefixHitRate"],
    )


def run(
    scenario: Scenario, seed: int, quick: bool = False, cache: str = "on",
    recorded: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Trace, Comparison, dict[str, PolicyResult]]:
    """Every policy on the scenario's trace; with `recorded` (a ``--json`` file's policies for this scenario),
    ours only, the others as recorded: none of them reads our policy, so their figures are what a run makes."""
    trace, comparison = build(scenario, seed, cache)
    if recorded is not None:
        results = {name: recorded_result(name, summary) for name, summary in recorded.items() if name != "mimo"}
        return trace, comparison, {"mimo": comparison.run(trace, ["mimo"])["mimo"], **results}
    results = comparison.run(trace, ["mimo", "oracle", "static-peak"])
    oracle = comparison.oracle(trace)
    start = max(comparison.policy.min_replicas, min(comparison.policy.max_replicas, oracle.at(0.0)))
    fleet = replace(comparison.fleet, initial_replicas=start)
    results["reactive"] = simulate(trace, fleet, reactive_bound(comparison, trace))
    for autoscaler in [] if quick else baselines(comparison):
        results[autoscaler.name] = simulate(trace, fleet, autoscaler)
    return trace, comparison, results


@dataclass(frozen=True)
class Verdict:
    dominated_by: tuple[str, ...]
    reactive_gap: float  # ours − reactive bound, attainment points (fraction)
    oracle_ratio: float
    long_ok: bool | None  # None: the 99 % target does not apply

    def missed(self) -> list[str]:
        """The targets missed, named as in the table."""
        return [what for what, missed in (
            ("dominated", bool(self.dominated_by)), ("reactive bound", self.reactive_gap < -REACTIVE_SLACK),
            (f"{ORACLE_RATIO}× oracle", self.oracle_ratio > ORACLE_RATIO), ("99 %", self.long_ok is False)) if missed]

    @property
    def passed(self) -> bool:
        return (
            not self.dominated_by
            and self.reactive_gap >= -REACTIVE_SLACK
            and self.oracle_ratio <= ORACLE_RATIO
            and self.long_ok is not False
        )


def verdict(scenario: Scenario, results: dict[str, PolicyResult]) -> Verdict:
    ours = results["mimo"]
    rivals = [n for n in results if n not in ("mimo", "oracle", "reactive")]
    dominated = tuple(
        n for n in rivals if results[n].ttft_attainment > ours.ttft_attainment and results[n].gpu_hours < ours.gpu_hours
    )
    return Verdict(
        dominated_by=dominated,
        reactive_gap=ours.ttft_attainment - results["reactive"].ttft_attainment,
        oracle_ratio=ours.gpu_hours / results["oracle"].gpu_hours,
        long_ok=(ours.ttft_attainment >= LONG_BURST_ATTAINMENT) if scenario.long else None,
    )


def best_baseline(results: dict[str, PolicyResult]) -> str:
    """The baseline with the highest attainment, cheapest on a tie: 'name att% ×oracle'."""
    oracle = results["oracle"].gpu_hours
    rivals = [(n, r) for n, r in results.items() if n not in ("mimo", "oracle", "reactive", "static-peak")]
    if not rivals:
        return "-"
    name, r = max(rivals, key=lambda item: (round(item[1].ttft_attainment, 4), -item[1].gpu_hours))
    return f"{name} {r.ttft_attainment:.1%} {r.gpu_hours / oracle:.2f}"


HEADER = (
    f"{'scenario':<34}{'ours':>8}{'×orc':>6}{'ev':>4}{'pk':>4}{'reactive':>9}{'oracle':>8}{'static':>8}{'×orc':>6}"
    f"  {'best HPA/KEDA (att, ×orc)':<30}{'verdict':<8}"
)


def row(scenario: Scenario, results: dict[str, PolicyResult], v: Verdict) -> str:
    ours, oracle, static = results["mimo"], results["oracle"], results["static-peak"]
    notes = []
    if v.dominated_by:
        notes.append("dominated by " + ",".join(v.dominated_by))
    if v.reactive_gap < -REACTIVE_SLACK:
        notes.append(f"{v.reactive_gap:+.1%} vs reactive")
    if v.oracle_ratio > ORACLE_RATIO:
        notes.append(f"{v.oracle_ratio:.2f}× oracle")
    if v.long_ok is False:
        notes.append(f"< 99 % (reactive bound {results['reactive'].ttft_attainment:.1%})")
    name = scenario.key + (" (long)" if scenario.long else "")
    return (
        f"{name:<34}{ours.ttft_attainment:>8.1%}{v.oracle_ratio:>6.2f}{ours.scale_events:>4}{ours.peak_replicas:>4}"
        f"{results['reactive'].ttft_attainment:>9.1%}{oracle.ttft_attainment:>8.1%}"
        f"{static.ttft_attainment:>8.1%}{static.gpu_hours / oracle.gpu_hours:>6.2f}"
        f"  {best_baseline(results):<30}{'PASS' if v.passed else 'MISS ' + '; '.join(notes)}"
        + (f"  prefix hits {ours.prefix_hit_rate:.0%}" if ours.prefix_hit_rate else "")
    )


def markdown(rows: Sequence[tuple[Scenario, dict[str, PolicyResult], Verdict]]) -> str:
    lines = [
        "| scenario | ours: TTFT ok | ours ÷ oracle GPU-h | reactive bound | oracle | static-peak (÷ oracle) "
        "| best HPA/KEDA (TTFT ok, ÷ oracle) | targets |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scenario, results, v in rows:
        ours, oracle, static = results["mimo"], results["oracle"], results["static-peak"]
        lines.append(
            f"| {scenario.key}{' (long)' if scenario.long else ''} | {ours.ttft_attainment:.1%} | "
            f"{v.oracle_ratio:.2f} | {results['reactive'].ttft_attainment:.1%} | {oracle.ttft_attainment:.1%} | "
            f"{static.ttft_attainment:.1%} ({static.gpu_hours / oracle.gpu_hours:.2f}) | {best_baseline(results)} | "
            f"{'met' if v.passed else 'missed: ' + ', '.join(v.missed())} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[tuple[Scenario, Trace, dict[str, PolicyResult]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(14, 2.6 * lines), squeeze=False)
    for index, (scenario, trace, results) in enumerate(rows):
        axis = axes[index // columns][index % columns]
        first = results["oracle"]
        minutes = [p.at / 60 for p in first.timeline]
        load = axis.twinx()
        load.fill_between(minutes, [p.prompt_tokens_per_second / 1000 for p in first.timeline], color="0.85", lw=0)
        load.set_yticks([])
        axis.set_zorder(load.get_zorder() + 1)
        axis.patch.set_visible(False)
        for name, style in (("mimo", "-"), ("oracle", "--"), ("reactive", ":"), ("static-peak", "-.")):
            result = results[name]
            axis.step(
                [p.at / 60 for p in result.timeline],
                [p.ready + p.starting for p in result.timeline],
                where="post",
                ls=style,
                lw=1.1,
                label=f"{name} {result.ttft_attainment:.0%}",
            )
        axis.set_xlim(0, trace.span_seconds / 60)
        axis.set_title(scenario.key, fontsize="small")
        axis.legend(fontsize="x-small", loc="upper left")
        axis.set_ylabel("gangs")
    for index in range(len(rows), lines * columns):
        axes[index // columns][index % columns].set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}, without the HPA/KEDA sweep")
    parser.add_argument("--seed", type=int, default=TABLE_SEED)
    parser.add_argument("--only", action="append", help="a scenario key (repeatable)")
    parser.add_argument(
        "--draw",
        type=int,
        metavar="N",
        help="instead of the table's scenarios, N whose family parameters, peak and start-up are drawn from --seed",
    )
    parser.add_argument("--plot", type=Path, help="gangs over time per scenario (mimo, oracle, reactive, static)")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument(
        "--reuse",
        type=Path,
        metavar="JSON",
        help="run ours only and take the other policies' figures from this --json file of the same seed and "
        "scenarios (they do not depend on our policy): a policy change re-measured in minutes",
    )
    parser.add_argument(
        "--cache",
        choices=("on", "off", "blind"),
        default="on",
        help="the gangs' prefix caches: on (default); off (no caching: SGLang's --disable-radix-cache); "
        f"blind (caches on, the policy not shown sglang:cached_tokens_total). Matters for {', '.join(CACHING)}",
    )
    args = parser.parse_args(argv)
    if args.reuse and args.plot:
        parser.error("--plot needs every policy's timeline: run without --reuse")
    reused = json.loads(args.reuse.read_text()) if args.reuse else None
    suite = drawn_suite(args.draw, args.seed) if args.draw else SCENARIOS
    chosen = [s for s in suite if (args.only and s.key in args.only) or (not args.only and not args.quick)]
    if args.quick and not args.only:
        chosen = [s for s in suite if s.key in QUICK]
    if not chosen:
        print(f"no scenario {args.only}; choose from {', '.join(s.key for s in SCENARIOS)}", file=sys.stderr)
        return 2
    print(
        f"seed {args.seed}; prefix caches {args.cache}; MiMo-V2.5-Pro fp8, 2×8 H200 per gang, TTFT ≤ 2 s; "
        "×orc: GPU-hours ÷ the oracle's"
    )
    print(HEADER, flush=True)
    clock = time.process_time()
    table: list[tuple[Scenario, dict[str, PolicyResult], Verdict]] = []
    drawn: list[tuple[Scenario, Trace, dict[str, PolicyResult]]] = []
    raw: dict[str, Any] = {}
    for scenario in chosen:
        recorded = None
        if reused is not None:
            if scenario.key not in reused:
                print(f"{args.reuse} has no {scenario.key}", file=sys.stderr)
                return 2
            recorded = reused[scenario.key]["policies"]
        trace, _, results = run(scenario, args.seed, quick=args.quick, cache=args.cache, recorded=recorded)
        v = verdict(scenario, results)
        print(row(scenario, results, v), flush=True)
        table.append((scenario, results, v))
        drawn.append((scenario, trace, results))
        raw[scenario.key] = {
            "requests": len(trace.requests),
            "hours": round(trace.span_seconds / 3600, 3),
            "policies": {name: r.summary() for name, r in results.items()},
            "passed": v.passed,
        }
    met = sum(1 for _, _, v in table if v.passed)
    print(f"targets met on {met} of {len(table)} scenarios; {time.process_time() - clock:.0f} CPU s")
    if args.markdown:
        print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    if args.plot:
        plot(drawn, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
