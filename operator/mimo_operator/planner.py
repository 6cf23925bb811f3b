"""The planner: a parsed spec and its catalog entry → a :class:`~mimo_operator.plan.Plan`, or a refusal.

Pure functions, no I/O. The arithmetic (``shared/mimo-facts.md`` "Arithmetic" and "SGLang rules"):

* **Layout.** A replica is ``nodes × gpusPerNode`` GPUs and ``--tp-size`` counts all of them. The
  checkpoints' fused QKV weights are split for a fixed attention TP (4 for MiMo-V2.5, 8 for Pro), so the
  attention runs in ``tp / attention_tp`` data-parallel groups (``--attn-dp-size``; SGLang 0.5.23
  deprecates ``--enable-dp-attention``). DeepEP (``--moe-a2a-backend deepep``) forces ``ep = tp``, and
  EP must divide the expert count (256 / 384).
* **Memory per GPU.** SGLang may use ``--mem-fraction-static`` of each GPU for weights and KV pools; the
  rest is kept for activations, CUDA graphs and communication buffers. A GPU holds ``1/tp`` of the
  routed experts (EP-partitioned or TP-sliced, the bytes are the same) and ``1/attention_tp`` of the rest
  (attention, embeddings, the dense layer: replicated in every attention-DP group).
* **KV cache.** Global layers store ``kv_heads × (192 + 128)`` values per token and grow with context;
  sliding-window layers hold one 128-token window per sequence. SGLang sizes the SWA pool as
  ``--swa-full-tokens-ratio`` × the full pool, so one full-pool token costs
  ``full + ratio × swa (+ MTP draft)`` bytes on each GPU (its head shard). All GPUs of an attention-DP
  group hold the same tokens; a sequence lives in one group.
* **Nodes per replica.** The fewest nodes whose GPUs hold their weight shard and leave each attention-DP
  group room for one sequence of the full context length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mimo_operator import labels as L
from mimo_operator.cachepaths import cached_model_path
from mimo_operator.catalog import (
    GPU_TYPES,
    Checkpoint,
    GpuType,
    checkpoint,
    gpu_type,
    weights_bytes,
)
from mimo_operator.errors import PlanRefused
from mimo_operator.launchplan import (
    NODE_IP,
    EngineLaunch,
    PortUse,
    RankLaunch,
    fixed_ports,
    launch_plan_bytes,
    port_listing,
    sglang_ports,
)
from mimo_operator.plan import (
    CACHE_MOUNT_PATH,
    HEAD_ADDRESS_PLACEHOLDER,
    SGLANG_PROGRAM,
    SIMULATED_PROGRAM,
    Decision,
    GpuMemorySplit,
    KvCachePlan,
    Plan,
    StartupEstimate,
)
from mimo_operator.sglang_flags import ExtraFlag, flag_table, human_int, parse_extra_args
from mimo_operator.spec import DeploymentSpec, EngineSpec, quantised_copy_hint

# The surface other packages import (pinned by tests/unit/test_planner.py). planner_pd, this module's sibling, also
# reads PD_OWNED_FLAGS and check_pod_annotations.
__all__ = [
    "DEFAULT_DOWNLOAD_BYTES_PER_SECOND",
    "DEFAULT_LOAD_BYTES_PER_SECOND",
    "OWNED_FLAGS",
    "node_nic_gbps",
    "plan_deployment",
]

# Start-up figures (StartupEstimate). Download: the brief's stated default, a hub download at 2 GB/s.
DEFAULT_DOWNLOAD_BYTES_PER_SECOND = 2e9
DEFAULT_LOAD_BYTES_PER_SECOND = 7e9  # facts: "NVMe Gen4 ≈ 7 GB/s per drive"
DEEPGEMM_JIT_SECONDS = 15 * 60.0  # facts: "DeepGEMM JIT 10–20 min unless its cache dir persists"
CUDA_GRAPH_CAPTURE_SECONDS = 120.0  # facts: "CUDA-graph capture minutes"
PROCESS_START_SECONDS = 60.0  # estimate: Ray, process start, NCCL/NVSHMEM initialisation

# SGLang settings the planner fills when the spec leaves them unset.
# Without DeepEP, keep a fixed amount per GPU for activations, CUDA graphs and NCCL (estimate; SGLang's
# own default also reserves an amount rather than a share, so bigger GPUs get a larger fraction).
RESERVE_BYTES_PER_GPU = 16e9
MEM_FRACTION_MAX = 0.9
MEM_FRACTION_MIN = 0.3  # the CRD's lowest memFractionStatic
# With DeepEP the fraction is the checkpoint's cookbook value (catalog: Checkpoint.deepep_mem_fraction).
MAX_RUNNING_PER_GROUP = 64  # cookbook (Pro, H200): --max-running-requests 128 over its 2 attention-DP groups
CUDA_GRAPH_MAX_BS = 64  # cookbook: --cuda-graph-max-bs 64 (0.5.23 spells it --cuda-graph-max-bs-decode)
CHUNKED_PREFILL_SIZE = 32768  # cookbook: --chunked-prefill-size 32768
MTP_STEPS, MTP_TOPK, MTP_DRAFT_TOKENS = 3, 1, 4  # cookbook: EAGLE 3 / 1 / 4 with --enable-multi-layer-eagle
# cookbook: SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK=256 with DeepEP (SGLang's own default is 128).
DEEPEP_DISPATCH_TOKENS = 256
MODEL_LOADER_EXTRA_CONFIG = '{"enable_multithread_load": "true", "num_threads": 64}'  # cookbook
MAX_AUTO_NODES = 64
# vLLM's recipe for MiMo-V2.5-Pro (vllm-project/recipes models/XiaomiMiMo/MiMo-V2.5-Pro.yaml, verified on H200):
# one 8×H200 node, TP8, --gpu-memory-utilization 0.95. The planner offers that layout beside a multi-node plan.
ONE_NODE_MEM_FRACTION = 0.95
DEFAULT_LINK_SPEED_GBPS = 400  # InfiniBand NDR, one port per GPU on HGX H100/H200 nodes (mimo-facts)
FP8_BLOCK = 128  # released weights: FP8 in 128×128 blocks; a TP slice of an expert must keep whole blocks

_KV_DTYPE_BYTES = {"bf16": 2, "fp8": 1}
_KV_DTYPE_FLAG = {"bf16": "bf16", "fp8": "fp8_e4m3"}

# Flags the planner writes, with the spec field that sets them; spec.engine.extraArgs may not repeat them.
OWNED_FLAGS: dict[str, str] = {
    **dict.fromkeys(["--model-path", "--model", "--served-model-name", "--trust-remote-code"], "spec.model.source"),
    "--revision": "spec.model.revision",
    "--quantization": "spec.model.precision",
    "--kv-cache-dtype": "spec.model.kvCacheDtype",
    "--context-length": "spec.model.contextLength",
    **dict.fromkeys(["--tp-size", "--tensor-parallel-size", "--tp"], "spec.parallelism.tensorParallel"),
    **dict.fromkeys(["--ep-size", "--expert-parallel-size", "--ep"], "spec.parallelism.expertParallel"),
    **dict.fromkeys(["--attn-dp-size", "--attention-data-parallel-size", "--dp-size", "--data-parallel-size",
                     "--enable-dp-attention", "--enable-dp-lm-head", "--mm-enable-dp-encoder"],
                    "spec.parallelism.attentionDataParallel"),
    **dict.fromkeys(["--moe-a2a-backend", "--moe-dense-tp-size", "--moe-runner-backend"],
                    "spec.parallelism.moeA2ABackend"),
    "--deepep-mode": "spec.parallelism.deepepMode",
    **dict.fromkeys(["--nnodes", "--node-rank", "--dist-init-addr", "--nccl-init-addr", "--pp-size",
                     "--pipeline-parallel-size"], "spec.parallelism.nodesPerReplica"),
    **dict.fromkeys(["--speculative-algorithm", "--speculative-num-steps", "--speculative-eagle-topk",
                     "--speculative-num-draft-tokens", "--enable-multi-layer-eagle"], "spec.parallelism.mtp"),
    **dict.fromkeys(["--host", "--port"], "spec.engine.port"),
    "--mem-fraction-static": "spec.engine.memFractionStatic",
    "--max-running-requests": "spec.engine.maxRunningRequests",
    "--chunked-prefill-size": "spec.engine.chunkedPrefillSize",
    "--cuda-graph-max-bs-decode": "spec.engine.cudaGraphMaxBatchSize",
    "--swa-full-tokens-ratio": "spec.engine.swaFullTokensRatio",
    "--page-size": "spec.engine.pageSize",
    "--watchdog-timeout": "spec.engine.watchdogTimeoutSeconds",
    "--use-ray": "spec.engine.launcher",
    "--attention-backend": "spec.hardware.gpuType",
}

# Flags the prefill/decode planner (planner_pd) writes, with the spec field that sets them: extraArgs may not repeat
# them in a disaggregated deployment, and a colocated one has no field that plans them (EPLB's redundant experts
# take memory only a pool's plan sets aside).
PD_OWNED_FLAGS: dict[str, str] = {
    "--disaggregation-mode": "spec.disaggregation",
    "--disaggregation-transfer-backend": "spec.disaggregation.transferBackend",
    "--disaggregation-bootstrap-port": "spec.disaggregation.bootstrapPort",
    "--disaggregation-ib-device": "spec.network.ibDevices",
    "--ep-num-redundant-experts": "spec.disaggregation.<pool>.eplb.redundantExperts",
    "--enable-eplb": "spec.disaggregation.<pool>.eplb.rebalance",
    "--eplb-algorithm": "spec.disaggregation.<pool>.eplb.algorithm",
    "--init-expert-location": "spec.disaggregation.<pool>.eplb.expertLocation",
}

# Environment variables of a gang pod that the operator and its worker own. The builders (build/gang.py) set
# MIMO_ROLE, MIMO_LAUNCH_PLAN, POD_IP, POD_NAME and POD_NAMESPACE on every gang pod; the worker reads every MIMO_
# variable (MIMO_NODE_RANK is a member's node rank). spec.engine.env comes after them on the pod and in the launch,
# so a value there wins: every member claims the same rank, or the engine sees other GPUs than its TP size counts.
OPERATOR_ENV_PREFIX = "MIMO_"
OPERATOR_ENV: dict[str, str] = {
    "POD_IP": "the builders set it from the pod's status; the worker binds and announces it",
    "POD_NAME": "the builders set it from the pod's name; a member finds its node rank by it",
    "POD_NAMESPACE": "the builders set it from the pod's namespace",
    "CUDA_VISIBLE_DEVICES": "Ray hands each engine process its node's GPUs, and --tp-size counts every one of them",
    "NVIDIA_VISIBLE_DEVICES": "the GPU device plugin chooses the pod's GPUs; another value shows the engine GPUs "
                              "the pod was not given",
    "RAY_ADDRESS": "the head points the engine at the gang's own Ray cluster",
}
# The token named by spec.model.tokenSecretRef reaches the pod by reference; a literal HF_TOKEN in spec.engine.env
# would replace it and put the token in plain text into the launch plan, a pod annotation.
TOKEN_ENV = "HF_TOKEN"  # noqa: S105 - the variable's name, not a token
# Variables the planner itself writes, and why spec.engine.env may still set them (its value wins, as _env says):
# NCCL_*, GLOO_SOCKET_IFNAME and NVSHMEM_* (interfaces, HCAs, GID index, IBGDA) are the cluster-specific tuning
# the field is for, in syntax the network fields do not cover (NCCL's ^ exclusions and =exact HCA names), and a
# wrong value fails the gang's fabric check before the weights load; HF_HUB_CACHE and SGLANG_DG_CACHE_DIR only move
# caches (a slower start, no failure); SGLang 0.5.23 reads SGLANG_ENABLE_SPEC_V2 only in its ROCm backend.
# SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK is checked by value (_check_dispatch_tokens): raising it is a
# tuning knob, lowering it below a CUDA-graph batch breaks DeepEP.
DEEPEP_DISPATCH_ENV = "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"
DEEPEP_DISPATCH_TOKENS_MAX = 1024  # SGLang 0.5.23 asserts it (layers/moe/token_dispatcher/deepep.py)

# Kubernetes' limit on all of an object's annotations together, keys and values (apimachinery's
# TotalAnnotationSizeLimitB).
POD_ANNOTATIONS_LIMIT = 256 * 1024
# What else the operator may put on a gang pod besides the launch plan: the gang scheduler's and the bootstrap
# port's annotations, the CNI network list (at most 16 names) and the drain marks.
OPERATOR_ANNOTATIONS_RESERVE = 8 * 1024


class _Unfit(Exception):
    """Why one node count cannot work; ``kind`` tells the auto search whether more nodes could help."""

    def __init__(self, kind: str, field: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "structure" | "weights" | "kv"
        self.field = field
        self.message = message


@dataclass(frozen=True)
class _Layout:
    nodes: int
    tp: int
    ep: int
    dp: int
    a2a: str
    a2a_reason: str
    mem_fraction: float
    memory: GpuMemorySplit
    kv: KvCachePlan


def plan_deployment(
    spec: DeploymentSpec,
    *,
    download_bytes_per_second: float = DEFAULT_DOWNLOAD_BYTES_PER_SECOND,
    load_bytes_per_second: float = DEFAULT_LOAD_BYTES_PER_SECOND,
) -> Plan:
    """The plan of one replica of ``spec``; raises PlanRefused (a SpecError) when it cannot work."""
    entry = checkpoint(spec.model.variant)
    gpu = _gpu_of(spec)
    context = spec.model.context_length or entry.max_context
    if context > entry.max_context:
        raise PlanRefused("spec.model.contextLength",
                          f"contextLength {context:,} exceeds {entry.name}'s {entry.max_context:,} tokens")
    _check_extra_args(spec, entry, context)
    _check_env_names(spec)

    pinned = _pinned_nodes(spec)
    layout, why_nodes = _choose_layout(spec, entry, gpu, context, pinned)
    _check_ports(spec, layout.nodes, layout.dp)
    _check_socket_interface(spec, layout.nodes)
    _check_one_node_per_pod(spec, layout.nodes)
    return _assemble(spec, entry, gpu, context, layout, why_nodes,
                     download_bytes_per_second, load_bytes_per_second)


# ----------------------------------------------------------------------------------------- layout


def _gpu_of(spec: DeploymentSpec) -> GpuType:
    hw = spec.hardware
    return gpu_type(hw.gpu_type, memory_bytes=hw.gpu_memory_bytes, architecture=hw.architecture or "hopper")


def _pinned_nodes(spec: DeploymentSpec) -> int | None:
    p, gpn = spec.parallelism, spec.hardware.gpus_per_node
    if p.nodes_per_replica is not None:
        return p.nodes_per_replica
    if p.tensor_parallel is not None:
        if p.tensor_parallel % gpn:
            raise PlanRefused("spec.parallelism.tensorParallel",
                              f"tensorParallel {p.tensor_parallel} is not a whole number of {gpn}-GPU nodes "
                              "(--tp-size counts every GPU of the replica)")
        return p.tensor_parallel // gpn
    return None


def _choose_layout(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, context: int,
                   pinned: int | None) -> tuple[_Layout, str]:
    if pinned is not None:
        try:
            return _layout(spec, entry, gpu, context, pinned), "set by spec.parallelism"
        except _Unfit as unfit:
            raise PlanRefused(unfit.field, unfit.message + _advice(spec, entry, gpu, context, unfit)) from None
    failures: list[_Unfit] = []
    for nodes in range(1, MAX_AUTO_NODES + 1):
        try:
            layout = _layout(spec, entry, gpu, context, nodes)
        except _Unfit as unfit:
            failures.append(unfit)
            continue
        fewer = next((f for f in reversed(failures) if f.kind != "structure"), None)
        reason = "the fewest nodes that hold the weights and one full-context sequence per attention-DP group"
        return layout, reason + (f"; fewer: {fewer.message}" if fewer else "")
    # Report the most telling failure: a pinned setting that no node count satisfies, else the furthest
    # any node count got (the KV cache, then the weights), else the layout rule.
    node_fields = ("spec.parallelism.nodesPerReplica", "spec.parallelism.tensorParallel")
    worst = (next((f for f in failures if f.kind == "structure" and f.field not in node_fields), None)
             or next((f for f in reversed(failures) if f.kind == "kv"), None)
             or next((f for f in reversed(failures) if f.kind == "weights"), failures[0]))
    raise PlanRefused(worst.field, f"no replica of up to {MAX_AUTO_NODES} nodes works: {worst.message}"
                      + _alternatives(spec, entry, gpu, context))


def _layout(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, context: int, nodes: int) -> _Layout:
    p, gpn = spec.parallelism, spec.hardware.gpus_per_node
    gpus = nodes * gpn
    tp = gpus
    nodes_field = ("spec.parallelism.tensorParallel" if p.tensor_parallel is not None
                   else "spec.parallelism.nodesPerReplica")
    attn_tp = entry.attention_tp
    if tp % attn_tp:
        raise _Unfit("structure", nodes_field,
                     f"{entry.name}'s fused QKV weights are split for attention TP {attn_tp}, so a replica "
                     f"needs a multiple of {attn_tp} GPUs (got {_nodes(nodes)} × {gpn} GPUs = {tp})")
    dp = tp // attn_tp
    if p.attention_data_parallel is not None and p.attention_data_parallel != dp:
        raise _Unfit("structure", "spec.parallelism.attentionDataParallel",
                     f"attentionDataParallel must be tensorParallel / {attn_tp} = {dp} for {entry.name}: its "
                     f"fused QKV weights are split for attention TP {attn_tp} (got {p.attention_data_parallel})")
    running = spec.engine.max_running_requests
    if running is not None and running < dp:
        raise _Unfit("structure", "spec.engine.maxRunningRequests",
                     f"maxRunningRequests {running} leaves some of the {dp} attention-DP groups without a request "
                     f"slot (SGLang splits it between them): use at least {dp}")
    a2a, a2a_reason = _a2a_backend(spec, gpu, nodes)
    if a2a == "deepep" and p.moe_a2a_backend == "auto" and p.expert_parallel not in (None, tp):
        a2a, a2a_reason = "none", f"expertParallel {p.expert_parallel} is set, and DeepEP needs ep = tp = {tp}"
    if a2a == "deepep":
        if p.expert_parallel is not None and p.expert_parallel != tp:
            raise _Unfit("structure", "spec.parallelism.expertParallel",
                         f"DeepEP forces expertParallel = tensorParallel = {tp} (got {p.expert_parallel})")
        ep = tp
    else:
        ep = p.expert_parallel if p.expert_parallel is not None else (1 if nodes == 1 else tp)
    ep_field = "spec.parallelism.expertParallel" if p.expert_parallel is not None else nodes_field
    if entry.experts % ep:
        valid = [n for n in range(attn_tp, 513, attn_tp) if entry.experts % n == 0]
        given = (f"expertParallel {ep}" if p.expert_parallel is not None
                 else f"{_nodes(nodes)} × {gpn} GPUs give expertParallel {ep} ({_ep_origin(a2a)}), which")
        raise _Unfit("structure", ep_field,
                     f"{given} does not divide {entry.name}'s {entry.experts} experts; "
                     f"EP sizes that do: {', '.join(map(str, valid))}")
    if tp % ep:
        raise _Unfit("structure", ep_field, f"expertParallel {ep} does not divide tensorParallel {tp}")
    moe_tp = tp // ep
    slice_unit = FP8_BLOCK if spec.model.precision == "fp8" else 1
    if entry.moe_intermediate % (moe_tp * slice_unit):
        raise _Unfit("structure", ep_field,
                     f"with expertParallel {ep} each expert is sliced {moe_tp} ways, but its "
                     f"{entry.moe_intermediate}-wide {spec.model.precision} weights do not split into "
                     f"{moe_tp} whole {slice_unit}-column blocks; raise expertParallel")
    fraction = spec.engine.mem_fraction_static or _default_mem_fraction(entry, gpu, a2a)
    memory, kv = _memory(spec, entry, gpu, tp, dp, fraction, nodes, context)
    return _Layout(nodes, tp, ep, dp, a2a, a2a_reason, fraction, memory, kv)


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def _ep_origin(a2a: str) -> str:
    return "DeepEP sets ep = tp" if a2a == "deepep" else "experts spread over every GPU"


def _default_mem_fraction(entry: Checkpoint, gpu: GpuType, a2a: str) -> float:
    if a2a == "deepep":
        return entry.deepep_mem_fraction
    leaves_reserve = math.floor((1 - RESERVE_BYTES_PER_GPU / gpu.memory_bytes) * 100) / 100
    return max(MEM_FRACTION_MIN, min(MEM_FRACTION_MAX, leaves_reserve))


def _a2a_backend(spec: DeploymentSpec, gpu: GpuType, nodes: int) -> tuple[str, str]:
    wanted, mode = spec.parallelism.moe_a2a_backend, spec.network.mode
    if wanted == "deepep":
        if nodes > 1 and mode == "podNetwork":
            raise _Unfit("structure", "spec.parallelism.moeA2ABackend",
                         "DeepEP needs RDMA between nodes, and network.mode podNetwork has none: use "
                         "network.mode hostNetwork, rdma or sriov, or moeA2ABackend none")
        return "deepep", "set by spec.parallelism.moeA2ABackend"
    if wanted == "none":
        return "none", "set by spec.parallelism.moeA2ABackend"
    if gpu.architecture != "hopper":
        return "none", "the SGLang MiMo cookbook offers DeepEP on Hopper only (Blackwell: flashinfer_trtllm)"
    if nodes == 1:
        # The model card's one-node command: DeepEP over NVLink, dense layers unsharded per DP rank.
        return "deepep", "the model card's one-node launch (DeepEP over NVLink, --moe-dense-tp-size 1)"
    if mode == "podNetwork":
        return "none", "network.mode podNetwork has no RDMA, which DeepEP needs between nodes"
    return "deepep", "multi-node expert all-to-all over RDMA (the cookbook's multi-node launch)"


def _memory(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, tp: int, dp: int, fraction: float,
            nodes: int, context: int) -> tuple[GpuMemorySplit, KvCachePlan]:
    precision = spec.model.precision
    total_weights = weights_bytes(entry, precision)
    expert_bytes = total_weights * entry.expert_params / entry.params_total
    attn_tp = tp // dp
    weights_per_gpu = round(expert_bytes / tp + (total_weights - expert_bytes) / attn_tp)
    weights_per_gpu += _dp_encoder_bytes(entry, total_weights, attn_tp, dp)
    static = round(gpu.memory_bytes * fraction)
    kv_bytes_per_gpu = static - weights_per_gpu
    where = f"{_nodes(nodes)} of {spec.hardware.gpus_per_node}×{gpu.name}"
    if kv_bytes_per_gpu <= 0:
        node_bytes = spec.hardware.gpus_per_node * gpu.memory_bytes
        raise _Unfit(
            "weights", "spec.parallelism.nodesPerReplica",
            f"{entry.name} {precision} needs ≈{total_weights / 1e9:,.0f} GB of weights; {where} "
            f"{'has' if nodes == 1 else 'have'} {nodes * node_bytes / 1e9:,.0f} GB "
            f"({nodes * node_bytes * fraction / 1e9:,.0f} GB for weights and KV cache at mem-fraction-static "
            f"{fraction:.2f}, {weights_per_gpu / 1e9:.1f} GB of weights per GPU against "
            f"{static / 1e9:.1f} GB)",
        )
    kv = _kv_cache(spec, entry, gpu, attn_tp, dp, kv_bytes_per_gpu)
    page = spec.engine.page_size
    need = math.ceil(context / page) * page
    if kv.tokens_per_group < need:
        raise _Unfit(
            "kv", "spec.model.contextLength",
            f"{where} {'leaves' if nodes == 1 else 'leave'} {kv_bytes_per_gpu / 1e9:.1f} GB per GPU for the KV "
            f"cache after {weights_per_gpu / 1e9:.1f} GB of weights: {kv.tokens_per_group:,} tokens per attention-DP "
            f"group, short of one contextLength {context:,} sequence",
        )
    chunk = spec.engine.chunked_prefill_size or CHUNKED_PREFILL_SIZE
    swa_need = math.ceil(chunk / dp) + entry.swa_window + page
    swa_per_group = kv.swa_tokens // dp
    if swa_per_group < swa_need:
        pool = (f"{where}: the sliding-window pool holds {swa_per_group:,} tokens per attention-DP group, less "
                f"than one prefill chunk plus a window ({swa_need:,})")
        if spec.engine.chunked_prefill_size is None:
            raise _Unfit("kv", "spec.engine.swaFullTokensRatio", f"{pool}; raise swaFullTokensRatio")
        # The chunk the user set is what changed: offer the largest one whose share per attention-DP group still
        # fits beside a window, where the spec allows it.
        fits = (swa_per_group - entry.swa_window - page) * dp
        lower = f"lower it to at most {fits:,}, or " if fits >= _lowest_allowed("chunked_prefill_size") else ""
        raise _Unfit("kv", "spec.engine.chunkedPrefillSize",
                     f"chunkedPrefillSize {chunk:,} does not fit: {pool}; {lower}raise swaFullTokensRatio")
    memory = GpuMemorySplit(gpu.memory_bytes, static, weights_per_gpu, kv_bytes_per_gpu,
                            gpu.memory_bytes - static)
    return memory, kv


# Bytes per parameter of the vision and audio encoders: estimate, 2 (BF16). Released FP8 VLM checkpoints keep
# their vision towers out of the block quantisation; the card does not say how MiMo-V2.5's are stored.
ENCODER_BYTES_PER_PARAM = 2


def _dp_encoder_bytes(entry: Checkpoint, total_weights: int, attn_tp: int, dp: int) -> int:
    """What a data-parallel encoder adds per GPU: with ``--mm-enable-dp-encoder`` (set in _server_args
    for MiMo-V2.5 with attention DP) every GPU holds the whole vision and audio encoders instead of its
    attention-TP shard of them (the shard is already in the non-expert weights)."""
    if not entry.encoders or dp <= 1 or entry.attention_tp != 4:
        return 0
    params = sum(e.params for e in entry.encoders)
    sharded = total_weights * params / entry.params_total / attn_tp
    return round(params * ENCODER_BYTES_PER_PARAM - sharded)


def _kv_cache(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, attn_tp: int, dp: int,
              kv_bytes_per_gpu: int) -> KvCachePlan:
    dtype = spec.model.kv_cache_dtype
    dbytes = _KV_DTYPE_BYTES[dtype]
    ratio = spec.engine.swa_full_tokens_ratio or gpu.swa_full_tokens_ratio
    dims = entry.head_dim_qk + entry.head_dim_v
    # Each attention-TP rank keeps its share of the KV heads; fewer heads than ranks are replicated.
    heads_global = math.ceil(entry.kv_heads_global / attn_tp)
    heads_swa = math.ceil(entry.kv_heads_swa / attn_tp)
    full = entry.global_layers * heads_global * dims * dbytes
    swa = entry.swa_layers * heads_swa * dims * dbytes
    # estimate: the MTP layers' draft pool has one slot per full-pool token (SGLang's draft pool shares
    # the target's token indices); MiMo's MTP block uses sliding-window attention heads.
    draft = entry.mtp_layers * heads_swa * dims * dbytes if spec.parallelism.mtp else 0
    per_token = full + ratio * swa + draft
    page = spec.engine.page_size
    tokens_per_group = int(kv_bytes_per_gpu // per_token) // page * page
    return KvCachePlan(
        dtype=dtype,
        dtype_bytes=dbytes,
        bytes_per_token=entry.kv_values_per_token_global * dbytes,
        swa_bytes_per_sequence=entry.kv_values_per_token_swa * entry.swa_window * dbytes,
        bytes_per_token_per_gpu=per_token,
        swa_full_tokens_ratio=ratio,
        tokens_per_group=tokens_per_group,
        tokens=tokens_per_group * dp,
        swa_tokens=int(tokens_per_group * ratio) * dp,
    )


def _advice(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, context: int, unfit: _Unfit) -> str:
    """What would work instead, for a refusal of a pinned node count."""
    if unfit.kind == "structure":
        return ""
    auto = spec.model_copy(update={"parallelism": spec.parallelism.model_copy(
        update={"nodes_per_replica": None, "tensor_parallel": None, "attention_data_parallel": None,
                "expert_parallel": None})})
    hint = ""
    nodes = _fewest_nodes(auto, entry, gpu, context, weights_only=True)
    full = _fewest_nodes(auto, entry, gpu, context)
    if nodes is not None and full is not None:
        hint = f": use ≥ {nodes} nodes" if nodes == full else (
            f": use ≥ {full} nodes ({nodes} hold the weights, {full} also hold one {context:,}-token sequence)")
    return hint + _alternatives(auto, entry, gpu, context, lead=", or" if hint else ": use")


def _alternatives(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, context: int, lead: str = "; or use") -> str:
    options = []
    for other in GPU_TYPES.values():
        if other.memory_bytes <= gpu.memory_bytes:
            continue
        nodes = _fewest_nodes(spec, entry, other, context)
        if nodes is not None:
            options.append(f"{other.name} ({nodes} node{'s' if nodes > 1 else ''})")
    return f"{lead} {' or '.join(options)}" if options else ""


def _fewest_nodes(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, context: int,
                  weights_only: bool = False) -> int | None:
    for nodes in range(1, MAX_AUTO_NODES + 1):
        try:
            _layout(spec, entry, gpu, context, nodes)
        except _Unfit as unfit:
            if weights_only and unfit.kind == "kv":
                return nodes
            continue
        return nodes
    return None


# ------------------------------------------------------------------------------------ assembling


def _assemble(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, context: int, layout: _Layout,
              why_nodes: str, download_bps: float, load_bps: float) -> Plan:
    engine = spec.engine
    groups = layout.dp
    max_running = engine.max_running_requests or MAX_RUNNING_PER_GROUP * groups
    graph_bs = engine.cuda_graph_max_batch_size or min(CUDA_GRAPH_MAX_BS, max(1, max_running // groups))
    chunk = engine.chunked_prefill_size or CHUNKED_PREFILL_SIZE
    source = spec.model.source
    model_path = (source.path or source.hugging_face_id) if source else None
    model_path = model_path or entry.hf_id
    # The operator's weights cache, when it keeps this checkpoint: SGLang reads it there, never the hub.
    cached = cached_model_path(spec, entry)
    model_path = cached or model_path
    served = source.hugging_face_id if source and source.hugging_face_id else entry.hf_id
    plan_args = _PlanArgs(
        entry=entry, gpu=gpu, layout=layout, context=context, max_running=max_running, graph_bs=graph_bs,
        chunk=chunk, model_path=model_path, served=served,
    )
    ranks = tuple(tuple(_server_args(spec, plan_args, rank)) for rank in range(layout.nodes))
    env = _env(spec, plan_args)
    if cached is not None:
        env["HF_HUB_OFFLINE"] = "1"  # the weights gate holds the gang until the cache is complete
    startup = _startup(spec, entry, gpu, layout, download_bps, load_bps)
    plan = Plan(
        variant=entry.name,
        checkpoint=entry,
        gpu=gpu,
        engine=engine.type,
        model_path=model_path,
        served_model_name=served,
        precision=spec.model.precision,
        nodes_per_replica=layout.nodes,
        gpus_per_node=spec.hardware.gpus_per_node,
        tensor_parallel=layout.tp,
        expert_parallel=layout.ep,
        attention_data_parallel=layout.dp,
        moe_a2a_backend="deepep" if layout.a2a == "deepep" else "none",
        deepep_mode=spec.parallelism.deepep_mode,
        mtp=spec.parallelism.mtp,
        context_length=context,
        page_size=engine.page_size,
        chunked_prefill_size=chunk,
        max_running_requests=max_running,
        cuda_graph_max_batch_size=graph_bs,
        mem_fraction_static=layout.mem_fraction,
        attention_backend=gpu.attention_backend,
        network_mode=spec.network.mode,
        port=engine.port,
        dist_init_port=engine.dist_init_port,
        weights_bytes=weights_bytes(entry, spec.model.precision),
        memory=layout.memory,
        kv=layout.kv,
        startup=startup,
        server_args_by_rank=ranks,
        env_items=tuple(env.items()),
        launch=_launch(spec, gpu, ranks, env),
        decisions=(),
        warnings=tuple(_warnings(spec, entry, gpu, layout)),
    )
    return _with_decisions(plan, spec, why_nodes, layout)


# Every gang pod carries its launch plan in an annotation, and a pod's annotations hold at most 256 KiB in all
# (the API's limit): the launch may take most of that, the rest is the plan's own fields and the user's
# podTemplate annotations.
MAX_LAUNCH_BYTES = 192 * 1024


def _launch(spec: DeploymentSpec, gpu: GpuType, ranks: tuple[tuple[str, ...], ...],
            env: dict[str, str]) -> EngineLaunch:
    """The final per-rank launch every gang pod's worker runs; the builders add nothing to it."""
    launch = _rank_launches(spec, gpu, ranks, env)
    size = len(launch.model_dump_json())
    if size > MAX_LAUNCH_BYTES:
        engine = spec.engine
        # Named by the larger of the two: both are repeated for every rank.
        env_bytes = sum(len(e.name) + len(e.value) for e in engine.env or [])
        field = "spec.engine.env" if env_bytes >= sum(map(len, engine.extra_args or [])) else "spec.engine.extraArgs"
        raise PlanRefused(field, f"the engine's launch would take {size // 1024} KiB (spec.engine.extraArgs and "
                                 f"spec.engine.env are repeated for each of the gang's {len(launch.ranks)} ranks); "
                                 f"every gang pod carries it in an annotation, where it may take at most "
                                 f"{MAX_LAUNCH_BYTES // 1024} KiB: shorten them")
    check_pod_annotations(spec, launch, len(ranks))
    return launch


