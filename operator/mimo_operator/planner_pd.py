"""The prefill/decode planner: ``spec.disaggregation`` → a plan per side, the KV hand-over, EPLB — or a refusal.

Pure functions, no I/O. Each side is planned by :func:`~mimo_operator.planner.plan_deployment` from the spec with
that pool's nodes per gang and the side's own settings, then given its PD and EPLB flags; every figure below is
per side and printed by ``mimoctl plan``.

* **Sides.** Prefill runs DeepEP in ``normal`` mode (big batches of prompt tokens, no CUDA graphs) without MTP;
  decode runs DeepEP ``low_latency`` with CUDA graphs and, when ``parallelism.mtp`` is on, EAGLE/MTP — the split
  of the one public MiMo-V2.5-Pro PD recipe (HYGON-AI/inference-cookbook-das, quoted in
  ``shared/reference/field-update-2026-12.md``). SGLang 0.5.23's transfer maps a decode side with a draft KV
  pool onto a prefill side without one ("Decode has draft model KV while Prefill is deployed without speculative
  decoding", ``disaggregation/common/conn.py``). SGLang 0.5.23 disables the radix cache on a decode server by
  itself (``arg_groups/pd_disaggregation_hook.py``), so the plan does not write ``--disable-radix-cache``.
* **The hand-over.** One request of ``typicalPromptTokens`` moves its whole KV cache from a prefill attention-DP
  group to a decode one: the global layers' ``tokens × layers × KV heads × (192+128) × bytes`` (grows with the
  prompt) plus the sliding-window layers' last ``min(tokens, window)`` tokens (capped at the 128-token window).
  The group's KV heads are split over its attention-TP GPUs, each sending its shard over its own HCA, so the
  fabric time is ``bytes / (attention TP × one HCA's line rate)``.
* **Refusals.** The transfer engines (mooncake, nixl) move KV by RDMA, which ``network.mode podNetwork`` lacks.
  SGLang 0.5.23's transfer refuses different attention TP across the sides for non-MLA hybrid models in every
  state but SWA (``disaggregation/mooncake/conn.py``, ``nixl/conn.py``: "PD Disaggregation does NOT support PD
  different TP sizes for non-MLA … hybrid models yet"); MiMo's fused QKV weights fix the attention TP per
  checkpoint anyway, and the planner checks the two sides agree.
* **EPLB.** ``--ep-num-redundant-experts R`` adds R physical expert slots per MoE layer, R/EP on each GPU, each
  holding one expert's (gate, up, down) weights in every MoE layer: ``moe_layers × 3 × hidden × MoE intermediate``
  parameters at the checkpoint's precision. They come out of the KV cache; unset, the planner takes one slot per
  GPU (DeepSeek-V3's deployment: one redundant expert per GPU) when it costs at most a tenth of the KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from mimo_operator.cachepaths import CACHE_MOUNT_PATH
from mimo_operator.catalog import Checkpoint, Precision, weights_bytes
from mimo_operator.errors import PlanRefused
from mimo_operator.launchplan import EngineLaunch, RankLaunch, fixed_ports, port_listing, sglang_ports
from mimo_operator.plan import Decision, GpuMemorySplit, KvCachePlan, Plan
from mimo_operator.planner import (
    PD_OWNED_FLAGS,
    check_pod_annotations,
    node_nic_gbps,
    plan_deployment,
    refuse_owned,
    unused_fields,
)
from mimo_operator.sglang_flags import parse_extra_args
from mimo_operator.spec import DeploymentSpec, DisaggregationSpec, EplbSpec, ParallelismSpec, PoolSpec

__all__ = [
    "DEFAULT_BOOTSTRAP_PORT",
    "DEFAULT_TRANSFER_BACKEND",
    "DEFAULT_TYPICAL_PROMPT_TOKENS",
    "EPLB_KV_SHARE",
    "EXPERT_LOCATION_FILE",
    "EXPERT_LOCATION_MOUNT",
    "PD_OWNED_FLAGS",
    "DisaggregatedPlan",
    "EplbPlan",
    "KvTransfer",
    "PoolPlan",
    "check_attention_tp",
    "expert_slot_bytes",
    "kv_transfer",
    "plan_disaggregated",
]

DEFAULT_TRANSFER_BACKEND = "mooncake"  # SGLang 0.5.23's default for --disaggregation-transfer-backend
DEFAULT_BOOTSTRAP_PORT = 8998  # SGLang 0.5.23's default for --disaggregation-bootstrap-port
# estimate: a chat turn with a system prompt and some history; the spec's typicalPromptTokens overrides it.
DEFAULT_TYPICAL_PROMPT_TOKENS = 8192
# Unset redundantExperts: one slot per GPU when it costs at most this share of the GPU's KV cache.
EPLB_KV_SHARE = 0.10
# Where a ConfigMap's expert placement would be mounted. SGLang reads --init-expert-location as a file only when
# the path ends in .pt or .json (else it parses the text as JSON), so the key is mounted under a .json name.
EXPERT_LOCATION_MOUNT = "/etc/mimo/expert-location"
EXPERT_LOCATION_FILE = "expert-location.json"

Role = str  # "prefill" | "decode"

# The flags this module writes (PD_OWNED_FLAGS) are listed in the planner, which refuses them in a colocated
# deployment's extraArgs as well.

# Top-level spec.parallelism fields that each side plans for itself (_side_spec drops them; each side's Plan has a
# field of the same name), with what decides them: a value that a side does not run is refused rather than dropped
# without a word. A value both sides run passes (the simulated engine rebuilds a side's spec from its argv
# with these filled in). nodesPerReplica and tensorParallel are not among them: the pools' nodesPerGang replace
# them, as the pools' replicas replace spec.replicas (docs/disaggregation.md), so that a colocated deployment gains
# the block without other edits. deepepMode is not either: each side's mode follows its role (the module docstring).
PER_SIDE_PARALLELISM: dict[str, tuple[str, str]] = {
    "expert_parallel": ("expertParallel", "each side's EP follows from its gang (DeepEP sets ep = tp)"),
    "attention_data_parallel": ("attentionDataParallel",
                                "each side's attention DP is its TP over the checkpoint's attention TP"),
}


@dataclass(frozen=True)
class KvTransfer:
    """What one request of ``prompt_tokens`` hands from a prefill attention-DP group to a decode one."""

    prompt_tokens: int
    global_bytes: int  # grows with the prompt: tokens × the global layers' KV bytes per token
    swa_bytes: int  # capped: min(tokens, window) × the sliding-window layers' KV bytes per token
    senders: int  # GPUs of one attention-DP group, each sending its KV-head shard over its own HCA
    bytes_per_second: float  # senders × one HCA's line rate
    seconds: float

    @property
    def total_bytes(self) -> int:
        return self.global_bytes + self.swa_bytes


@dataclass(frozen=True)
class EplbPlan:
    """Expert load balancing on one side: redundant slots and their memory, algorithm, initial placement."""

    redundant_experts: int  # physical slots per MoE layer beyond the logical experts (--ep-num-redundant-experts)
    slots_per_gpu: int  # redundant_experts / EP
    bytes_per_slot: int  # one expert in every MoE layer at the checkpoint's precision
    bytes_per_gpu: int  # slots_per_gpu × bytes_per_slot, taken from the KV cache
    algorithm: str | None  # --eplb-algorithm (None: SGLang's auto)
    rebalance: bool  # --enable-eplb
    expert_location: str | None  # --init-expert-location, a path inside the pod
    reason: str


@dataclass(frozen=True)
class PoolPlan:
    """One pool's gangs: the side's plan (identical for every gang of the pool) and how many."""

    role: Role
    plan: Plan
    replicas: int
    min_replicas: int | None
    max_replicas: int | None
    eplb: EplbPlan | None


@dataclass(frozen=True)
class DisaggregatedPlan:
    """Both sides of a PD deployment and what passes between them."""

    prefill: PoolPlan
    decode: PoolPlan
    transfer_backend: str
    bootstrap_port: int
    transfer: KvTransfer
    decisions: tuple[Decision, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (camelCase), as `mimoctl plan -o json` prints it for a PD deployment."""
        t = self.transfer
        return {
            "transferBackend": self.transfer_backend,
            "bootstrapPort": self.bootstrap_port,
            "kvTransfer": {
                "promptTokens": t.prompt_tokens, "globalBytes": t.global_bytes, "swaBytes": t.swa_bytes,
                "totalBytes": t.total_bytes, "senders": t.senders, "bytesPerSecond": t.bytes_per_second,
                "seconds": t.seconds,
            },
            "prefill": _pool_dict(self.prefill),
            "decode": _pool_dict(self.decode),
            "decisions": [{"topic": d.topic, "choice": d.choice, "reason": d.reason} for d in self.decisions],
            "warnings": list(self.warnings),
        }


