"""Local cluster start-up time (warm binaries) and the memory of all its processes.

    .venv/bin/python bench/cluster_start.py [--nodes N] [--runs R]

Targets (issue #2): ready in < 30 s; < 1.5 GiB RSS for all the cluster's processes together.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mimo_operator.localcluster.cluster import LocalCluster


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--settle", type=float, default=10.0, help="seconds to let the cluster idle before measuring RSS")
    args = p.parse_args()
    starts, rss_totals = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="mimo-bench-") as d:
            t0 = time.monotonic()
            cluster = LocalCluster.up(Path(d) / "c", nodes=args.nodes, exit_with_parent=True)
            elapsed = time.monotonic() - t0
            time.sleep(args.settle)
            state = cluster.state
            pids = {"supervisor": int(state["pid"]), **{k: int(v) for k, v in state["pids"].items()}}
            rss = {name: rss_bytes(pid) for name, pid in pids.items()}
            cluster.down()
        starts.append(elapsed)
        rss_totals.append(sum(rss.values()))
        detail = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(rss.items(), key=lambda kv: -kv[1]))
        print(f"run {run + 1}: ready in {elapsed:.1f} s (components: {state.get('componentSeconds')}); "
              f"RSS MiB: {detail}")
    total = statistics.median(rss_totals) / 2**30
    start = statistics.median(starts)
    print(f"\nnodes={args.nodes} runs={args.runs}")
    print(f"start (median): {start:.1f} s   target < 30 s   ratio {start / 30:.2f}")
    print(f"RSS (median):   {total:.2f} GiB  target < 1.5 GiB ratio {total / 1.5:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