def check_pod_annotations(spec: DeploymentSpec, launch: EngineLaunch, nodes: int) -> None:
    """Refuse a launch that, with the spec's podTemplate annotations, would pass Kubernetes' limit on a gang pod's
    annotations (the launch-plan document measured by :func:`launch_plan_bytes`)."""
    document_bytes = launch_plan_bytes(launch, nodes)
    ours = len(L.ANNOTATION_LAUNCH_PLAN) + document_bytes + OPERATOR_ANNOTATIONS_RESERVE
    users = sum(len(k.encode()) + len(v.encode()) for k, v in (spec.pod_template.annotations or {}).items())
    if ours + users <= POD_ANNOTATIONS_LIMIT:
        return
    engine = spec.engine
    # As the launch plan stores them (JSON-escaped: a non-ASCII character takes six bytes), once per rank.
    env = sum(_stored(e.name) + _stored(e.value) for e in engine.env or [])
    args = sum(map(_stored, engine.extra_args or []))
    repeated = env + args
    ranks = len(launch.ranks)
    # The user's annotations when they are what passes the limit; else what the launch plan repeats for every rank.
    field = ("spec.podTemplate.annotations" if ours <= POD_ANNOTATIONS_LIMIT
             else "spec.engine.env" if env >= args else "spec.engine.extraArgs")
    raise PlanRefused(
        field,
        f"podTemplate annotations take {_kib(users)} KiB, and every gang pod also carries its launch plan "
        f"({_kib(document_bytes)} KiB, in which spec.engine.env and spec.engine.extraArgs ({_kib(repeated)} KiB) "
        f"stand once for each of the gang's {ranks} rank{'s' if ranks > 1 else ''}) and the operator's own "
        f"annotations (up to {OPERATOR_ANNOTATIONS_RESERVE // 1024} KiB): {_kib(ours + users)} KiB in all, past "
        f"Kubernetes' limit of {POD_ANNOTATIONS_LIMIT // 1024} KiB on a pod's annotations; keep podTemplate "
        f"annotations under {_kib(max(0, POD_ANNOTATIONS_LIMIT - ours))} KiB, or shorten spec.engine.env and "
        "spec.engine.extraArgs")