def _pool_dict(pool: PoolPlan) -> dict[str, Any]:
    eplb = None
    if pool.eplb is not None:
        e = pool.eplb
        eplb = {"redundantExperts": e.redundant_experts, "slotsPerGpu": e.slots_per_gpu,
                "bytesPerSlot": e.bytes_per_slot, "bytesPerGpu": e.bytes_per_gpu, "algorithm": e.algorithm,
                "rebalance": e.rebalance, "expertLocation": e.expert_location, "reason": e.reason}
    return {"role": pool.role, "replicas": pool.replicas, "minReplicas": pool.min_replicas,
            "maxReplicas": pool.max_replicas, "eplb": eplb, "plan": pool.plan.to_dict()}


def plan_disaggregated(spec: DeploymentSpec) -> DisaggregatedPlan:
    """Both sides of ``spec.disaggregation``; raises PlanRefused (with the arithmetic) when SGLang cannot run it."""
    pd = spec.disaggregation
    if pd is None:
        raise ValueError("plan_disaggregated needs spec.disaggregation")
    _check_extra_args(spec)
    backend = pd.transfer_backend or DEFAULT_TRANSFER_BACKEND
    bootstrap = pd.bootstrap_port or DEFAULT_BOOTSTRAP_PORT
    prefill = _pool(spec, pd, "prefill", backend, bootstrap)
    _check_bootstrap_port(spec, bootstrap, prefill.plan)
    decode = _pool(spec, pd, "decode", backend, bootstrap)
    _check_per_side_parallelism(spec.parallelism, prefill.plan, decode.plan)
    check_attention_tp(prefill.plan, decode.plan)
    if pd.typical_prompt_tokens is not None and pd.typical_prompt_tokens > prefill.plan.context_length:
        raise PlanRefused(
            "spec.disaggregation.typicalPromptTokens",
            f"typicalPromptTokens {pd.typical_prompt_tokens:,} is longer than the context the servers accept "
            f"({prefill.plan.context_length:,} tokens): the KV hand-over would be sized for a prompt they refuse; "
            "give a prompt length within model.contextLength")
    transfer = kv_transfer(spec, prefill.plan, pd.typical_prompt_tokens or DEFAULT_TYPICAL_PROMPT_TOKENS)
    # The simulated engine hands KV over in a pod network (a rehearsal has no RDMA); SGLang's engines do not.
    if spec.network.mode == "podNetwork" and spec.engine.type != "simulated":
        raise PlanRefused(
            "spec.disaggregation.transferBackend",
            f"{backend} moves the KV cache between the pools by RDMA, and network.mode podNetwork has none: one "
            f"{transfer.prompt_tokens:,}-token request hands over {_mb(transfer.total_bytes)} "
            f"({_mb(transfer.global_bytes)} global-layer KV + {_mb(transfer.swa_bytes)} sliding-window KV), "
            f"{transfer.seconds * 1e3:.1f} ms over {transfer.senders} HCAs; use network.mode hostNetwork, rdma "
            "or sriov, or drop spec.disaggregation")
    # "normal disables CUDA graphs: decode is slower" is the point on a prefill side, not a warning.
    unused = unused_fields(spec)
    warnings = [f"{pool.role}: {w}" for pool in (prefill, decode) for w in pool.plan.warnings
                if not (pool.role == "prefill" and w.startswith("deepepMode normal")) and w not in unused]
    warnings += unused
    if spec.replicas != 1:
        warnings.append(f"replicas {spec.replicas} is not used with spec.disaggregation: each pool's replicas count "
                        "(spec.disaggregation.prefill.replicas, spec.disaggregation.decode.replicas)")
    for pool in (prefill, decode):
        if pool.max_replicas is not None and pool.replicas > pool.max_replicas and spec.autoscaling.enabled:
            warnings.append(f"disaggregation.{pool.role}.replicas {pool.replicas} is above its maxReplicas "
                            f"{pool.max_replicas}: the autoscaler starts the pool at {pool.max_replicas}")
    if not spec.network.ib_devices:
        warnings.append("network.ibDevices is unset: the transfer engine picks its own HCAs "
                        "(--disaggregation-ib-device is not written)")
    return DisaggregatedPlan(
        prefill=prefill, decode=decode, transfer_backend=backend, bootstrap_port=bootstrap, transfer=transfer,
        decisions=tuple(_decisions(spec, prefill, decode, backend, transfer)), warnings=tuple(warnings))


