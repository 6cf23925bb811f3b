"""The performance model of one planned replica: how long its prefills and decode steps take.

The simulated engine (``mimo_worker.simengine``) and the autoscaling simulator both read it; it sits
beside the planner because it is arithmetic over the plan, not engine behaviour.

The model, a roofline with calibrated efficiencies
===================================================

Symbols: ``G`` GPUs in the replica, ``B`` HBM bytes/s and ``F`` dense FLOP/s of one GPU (FP8 for fp8
weights, BF16 otherwise; ``catalog.GPU_TYPES``), ``L`` layers, ``a`` the MTP accept length.

**Decode.** One forward step verifies ``t`` tokens per running sequence (``t = 4`` draft tokens with MTP,
else 1), so a batch of ``b`` sequences moves ``T = b·t`` tokens through the model:

* bytes each GPU reads = its share of the routed experts the step touches
  (``E·(1 − (1 − k/E)^T)`` of ``E`` experts per MoE layer, ``k = 8`` per token, spread over all ``G``)
  + its shard of the non-expert weights (``/ attention TP``) + its share of the KV of the batch
  (full-attention layers: all context tokens; sliding-window layers: one window per sequence);
* FLOPs = ``2 · active params · T`` + attention (``2 · heads · (192+128)`` per token per context token);
* ``roofline = max(bytes / (B · ETA_BANDWIDTH), FLOPs / (G · F · ETA_DECODE_COMPUTE))``;
* ``step = roofline + L · STEP_LATENCY_PER_LAYER + b · L · SEQUENCE_COST_PER_LAYER`` + the MTP draft
  passes (``mtp_layers · STEP_LATENCY_PER_LAYER``) + for multi-node replicas the expert all-to-all:
  per MoE layer ``2 · A2A_LATENCY`` plus the dispatched bytes (``T·k·hidden`` at 1 byte, combined at 2)
  over ``INTERNODE_BYTES_PER_SECOND`` for the share that leaves the node.

``decode_step_seconds`` returns ``step / a``: the time per *output token* of every running sequence,
because the simulated engine emits one token per decode step and folds speculative decoding in here.

**Prefill.** ``max(FLOPs / (G · F · PREFILL_MFU), weight bytes / (B · ETA_BANDWIDTH))`` + the all-to-all
+ ``L · STEP_LATENCY_PER_LAYER`` per chunk of ``chunked_prefill_size`` tokens. FLOPs include causal
attention over the cached context.

Constants and where they come from
----------------------------------

* HBM bandwidth and FLOP/s: ``catalog.GPU_TYPES`` (mimo-facts.md: H100 3.35 TB/s and 1,979 FP8 TFLOP/s,
  H200 4.8 TB/s, B200 ≈ 8 TB/s).
* ``PREFILL_MFU = 0.23``: mimo-facts.md's DeepSeek-V3 on H100 with large EP, ≈ 50k prefill tok/s per
  node: 2 × 37B active × 50k / (8 × 1,979 TFLOP/s) = 0.23.
* ``INTERNODE_BYTES_PER_SECOND = 43 GB/s``: the low end of DeepEP's measured inter-node all-to-all
  (mimo-facts.md: 43–90 GB/s); ``A2A_LATENCY`` 50 µs per dispatch or combine is an estimate.
* ``MTP_ACCEPT_LENGTH = 3.0``: the cookbook's reported accept length for MiMo-V2.5 (≈ 3; Pro 3.27 on
  GSM8K).
* ``ETA_BANDWIDTH``, ``ETA_DECODE_COMPUTE``, ``STEP_LATENCY_PER_LAYER`` and ``SEQUENCE_COST_PER_LAYER``
  are calibrated (``CALIBRATION`` below) so that the planner's own plans for the published set-ups land
  near the published output rates: MiMo-V2.5 on 8×H200 ≈ 190 tok/s at concurrency 1 and ≈ 2,100 at
  100; MiMo-V2.5-Pro on 8×B200 ≈ 101 and ≈ 1,740 (mimo-facts.md). Those rates are far below the raw
  roofline: at concurrency 1 a step costs ≈ 0.3 ms per layer of fixed latency (kernel launches,
  synchronisation, the MTP draft passes), and the published concurrency-100 rates imply ≈ 20 µs per
  sequence per layer (sampling, scheduling, speculative verification, MoE imbalance; the benchmark's
  context lengths are not given, 4,096 tokens is assumed). ``tests/unit/test_perf.py`` prints modelled
  against published figures and fails outside ±25 %.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from mimo_operator.catalog import weights_bytes
from mimo_operator.plan import Plan

__all__ = [
    "CALIBRATION",
    "CALIBRATION_ENV",
    "MTP_ACCEPT_LENGTH",
    "Calibration",
    "ReplicaPerformance",
    "load_calibration",
    "performance_of",
]

ETA_BANDWIDTH = 0.7  # calibrated: achieved share of HBM bandwidth in decode GEMMs
ETA_DECODE_COMPUTE = 0.3  # calibrated: small-batch MoE GEMMs are far from peak
PREFILL_MFU = 0.23  # DeepSeek-V3 prefill figure, see the module docstring
STEP_LATENCY_PER_LAYER = 0.30e-3  # calibrated, seconds per layer per forward step
SEQUENCE_COST_PER_LAYER = 21e-6  # calibrated, seconds per running sequence per layer per step
A2A_LATENCY = 50e-6  # estimate: one DeepEP low-latency dispatch or combine across nodes
INTERNODE_BYTES_PER_SECOND = 43e9  # mimo-facts.md: DeepEP inter-node all-to-all 43–90 GB/s, low end
MTP_ACCEPT_LENGTH = 3.0
MTP_VERIFY_TOKENS = 4  # --speculative-num-draft-tokens
CALIBRATION_CONTEXT = 4096

# (variant, GPU type, concurrency, published output tok/s): mimo-facts.md "Published serving figures".
CALIBRATION: tuple[tuple[str, str, int, float], ...] = (
    ("MiMo-V2.5", "H200-141GB", 1, 190.0),
    ("MiMo-V2.5", "H200-141GB", 100, 2100.0),
    ("MiMo-V2.5-Pro", "B200-180GB", 1, 101.0),
    ("MiMo-V2.5-Pro", "B200-180GB", 100, 1740.0),
)


CALIBRATION_ENV = "MIMO_PERF_CALIBRATION"  # path of a calibration file (bench/gpu/layer_timings.py --calibration)


@dataclass(frozen=True)
class Calibration:
    """Measured / modelled ratios per (layer kind, phase, precision), from bench/gpu/layer_timings.py.

    Kinds are ``moe`` and ``attention``, phases ``decode`` and ``prefill``. A factor multiplies the roofline time
    of its kind's share of a step; a missing factor is 1 (attention falls back to its BF16 factor, the only
    precision the bench times it in).
    """

    factors: tuple[tuple[str, str, str, float], ...] = ()

    def factor(self, kind: str, phase: str, precision: str) -> float:
        found = {(k, ph, pr): f for k, ph, pr, f in self.factors}
        return found.get((kind, phase, precision), found.get((kind, phase, "bf16"), 1.0) if kind == "attention"
                         else 1.0)


def load_calibration(path: str | Path) -> Calibration:
    """A calibration file: ``{"factors": [{kind, phase, precision, factor}]}``, or layer_timings' raw JSON (its
    rows' median ratio per kind, phase and precision)."""
    data = json.loads(Path(path).read_text())
    if "factors" in data:
        return Calibration(tuple(sorted((f["kind"], f["phase"], f["precision"], float(f["factor"]))
                                        for f in data["factors"])))
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for row in data.get("rows", []):
        kind = "moe" if row["what"].startswith("moe") else row["what"]  # layer_timings' "moe-shard"
        ratios.setdefault((kind, row["phase"], row["precision"]), []).append(float(row["ratio"]))
    return Calibration(tuple(sorted((*key, statistics.median(v)) for key, v in ratios.items())))


