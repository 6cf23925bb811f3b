"""The model catalog and the GPU table: frozen facts the planner and the performance model compute from.

Every checkpoint number traces to the MiMo-V2.5 model card as summarised in ``shared/mimo-facts.md``
("The four checkpoints" table, cited below as *facts:<row>*) or to ``shared/reference/sglang-mimo-facts.md``
§0 (*sgl-facts §0*). Numbers that no source gives are marked **estimate** with the reasoning beside them.
GPU figures trace to ``mimo-facts.md`` "Hardware figures for the simulated engine's roofline" where it has
them and otherwise to NVIDIA's published datasheets (named per entry).

Units: bytes and bytes per second are decimal (1 GB = 1e9 bytes), as the card and the facts page use them;
TFLOP/s are dense (no 2:4 sparsity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CHECKPOINTS",
    "GPU_TYPES",
    "Architecture",
    "Checkpoint",
    "Encoder",
    "GpuType",
    "Modality",
    "Precision",
    "checkpoint",
    "gpu_type",
    "weights_bytes",
]

Precision = Literal["fp8", "bf16"]
Architecture = Literal["hopper", "blackwell"]
Modality = Literal["text", "image", "video", "audio"]

# Bytes per parameter, and the share of a checkpoint kept in higher precision (embeddings, norms, FP8
# block scales). facts "Arithmetic": "V2.5 FP8 ≈ 0.31 TB, Pro FP8 ≈ 1.02–1.05 TB, Pro BF16 ≈ 2.05 TB".
# 3 % over 1 byte/param puts Pro FP8 at ≈ 1,051 GB (the "≈ 1,050 GB") and V2.5 at ≈ 319 GB;
# 0.5 % over 2 bytes/param puts Pro BF16 at ≈ 2,050 GB.
_BYTES_PER_PARAM: dict[Precision, float] = {"fp8": 1.0, "bf16": 2.0}
_PRECISION_OVERHEAD: dict[Precision, float] = {"fp8": 1.03, "bf16": 1.005}


@dataclass(frozen=True)
class Encoder:
    """A modality encoder inside a multimodal checkpoint (its weights are part of ``params_total``)."""

    name: str
    modalities: tuple[Modality, ...]
    params: int


@dataclass(frozen=True)
class Checkpoint:
    """One MiMo-V2.5 checkpoint: architecture numbers the planner's memory and KV arithmetic needs."""

    name: str
    hf_id: str
    params_total: int
    params_active: int
    layers: int
    dense_layers: int
    moe_layers: int
    global_layers: int
    swa_layers: int
    attention_heads: int
    kv_heads_global: int
    kv_heads_swa: int
    head_dim_qk: int
    head_dim_v: int
    hidden_size: int
    experts: int
    experts_per_token: int
    moe_intermediate: int
    dense_intermediate: int
    swa_window: int
    mtp_layers: int
    mtp_params: int
    # The attention TP the fused qkv_proj weights are interleaved for: attention-TP per DP group must be
    # exactly this (sgl-facts §1.5, PR #23811: "fused qkv_proj checkpoint is TP=4-interleaved").
    attention_tp: int
    max_context: int
    modalities: tuple[Modality, ...]
    released_precision: Precision
    base: bool
    # SGLang launch values that differ by checkpoint, each from the launch command its publisher gives.
    # --reasoning-parser: SGLang 0.5.23's `mimo` parser separates reasoning only when a request sets
    # enable_thinking; `qwen3` (same <think> tokens) separates it unless a request turns thinking off.
    reasoning_parser: str = "mimo"
    # --mem-fraction-static with DeepEP: the rest of each GPU holds DeepEP/NVSHMEM buffers and graphs.
    deepep_mem_fraction: float = 0.7
    # The vision and audio encoders of a multimodal checkpoint (the simulated engine prices media with them).
    encoders: tuple[Encoder, ...] = ()

    @property
    def expert_params(self) -> int:
        """Routed-expert parameters: MoE layers × experts × (gate, up, down) × hidden × MoE intermediate."""
        return self.moe_layers * self.experts * 3 * self.hidden_size * self.moe_intermediate

    @property
    def non_expert_params(self) -> int:
        """Everything else (attention, the dense layer, embeddings, MTP, encoders): total − experts."""
        return self.params_total - self.expert_params

    @property
    def kv_values_per_token_global(self) -> int:
        """K and V values one token adds in the global (full-attention) layers; grows with context."""
        return self.global_layers * self.kv_heads_global * (self.head_dim_qk + self.head_dim_v)

    @property
    def kv_values_per_token_swa(self) -> int:
        """K and V values one token occupies in the sliding-window layers while inside the window."""
        return self.swa_layers * self.kv_heads_swa * (self.head_dim_qk + self.head_dim_v)

    @property
    def multimodal(self) -> bool:
        return self.modalities != ("text",)