# ------------------------------------------------------------------------------------------- sides


def _side_spec(spec: DeploymentSpec, pool: PoolSpec, role: Role) -> DeploymentSpec:
    """The spec one side is planned from: the pool's nodes per gang, DeepEP's mode for the side, MTP on decode."""
    parallelism = spec.parallelism.model_copy(update={
        "nodes_per_replica": pool.nodes_per_gang,
        "tensor_parallel": None,
        "attention_data_parallel": None,
        "expert_parallel": None,
        # The PD recipe: normal mode for prompt batches, low latency (with CUDA graphs) for decode steps.
        "deepep_mode": "normal" if role == "prefill" else "low_latency",
        # The PD recipe runs EAGLE/MTP on the decode side only.
        "mtp": spec.parallelism.mtp and role == "decode",
    })
    return spec.model_copy(update={"parallelism": parallelism, "disaggregation": None})


def _pool(spec: DeploymentSpec, pd: DisaggregationSpec, role: Role, backend: str, bootstrap: int) -> PoolPlan:
    pool: PoolSpec = getattr(pd, role)
    try:
        plan = plan_deployment(_side_spec(spec, pool, role))
    except PlanRefused as refused:
        node_fields = ("spec.parallelism.nodesPerReplica", "spec.parallelism.tensorParallel")
        field = f"spec.disaggregation.{role}.nodesPerGang" if refused.field in node_fields else refused.field
        raise PlanRefused(field, f"the {role} side: {refused.message}") from None
    if pool.nodes_per_gang is not None:
        plan = replace(plan, decisions=tuple(
            replace(d, reason=f"set by spec.disaggregation.{role}.nodesPerGang") if d.topic == "nodes per replica"
            else d for d in plan.decisions))
    eplb = None
    if pool.eplb is not None:
        eplb = _eplb(spec, pool.eplb, role, plan)
        plan = _with_expert_slots(plan, eplb, role)
    plan = _with_pd_args(plan, _pd_args(spec, role, backend, bootstrap) + _eplb_args(eplb))
    check_pod_annotations(spec, plan.launch, plan.nodes_per_replica)
    return PoolPlan(role=role, plan=plan, replicas=1 if pool.replicas is None else pool.replicas,
                    min_replicas=pool.min_replicas, max_replicas=pool.max_replicas, eplb=eplb)


