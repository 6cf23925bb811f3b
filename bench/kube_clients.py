"""The operator's hand-written API client (mimo_operator/kube.py) against lightkube's AsyncClient, on the
operations the reconciler makes, against a real apiserver.

    .venv/bin/python bench/kube_clients.py --kubeconfig K --namespace NS [--list-namespace NS2] [--objects 200]

Each client runs in a fresh process that has imported Kopf, as the operator has (so RSS figures are the
client's own): import, then list every pod of
``--list-namespace`` (as the reconciler lists a deployment's gang pods, and read as dicts, which is what the
builders and the step planner consume), then create / server-side apply / merge-patch / get / delete
``--objects`` ConfigMaps, 32 requests in flight (the hand-written client's connection limit). Prints one
line per client and the verdict; ``--operator-peak-rss`` adds the client's share of the operator's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

CONCURRENCY = 32


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def configmap(namespace: str, i: int, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"bench-{i}", "namespace": namespace, "labels": {"bench": "clients"}},
            "data": {"plan.json": json.dumps({"rank": i, "value": value, "argv": ["--tp", "8"] * 20})}}


async def bounded(jobs: list[Callable[[], Awaitable[Any]]]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Callable[[], Awaitable[Any]]) -> None:
        async with sem:
            await job()
    await asyncio.gather(*(one(j) for j in jobs))


class Ours:
    name = "hand-written (aiohttp)"

    def __init__(self, kubeconfig: Path) -> None:
        from mimo_operator.kube import Kube, KubeConfig
        doc = yaml.safe_load(kubeconfig.read_text())
        cluster, user = doc["clusters"][0]["cluster"], doc["users"][0]["user"]
        self.kube = Kube(KubeConfig(server=cluster["server"], ca_data=cluster.get("certificate-authority-data"),
                                    cert_data=user.get("client-certificate-data"),
                                    key_data=user.get("client-key-data"), token=user.get("token")))

    async def list_pods(self, ns: str) -> list[dict[str, Any]]:
        return await self.kube.list("v1", "Pod", ns, {})

    async def create(self, obj: dict[str, Any]) -> None:
        await self.kube.create(obj)

    async def apply(self, obj: dict[str, Any]) -> None:
        await self.kube.apply(obj)

    async def patch(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        await self.kube.merge_patch("v1", "ConfigMap", ns, name, patch)

    async def get(self, ns: str, name: str) -> None:
        await self.kube.get("v1", "ConfigMap", ns, name)

    async def delete(self, ns: str, name: str) -> None:
        await self.kube.delete("v1", "ConfigMap", ns, name)

    async def close(self) -> None:
        await self.kube.close()


class Lightkube:
    name = "lightkube AsyncClient"

    def __init__(self, kubeconfig: Path) -> None:
        import lightkube
        from lightkube.codecs import from_dict
        from lightkube.resources.core_v1 import ConfigMap, Pod
        from lightkube.types import PatchType
        self.client = lightkube.AsyncClient(lightkube.KubeConfig.from_file(kubeconfig),
                                            field_manager="mimo-operator")
        self.from_dict, self.ConfigMap, self.Pod, self.merge = from_dict, ConfigMap, Pod, PatchType.MERGE

    async def list_pods(self, ns: str) -> list[dict[str, Any]]:
        # The reconciler works on dicts: the typed models are turned back into them.
        return [p.to_dict() async for p in self.client.list(self.Pod, namespace=ns)]

    async def create(self, obj: dict[str, Any]) -> None:
        await self.client.create(self.from_dict(obj))

    async def apply(self, obj: dict[str, Any]) -> None:
        await self.client.apply(self.from_dict(obj), force=True)

    async def patch(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        await self.client.patch(self.ConfigMap, name, patch, namespace=ns, patch_type=self.merge)

    async def get(self, ns: str, name: str) -> None:
        await self.client.get(self.ConfigMap, name, namespace=ns)

    async def delete(self, ns: str, name: str) -> None:
        await self.client.delete(self.ConfigMap, name, namespace=ns)

    async def close(self) -> None:
        await self.client.close()


async def measure(which: str, kubeconfig: Path, ns: str, list_ns: str | None, objects: int,
                  rounds: int) -> dict[str, Any]:
    import kopf  # noqa: F401  (the operator runs under Kopf, which loads aiohttp: only the rest is the client's)
    rss0 = rss()
    client: Ours | Lightkube = Ours(kubeconfig) if which == "ours" else Lightkube(kubeconfig)
    out: dict[str, Any] = {"client": client.name, "import_rss": rss() - rss0}
    if list_ns:
        await client.list_pods(list_ns)  # warm: connections, TLS
        times, cpus, peaks = [], [], []
        pods = 0
        for _ in range(rounds):
            tracemalloc.start()
            t, c = time.perf_counter(), cpu()
            pods = len(await client.list_pods(list_ns))
            times.append(time.perf_counter() - t)
            cpus.append(cpu() - c)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        out.update(list_pods=pods, list_s=statistics.median(times), list_cpu_s=statistics.median(cpus),
                   list_peak=statistics.median(peaks))
    names = range(objects)
    phases: list[tuple[str, list[Callable[[], Awaitable[Any]]]]] = [
        ("create", [lambda i=i: client.create(configmap(ns, i, "a")) for i in names]),
        ("apply", [lambda i=i: client.apply(configmap(ns, i, "b")) for i in names]),
        ("patch", [lambda i=i: client.patch(ns, f"bench-{i}", {"metadata": {"annotations": {"x": "1"}}})
                   for i in names]),
        ("get", [lambda i=i: client.get(ns, f"bench-{i}") for i in names]),
        ("delete", [lambda i=i: client.delete(ns, f"bench-{i}") for i in names]),
    ]
    for phase, jobs in phases:
        t, c = time.perf_counter(), cpu()
        await bounded(jobs)
        out[f"{phase}_s"] = time.perf_counter() - t
        out[f"{phase}_cpu_s"] = cpu() - c
    out["rss"] = rss() - rss0
    await client.close()
    return out


def child(args: argparse.Namespace) -> int:
    result = asyncio.run(measure(args.child, args.kubeconfig, args.namespace, args.list_namespace, args.objects,
                                 args.rounds))
    print(json.dumps(result))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--namespace", required=True, help="where the ConfigMaps are written (must exist)")
    p.add_argument("--list-namespace", help="a namespace with many pods to list")
    p.add_argument("--objects", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--operator-peak-rss", type=int, help="bytes; prints the client's share of it")
    p.add_argument("--child", choices=["ours", "lightkube"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    results = {}
    for which in ("ours", "lightkube"):
        argv = [sys.executable, __file__, "--child", which, "--kubeconfig", str(args.kubeconfig),
                "--namespace", args.namespace, "--objects", str(args.objects), "--rounds", str(args.rounds)]
        if args.list_namespace:
            argv += ["--list-namespace", args.list_namespace]
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
        results[which] = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 2**20
    print(f"API clients ({args.objects} objects per write phase, {CONCURRENCY} in flight):")
    for r in results.values():
        writes = sum(r[f"{ph}_s"] for ph in ("create", "apply", "patch", "delete"))
        writes_cpu = sum(r[f"{ph}_cpu_s"] for ph in ("create", "apply", "patch", "delete"))
        listing = (f"list {r['list_pods']} pods {r['list_s'] * 1000:.0f} ms ({r['list_cpu_s'] * 1000:.0f} ms CPU, "
                   f"peak {r['list_peak'] / mib:.0f} MiB); " if "list_s" in r else "")
        print(f"  {r['client']}: import +{r['import_rss'] / mib:.1f} MiB RSS; {listing}"
              f"{4 * args.objects} writes {writes:.2f} s ({writes_cpu:.2f} s CPU); {args.objects} gets "
              f"{r['get_s']:.2f} s; RSS after all +{r['rss'] / mib:.0f} MiB")
    ours, lk = results["ours"], results["lightkube"]
    if args.operator_peak_rss:
        # In the operator aiohttp is already loaded by Kopf: the client's own memory is the module and what
        # a reconcile's largest read (a deployment's pods) holds at its peak.
        share = (ours["import_rss"] + ours.get("list_peak", 0)) / args.operator_peak_rss
        print(f"  the hand-written client's share of the operator's peak RSS: {share:.0%} "
              f"(import + the peak of listing {ours.get('list_pods', 0)} pods)")
    cpu_ratio = sum(lk[f"{ph}_cpu_s"] for ph in ("create", "apply", "patch", "get", "delete")) / \
        max(sum(ours[f"{ph}_cpu_s"] for ph in ("create", "apply", "patch", "get", "delete")), 1e-9)
    print(f"  lightkube / hand-written: write+get CPU ×{cpu_ratio:.2f}"
          + (f", list time ×{lk['list_s'] / ours['list_s']:.2f}, list peak memory "
             f"×{lk['list_peak'] / max(ours['list_peak'], 1):.2f}" if "list_s" in ours else "")
          + f", import RSS ×{lk['import_rss'] / max(ours['import_rss'], 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
