"""The weights cache as Kubernetes objects — pure functions of (deployment spec, plan, options).

A cached checkpoint is named by its *cache key*, a function of (Hugging Face repo, revision) only, so every
deployment of the same checkpoint finds the same copy: ``<repo name>-<hash>``, e.g.
``mimo-v2-5-pro-3f2a9c01de``. Its files live in ``<cache volume>/weights/<key>``, which engine containers see
as :func:`weights_model_path` (the volume is mounted at ``CACHE_MOUNT_PATH``).

- shared-volume: one download Job per (key, claim) in a namespace, ``mimo-weights-<key>-<claim hash>``,
  mounting the claim; the Job succeeding is the record that the copy is complete and verified.
- node-local: one prefetch Pod per eligible node, pinned to it, writing into the node's hostPath; when it
  succeeds the operator labels the node ``weights.mimo-operator.io/<key>.<path hash>=ready`` and gangs
  require that label (:func:`weights_node_affinity`).
- a cache record ConfigMap per (key, location) lists the deployments that use the copy (annotations
  ``users.weights.mimo-operator.io/<deployment>: keep|delete``) for the cleanup; it never holds the token.

Download, prefetch and clean pods run ``python3 -m mimo_worker.weights`` from the engine image; they get
the hub token from the Secret by reference (``HF_TOKEN``), no service-account token, and no API access:
progress is read by the operator from ``GET http://<pod IP>:<status port>/status``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mimo_operator import labels as L
from mimo_operator.build.placement import GPU_TAINT_TOLERATION, gang_tolerations
from mimo_operator.cachepaths import CACHE_MOUNT_PATH, WEIGHTS_DIR, cache_key, cached_checkpoint
from mimo_operator.plan import Plan
from mimo_operator.spec import DeploymentSpec, SecretKeyRef

__all__ = [
    "ANNOTATION_NODE",
    "ANNOTATION_USER_PREFIX",
    "LABEL_KEY",
    "LABEL_LOCATION",
    "LABEL_NODE_HASH",
    "LABEL_ROLE",
    "NODE_READY",
    "WEIGHTS_DIR",
    "CacheRef",
    "WeightsOptions",
    "cache_key",
    "cache_record",
    "cache_ref",
    "clean_job",
    "clean_pod",
    "download_job",
    "eligible_node",
    "prefetch_pod",
    "tolerates",
    "weights_match_expressions",
    "weights_model_path",
    "weights_node_affinity",
]

_PREFIX = "weights.mimo-operator.io/"
# On download Jobs, prefetch/clean pods and cache records: which cached checkpoint they are for. The
# operator lists them by these labels (a second deployment of the same checkpoint finds the first's Job).
LABEL_KEY = _PREFIX + "key"
# Where the copy lives: a hash of the claim name (shared-volume) or of the node directory (node-local).
LABEL_LOCATION = _PREFIX + "location"
# download | prefetch | clean: what the pod does (read by the operator and by people with kubectl).
LABEL_ROLE = _PREFIX + "role"
# Prefetch and clean pods: a hash of the node name (label values cannot hold every node name).
LABEL_NODE_HASH = _PREFIX + "node-hash"
# Prefetch and clean pods: the node they are pinned to, in full.
ANNOTATION_NODE = _PREFIX + "node"
# On the cache record, one per deployment that uses the copy: "keep" or "delete" (its keepAfterDelete).
ANNOTATION_USER_PREFIX = "users.weights.mimo-operator.io/"
# On the record: what is cached, for people (repo@revision, mode, claim or path).
ANNOTATION_SOURCE = _PREFIX + "source"
# The value of a node's weights label once its copy is complete and verified; gangs require it.
NODE_READY = "ready"
_PROGRAM = ["python3", "-m", "mimo_worker.weights"]
# Exit codes after which the download Job fails at once instead of retrying (mimo_worker.weights.errors):
# not enough space, not a loadable checkpoint, the hub refused the token, a precision the plan did not size.
# A person must act first.
PERMANENT_EXIT_CODES = (3, 4, 5, 7)


@dataclass(frozen=True)
class WeightsOptions:
    """The operator's settings for weights pods (from its own configuration, not from a deployment)."""

    # Extra labels on download, prefetch and clean pods. The local cluster needs its process label here
    # (localcluster.mimo-operator.io/process) for the pods to run as real processes.
    pod_labels: tuple[tuple[str, str], ...] = ()
    image: str | None = None  # default: the deployment's engine image (it carries mimo_worker)
    hub_endpoint: str | None = None  # HF_ENDPOINT for the pods: a hub mirror (and the fake hub in tests)
    status_port: int = 8000
    workers: int = 8
    backoff_limit: int = 6
    hashes: bool = True
    cpu: str = "1"
    memory: str = "2Gi"