def _pd_args(spec: DeploymentSpec, role: Role, backend: str, bootstrap: int) -> list[str]:
    args = ["--disaggregation-mode", role, "--disaggregation-transfer-backend", backend]
    if role == "prefill" and spec.disaggregation is not None and spec.disaggregation.bootstrap_port is not None:
        args += ["--disaggregation-bootstrap-port", str(bootstrap)]
    if spec.network.ib_devices:
        # The PD recipe passes every HCA of the node (mlx5_0..7); SGLang takes a comma-separated list.
        args += ["--disaggregation-ib-device", ",".join(spec.network.ib_devices)]
    return args


def _with_pd_args(plan: Plan, added: list[str]) -> Plan:
    """The side's plan with ``added`` after SGLang's arguments of every rank (before the simulator's own)."""
    ranks = tuple((*args, *added) for args in plan.server_args_by_rank)
    launch_ranks = []
    for r in plan.launch.ranks:
        sglang = plan.server_args_by_rank[r.rank]
        tail = r.argv[len(sglang):]  # the simulator's flags, or --use-ray
        launch_ranks.append(RankLaunch(rank=r.rank, argv=[*ranks[r.rank], *tail], env=dict(r.env)))
    launch = EngineLaunch(mode=plan.launch.mode, program=list(plan.launch.program), ranks=launch_ranks)
    return replace(plan, server_args_by_rank=ranks, launch=launch)


