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

A manifest with ``spec.disaggregation`` runs a prefill/decode fleet instead: a prefill pool and a decode pool of
gangs, each of its side's plan (``planner_pd``), each request prefilled on one, its KV moved in the planner's
transfer time, decoded on the other (``autoscaling.pd_simulator``). ``mimo-pd`` sizes each pool on its own
signals (``autoscaling.pools.decide_pools``, what the operator runs); ``static-pd`` holds the colocated
oracle's peak in gangs, split between the pools by the trace's prefill and decode work. ``--compare-colocated``
adds the same deployment without ``spec.disaggregation`` on the same GPUs (gangs of the same size, min and max
replicas the pools' sums): ours (``mimo``), ``static-peak`` and the ``oracle``.

Exit codes: 0 done; 1 the spec is invalid or its plan refused; 2 unreadable input or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mimo_operator.autoscaling.baselines import POLICY_NAMES, Comparison, copies_for_peak
from mimo_operator.autoscaling.config import SCRAPE_INTERVAL_SECONDS, history_seconds, policy_config
from mimo_operator.autoscaling.pd_simulator import PoolsFleet, PoolsResult, StaticPools, simulate_pools
from mimo_operator.autoscaling.pools import DECODE, PREFILL, PoolsConfig, PoolsPolicy, pool_configs
from mimo_operator.autoscaling.simulator import FleetConfig, PolicyResult, Router
from mimo_operator.autoscaling.trace import Trace, TraceError, load_trace, reshape
from mimo_operator.errors import SpecError
from mimo_operator.perf import performance_of
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import DisaggregatedPlan, kv_transfer, plan_disaggregated
from mimo_operator.spec import DeploymentSpec, parse_spec

__all__ = [
    "DEFAULT_ITL_SLO_SECONDS",
    "DEFAULT_MANIFEST",
    "DEFAULT_TTFT_SLO_SECONDS",
    "PD_POLICY_NAMES",
    "PoolsComparison",
    "Setup",
    "colocated_manifest",
    "comparison_for",
    "pools_comparison_for",
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
# The autoscalers of a PD fleet: ours per pool, and a fixed split at the colocated oracle's peak.
PD_POLICY_NAMES = ("mimo-pd", "static-pd")


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
    parser.add_argument(
        "--compare-colocated",
        action="store_true",
        help="with a PD manifest: also run the same deployment colocated on the same GPUs (mimo, static-peak, oracle)",
    )
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
    problems = []
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
    try:
        manifest = DEFAULT_MANIFEST if args.filename is None else _load_manifest(args.filename)
    except (OSError, ValueError) as error:
        print(f"mimoctl simulate autoscaling: {error}", file=sys.stderr)
        return 2
    pd = _is_pd(manifest)
    known = PD_POLICY_NAMES if pd else POLICY_NAMES
    names = list(known) if args.policy == "all" else [n.strip() for n in args.policy.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        problems.append(f"unknown policy {', '.join(unknown)} (choose from {', '.join(known)}, or all"
                        + (" for a PD manifest)" if pd else ")"))
    if args.compare_colocated and not pd:
        problems.append("--compare-colocated needs a manifest with spec.disaggregation (-f)")
    if problems:
        for problem in problems:
            print(f"mimoctl simulate autoscaling: {problem}", file=sys.stderr)
        return 2
    try:
        base = load_trace(args.trace)
    except (OSError, ValueError, TraceError) as error:
        print(f"mimoctl simulate autoscaling: {error}", file=sys.stderr)
        return 2
    if pd:
        return _run_pools(args, base, manifest, names)
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


# --------------------------------------------------------------------------- prefill/decode fleets


def _is_pd(manifest: Mapping[str, Any]) -> bool:
    spec = manifest.get("spec")
    return isinstance(spec, Mapping) and spec.get("disaggregation") is not None


def colocated_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The PD manifest's deployment without ``spec.disaggregation``, on the same GPUs: gangs of the pools' size
    (they must agree), and minReplicas / maxReplicas the sums of the pools' (each unset one: the autoscaling
    block's). Raises ValueError when the pools' gangs differ in size."""
    spec = dict(manifest.get("spec") or {})
    pd = dict(spec.pop("disaggregation"))
    prefill, decode = dict(pd.get("prefill") or {}), dict(pd.get("decode") or {})
    nodes = {prefill.get("nodesPerGang"), decode.get("nodesPerGang")}
    if len(nodes) != 1:
        raise ValueError("--compare-colocated needs prefill and decode gangs of the same nodesPerGang")
    autoscaling = dict(spec.get("autoscaling") or {})
    for key, default in (("minReplicas", 1), ("maxReplicas", 4)):
        fallback = int(autoscaling.get(key, default))
        autoscaling[key] = int(prefill.get(key, fallback)) + int(decode.get(key, fallback))
    spec["autoscaling"] = autoscaling
    (size,) = nodes
    if size is not None:
        spec["parallelism"] = {**dict(spec.get("parallelism") or {}), "nodesPerReplica": size}
    spec["replicas"] = prefill.get("replicas", 1) + decode.get("replicas", 1)
    return {**dict(manifest), "spec": spec}


class PoolsComparison:
    """A PD fleet and its pools' autoscalers for one manifest: what `mimoctl simulate autoscaling` runs on it."""

    def __init__(self, spec: DeploymentSpec, pd: DisaggregatedPlan, config: PoolsConfig, fleet: PoolsFleet) -> None:
        self.spec = spec
        self.pd = pd
        self.config = config
        self.fleet = fleet

    def split(self, trace: Trace, gangs: int) -> tuple[int, int]:
        """`gangs` shared between the pools in proportion to the trace's prefill and decode work (priced by
        each pool's capacity); at least one each."""
        prefill = self.config.policies[PREFILL].capacity.prefill_tokens_per_second
        decode = self.config.policies[DECODE].capacity.decode_tokens_per_second
        work_p = sum(r.context_tokens for r in trace.requests) / prefill
        work_d = sum(r.generated_tokens for r in trace.requests) / decode
        share = work_p / (work_p + work_d) if work_p + work_d > 0 else 0.5
        p = min(max(1, round(gangs * share)), max(1, gangs - 1))
        return p, max(1, gangs - p)

    def run(self, trace: Trace, names: Sequence[str], *, gangs: int, start: int) -> dict[str, PoolsResult]:
        """Each named autoscaler on `trace`: `static-pd` holds `gangs` split by work, `mimo-pd` starts from
        `start` split the same way (at least each pool's minReplicas)."""
        results: dict[str, PoolsResult] = {}
        for name in names:
            if name == "static-pd":
                p, d = self.split(trace, gangs)
                autoscaler: StaticPools | PoolsPolicy = StaticPools(p, d)
            else:
                p, d = self.split(trace, start)
                policies = self.config.policies
                p = min(max(p, policies[PREFILL].min_replicas), policies[PREFILL].max_replicas)
                d = min(max(d, policies[DECODE].min_replicas), policies[DECODE].max_replicas)
                autoscaler = PoolsPolicy(self.config)
            fleet = replace(self.fleet, prefill=replace(self.fleet.prefill, initial_replicas=p),
                            decode=replace(self.fleet.decode, initial_replicas=d))
            results[name] = simulate_pools(trace, fleet, autoscaler)
        return results


def pools_comparison_for(
    manifest: Mapping[str, Any],
    *,
    ttft_slo_seconds: float | None = None,
    itl_slo_seconds: float = DEFAULT_ITL_SLO_SECONDS,
    startup_seconds: float | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    router: str = Router.LEAST_OUTSTANDING,
    decision_interval_seconds: float = SCRAPE_INTERVAL_SECONDS,
) -> PoolsComparison:
    """The PD fleet of a manifest with ``spec.disaggregation``. Raises SpecError.

    The pools' configuration is the operator's (`autoscaling.pools.pool_configs` of the parsed spec and its
    `planner_pd.plan_disaggregated` plan); the hand-over time is `planner_pd.kv_transfer`'s.
    """
    spec = parse_spec(
        with_overrides(
            manifest, ttft_slo_seconds=ttft_slo_seconds, min_replicas=min_replicas, max_replicas=max_replicas
        )
    )
    pd = plan_disaggregated(spec)
    config = pool_configs(spec, pd, startup_seconds=startup_seconds, scrape_interval_seconds=decision_interval_seconds)
    measured_slo = spec.autoscaling.ttft_slo_seconds
    fleets = {}
    for pool in (pd.prefill, pd.decode):
        fleets[pool.role] = FleetConfig(
            performance=performance_of(pool.plan),
            startup_seconds=pool.plan.startup.expected_seconds if startup_seconds is None else startup_seconds,
            ttft_slo_seconds=DEFAULT_TTFT_SLO_SECONDS if measured_slo is None else measured_slo,
            itl_slo_seconds=itl_slo_seconds,
            initial_replicas=pool.replicas,
            decision_interval_seconds=decision_interval_seconds,
            history_seconds=history_seconds(config.policies[pool.role]),
            drain_timeout_seconds=float(spec.autoscaling.drain_timeout_seconds),
            router=router,
        )
    prefill_plan = pd.prefill.plan

    def transfer(tokens: int) -> float:
        return kv_transfer(spec, prefill_plan, tokens).seconds

    return PoolsComparison(spec, pd, config, PoolsFleet(fleets[PREFILL], fleets[DECODE], transfer))


def _run_pools(args: argparse.Namespace, base: Trace, manifest: Mapping[str, Any], names: Sequence[str]) -> int:
    try:
        colocated = colocated_manifest(manifest)
        pools = pools_comparison_for(
            manifest,
            ttft_slo_seconds=args.ttft_slo,
            itl_slo_seconds=args.itl_slo,
            startup_seconds=args.startup_seconds,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            router=args.router,
            decision_interval_seconds=args.decision_interval,
        )
        # The colocated fleet on the same GPUs sizes the trace and the static split (its oracle's peak).
        args.min_replicas = args.max_replicas = None
        setup = _setup(args, base, colocated)
    except SpecError as error:
        print(f"mimoctl simulate autoscaling: refused: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"mimoctl simulate autoscaling: {error}", file=sys.stderr)
        return 2
    trace = setup.trace
    comparison = setup.comparison
    oracle = comparison.oracle(trace)
    gangs = max(oracle.counts)
    start = max(comparison.policy.min_replicas, min(comparison.policy.max_replicas, oracle.at(0.0)))
    settings = _pools_settings(pools, setup, args, gangs)
    text = _pools_text(settings)
    print(text, file=sys.stderr if args.output == "json" else sys.stdout)
    results: dict[str, PolicyResult] = {}
    per_pool: dict[str, Any] = {}
    for name, result in pools.run(trace, names, gangs=gangs, start=start).items():
        results[name] = result.fleet
        per_pool[name] = {
            role: {"peakGangs": r.peak_replicas, "scaleEvents": r.scale_events, "gpuHours": round(r.gpu_hours, 3)}
            for role, r in result.pools.items()
        }
        per_pool[name]["transferP99Seconds"] = round(result.transfer_seconds_p99, 6)
    if args.compare_colocated:
        for name, colo in comparison.run(trace, ["mimo", "static-peak", "oracle"]).items():
            results[f"{name} (colo)"] = colo
    if args.output == "json":
        data: dict[str, Any] = {
            "policies": {name: result.summary() for name, result in results.items()},
            "pools": per_pool,
            "settings": settings,
        }
        print(json.dumps(data, indent=2))
    else:
        print()
        print(render_table(results, "oracle (colo)"))
        for name, pools_of in per_pool.items():
            print(f"{name}: " + "; ".join(
                f"{role} peak {v['peakGangs']} gangs, {v['scaleEvents']} scale events, {v['gpuHours']:g} GPU-h"
                for role, v in pools_of.items() if isinstance(v, dict))
                  + f"; KV hand-over p99 {pools_of['transferP99Seconds'] * 1e3:.2f} ms")
    return 0


def _pools_settings(pools: PoolsComparison, setup: Setup, args: argparse.Namespace, gangs: int) -> dict[str, Any]:
    fleet = pools.fleet
    out: dict[str, Any] = {
        "model": f"{setup.plan.variant} {setup.plan.precision}",
        "gpu": setup.plan.gpu.name,
        "ttftSloSeconds": fleet.prefill.ttft_slo_seconds,
        "itlSloSeconds": fleet.prefill.itl_slo_seconds,
        "decisionIntervalSeconds": fleet.prefill.decision_interval_seconds,
        "trace": setup.trace.name,
        "requests": len(setup.trace.requests),
        "traceHours": round(setup.trace.span_seconds / 3600, 3),
        "copies": setup.copies,
        "speedup": args.speedup,
        "minDecodePerPrefill": round(pools.config.min_decode_per_prefill, 3),
        "maxDecodePerPrefill": round(pools.config.max_decode_per_prefill, 3),
        "staticGangs": gangs,
        "colocatedNodesPerReplica": setup.plan.nodes_per_replica,
    }
    for pool in (pools.pd.prefill, pools.pd.decode):
        config = pools.config.policies[pool.role]
        capacity = config.capacity
        rate = capacity.prefill_tokens_per_second if pool.role == PREFILL else capacity.decode_tokens_per_second
        out[pool.role] = {
            "nodesPerGang": pool.plan.nodes_per_replica,
            "gpusPerGang": pool.plan.gpus_per_replica,
            "startupSeconds": round(getattr(fleet, pool.role).startup_seconds, 1),
            "minReplicas": config.min_replicas,
            "maxReplicas": config.max_replicas,
            "tokensPerSecond": round(rate),
        }
    return out


def _pools_text(s: Mapping[str, Any]) -> str:
    p, d = s["prefill"], s["decode"]
    return (
        f"PD fleet: {s['model']} on {s['gpu']}: prefill gangs of {p['nodesPerGang']} nodes ({p['gpusPerGang']} GPUs, "
        f"{p['tokensPerSecond']:,} prompt tok/s, start-up {p['startupSeconds']:g} s, {p['minReplicas']}–"
        f"{p['maxReplicas']}), decode gangs of {d['nodesPerGang']} nodes ({d['gpusPerGang']} GPUs, "
        f"{d['tokensPerSecond']:,} output tok/s within the ITL budget, start-up {d['startupSeconds']:g} s, "
        f"{d['minReplicas']}–{d['maxReplicas']}); decode gangs per prefill gang "
        f"{s['minDecodePerPrefill']:g}–{s['maxDecodePerPrefill']:g}\n"
        f"SLOs: TTFT ≤ {s['ttftSloSeconds']:g} s, ITL ≤ {s['itlSloSeconds']:g} s (mean per request); decisions "
        f"every {s['decisionIntervalSeconds']:g} s; static-pd: {s['staticGangs']} gangs (the colocated oracle's peak)\n"
        f"trace: {s['trace']}: {s['requests']:,} requests over {s['traceHours']:g} h ({s['copies']} copies, "
        f"speed-up {s['speedup']:g}), sized for colocated gangs of {s['colocatedNodesPerReplica']} nodes"
    )


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


def render_table(results: Mapping[str, PolicyResult], oracle_name: str = "oracle") -> str:
    oracle = results.get(oracle_name)
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
