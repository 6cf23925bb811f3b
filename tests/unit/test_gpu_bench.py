"""The GPU benches run where only torch is installed, so they carry copies of the model's figures: keep them equal."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from mimo_operator import perf, planner
from mimo_operator.catalog import GPU_TYPES, checkpoint

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layer_timings_uses_the_catalogs_and_perfs_figures() -> None:
    bench = load("layer_timings")
    pro = checkpoint("MiMo-V2.5-Pro")
    copied = (bench.HIDDEN, bench.MOE_INTER, bench.EXPERTS, bench.TOP_K, bench.Q_HEADS, bench.KV_HEADS, bench.D_QK,
              bench.D_V, bench.ATTN_TP)
    assert copied == (pro.hidden_size, pro.moe_intermediate, pro.experts, pro.experts_per_token, pro.attention_heads,
                      pro.kv_heads_global, pro.head_dim_qk, pro.head_dim_v, pro.attention_tp)
    for name, table in (("H200-141GB", bench.H200), ("H100-80GB", bench.H100)):
        gpu = GPU_TYPES[name]
        assert table == {"hbm": gpu.hbm_bytes_per_second, "fp8": gpu.fp8_flops, "bf16": gpu.bf16_flops}
    assert (bench.ETA_BANDWIDTH, bench.ETA_DECODE_COMPUTE, bench.PREFILL_MFU) == (
        perf.ETA_BANDWIDTH, perf.ETA_DECODE_COMPUTE, perf.PREFILL_MFU)
    assert bench.PLANNER_LOAD_BYTES_PER_SECOND == planner.DEFAULT_LOAD_BYTES_PER_SECOND


def test_the_benches_exit_cleanly_without_a_gpu(capsys: object) -> None:
    import sys

    argv = sys.argv
    try:
        sys.argv = ["layer_timings.py"]
        assert load("layer_timings").main() == 0
        sys.argv = ["fabric_nccl.py"]
        assert load("fabric_nccl").main() == 0
    finally:
        sys.argv = argv
