"""Which replica the simulated engine simulates: a MiMoDeployment planned by the operator's planner.

manifest → ``parse_spec`` → ``plan_deployment`` → ``performance_of``: the same path ``mimoctl plan``
takes, so the simulated replica has exactly the KV capacity, limits and argv of the planned one.

Without a manifest (the worker swapped the program and kept the plan's argv), the replica is planned
from the argv itself: the variant from ``--model-path`` (its last path component, e.g.
``XiaomiMiMo/MiMo-V2.5-Pro``); the layout from ``--nnodes``, ``--tp-size``, ``--attn-dp-size``,
``--ep-size``, ``--moe-a2a-backend``, ``--speculative-algorithm``; the KV cache from
``--context-length``, ``--kv-cache-dtype``, ``--mem-fraction-static``, ``--swa-full-tokens-ratio``,
``--page-size``; the limits from ``--max-running-requests`` and ``--chunked-prefill-size``. The GPU type,
which SGLang's argv does not carry, comes from ``--mimo-gpu-type`` (default H200-141GB): a launcher that
swaps the program for a simulated engine should add it, and ``--mimo-speedup``.

Prefill/decode. A manifest with ``spec.disaggregation`` is planned by ``planner_pd.plan_disaggregated``,
and the replica is the side ``--disaggregation-mode`` names (a PD manifest with mode ``null`` is
refused: there is no colocated replica to simulate). From an argv with ``--disaggregation-mode``, the
argv becomes a PD spec whose pools have the argv's nodes (and its EPLB flags on its own side) and goes
through ``plan_disaggregated`` too; ``--disaggregation-ib-device`` sets the HCAs that carry the KV and
``--mimo-link-speed-gbps`` their line rate. Either way a request's KV hand-over takes
:meth:`PlannedReplica.kv_transfer`, ``planner_pd.kv_transfer`` of this side's plan.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mimo_operator.catalog import CHECKPOINTS
from mimo_operator.errors import SpecError
from mimo_operator.perf import ReplicaPerformance, performance_of
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import KvTransfer, kv_transfer, plan_disaggregated
from mimo_operator.spec import DeploymentSpec, parse_spec
from mimo_worker.simengine.engine import EngineLimits
from mimo_worker.simengine.options import OptionsError, SimOptions, parse_options

__all__ = ["PlannedReplica", "load_manifest", "planned_replica", "replica_from_argv"]

# --dist-init-addr's head address in the argv the simulated engine derives from a plan: node rank 0 of a
# simulated gang is this process, and it never opens the port.
LOCAL_HEAD_ADDRESS = "127.0.0.1"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedReplica:
    """One planned replica: the plan, its performance model and the scheduler limits they imply."""

    spec: DeploymentSpec
    plan: Plan
    performance: ReplicaPerformance
    role: str = "null"  # --disaggregation-mode: "null" (colocated), "prefill" or "decode"

    @property
    def limits(self) -> EngineLimits:
        return EngineLimits.of(self.performance)

    @property
    def attention_dp(self) -> int:
        return self.plan.attention_data_parallel

    @property
    def speedup(self) -> float:
        return self.spec.engine.simulation.speedup

    def kv_transfer(self, prompt_tokens: int) -> KvTransfer:
        """What handing one request's KV to a decode server costs, from this (prefill) side's plan."""
        return kv_transfer(self.spec, self.plan, max(prompt_tokens, 1))

    def server_args(self, rank: int = 0) -> list[str]:
        """The plan's ``sglang.launch_server`` arguments of one node rank."""
        return self.plan.server_args(rank, LOCAL_HEAD_ADDRESS)

    def summary_line(self) -> str:
        plan = self.plan
        return (
            f"{plan.variant} on {plan.nodes_per_replica}×{plan.gpus_per_node} {plan.gpu.name}: "
            f"TP {plan.tensor_parallel}, "
            f"{plan.attention_data_parallel} attention-DP group(s), KV {plan.kv.tokens:,} tokens, "
            f"max {plan.max_running_requests} running, MTP {'on' if plan.mtp else 'off'}"
        )

    def server_info(self) -> dict[str, Any]:
        """What ``/server_info`` adds under ``simulated``: where the numbers come from."""
        plan = self.plan
        return {
            "role": self.role,
            "variant": plan.variant,
            "gpu_type": plan.gpu.name,
            "nodes_per_replica": plan.nodes_per_replica,
            "gpus_per_replica": plan.gpus_per_replica,
            "mtp": plan.mtp,
            "planned_startup_seconds": round(plan.startup.expected_seconds, 1),
        }


