"""Weights as a managed step: make sure a deployment's checkpoint is cached where its gangs will run.

The reconciler calls :func:`ensure_weights` once per reconcile, before it creates gangs::

    state = await ensure_weights(kube, ctx, options, probe=probe)
    if state.blocks_gangs: do not create gangs (keep the ones that run); wait on state.message
    status["weights"] = state.status(); conditions: state.condition(); events: state.events
    requeue_after = min(requeue_after, state.requeue_after)

It is level-based and idempotent: it looks at what the API shows now (the download Job, prefetch pods,
node labels, the cache record) and takes at most the next step of each, so a second call — or a second
deployment of the same checkpoint — changes nothing that is already right.

- shared-volume: the Job ``mimo-weights-<key>-<claim>`` is found by its labels (cache key and location),
  whichever deployment created it; created if absent; its success means ready. A failed Job is deleted
  after a pause (30 s, or 10 min for reasons a person must fix) so that the next call starts a new one,
  which resumes from the files on the volume.
- node-local: the eligible nodes are those a gang pod could use (``build.weights.eligible_node``); each
  without the ready label gets one prefetch pod; when that pod has succeeded, the operator labels the node
  and deletes the pod. Ready once ``nodes_per_replica`` nodes are labelled. Who labels: the operator, after
  reading the pod's success from the API — so prefetch pods need no RBAC at all (patching nodes is
  cluster-wide and cannot be limited to one label), and the label means "the operator saw the verified
  copy finish", never "a pod claimed so".
- progress: the running pod serves ``GET /status`` on its pod IP (``mimo_worker.weights.progress``); the
  operator reads it like a head's drain state. A download pod therefore needs no API access and no
  service-account token either, and the numbers need no write to any object. When the pod cannot be
  reached the state says so and has no numbers; nothing else depends on them.

Nodes are read and labelled through :class:`NodeApi`, because the operator's API client knows only
namespaced kinds (see its docstring).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import prometheus_client

from mimo_operator import labels as L
from mimo_operator.build.options import BuildContext
from mimo_operator.build.weights import (
    ANNOTATION_NODE,
    ANNOTATION_USER_PREFIX,
    LABEL_ROLE,
    NODE_READY,
    CacheRef,
    WeightsOptions,
    cache_record,
    cache_ref,
    clean_job,
    clean_pod,
    download_job,
    eligible_node,
    prefetch_pod,
)
from mimo_operator.errors import SpecError
from mimo_operator.kube import Kube
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import DeploymentSpec, parse_spec

__all__ = [
    "CONDITION_TYPE",
    "EXIT_REASONS",
    "NodeApi",
    "WeightsCollector",
    "WeightsEvent",
    "WeightsProbe",
    "WeightsProgress",
    "WeightsState",
    "collect_weights",
    "ensure_weights",
    "removable_caches",
]

log = logging.getLogger("mimo.operator.weights")

CONDITION_TYPE = "WeightsReady"
# The download's exit codes (mimo_worker.weights.errors.EXIT_REASONS; a test keeps the two equal).
EXIT_REASONS: dict[int, str] = {1: "DownloadFailed", 3: "NotEnoughSpace", 4: "InvalidCheckpoint", 5: "Unauthorized",
                                6: "VerificationFailed", 7: "UnsupportedPrecision"}
_PERMANENT = {"NotEnoughSpace", "InvalidCheckpoint", "Unauthorized", "UnsupportedPrecision"}
# After a failure: how long the failed Job/pod stays (for a person to read) before a new one starts.
RETRY_SECONDS = 30.0
PERMANENT_RETRY_SECONDS = 600.0
# How often to look again while something is in progress.
_POLL_SECONDS = 5.0

BYTES_DONE = prometheus_client.Gauge(
    "mimo_operator_weights_bytes_done", "Bytes of a cached checkpoint present (largest of its downloads)",
    ["namespace", "cache_key"])
BYTES_TOTAL = prometheus_client.Gauge(
    "mimo_operator_weights_bytes_total", "Bytes of a cached checkpoint the engine needs", ["namespace", "cache_key"])
READY = prometheus_client.Gauge(
    "mimo_operator_weights_ready", "1 when a deployment's weights are ready where its gangs run",
    ["namespace", "deployment"])


@dataclass(frozen=True)
class WeightsProgress:
    bytes_done: int
    bytes_total: int
    bytes_per_second: float
    eta_seconds: float | None
    files_done: int = 0
    files_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"bytesDone": self.bytes_done, "bytesTotal": self.bytes_total,
                "bytesPerSecond": round(self.bytes_per_second, 1),
                "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
                "filesDone": self.files_done, "filesTotal": self.files_total}

    @classmethod
    def from_status(cls, doc: Mapping[str, Any]) -> WeightsProgress | None:
        try:
            eta = doc.get("etaSeconds")
            return cls(int(doc["bytesDone"]), int(doc["bytesTotal"]), float(doc.get("bytesPerSecond") or 0.0),
                       None if eta is None else float(eta), int(doc.get("filesDone") or 0),
                       int(doc.get("filesTotal") or 0))
        except (KeyError, TypeError, ValueError):
            return None

    @staticmethod
    def combine(parts: list[WeightsProgress]) -> WeightsProgress | None:
        """Several nodes' downloads at once: bytes add up, the ETA is the slowest node's."""
        if not parts:
            return None
        etas = [p.eta_seconds for p in parts]
        return WeightsProgress(sum(p.bytes_done for p in parts), sum(p.bytes_total for p in parts),
                               sum(p.bytes_per_second for p in parts),
                               None if any(e is None for e in etas) else max(e for e in etas if e is not None),
                               sum(p.files_done for p in parts), sum(p.files_total for p in parts))


@dataclass(frozen=True)
class WeightsEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class WeightsState:
    """Where a deployment's weights stand. ``ready`` is true when gangs may be created: the weights are
    complete and verified where the gangs will run (or the operator manages none)."""

    managed: bool
    ready: bool
    reason: str  # the WeightsReady condition's reason: Ready, NotManaged, Downloading, Pending, Failed, …
    message: str
    gate: bool = True  # spec.model.cache.gateOnWeightsReady
    cache_key: str | None = None
    model_path: str | None = None  # the checkpoint directory inside engine containers
    progress: WeightsProgress | None = None
    nodes_ready: tuple[str, ...] = ()
    nodes_eligible: int = 0
    events: tuple[WeightsEvent, ...] = ()
    requeue_after: float = 60.0

    @property
    def blocks_gangs(self) -> bool:
        """True while gang creation must wait (the default; spec.model.cache.gateOnWeightsReady: false
        lets gangs start at once, and their pods wait for the completion marker themselves)."""
        return self.managed and self.gate and not self.ready

    def condition(self) -> dict[str, str]:
        """The WeightsReady condition (without lastTransitionTime, which the status writer keeps)."""
        return {"type": CONDITION_TYPE, "status": "True" if self.ready else "False", "reason": self.reason,
                "message": self.message}

    def status(self) -> dict[str, Any]:
        """``status.weights`` of the MiMoDeployment."""
        out: dict[str, Any] = {"ready": self.ready, "reason": self.reason, "message": self.message}
        if self.cache_key:
            out["cacheKey"] = self.cache_key
            out["modelPath"] = self.model_path
        if self.progress is not None:
            out.update(self.progress.to_dict())
        if self.nodes_eligible:
            out["nodesReady"] = len(self.nodes_ready)
            out["nodesEligible"] = self.nodes_eligible
        return out


class WeightsProbe:
    """Reads a download pod's ``/status`` over HTTP (the pod serves it on its IP)."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float = 2.0) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def status(self, ip: str, port: int) -> dict[str, Any] | None:
        try:
            async with self.session.get(f"http://{ip}:{port}/status", timeout=self.timeout) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        return body if isinstance(body, dict) else None


