"""The plan of one replica: what the planner decided, with the numbers behind each decision.

A :class:`Plan` is plain frozen data. The builders turn it into pods, the worker runs its argv, the
performance model (``mimo_operator.perf``) reads its sizes, and ``mimoctl plan`` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from mimo_operator.cachepaths import CACHE_MOUNT_PATH
from mimo_operator.catalog import Checkpoint, GpuType, Precision
from mimo_operator.launchplan import EngineLaunch

__all__ = [
    "CACHE_MOUNT_PATH",
    "HEAD_ADDRESS_PLACEHOLDER",
    "SGLANG_PROGRAM",
    "SIMULATED_PROGRAM",
    "Decision",
    "GpuMemorySplit",
    "KvCachePlan",
    "Plan",
    "StartupEstimate",
]

# The program every gang pod runs, one process per node; the argv after it is Plan.server_args(rank, …).
# With engine "simulated" the worker runs the simulator's program instead, with the very same arguments.
# SGLang's cookbook launches MiMo with `sglang serve` (0.5.23: the `sglang` console script, sglang.cli.main).
# `--model-type llm` skips its model-type detection, which for a hub id asks the hub for model_index.json:
# engine pods read the weights cache offline, and a MiMo checkpoint is always the LLM backend.
SGLANG_PROGRAM: tuple[str, ...] = ("sglang", "serve", "--model-type", "llm")
# Stands for node rank 0's address inside --dist-init-addr until the gang's head is known. Plan.argv()
# and Plan.server_args() substitute it; the JSON of `mimoctl plan` shows it as is. The same text as the
# worker's launch-plan placeholder (mimo_worker.launchplan.HEAD_IP), so the template passes through.
HEAD_ADDRESS_PLACEHOLDER = "{head_ip}"
# engine: simulated runs the simulated engine with SGLang's arguments (plus its own, which win).
SIMULATED_PROGRAM: tuple[str, ...] = ("python3", "-m", "mimo_worker.simengine")

Engine = Literal["sglang", "simulated"]
A2ABackend = Literal["deepep", "none"]


@dataclass(frozen=True)
class Decision:
    """One line of `mimoctl plan`'s explanation: what was chosen and why."""

    topic: str
    choice: str
    reason: str


@dataclass(frozen=True)
class GpuMemorySplit:
    """How one GPU's memory is spent, in bytes. static = weights + kv_cache; reserve = total − static."""

    total: int
    static: int  # --mem-fraction-static × total: what SGLang may use for weights and the KV pools
    weights: int  # this GPU's shard: experts / TP plus the non-expert weights / attention TP
    kv_cache: int  # full-attention + sliding-window (+ MTP draft) pools
    reserve: int  # activations, CUDA graphs, NCCL and DeepEP/NVSHMEM buffers


@dataclass(frozen=True)
class KvCachePlan:
    """KV-cache sizes. Whole-model figures are for hand checks; capacities are for the whole replica."""

    dtype: Literal["bf16", "fp8"]
    dtype_bytes: int
    # Whole model, one token, global layers (what grows with context): layers × KV heads × (192+128) × bytes.
    bytes_per_token: int
    # Whole model, one sequence's full window in the sliding-window layers (what does not grow).
    swa_bytes_per_sequence: int
    # Per GPU, per full-pool token: full layers + ratio × SWA layers + MTP draft layers, head shards only.
    bytes_per_token_per_gpu: float
    swa_full_tokens_ratio: float
    tokens_per_group: int  # full-pool tokens of one attention-DP group (a sequence lives in one group)
    tokens: int  # full-pool tokens of the replica: SGLang's max_total_num_tokens summed over DP groups
    swa_tokens: int  # sliding-window pool tokens of the replica