def load_manifest(path: str | Path) -> Mapping[str, Any]:
    """The one MiMoDeployment in a YAML or JSON file (other kinds in the file are skipped)."""
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as error:
        raise OptionsError(f"{path}: not YAML: {error}") from None
    except OSError as error:
        raise OptionsError(f"{path}: {error.strerror or error}") from None
    found = [d for d in documents if isinstance(d, Mapping) and d.get("kind", "MiMoDeployment") == "MiMoDeployment"]
    if len(found) != 1:
        raise OptionsError(f"{path}: expected one MiMoDeployment, found {len(found)}")
    return found[0]


def planned_replica(manifest: Mapping[str, Any] | str | Path, role: str = "null") -> PlannedReplica:
    """Plan a manifest (a mapping, or a file); with ``spec.disaggregation``, the side ``role`` names.
    Raises SpecError/PlanRefused, or OptionsError for a file that cannot be read or a PD manifest
    without a role."""
    document = manifest if isinstance(manifest, Mapping) else load_manifest(manifest)
    spec = parse_spec(document)
    if spec.disaggregation is None:
        plan = plan_deployment(spec)
        return PlannedReplica(spec, plan, performance_of(plan), role=role)
    if role not in ("prefill", "decode"):
        raise OptionsError(
            "the manifest disaggregates prefill and decode (spec.disaggregation): give "
            "--disaggregation-mode prefill or decode to say which side this engine simulates"
        )
    side = getattr(plan_disaggregated(spec), role).plan
    return PlannedReplica(spec, side, performance_of(side), role=role)


