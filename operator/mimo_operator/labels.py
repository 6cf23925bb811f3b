"""Every label, annotation and field manager the operator writes, with who reads it.

Names of child objects are derived here too, so that a builder, the reconciler and a person with
kubectl agree on them.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ANNOTATION_BOOTSTRAP_PORT",
    "ANNOTATION_LAUNCH_PLAN",
    "ANNOTATION_SPEC_HASH",
    "FIELD_MANAGER",
    "GROUP",
    "KUEUE_APIS",
    "KUEUE_FINALIZER",
    "KUEUE_GROUP_LABEL",
    "KUEUE_REQUIRED_TOPOLOGY",
    "LABEL_ATTEMPT",
    "LABEL_COMPONENT",
    "LABEL_DEPLOYMENT",
    "LABEL_GANG",
    "LABEL_MANAGED_BY",
    "LABEL_POOL",
    "LABEL_RANK",
    "LABEL_REPLICA",
    "LABEL_REVISION",
    "LABEL_ROLE",
    "LABEL_SERVING",
    "LABEL_TEMPLATE",
    "MANAGED_BY",
    "gang_name",
    "pod_name",
    "short_hash",
]

GROUP = "serving.mimo-operator.io"
VERSION = "v1alpha1"
PLURAL = "mimodeployments"
KIND = "MiMoDeployment"
# kube-scheduler's own gang scheduling (spec.scheduling.gangScheduler: kubernetes): the scheduling.k8s.io
# version with a standalone PodGroup in each Kubernetes minor that has one, and those versions newest first.
NATIVE_PODGROUP_API_BY_MINOR = {37: "scheduling.k8s.io/v1alpha3", 36: "scheduling.k8s.io/v1alpha2"}
NATIVE_PODGROUP_APIS = tuple(api for _, api in sorted(NATIVE_PODGROUP_API_BY_MINOR.items(), reverse=True))
# Kueue (spec.scheduling.gangScheduler: kueue): its API versions, newest first; the label that makes a gang's
# pods one pod group (the operator gives it the gang's name, which is also the group's Workload's name);
# the finalizer Kueue keeps on every pod of a group.
KUEUE_APIS = ("kueue.x-k8s.io/v1beta2", "kueue.x-k8s.io/v1beta1")
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_FINALIZER = "kueue.x-k8s.io/managed"
# Kueue's topology-aware scheduling: every pod of a gang asks that the group be admitted inside one domain of
# this node label (a level of the Topology behind the queue's ResourceFlavor).
KUEUE_REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"

# The one field manager of every server-side apply the operator makes.
FIELD_MANAGER = "mimo-operator"
MANAGED_BY = "mimo-operator"

# Standard labels: read by people, dashboards and `kubectl get -l`.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"  # engine | router | weights
# Read by the chart's NOTES and by people (which objects the operator made).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

_PREFIX = "mimo-operator.io/"
# The MiMoDeployment a child belongs to: the observe layer lists children by it, and the operator's pod watch
# keeps every pod that carries it.
LABEL_DEPLOYMENT = _PREFIX + "deployment"
# The replica slot (0 … replicas-1) a gang fills; scale-down removes the highest first.
LABEL_REPLICA = _PREFIX + "replica"
# The gang a pod belongs to: one gang = one SGLang server; the NetworkPolicy selects on it.
LABEL_GANG = _PREFIX + "gang"
# The revision hash of the gang's pods; a different hash on the deployment means a rollout.
LABEL_REVISION = _PREFIX + "revision"
# The hash of the builders' output the gang was rendered with (build.gang.template_of): a gang of the
# current revision whose template differs was made by another operator version; status reports it.
LABEL_TEMPLATE = _PREFIX + "template"
# Which attempt of this replica the gang is (bumped on every recreation after a failure).
LABEL_ATTEMPT = _PREFIX + "attempt"
# prefill | decode on every object of a gang of a disaggregated deployment (spec.disaggregation); absent on
# a colocated deployment's gangs. The router's PD discovery selects each side on it.
LABEL_POOL = _PREFIX + "pool"
# head | member: the head runs Ray's head and node rank 0 (the only HTTP server of the gang).
LABEL_ROLE = _PREFIX + "role"
LABEL_RANK = _PREFIX + "rank"
# How many pods the gang has: a gang with fewer pods than this has lost one.
LABEL_GANG_SIZE = _PREFIX + "gang-size"
# "true" on a head pod the router may send traffic to; removed first when a gang drains, so the
# router's pod discovery (selector includes it) drops the gang before its pods go.
LABEL_SERVING = _PREFIX + "serving"

# sha256 of the desired object as last applied: an unchanged child is never written again.
ANNOTATION_SPEC_HASH = _PREFIX + "spec-hash"
# Set on the head pod while a gang drains: when the drain started (RFC 3339), for the timeout.
ANNOTATION_DRAIN_STARTED = _PREFIX + "drain-started"
# Why a gang is draining (scale-down, rollout, autoscaler) for status and events.
ANNOTATION_DRAIN_REASON = _PREFIX + "drain-reason"
# Every pod of a gang carries the gang's launch plan (JSON), which a downward-API volume shows the worker as a
# file: the plan travels with the pods, so a gang is its pods and one NetworkPolicy, nothing else to write.
ANNOTATION_LAUNCH_PLAN = _PREFIX + "launch-plan"

# The prefill head's KV bootstrap port, read by sglang-router's PD service discovery (its default
# --bootstrap-port-annotation): the router tells the decode side where to fetch each request's KV from.
ANNOTATION_BOOTSTRAP_PORT = "sglang.ai/bootstrap-port"

ROLE_HEAD = "head"
ROLE_MEMBER = "member"


def short_hash(*parts: str, length: int = 10) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:length]


def gang_name(deployment: str, replica: int, revision: str, attempt: int) -> str:
    """``<deployment>-<replica>-<5 hex>``: unique per (revision, attempt), so a replacement gang never
    waits for the name of the gang it replaces (which may take a grace period to go)."""
    return f"{deployment}-{replica}-{short_hash(revision, str(attempt), length=5)}"


def pod_name(gang: str, rank: int) -> str:
    return f"{gang}-{rank}"