@dataclass(frozen=True)
class StartupEstimate:
    """Seconds from a gang's pods starting to its first served request, by phase."""

    download_seconds: float  # weights from the hub into an empty cache (0 for a path source)
    load_seconds: float  # weights from local disk into GPU memory (each node reads the checkpoint)
    jit_seconds: float  # DeepGEMM's JIT compile on a first start (0 when its cache persists)
    graph_capture_seconds: float
    process_seconds: float  # processes, Ray, NCCL/NVSHMEM initialisation
    download_bytes_per_second: float
    load_bytes_per_second: float
    weights_cached: bool  # spec.model.cache keeps weights (and the DeepGEMM cache) between starts

    @property
    def time_to_weights_seconds(self) -> float:
        """Download (first start) plus load: how long until the weights are in GPU memory."""
        return self.download_seconds + self.load_seconds

    @property
    def cold_seconds(self) -> float:
        """A first start: nothing cached."""
        return (self.download_seconds + self.load_seconds + self.jit_seconds
                + self.graph_capture_seconds + self.process_seconds)

    @property
    def warm_seconds(self) -> float:
        """A start with weights and DeepGEMM kernels already on local disk."""
        return self.load_seconds + self.graph_capture_seconds + self.process_seconds

    @property
    def expected_seconds(self) -> float:
        """What one more gang costs with this spec's cache setting: the autoscaler's start-up estimate."""
        return self.warm_seconds if self.weights_cached else self.cold_seconds


