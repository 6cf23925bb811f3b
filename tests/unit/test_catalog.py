"""The catalog against the hand arithmetic of shared/mimo-facts.md ("Arithmetic")."""

from __future__ import annotations

import pytest

from mimo_operator.catalog import CHECKPOINTS, GPU_TYPES, Checkpoint, Precision, checkpoint, gpu_type, weights_bytes

V25 = checkpoint("MiMo-V2.5")
PRO = checkpoint("MiMo-V2.5-Pro")


def test_the_four_checkpoints_and_their_hub_ids() -> None:
    assert {name: c.hf_id for name, c in CHECKPOINTS.items()} == {
        "MiMo-V2.5": "XiaomiMiMo/MiMo-V2.5",
        "MiMo-V2.5-Base": "XiaomiMiMo/MiMo-V2.5-Base",
        "MiMo-V2.5-Pro": "XiaomiMiMo/MiMo-V2.5-Pro",
        "MiMo-V2.5-Pro-Base": "XiaomiMiMo/MiMo-V2.5-Pro-Base",
    }


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_layer_counts_add_up(name: str) -> None:
    c = CHECKPOINTS[name]
    assert c.global_layers + c.swa_layers == c.layers
    assert c.dense_layers + c.moe_layers == c.layers


def test_base_checkpoints_have_a_256k_context_and_the_others_1m() -> None:
    assert {n: c.max_context for n, c in CHECKPOINTS.items()} == {
        "MiMo-V2.5": 1_048_576, "MiMo-V2.5-Base": 262_144,
        "MiMo-V2.5-Pro": 1_048_576, "MiMo-V2.5-Pro-Base": 262_144,
    }


def test_attention_tp_the_fused_qkv_is_split_for() -> None:
    assert (V25.attention_tp, PRO.attention_tp) == (4, 8)


def test_kv_values_per_token_in_the_global_layers() -> None:
    # mimo-facts: 9 × 8 × 320 = 23,040 and 10 × 8 × 320 = 25,600.
    assert V25.kv_values_per_token_global == 23_040
    assert PRO.kv_values_per_token_global == 25_600


def test_sliding_window_values_per_sequence() -> None:
    # mimo-facts: 39 × 128 × 4 × 320 = 6.39M and 60 × 128 × 8 × 320 = 19.7M values per sequence.
    assert V25.kv_values_per_token_swa * V25.swa_window == 6_389_760
    assert PRO.kv_values_per_token_swa * PRO.swa_window == 19_660_800


def test_hybrid_attention_saves_the_card_s_factor_over_all_global_layers() -> None:
    # mimo-facts: all-global would be 7.0× more for Pro (70 × 8 × 320 = 179,200 values/token), 5.3× for V2.5.
    pro_all_global = PRO.layers * PRO.kv_heads_global * (PRO.head_dim_qk + PRO.head_dim_v)
    v25_all_global = V25.layers * V25.kv_heads_global * (V25.head_dim_qk + V25.head_dim_v)
    assert pro_all_global == 179_200
    assert pro_all_global / PRO.kv_values_per_token_global == pytest.approx(7.0)
    assert v25_all_global / V25.kv_values_per_token_global == pytest.approx(5.33, abs=0.01)


def test_a_1m_token_pro_sequence_needs_25_6_gb_of_fp8_global_kv() -> None:
    assert PRO.kv_values_per_token_global * 1 * 1_000_000 == 25_600_000_000


@pytest.mark.parametrize(
    ("entry", "precision", "low_gb", "high_gb"),
    [
        (V25, "fp8", 295, 330),  # "≈ 0.31 TB (third-party figure for the download: ≈ 295 GB)"
        (PRO, "fp8", 1020, 1050.6),  # "Pro FP8 ≈ 1.02–1.05 TB"; the "≈1,050 GB"
        (PRO, "bf16", 2040, 2060),  # "Pro BF16 ≈ 2.05 TB"
    ],
)
def test_weight_bytes_match_the_card(entry: Checkpoint, precision: Precision, low_gb: float, high_gb: float) -> None:
    value = weights_bytes(entry, precision) / 1e9
    assert low_gb <= value <= high_gb


@pytest.mark.parametrize("entry", [V25, PRO], ids=["V2.5", "Pro"])
def test_the_architecture_numbers_reproduce_the_card_s_active_parameters(entry: Checkpoint) -> None:
    # Routed experts: MoE layers × experts × 3 × hidden × MoE intermediate; a token touches 8 of them.
    # What the card calls active ≈ that share + everything that is not an expert (within 12 %).
    c = entry
    experts = c.moe_layers * c.experts * 3 * c.hidden_size * c.moe_intermediate
    assert experts == c.expert_params
    active = experts * c.experts_per_token / c.experts + (c.params_total - experts)
    assert active == pytest.approx(c.params_active, rel=0.12)


def test_node_memory_of_the_fact_sheet() -> None:
    # mimo-facts: H100-80GB 640 GB, H200-141GB 1,128 GB, B200-180GB 1,440 GB per 8-GPU node.
    assert {n: 8 * GPU_TYPES[n].memory_bytes / 1e9 for n in ("H100-80GB", "H200-141GB", "B200-180GB")} == {
        "H100-80GB": 640, "H200-141GB": 1128, "B200-180GB": 1440}


def test_hopper_uses_fa3_and_blackwell_fa4_with_the_cookbook_swa_ratios() -> None:
    table = {n: (g.architecture, g.attention_backend, g.swa_full_tokens_ratio) for n, g in GPU_TYPES.items()}
    assert table["H100-80GB"] == table["H200-141GB"] == table["H20-96GB"] == ("hopper", "fa3", 0.3)
    assert table["B200-180GB"] == table["B300-288GB"] == ("blackwell", "fa4", 0.1)


def test_roofline_figures_of_the_fact_sheet() -> None:
    assert GPU_TYPES["H100-80GB"].hbm_bytes_per_second == 3.35e12
    assert GPU_TYPES["H200-141GB"].hbm_bytes_per_second == 4.8e12
    assert GPU_TYPES["B200-180GB"].hbm_bytes_per_second == 8e12
    assert GPU_TYPES["H100-80GB"].fp8_flops == GPU_TYPES["H200-141GB"].fp8_flops == 1979e12
    for g in GPU_TYPES.values():
        assert g.bf16_flops == pytest.approx(g.fp8_flops / 2, rel=0.01)


def test_a_gpu_given_by_memory_takes_its_architecture_s_slowest_speed() -> None:
    custom = gpu_type(None, memory_bytes=96_000_000_000, architecture="blackwell")
    assert custom.memory_bytes == 96_000_000_000
    assert custom.attention_backend == "fa4"
    assert custom.hbm_bytes_per_second == GPU_TYPES["B200-180GB"].hbm_bytes_per_second


def test_unknown_names_say_what_is_known() -> None:
    with pytest.raises(KeyError, match=r"MiMo-V2\.5-Pro"):
        checkpoint("MiMo-V3")
    with pytest.raises(KeyError, match=r"H200-141GB"):
        gpu_type("A100-80GB")
