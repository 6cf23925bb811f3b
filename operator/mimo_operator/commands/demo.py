"""``mimoctl demo``: the newcomer's first run, on the embedded local cluster.

It starts the local cluster with fake 8-GPU nodes and shows what the scheduler sees; each stage says in
plain words what happens. Everything it starts is stopped when it ends, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mimo_operator.localcluster.cluster import ClusterError, LocalCluster
from mimo_operator.localcluster.nodes import GPU_PRODUCT_LABEL, GPU_RESOURCE, IB_BLOCK_LABEL, RDMA_RESOURCE

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser("demo", help="run the demo on the embedded local cluster")
    demo.add_argument("--nodes", type=int, default=6, help="fake 8-GPU nodes (default: %(default)s)")
    demo.add_argument("--blocks", type=int, default=2, help="InfiniBand blocks (default: %(default)s)")
    demo.add_argument("--short", action="store_true", help="a short run (CI)")
    demo.set_defaults(func=run)


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mimo-demo-") as state:
        say(f"Starting a local Kubernetes cluster: real etcd, kube-apiserver, controller-manager and scheduler, "
            f"with {args.nodes} fake 8×H200 nodes (kwok) in {args.blocks} InfiniBand blocks")
        try:
            cluster = LocalCluster.up(Path(state) / "cluster", nodes=args.nodes, gpu_type="H200-141GB",
                                      blocks=args.blocks, exit_with_parent=True)
        except ClusterError as e:
            print(f"mimoctl demo: {e}", file=sys.stderr)
            return 1
        try:
            say(f"Cluster ready in {cluster.state.get('startSeconds')} s. Its GPU nodes, as the scheduler sees them:")
            nodes = cluster.kubectl_json("get", "nodes")["items"]
            print(f"{'NODE':<14}{'GPUS':>5}  {'GPU':<22}{'RDMA':>6}  {'IB BLOCK':<10}{'READY':<6}")
            for node in nodes:
                labels = node["metadata"]["labels"]
                alloc = node["status"]["allocatable"]
                ready = next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready")
                print(f"{node['metadata']['name']:<14}{alloc.get(GPU_RESOURCE, '0'):>5}  "
                      f"{labels.get(GPU_PRODUCT_LABEL, ''):<22}{alloc.get(RDMA_RESOURCE, '0'):>6}  "
                      f"{labels.get(IB_BLOCK_LABEL, ''):<10}{ready:<6}")
            gpus = sum(int(n["status"]["allocatable"].get(GPU_RESOURCE, "0")) for n in nodes)
            say(f"Summary: {len(nodes)} nodes, {gpus} GPUs schedulable; "
                f"demo took {time.monotonic() - started:.1f} s. Stopping the cluster.")
        finally:
            cluster.down()
    return 0