def _stored(text: str) -> int:
    return len(json.dumps(text)) - 2


def _kib(size: int) -> str:
    return f"{size / 1024:,.1f}"


def _rank_launches(spec: DeploymentSpec, gpu: GpuType, ranks: tuple[tuple[str, ...], ...],
                   env: dict[str, str]) -> EngineLaunch:
    program = SGLANG_PROGRAM
    extra: tuple[str, ...] = ()
    if spec.engine.type == "simulated":
        # The simulator binds its pod's own IP (pods may share a machine, as in the local cluster), models
        # the plan's GPU and runs at the spec's time compression; later flags win over SGLang's.
        program = SIMULATED_PROGRAM
        extra = ("--host", NODE_IP, "--mimo-gpu-type", gpu.name, "--mimo-speedup", repr(spec.engine.simulation.speedup),
                 # Every node runs a process of its own: each shows its own attention-DP groups' metrics.
                 "--mimo-metrics-per-node")
        if spec.network.link_speed_gbps is not None:
            # The HCAs' line rate, which SGLang's argv does not carry: a PD side's KV hand-over time.
            extra += ("--mimo-link-speed-gbps", str(spec.network.link_speed_gbps))
    elif spec.engine.launcher == "sglang-ray":
        # SGLang's own Ray engine: one driver on the head with --use-ray and rank 0's arguments (--nnodes sizes
        # its placement group); it places the schedulers of every node on the gang's Ray cluster itself.
        return EngineLaunch(mode="sglang-ray", program=list(program),
                            ranks=[RankLaunch(rank=0, argv=[*ranks[0], "--use-ray"], env=dict(env))])
    return EngineLaunch(mode="per-node", program=list(program),
                        ranks=[RankLaunch(rank=r, argv=[*args, *extra], env=dict(env)) for r, args in enumerate(ranks)])