def check_attention_tp(prefill: Plan, decode: Plan) -> None:
    """Refuse sides whose attention TP differ: SGLang's KV transfer cannot re-slice MiMo's hybrid KV."""
    p, d = prefill.attention_tensor_parallel, decode.attention_tensor_parallel
    if p != d:
        raise PlanRefused(
            "spec.disaggregation",
            f"the prefill side runs attention TP {p} ({prefill.tensor_parallel} GPUs / "
            f"{prefill.attention_data_parallel} attention-DP groups) and the decode side {d} "
            f"({decode.tensor_parallel} / "
            f"{decode.attention_data_parallel}): SGLang 0.5.23 does not transfer the KV cache of a non-MLA hybrid "
            f"sliding-window model between different attention TP sizes; {prefill.variant}'s fused QKV weights "
            f"need attention TP {prefill.checkpoint.attention_tp} on both sides")


def _check_bootstrap_port(spec: DeploymentSpec, port: int, prefill: Plan) -> None:
    """The prefill head serves the bootstrap port beside SGLang's and the operator's own ports."""
    taken = fixed_ports(host_network=spec.network.mode == "hostNetwork") + sglang_ports(
        engine_http=prefill.port, dist_init=prefill.dist_init_port, nodes=prefill.nodes_per_replica,
        attention_dp=prefill.attention_data_parallel)
    hit = next((t for t in taken if t.port == port), None)
    if hit is None:
        return
    given = ("bootstrapPort" if spec.disaggregation is not None and spec.disaggregation.bootstrap_port is not None
             else "the default bootstrapPort")
    raise PlanRefused(
        "spec.disaggregation.bootstrapPort",
        f"{given} {port} is taken on the prefill side's head by {hit.user}; the ports taken there: "
        f"{port_listing(taken)}; choose another bootstrapPort")


def _check_extra_args(spec: DeploymentSpec) -> None:
    for arg in parse_extra_args(spec.engine.extra_args or []):
        refuse_owned(arg, PD_OWNED_FLAGS, "is written by the planner for a PD deployment; set {field} instead")


def _check_per_side_parallelism(parallelism: ParallelismSpec, prefill: Plan, decode: Plan) -> None:
    for name, (shown, why) in PER_SIDE_PARALLELISM.items():
        value = getattr(parallelism, name)
        sides = (getattr(prefill, name), getattr(decode, name))
        if value is not None and any(side != value for side in sides):
            raise PlanRefused(
                f"spec.parallelism.{shown}",
                f"parallelism.{shown} {value} is not what the sides run (prefill {sides[0]}, decode {sides[1]}): a "
                f"disaggregated deployment plans it per side, and {why}; remove it, and size each side's gangs "
                "with spec.disaggregation.prefill.nodesPerGang and spec.disaggregation.decode.nodesPerGang")


# ----------------------------------------------------------------------------------- the hand-over


def kv_transfer(spec: DeploymentSpec, prefill: Plan, prompt_tokens: int) -> KvTransfer:
    """The KV bytes one ``prompt_tokens`` request moves to the decode side, and the fabric time for them."""
    entry, dtype_bytes = prefill.checkpoint, prefill.kv.dtype_bytes
    global_bytes = prompt_tokens * entry.kv_values_per_token_global * dtype_bytes
    swa_bytes = min(prompt_tokens, entry.swa_window) * entry.kv_values_per_token_swa * dtype_bytes
    senders = prefill.attention_tensor_parallel
    hca_bytes_per_second = node_nic_gbps(spec) * 1e9 / _hcas_per_node(spec)
    # A group's GPUs sit on the same node (attention TP ≤ GPUs per node), each with its own HCA when the node has
    # one per GPU; fewer HCAs than GPUs are shared.
    rate = hca_bytes_per_second * min(senders, _hcas_per_node(spec))
    return KvTransfer(prompt_tokens=prompt_tokens, global_bytes=global_bytes, swa_bytes=swa_bytes,
                      senders=senders, bytes_per_second=rate, seconds=(global_bytes + swa_bytes) / rate)


def _hcas_per_node(spec: DeploymentSpec) -> int:
    return len(spec.network.ib_devices or []) or spec.hardware.gpus_per_node


