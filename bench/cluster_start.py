"""Local cluster start-up time (warm binaries) and the memory of all its processes.

    .venv/bin/python bench/cluster_start.py [--nodes N] [--runs R]
    .venv/bin/python bench/cluster_start.py --nodes 2000 --runs 1     (the fleet-size cluster)

"Ready" is every fake node Ready and untainted, so schedulable. Prints the time to ready (with the part
spent registering nodes and waiting for them), the RSS of each process, and the control plane's RSS per
1,000 nodes (the RSS over that of an idle 4-node cluster is what the nodes cost; given when --nodes ≥ 500).
Targets: issue #2, 4 nodes ready in < 30 s and < 1.5 GiB RSS in all; issue #15, 2,000 nodes ready in < 60 s.
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
    last_rss: dict[str, int] = {}
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
        last_rss = rss
        starts.append(elapsed)
        rss_totals.append(sum(rss.values()))
        detail = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(rss.items(), key=lambda kv: -kv[1]))
        print(f"run {run + 1}: ready in {elapsed:.1f} s (components: {state.get('componentSeconds')}); "
              f"RSS MiB: {detail}")
    total = statistics.median(rss_totals) / 2**30
    start = statistics.median(starts)
    print(f"\nnodes={args.nodes} runs={args.runs}")
    print(f"start (median): {start:.1f} s   target < 30 s   ratio {start / 30:.2f}")
    if args.nodes < 500:
        print(f"RSS (median):   {total:.2f} GiB  target < 1.5 GiB ratio {total / 1.5:.2f}")
    else:
        target = 60.0
        print(f"ready target < {target:.0f} s at 2,000 nodes: ratio {start / target:.2f}")
        plane = sum(v for k, v in last_rss.items() if k != "supervisor")
        print(f"RSS (median, all processes): {total:.2f} GiB; control plane (etcd, apiserver, controller-manager, "
              f"scheduler, kwok) {plane / 2**30:.2f} GiB = {plane / 2**20 / args.nodes * 1000:.0f} MiB per 1,000 nodes")
        for name in ("kube-apiserver", "etcd", "kwok", "kube-controller-manager", "kube-scheduler"):
            if name in last_rss:
                print(f"  {name}: {last_rss[name] / 2**20 / args.nodes * 1000:.0f} MiB per 1,000 nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