@dataclass(frozen=True)
class CacheRef:
    """One cached checkpoint in one place: what (repo, revision) and where (claim or node directory)."""

    repo: str
    revision: str
    mode: Literal["shared-volume", "node-local"]
    claim_name: str | None
    node_local_path: str
    token: SecretKeyRef | None
    keep_after_delete: bool
    gate: bool
    precision: str = "fp8"  # what the plan sized; the download refuses a checkpoint in another one

    @property
    def key(self) -> str:
        return cache_key(self.repo, self.revision)

    @property
    def location(self) -> str:
        where = self.claim_name or "" if self.mode == "shared-volume" else self.node_local_path
        return L.short_hash(self.mode, where, length=6)

    @property
    def name(self) -> str:
        """Of the download Job and the cache record: ``mimo-weights-<key>-<location>`` (≤ 60 characters)."""
        return f"mimo-weights-{self.key}-{self.location[:4]}"

    @property
    def model_path(self) -> str:
        """The checkpoint directory as engine containers see it (the cache volume at CACHE_MOUNT_PATH)."""
        return f"{CACHE_MOUNT_PATH}/{WEIGHTS_DIR}/{self.key}"

    @property
    def node_label(self) -> str:
        """The node label that says this node holds a complete, verified copy (node-local mode)."""
        return f"{_PREFIX}{self.key}.{self.location}"

    @property
    def selector(self) -> dict[str, str]:
        return {LABEL_KEY: self.key, LABEL_LOCATION: self.location}


def cache_ref(spec: DeploymentSpec, plan: Plan) -> CacheRef | None:
    """The cache a deployment uses, or None when the operator manages no weights for it: cache mode none
    (the engine fetches the checkpoint itself) or a ``source.path`` (already on a volume or the nodes)."""
    model = spec.model
    cache = model.cache
    cached = cached_checkpoint(spec, plan.checkpoint)
    if cached is None or cache.mode == "none":
        return None
    repo, revision = cached
    return CacheRef(repo=repo, revision=revision, mode=cache.mode, claim_name=cache.claim_name,
                    node_local_path=cache.node_local_path, token=model.token_secret_ref,
                    keep_after_delete=cache.keep_after_delete, gate=cache.gate_on_weights_ready,
                    precision=model.precision)


def weights_model_path(spec: DeploymentSpec, plan: Plan) -> str | None:
    """What SGLang's ``--model-path`` should be when the operator manages the weights (else None)."""
    ref = cache_ref(spec, plan)
    return None if ref is None else ref.model_path


def weights_match_expressions(spec: DeploymentSpec, plan: Plan) -> list[dict[str, Any]]:
    """Node-selector requirements a gang pod needs so it lands only where its weights are: for the
    node-local cache, the node's weights label must say ready. AND them into every nodeSelectorTerm."""
    ref = cache_ref(spec, plan)
    if ref is None or ref.mode != "node-local":
        return []
    return [{"key": ref.node_label, "operator": "In", "values": [NODE_READY]}]


def weights_node_affinity(spec: DeploymentSpec, plan: Plan) -> dict[str, Any] | None:
    """A complete ``affinity.nodeAffinity`` for a gang pod that has none of its own (else None)."""
    expressions = weights_match_expressions(spec, plan)
    if not expressions:
        return None
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": expressions}]}}