# --------------------------------------------------------------------------------------------- EPLB


def expert_slot_bytes(entry: Checkpoint, precision: Precision) -> int:
    """One expert in every MoE layer, at the checkpoint's precision with its block scales."""
    total = weights_bytes(entry, precision)
    return round(total * entry.expert_params / entry.params_total / entry.experts)


def _eplb(spec: DeploymentSpec, eplb: EplbSpec, role: Role, plan: Plan) -> EplbPlan:
    field = f"spec.disaggregation.{role}.eplb"
    ep = plan.expert_parallel
    if ep <= 1:
        raise PlanRefused(field, f"the {role} side runs expertParallel {ep}: EPLB places experts across EP ranks "
                                 "and SGLang requires ep > 1 for it")
    slot = expert_slot_bytes(plan.checkpoint, plan.precision)
    kv = plan.memory.kv_cache
    if eplb.redundant_experts is None:
        affordable = slot <= EPLB_KV_SHARE * kv
        per_gpu = 1 if affordable else 0
        reason = (f"one slot per GPU: {_gb(slot)} ≤ {EPLB_KV_SHARE:.0%} of the {_gb(kv)} KV cache per GPU"
                  if affordable else
                  f"none: one slot ({_gb(slot)}) would cost more than {EPLB_KV_SHARE:.0%} of the {_gb(kv)} KV cache "
                  "per GPU")
        redundant = per_gpu * ep
    else:
        redundant = eplb.redundant_experts
        if redundant % ep:
            raise PlanRefused(f"{field}.redundantExperts",
                              f"{plan.checkpoint.experts} experts + {redundant} redundant slots must split evenly "
                              f"over expertParallel {ep}: use a multiple of {ep}")
        per_gpu = redundant // ep
        reason = "set by redundantExperts"
    location = None
    if eplb.expert_location is not None:
        if eplb.expert_location.config_map is not None:
            location = f"{EXPERT_LOCATION_MOUNT}/{EXPERT_LOCATION_FILE}"
        elif eplb.expert_location.cache_file is not None:
            location = f"{CACHE_MOUNT_PATH}/{eplb.expert_location.cache_file}"
    return EplbPlan(redundant_experts=redundant, slots_per_gpu=per_gpu, bytes_per_slot=slot,
                    bytes_per_gpu=per_gpu * slot, algorithm=eplb.algorithm, rebalance=bool(eplb.rebalance),
                    expert_location=location, reason=reason)