def _calibration_from_env() -> Calibration:
    path = os.environ.get(CALIBRATION_ENV)
    return load_calibration(path) if path else Calibration()


@dataclass(frozen=True)
class ReplicaPerformance:
    """Capacities and step times of one planned replica (the whole gang, all attention-DP groups)."""

    model_name: str  # served model name (the HF id)
    gpus: int  # GPUs in the replica
    max_total_num_tokens: int  # full-attention KV pool capacity in tokens, summed over attention-DP groups
    swa_max_tokens: int  # sliding-window pool capacity in tokens, summed over attention-DP groups
    swa_window: int
    max_running_requests: int
    context_length: int
    chunked_prefill_size: int
    page_size: int
    # How the step times are computed (from the plan; see the module docstring).
    nodes: int = 1
    attention_data_parallel: int = 1
    hbm_bytes_per_second: float = 0.0
    flops: float = 0.0
    layers: int = 0
    moe_layers: int = 0
    experts: int = 1
    experts_per_token: int = 1
    hidden_size: int = 0
    attention_heads: int = 0
    head_dims: int = 0
    global_layers: int = 0
    swa_layers: int = 0
    params_active: int = 0
    expert_bytes_each: float = 0.0  # one routed expert of one layer
    non_expert_bytes_per_gpu: float = 0.0
    weights_bytes_per_gpu: float = 0.0
    kv_bytes_per_token_per_gpu: float = 0.0  # full-attention layers, this GPU's head shard
    swa_bytes_per_token_per_gpu: float = 0.0
    mtp: bool = False
    mtp_layers: int = 0
    precision: str = "fp8"
    calibration: Calibration = Calibration()

    def _f(self, kind: str, phase: str) -> float:
        return self.calibration.factor(kind, phase, self.precision)

    @property
    def decode_tokens_per_step(self) -> float:
        """Output tokens one forward step yields per sequence: the MTP accept length, or 1."""
        return MTP_ACCEPT_LENGTH if self.mtp else 1.0

    def forward_step_seconds(self, batch_size: int, kv_tokens: int) -> float:
        """One real decode forward pass (verifying the MTP drafts when MTP is on)."""
        b = max(0, batch_size)
        if b == 0:
            return 0.0
        verify = MTP_VERIFY_TOKENS if self.mtp else 1
        tokens = b * verify
        touched = self.experts * (1 - (1 - self.experts_per_token / self.experts) ** tokens)
        expert_read = self.moe_layers * touched * self.expert_bytes_each / self.gpus
        groups = self.attention_data_parallel
        kv_read = (max(0, kv_tokens) * self.kv_bytes_per_token_per_gpu
                   + b * min(self.swa_window, self.context_length) * self.swa_bytes_per_token_per_gpu) / groups
        moe_f, attn_f = self._f("moe", "decode"), self._f("attention", "decode")
        read = expert_read * moe_f + (self.non_expert_bytes_per_gpu + kv_read) * attn_f
        memory_time = read / (self.hbm_bytes_per_second * ETA_BANDWIDTH)
        attention_flops = 2 * self.attention_heads * self.head_dims * verify * (
            self.global_layers * max(0, kv_tokens) + self.swa_layers * b * self.swa_window)
        flops = 2 * self.params_active * tokens * moe_f + attention_flops * attn_f
        compute_time = flops / (self.gpus * self.flops * ETA_DECODE_COMPUTE)
        fixed = (self.layers + (self.mtp_layers if self.mtp else 0)) * STEP_LATENCY_PER_LAYER
        per_sequence = b * self.layers * SEQUENCE_COST_PER_LAYER
        return max(memory_time, compute_time) + fixed + per_sequence + self._all_to_all_seconds(tokens)

    def decode_step_seconds(self, batch_size: int, kv_tokens: int) -> float:
        """Time per output token of each of ``batch_size`` running sequences holding ``kv_tokens`` in all.

        With MTP one forward step yields ``MTP_ACCEPT_LENGTH`` tokens per sequence, so this is the forward
        step divided by it: the simulated engine emits one token per decode step.
        """
        return self.forward_step_seconds(batch_size, kv_tokens) / self.decode_tokens_per_step

    def prefill_seconds(self, new_tokens: int, cached_context_tokens: int = 0) -> float:
        """One prefill of ``new_tokens`` after ``cached_context_tokens`` already in the KV cache."""
        n = max(0, new_tokens)
        if n == 0:
            return 0.0
        cached = max(0, cached_context_tokens)
        per_token_context = self.global_layers * (cached + n / 2) + self.swa_layers * min(
            self.swa_window, cached + n / 2)
        flops = (2 * self.params_active * n * self._f("moe", "prefill")
                 + 2 * self.attention_heads * self.head_dims * n * per_token_context * self._f("attention", "prefill"))
        compute_time = flops / (self.gpus * self.flops * PREFILL_MFU)
        memory_time = self.weights_bytes_per_gpu / (self.hbm_bytes_per_second * ETA_BANDWIDTH)
        chunks = math.ceil(n / self.chunked_prefill_size)
        fixed = chunks * self.layers * STEP_LATENCY_PER_LAYER
        return max(compute_time, memory_time) + fixed + self._all_to_all_seconds(n)

    def decode_tokens_per_second(self, concurrency: int, context_tokens: int) -> float:
        """Steady-state output tok/s of the replica with ``concurrency`` sequences of ``context_tokens``."""
        batch = min(max(0, concurrency), self.max_running_requests, self._fits(context_tokens))
        if batch == 0:
            return 0.0
        return batch / self.decode_step_seconds(batch, batch * context_tokens)

    def _fits(self, context_tokens: int) -> int:
        pages = math.ceil(max(1, context_tokens) / self.page_size) * self.page_size
        per_group = self.max_total_num_tokens // self.attention_data_parallel // pages
        return per_group * self.attention_data_parallel

    def _all_to_all_seconds(self, tokens: int) -> float:
        if self.nodes <= 1:
            return 0.0  # on NVLink the expert exchange hides inside the per-layer latency
        leaving = (self.nodes - 1) / self.nodes
        # FP8 dispatch (1 byte per value) and BF16 combine (2 bytes), per routed copy of each token.
        per_gpu = tokens * self.experts_per_token * self.hidden_size * 3 / self.gpus
        return self.moe_layers * (2 * A2A_LATENCY + per_gpu * leaving / INTERNODE_BYTES_PER_SECOND)


