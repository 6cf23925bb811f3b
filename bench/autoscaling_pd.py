"""Prefill/decode disaggregation against a colocated fleet of the same GPUs, on the autoscaling scenario suite.

    .venv/bin/python bench/autoscaling_pd.py [--quick] [--seed N] [--only NAME] [--json FILE] [--markdown]

The deployment is the suite's (bench/scenarios.py: MiMo-V2.5-Pro fp8 on 8×H200 nodes, node-local weights cache,
TTFT ≤ 2 s, mean ITL ≤ 0.1 s) with `spec.disaggregation`: prefill and decode gangs of 2 nodes each, 1–16 gangs
per pool, hostNetwork with the nodes' 8 HCAs (the KV hand-over is RDMA). Its colocated counterpart is
`colocated_manifest` of it: the same deployment without the block, gangs of 2 nodes, 2–32 gangs (the pools'
sums). Each scenario's trace is the suite's (same seed, sized for its peak in colocated gangs). On it:

* autoscaled: ours colocated (`mimo`, `autoscaling.policy.decide`) and ours per pool (`mimo-pd`,
  `autoscaling.pools.decide_pools`), each from where the colocated oracle starts (split by the trace's work);
* static, the same GPUs: the colocated oracle's peak N gangs all the time, colocated (`static-peak`) and as PD
  (`static-pd`: N gangs in the best fixed split, with hindsight: from the split by the trace's prefill and decode
  work, one gang at a time towards the split with the higher TTFT attainment, then ITL, until neither neighbour
  is better). The split by work alone misjudges the decode pool wherever its KV pool or running-request limit,
  not its token rate, is what binds (long contexts: a decode gang holds every request's whole context, no prefix
  cache); `--work-split` shows it.

Both fleets run the same simulator engine (autoscaling/simulator.py; the PD fleet is autoscaling/pd_simulator.py
on it) with each side's performance model from the planner. What the model does NOT give PD: a faster prefill
in DeepEP's normal mode or a faster decode step in low-latency mode than a colocated gang's (the perf model prices
both sides' steps as a colocated gang's); so the table measures what the split itself does: no prompt ever pauses
a decode batch, at the price of two pools to keep sized and a prefill side without MTP.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios
from mimo_operator.autoscaling.pd_simulator import PoolsResult, StaticPools, simulate_pools
from mimo_operator.autoscaling.pools import DECODE, PREFILL
from mimo_operator.autoscaling.simulator import PolicyResult
from mimo_operator.commands.simulate_autoscaling import (
    DEFAULT_MANIFEST,
    PoolsComparison,
    colocated_manifest,
    comparison_for,
    pools_comparison_for,
)

PD_MANIFEST: dict[str, Any] = {
    **DEFAULT_MANIFEST,
    "metadata": {"name": "mimo-v25-pro-pd"},
    "spec": {
        **DEFAULT_MANIFEST["spec"],
        "network": {"mode": "hostNetwork", "ibDevices": [f"mlx5_{i}" for i in range(8)]},
        "disaggregation": {
            "prefill": {"nodesPerGang": 2, "minReplicas": 1, "maxReplicas": 16},
            "decode": {"nodesPerGang": 2, "minReplicas": 1, "maxReplicas": 16},
        },
    },
}
# Enough scenarios to see where PD pays and where it does not, within a few CPU minutes on two cores.
QUICK = ("flash-6x-2min", "on-off-5/10-20k", "long-context", "heavy-tail-out")


def best_split(pools: PoolsComparison, trace: Any, gangs: int) -> tuple[tuple[int, int], PoolsResult]:
    """The fixed split of `gangs` with the best (TTFT, ITL) attainment near the split by work (hill climbing)."""

    def score(result: PoolsResult) -> tuple[float, float]:
        return (round(result.fleet.ttft_attainment, 4), round(result.fleet.itl_attainment, 4))

    def run_split(p: int) -> PoolsResult:
        fleet = replace(pools.fleet, prefill=replace(pools.fleet.prefill, initial_replicas=p),
                        decode=replace(pools.fleet.decode, initial_replicas=gangs - p))
        return simulate_pools(trace, fleet, StaticPools(p, gangs - p))

    p = pools.split(trace, gangs)[0]
    tried = {p: run_split(p)}
    while True:
        here = tried[p]
        moves = [q for q in (p - 1, p + 1) if 1 <= q <= gangs - 1]
        for q in moves:
            if q not in tried:
                tried[q] = run_split(q)
        best = max(moves, key=lambda q: score(tried[q]), default=p)
        if not moves or score(tried[best]) <= score(here):
            return (p, gangs - p), here
        p = best


def run(scenario: scenarios.Scenario, seed: int, work_split: bool = False) -> dict[str, Any]:
    trace, suite = scenarios.build(scenario, seed)
    _, _, colocated = comparison_for(colocated_manifest(PD_MANIFEST), trace)
    colocated = replace(colocated, fleet=replace(colocated.fleet, router=suite.fleet.router))
    pools = pools_comparison_for(PD_MANIFEST)
    pools.fleet = replace(pools.fleet, prefill=replace(pools.fleet.prefill, router=suite.fleet.router))
    oracle = colocated.oracle(trace)
    gangs = max(oracle.counts)
    start = max(colocated.policy.min_replicas, min(colocated.policy.max_replicas, oracle.at(0.0)))
    colo = colocated.run(trace, ["mimo", "static-peak"])
    if work_split:
        pd = pools.run(trace, ["mimo-pd", "static-pd"], gangs=gangs, start=start)
        split = pools.split(trace, gangs)
    else:
        pd = pools.run(trace, ["mimo-pd"], gangs=gangs, start=start)
        split, pd["static-pd"] = best_split(pools, trace, gangs)
    return {
        "requests": len(trace.requests),
        "hours": round(trace.span_seconds / 3600, 3),
        "staticGangs": gangs,
        "staticSplit": {PREFILL: split[0], DECODE: split[1]},
        "results": {
            "mimo": colo["mimo"],
            "mimo-pd": pd["mimo-pd"].fleet,
            "static-peak": colo["static-peak"],
            "static-pd": pd["static-pd"].fleet,
        },
        "pools": {name: {role: r.summary() for role, r in result.pools.items()} for name, result in pd.items()},
    }


HEADER = (
    f"{'scenario':<17}{'colocated ours (TTFT ITL GPU-h)':>33}{'PD ours (TTFT ITL GPU-h ×colo)':>38}"
    f"{'N':>4}{'static colo (TTFT ITL)':>24}{'static PD p+d (TTFT ITL)':>28}"
)


def _cell(r: PolicyResult) -> str:
    return f"{r.ttft_attainment:>7.1%} {r.itl_attainment:>6.1%}"


def row(key: str, figures: dict[str, Any]) -> str:
    res: dict[str, PolicyResult] = figures["results"]
    colo, pd = res["mimo"], res["mimo-pd"]
    split = figures["staticSplit"]
    return (
        f"{key:<17}{_cell(colo):>25}{colo.gpu_hours:>8.1f}{_cell(pd):>24}{pd.gpu_hours:>8.1f}"
        f"{pd.gpu_hours / colo.gpu_hours:>6.2f}{figures['staticGangs']:>4}{_cell(res['static-peak']):>24}"
        f"{split[PREFILL]:>9}+{split[DECODE]:<3}{_cell(res['static-pd']):>16}"
    )


def markdown(table: Sequence[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        "| scenario | colocated, ours: TTFT ok / ITL ok / GPU-h | PD per pool, ours: TTFT ok / ITL ok / GPU-h "
        "(÷ colocated) | same GPUs, static: N gangs | colocated: TTFT ok / ITL ok | PD (prefill + decode): "
        "TTFT ok / ITL ok |",
        "|---|---|---|---|---|---|",
    ]
    for key, f in table:
        res = f["results"]
        colo, pd, sc, sp = res["mimo"], res["mimo-pd"], res["static-peak"], res["static-pd"]
        split = f["staticSplit"]
        lines.append(
            f"| {key} | {colo.ttft_attainment:.1%} / {colo.itl_attainment:.1%} / {colo.gpu_hours:.1f} | "
            f"{pd.ttft_attainment:.1%} / {pd.itl_attainment:.1%} / {pd.gpu_hours:.1f} "
            f"({pd.gpu_hours / colo.gpu_hours:.2f}) | {f['staticGangs']} | "
            f"{sc.ttft_attainment:.1%} / {sc.itl_attainment:.1%} | {split[PREFILL]} + {split[DECODE]}: "
            f"{sp.ttft_attainment:.1%} / {sp.itl_attainment:.1%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--seed", type=int, default=scenarios.TABLE_SEED)
    parser.add_argument("--only", action="append", help="a scenario key (repeatable)")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--work-split", action="store_true",
                        help="static PD split by the trace's prefill and decode work, not the best split near it")
    args = parser.parse_args(argv)
    keys = args.only or (list(QUICK) if args.quick else [s.key for s in scenarios.SCENARIOS])
    chosen = [s for s in scenarios.SCENARIOS if s.key in keys]
    if not chosen:
        print(f"no scenario {keys}; choose from {', '.join(s.key for s in scenarios.SCENARIOS)}", file=sys.stderr)
        return 2
    print(f"seed {args.seed}; MiMo-V2.5-Pro fp8, gangs of 2×8 H200, TTFT ≤ 2 s, mean ITL ≤ 0.1 s; "
          "N: the colocated oracle's peak")
    print(HEADER, flush=True)
    clock = time.process_time()
    table = []
    raw: dict[str, Any] = {}
    for scenario in chosen:
        figures = run(scenario, args.seed, args.work_split)
        print(row(scenario.key, figures), flush=True)
        table.append((scenario.key, figures))
        raw[scenario.key] = {
            **{k: v for k, v in figures.items() if k != "results"},
            "results": {name: r.summary() for name, r in figures["results"].items()},
        }
    print(f"{time.process_time() - clock:.0f} CPU s")
    if args.markdown:
        print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