def _with_expert_slots(plan: Plan, eplb: EplbPlan, role: Role) -> Plan:
    """The side's plan with the redundant slots' bytes moved from the KV cache to the weights."""
    if eplb.bytes_per_gpu == 0:
        return plan
    mem, kv = plan.memory, plan.kv
    kv_bytes = mem.kv_cache - eplb.bytes_per_gpu
    tokens_per_group = int(max(0, kv_bytes) // kv.bytes_per_token_per_gpu) // plan.page_size * plan.page_size
    need = math.ceil(plan.context_length / plan.page_size) * plan.page_size
    if tokens_per_group < need:
        raise PlanRefused(
            f"spec.disaggregation.{role}.eplb.redundantExperts",
            f"{eplb.redundant_experts} redundant slots put {eplb.slots_per_gpu} × {_gb(eplb.bytes_per_slot)} = "
            f"{_gb(eplb.bytes_per_gpu)} of experts on each GPU of the {role} side, leaving {_gb(max(0, kv_bytes))} "
            f"of its {_gb(mem.kv_cache)} KV cache: {tokens_per_group:,} tokens per attention-DP group, short of one "
            f"contextLength {plan.context_length:,} sequence")
    memory = GpuMemorySplit(total=mem.total, static=mem.static, weights=mem.weights + eplb.bytes_per_gpu,
                            kv_cache=kv_bytes, reserve=mem.reserve)
    groups = plan.attention_data_parallel
    new_kv: KvCachePlan = replace(kv, tokens_per_group=tokens_per_group, tokens=tokens_per_group * groups,
                                  swa_tokens=int(tokens_per_group * kv.swa_full_tokens_ratio) * groups)
    updated = replace(plan, memory=memory, kv=new_kv)
    # The side's own table shows the split after the slots, not before.
    decisions = []
    for d in plan.decisions:
        if d.topic == "memory per GPU":
            d = replace(d, choice=f"{memory.weights / 1e9:.1f} + {memory.kv_cache / 1e9:.1f} + "
                                  f"{memory.reserve / 1e9:.1f} GB")
            decisions += [d, Decision("redundant experts", f"{eplb.redundant_experts}",
                                      f"{eplb.slots_per_gpu} × {_gb(eplb.bytes_per_slot)} per GPU, in the weights "
                                      "above and out of the KV cache")]
            continue
        if d.topic == "KV cache":
            d = replace(d, choice=f"{new_kv.tokens:,} tokens",
                        reason=f"{tokens_per_group:,} per attention-DP group × {groups}; "
                               f"{updated.max_concurrent_sequences():,} sequences of {plan.context_length:,} tokens "
                               "at once")
        decisions.append(d)
    return replace(updated, decisions=tuple(decisions))


def _eplb_args(eplb: EplbPlan | None) -> list[str]:
    if eplb is None:
        return []
    args: list[str] = []
    if eplb.redundant_experts:
        args += ["--ep-num-redundant-experts", str(eplb.redundant_experts)]
    if eplb.rebalance:
        args.append("--enable-eplb")
    if eplb.algorithm is not None:
        args += ["--eplb-algorithm", eplb.algorithm]
    if eplb.expert_location is not None:
        # SGLang then picks --ep-dispatch-algorithm itself: static with DeepEP (arg_groups/parallel_hook.py).
        args += ["--init-expert-location", eplb.expert_location]
    return args


# ------------------------------------------------------------------------------------- explanation


def _decisions(spec: DeploymentSpec, prefill: PoolPlan, decode: PoolPlan, backend: str,
               transfer: KvTransfer) -> list[Decision]:
    out = [Decision("transfer backend", backend,
                    "set by spec.disaggregation.transferBackend" if spec.disaggregation
                    and spec.disaggregation.transfer_backend else "SGLang's default; moves KV by RDMA")]
    for pool in (prefill, decode):
        p = pool.plan
        deepep = p.deepep_mode if p.moe_a2a_backend == "deepep" else "off"
        out.append(Decision(
            f"{pool.role} gangs", f"{pool.replicas} × {p.nodes_per_replica} node(s)",
            f"TP {p.tensor_parallel}, EP {p.expert_parallel}, attention DP {p.attention_data_parallel} "
            f"(attention TP {p.attention_tensor_parallel}); DeepEP {deepep}, "
            f"MTP {'on' if p.mtp else 'off'}; per GPU {_gb(p.memory.weights)} weights + {_gb(p.memory.kv_cache)} KV; "
            f"{p.kv.tokens:,} KV tokens per gang"))
        if pool.eplb is not None:
            lb = pool.eplb
            out.append(Decision(
                f"{pool.role} EPLB", f"{lb.redundant_experts} redundant experts",
                f"{lb.reason}; {lb.slots_per_gpu} slot(s) per GPU × {_gb(lb.bytes_per_slot)} "
                f"({p.checkpoint.moe_layers} MoE layers × 3 × {p.checkpoint.hidden_size} × "
                f"{p.checkpoint.moe_intermediate} at {p.precision}) = {_gb(lb.bytes_per_gpu)} per GPU, "
                "taken from the KV cache"))
    e = prefill.plan.checkpoint
    out.append(Decision(
        "KV hand-over", f"{_mb(transfer.total_bytes)} per {transfer.prompt_tokens:,}-token request",
        f"{transfer.prompt_tokens:,} × {e.global_layers} global layers × {e.kv_heads_global} KV heads × "
        f"({e.head_dim_qk}+{e.head_dim_v}) × {prefill.plan.kv.dtype_bytes} B = {_mb(transfer.global_bytes)}, plus "
        f"the sliding-window layers' last {min(transfer.prompt_tokens, e.swa_window)} tokens = "
        f"{_mb(transfer.swa_bytes)}; {transfer.senders} GPUs send at {transfer.bytes_per_second / 1e9:.0f} GB/s: "
        f"{transfer.seconds * 1e3:.2f} ms"))
    return out


def _gb(value: float) -> str:
    return f"{value / 1e9:.1f} GB"


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f} MB"