@dataclass(frozen=True)
class Plan:
    """Everything about one replica that follows from the spec; identical for every replica.

    The argv of node rank ``r`` is ``plan.argv(r, head_address)``: :data:`SGLANG_PROGRAM` followed by
    ``plan.server_args(r, head_address)``. ``head_address`` is node rank 0's IP or DNS name, which only the
    gang knows at run time, so the plan keeps :data:`HEAD_ADDRESS_PLACEHOLDER` inside ``--dist-init-addr``
    and these two methods substitute it. ``env`` is the same for every rank. One-node replicas have no
    ``--dist-init-addr`` and ignore ``head_address``.
    """

    variant: str
    checkpoint: Checkpoint
    gpu: GpuType
    engine: Engine
    model_path: str
    served_model_name: str
    precision: Precision
    nodes_per_replica: int
    gpus_per_node: int
    tensor_parallel: int
    expert_parallel: int
    attention_data_parallel: int
    moe_a2a_backend: A2ABackend
    deepep_mode: str
    mtp: bool
    context_length: int
    page_size: int
    chunked_prefill_size: int
    max_running_requests: int
    cuda_graph_max_batch_size: int
    mem_fraction_static: float
    attention_backend: str
    network_mode: str
    port: int
    dist_init_port: int
    weights_bytes: int
    memory: GpuMemorySplit
    kv: KvCachePlan
    startup: StartupEstimate
    server_args_by_rank: tuple[tuple[str, ...], ...]
    env_items: tuple[tuple[str, str], ...]
    # The engine's final launch per node rank (program, argv, environment), which the builders render into
    # the gang's launch plan as is: the one translation from the spec to what runs.
    launch: EngineLaunch
    decisions: tuple[Decision, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def gpus_per_replica(self) -> int:
        return self.nodes_per_replica * self.gpus_per_node

    @property
    def attention_tensor_parallel(self) -> int:
        """GPUs per attention-DP group: the attention TP the checkpoint's QKV weights are split for."""
        return self.tensor_parallel // self.attention_data_parallel

    @property
    def env(self) -> Mapping[str, str]:
        return MappingProxyType(dict(self.env_items))

    @property
    def swa_full_tokens_ratio(self) -> float:
        return self.kv.swa_full_tokens_ratio

    def server_args(self, rank: int, head_address: str) -> list[str]:
        """SGLang's arguments for node rank ``rank`` (what ``ServerArgs`` parses)."""
        if not 0 <= rank < self.nodes_per_replica:
            raise IndexError(f"node rank {rank} outside 0..{self.nodes_per_replica - 1}")
        return [a.replace(HEAD_ADDRESS_PLACEHOLDER, head_address) for a in self.server_args_by_rank[rank]]

    def argv(self, rank: int, head_address: str) -> list[str]:
        """The whole command of node rank ``rank`` as the launch has it: a list, never a shell string."""
        args = self.launch.ranks[rank].argv
        return [*self.launch.program, *(a.replace(HEAD_ADDRESS_PLACEHOLDER, head_address) for a in args)]

    def max_concurrent_sequences(self, context_tokens: int | None = None) -> int:
        """Sequences of ``context_tokens`` (default: the context length) the replica holds at once.

        A sequence lives in one attention-DP group: it needs its page-rounded length in that group's full
        pool and one window (plus a page being written) in its sliding-window pool.
        """
        context = self.context_length if context_tokens is None else context_tokens
        groups = self.attention_data_parallel
        full_need = _round_up(max(1, context), self.page_size)
        swa_need = _round_up(min(context, self.checkpoint.swa_window), self.page_size) + self.page_size
        per_group = min(
            self.kv.tokens_per_group // full_need,
            (self.kv.swa_tokens // groups) // swa_need,
            self.max_running_requests // groups,
        )
        return max(0, per_group) * groups

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (camelCase), as `mimoctl plan -o json` prints it."""
        return {
            "variant": self.variant,
            "servedModelName": self.served_model_name,
            "modelPath": self.model_path,
            "engine": self.engine,
            "gpuType": self.gpu.name,
            "precision": self.precision,
            "nodesPerReplica": self.nodes_per_replica,
            "gpusPerNode": self.gpus_per_node,
            "gpusPerReplica": self.gpus_per_replica,
            "tensorParallel": self.tensor_parallel,
            "expertParallel": self.expert_parallel,
            "attentionDataParallel": self.attention_data_parallel,
            "attentionTensorParallel": self.attention_tensor_parallel,
            "moeA2ABackend": self.moe_a2a_backend,
            "deepepMode": self.deepep_mode,
            "mtp": self.mtp,
            "attentionBackend": self.attention_backend,
            "contextLength": self.context_length,
            "pageSize": self.page_size,
            "chunkedPrefillSize": self.chunked_prefill_size,
            "maxRunningRequests": self.max_running_requests,
            "cudaGraphMaxBatchSize": self.cuda_graph_max_batch_size,
            "memFractionStatic": self.mem_fraction_static,
            "swaFullTokensRatio": self.kv.swa_full_tokens_ratio,
            "weightsBytes": self.weights_bytes,
            "memoryPerGpu": {
                "totalBytes": self.memory.total,
                "staticBytes": self.memory.static,
                "weightsBytes": self.memory.weights,
                "kvCacheBytes": self.memory.kv_cache,
                "reserveBytes": self.memory.reserve,
            },
            "kvCacheDtype": self.kv.dtype,
            "kvBytesPerToken": self.kv.bytes_per_token,
            "swaKvBytesPerSequence": self.kv.swa_bytes_per_sequence,
            "kvCacheTokens": self.kv.tokens,
            "kvCacheTokensPerGroup": self.kv.tokens_per_group,
            "swaCacheTokens": self.kv.swa_tokens,
            "maxConcurrentSequences": self.max_concurrent_sequences(),
            "startup": {
                "downloadSeconds": round(self.startup.download_seconds, 1),
                "loadSeconds": round(self.startup.load_seconds, 1),
                "timeToWeightsSeconds": round(self.startup.time_to_weights_seconds, 1),
                "jitSeconds": round(self.startup.jit_seconds, 1),
                "graphCaptureSeconds": round(self.startup.graph_capture_seconds, 1),
                "processSeconds": round(self.startup.process_seconds, 1),
                "coldSeconds": round(self.startup.cold_seconds, 1),
                "warmSeconds": round(self.startup.warm_seconds, 1),
                "expectedSeconds": round(self.startup.expected_seconds, 1),
                "downloadBytesPerSecond": self.startup.download_bytes_per_second,
                "loadBytesPerSecond": self.startup.load_bytes_per_second,
            },
            "headAddressPlaceholder": HEAD_ADDRESS_PLACEHOLDER,
            # The whole command per node rank, index = rank, with the head placeholder left in.
            "argv": [[*self.launch.program, *r.argv] for r in self.launch.ranks],
            "env": dict(self.env_items),
            "decisions": [{"topic": d.topic, "choice": d.choice, "reason": d.reason} for d in self.decisions],
            "warnings": list(self.warnings),
        }


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple
