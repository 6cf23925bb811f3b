"""Whether the gang scheduler a MiMoDeployment names is installed in the cluster.

A gang whose pods name a scheduler that does not run, or carry a PodGroup of an API nobody serves, stays
Pending forever while holding nothing: the operator refuses such a spec in status instead. "Installed" is
read from API discovery (the scheduler's CRD served), which is what each scheduler's install adds first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mimo_operator import labels as L

__all__ = [
    "GANG_SCHEDULER_APIS",
    "GangSchedulerApi",
    "KueueGroups",
    "KueueTopology",
    "gang_topology_served",
    "kueue_topology",
    "missing_gang_scheduler",
    "missing_queue",
    "served_gang_api",
]


@dataclass(frozen=True)
class GangSchedulerApi:
    group_versions: tuple[str, ...]  # any one of them serving the resource is enough
    resource: str
    install: str                     # what to install, for the status message


GANG_SCHEDULER_APIS: dict[str, GangSchedulerApi] = {
    "scheduler-plugins": GangSchedulerApi(("scheduling.x-k8s.io/v1alpha1",), "podgroups",
                                          "scheduler-plugins' coscheduling scheduler and its PodGroup CRD"),
    "volcano": GangSchedulerApi(("scheduling.volcano.sh/v1beta1",), "podgroups", "Volcano"),
    "kueue": GangSchedulerApi(L.KUEUE_APIS, "workloads",
                              "Kueue (with its pod integration enabled)"),
    # kube-scheduler's own gang scheduling (KEP-4671): standalone PodGroups, the newest version first.
    "kubernetes": GangSchedulerApi(L.NATIVE_PODGROUP_APIS, "podgroups",
                                   "Kubernetes 1.36 or 1.37 with the GenericWorkload and GangScheduling feature "
                                   "gates on the apiserver and the scheduler, and scheduling.k8s.io's PodGroup "
                                   "version in --runtime-config"),
}


class Discovery(Protocol):
    async def served_resources(self, group_version: str) -> frozenset[str] | None: ...


class _Prober(Protocol):
    async def accepts(self, key: str, obj: Mapping[str, Any]) -> bool: ...


async def gang_topology_served(kube: _Prober, api: str, namespace: str, topology_key: str) -> bool:
    """Whether the cluster takes a topology constraint on a native PodGroup of ``api``: the field is refused
    unless the apiserver runs the TopologyAwareWorkloadScheduling gate, which discovery does not show, so a
    PodGroup is created in a dry run (needs only the create permission the operator has)."""
    probe = {"apiVersion": api, "kind": "PodGroup",
             "metadata": {"name": "mimo-operator-topology-probe", "namespace": namespace},
             "spec": {"schedulingPolicy": {"gang": {"minCount": 1}},
                      "schedulingConstraints": {"topology": [{"key": topology_key}]}}}
    return await kube.accepts(f"{api} PodGroup topology", probe)


class _Getter(Discovery, Protocol):
    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class KueueTopology:
    """What the flavors of a Kueue queue say of topology-aware scheduling."""

    # The node labels that Kueue can hold a group of pods to: the levels of the Topology behind each flavor.
    levels: frozenset[str] = frozenset()
    # Every flavor has a Topology: Kueue then places every group of pods of the queue by its Topology, even
    # one that asks for none, and pods' own affinities do not take part in that placement.
    tas_only: bool = False


async def kueue_topology(kube: _Getter, namespace: str, queue: str) -> KueueTopology:
    """What the ResourceFlavors of LocalQueue ``queue``'s ClusterQueue say of topology. No levels when no
    flavor has a Topology, when the queue or its ClusterQueue does not exist, or when Kueue serves no Topology.

    A pod group that asks for a topology (``labels.KUEUE_REQUIRED_TOPOLOGY``) is admitted only on a flavor
    that has one, so asking where none has would leave the gang gated for ever: the operator asks only for a
    level that this finds."""
    api = await served_gang_api(kube, "kueue")
    if api is None or "topologies" not in (await kube.served_resources(api) or frozenset()):
        return KueueTopology()
    cluster_queue = _spec(await kube.get(api, "LocalQueue", namespace, queue)).get("clusterQueue")
    if not cluster_queue:
        return KueueTopology()
    flavors = {str(flavor["name"])
               for group in _spec(await kube.get(api, "ClusterQueue", "", cluster_queue)).get("resourceGroups") or []
               for flavor in group.get("flavors") or [] if flavor.get("name")}
    levels: set[str] = set()
    with_topology = 0
    for flavor in sorted(flavors):
        topology = _spec(await kube.get(api, "ResourceFlavor", "", flavor)).get("topologyName")
        if not topology:
            continue
        with_topology += 1
        for level in _spec(await kube.get(api, "Topology", "", topology)).get("levels") or []:
            if level.get("nodeLabel"):
                levels.add(str(level["nodeLabel"]))
    return KueueTopology(frozenset(levels), tas_only=bool(flavors) and with_topology == len(flavors))


def _spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("spec") or {}


async def missing_queue(kube: _Getter, gang_scheduler: str, namespace: str, queue: str | None) -> str | None:
    """None when the queue the gangs name exists, else why not (for the status). Kueue's pod integration
    leaves pods naming a LocalQueue that does not exist gated for ever, with nothing said where the
    deployment's owner looks; Volcano's queues are not checked."""
    if gang_scheduler != "kueue" or not queue:
        return None
    api = await served_gang_api(kube, "kueue")
    if api is None or await kube.get(api, "LocalQueue", namespace, queue) is not None:
        return None
    return (f"no Kueue LocalQueue {queue!r} in namespace {namespace!r}: create one that points at a ClusterQueue "
            "(kind: LocalQueue, spec.clusterQueue), or name an existing one")


class _Deleter(Discovery, Protocol):
    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None,
                     grace_seconds: int | None = None) -> bool: ...


class KueueGroups:
    """Ends the Kueue pod group of a gang whose pods are being deleted.

    Kueue keeps its finalizer on a group's pods until the group has finished (every pod succeeded), until a
    failed pod is replaced, or until the group's Workload is deleted (Kueue's troubleshooting guide, "Why
    aren't Pods in a Pod group deleted"). A gang is never repaired pod by pod: once one of its pods is being
    deleted (by the operator replacing or draining the gang, by garbage collection after its deployment
    was deleted, by an eviction) the gang is over, so its Workload is deleted and Kueue lets every pod go
    and releases the quota. Without that, a gang deleted while it waited in the queue would stay
    Terminating for ever."""

    def __init__(self, kube: _Deleter) -> None:
        self.kube = kube
        self._ended: dict[tuple[str, str], None] = {}  # recent groups, oldest first (bounded)

    @staticmethod
    def held(pod: Mapping[str, Any]) -> str | None:
        """The Kueue pod group of ``pod`` when the pod is being deleted and Kueue still holds it, else None."""
        meta = pod.get("metadata") or {}
        group = (meta.get("labels") or {}).get(L.KUEUE_GROUP_LABEL)
        if not group or not meta.get("deletionTimestamp") or L.KUEUE_FINALIZER not in (meta.get("finalizers") or []):
            return None
        return str(group)

    async def pod_seen(self, pod: Mapping[str, Any]) -> bool:
        """Delete the Workload of ``pod``'s group when the pod is being deleted and still held by Kueue
        (True when this call deleted it)."""
        group = self.held(pod)
        if group is None:
            return False
        key = (str((pod.get("metadata") or {}).get("namespace")), group)
        if key in self._ended:
            return False
        api = await served_gang_api(self.kube, "kueue")
        if api is None:
            return False
        self._ended[key] = None
        while len(self._ended) > 4096:
            del self._ended[next(iter(self._ended))]
        # The pod group's Workload has the group's name.
        return await self.kube.delete(api, "Workload", key[0], group)


async def served_gang_api(kube: Discovery, name: str) -> str | None:
    """The first of the gang scheduler's group versions that this cluster serves its resource in (None when
    none does, or when ``name``, "none" included, needs no API)."""
    api = GANG_SCHEDULER_APIS.get(name)
    if api is None:
        return None
    for group_version in api.group_versions:
        served = await kube.served_resources(group_version)
        if served is not None and api.resource in served:
            return group_version
    return None


async def missing_gang_scheduler(kube: Discovery, name: str) -> str | None:
    """None when ``name`` ("none" included) can schedule gangs here, else why not (for the status)."""
    api = GANG_SCHEDULER_APIS.get(name)
    if api is None or await served_gang_api(kube, name) is not None:
        return None
    return (f"gang scheduler {name!r} is not installed in this cluster (no {api.resource} in "
            f"{' or '.join(api.group_versions)}): install {api.install}, or set scheduling.gangScheduler to none")
