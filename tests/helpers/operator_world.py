"""One operator process against the in-memory API (`FakeKube`), with a fake clock: the deployment, what a
watch would have delivered of it, the cluster's side (pods that run or fail, drains that finish, a
download that makes progress), and what was created. Used by the reconciler's unit tests and by
bench/operator_writes.py."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mimo_operator import labels as L
from mimo_operator.heads import DrainState
from mimo_operator.reconciler import Memory, Reconciler, ReconcileResult, ReconcilerOptions
from tests.helpers.fakekube import FakeKube
from tests.helpers.specs import DeploymentBuilder

NS = "ns"
CRD = f"{L.GROUP}/{L.VERSION}"


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.status = 200
        self._body = body

    async def json(self) -> dict[str, Any]:
        return self._body

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeSession:
    """What a download pod's /status answers: ``progress(now)`` → the document (bytesDone, …)."""

    def __init__(self, progress: Callable[[], dict[str, Any]]) -> None:
        self.progress = progress

    def get(self, url: str, **_: Any) -> _Response:
        return _Response(self.progress())


class FakeHeads:
    """Gang heads: a drain asked for finishes after ``drain_seconds``. ``session`` answers the download
    pod's progress."""

    def __init__(self, clock: Callable[[], float], drain_seconds: float = 20.0,
                 session: FakeSession | None = None) -> None:
        self.session = session
        self.clock = clock
        self.drain_seconds = drain_seconds
        self.asked: dict[str, float] = {}
        self.fabric_reports: dict[str, dict[str, Any]] = {}  # head IP → heads.fabric_of(its /status)
        self.fabric_asked: list[str] = []
        self.left_router: list[tuple[str, str]] = []  # (router, worker) the operator took out

    async def start_drain(self, ip: str, port: int, seconds: float | None = None) -> bool:
        self.asked.setdefault(ip, self.clock())
        return True

    async def leave_router(self, router: str, worker: str) -> bool:
        self.left_router.append((router, worker))
        return True

    async def fabric(self, ip: str, port: int) -> dict[str, Any] | None:
        self.fabric_asked.append(ip)
        return self.fabric_reports.get(ip)

    async def drain_state(self, ip: str, port: int) -> DrainState | None:
        if ip not in self.asked:
            return DrainState(done=False, idle=True, running=None, message="idle")
        done = self.clock() - self.asked[ip] >= self.drain_seconds
        return DrainState(done=done, idle=False, running=0, message="drained" if done else "draining")


