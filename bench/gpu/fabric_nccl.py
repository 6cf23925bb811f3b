"""The fabric check's NCCL branch on a real GPU machine: one process per visible GPU, as a gang node runs it.

    python3 bench/gpu/fabric_nccl.py [--node-nic-gbps 400] [--json OUT.json]

Runs ``mimo_worker.fabric.measure_rank`` (the code the head's probes run) with backend ``nccl`` in one process
per GPU of this machine (world = GPU count, one node), then ``summarize`` and ``judge`` as the head does, and
prints every (op, size) with its algorithm and bus bandwidth. One node has no inter-node fabric, so the verdict
is "skipped" by design: what this shows is that the NCCL process group, both collectives and the timing work
on a GPU, and what NVLink gives inside the node. Needs torch with CUDA only (no SGLang, no pydantic); without a
GPU it says so and exits 0. Bounded: a few seconds per GPU count, 120 s group timeout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "worker"))

from mimo_worker.fabric import judge, measure_rank, probe_ranks, summarize

SIZES = [4096, 1 << 20, 16 << 20, 256 << 20]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, queue: Any) -> None:
    try:
        samples = measure_rank(rank=rank, world_size=world, rendezvous_host="127.0.0.1", rendezvous_port=port,
                               node_ip="127.0.0.1", backend="nccl", sizes_bytes=SIZES, iterations=10, warmup=3,
                               timeout_seconds=120, device_index=rank)
        queue.put((rank, samples, None))
    except Exception as e:  # reported by the parent with the rank
        queue.put((rank, [], f"{type(e).__name__}: {e}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-nic-gbps", type=float, default=400.0, help="a node's NIC total, GB/s")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("no torch here: the NCCL branch needs a GPU machine with torch; nothing to do")
        return 0
    if not torch.cuda.is_available():
        print("no GPU here: the NCCL branch needs one; nothing to do")
        return 0
    gpus = torch.cuda.device_count()
    layout = probe_ranks(1, gpus, "nccl")
    print(f"{gpus}× {torch.cuda.get_device_name(0)}, torch {torch.__version__}, NCCL "
          f"{'.'.join(map(str, torch.cuda.nccl.version()))}; ranks {[p.rank for p in layout]}")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    started = time.monotonic()
    procs = [ctx.Process(target=_rank, args=(p.rank, p.world_size, port, queue)) for p in layout]
    for proc in procs:
        proc.start()
    results = {}
    for _ in procs:
        rank, samples, error = queue.get(timeout=300)
        if error:
            print(f"rank {rank} failed: {error}")
            return 1
        results[rank] = samples
    for proc in procs:
        proc.join(30)
    report = summarize("nccl", [results[r] for r in sorted(results)], time.monotonic() - started,
                       ranks_per_node=gpus)
    verdict = judge(report, SimpleNamespace(expected_bus_gbps=args.node_nic_gbps, min_fraction=0.5))  # type: ignore[arg-type]
    for s in report.samples:
        print(f"{s.op:10s} {s.size_bytes:>11,d} B  {s.seconds * 1e6:10.1f} µs  alg {s.alg_gbps:8.2f} GB/s  "
              f"bus {s.bus_gbps:8.2f} GB/s")
    print(f"verdict: {verdict.verdict}: {verdict.message}")
    out = {"report": report.to_dict(), "verdict": asdict(verdict), "gpus": gpus,
           "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    elif os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "fabric_nccl.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
