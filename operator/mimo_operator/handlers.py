"""The Kopf handlers — thin: they route watch events to one reconcile loop per MiMoDeployment.

Why loops and not Kopf daemons: a daemon makes Kopf put a finalizer on every MiMoDeployment, so a
deployment could not be deleted while the operator is down; owner references already clean up every
child. Each loop reconciles its deployment on every relevant event (the deployment itself, or any of
its pods) and at least every ``requeue_after`` seconds, and only while this replica leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from mimo_operator import labels as L
from mimo_operator import metrics
from mimo_operator.heads import Heads
from mimo_operator.kube import ApiError, Kube, KubeConfig
from mimo_operator.leader import LeaderElection
from mimo_operator.reconciler import Memory, Reconciler, ReconcilerOptions
from mimo_operator.schedulers import KueueGroups
from mimo_operator.weights import WeightsCollector

__all__ = ["Loops", "OperatorConfig", "intent_of"]

log = logging.getLogger("mimo.operator")

_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class OperatorConfig:
    reconciler: ReconcilerOptions = field(default_factory=ReconcilerOptions)
    leader_election: bool = False
    lease_namespace: str = "default"
    lease_name: str = "mimo-operator"
    identity: str = field(default_factory=lambda: os.environ.get("POD_NAME") or f"mimo-operator-{os.getpid()}")
    resync_seconds: float = 30.0
    batch_seconds: float = 1.0  # the least time between two reconciles of one deployment (see `Loops`)
    namespaces: tuple[str, ...] = ()  # watched namespaces; none: every namespace


@dataclass
class _Loop:
    body: Mapping[str, Any]
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    memory: Memory = field(default_factory=Memory)
    task: asyncio.Task[None] | None = None
    seen: str = ""  # what the last deployment event that poked the loop said (see `intent_of`)


def intent_of(body: Mapping[str, Any]) -> str:
    """What in a MiMoDeployment asks for a reconcile: its spec (generation) and its labels, annotations and
    deletion. Status, resourceVersion and managedFields are left out: our own status writes come back as
    watch events, and reconciling on them would only churn."""
    meta = body.get("metadata") or {}
    return json.dumps([meta.get("uid"), meta.get("generation"), meta.get("labels"), meta.get("annotations"),
                       meta.get("deletionTimestamp"), body.get("spec")], sort_keys=True, default=str)


class Loops:
    """One reconcile loop per deployment, poked by watch events.

    Two reconciles of one deployment start at least ``batch`` seconds apart, and what arrived in between is
    acted on together (as Kubernetes' EndpointSlice controller batches its updates). While a hundred gangs
    start, their pods change several times a second; a reconcile for each change cost the operator a
    reconcile's CPU every few tens of milliseconds, which on a busy control plane slowed the very API server
    that was creating the gangs.
    """

    def __init__(self, reconciler: Reconciler, leader: LeaderElection | None, resync: float,
                 batch: float = 1.0) -> None:
        self.reconciler = reconciler
        self.leader = leader
        self.resync = resync
        self.batch = batch
        self.loops: dict[tuple[str, str], _Loop] = {}

    def seen(self, body: Mapping[str, Any], deleted: bool) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if deleted:
            loop = self.loops.pop(key, None)
            if loop and loop.task:
                loop.task.cancel()
            return
        loop = self.loops.get(key)
        if loop is None:
            loop = self.loops[key] = _Loop(body=body)
            # A gang creation that ended with nothing for a pod watch to see (refused, failed) pokes the loop.
            loop.memory.creations.wake = loop.poke.set
            # So does the end of an apply of its shared objects: the gangs wait for them.
            loop.memory.shared.wake = loop.poke.set
            # And an answer of a gang head that changes a decision (a drain done, a fabric check).
            loop.memory.probes.wake = loop.poke.set
            loop.task = asyncio.create_task(self._run(key, loop), name=f"reconcile {key[0]}/{key[1]}")
        loop.body = body
        intent = intent_of(body)
        if intent != loop.seen:
            loop.seen = intent
            loop.poke.set()

    def leading(self) -> bool:
        return self.leader is None or self.leader.is_leader()

    def poke(self, namespace: str, name: str) -> None:
        loop = self.loops.get((namespace, name))
        if loop is not None:
            loop.poke.set()

    async def stop(self) -> None:
        tasks = [loop.task for loop in self.loops.values() if loop.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, key: tuple[str, str], loop: _Loop) -> None:
        try:
            await self._reconcile_while_leading(key, loop)
        finally:
            # The deployment is gone or the operator stops: nothing more of it is created or written.
            await loop.memory.stop()

    async def _reconcile_while_leading(self, key: tuple[str, str], loop: _Loop) -> None:
        namespace, name = key
        failures = 0
        started = float("-inf")
        while True:
            if self.leader is not None and not self.leader.is_leader():
                # The new leader creates what is still to be created, from what it sees.
                await loop.memory.stop()
                # Another replica may have written status meanwhile: decide from a fresh read.
                loop.memory.forget_status()
                await self.leader.leading.wait()
            if (wait := started + self.batch - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            loop.poke.clear()
            delay = self.resync
            try:
                result = await self.reconciler.reconcile(loop.body, loop.memory)
                metrics.RECONCILES.labels(namespace, name).inc()
                for state in ("Pending", "Starting", "Ready", "Draining", "Failed", "Terminating"):
                    metrics.GANGS.labels(namespace, name, state).set(result.gangs_by_state.get(state, 0))
                for event in result.events:
                    kopf.event(loop.body, type=event.type, reason=event.reason,  # type: ignore[arg-type]
                               message=event.message)
                delay = min(self.resync, result.requeue_after)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as e:
                # Temporary: the API or the network; retry with back-off, never crash the other loops.
                failures += 1
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                delay = min(60.0, 2.0 ** failures)
                log.warning("%s/%s: reconcile failed (retry in %.0f s): %s", namespace, name, delay, e)
            except Exception as e:
                failures += 1
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                delay = min(300.0, 5.0 * 2 ** failures)
                log.exception("%s/%s: reconcile error (retry in %.0f s)", namespace, name, delay)
                try:
                    await self.reconciler.report_error(loop.body, loop.memory, e, delay)
                except Exception as told:  # the API unavailable too: the log above has it
                    log.warning("%s/%s: could not say so in status: %s", namespace, name, told)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(loop.poke.wait(), timeout=delay)


def in_cluster_connection() -> kopf.ConnectionInfo | None:
    """A service-account login that honours KUBERNETES_SERVICE_HOST/PORT, as client-go does."""
    token_path = os.path.join(_SA_DIR, "token")
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not (host and port and os.path.exists(token_path)):
        return None
    with open(token_path, encoding="utf-8") as f:
        token = f.read().strip()
    ca = os.path.join(_SA_DIR, "ca.crt")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return kopf.ConnectionInfo(server=server, token=token, ca_path=ca if os.path.exists(ca) else None,
                               scheme="Bearer")


class PodEvents:
    """What a change of a deployment's pod sets off: its reconcile loop is poked, and a gang's Kueue group is
    ended once one of its pods is being deleted (leader only)."""

    def __init__(self, loops: Loops, kueue_groups: KueueGroups) -> None:
        self.loops = loops
        self.kueue_groups = kueue_groups
        self._tasks: set[asyncio.Task[None]] = set()

    def seen(self, kind: str, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        if owner := labels.get(L.LABEL_DEPLOYMENT):
            self.loops.poke(meta["namespace"], owner)
        if kind != "DELETED" and self.kueue_groups.held(pod) and self.loops.leading():
            task = asyncio.create_task(self._end_group(pod))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _end_group(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            if await self.kueue_groups.pod_seen(pod):
                log.info("%s: gang %s is being deleted: deleted its Kueue Workload, so that Kueue lets its pods "
                         "go", meta["namespace"], meta["labels"][L.KUEUE_GROUP_LABEL])
        except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as e:
            log.warning("%s/%s: could not end its Kueue pod group: %s", meta["namespace"], meta["name"], e)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def register(config: OperatorConfig) -> None:
    """Register the handlers on Kopf's default registry (called by ``mimo_operator.__main__``)."""

    @kopf.on.login()
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return in_cluster_connection() or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup()
    async def startup(*, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any,
                      **_: Any) -> None:
        settings.posting.level = logging.WARNING  # Kopf's own log lines are not events; ours are posted explicitly
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        info = in_cluster_connection() or kopf.login_with_kubeconfig(settings=settings, logger=logger)
        if info is None:
            raise kopf.PermanentError("no Kubernetes credentials: neither a service account nor a kubeconfig")
        config_ = KubeConfig.from_kopf(info)
        token_file = os.path.join(_SA_DIR, "token")
        if in_cluster_connection() is not None:
            config_ = dataclasses.replace(config_, token_path=token_file)
        memo.kube = Kube(config_)
        memo.http = aiohttp.ClientSession()
        leader = None
        if config.leader_election:
            leader = LeaderElection(memo.kube, config.lease_namespace, config.lease_name, config.identity)
            memo.leader_task = asyncio.create_task(leader.run(), name="leader election")
        reconciler = Reconciler(memo.kube, Heads(memo.http), config.reconciler)
        memo.loops = Loops(reconciler, leader, config.resync_seconds, config.batch_seconds)
        memo.pods = pods = PodEvents(memo.loops, KueueGroups(memo.kube))
        # One watch of the gangs' and routers' pods per watched namespace: it pokes their deployment's loop
        # and is the cache the reconciler's pod lists are answered from.
        memo.pod_watches = [
            asyncio.create_task(memo.kube.informer("v1", "Pod", ns, L.LABEL_DEPLOYMENT, pods.seen).run(),
                                name=f"pod watch {ns or 'all namespaces'}")
            for ns in (config.namespaces or (None,))]
        # Caches whose last user asked for their removal go when that deployment goes (see WeightsCollector).
        memo.collector = WeightsCollector(memo.kube, config.reconciler.weights, leader)
        memo.collector_task = asyncio.create_task(memo.collector.run(), name="weights cache clean-up")

    @kopf.on.cleanup()
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.loops.stop()
        memo.collector_task.cancel()
        for task in memo.pod_watches:
            task.cancel()
        await asyncio.gather(*memo.pod_watches, return_exceptions=True)
        await memo.pods.stop()
        if getattr(memo, "leader_task", None):
            memo.leader_task.cancel()
        await memo.http.close()
        await memo.kube.close()

    @kopf.on.event(L.GROUP, L.VERSION, L.PLURAL)
    async def deployment_event(body: kopf.Body, event: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
        memo.loops.seen(dict(body), deleted=event.get("type") == "DELETED")
        if event.get("type") == "DELETED":
            memo.collector.deleted(body["metadata"]["namespace"])

    @kopf.on.probe(id="loops")
    def loops_probe(memo: kopf.Memo, **_: Any) -> int:
        return len(memo.loops.loops)
