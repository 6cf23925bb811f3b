"""Leader election on a coordination.k8s.io Lease, so two operator replicas never act at once.

The standby replica keeps its watches warm (Kopf runs in both) but its reconcile loops wait until it
holds the lease. A leader that cannot renew within the lease duration stops acting before another
replica can take over (renew deadline < lease duration), the way client-go's leader election works.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from mimo_operator.kube import ApiError, Kube

__all__ = ["LeaderElection"]

log = logging.getLogger("mimo.operator.leader")

_API = "coordination.k8s.io/v1"


def _micro(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> float:
    if not text:
        return 0.0
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class LeaderElection:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, lease_seconds: int = 15,
                 renew_seconds: float = 5.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.leading = asyncio.Event()
        self._renewed_at = 0.0

    def is_leader(self) -> bool:
        # Stop acting as soon as the lease may have passed to another replica.
        fresh = time.monotonic() - self._renewed_at < self.lease_seconds - self.renew_seconds
        if not fresh and self.leading.is_set():
            self.leading.clear()
        return self.leading.is_set()

    async def run(self) -> None:
        while True:
            try:
                if await self._try_acquire_or_renew():
                    self._renewed_at = time.monotonic()
                    if not self.leading.is_set():
                        log.info("leader: %s holds lease %s/%s", self.identity, self.namespace, self.name)
                    self.leading.set()
                else:
                    if self.leading.is_set():
                        log.warning("leader: lost lease %s/%s", self.namespace, self.name)
                    self.leading.clear()
            except (TimeoutError, ApiError, OSError) as e:
                log.warning("leader: lease %s/%s: %s", self.namespace, self.name, e)
                self.is_leader()
            await asyncio.sleep(self.renew_seconds)

    async def _try_acquire_or_renew(self) -> bool:
        now = time.time()
        lease = await self.kube.get(_API, "Lease", self.namespace, self.name)
        spec: dict[str, object] = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "renewTime": _micro(now)}
        if lease is None:
            await self.kube.create({"apiVersion": _API, "kind": "Lease",
                                    "metadata": {"name": self.name, "namespace": self.namespace},
                                    "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0}})
            return True
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        expired = _parse(current.get("renewTime")) + float(current.get("leaseDurationSeconds", 15)) < now
        if holder not in (None, "", self.identity) and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = _micro(now)
            spec["leaseTransitions"] = int(current.get("leaseTransitions", 0)) + 1
        # The resourceVersion makes this a compare-and-swap: two candidates cannot both win.
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            await self.kube.merge_patch(_API, "Lease", self.namespace, self.name, patch)
        except ApiError as e:
            if e.code == 409:
                return False
            raise
        return True