def performance_of(plan: Plan, calibration: Calibration | None = None) -> ReplicaPerformance:
    """The performance model of one replica of ``plan``, calibrated by ``calibration`` or the file named by
    ``$MIMO_PERF_CALIBRATION`` (none: the roofline as documented above)."""
    entry, gpu = plan.checkpoint, plan.gpu
    total = weights_bytes(entry, plan.precision)
    expert_bytes = total * entry.expert_params / entry.params_total
    attn_tp = plan.attention_tensor_parallel
    dims = entry.head_dim_qk + entry.head_dim_v
    dbytes = plan.kv.dtype_bytes
    return ReplicaPerformance(
        model_name=plan.served_model_name,
        gpus=plan.gpus_per_replica,
        max_total_num_tokens=plan.kv.tokens,
        swa_max_tokens=plan.kv.swa_tokens,
        swa_window=entry.swa_window,
        max_running_requests=plan.max_running_requests,
        context_length=plan.context_length,
        chunked_prefill_size=plan.chunked_prefill_size,
        page_size=plan.page_size,
        nodes=plan.nodes_per_replica,
        attention_data_parallel=plan.attention_data_parallel,
        hbm_bytes_per_second=gpu.hbm_bytes_per_second,
        flops=gpu.flops(plan.precision),
        layers=entry.layers,
        moe_layers=entry.moe_layers,
        experts=entry.experts,
        experts_per_token=entry.experts_per_token,
        hidden_size=entry.hidden_size,
        attention_heads=entry.attention_heads,
        head_dims=dims,
        global_layers=entry.global_layers,
        swa_layers=entry.swa_layers,
        params_active=entry.params_active,
        expert_bytes_each=expert_bytes / (entry.moe_layers * entry.experts),
        non_expert_bytes_per_gpu=(total - expert_bytes) / attn_tp,
        weights_bytes_per_gpu=plan.memory.weights,
        kv_bytes_per_token_per_gpu=entry.global_layers * math.ceil(entry.kv_heads_global / attn_tp) * dims * dbytes,
        swa_bytes_per_token_per_gpu=entry.swa_layers * math.ceil(entry.kv_heads_swa / attn_tp) * dims * dbytes,
        mtp=plan.mtp,
        mtp_layers=entry.mtp_layers,
        precision=plan.precision,
        calibration=calibration if calibration is not None else _calibration_from_env(),
    )
