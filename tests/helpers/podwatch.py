"""Every pod of a local cluster, kept current by one watch: the benches and the gang-scheduler test follow
thousands of pods without polling lists of them (which would load the apiserver being measured)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from mimo_operator import labels as L
from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.controlplane import KUEUE_CLUSTER_QUEUE
from tests.helpers.specs import a_deployment


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    phase: str
    node: str              # spec.nodeName; empty while not bound
    gang: str              # the operator's gang label (or the StatefulSet's app label)
    revision: str
    deleting: bool


class PodWatch:
    def __init__(self, cluster: LocalCluster) -> None:
        pki = cluster.state_dir / "pki"
        tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.client = httpx.Client(base_url=cluster.state["apiserver"], verify=tls,
                                   timeout=httpx.Timeout(30.0, read=330.0))  # a watch lasts ≤ 300 s
        self.pods: dict[tuple[str, str], PodView] = {}
        # When each pod was first seen, first seen bound to a node, and first seen Running (monotonic clock).
        self.seen: dict[tuple[str, str], dict[str, float]] = {}
        self.lock = threading.Lock()
        self.stopped = False
        self.rv = self._now()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _now(self) -> str:
        return str(self.client.get("/api/v1/pods", params={"limit": "1"}).json()["metadata"]["resourceVersion"])

    def stop(self) -> None:
        self.stopped = True

    def _run(self) -> None:
        while not self.stopped:
            try:
                with self.client.stream("GET", "/api/v1/pods", params={
                        "watch": "1", "resourceVersion": self.rv, "allowWatchBookmarks": "true",
                        "timeoutSeconds": "300"}) as resp:
                    for line in resp.iter_lines():
                        if self.stopped:
                            return
                        if line:
                            self._event(json.loads(line))
            except httpx.HTTPError:
                time.sleep(0.5)

    def _event(self, event: dict[str, Any]) -> None:
        obj = event["object"]
        meta = obj.get("metadata") or {}
        if event["type"] == "ERROR":  # the resourceVersion expired: go on from now
            self.rv = self._now()
            return
        if rv := meta.get("resourceVersion"):
            self.rv = rv
        if event["type"] == "BOOKMARK":
            return
        key = (meta["namespace"], meta["name"])
        labels = meta.get("labels") or {}
        with self.lock:
            if event["type"] == "DELETED":  # a pod of the same name made later is a new pod
                self.pods.pop(key, None)
                self.seen.pop(key, None)
                return
            when = self.seen.setdefault(key, {"created": time.monotonic()})
            if (obj.get("spec") or {}).get("nodeName"):
                when.setdefault("bound", time.monotonic())
            if (obj.get("status") or {}).get("phase") == "Running":
                when.setdefault("running", time.monotonic())
            self.pods[key] = PodView(
                namespace=meta["namespace"], name=meta["name"], phase=(obj.get("status") or {}).get("phase", ""),
                node=(obj.get("spec") or {}).get("nodeName") or "", gang=labels.get(L.LABEL_GANG) or
                labels.get("app", ""), revision=labels.get(L.LABEL_REVISION, ""),
                deleting=bool(meta.get("deletionTimestamp")))

    def snapshot(self, namespace: str | None = None) -> list[PodView]:
        with self.lock:
            return [p for p in self.pods.values() if namespace is None or p.namespace == namespace]

    def count(self, namespace: str, phase: str | None = None, revision_not: set[str] | None = None,
              alive_only: bool = False, gangs_only: bool = True) -> int:
        """Pods of the namespace, by default only gang members (not, say, a router's pod)."""
        return sum(1 for p in self.snapshot(namespace)
                   if (phase is None or p.phase == phase) and (revision_not is None or p.revision not in revision_not)
                   and not (alive_only and p.deleting) and (p.gang or not gangs_only))

    def timeline(self, namespace: str, since: float) -> dict[str, list[float]]:
        """For the pods of the namespace first seen after ``since``: the seconds from ``since`` to each pod's
        creation, binding and Running, and from its creation to its binding (as the watch saw them)."""
        with self.lock:
            times = [w for (ns, _), w in self.seen.items() if ns == namespace and w["created"] >= since]
        out: dict[str, list[float]] = {"created": [], "bound": [], "running": [], "created→bound": []}
        for w in times:
            for what in ("created", "bound", "running"):
                if what in w:
                    out[what].append(w[what] - since)
            if "bound" in w:
                out["created→bound"].append(w["bound"] - w["created"])
        return {k: sorted(v) for k, v in out.items()}

    def revisions(self, namespace: str) -> set[str]:
        return {p.revision for p in self.snapshot(namespace)}

    def wait(self, what: str, done: Callable[[], bool], timeout: float) -> float:
        start = time.monotonic()
        while not done():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)
        return time.monotonic() - start


@dataclass
class Holding:
    """Nodes held by gangs that are not whole, integrated over time."""

    node_seconds: float = 0.0
    complete_gangs: int = 0
    incomplete_gangs: int = 0
    bound_pods: int = 0


def gang_holding(watch: PodWatch, namespaces: list[str], size: int, seconds: float, every: float = 0.2) -> Holding:
    """Sample for ``seconds``: node-seconds held by gangs with some but not all of their ``size`` pods bound
    to a node (what a gang scheduler exists to prevent), and the state at the end."""
    out = Holding()
    end = time.monotonic() + seconds
    last = time.monotonic()
    while True:
        now = time.monotonic()
        bound: dict[tuple[str, str], int] = {}
        for ns in namespaces:
            for p in watch.snapshot(ns):
                if p.node and p.gang and not p.deleting:  # gang pods only (a router pod is no gang's)
                    bound[(ns, p.gang)] = bound.get((ns, p.gang), 0) + 1
        out.node_seconds += (now - last) * sum(n for n in bound.values() if n < size)
        out.complete_gangs = sum(1 for n in bound.values() if n >= size)
        out.incomplete_gangs = sum(1 for n in bound.values() if n < size)
        out.bound_pods = sum(bound.values())
        last = now
        if now >= end:
            return out
        time.sleep(every)


def contending_deployments(cluster: LocalCluster, ns: str, scheduler: str, replicas: int, size: int
                           ) -> list[dict[str, Any]]:
    """Two deployments (team-a, team-b) of ``replicas`` gangs of ``size`` nodes under ``scheduler``; for
    Kueue, the namespace's LocalQueue on the local cluster's ClusterQueue goes in first and the deployments
    name it."""
    builders = [a_deployment(f"team-{t}").pro().h100().replicas(replicas).set("parallelism.nodesPerReplica", size)
                .set("scheduling.gangScheduler", scheduler) for t in ("a", "b")]
    if scheduler == "kueue":
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": "gpus", "namespace": ns}, "spec": {"clusterQueue": KUEUE_CLUSTER_QUEUE}}))
        builders = [b.set("scheduling.queueName", "gpus") for b in builders]
    return [b.build() for b in builders]