def _mimo_v25(*, base: bool) -> Checkpoint:
    return Checkpoint(
        name="MiMo-V2.5-Base" if base else "MiMo-V2.5",
        hf_id="XiaomiMiMo/MiMo-V2.5-Base" if base else "XiaomiMiMo/MiMo-V2.5",  # facts: Hugging Face ids
        params_total=310_000_000_000,  # facts: parameters total / active "310B / 15B"
        params_active=15_000_000_000,
        layers=48,  # facts: layers "48 (1 dense + 47 MoE)"
        dense_layers=1,
        moe_layers=47,
        global_layers=9,  # facts: full (global) attention layers "9"
        swa_layers=39,  # facts: sliding-window (SWA) layers "39"
        attention_heads=64,  # facts: attention heads "64"
        kv_heads_global=8,  # facts: KV heads "8 on global layers, 4 on SWA layers"
        kv_heads_swa=4,
        head_dim_qk=192,  # facts: head dim QK / V "192 / 128"
        head_dim_v=128,
        hidden_size=4096,  # facts: hidden size "4096"
        experts=256,  # facts: routed experts / per token "256 / 8"
        experts_per_token=8,
        moe_intermediate=2048,  # facts: MoE intermediate / dense intermediate "2048 / 16384"
        dense_intermediate=16384,
        swa_window=128,  # facts: SWA window "128 tokens, learnable attention-sink bias"
        mtp_layers=3,  # facts: MTP "3 layers, 329M params, in the same checkpoint"
        mtp_params=329_000_000,
        attention_tp=4,  # facts: "fused QKV weights are split for a fixed attention TP: 4 for MiMo-V2.5"
        # facts: Hugging Face ids "MiMo-V2.5 (1M ctx), MiMo-V2.5-Base (256K ctx)"
        max_context=262_144 if base else 1_048_576,
        # facts: modalities "text, image, video, audio (ViT 729M, audio encoder 261M)"; the card lists the
        # Base checkpoint under the same column, so it carries the same encoders.
        modalities=("text", "image", "video", "audio"),
        released_precision="fp8",  # facts: released weights "FP8 (E4M3, 128×128 blocks)"
        base=base,
        # The model card's SGLang command: `--reasoning-parser qwen3 --tool-call-parser mimo`; the model
        # thinks by default (SGLang cookbook MiMo-V2.5.mdx §4.2 "Thinking Mode (default)").
        reasoning_parser="qwen3",
        # SGLang cookbook (docs_new/src/snippets/autoregressive/mimo-v25-deployment.jsx): V2.5 on Hopper
        # `--mem-fraction-static 0.65`.
        deepep_mem_fraction=0.65,
        # facts: modalities "text, image, video, audio (ViT 729M, audio encoder 261M)": the ViT encodes
        # images and video frames.
        encoders=(
            Encoder("vision", ("image", "video"), 729_000_000),
            Encoder("audio", ("audio",), 261_000_000),
        ),
    )


