"""Gangs under contention: two deployments asking for more nodes than exist, with no gang scheduler, with
scheduler-plugins' coscheduling, with kube-scheduler's own gang scheduling and with Kueue, on one local
cluster.

    .venv/bin/python bench/gang_contention.py [--nodes 10] [--replicas 2] [--seconds 60]

Each deployment wants ``--replicas`` gangs of 4 nodes; together they want more nodes than the cluster has.
For ``--seconds`` after apply, the bench integrates the node-seconds held by incomplete gangs (some but not
all of a gang's pods bound to a node: GPUs that serve nothing and that a whole gang could have used), and
reports the gangs whole at the end. Deadlock: every node taken and no gang whole. Target (issue #15): 0
node-seconds and no deadlock with a gang scheduler.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.podwatch import PodWatch, contending_deployments, gang_holding  # noqa: E402
from tests.integration.operator_harness import RunningOperator, install_rbac, token_kubeconfig  # noqa: E402

from mimo_operator.localcluster.cluster import LocalCluster  # noqa: E402

SIZE = 4


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--replicas", type=int, default=2, help="gangs per deployment (two deployments)")
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    wanted = 2 * args.replicas * SIZE
    if wanted <= args.nodes:
        raise SystemExit(f"no contention: the two deployments want {wanted} nodes of {args.nodes}")
    lines = []
    with tempfile.TemporaryDirectory(prefix="mimo-bench-") as tmp:
        cluster = LocalCluster.up(Path(tmp) / "c", nodes=args.nodes, gpu_type="H100-80GB", exit_with_parent=True,
                                  gang_schedulers=("scheduler-plugins", "kubernetes", "kueue"))
        op = None
        try:
            watch = PodWatch(cluster)
            token = install_rbac(cluster)
            # No recreation of unschedulable gangs inside the window: what is measured is the scheduler.
            op = RunningOperator(cluster, token_kubeconfig(cluster, token, Path(tmp) / "op.kubeconfig"),
                                 Path(tmp) / "operator.log", ["--unschedulable-seconds", "3600"])
            op.start()
            for scheduler in ("none", "scheduler-plugins", "kubernetes", "kueue"):
                ns = f"contention-{scheduler}"
                cluster.kubectl("create", "namespace", ns)
                items = contending_deployments(cluster, ns, scheduler, args.replicas, SIZE)
                cluster.kubectl("apply", "-n", ns, "-f", "-",
                                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
                held = gang_holding(watch, [ns], SIZE, args.seconds)
                deadlock = held.complete_gangs == 0 and held.bound_pods >= args.nodes - args.nodes % SIZE
                line = (f"{scheduler:>17}: {held.node_seconds:7.1f} node-seconds held by incomplete gangs in "
                        f"{args.seconds:.0f} s; at the end {held.complete_gangs} gangs whole, "
                        f"{held.incomplete_gangs} incomplete, {held.bound_pods}/{args.nodes} nodes bound"
                        f"{' — DEADLOCK' if deadlock else ''}")
                print(line, flush=True)
                lines.append(line)
                cluster.kubectl("delete", "mimodeployments", "--all", "-n", ns, "--wait=true", "--timeout=120s")
                start = time.monotonic()
                while watch.count(ns) and time.monotonic() - start < 120:
                    time.sleep(0.2)
            watch.stop()
        finally:
            if op is not None:
                op.stop()
            cluster.down()
    print(f"\nnodes={args.nodes}, two deployments × {args.replicas} gangs × {SIZE} nodes = {wanted} nodes wanted")
    print("\n".join(lines))
    print("target with a gang scheduler: 0 node-seconds, no deadlock")
    return 0


if __name__ == "__main__":
    sys.exit(main())