# ------------------------------------------------------------------------------------ objects


def _labels(ref: CacheRef, role: str, options: WeightsOptions, pod: bool) -> dict[str, str]:
    labels = {
        L.LABEL_NAME: "mimo", L.LABEL_COMPONENT: "weights", L.LABEL_MANAGED_BY: L.MANAGED_BY,
        LABEL_KEY: ref.key, LABEL_LOCATION: ref.location, LABEL_ROLE: role,
    }
    return {**dict(options.pod_labels), **labels} if pod else labels


def _annotations(ref: CacheRef) -> dict[str, str]:
    where = f"claim {ref.claim_name}" if ref.mode == "shared-volume" else f"hostPath {ref.node_local_path}"
    return {ANNOTATION_SOURCE: f"{ref.repo}@{ref.revision} ({ref.mode}, {where})"}


def _volume(ref: CacheRef) -> dict[str, Any]:
    if ref.mode == "shared-volume":
        return {"name": "weights", "persistentVolumeClaim": {"claimName": ref.claim_name}}
    return {"name": "weights", "hostPath": {"path": ref.node_local_path, "type": "DirectoryOrCreate"}}


def _container(ref: CacheRef, image: str, options: WeightsOptions, args: list[str]) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "HF_HUB_DISABLE_PROGRESS_BARS", "value": "1"},
    ]
    if options.hub_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": options.hub_endpoint})
    if ref.token is not None:
        # By reference only: the token is never in this object, a ConfigMap, an event or a log.
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.token.name, "key": ref.token.key}}})
    return {
        "name": "weights",
        "image": image,
        "command": list(_PROGRAM),
        "args": args,
        "env": env,
        "ports": [{"name": "status", "containerPort": options.status_port}],
        "volumeMounts": [{"name": "weights", "mountPath": CACHE_MOUNT_PATH}],
        "resources": {"requests": {"cpu": options.cpu, "memory": options.memory},
                      "limits": {"memory": options.memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _download_args(ref: CacheRef, options: WeightsOptions) -> list[str]:
    args = ["download", "--repo", ref.repo, "--revision", ref.revision, "--dest", ref.model_path,
            "--workers", str(options.workers), "--status-address", "$(POD_IP)",
            "--status-port", str(options.status_port), "--precision", ref.precision]
    return args if options.hashes else [*args, "--no-hashes"]


def _pod_spec(containers: list[dict[str, Any]], ref: CacheRef, tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        # No API access: progress is read from the pod, the node label is written by the operator.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "tolerations": tolerations,
        "containers": containers,
        "volumes": [_volume(ref)],
    }


def download_job(ref: CacheRef, namespace: str, image: str, options: WeightsOptions) -> dict[str, Any]:
    """The one Job that fills a shared-volume cache. No owner: several deployments share it, and it stays
    as the record of a complete copy (a second Job for the same copy would find the marker and exit 0)."""
    labels = _labels(ref, "download", options, pod=False)
    pod_labels = _labels(ref, "download", options, pod=True)
    container = _container(ref, image, options, _download_args(ref, options))
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": ref.name, "namespace": namespace, "labels": labels, "annotations": _annotations(ref)},
        "spec": {
            "backoffLimit": options.backoff_limit,
            # Each retry is a new pod on the same volume: it resumes from the .part files.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "weights", "operator": "In",
                                                       "values": list(PERMANENT_EXIT_CODES)}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(options.status_port)}},
                "spec": _pod_spec([container], ref, [GPU_TAINT_TOLERATION]),
            },
        },
    }


def _pinned(node: str) -> dict[str, Any]:
    # matchFields on the node's name, as the DaemonSet controller pins its pods: the scheduler still checks
    # taints and resources, unlike spec.nodeName.
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}