def _mimo_v25_pro(*, base: bool) -> Checkpoint:
    return Checkpoint(
        name="MiMo-V2.5-Pro-Base" if base else "MiMo-V2.5-Pro",
        hf_id="XiaomiMiMo/MiMo-V2.5-Pro-Base" if base else "XiaomiMiMo/MiMo-V2.5-Pro",  # facts: ids
        params_total=1_020_000_000_000,  # facts: parameters total / active "1.02T / 42B"
        params_active=42_000_000_000,
        layers=70,  # facts: layers "70 (1 dense + 69 MoE)"
        dense_layers=1,
        moe_layers=69,
        global_layers=10,  # facts: full (global) attention layers "10"
        swa_layers=60,  # facts: sliding-window (SWA) layers "60"
        attention_heads=128,  # facts: attention heads "128"
        kv_heads_global=8,  # facts: KV heads "8"
        kv_heads_swa=8,
        head_dim_qk=192,  # facts: head dim QK / V "192 / 128"
        head_dim_v=128,
        hidden_size=6144,  # facts: hidden size "6144"
        experts=384,  # facts: routed experts / per token "384 / 8"
        experts_per_token=8,
        moe_intermediate=2048,  # facts: MoE intermediate / dense intermediate "2048 / 16384"
        dense_intermediate=16384,
        swa_window=128,  # facts: SWA window "128 tokens"
        mtp_layers=3,  # facts: MTP "3 layers, in the same checkpoint"
        # estimate: the card gives no size; V2.5's 329M scaled by hidden² (6144² / 4096² = 2.25).
        mtp_params=740_000_000,
        attention_tp=8,  # facts: "… 4 for MiMo-V2.5, 8 for Pro"
        max_context=262_144 if base else 1_048_576,  # facts: "(1M ctx)", "-Base (256K ctx)"
        modalities=("text",),  # facts: modalities "text"
        released_precision="fp8",  # facts: released weights "FP8"
        base=base,
        # SGLang cookbook (mimo-v25-deployment.jsx), Pro: `--reasoning-parser mimo --tool-call-parser mimo`,
        # and on H100/H200 `--mem-fraction-static 0.7`.
        reasoning_parser="mimo",
        deepep_mem_fraction=0.7,
    )


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (_mimo_v25(base=False), _mimo_v25(base=True), _mimo_v25_pro(base=False), _mimo_v25_pro(base=True))
}


def checkpoint(variant: str) -> Checkpoint:
    """The catalog entry of a variant name (``MiMo-V2.5-Pro``); KeyError names the known ones."""
    try:
        return CHECKPOINTS[variant]
    except KeyError:
        raise KeyError(f"unknown MiMo variant {variant!r}; known: {', '.join(CHECKPOINTS)}") from None


def weights_bytes(entry: Checkpoint, precision: Precision) -> int:
    """Bytes of the whole checkpoint at a precision, including what is kept in higher precision."""
    return round(entry.params_total * _BYTES_PER_PARAM[precision] * _PRECISION_OVERHEAD[precision])


@dataclass(frozen=True)
class GpuType:
    """One GPU model: what the planner fits weights and KV into and what the roofline reads."""

    name: str
    memory_bytes: int
    hbm_bytes_per_second: float
    fp8_flops: float  # dense FP8 FLOP/s
    bf16_flops: float  # dense BF16 FLOP/s
    architecture: Architecture
    # NVLink bandwidth per GPU (one direction): the intra-node all-to-all ceiling.
    nvlink_bytes_per_second: float
    source: str

    @property
    def attention_backend(self) -> str:
        # sgl-facts §1.5: fa3 on Hopper; fa4 on Blackwell, where the asymmetric 192/128 K/V head dims
        # break trtllm_mha.
        return "fa3" if self.architecture == "hopper" else "fa4"

    @property
    def mm_attention_backend(self) -> str:
        # SGLang cookbook MiMo-V2.5.mdx §3.2: the vision encoder asks for FlashAttention-3, which SGLang
        # refuses on Blackwell, where it takes fa4; the model card's Hopper command passes fa3.
        return "fa3" if self.architecture == "hopper" else "fa4"

    @property
    def swa_full_tokens_ratio(self) -> float:
        # facts "SGLang rules": cookbook uses 0.3 on H100/H200, 0.1 on B200 (more HBM per GPU, so the
        # small SWA pool still covers the window of every running request).
        return 0.3 if self.architecture == "hopper" else 0.1

    def flops(self, precision: Precision) -> float:
        return self.fp8_flops if precision == "fp8" else self.bf16_flops


_TB = 1e12
_NVLINK4 = 900e9 / 2  # facts: "NVLink 4: 900 GB/s per GPU" (both directions together)
_NVLINK5 = 1800e9 / 2  # NVIDIA Blackwell datasheet: NVLink 5, 1.8 TB/s per GPU

