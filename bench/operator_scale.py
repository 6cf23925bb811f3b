"""Operator scale: 16 replicas × 4 nodes on 64 fake 8-GPU nodes, against upstream StatefulSets.

    .venv/bin/python bench/operator_scale.py [--nodes 64] [--replicas 16] [--nodes-per-replica 4]

Prints the time from apply to every gang pod Running, API writes per gang, the operator's CPU seconds
and peak RSS; then the same pod topology created through StatefulSets (one per gang, parallel pod
management) on the same cluster as the baseline, and our time / baseline time.
Targets (issue #4): ratio ≤ 1.2, operator RSS ≤ 200 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lightkube import Client, KubeConfig  # noqa: E402
from lightkube.resources.core_v1 import Pod  # noqa: E402
from tests.helpers.specs import a_deployment  # noqa: E402
from tests.integration.operator_harness import RunningOperator, install_rbac, token_kubeconfig  # noqa: E402

from mimo_operator.localcluster.cluster import LocalCluster  # noqa: E402

_clients: dict[str, Client] = {}


def _pods(cluster: LocalCluster, namespace: str) -> list[Any]:
    # A kept-alive client: polling with kubectl would cost more than what is measured.
    client = _clients.setdefault(str(cluster.kubeconfig), Client(KubeConfig.from_file(cluster.kubeconfig)))
    return list(client.list(Pod, namespace=namespace))


def running_pods(cluster: LocalCluster, namespace: str) -> int:
    return sum(1 for p in _pods(cluster, namespace) if p.status and p.status.phase == "Running")


def wait_running(cluster: LocalCluster, namespace: str, count: int, timeout: float = 600) -> float:
    start = time.monotonic()
    created_at = None
    while running_pods(cluster, namespace) < count:
        if created_at is None and len(_pods(cluster, namespace)) >= count:
            created_at = time.monotonic() - start
            print(f"  ({namespace}: all {count} pods created after {created_at:.1f} s)")
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out: {running_pods(cluster, namespace)}/{count} pods running")
        time.sleep(0.05)
    return time.monotonic() - start


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


def statefulsets(namespace: str, replicas: int, size: int) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for r in range(replicas):
        name = f"gang-{r}"
        labels = {"app": name}
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": name, "namespace": namespace},
                        "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 6379}]}})
        objects.append({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "serviceName": name, "replicas": size, "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {
                    "containers": [{"name": "engine", "image": "example.invalid/engine:1",
                                    "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}]}},
                }},
            },
        })
    return objects


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=64)
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--nodes-per-replica", type=int, default=4)
    p.add_argument("--keep-log", help="copy the operator's log here")
    args = p.parse_args()
    pods = args.replicas * args.nodes_per_replica
    with tempfile.TemporaryDirectory(prefix="mimo-bench-") as tmp:
        cluster = LocalCluster.up(Path(tmp) / "c", nodes=args.nodes, gpu_type="H100-80GB", exit_with_parent=True)
        try:
            token = install_rbac(cluster)
            op = RunningOperator(cluster, token_kubeconfig(cluster, token, Path(tmp) / "op.kubeconfig"),
                                 Path(tmp) / "operator.log", ["--resync-seconds", "30"])
            op.start()
            assert op.proc is not None
            cluster.kubectl("create", "namespace", "ours")
            manifest = (a_deployment("bench").pro().h100().replicas(args.replicas)
                        .set("parallelism.nodesPerReplica", args.nodes_per_replica).build())
            cpu0, _ = proc_stats(op.proc.pid)
            writes0 = op.writes()
            t0 = time.monotonic()
            print(f"  (applied at {time.time():.3f})")
            cluster.kubectl("apply", "-n", "ours", "-f", "-", input=json.dumps(manifest))
            wait_running(cluster, "ours", pods)
            ours_total = time.monotonic() - t0
            time.sleep(3)  # let the operator settle (status writes) before counting
            cpu1, peak = proc_stats(op.proc.pid)
            if args.keep_log:
                Path(args.keep_log).write_bytes(op.log.read_bytes())
            writes = op.writes() - writes0
            cluster.kubectl("delete", "mimodeployment", "bench", "-n", "ours", "--wait=true", "--timeout=120s")
            op.stop()
            wait_gone = time.monotonic()
            while running_pods(cluster, "ours") and time.monotonic() - wait_gone < 120:
                time.sleep(0.5)

            cluster.kubectl("create", "namespace", "baseline")
            t0 = time.monotonic()
            cluster.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": statefulsets("baseline", args.replicas,
                                                                           args.nodes_per_replica)}))
            baseline = wait_running(cluster, "baseline", pods)
        finally:
            cluster.down()
    print(f"nodes={args.nodes} replicas={args.replicas} nodes/replica={args.nodes_per_replica} pods={pods}")
    print(f"mimo-operator: all gang pods Running {ours_total:.1f} s after apply")
    print(f"  API writes: {writes:.0f} in all, {writes / args.replicas:.1f} per gang (incl. shared objects and status)")
    print(f"  operator CPU: {cpu1 - cpu0:.2f} s during the rollout; peak RSS {peak / 2**20:.0f} MB (target ≤ 200)")
    print(f"StatefulSets (baseline): all pods Running {baseline:.1f} s after apply")
    print(f"ratio ours / baseline: {ours_total / baseline:.2f} (target ≤ 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