@dataclass(frozen=True)
class _PlanArgs:
    entry: Checkpoint
    gpu: GpuType
    layout: _Layout
    context: int
    max_running: int
    graph_bs: int
    chunk: int
    model_path: str
    served: str


def _server_args(spec: DeploymentSpec, a: _PlanArgs, rank: int) -> list[str]:
    """SGLang 0.5.23 arguments of one node rank, in the order of the cookbook's MiMo command."""
    lay, entry, engine = a.layout, a.entry, spec.engine
    args = ["--model-path", a.model_path, "--served-model-name", a.served, "--trust-remote-code"]
    source = spec.model.source
    if spec.model.revision and not (source and source.path):
        args += ["--revision", spec.model.revision]
    args += ["--tp-size", str(lay.tp)]
    if lay.ep > 1:
        args += ["--ep-size", str(lay.ep)]
    if lay.dp > 1:
        args += ["--attn-dp-size", str(lay.dp)]
        if entry.attention_tp == 4:
            # The cookbook's MiMo-V2.5 DP-attention flags: vocab-parallel LM head inside each group, and the
            # multimodal encoders data-parallel.
            args.append("--enable-dp-lm-head")
            if entry.multimodal:
                args.append("--mm-enable-dp-encoder")
    if lay.a2a == "deepep":
        args += ["--moe-a2a-backend", "deepep", "--deepep-mode", spec.parallelism.deepep_mode,
                 "--moe-dense-tp-size", "1"]
    elif a.gpu.architecture == "blackwell" and spec.model.precision == "fp8":
        args += ["--moe-runner-backend", "flashinfer_trtllm"]  # cookbook: the verified B200 TP8 launch
    if lay.nodes > 1:
        args += ["--nnodes", str(lay.nodes), "--node-rank", str(rank),
                 "--dist-init-addr", f"{HEAD_ADDRESS_PLACEHOLDER}:{engine.dist_init_port}"]
    args += ["--host", "0.0.0.0", "--port", str(engine.port)]  # noqa: S104 (pods serve on their IP)
    if spec.model.precision == "fp8":
        args += ["--quantization", "fp8"]
    args += [
        "--kv-cache-dtype", _KV_DTYPE_FLAG[spec.model.kv_cache_dtype],
        "--page-size", str(engine.page_size),
        "--attention-backend", a.gpu.attention_backend,
    ]
    if entry.multimodal:
        args += ["--mm-attention-backend", a.gpu.mm_attention_backend]  # model card; cookbook §3.2 on Blackwell
    args += [
        "--mem-fraction-static", f"{lay.mem_fraction:g}",
        "--swa-full-tokens-ratio", f"{lay.kv.swa_full_tokens_ratio:g}",
        "--max-running-requests", str(a.max_running),
        "--cuda-graph-max-bs-decode", str(a.graph_bs),
        "--chunked-prefill-size", str(a.chunk),
        "--context-length", str(a.context),
    ]
    if spec.parallelism.mtp:
        args += ["--speculative-algorithm", "EAGLE", "--speculative-num-steps", str(MTP_STEPS),
                 "--speculative-eagle-topk", str(MTP_TOPK),
                 "--speculative-num-draft-tokens", str(MTP_DRAFT_TOKENS), "--enable-multi-layer-eagle"]
    args += [
        "--reasoning-parser", entry.reasoning_parser, "--tool-call-parser", "mimo",
        "--watchdog-timeout", str(engine.watchdog_timeout_seconds),
        "--model-loader-extra-config", MODEL_LOADER_EXTRA_CONFIG,
        "--enable-metrics",
    ]
    return args + list(engine.extra_args or [])


