"""Whether the gang scheduler a MiMoDeployment names is installed in the cluster.

A gang whose pods name a scheduler that does not run, or carry a PodGroup of an API nobody serves, stays
Pending forever while holding nothing: the operator refuses such a spec in status instead. "Installed" is
read from API discovery (the scheduler's CRD served), which is what each scheduler's install adds first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mimo_operator import labels as L

__all__ = ["GANG_SCHEDULER_APIS", "GangSchedulerApi", "missing_gang_scheduler", "served_gang_api"]


@dataclass(frozen=True)
class GangSchedulerApi:
    group_versions: tuple[str, ...]  # any one of them serving the resource is enough
    resource: str
    install: str                     # what to install, for the status message


GANG_SCHEDULER_APIS: dict[str, GangSchedulerApi] = {
    "scheduler-plugins": GangSchedulerApi(("scheduling.x-k8s.io/v1alpha1",), "podgroups",
                                          "scheduler-plugins' coscheduling scheduler and its PodGroup CRD"),
    "volcano": GangSchedulerApi(("scheduling.volcano.sh/v1beta1",), "podgroups", "Volcano"),
    "kueue": GangSchedulerApi(("kueue.x-k8s.io/v1beta2", "kueue.x-k8s.io/v1beta1"), "workloads",
                              "Kueue (with its pod integration enabled)"),
    # kube-scheduler's own gang scheduling (KEP-4671): standalone PodGroups, the newest version first.
    "kubernetes": GangSchedulerApi(L.NATIVE_PODGROUP_APIS, "podgroups",
                                   "Kubernetes 1.36 or 1.37 with the GenericWorkload and GangScheduling feature "
                                   "gates on the apiserver and the scheduler, and scheduling.k8s.io's PodGroup "
                                   "version in --runtime-config"),
}


class Discovery(Protocol):
    async def served_resources(self, group_version: str) -> frozenset[str] | None: ...


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