class NodeApi:
    """Nodes through the operator's client: the two cluster-scoped calls the node-local cache makes."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def list(self) -> list[dict[str, Any]]:
        return await self.kube.list("v1", "Node", None, {})

    async def label(self, name: str, key: str, value: str | None) -> None:
        await self.kube.merge_patch("v1", "Node", None, name, {"metadata": {"labels": {key: value}}})


def _iso_seconds(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return None


def _failure(pod: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, message) of a failed download pod, from its container's exit code and termination message."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            code = int(term.get("exitCode", 1))
            reason = EXIT_REASONS.get(code, "DownloadFailed")
            message = str(term.get("message") or f"exit code {code}").strip()
            # A termination message taken from the log's tail (FallbackToLogsOnError) has timestamps and
            # other lines around the one that says why: keep that line, from the reason on.
            said = [line[line.index(f"{reason}: "):] for line in message.splitlines() if f"{reason}: " in line]
            return reason, said[-1] if said else message
    return "DownloadFailed", str((pod.get("status") or {}).get("message") or "the download pod failed")


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None


async def _record_user(kube: Kube, ref: CacheRef, ctx: BuildContext, options: WeightsOptions) -> list[WeightsEvent]:
    """The cache record exists and names this deployment as a user (with its keepAfterDelete)."""
    ns = ctx.namespace
    want = "keep" if ref.keep_after_delete else "delete"
    record = await kube.get("v1", "ConfigMap", ns, ref.name)
    events = []
    if record is None:
        await kube.apply(cache_record(ref, ns, _image(ctx, options)))
        events.append(WeightsEvent("Normal", "WeightsCacheRecorded",
                                   f"cache {ref.key} for {ref.repo}@{ref.revision} ({ref.mode}) recorded in "
                                   f"ConfigMap {ref.name}"))
        record = {}
    have = ((record.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_USER_PREFIX + ctx.name)
    if have != want:
        await kube.merge_patch("v1", "ConfigMap", ns, ref.name,
                               {"metadata": {"annotations": {ANNOTATION_USER_PREFIX + ctx.name: want}}})
    return events


def _managed(ref: CacheRef, *, ready: bool, reason: str, message: str, **more: Any) -> WeightsState:
    return WeightsState(managed=True, ready=ready, reason=reason, message=message, gate=ref.gate, cache_key=ref.key,
                        model_path=ref.model_path, **more)


def _image(ctx: BuildContext, options: WeightsOptions) -> str:
    return options.image or ctx.spec.engine.image


async def ensure_weights(kube: Kube, ctx: BuildContext, options: WeightsOptions | None = None, *,
                         probe: WeightsProbe | None = None, nodes: NodeApi | None = None,
                         clock: Callable[[], float] = time.time) -> WeightsState:
    """Take the next step toward this deployment's weights being ready where its gangs run; say where
    they stand. See the module docstring for the two cache modes."""
    options = options or WeightsOptions()
    ref = cache_ref(ctx.spec, ctx.plan)
    if ref is None:
        source = ctx.spec.model.source
        why = (f"the checkpoint is read from {source.path}" if source is not None and source.path
               else "spec.model.cache.mode is none: the engine fetches the checkpoint itself")
        READY.labels(ctx.namespace, ctx.name).set(1)
        return WeightsState(managed=False, ready=True, reason="NotManaged", message=why)
    events = await _record_user(kube, ref, ctx, options)
    cleaning = await kube.list("batch/v1", "Job", ctx.namespace, {**ref.selector, LABEL_ROLE: "clean"}) \
        if ref.mode == "shared-volume" else \
        await kube.list("v1", "Pod", ctx.namespace, {**ref.selector, LABEL_ROLE: "clean"})
    if cleaning:
        state = _managed(ref, ready=False, reason="Cleaning", requeue_after=_POLL_SECONDS,
                         message=f"cache {ref.key} is being removed; it is downloaded again afterwards")
    elif ref.mode == "shared-volume":
        state = await _shared(kube, ctx, ref, options, probe, clock)
    else:
        state = await _node_local(kube, nodes or NodeApi(kube), ctx, ref, options, probe, clock)
    READY.labels(ctx.namespace, ctx.name).set(1 if state.ready else 0)
    if state.progress is not None:
        BYTES_DONE.labels(ctx.namespace, ref.key).set(state.progress.bytes_done)
        BYTES_TOTAL.labels(ctx.namespace, ref.key).set(state.progress.bytes_total)
    if events:
        state = dataclasses.replace(state, events=tuple(events) + state.events)
    return state


async def _progress_of(pod: Mapping[str, Any], probe: WeightsProbe | None, port: int) -> WeightsProgress | None:
    ip = (pod.get("status") or {}).get("podIP")
    if probe is None or not ip or (pod.get("status") or {}).get("phase") != "Running":
        return None
    doc = await probe.status(ip, port)
    return None if doc is None else WeightsProgress.from_status(doc)


def _describe(progress: WeightsProgress | None) -> str:
    if progress is None or progress.bytes_total == 0:
        return "downloading (no progress report yet)"
    eta = "unknown" if progress.eta_seconds is None else f"{progress.eta_seconds:,.0f} s"
    return (f"{progress.bytes_done / 1e9:,.1f} of {progress.bytes_total / 1e9:,.1f} GB at "
            f"{progress.bytes_per_second / 1e6:,.0f} MB/s, ETA {eta}")


async def _shared(kube: Kube, ctx: BuildContext, ref: CacheRef, options: WeightsOptions,
                  probe: WeightsProbe | None, clock: Callable[[], float]) -> WeightsState:
    ns = ctx.namespace
    jobs = await kube.list("batch/v1", "Job", ns, {**ref.selector, LABEL_ROLE: "download"})
    if not jobs:
        job = download_job(ref, ns, _image(ctx, options), options)
        await kube.apply(job)
        log.info("%s/%s: created download Job %s for %s@%s", ns, ctx.name, ref.name, ref.repo, ref.revision)
        return _managed(ref, ready=False, reason="Pending", requeue_after=_POLL_SECONDS,
                            message=f"download Job {ref.name} created for {ref.repo}@{ref.revision}",
                            events=(WeightsEvent("Normal", "WeightsDownloadStarted",
                                                 f"Job {ref.name} downloads {ref.repo}@{ref.revision} into claim "
                                                 f"{ref.claim_name}"),))
    job = jobs[0]
    name = job["metadata"]["name"]
    if _condition(job, "Complete") is not None or int((job.get("status") or {}).get("succeeded") or 0) > 0:
        return _managed(ref, ready=True, reason="Ready",
                            message=f"{ref.repo}@{ref.revision} is complete and verified on claim {ref.claim_name}")
    pods = await kube.list("v1", "Pod", ns, {**ref.selector, LABEL_ROLE: "download"})
    pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") in (name, None)]
    pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    failed = _condition(job, "Failed")
    if failed is not None:
        failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
        reason, message = _failure(failed_pods[-1]) if failed_pods else ("DownloadFailed", str(failed.get("message")))
        pause = PERMANENT_RETRY_SECONDS if reason in _PERMANENT else RETRY_SECONDS
        since = _iso_seconds(failed.get("lastTransitionTime")) or clock()
        events: tuple[WeightsEvent, ...] = ()
        if clock() - since >= pause:
            await kube.delete("batch/v1", "Job", ns, name, uid=job["metadata"].get("uid"))
            events = (WeightsEvent("Normal", "WeightsDownloadRetry", f"Job {name} failed ({reason}); starting again"),)
        return _managed(ref, ready=False, reason=reason, events=events,
                            requeue_after=min(pause, 60.0),
                            message=f"download Job {name} failed: {message}; retried after {pause:.0f} s")
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    progress = await _progress_of(running[-1], probe, options.status_port) if running else None
    retries = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
    note = f" (attempt {retries + 1})" if retries else ""
    return _managed(ref, ready=False, reason="Downloading" if running else "Pending", progress=progress,
                        requeue_after=_POLL_SECONDS,
                        message=f"{ref.repo}@{ref.revision}: {_describe(progress)}{note}")


async def _node_local(kube: Kube, nodes: NodeApi, ctx: BuildContext, ref: CacheRef, options: WeightsOptions,
                      probe: WeightsProbe | None, clock: Callable[[], float]) -> WeightsState:
    ns = ctx.namespace
    needed = ctx.plan.nodes_per_replica
    all_nodes = await nodes.list()
    eligible = sorted(n["metadata"]["name"] for n in all_nodes if eligible_node(n, ctx.spec, ctx.plan.gpus_per_node))
    labelled = {n["metadata"]["name"] for n in all_nodes
                if (n["metadata"].get("labels") or {}).get(ref.node_label) == NODE_READY}
    pods = await kube.list("v1", "Pod", ns, {**ref.selector, LABEL_ROLE: "prefetch"})
    by_node = {(p["metadata"].get("annotations") or {}).get(ANNOTATION_NODE): p for p in pods}
    events: list[WeightsEvent] = []
    progress: list[WeightsProgress] = []
    failures: list[str] = []
    for pod in pods:
        node = (pod["metadata"].get("annotations") or {}).get(ANNOTATION_NODE)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Succeeded" and node and node not in labelled:
            # The pod exits 0 only after verifying the copy and writing the marker: the node holds it.
            await nodes.label(node, ref.node_label, NODE_READY)
            labelled.add(node)
            events.append(WeightsEvent("Normal", "WeightsNodeReady",
                                       f"node {node} holds {ref.repo}@{ref.revision} (label {ref.node_label})"))
        if (phase == "Succeeded" and node in labelled) or node not in eligible:
            await kube.delete("v1", "Pod", ns, pod["metadata"]["name"], uid=pod["metadata"].get("uid"))
            by_node.pop(node, None)
        elif phase == "Failed":
            reason, message = _failure(pod)
            failures.append(f"{node}: {reason}: {message}")
            pause = PERMANENT_RETRY_SECONDS if reason in _PERMANENT else RETRY_SECONDS
            finished = max((_iso_seconds(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt")) or 0.0
                            for cs in (pod.get("status") or {}).get("containerStatuses") or []), default=0.0)
            if clock() - (finished or clock()) >= pause:
                await kube.delete("v1", "Pod", ns, pod["metadata"]["name"], uid=pod["metadata"].get("uid"))
        elif phase == "Running" and (p := await _progress_of(pod, probe, options.status_port)) is not None:
            progress.append(p)
    ready_nodes = tuple(n for n in eligible if n in labelled)
    image = _image(ctx, options)
    for node in eligible:
        if node not in labelled and node not in by_node:
            await kube.apply(prefetch_pod(ref, ns, node, ctx.spec, image, options))
            events.append(WeightsEvent("Normal", "WeightsPrefetchStarted",
                                       f"prefetching {ref.repo}@{ref.revision} onto node {node}"))
    combined = WeightsProgress.combine(progress)
    ready = len(ready_nodes) >= needed
    if ready:
        reason, message = "Ready", (f"{len(ready_nodes)} of {len(eligible)} eligible nodes hold "
                                    f"{ref.repo}@{ref.revision}; gangs need {needed}")
    elif not eligible:
        reason, message = "NoEligibleNodes", ("no node matches the deployment's node selector, tolerations and "
                                              f"{ctx.plan.gpus_per_node} {ctx.spec.hardware.gpu_resource_name}")
    elif failures and not progress:
        reason, message = "Failed", f"prefetch failed on {'; '.join(failures[:3])}"
    else:
        reason = "Downloading"
        message = (f"{len(ready_nodes)} of {needed} nodes needed hold {ref.repo}@{ref.revision}; "
                   f"{_describe(combined)}")
    pending = len(ready_nodes) < len(eligible)
    return _managed(ref, ready=ready, reason=reason, message=message, progress=combined,
                        nodes_ready=ready_nodes, nodes_eligible=len(eligible), events=tuple(events),
                        requeue_after=_POLL_SECONDS if pending else 60.0)


async def collect_weights(kube: Kube, namespace: str, live: Mapping[str, DeploymentSpec | None],
                          options: WeightsOptions | None = None, nodes: NodeApi | None = None,
                          plans: Callable[[DeploymentSpec], Any] | None = None) -> list[WeightsEvent]:
    """Remove caches nobody uses and nobody asked to keep. ``live``: every MiMoDeployment in the namespace
    by name, with its spec (None when it does not parse). A cache is removed when none of the deployments
    its record names still uses it, and every one of them had ``keepAfterDelete: false``; then its clean
    Job (shared volume) or clean pods (each labelled node) run, the node labels and the download Job go,
    and finally the record. Each call takes the next step; :class:`WeightsCollector` calls it after a
    deployment is deleted until nothing is left to remove."""
    options = options or WeightsOptions()
    nodes = nodes or NodeApi(kube)
    events: list[WeightsEvent] = []
    for record in await removable_caches(kube, namespace, live, plans):
        data = record.get("data") or {}
        ref = CacheRef(repo=data["repo"], revision=data["revision"], mode=data["mode"],
                       claim_name=data["location"] if data["mode"] == "shared-volume" else None,
                       node_local_path=data["location"] if data["mode"] == "node-local" else "/var/lib/mimo/weights",
                       token=None, keep_after_delete=False, gate=True)
        image = options.image or data.get("image") or ""
        if ref.mode == "shared-volume":
            events += await _clean_shared(kube, namespace, ref, image, options)
        else:
            events += await _clean_nodes(kube, nodes, namespace, ref, image, options)
    return events


async def removable_caches(kube: Kube, namespace: str, live: Mapping[str, DeploymentSpec | None],
                           plans: Callable[[DeploymentSpec], Any] | None = None) -> list[dict[str, Any]]:
    """The cache records of ``namespace`` that :func:`collect_weights` removes: no live deployment uses the
    cache, and every deployment that did asked for its removal (``keepAfterDelete: false``)."""
    records = await kube.list("v1", "ConfigMap", namespace, {L.LABEL_COMPONENT: "weights", LABEL_ROLE: "record"})
    in_use: set[str] = set()
    for spec in live.values():
        if spec is None:
            continue
        try:
            ref = cache_ref(spec, (plans or plan_deployment)(spec))
        except Exception:  # noqa: S112 - an unplannable spec uses no cache
            continue
        if ref is not None:
            in_use.add(ref.name)
    out = []
    for record in records:
        meta = record["metadata"]
        users = {k[len(ANNOTATION_USER_PREFIX):]: v for k, v in (meta.get("annotations") or {}).items()
                 if k.startswith(ANNOTATION_USER_PREFIX)}
        if meta["name"] in in_use or not users or any(v != "delete" for v in users.values()):
            continue
        out.append(record)
    return out


class WeightsCollector:
    """Cache clean-up without a person: after a MiMoDeployment is deleted, :func:`collect_weights` runs for its
    namespace every few seconds until no removable cache is left there (a clean Job over a terabyte takes a
    while). No finalizer is needed: the cache record, not the deleted object, says who used the cache and
    whether they asked to keep it. Only while this replica leads, like the reconcile loops."""

    def __init__(self, kube: Kube, options: WeightsOptions, leader: Any = None,
                 interval: float = _POLL_SECONDS) -> None:
        self.kube = kube
        self.options = options
        self.leader = leader
        self.interval = interval
        self.pending: set[str] = set()
        self.wake: asyncio.Event = asyncio.Event()

    def deleted(self, namespace: str) -> None:
        """A deployment in ``namespace`` went: look for caches it leaves behind."""
        self.pending.add(namespace)
        self.wake.set()

    async def step(self, namespace: str) -> bool:
        """One step of clean-up in ``namespace``; True while removable caches remain."""
        live: dict[str, DeploymentSpec | None] = {}
        for obj in await self.kube.list(f"{L.GROUP}/{L.VERSION}", L.KIND, namespace, {}):
            if obj["metadata"].get("deletionTimestamp"):
                continue
            try:
                live[obj["metadata"]["name"]] = parse_spec(obj)
            except SpecError:
                live[obj["metadata"]["name"]] = None
        for event in await collect_weights(self.kube, namespace, live, self.options):
            log.info("%s: %s: %s", namespace, event.reason, event.message)
        return bool(await removable_caches(self.kube, namespace, live))

    async def run(self) -> None:
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
            if self.leader is not None and not self.leader.is_leader():
                await self.leader.leading.wait()
            for namespace in sorted(self.pending):
                try:
                    if not await self.step(namespace):
                        self.pending.discard(namespace)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the API or a bad record: try again at the next step, never stop the loop
                    log.exception("%s: weights cache clean-up failed; retrying", namespace)
            await asyncio.sleep(self.interval)


async def _clean_shared(kube: Kube, ns: str, ref: CacheRef, image: str,
                        options: WeightsOptions) -> list[WeightsEvent]:
    for job in await kube.list("batch/v1", "Job", ns, {**ref.selector, LABEL_ROLE: "download"}):
        await kube.delete("batch/v1", "Job", ns, job["metadata"]["name"], uid=job["metadata"].get("uid"))
    cleaners = await kube.list("batch/v1", "Job", ns, {**ref.selector, LABEL_ROLE: "clean"})
    if not cleaners:
        await kube.apply(clean_job(ref, ns, image, options))
        return [WeightsEvent("Normal", "WeightsCacheCleaning", f"removing cache {ref.key} from claim {ref.claim_name}")]
    job = cleaners[0]
    if _condition(job, "Complete") is None:
        return []
    await kube.delete("batch/v1", "Job", ns, job["metadata"]["name"], uid=job["metadata"].get("uid"))
    await kube.delete("v1", "ConfigMap", ns, ref.name)
    return [WeightsEvent("Normal", "WeightsCacheRemoved", f"cache {ref.key} removed from claim {ref.claim_name}")]


async def _clean_nodes(kube: Kube, nodes: NodeApi, ns: str, ref: CacheRef, image: str,
                       options: WeightsOptions) -> list[WeightsEvent]:
    events: list[WeightsEvent] = []
    for pod in await kube.list("v1", "Pod", ns, {**ref.selector, LABEL_ROLE: "prefetch"}):
        await kube.delete("v1", "Pod", ns, pod["metadata"]["name"], uid=pod["metadata"].get("uid"))
    holding = [n["metadata"]["name"] for n in await nodes.list()
               if (n["metadata"].get("labels") or {}).get(ref.node_label)]
    cleaners = {(p["metadata"].get("annotations") or {}).get(ANNOTATION_NODE): p
                for p in await kube.list("v1", "Pod", ns, {**ref.selector, LABEL_ROLE: "clean"})}
    for node in holding:
        cleaner = cleaners.get(node)
        if cleaner is None:
            await kube.apply(clean_pod(ref, ns, node, image, options))
            events.append(WeightsEvent("Normal", "WeightsCacheCleaning", f"removing cache {ref.key} from node {node}"))
        elif (cleaner.get("status") or {}).get("phase") == "Succeeded":
            await nodes.label(node, ref.node_label, None)
            await kube.delete("v1", "Pod", ns, cleaner["metadata"]["name"], uid=cleaner["metadata"].get("uid"))
            events.append(WeightsEvent("Normal", "WeightsCacheRemoved", f"cache {ref.key} removed from node {node}"))
    if not holding and not cleaners:
        await kube.delete("v1", "ConfigMap", ns, ref.name)
    return events