def replica_from_argv(options: SimOptions) -> PlannedReplica:
    """Plan the replica an ``sglang.launch_server`` argv describes (see the module docstring).

    The argv of a plan gives the same plan back (``tests/unit/test_simengine_replica.py``); for any
    other argv, the flags the planner would have written differently are logged as a warning.
    """
    if not options.model_path:
        raise OptionsError("without --mimo-manifest, --model-path must name a MiMo-V2.5 checkpoint")
    variant = options.model_path.rstrip("/").rsplit("/", 1)[-1]
    if variant not in CHECKPOINTS:
        raise OptionsError(
            f"--model-path {options.model_path}: not a checkpoint the planner knows ({', '.join(CHECKPOINTS)}); "
            "name one, or pass --mimo-manifest"
        )
    nodes = max(options.nnodes, 1)
    model: dict[str, Any] = {"variant": variant}
    if options.context_length is not None:
        model["contextLength"] = options.context_length
    if options.kv_cache_dtype is not None:
        model["kvCacheDtype"] = "fp8" if options.kv_cache_dtype.startswith("fp8") else "bf16"
    if options.quantization is not None:
        model["precision"] = "fp8" if options.quantization.startswith("fp8") else "bf16"
    parallelism: dict[str, Any] = {
        "nodesPerReplica": nodes,
        "tensorParallel": options.tp_size,
        "attentionDataParallel": options.attention_dp,
        "expertParallel": options.ep_size,
        "moeA2ABackend": "deepep" if options.moe_a2a_backend == "deepep" else "none",
        "mtp": options.speculative_algorithm is not None,
    }
    if options.deepep_mode is not None:
        parallelism["deepepMode"] = options.deepep_mode
    engine: dict[str, Any] = {}
    for flag, key in (
        ("max_running_requests", "maxRunningRequests"),
        ("chunked_prefill_size", "chunkedPrefillSize"),
        ("page_size", "pageSize"),
        ("mem_fraction_static", "memFractionStatic"),
        ("swa_full_tokens_ratio", "swaFullTokensRatio"),
    ):
        value = getattr(options, flag)
        if value is not None and not (flag == "chunked_prefill_size" and value <= 0):
            engine[key] = value
    spec: dict[str, Any] = {
        "model": model,
        "hardware": {"gpuType": options.mimo_gpu_type, "gpusPerNode": max(options.tp_size // nodes, 1)},
        "parallelism": parallelism,
        "engine": engine,
    }
    network: dict[str, Any] = {}
    hcas = _ib_devices(options.disaggregation_ib_device)
    if hcas:
        network["ibDevices"] = hcas
    if options.mimo_link_speed_gbps is not None:
        network["linkSpeedGbps"] = options.mimo_link_speed_gbps
    if network:
        spec["network"] = network
    if options.disaggregation_mode in ("prefill", "decode"):
        spec["disaggregation"] = _disaggregation(options, nodes)
    try:
        replica = planned_replica({"spec": spec}, role=options.disaggregation_mode)
    except SpecError as error:
        raise OptionsError(f"planning the replica from the SGLang arguments: {error}") from None
    differing = _differing_flags(options, replica)
    if differing:
        log.warning(
            "the planner would launch this replica with different arguments (%s); simulating the argv's "
            "limits over the plan's performance model",
            ", ".join(differing),
        )
    return replica


def _disaggregation(options: SimOptions, nodes: int) -> dict[str, Any]:
    """The PD block an argv of one side implies: both pools of its nodes, its EPLB on its own side."""
    pools: dict[str, Any] = {"prefill": {"nodesPerGang": nodes}, "decode": {"nodesPerGang": nodes}}
    eplb: dict[str, Any] = {}
    if options.ep_num_redundant_experts is not None:
        eplb["redundantExperts"] = options.ep_num_redundant_experts
    if options.eplb_algorithm is not None:
        eplb["algorithm"] = options.eplb_algorithm
    if options.enable_eplb:
        eplb["rebalance"] = True
    if eplb:
        pools[options.disaggregation_mode]["eplb"] = eplb
    block: dict[str, Any] = dict(pools)
    if options.disaggregation_transfer_backend in ("mooncake", "nixl"):
        block["transferBackend"] = options.disaggregation_transfer_backend
    if options.disaggregation_mode == "prefill" and options.disaggregation_bootstrap_port >= 1024:
        block["bootstrapPort"] = options.disaggregation_bootstrap_port
    return block


def _ib_devices(value: str | None) -> list[str]:
    """``--disaggregation-ib-device`` as a list of HCAs: the comma-separated form the planner writes. SGLang's
    per-GPU JSON mapping (or a file of it) names no count the transfer arithmetic can use: none."""
    if not value or value.lstrip().startswith("{") or value.endswith(".json"):
        return []
    return [d.strip() for d in value.split(",") if d.strip()]


# What the planner decides from the argv, as SimOptions fields; addresses and ports do not count.
_PLANNED_FIELDS = (
    "model_path",
    "nnodes",
    "tp_size",
    "attention_dp",
    "ep_size",
    "moe_a2a_backend",
    "speculative_algorithm",
    "quantization",
    "kv_cache_dtype",
    "context_length",
    "page_size",
    "mem_fraction_static",
    "swa_full_tokens_ratio",
    "max_running_requests",
    "chunked_prefill_size",
)


def _differing_flags(options: SimOptions, replica: PlannedReplica) -> list[str]:
    planned = parse_options(replica.server_args(0), check=False)
    return [
        f"{name}={getattr(options, name)} (plan: {getattr(planned, name)})"
        for name in _PLANNED_FIELDS
        if getattr(options, name) is not None and getattr(options, name) != getattr(planned, name)
    ]
