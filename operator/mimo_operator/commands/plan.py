"""``mimoctl plan -f MANIFEST``: the planner's answer for a MiMoDeployment, explained or as data.

Exit codes: 0 a plan; 1 the spec is invalid or the plan is refused (the reason on stderr); 2 the manifest
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mimo_operator.errors import SpecError
from mimo_operator.perf import performance_of
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import DisaggregatedPlan, plan_disaggregated
from mimo_operator.spec import parse_spec

__all__ = ["load_manifest", "register", "render_table", "run"]

# The context the table's throughput estimates assume (a typical chat request with some history).
ESTIMATE_CONTEXT_TOKENS = 4096


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan", help="show how a MiMoDeployment would be served: nodes, parallelism, memory, KV cache, argv"
    )
    parser.add_argument("-f", "--filename", required=True,
                        help="the MiMoDeployment manifest (YAML or JSON; - reads standard input)")
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table",
                        help="table explains each decision; json and yaml are for scripts (default: table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.filename)
    except (OSError, ValueError) as error:
        print(f"mimoctl plan: {error}", file=sys.stderr)
        return 2
    try:
        spec = parse_spec(manifest)
        if spec.disaggregation is not None:  # the pools replace the colocated replica's node count
            return _print_disaggregated(plan_disaggregated(spec), args.output)
        plan = plan_deployment(spec)
    except SpecError as error:
        print(f"mimoctl plan: refused: {error}", file=sys.stderr)
        return 1
    if args.output == "table":
        print(render_table(plan))
    else:
        data = plan_data(plan)
        if args.output == "json":
            print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000), end="")
    return 0


def load_manifest(filename: str) -> Mapping[str, Any]:
    """The one MiMoDeployment document in a YAML/JSON file (other kinds in the file are skipped)."""
    text = sys.stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise ValueError(f"{filename}: not YAML: {error}") from None
    found = [d for d in documents if isinstance(d, Mapping) and d.get("kind", "MiMoDeployment") == "MiMoDeployment"]
    if len(found) != 1:
        raise ValueError(f"{filename}: expected one MiMoDeployment, found {len(found)}")
    return found[0]


def plan_data(plan: Plan) -> dict[str, Any]:
    data = plan.to_dict()
    perf = performance_of(plan)
    full = min(plan.max_running_requests, plan.max_concurrent_sequences(ESTIMATE_CONTEXT_TOKENS))
    data["performance"] = {
        "contextTokens": ESTIMATE_CONTEXT_TOKENS,
        "decodeTokensPerSecondAt1": round(perf.decode_tokens_per_second(1, ESTIMATE_CONTEXT_TOKENS), 1),
        "concurrency": full,
        "decodeTokensPerSecondAtConcurrency": round(perf.decode_tokens_per_second(full, ESTIMATE_CONTEXT_TOKENS), 1),
        "prefillSecondsFor32k": round(perf.prefill_seconds(32768), 3),
    }
    return data


def render_table(plan: Plan) -> str:
    """What was decided and why, for a person."""
    lines = [
        f"{plan.variant} {plan.precision} on {plan.gpu.name}: {plan.nodes_per_replica} "
        f"node{'s' if plan.nodes_per_replica > 1 else ''} × {plan.gpus_per_node} GPUs per replica, "
        f"engine {plan.engine}",
        "",
    ]
    topic_width = max(len(d.topic) for d in plan.decisions) + 2
    choice_width = max(len(d.choice) for d in plan.decisions) + 2
    lines.append(f"{'DECISION':<{topic_width}}{'CHOICE':<{choice_width}}WHY")
    indent = " " * (topic_width + choice_width)
    for d in plan.decisions:
        why = textwrap.wrap(d.reason, width=max(40, 120 - len(indent))) or [""]
        lines.append(f"{d.topic:<{topic_width}}{d.choice:<{choice_width}}{why[0]}")
        lines += [indent + more for more in why[1:]]
    data = plan_data(plan)["performance"]
    lines += [
        "",
        f"ESTIMATE (context {data['contextTokens']:,} tokens): {data['decodeTokensPerSecondAt1']:,.0f} output tok/s "
        f"for one request, {data['decodeTokensPerSecondAtConcurrency']:,.0f} at {data['concurrency']} concurrent; "
        f"a 32K-token prompt prefills in {data['prefillSecondsFor32k']:.2f} s",
    ]
    if plan.warnings:
        lines += ["", "WARNINGS"] + [f"  - {w}" for w in plan.warnings]
    lines += ["", f"LAUNCH (node rank 0 of {plan.nodes_per_replica}; other ranks differ only in --node-rank)"]
    lines.append("  " + " ".join(_quote(a) for a in plan.argv(0, "<node-0-address>")))
    lines += ["", "ENVIRONMENT (every rank)"] + [f"  {k}={v}" for k, v in plan.env.items()]
    return "\n".join(lines)


def _print_disaggregated(pd: DisaggregatedPlan, output: str) -> int:
    """Both sides of a PD deployment: the hand-over first, then each side's own table."""
    if output != "table":
        data = pd.to_dict()
        for side in ("prefill", "decode"):
            data[side]["plan"] = plan_data(getattr(pd, side).plan)
        print(json.dumps(data, indent=2, ensure_ascii=False) if output == "json"
              else yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000), end="\n" if output == "json"
              else "")
        return 0
    lines = [f"PREFILL/DECODE: {pd.prefill.replicas} prefill gang(s) of {pd.prefill.plan.nodes_per_replica} node(s), "
             f"{pd.decode.replicas} decode gang(s) of {pd.decode.plan.nodes_per_replica} node(s), "
             f"KV over {pd.transfer_backend}", ""]
    width = max(len(d.topic) for d in pd.decisions) + 2
    lines += [f"{d.topic:<{width}}{d.choice}" + "".join(f"\n{' ' * width}{w}" for w in textwrap.wrap(d.reason, 100))
              for d in pd.decisions]
    prefill_seconds = performance_of(pd.prefill.plan).prefill_seconds(pd.transfer.prompt_tokens)
    lines += ["", f"A {pd.transfer.prompt_tokens:,}-token prompt prefills in ≈{prefill_seconds:.3f} s on one prefill "
                  f"gang; its KV crosses to decode in ≈{pd.transfer.seconds * 1e3:.2f} ms"]
    if pd.warnings:
        lines += ["", "WARNINGS"] + [f"  - {w}" for w in pd.warnings]
    for pool in (pd.prefill, pd.decode):
        lines += ["", f"=== {pool.role.upper()} SIDE ===", render_table(pool.plan)]
    print("\n".join(lines))
    return 0


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " {}\"'$") else arg