def _env(spec: DeploymentSpec, a: _PlanArgs) -> dict[str, str]:
    env: dict[str, str] = {}
    if spec.parallelism.mtp:
        env["SGLANG_ENABLE_SPEC_V2"] = "1"  # cookbook: MTP runs on the spec-v2 path
    if a.layout.a2a == "deepep":
        # The cookbook's 256, raised if the CUDA-graph batch per rank in tokens (drafts included) is larger.
        tokens = a.graph_bs * (MTP_DRAFT_TOKENS if spec.parallelism.mtp else 1)
        _check_dispatch_tokens(spec, a.graph_bs, tokens)
        env[DEEPEP_DISPATCH_ENV] = str(max(DEEPEP_DISPATCH_TOKENS, tokens))
        if a.layout.nodes > 1:
            # DeepEP's low-latency kernels post RDMA from the GPU (IBGDA) between nodes; llm-d's wide-EP
            # pods set the same. Inside one node NVSHMEM uses NVLink peer access and needs no HCA.
            env["NVSHMEM_REMOTE_TRANSPORT"] = "ibgda"
            env["NVSHMEM_IB_ENABLE_IBGDA"] = "true"
    env.update(_network_env(spec))
    if spec.model.cache.mode != "none":
        # The builders mount the cache volume at CACHE_MOUNT_PATH: weights and DeepGEMM kernels survive.
        env["HF_HUB_CACHE"] = f"{CACHE_MOUNT_PATH}/huggingface"
        env["SGLANG_DG_CACHE_DIR"] = f"{CACHE_MOUNT_PATH}/deep_gemm"
    for var in spec.engine.env or []:
        env[var.name] = var.value  # the user's word is last (cluster-specific NCCL tuning and the like)
    return env