GPU_TYPES: dict[str, GpuType] = {
    g.name: g
    for g in (
        GpuType(
            name="H100-80GB",
            memory_bytes=80_000_000_000,  # facts: "H100-80GB 640 GB" per 8-GPU node
            hbm_bytes_per_second=3.35 * _TB,  # facts: "H100 SXM: 80 GB HBM3 at 3.35 TB/s"
            fp8_flops=1979 * _TB,  # facts: "≈ 1,979 dense FP8 TFLOP/s"
            bf16_flops=989 * _TB,  # NVIDIA H100 SXM datasheet: 1,979 TFLOP/s BF16 with sparsity → 989 dense
            architecture="hopper",
            nvlink_bytes_per_second=_NVLINK4,
            source="mimo-facts.md hardware figures; BF16 from the NVIDIA H100 datasheet",
        ),
        GpuType(
            name="H200-141GB",
            memory_bytes=141_000_000_000,  # facts: "H200-141GB 1,128 GB" per node
            hbm_bytes_per_second=4.8 * _TB,  # facts: "H200: 141 GB at 4.8 TB/s, same compute"
            fp8_flops=1979 * _TB,
            bf16_flops=989 * _TB,
            architecture="hopper",
            nvlink_bytes_per_second=_NVLINK4,
            source="mimo-facts.md hardware figures",
        ),
        GpuType(
            name="H20-96GB",
            memory_bytes=96_000_000_000,  # NVIDIA HGX H20: 96 GB HBM3
            hbm_bytes_per_second=4.0 * _TB,  # 4.0 TB/s
            fp8_flops=296 * _TB,  # 296 TFLOP/s FP8 dense
            bf16_flops=148 * _TB,  # 148 TFLOP/s BF16 dense
            architecture="hopper",
            nvlink_bytes_per_second=_NVLINK4,
            source="NVIDIA HGX H20 product brief (not in mimo-facts.md)",
        ),
        GpuType(
            name="B200-180GB",
            memory_bytes=180_000_000_000,  # facts: "B200-180GB 1,440 GB" per node
            hbm_bytes_per_second=8.0 * _TB,  # facts: "B200: 180 GB at ≈ 8 TB/s"
            fp8_flops=4500 * _TB,  # NVIDIA HGX B200: 72 PFLOP/s FP8 sparse per 8 GPUs → 4.5 dense per GPU
            bf16_flops=2250 * _TB,  # 36 PFLOP/s BF16 sparse per 8 GPUs → 2.25 dense per GPU
            architecture="blackwell",
            nvlink_bytes_per_second=_NVLINK5,
            source="mimo-facts.md memory and bandwidth; FLOP/s from the NVIDIA HGX B200 datasheet",
        ),
        GpuType(
            name="B300-288GB",
            memory_bytes=288_000_000_000,  # NVIDIA HGX B300: 288 GB HBM3e per GPU
            hbm_bytes_per_second=8.0 * _TB,  # 8 TB/s
            fp8_flops=4500 * _TB,  # Blackwell Ultra raises FP4, not FP8: same dense FP8 as B200
            bf16_flops=2250 * _TB,
            architecture="blackwell",
            nvlink_bytes_per_second=_NVLINK5,
            source="NVIDIA HGX B300 datasheet (not in mimo-facts.md)",
        ),
    )
}

# What a GPU given only by its memory (spec.hardware.gpuMemory) is assumed to do per architecture: the
# slowest GPU of that architecture in the table above, so that estimates err on the safe side.
_REFERENCE_GPU: dict[Architecture, str] = {"hopper": "H100-80GB", "blackwell": "B200-180GB"}


def gpu_type(name: str | None, *, memory_bytes: int | None = None, architecture: Architecture = "hopper") -> GpuType:
    """A GPU from the table by name, or a custom one from its memory and architecture.

    A custom GPU gets the bandwidth and FLOP/s of its architecture's reference GPU (H100 for Hopper, B200
    for Blackwell): only its memory is known.
    """
    if name is not None:
        try:
            return GPU_TYPES[name]
        except KeyError:
            raise KeyError(f"unknown GPU type {name!r}; known: {', '.join(GPU_TYPES)}") from None
    if memory_bytes is None:
        raise ValueError("a GPU needs either a type name or its memory")
    reference = GPU_TYPES[_REFERENCE_GPU[architecture]]
    gib = memory_bytes / 1e9
    return GpuType(
        name=f"custom-{gib:.0f}GB-{architecture}",
        memory_bytes=memory_bytes,
        hbm_bytes_per_second=reference.hbm_bytes_per_second,
        fp8_flops=reference.fp8_flops,
        bf16_flops=reference.bf16_flops,
        architecture=architecture,
        nvlink_bytes_per_second=reference.nvlink_bytes_per_second,
        source=f"custom memory; speed of the {reference.name}",
    )
