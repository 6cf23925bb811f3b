"""``mimoctl cluster up|down|env``: the local cluster (real control plane, kwok GPU nodes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimo_operator.localcluster.binaries import GANG_SCHEDULERS, WORKLOAD_CONTROLLERS
from mimo_operator.localcluster.cluster import ClusterError, LocalCluster, default_state_dir
from mimo_operator.localcluster.nodes import NODE_GPU_TYPES

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = subparsers.add_parser("cluster", help="the local Kubernetes cluster with fake 8-GPU nodes")
    cluster.add_argument("--state-dir", type=Path, default=default_state_dir(),
                         help="where the cluster keeps its certificates, kubeconfig, logs and data "
                              "(default: %(default)s)")
    verbs = cluster.add_subparsers(dest="verb", required=True, metavar="{up,down,env}")

    up = verbs.add_parser("up", help="start the cluster and return once its GPU nodes are schedulable")
    up.add_argument("--nodes", type=int, default=4, help="fake 8-GPU nodes (default: %(default)s)")
    up.add_argument("--gpu-type", choices=sorted(NODE_GPU_TYPES), default="H200-141GB",
                    help="the GPU the nodes report (default: %(default)s)")
    up.add_argument("--blocks", type=int, default=1,
                    help="InfiniBand blocks the nodes are spread over (default: %(default)s)")
    up.add_argument("--gang-scheduler", choices=list(GANG_SCHEDULERS), action="append", default=[],
                    help="a gang scheduler to run, for spec.scheduling.gangScheduler (repeatable): "
                         "scheduler-plugins (its coscheduling scheduler next to kube-scheduler), kubernetes "
                         "(kube-scheduler's own gang scheduling, its feature gates on) or kueue (Kueue's manager "
                         "with its pod integration and a ClusterQueue 'gpus' of every GPU: add a LocalQueue that "
                         "points at it and name that in spec.scheduling.queueName)")
    up.add_argument("--controller", choices=list(WORKLOAD_CONTROLLERS), action="append", default=[],
                    help="another project's workload controller to run (repeatable): lws (LeaderWorkerSet's "
                         "manager; build it first with hack/build-binaries.sh --only lws)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait (default: %(default)s)")
    up.set_defaults(func=_up)

    down = verbs.add_parser("down", help="stop the cluster and every process it started")
    down.set_defaults(func=_down)

    env = verbs.add_parser("env", help="print KUBECONFIG=… and the path of the built kubectl")
    env.set_defaults(func=_env)


def _up(args: argparse.Namespace) -> int:
    if args.nodes < 1 or args.blocks < 1 or args.blocks > args.nodes:
        print("mimoctl cluster up: --nodes must be ≥ 1 and --blocks between 1 and --nodes", file=sys.stderr)
        return 2
    print(f"starting a local cluster with {args.nodes} × 8 {args.gpu_type} nodes in {args.blocks} "
          f"InfiniBand block(s) …", file=sys.stderr)
    try:
        cluster = LocalCluster.up(args.state_dir, nodes=args.nodes, gpu_type=args.gpu_type, blocks=args.blocks,
                                  timeout=args.timeout, gang_schedulers=tuple(dict.fromkeys(args.gang_scheduler)),
                                  controllers=tuple(dict.fromkeys(args.controller)))
    except ClusterError as e:
        print(f"mimoctl cluster up: {e}", file=sys.stderr)
        return 1
    state = cluster.state
    print(f"ready in {state.get('startSeconds')} s: nodes {', '.join(state.get('nodes', []))}", file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


def _down(args: argparse.Namespace) -> int:
    if LocalCluster(args.state_dir).down():
        print("local cluster stopped", file=sys.stderr)
    else:
        print(f"no local cluster is running from {args.state_dir}", file=sys.stderr)
    return 0


def _env(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.state_dir)
    if not cluster.is_running():
        print(f"mimoctl cluster env: no local cluster is running from {args.state_dir} "
              "(start one with `mimoctl cluster up`)", file=sys.stderr)
        return 1
    for key, value in cluster.env().items():
        print(f"{key}={value}")
    return 0