def _check_socket_interface(spec: DeploymentSpec, nodes: int) -> None:
    """A gang of several nodes cannot bootstrap NCCL, Gloo and NVSHMEM over the loopback interface."""
    interface = spec.network.socket_interface
    if nodes < 2 or not interface or interface.startswith("^"):  # '^lo' excludes it
        return
    # NCCL reads a list of prefixes (of which 'l' and 'lo' match lo), or exact names after '='.
    names = interface.removeprefix("=").split(",")
    exact = interface.startswith("=")
    if any(n == "lo" if exact else (n and "lo".startswith(n)) for n in names):
        raise PlanRefused("spec.network.socketInterface",
                          f"socketInterface {interface!r} names the loopback interface, which does not reach the "
                          f"gang's other {nodes - 1} node(s): name the interface between the nodes (for example "
                          "eth0), or leave it unset")


# The node label every node carries, naming it alone (a gang's pods are kept apart on it: one pod per node).
HOSTNAME_LABEL = "kubernetes.io/hostname"


def _check_one_node_per_pod(spec: DeploymentSpec, nodes: int) -> None:
    """A gang of several nodes has one pod per node: a placement that names one node can never hold it."""
    if nodes < 2:
        return
    if spec.scheduling.topology_key == HOSTNAME_LABEL:
        raise PlanRefused("spec.scheduling.topologyKey",
                          f"topologyKey {HOSTNAME_LABEL} would hold the gang's {nodes} pods on one node, and a gang "
                          "has one pod per node: name the label of the nodes' InfiniBand block or switch")
    if HOSTNAME_LABEL in (spec.hardware.node_selector or {}):
        raise PlanRefused(f"spec.hardware.nodeSelector[{HOSTNAME_LABEL}]",
                          f"a nodeSelector on {HOSTNAME_LABEL} picks one node, and a gang of {nodes} nodes has one pod "
                          "per node: select the nodes by a label they share")


def _network_env(spec: DeploymentSpec) -> dict[str, str]:
    net = spec.network
    env: dict[str, str] = {}
    if net.mode == "podNetwork":
        env["NCCL_IB_DISABLE"] = "1"  # no RDMA device in the pod: NCCL over TCP sockets
    if net.ib_devices and net.mode != "podNetwork":
        env["NCCL_IB_HCA"] = ",".join(net.ib_devices)
        env["NVSHMEM_HCA_LIST"] = ",".join(net.ib_devices)
    interface = net.socket_interface or (None if net.mode == "hostNetwork" else "eth0")
    if interface:
        env["NCCL_SOCKET_IFNAME"] = interface
        env["GLOO_SOCKET_IFNAME"] = interface
        env["NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME"] = interface
    if net.ib_gid_index is not None and net.mode != "podNetwork":
        env["NCCL_IB_GID_INDEX"] = str(net.ib_gid_index)
        env["NVSHMEM_IB_GID_INDEX"] = str(net.ib_gid_index)
    return env


def node_nic_gbps(spec: DeploymentSpec) -> float:
    """A gang node's NIC total in GB/s: its HCAs (network.ibDevices, else one per GPU, as on HGX H100/H200
    and B200 nodes) × the line rate (network.linkSpeedGbps, 400 Gb/s NDR by default)."""
    hcas = len(spec.network.ib_devices or []) or spec.hardware.gpus_per_node
    return hcas * (spec.network.link_speed_gbps or DEFAULT_LINK_SPEED_GBPS) / 8


def _check_extra_args(spec: DeploymentSpec, entry: Checkpoint, context: int) -> None:
    """Refuse extraArgs that repeat or contradict the plan's own flags, or break what it sized or placed."""
    for arg in parse_extra_args(spec.engine.extra_args or []):
        refuse_owned(arg, OWNED_FLAGS, "is written by the planner; set {field} instead of passing it in extraArgs")
        if arg.flag in PD_OWNED_FLAGS:
            raise PlanRefused(arg.field, f"{arg.flag} belongs to a prefill/decode deployment, where the planner "
                                         f"writes it from {PD_OWNED_FLAGS[arg.flag]}; this deployment has no "
                                         "spec.disaggregation")
        problem = _breaks_the_plan(spec, entry, context, arg)
        if problem is not None:
            raise PlanRefused(arg.field, problem)


def refuse_owned(arg: ExtraFlag, owned: Mapping[str, str], why: str) -> None:
    """Refuse ``arg`` when it is one of the ``owned`` flags (flag → the spec field that sets it), or sets the same
    dest as one (--no-mm-enable-dp-encoder undoes --mm-enable-dp-encoder); ``why`` names ``{field}``."""
    table = flag_table()["flags"]
    flag = arg.flag if arg.flag in owned else next(
        (f for f in owned if f in table and table[f]["dest"] == arg.dest), None)
    if flag is not None:
        same = "" if flag == arg.flag else f" sets {arg.dest} as {flag} does, which"
        raise PlanRefused(arg.field, f"{arg.flag}{same} " + why.format(field=owned[flag]))


