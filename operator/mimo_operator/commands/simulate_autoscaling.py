"""``mimoctl simulate autoscaling --trace FILE``: the autoscaler against a request trace, in virtual time.

Every policy (ours, ``mimo``, and the baselines ``static-peak``, ``hpa-utilisation``, ``keda-queue`` and
the clairvoyant ``oracle``) runs the same trace against the same fleet: replicas of the manifest's plan
(``-f``; without one, MiMo-V2.5-Pro fp8 on 8×H200 nodes with a node-local weights cache), each with the
plan's performance model, gangs that take the plan's start-up time before they serve. The output is
what users and the bill would see: the share of requests within the TTFT and ITL SLOs, GPU-hours
(start-up and drain included) and scale events.

The trace is reshaped to a fleet's scale: ``--speedup`` compresses time, and ``--copies`` overlays
shifted copies (``--copy-offset`` apart). Without ``--copies``, as many copies as make the load's peak
need ``--peak-replicas`` gangs.

Exit codes: 0 done; 1 the spec is invalid or its plan refused; 2 unreadable input or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mimo_operator.autoscaling.baselines import POLICY_NAMES, Comparison, copies_for_peak
from mimo_operator.autoscaling.config import SCRAPE_INTERVAL_SECONDS, history_seconds, policy_config
from mimo_operator.autoscaling.simulator import FleetConfig, PolicyResult, Router
from mimo_operator.autoscaling.trace import Trace, TraceError, load_trace, reshape
from mimo_operator.errors import SpecError
from mimo_operator.perf import performance_of
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import DeploymentSpec, parse_spec

__all__ = [
    "DEFAULT_ITL_SLO_SECONDS",
    "DEFAULT_MANIFEST",
    "DEFAULT_TTFT_SLO_SECONDS",
    "Setup",
    "comparison_for",
    "register",
    "render_table",
    "run",
    "with_overrides",
]

# The fleet without -f: MiMo-V2.5-Pro fp8 on 8×H200 nodes, weights and DeepGEMM kernels cached on the
# nodes (autoscaling a 1 TB model without a cache means a ≈30-minute cold start per gang).
DEFAULT_MANIFEST: Mapping[str, Any] = {
    "apiVersion": "serving.mimo-operator.io/v1alpha1",
    "kind": "MiMoDeployment",
    "metadata": {"name": "mimo-v25-pro"},
    "spec": {
        "model": {"variant": "MiMo-V2.5-Pro", "precision": "fp8", "cache": {"mode": "node-local"}},
        "hardware": {"gpuType": "H200-141GB"},
        # The stabilisation window is about one start-up: keeping a gang through a shorter lull costs
        # less than starting it again (docs/autoscaling.md, "Choosing targets").
        # Interactive code assistance: the first token within 2 s (the policy holds to it too).
        "autoscaling": {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 32,
            "scaleDownWindowSeconds": 300,
            "ttftSloSeconds": 2.0,
        },
    },
}
# What attainment is measured against when the manifest sets no ttftSloSeconds (the policy then has none).
DEFAULT_TTFT_SLO_SECONDS = 2.0
# At least 10 tokens/s per request (measured only: the policy's decode budget is the operator's).
DEFAULT_ITL_SLO_SECONDS = 0.1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "autoscaling",
        help="run the autoscaler and its baselines against a request trace in virtual time",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--trace", required=True, help="CSV with TIMESTAMP, ContextTokens, GeneratedTokens")
    parser.add_argument(
        "--policy", default="all", help=f"one of {', '.join(POLICY_NAMES)}, a comma-separated list, or all"
    )
    parser.add_argument("--speedup", type=float, default=1.0, help="replay the trace this much faster (default 1)")
    parser.add_argument("--copies", type=int, help="overlay this many shifted copies of the trace")
    parser.add_argument("--copy-offset", type=float, default=60.0, help="seconds between two copies (default 60)")
    parser.add_argument(
        "--peak-replicas",
        type=int,
        default=8,
        help="without --copies: overlay as many copies as make the peak need this many gangs (default 8)",
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.add_argument("--plot", metavar="FILE.png", help="draw load, replicas and TTFT over time per policy")
    parser.add_argument("-f", "--filename", help="a MiMoDeployment manifest: its plan sets the fleet")
    parser.add_argument("--startup-seconds", type=float, help="a gang's start-up (default: the plan's estimate)")
    parser.add_argument(
        "--ttft-slo",
        type=float,
        help="seconds; sets the manifest's autoscaling.ttftSloSeconds (default: the manifest's, else 2 measured only)",
    )
    parser.add_argument(
        "--itl-slo",
        type=float,
        default=DEFAULT_ITL_SLO_SECONDS,
        help="seconds, measured only (default 0.1)",
    )
    parser.add_argument("--min-replicas", type=int, help="sets the manifest's autoscaling.minReplicas")
    parser.add_argument("--max-replicas", type=int, help="sets the manifest's autoscaling.maxReplicas")
    parser.add_argument("--router", choices=Router.ALL, default=Router.LEAST_OUTSTANDING)
    parser.add_argument(
        "--decision-interval",
        type=float,
        default=SCRAPE_INTERVAL_SECONDS,
        help=f"seconds between scrapes and decisions (default {SCRAPE_INTERVAL_SECONDS:g}, the operator's)",
    )
    parser.add_argument(
        "--hpa-metric",
        choices=["token_usage", "running_requests"],
        default="token_usage",
        help="the hpa-utilisation baseline's per-gang metric (default token_usage, i.e. KV-cache use)",
    )
    parser.add_argument("--hpa-target", type=float, help="its target (default: the manifest's KV target)")
    parser.add_argument("--keda-queue-target", type=float, help="queued requests per gang (default: the manifest's)")
    parser.set_defaults(func=run)


class Setup:
    """What a run is made of: the plan, the reshaped trace and the comparison (fleet + policies)."""

    def __init__(self, plan: Plan, spec: DeploymentSpec, trace: Trace, comparison: Comparison, copies: int):
        self.plan = plan
        self.spec = spec
        self.trace = trace
        self.comparison = comparison
        self.copies = copies

    def describe(self, args: argparse.Namespace) -> dict[str, Any]:
        fleet = self.comparison.fleet
        config = self.comparison.policy
        requests = self.trace.requests
        return {
            "model": f"{self.plan.variant} {self.plan.precision}",
            "gpu": self.plan.gpu.name,
            "nodesPerReplica": self.plan.nodes_per_replica,
            "gpusPerReplica": self.plan.gpus_per_replica,
            "startupSeconds": round(fleet.startup_seconds, 1),
            "ttftSloSeconds": fleet.ttft_slo_seconds,
            "itlSloSeconds": fleet.itl_slo_seconds,
            "minReplicas": config.min_replicas,
            "maxReplicas": config.max_replicas,
            "router": fleet.router,
            "decisionIntervalSeconds": fleet.decision_interval_seconds,
            "trace": self.trace.name,
            "speedup": args.speedup,
            "copies": self.copies,
            "copyOffsetSeconds": args.copy_offset,
            "requests": len(requests),
            "traceHours": round(self.trace.span_seconds / 3600, 3),
            "replicaPrefillTokensPerSecond": round(config.capacity.prefill_tokens_per_second),
            "replicaDecodeTokensPerSecond": round(config.capacity.decode_tokens_per_second),
            "hpa": f"{self.comparison.hpa_metric} target {self.comparison.hpa_target:g}",
            "kedaQueueTarget": self.comparison.keda_queue_target,
        }


def with_overrides(
    manifest: Mapping[str, Any],
    *,
    ttft_slo_seconds: float | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> dict[str, Any]:
    """The manifest with what-if values written into its autoscaling block (the spec stays the one input)."""
    out = dict(manifest)
    spec = dict(out.get("spec") or {})
    autoscaling = dict(spec.get("autoscaling") or {})
    for key, value in (
        ("ttftSloSeconds", ttft_slo_seconds),
        ("minReplicas", min_replicas),
        ("maxReplicas", max_replicas),
    ):
        if value is not None:
            autoscaling[key] = value
    spec["autoscaling"] = autoscaling
    out["spec"] = spec
    return out


def comparison_for(
    manifest: Mapping[str, Any],
    trace: Trace,
    *,
    ttft_slo_seconds: float | None = None,
    itl_slo_seconds: float = DEFAULT_ITL_SLO_SECONDS,
    startup_seconds: float | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    router: str = Router.LEAST_OUTSTANDING,
    decision_interval_seconds: float = SCRAPE_INTERVAL_SECONDS,
    hpa_metric: str = "token_usage",
    hpa_target: float | None = None,
    keda_queue_target: float | None = None,
) -> tuple[Plan, DeploymentSpec, Comparison]:
    """The fleet and policies for a manifest and a (reshaped) trace. Raises SpecError.

    The policy's configuration is the operator's (`autoscaling.config.policy_config` of the parsed
    spec); `ttft_slo_seconds`, `min_replicas` and `max_replicas` are written into the manifest first.
    """
    spec = parse_spec(
        with_overrides(
            manifest, ttft_slo_seconds=ttft_slo_seconds, min_replicas=min_replicas, max_replicas=max_replicas
        )
    )
    plan = plan_deployment(spec)
    startup = plan.startup.expected_seconds if startup_seconds is None else startup_seconds
    config = policy_config(spec, plan, startup_seconds=startup, scrape_interval_seconds=decision_interval_seconds)
    measured_slo = spec.autoscaling.ttft_slo_seconds
    fleet = FleetConfig(
        performance=performance_of(plan),
        startup_seconds=startup,
        ttft_slo_seconds=DEFAULT_TTFT_SLO_SECONDS if measured_slo is None else measured_slo,
        itl_slo_seconds=itl_slo_seconds,
        decision_interval_seconds=decision_interval_seconds,
        history_seconds=history_seconds(config),
        drain_timeout_seconds=float(spec.autoscaling.drain_timeout_seconds),
        router=router,
    )
    comparison = Comparison(
        fleet=fleet,
        policy=config,
        hpa_metric=hpa_metric,
        hpa_target=(
            hpa_target
            if hpa_target is not None
            else spec.autoscaling.target_kv_cache_usage
            if hpa_metric == "token_usage"
            else 0.5 * plan.max_running_requests
        ),
        keda_queue_target=(
            keda_queue_target if keda_queue_target is not None else float(max(spec.autoscaling.target_queue_length, 1))
        ),
    )
    return plan, spec, comparison


def run(args: argparse.Namespace) -> int:
    names = list(POLICY_NAMES) if args.policy == "all" else [n.strip() for n in args.policy.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICY_NAMES]
    problems = []
    if unknown:
        problems.append(f"unknown policy {', '.join(unknown)} (choose from {', '.join(POLICY_NAMES)}, or all)")
    for flag in ("speedup", "ttft_slo", "itl_slo", "decision_interval"):
        value = getattr(args, flag)
        if value is not None and not (value > 0 and math.isfinite(value)):
            problems.append(f"--{flag.replace('_', '-')} must be a positive number")
    if args.copies is not None and args.copies < 1:
        problems.append("--copies must be at least 1")
    if args.peak_replicas < 1:
        problems.append("--peak-replicas must be at least 1")
    if args.startup_seconds is not None and args.startup_seconds < 0:
        problems.append("--startup-seconds must not be negative")
    if problems:
        for problem in problems:
            print(f"mimoctl simulate autoscaling: {problem}", file=sys.stderr)
        return 2
    try:
        base = load_trace(args.trace)
        manifest = DEFAULT_MANIFEST if args.filename is None else _load_manifest(args.filename)
    except (OSError, ValueError, TraceError) as error:
        print(f"mimoctl simulate autoscaling: {error}", file=sys.stderr)
        return 2
    try:
        setup = _setup(args, base, manifest)
    except SpecError as error:
        print(f"mimoctl simulate autoscaling: refused: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"mimoctl simulate autoscaling: {error}", file=sys.stderr)
        return 2
    defaults = setup.describe(args)
    if args.output == "json":
        print(_defaults_text(defaults), file=sys.stderr)
    else:
        print(_defaults_text(defaults))
        print()
    results = setup.comparison.run(setup.trace, names)
    if args.output == "json":
        data = {
            "policies": {name: result.summary() for name, result in results.items()},
            "settings": defaults,
        }
        oracle = results.get("oracle")
        if oracle is not None and oracle.gpu_hours > 0:
            for name, result in results.items():
                data["policies"][name]["gpuHoursVsOracle"] = round(result.gpu_hours / oracle.gpu_hours, 4)
        print(json.dumps(data, indent=2))
    else:
        print(render_table(results))
    if args.plot:
        try:
            _plot(results, setup, Path(args.plot))
        except ImportError:
            print(
                "mimoctl simulate autoscaling: --plot needs matplotlib: pip install 'mimo-operator[plot]'",
                file=sys.stderr,
            )
            return 2
    return 0


def _setup(args: argparse.Namespace, base: Trace, manifest: Mapping[str, Any]) -> Setup:
    def build(trace: Trace) -> tuple[Plan, DeploymentSpec, Comparison]:
        return comparison_for(
            manifest,
            trace,
            ttft_slo_seconds=args.ttft_slo,
            itl_slo_seconds=args.itl_slo,
            startup_seconds=args.startup_seconds,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            router=args.router,
            decision_interval_seconds=args.decision_interval,
            hpa_metric=args.hpa_metric,
            hpa_target=args.hpa_target,
            keda_queue_target=args.keda_queue_target,
        )

    copies = args.copies
    if copies is None:
        _, _, sizing = build(base)
        # Size the fleet without the manifest's maxReplicas cap, so the cap shows in the results.
        sizing = replace(sizing, policy=replace(sizing.policy, max_replicas=10_000))
        copies = copies_for_peak(
            base,
            sizing,
            peak_replicas=args.peak_replicas,
            speedup=args.speedup,
            copy_offset_seconds=args.copy_offset,
        )
    trace = reshape(base, speedup=args.speedup, copies=copies, copy_offset_seconds=args.copy_offset)
    plan, spec, comparison = build(trace)
    return Setup(plan, spec, trace, comparison, copies)


def _load_manifest(filename: str) -> Mapping[str, Any]:
    # The same reading rules as `mimoctl plan -f` (one MiMoDeployment per file, - for stdin).
    from mimo_operator.commands.plan import load_manifest

    return load_manifest(filename)


def _defaults_text(defaults: Mapping[str, Any]) -> str:
    return (
        f"fleet: {defaults['model']} on {defaults['gpu']}, {defaults['nodesPerReplica']} nodes "
        f"({defaults['gpusPerReplica']} GPUs) per replica, start-up {defaults['startupSeconds']:g} s, "
        f"replicas {defaults['minReplicas']}–{defaults['maxReplicas']}, router {defaults['router']}, "
        f"decisions every {defaults['decisionIntervalSeconds']:g} s\n"
        f"SLOs: TTFT ≤ {defaults['ttftSloSeconds']:g} s, ITL ≤ {defaults['itlSloSeconds']:g} s "
        f"(mean per request)\n"
        f"trace: {defaults['trace']}: {defaults['requests']:,} requests over {defaults['traceHours']:g} h "
        f"({defaults['copies']} copies, speed-up {defaults['speedup']:g})\n"
        f"replica capacity (plan's performance model): {defaults['replicaPrefillTokensPerSecond']:,} prefill "
        f"tok/s, {defaults['replicaDecodeTokensPerSecond']:,} decode tok/s within the ITL SLO; "
        f"hpa-utilisation on {defaults['hpa']}, keda-queue target {defaults['kedaQueueTarget']:g}/gang"
    )


def render_table(results: Mapping[str, PolicyResult]) -> str:
    oracle = results.get("oracle")
    header = (
        f"{'POLICY':<17}{'TTFT OK':>9}{'ITL OK':>9}{'GPU-HOURS':>11}{'×ORACLE':>9}{'SCALE EVENTS':>14}"
        f"{'PEAK':>6}{'FAILED':>8}{'TTFT P99':>10}{'CPU S':>7}"
    )
    lines = [header]
    for name, r in results.items():
        ratio = f"{r.gpu_hours / oracle.gpu_hours:.3f}" if oracle is not None and oracle.gpu_hours > 0 else "-"
        lines.append(
            f"{name:<17}{r.ttft_attainment:>9.2%}{r.itl_attainment:>9.2%}{r.gpu_hours:>11.1f}{ratio:>9}"
            f"{r.scale_events:>14}{r.peak_replicas:>6}{r.failed_requests:>8}{r.ttft_p99_seconds:>9.2f}s"
            f"{r.cpu_seconds:>7.1f}"
        )
    return "\n".join(lines)


def _plot(results: Mapping[str, PolicyResult], setup: Setup, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (load, replicas, latency) = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    first = next(iter(results.values()))
    minutes = [p.at / 60 for p in first.timeline]
    load.plot(minutes, [p.prompt_tokens_per_second / 1000 for p in first.timeline], color="black", lw=0.8)
    load.set_ylabel("prompt tokens/s (k)")
    load.set_title(f"{setup.trace.name} on {setup.plan.variant} × {setup.plan.gpus_per_replica} GPUs per replica")
    for name, result in results.items():
        times = [p.at / 60 for p in result.timeline]
        replicas.step(times, [p.ready + p.starting for p in result.timeline], where="post", label=f"{name}", lw=1.2)
        latency.plot(
            times,
            [p.ttft_p95_seconds if p.ttft_p95_seconds is not None else math.nan for p in result.timeline],
            lw=0.8,
            label=name,
        )
    replicas.set_ylabel("gangs (ready + starting)")
    replicas.legend(loc="upper right", fontsize="small")
    latency.set_yscale("log")
    latency.axhline(setup.comparison.fleet.ttft_slo_seconds, color="grey", ls="--", lw=0.8)
    latency.set_ylabel("TTFT p95 per interval (s)")
    latency.set_xlabel("minutes")
    # A policy that falls behind keeps draining its backlog long after the trace ends; the trace's
    # span is what the policies are compared over.
    latency.set_xlim(0, setup.trace.span_seconds / 60)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
