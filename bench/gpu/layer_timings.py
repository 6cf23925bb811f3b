"""One GPU's share of MiMo-V2.5-Pro, timed against the performance model's roofline, and the weights' load rate.

    python3 bench/gpu/layer_timings.py [--json OUT.json]

Torch only (no SGLang), for a machine with one H100/H200; bounded to a couple of minutes. It times, on the GPU
of this machine, what one GPU of the two-node H200 plan runs per layer:

- the MoE layer shard: the GPU's 24 of Pro's 384 routed experts (EP 16), hidden 6144, intermediate 2048,
  at decode-sized and prefill-sized token counts, in BF16 (batched GEMMs) and FP8 (``torch._scaled_mm`` per
  expert, per-tensor scales);
- the attention layer at attention TP 8: the QKV and output projections of 16 query heads and 1 KV head
  (head dims 192/128) plus scaled-dot-product attention over the context, decode and prefill, BF16;
- the safetensors load rate from local disk (a 2 GB file written here, the page cache dropped first where the
  kernel allows it).

Each time is printed next to the roofline ``mimo_operator.perf`` is built on (the catalog's HBM bandwidth and
FLOP/s times perf's efficiencies) and the planner's load rate, with the ratio measured / modelled; the JSON
(``--json`` or ``$OUT/layer_timings.json``) carries every row for calibrating those constants. Without a GPU it
says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The catalog's and perf's figures, copied (the GPU machine has torch but not the operator's dependencies);
# tests/unit/test_gpu_bench.py holds them equal to the modules'.
HIDDEN, MOE_INTER, EXPERTS, TOP_K = 6144, 2048, 384, 8
EP = 16  # the two-node H200 plan's expert parallel size
LOCAL_EXPERTS = EXPERTS // EP
ATTN_TP, Q_HEADS, KV_HEADS, D_QK, D_V = 8, 128, 8, 192, 128
H200 = {"hbm": 4.8e12, "fp8": 1979e12, "bf16": 989e12}  # catalog.GPU_TYPES["H200-141GB"]
H100 = {"hbm": 3.35e12, "fp8": 1979e12, "bf16": 989e12}
ETA_BANDWIDTH, ETA_DECODE_COMPUTE, PREFILL_MFU = 0.7, 0.3, 0.23  # mimo_operator.perf
PLANNER_LOAD_BYTES_PER_SECOND = 7e9  # mimo_operator.planner.DEFAULT_LOAD_BYTES_PER_SECOND


def roofline(bytes_moved: float, flops: float, gpu: dict[str, float], precision: str, prefill: bool) -> float:
    compute_eta = PREFILL_MFU if prefill else ETA_DECODE_COMPUTE
    return max(bytes_moved / (gpu["hbm"] * ETA_BANDWIDTH), flops / (gpu[precision] * compute_eta))


def timed(torch: Any, fn: Any, iterations: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def moe_rows(torch: Any, gpu: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    dev = torch.device("cuda")
    w13 = torch.randn(LOCAL_EXPERTS, HIDDEN, 2 * MOE_INTER, device=dev, dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(LOCAL_EXPERTS, MOE_INTER, HIDDEN, device=dev, dtype=torch.bfloat16) * 0.02
    fp8 = torch.float8_e4m3fn
    w13_8 = [w13[e].t().contiguous().to(fp8).t() for e in range(LOCAL_EXPERTS)]  # column-major for _scaled_mm
    w2_8 = [w2[e].t().contiguous().to(fp8).t() for e in range(LOCAL_EXPERTS)]
    one = torch.ones((), device=dev, dtype=torch.float32)
    # Tokens arriving at this GPU's experts: decode (64 sequences × 4 MTP tokens on each of 16 ranks, top-8
    # over 384 experts → 64·4·16·8/16 per GPU) and prefill (one 16K-token chunk per DP group).
    for phase, tokens in (("decode", 64 * 4 * 16 * TOP_K // EP), ("prefill", 16384 * 2 * TOP_K // EP)):
        per_expert = max(16, -(-tokens // LOCAL_EXPERTS) // 16 * 16)
        x = torch.randn(LOCAL_EXPERTS, per_expert, HIDDEN, device=dev, dtype=torch.bfloat16)
        x8 = x.to(fp8)

        def bf16(x: Any = x) -> None:
            h = torch.bmm(x, w13)
            g = torch.nn.functional.silu(h[..., :MOE_INTER]) * h[..., MOE_INTER:]
            torch.bmm(g, w2)

        def f8(x8: Any = x8) -> None:
            for e in range(LOCAL_EXPERTS):
                h = torch._scaled_mm(x8[e], w13_8[e], scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
                g = (torch.nn.functional.silu(h[:, :MOE_INTER]) * h[:, MOE_INTER:]).to(fp8)
                torch._scaled_mm(g, w2_8[e], scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        flops = 2 * LOCAL_EXPERTS * per_expert * 3 * HIDDEN * MOE_INTER
        for precision, fn, nbytes in (("bf16", bf16, 2), ("fp8", f8, 1)):
            weights = LOCAL_EXPERTS * 3 * HIDDEN * MOE_INTER * nbytes
            acts = LOCAL_EXPERTS * per_expert * (2 * HIDDEN + 3 * MOE_INTER) * 2
            seconds = timed(torch, fn)
            model = roofline(weights + acts, flops, gpu, precision, phase == "prefill")
            rows.append({"what": "moe-shard", "phase": phase, "precision": precision, "tokens": tokens,
                         "seconds": seconds, "modelled_seconds": model, "ratio": seconds / model,
                         "tflops": flops / seconds / 1e12, "weight_gbps": weights / seconds / 1e9})
    return rows


def attention_rows(torch: Any, gpu: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    dev, dt = torch.device("cuda"), torch.bfloat16
    heads, kv = Q_HEADS // ATTN_TP, max(1, KV_HEADS // ATTN_TP)
    wq = torch.randn(HIDDEN, heads * D_QK, device=dev, dtype=dt) * 0.02
    wkv = torch.randn(HIDDEN, kv * (D_QK + D_V), device=dev, dtype=dt) * 0.02
    wo = torch.randn(heads * D_V, HIDDEN, device=dev, dtype=dt) * 0.02
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for phase, batch, q_len, context in (("decode", 64, 4, 4096), ("prefill", 1, 4096, 4096)):
        x = torch.randn(batch * q_len, HIDDEN, device=dev, dtype=dt)
        k_cache = torch.randn(batch, kv, context, D_QK, device=dev, dtype=dt)
        v_cache = torch.randn(batch, kv, context, D_V, device=dev, dtype=dt)

        def layer(x: Any = x, batch: int = batch, q_len: int = q_len, k_cache: Any = k_cache,
                  v_cache: Any = v_cache, causal: bool = phase == "prefill") -> None:
            q = (x @ wq).view(batch, q_len, heads, D_QK).transpose(1, 2)
            x @ wkv  # the new tokens' K and V (written into the cache by the engine)
            o = sdpa(q, k_cache, v_cache, is_causal=causal, enable_gqa=True)
            o.transpose(1, 2).reshape(batch * q_len, heads * D_V) @ wo

        tokens = batch * q_len
        proj = 2 * tokens * HIDDEN * (heads * D_QK + kv * (D_QK + D_V) + heads * D_V)
        attn = 2 * batch * heads * q_len * context * (D_QK + D_V) // (2 if phase == "prefill" else 1)
        weights = (wq.numel() + wkv.numel() + wo.numel()) * 2
        cache = batch * kv * context * (D_QK + D_V) * 2
        seconds = timed(torch, layer)
        model = roofline(weights + cache, proj + attn, gpu, "bf16", phase == "prefill")
        rows.append({"what": "attention", "phase": phase, "precision": "bf16", "tokens": tokens, "context": context,
                     "seconds": seconds, "modelled_seconds": model, "ratio": seconds / model,
                     "tflops": (proj + attn) / seconds / 1e12})
    return rows


def load_row(torch: Any) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.safetensors"
        tensors = {f"t{i}": torch.randint(0, 255, (256 << 20,), dtype=torch.uint8) for i in range(8)}  # 2 GiB
        save_file(tensors, str(path))
        size = path.stat().st_size
        dropped = False
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            try:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                dropped = True
            except (AttributeError, OSError):
                pass
        start = time.perf_counter()
        loaded = load_file(str(path), device="cpu")  # copies every tensor out of the file
        seconds = time.perf_counter() - start
        del loaded
    rate = size / seconds
    return {"what": "safetensors-load", "bytes": size, "seconds": seconds, "bytes_per_second": rate,
            "modelled_bytes_per_second": PLANNER_LOAD_BYTES_PER_SECOND,
            "ratio": PLANNER_LOAD_BYTES_PER_SECOND / rate, "page_cache_dropped": dropped}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--calibration", type=Path,
                        help="write the measured/modelled factors here (read by perf through $MIMO_PERF_CALIBRATION)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("no torch here: nothing to time")
        return 0
    if not torch.cuda.is_available():
        print("no GPU here: nothing to time (run on a machine with one H100/H200)")
        return 0
    name = torch.cuda.get_device_name(0)
    gpu = H200 if "H200" in name else H100
    print(f"{name}, torch {torch.__version__}; roofline of {'H200' if gpu is H200 else 'H100'} with perf's "
          f"efficiencies (bandwidth {ETA_BANDWIDTH}, decode compute {ETA_DECODE_COMPUTE}, prefill {PREFILL_MFU})")
    rows = moe_rows(torch, gpu) + attention_rows(torch, gpu)
    for r in rows:
        print(f"{r['what']:10s} {r['phase']:8s} {r['precision']:5s} {r['tokens']:>7,d} tok  "
              f"{r['seconds'] * 1e6:10.1f} µs  modelled {r['modelled_seconds'] * 1e6:10.1f} µs  "
              f"ratio {r['ratio']:5.2f}  {r['tflops']:7.1f} TFLOP/s")
    load = load_row(torch)
    print(f"safetensors load: {load['bytes'] / 1e9:.2f} GB in {load['seconds']:.2f} s = "
          f"{load['bytes_per_second'] / 1e9:.2f} GB/s (planner assumes {PLANNER_LOAD_BYTES_PER_SECOND / 1e9:.0f}; "
          f"page cache dropped: {load['page_cache_dropped']})")
    out = {"device": name, "torch": torch.__version__, "rows": rows, "load": load,
           "perf_constants": {"ETA_BANDWIDTH": ETA_BANDWIDTH, "ETA_DECODE_COMPUTE": ETA_DECODE_COMPUTE,
                              "PREFILL_MFU": PREFILL_MFU}}
    target = args.json or (Path(os.environ["OUT"]) / "layer_timings.json" if os.environ.get("OUT") else None)
    if target:
        target.write_text(json.dumps(out, indent=1))
    calibration = args.calibration or (Path(os.environ["OUT"]) / "perf_calibration.json" if os.environ.get("OUT")
                                       else None)
    if calibration:
        calibration.write_text(json.dumps(calibration_of(rows, name), indent=1))
        print(f"calibration written to {calibration} (use it with MIMO_PERF_CALIBRATION={calibration})")
    return 0


def calibration_of(rows: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """perf's calibration file: the median ratio measured / modelled per layer kind, phase and precision."""
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        kind = "moe" if r["what"].startswith("moe") else r["what"]
        ratios.setdefault((kind, r["phase"], r["precision"]), []).append(r["ratio"])
    return {"device": device, "factors": [{"kind": k, "phase": ph, "precision": pr, "factor": statistics.median(v)}
                                          for (k, ph, pr), v in sorted(ratios.items())]}


if __name__ == "__main__":
    sys.exit(main())