@dataclass
class World:
    """The fake API, a clock, one operator process (its memory) and what a watch would have delivered."""

    manifest: DeploymentBuilder
    budget: int = 3
    now: float = 1_000_000.0
    kube: FakeKube = field(init=False)
    reconciler: Reconciler = field(init=False)
    memory: Memory = field(default_factory=Memory)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every version of the deployment, in order
    created: list[str] = field(default_factory=list)            # every gang name ever created

    def __post_init__(self) -> None:
        self.kube = FakeKube(clock=lambda: self.now)
        self.heads = FakeHeads(lambda: self.now)
        options = ReconcilerOptions(restart_budget=self.budget, backoff_base=10.0, backoff_cap=600.0)
        self.reconciler = Reconciler(self.kube, self.heads, options, clock=lambda: self.now)  # type: ignore[arg-type]
        manifest = self.manifest.build()
        manifest["metadata"]["namespace"] = NS
        asyncio.run(self.kube.create(manifest))
        self.bodies.append(self.body())

    def body(self) -> dict[str, Any]:
        obj = self.kube.objects[(CRD, L.KIND, NS, self.manifest.build()["metadata"]["name"])]
        return copy.deepcopy(obj)

    def status(self) -> dict[str, Any]:
        return dict(self.body().get("status") or {})

    def reconcile(self, body: dict[str, Any] | None = None) -> ReconcileResult:
        """One reconcile as the operator's loop runs it: its apply of the shared objects and its gang creations
        end before the next event, and one that pokes the loop (the shared objects applied, a creation that
        ended with nothing for the pod watch to see) wakes another reconcile; then its writes to existing
        gangs end and the status it decided is written."""
        before = {g for g in self.gang_names()}
        woken: list[bool] = []
        self.memory.creations.wake = self.memory.shared.wake = self.memory.probes.wake = lambda: woken.append(True)

        async def run() -> ReconcileResult:
            result = await self.reconciler.reconcile(body or self.body(), self.memory)
            for _ in range(3):
                await self.memory.shared.settle()
                await self.memory.creations.settle()
                await self.memory.probes.settle()
                if not woken:
                    break
                woken.clear()
                again = await self.reconciler.reconcile(self.body(), self.memory)
                result = dataclasses.replace(again, events=[*result.events, *again.events])
            await self.memory.gang_writes.settle()
            await self.memory.status.settle()
            return result

        result = asyncio.run(run())
        self.created += sorted(self.gang_names() - before)
        if (CRD, L.KIND, NS, "d") in self.kube.objects and self.body() != self.bodies[-1]:
            self.bodies.append(self.body())
        return result

    def apply_shared(self) -> None:
        """What a first reconcile does before any gang: the deployment's shared objects applied, and the status
        written that says so (for tests that then drive reconciles one by one)."""

        async def run() -> None:
            await self.reconciler.reconcile(self.body(), self.memory)
            await self.memory.shared.settle()
            await self.memory.status.settle()

        asyncio.run(run())
        assert not self.gang_names(), "a gang before the shared objects"

    def edit(self, path: str, value: Any) -> None:
        """A user's edit of the spec (a new generation)."""
        obj = self.body()
        node = obj["spec"]
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        asyncio.run(self.kube.merge_patch(CRD, L.KIND, NS, obj["metadata"]["name"], {"spec": obj["spec"]}))
        self.kube.writes.pop()  # the user's write, not the operator's
        self.bodies.append(self.body())

    # --- the cluster's side
    def pods(self) -> list[dict[str, Any]]:
        return self.kube.of("Pod", NS, {L.LABEL_COMPONENT: "engine"})

    def gang_names(self) -> set[str]:
        return {p["metadata"]["labels"][L.LABEL_GANG] for p in self.pods()}

    def live_gangs(self) -> dict[str, int]:
        """Gang → replica slot, for gangs whose pods are not being deleted."""
        return {p["metadata"]["labels"][L.LABEL_GANG]: int(p["metadata"]["labels"][L.LABEL_REPLICA])
                for p in self.pods() if not p["metadata"].get("deletionTimestamp")}

    def run_pods(self, ready: bool = True) -> None:
        for i, p in enumerate(self.pods()):
            if p["metadata"].get("deletionTimestamp") or (p.get("status") or {}).get("phase") == "Failed":
                continue
            self.kube.set_pod(p["metadata"]["name"], node=f"node-{p['metadata']['name']}", phase="Running",
                              podIP=f"10.0.0.{i + 1}",
                              conditions=[{"type": "Ready", "status": "True" if ready else "False",
                                           "lastTransitionTime": _iso(self.now)}])

    def fail_pods(self) -> None:
        for p in self.pods():
            if not p["metadata"].get("deletionTimestamp"):
                self.kube.set_pod(p["metadata"]["name"], phase="Failed", containerStatuses=[
                    {"name": "engine", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}])

    def orphans(self) -> list[str]:
        """Gang objects whose gang has no pod."""
        with_pods = self.gang_names()
        return sorted(f"{kind} {o['metadata']['name']}" for kind in ("ConfigMap", "Service", "NetworkPolicy")
                      for o in self.kube.of(kind, NS, {L.LABEL_COMPONENT: "engine"})
                      if L.LABEL_GANG in o["metadata"]["labels"]
                      and o["metadata"]["labels"][L.LABEL_GANG] not in with_pods)


@dataclass(frozen=True)
class DownloadWrites:
    reconciles: int
    first_status: int                   # writes up to and including the first status write
    after: list[tuple[str, str, str]]   # every write after the first status write


def writes_during_weights_download(minutes: float = 10.0, replicas: int = 2, progress: bool = True,
                                   reconciler: type[Reconciler] = Reconciler) -> DownloadWrites:
    """A deployment with a shared-volume weights cache whose download takes ``minutes``: the operator
    reconciles as its loop would (at each requeue; its own status writes do not wake it), the download pod
    runs (reporting progress when ``progress``), and every API write is counted."""
    from tests.helpers.specs import a_deployment

    total = 600_000_000_000
    start = 1_000_000.0
    w = World(a_deployment("d").replicas(replicas).source(huggingFaceId="XiaomiMiMo/MiMo-V2.5")
              .cache("shared-volume", claimName="models"))
    w.heads.session = FakeSession(lambda: {
        "bytesDone": int(total * min(1.0, (w.now - start) / (minutes * 60))), "bytesTotal": total,
        "bytesPerSecond": total / (minutes * 60), "etaSeconds": max(0.0, minutes * 60 - (w.now - start)),
        "filesDone": 0, "filesTotal": 100})
    if reconciler is not Reconciler:
        w.reconciler = reconciler(w.kube, w.heads, w.reconciler.options, clock=lambda: w.now)  # type: ignore[arg-type]
    first_status = None
    reconciles = 0
    while w.now < start + minutes * 60:
        result = w.reconcile()
        reconciles += 1
        for job in w.kube.of("Job", NS):
            name = f"{job['metadata']['name']}-x"
            if ("v1", "Pod", NS, name) not in w.kube.objects:
                labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": job["metadata"]["name"]}
                asyncio.run(w.kube.create({"apiVersion": "v1", "kind": "Pod",
                                           "metadata": {"name": name, "namespace": NS, "labels": labels}}))
                w.kube.writes.pop()  # the Job controller's write, not the operator's
                w.kube.set_pod(name, node="node-0", phase="Running", podIP="10.1.0.1" if progress else None)
        if first_status is None and any(k == L.KIND for _, k, _ in w.kube.writes):
            first_status = len(w.kube.writes)
        w.now += result.requeue_after
    assert first_status is not None
    return DownloadWrites(reconciles, first_status, w.kube.writes[first_status:])