def _breaks_the_plan(spec: DeploymentSpec, entry: Checkpoint, context: int, arg: ExtraFlag) -> str | None:
    """Why a flag no spec field owns would break what the plan sized or placed, or None."""
    flag, value = arg.flag, (arg.values[0] if arg.values else "")
    gpus = spec.hardware.gpus_per_node
    if flag == "--config":
        return ("--config merges a file's arguments into SGLang's command line, past every check of this plan "
                "(the flags the planner owns among them); pass the arguments in extraArgs")
    if flag == "--disable-hybrid-swa-memory":
        every = entry.kv_values_per_token_global + entry.kv_values_per_token_swa
        return (f"--disable-hybrid-swa-memory gives {entry.name}'s {entry.swa_layers} sliding-window layers "
                f"full-length KV as well: {every:,} KV values per token instead of the global layers' "
                f"{entry.kv_values_per_token_global:,} ({every / entry.kv_values_per_token_global:.1f}×), so the "
                "KV pool holds far fewer tokens than the plan sized it for; spec.engine.swaFullTokensRatio sizes "
                "the sliding-window pool")
    if flag == "--base-gpu-id" and int(value) != 0:
        return (f"--base-gpu-id {value} starts the engine's ranks at GPU {value}, but a gang pod holds GPUs "
                f"0–{gpus - 1} and --tp-size counts every one of them: remove it")
    if flag == "--gpu-id-step" and int(value) != 1:
        return (f"--gpu-id-step {value} places the engine's ranks {value} GPUs apart, past the {gpus} GPUs a gang "
                "pod holds (--tp-size counts every one of them): remove it")
    if flag == "--max-total-tokens":
        page = spec.engine.page_size
        need = math.ceil(context / page) * page
        if human_int(value) < need:
            return (f"--max-total-tokens {value} caps each attention-DP group's KV pool below one contextLength "
                    f"{context:,} sequence, which the plan holds ({need:,} tokens in pages of {page}); raise it to "
                    f"at least {need:,}, or lower spec.model.contextLength")
    return None


def _lowest_allowed(name: str) -> int:
    """The lowest value spec.engine allows in ``name`` (its field's ``ge`` bound)."""
    bounds = [int(ge) for m in EngineSpec.model_fields[name].metadata if (ge := getattr(m, "ge", None)) is not None]
    return min(bounds, default=1)


def _check_env_names(spec: DeploymentSpec) -> None:
    """Refuse spec.engine.env entries the operator or its worker own (OPERATOR_ENV and its prefix, HF_TOKEN when
    the token comes from a Secret)."""
    for i, var in enumerate(spec.engine.env or []):
        why = OPERATOR_ENV.get(var.name)
        if var.name.startswith(OPERATOR_ENV_PREFIX):
            why = (f"{OPERATOR_ENV_PREFIX} variables are the operator's and its worker's (MIMO_NODE_RANK is a "
                   "member's node rank, MIMO_LAUNCH_PLAN where its launch plan is)")
        if var.name == TOKEN_ENV and spec.model.token_secret_ref is not None:
            why = (f"the builders set it from spec.model.tokenSecretRef ({spec.model.token_secret_ref.name}); a "
                   "value here would replace the Secret's and stand in plain text in the pod's launch plan")
        if why is not None:
            raise PlanRefused(f"spec.engine.env[{i}].name",
                              f"{var.name} is set by the operator: {why}; remove it from spec.engine.env")


def _check_dispatch_tokens(spec: DeploymentSpec, graph_bs: int, tokens: int) -> None:
    """DeepEP's dispatch buffer must hold a CUDA-graph batch per rank (drafts included), and SGLang asserts it
    holds at most DEEPEP_DISPATCH_TOKENS_MAX tokens."""
    drafts = f" × {MTP_DRAFT_TOKENS} MTP draft tokens" if spec.parallelism.mtp else ""
    batch = f"a CUDA-graph batch of {graph_bs}{drafts}"
    if tokens > DEEPEP_DISPATCH_TOKENS_MAX:
        raise PlanRefused("spec.engine.cudaGraphMaxBatchSize",
                          f"cudaGraphMaxBatchSize {graph_bs} with DeepEP needs a dispatch buffer of {tokens:,} "
                          f"tokens per rank ({batch}), and SGLang's DeepEP holds at most "
                          f"{DEEPEP_DISPATCH_TOKENS_MAX:,}: use at most "
                          f"{DEEPEP_DISPATCH_TOKENS_MAX // (tokens // graph_bs)}")
    for i, var in enumerate(spec.engine.env or []):
        if var.name != DEEPEP_DISPATCH_ENV:
            continue
        try:
            given = int(var.value)
        except ValueError:
            given = -1
        if not tokens <= given <= DEEPEP_DISPATCH_TOKENS_MAX:
            raise PlanRefused(f"spec.engine.env[{i}].value",
                              f"{DEEPEP_DISPATCH_ENV} {var.value!r} must be a whole number from {tokens} "
                              f"({batch} per rank, which DeepEP's dispatch buffer must hold) to "
                              f"{DEEPEP_DISPATCH_TOKENS_MAX:,} (SGLang's DeepEP asserts it)")


# ----------------------------------------------------------------------------------------- ports


def _check_ports(spec: DeploymentSpec, nodes: int, attention_dp: int) -> None:
    """Refuse an engine.port or distInitPort whose SGLang ports land on another port of the gang's pods: the
    launch plan refuses equal ports (the builders would fail every reconcile), and SGLang would wait for a port
    that never frees."""
    engine = spec.engine
    ours = fixed_ports(host_network=spec.network.mode == "hostNetwork")
    sglang = sglang_ports(engine_http=engine.port, dist_init=engine.dist_init_port, nodes=nodes,
                          attention_dp=attention_dp)
    by_port = [u for u in sglang if u.placed_by == "engine_http"]
    by_dist = [u for u in sglang if u.placed_by == "dist_init"]
    defaults = EngineSpec.model_fields
    # engine.port, and on one node the ports SGLang derives from it, may not meet the operator's ports.
    _refuse_clash("spec.engine.port", "engine.port", engine.port, defaults["port"].default, by_port, ours)
    # The dist-init port (on several nodes with SGLang's ports derived from it) may not meet the operator's ports,
    # nor there SGLang's HTTP port; on one node SGLang does not bind it, but the launch plan names it.
    _refuse_clash("spec.engine.distInitPort", "engine.distInitPort", engine.dist_init_port,
                  defaults["dist_init_port"].default, by_dist, ours + (by_port if nodes > 1 else []))


def _refuse_clash(field: str, name: str, value: int, default: object, moved: list[PortUse],
                  taken: list[PortUse]) -> None:
    for use in moved:
        hit = next((t for t in taken if t.port == use.port), None)
        if hit is None:
            continue
        where = "is" if use.port == value else f"puts {use.user} on {use.port}, which is"
        raise PlanRefused(field, f"{name} {value} {where} taken by {hit.user}; the ports taken in a gang pod: "
                                 f"{port_listing(taken)}; choose another {name} (the default is {default})")


def _startup(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, layout: _Layout,
             download_bps: float, load_bps: float) -> StartupEstimate:
    weights = weights_bytes(entry, spec.model.precision)
    from_path = spec.model.source is not None and spec.model.source.path is not None
    # DeepGEMM compiles its FP8 GEMMs on Hopper at first start; Blackwell's FlashInfer kernels ship built.
    jit = DEEPGEMM_JIT_SECONDS if gpu.architecture == "hopper" and spec.model.precision == "fp8" else 0.0
    graphs = 0.0 if layout.a2a == "deepep" and spec.parallelism.deepep_mode == "normal" else CUDA_GRAPH_CAPTURE_SECONDS
    return StartupEstimate(
        download_seconds=0.0 if from_path else weights / download_bps,
        # sgl-facts §7: each node reads most or all of the checkpoint, so nodes load in parallel, not faster.
        load_seconds=weights / load_bps,
        jit_seconds=jit,
        graph_capture_seconds=graphs,
        process_seconds=PROCESS_START_SECONDS,
        download_bytes_per_second=download_bps,
        load_bytes_per_second=load_bps,
        weights_cached=spec.model.cache.mode != "none" or from_path,
    )


def _warnings(spec: DeploymentSpec, entry: Checkpoint, gpu: GpuType, layout: _Layout) -> list[str]:
    out = []
    if layout.nodes > 1 and spec.network.mode == "podNetwork":
        out.append("network.mode podNetwork: traffic between nodes goes over TCP sockets, far slower than "
                   "the performance model assumes")
    if layout.a2a == "deepep" and gpu.architecture != "hopper":
        out.append("the SGLang MiMo cookbook offers DeepEP on Hopper only")
    if spec.engine.launcher == "sglang-ray" and layout.a2a == "deepep" and spec.engine.type == "sglang":
        out.append("engine.launcher sglang-ray: SGLang's Ray engine is not shown to work with DeepEP; per-node is "
                   "the launch the cookbook tests")
    if entry.attention_tp == 8 and layout.nodes > 1 and gpu.architecture == "hopper":
        out.append("SGLang's cookbook marks MiMo-V2.5-Pro on several H100/H200 nodes (TP16, DeepEP) as "
                   "not yet verified")
    if layout.a2a == "deepep" and spec.parallelism.deepep_mode == "normal":
        out.append("deepepMode normal disables CUDA graphs: decode is slower")
    if (hint := quantised_copy_hint(spec)) is not None:
        out.append(hint)
    return out + unused_fields(spec)


