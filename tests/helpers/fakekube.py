"""An in-memory stand-in for the operator's `Kube` boundary, as httpx's MockTransport is to its client.

It stores objects by (apiVersion, kind, namespace, name), assigns uid, resourceVersion, generation and
creationTimestamp (from the test's clock), merges patches, counts every write, and fails chosen requests
with an API status code (422, 409, 404, …). It has no garbage collector and no kubelet: a test moves pods
itself (`set_pod`), and deleted pods stay Terminating until `finish_deletions`, as with a grace period.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mimo_operator.kube import ApiError

Key = tuple[str, str, str, str]


@dataclass
class Failure:
    verb: str
    kind: str
    code: int
    message: str
    times: int = 1


def _merge(into: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


class FakeKube:
    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.clock = clock
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []     # (verb, kind, name)
        self.failures: list[Failure] = []
        # API discovery: group version → the resources it serves (none served unless a test says so).
        self.served: dict[str, frozenset[str]] = {}
        self.accepted: dict[str, bool] = {}  # Kube.accepts by key (a dry run)
        self.dry_runs: list[str] = []
        # A lagging pod watch: while ``lag`` is on, pods created are stored but not listed (``catch_up`` ends it).
        self.lag = False
        self.unlisted: set[Key] = set()
        # Slow pod creates: while ``hold`` is set and not yet released, a pod create waits for it.
        self.hold: asyncio.Event | None = None
        self._versions = itertools.count(1)

    # --- test controls
    def fail(self, verb: str, kind: str, code: int, message: str, times: int = 1) -> None:
        """The next ``times`` requests ``verb`` on ``kind`` fail with ``code`` and the API's ``message``."""
        self.failures.append(Failure(verb, kind, code, message, times))

    def of(self, kind: str, namespace: str = "ns", labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (_, k, ns, _), o in sorted(self.objects.items())
                if k == kind and ns == namespace and _matches(o, labels or {})]

    def set_pod(self, name: str, namespace: str = "ns", node: str | None = None, **status: Any) -> None:
        """What the scheduler and a kubelet would report, without counting as an operator write."""
        pod = self.objects[("v1", "Pod", namespace, name)]
        if node is not None:
            pod.setdefault("spec", {})["nodeName"] = node
        _merge(pod.setdefault("status", {}), status)
        self._bump(pod)

    def finish_deletions(self) -> None:
        for key, obj in list(self.objects.items()):
            if obj["metadata"].get("deletionTimestamp"):
                del self.objects[key]

    def writes_since(self, mark: int) -> list[tuple[str, str, str]]:
        return self.writes[mark:]

    # --- the Kube boundary
    async def list(self, api_version: str, kind: str, namespace: str | None,
                   labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        self._maybe_fail("list", kind)
        # As the API lists them: the items of a list carry no kind or apiVersion (the list does).
        return [{k: copy.deepcopy(v) for k, v in o.items() if k not in ("kind", "apiVersion")}
                for key, o in sorted(self.objects.items())
                if key[0] == api_version and key[1] == kind and (namespace is None or key[2] == namespace)
                and key not in self.unlisted and _matches(o, labels)]

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail("get", kind)
        obj = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def served_resources(self, group_version: str) -> frozenset[str] | None:
        return self.served.get(group_version)

    async def accepts(self, key: str, obj: Mapping[str, Any]) -> bool:
        """What a dry run would say: the test's answer under ``key`` (refused unless it says otherwise)."""
        self.dry_runs.append(key)
        return self.accepted.get(key, False)

    async def create(self, obj: Mapping[str, Any], exist_ok: bool = False) -> dict[str, Any] | None:
        key = _key(obj)
        if self.hold is not None and obj["kind"] == "Pod":
            await self.hold.wait()
        self._write("create", obj["kind"], key[3])
        if key in self.objects:
            if exist_ok:
                return None
            raise ApiError(409, "create", obj["kind"], f'{obj["kind"]} "{key[3]}" already exists')
        if self.lag and obj["kind"] == "Pod":
            self.unlisted.add(key)
        return self._store(key, copy.deepcopy(dict(obj)))

    def catch_up(self) -> None:
        """The watch delivers what it held back: every pod is listed again."""
        self.lag = False
        self.unlisted.clear()

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        key = _key(obj)
        self._write("apply", obj["kind"], key[3])
        new = copy.deepcopy(dict(obj))
        old = self.objects.get(key)
        if old is not None:
            new["metadata"] = {**old["metadata"], **new["metadata"]}
            new.setdefault("status", old.get("status"))
        return self._store(key, new, old)

    async def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                          patch: Mapping[str, Any], subresource: str | None = None) -> dict[str, Any]:
        self._write("patch", kind, name)
        key = (api_version, kind, namespace or "", name)
        old = self.objects.get(key)
        if old is None:
            raise ApiError(404, "patch", kind, f'{kind} "{name}" not found')
        new = copy.deepcopy(old)
        if subresource == "status":
            _merge(new.setdefault("status", {}), patch.get("status") or {})
        elif subresource == "scale":
            new["spec"]["replicas"] = patch["spec"]["replicas"]
        else:
            _merge(new, patch)
        return self._store(key, new, old)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None,
                     grace_seconds: int | None = None) -> bool:
        self._write("delete", kind, name)
        key = (api_version, kind, namespace, name)
        obj = self.objects.get(key)
        if obj is None or (uid and obj["metadata"]["uid"] != uid):
            return False
        self._remove(key)
        return True

    async def delete_collection(self, api_version: str, kind: str, namespace: str,
                                labels: Mapping[str, str]) -> None:
        self._write("deletecollection", kind, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        for key, obj in list(self.objects.items()):
            if key[:3] == (api_version, kind, namespace) and _matches(obj, labels):
                self._remove(key)

    # --- inside
    def _maybe_fail(self, verb: str, kind: str) -> None:
        for f in self.failures:
            if f.verb == verb and f.kind == kind and f.times > 0:
                f.times -= 1
                raise ApiError(f.code, verb, kind, f.message)

    def _write(self, verb: str, kind: str, name: str) -> None:
        self.writes.append((verb, kind, name))
        self._maybe_fail(verb, kind)

    def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def _store(self, key: Key, obj: dict[str, Any], old: Mapping[str, Any] | None = None) -> dict[str, Any]:
        meta = obj["metadata"]
        if old is None:
            meta["uid"] = f"uid-{next(self._versions)}"
            meta["creationTimestamp"] = _iso(self.clock())
            meta["generation"] = 1
        elif old.get("spec") != obj.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._bump(obj)
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def _remove(self, key: Key) -> None:
        obj = self.objects[key]
        if key[1] == "Pod":  # a grace period: Terminating until finish_deletions
            obj["metadata"].setdefault("deletionTimestamp", _iso(self.clock()))
            self._bump(obj)
        else:
            del self.objects[key]


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str | None]) -> bool:
    have = obj["metadata"].get("labels") or {}
    return all((k not in have) if v is None else have.get(k) == v for k, v in labels.items())


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