def _node_pod(ref: CacheRef, namespace: str, node: str, role: str, name: str, image: str, args: list[str],
              tolerations: list[dict[str, Any]], options: WeightsOptions) -> dict[str, Any]:
    labels = {**_labels(ref, role, options, pod=True), LABEL_NODE_HASH: L.short_hash(node, length=10)}
    pod_spec = _pod_spec([_container(ref, image, options, args)], ref, tolerations)
    pod_spec["affinity"] = _pinned(node)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {**_annotations(ref), ANNOTATION_NODE: node}},
        "spec": pod_spec,
    }


def prefetch_pod(ref: CacheRef, namespace: str, node: str, spec: DeploymentSpec, image: str,
                 options: WeightsOptions) -> dict[str, Any]:
    """The pod that fills one node's copy (node-local mode), pinned to that node with the gang's
    tolerations (eligible nodes are those a gang may use)."""
    name = f"mimo-prefetch-{ref.key}-{L.short_hash(node, ref.location, length=6)}"
    return _node_pod(ref, namespace, node, "prefetch", name, image, _download_args(ref, options),
                     gang_tolerations(spec), options)


def clean_pod(ref: CacheRef, namespace: str, node: str, image: str, options: WeightsOptions) -> dict[str, Any]:
    """The pod that removes one node's copy, before the operator removes the node's label. It tolerates
    every taint: whichever deployment's gangs the node served, its disk must be reachable."""
    name = f"mimo-clean-{ref.key}-{L.short_hash(node, ref.location, length=6)}"
    return _node_pod(ref, namespace, node, "clean", name, image, ["clean", "--dest", ref.model_path],
                     [{"operator": "Exists"}], options)


def clean_job(ref: CacheRef, namespace: str, image: str, options: WeightsOptions) -> dict[str, Any]:
    """The Job that removes a shared-volume copy."""
    job = download_job(ref, namespace, image, options)
    job["metadata"]["name"] = f"mimo-clean-{ref.key}-{ref.location[:4]}"
    job["metadata"]["labels"][LABEL_ROLE] = "clean"
    template = job["spec"]["template"]
    template["metadata"]["labels"][LABEL_ROLE] = "clean"
    template["spec"]["containers"][0]["args"] = ["clean", "--dest", ref.model_path]
    job["spec"].pop("podFailurePolicy")
    return job


def cache_record(ref: CacheRef, namespace: str, image: str) -> dict[str, Any]:
    """The ConfigMap that records a cached copy and (in annotations, merged in by the operator) its users."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": ref.name, "namespace": namespace, "labels": _labels(ref, "record", WeightsOptions(),
                                                                                   pod=False),
                     "annotations": _annotations(ref)},
        "data": {"repo": ref.repo, "revision": ref.revision, "mode": ref.mode,
                 "location": ref.claim_name if ref.mode == "shared-volume" else ref.node_local_path,
                 "modelPath": ref.model_path, "nodeLabel": ref.node_label if ref.mode == "node-local" else "",
                 # The image the cleanup runs when every user is gone (and their specs with them).
                 "image": image},
    }


# ------------------------------------------------------------------------------------ node eligibility


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' toleration matching (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if not t.get("key"):
            if t.get("operator") == "Exists":
                return True
            continue
        if t.get("key") != taint.get("key"):
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def eligible_node(node: Mapping[str, Any], spec: DeploymentSpec, gpus_per_node: int) -> bool:
    """Could a gang pod of this deployment run on ``node``? Ready, schedulable, matching the node selector,
    with the GPUs one pod asks for, and every NoSchedule/NoExecute taint tolerated."""
    meta, node_spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    if node_spec.get("unschedulable"):
        return False
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
        return False
    labels = meta.get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.hardware.node_selector or {}).items()):
        return False
    try:
        gpus = int(str((status.get("allocatable") or {}).get(spec.hardware.gpu_resource_name, "0")))
    except ValueError:
        return False
    if gpus < gpus_per_node:
        return False
    tolerations = gang_tolerations(spec)
    return all(tolerates(tolerations, t) for t in node_spec.get("taints") or []
               if t.get("effect") in ("NoSchedule", "NoExecute"))