def unused_fields(spec: DeploymentSpec) -> list[str]:
    """Fields set where nothing reads them: said, so a setting that does nothing is not taken for one that
    works (the CRD accepts each of them alone, and the other field that makes it unused may come later)."""
    out = []
    scheduling, net, cache = spec.scheduling, spec.network, spec.model.cache
    if scheduling.queue_name and scheduling.gang_scheduler not in ("kueue", "volcano"):
        out.append(f"scheduling.queueName is not used with gangScheduler {scheduling.gang_scheduler} (only Kueue "
                   "and Volcano have queues)")
    if cache.claim_name and cache.mode != "shared-volume":
        out.append(f"model.cache.claimName is not used with cache.mode {cache.mode} (only shared-volume mounts it)")
    if net.privileged is not None and net.mode != "hostNetwork":
        out.append(f"network.privileged is not used with network.mode {net.mode} (only hostNetwork pods may run "
                   "privileged)")
    if net.ib_devices and net.mode == "podNetwork":
        out.append("network.ibDevices is not used with network.mode podNetwork (the pods have no RDMA device)")
    return out


def _one_node_offer(spec: DeploymentSpec, plan: Plan, layout: _Layout) -> list[Decision]:
    """A planner-chosen multi-node replica whose weights fit one node without DeepEP at the highest
    memFractionStatic: that one-node layout, and the context its KV cache holds (the trade-off)."""
    p = spec.parallelism
    if layout.nodes == 1 or p.nodes_per_replica is not None or p.tensor_parallel is not None:
        return []
    one = spec.model_copy(update={
        "parallelism": p.model_copy(update={"moe_a2a_backend": "none", "expert_parallel": None,
                                            "attention_data_parallel": None}),
        "engine": spec.engine.model_copy(update={"mem_fraction_static": ONE_NODE_MEM_FRACTION}),
    })
    try:  # measured with a one-page context: what the pool holds is the answer
        alt = _layout(one, plan.checkpoint, plan.gpu, spec.engine.page_size, 1)
    except _Unfit:
        return []
    fits = alt.kv.tokens_per_group
    if fits < (spec.engine.chunked_prefill_size or CHUNKED_PREFILL_SIZE):
        return []
    full = min(fits, plan.context_length)
    return [Decision(
        "one node instead", f"contextLength ≤ {fits:,}",
        f"one {plan.gpus_per_node}×{plan.gpu.name} node at TP {alt.tp}, as vLLM's verified one-node MiMo-V2.5-Pro "
        f"recipe runs: without DeepEP at memFractionStatic {ONE_NODE_MEM_FRACTION:g} each GPU holds "
        f"{alt.memory.weights / 1e9:.1f} GB of weights and {alt.memory.kv_cache / 1e9:.1f} GB of KV cache, "
        f"{fits:,} tokens in {alt.dp} attention-DP group{'s' if alt.dp > 1 else ''} "
        f"({alt.kv.tokens // full:,} sequence(s) of {full:,} tokens) against this plan's {plan.kv.tokens:,} tokens "
        f"on {plan.nodes_per_replica} nodes; ask for it with nodesPerReplica: 1, memFractionStatic: "
        f"{ONE_NODE_MEM_FRACTION:g}, moeA2ABackend: none and contextLength ≤ {fits:,}")]


def _with_decisions(plan: Plan, spec: DeploymentSpec, why_nodes: str, layout: _Layout) -> Plan:
    e, g, kv, mem = plan.checkpoint, plan.gpu, plan.kv, plan.memory
    overhead = weights_bytes(e, plan.precision) / e.params_total
    decisions = [
        Decision("GPU", f"{plan.gpus_per_node}× {g.name}",
                 f"{g.memory_bytes / 1e9:.0f} GB, {g.hbm_bytes_per_second / 1e12:.2f} TB/s, {g.architecture} → "
                 f"attention backend {g.attention_backend}"),
        Decision("weights", f"≈{plan.weights_bytes / 1e9:,.0f} GB",
                 f"{e.params_total / 1e9:,.0f}B parameters at {overhead:.3f} bytes each ({plan.precision}, "
                 "with embeddings, norms and block scales in higher precision)"),
        Decision("nodes per replica", str(plan.nodes_per_replica), why_nodes),
        *_one_node_offer(spec, plan, layout),
        Decision("tensor parallel", str(plan.tensor_parallel),
                 f"{plan.nodes_per_replica} × {plan.gpus_per_node} GPUs: --tp-size counts every GPU"),
        Decision("attention data parallel", str(plan.attention_data_parallel),
                 f"the fused QKV weights are split for attention TP {e.attention_tp}: tp / {e.attention_tp}"),
        Decision("expert all-to-all", plan.moe_a2a_backend, layout.a2a_reason),
        Decision("expert parallel", str(plan.expert_parallel),
                 "DeepEP forces ep = tp" if plan.moe_a2a_backend == "deepep" else (
                     "set by spec.parallelism.expertParallel" if spec.parallelism.expert_parallel
                     else ("experts sliced by TP on one node" if plan.expert_parallel == 1
                           else "experts spread over every GPU"))
                 + f"; {e.experts} experts, {e.experts // plan.expert_parallel} per EP rank"),
        Decision("mem-fraction-static", f"{plan.mem_fraction_static:g}",
                 "set by spec.engine.memFractionStatic" if spec.engine.mem_fraction_static else (
                     f"the cookbook's {e.name} value with DeepEP (its buffers need room)"
                     if plan.moe_a2a_backend == "deepep"
                     else f"keeps {RESERVE_BYTES_PER_GPU / 1e9:.0f} GB per GPU for activations and graphs")),
        Decision("memory per GPU",
                 f"{mem.weights / 1e9:.1f} + {mem.kv_cache / 1e9:.1f} + {mem.reserve / 1e9:.1f} GB",
                 f"weights + KV cache + reserve of {mem.total / 1e9:.0f} GB; the reserve holds activations, "
                 "CUDA graphs and communication buffers"),
        Decision("KV per token", f"{kv.bytes_per_token / 1e3:.2f} KB",
                 f"{e.global_layers} global layers × {e.kv_heads_global} KV heads × "
                 f"({e.head_dim_qk}+{e.head_dim_v}) × {kv.dtype_bytes} B ({kv.dtype}); sliding-window layers "
                 f"hold {kv.swa_bytes_per_sequence / 1e6:.1f} MB per sequence whatever its length"),
        Decision("swa-full-tokens-ratio", f"{kv.swa_full_tokens_ratio:g}",
                 "set by spec.engine.swaFullTokensRatio" if spec.engine.swa_full_tokens_ratio
                 else f"cookbook value for {g.architecture}"),
        Decision("KV cache", f"{kv.tokens:,} tokens",
                 f"{kv.tokens_per_group:,} per attention-DP group × {plan.attention_data_parallel}; "
                 f"{plan.max_concurrent_sequences():,} sequences of {plan.context_length:,} tokens at once"),
        Decision("max running requests", str(plan.max_running_requests),
                 "set by spec.engine.maxRunningRequests" if spec.engine.max_running_requests
                 else f"{MAX_RUNNING_PER_GROUP} per attention-DP group"),
        Decision("MTP", "on" if plan.mtp else "off",
                 "EAGLE with the checkpoint's 3 MTP layers; ≈3 tokens accepted per step" if plan.mtp
                 else "set by spec.parallelism.mtp"),
        Decision("start-up", f"≈{plan.startup.expected_seconds / 60:.0f} min",
                 f"time to weights {plan.startup.time_to_weights_seconds:.0f} s; cold start "
                 f"{plan.startup.cold_seconds / 60:.0f} min, warm {plan.startup.warm_seconds / 60:.0f} min"),
    ]
    return replace(plan, decisions=tuple(decisions))
