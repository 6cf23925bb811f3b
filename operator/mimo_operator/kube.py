"""The operator's one boundary to the Kubernetes API: a small async client over aiohttp.

It speaks only what the reconciler needs — list by label, server-side apply under one field manager,
delete (with a UID precondition, or a whole collection by label), merge patches of metadata and
status — for the kinds the builders produce. Every write is counted (``mimo_operator_api_writes_total``)
so idempotence can be measured. Credentials come from Kopf's login (kubeconfig or service account).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import prometheus_client

from mimo_operator import labels as L
from mimo_operator.errors import MimoError

__all__ = ["API_SECONDS", "WRITES", "ApiError", "Informer", "Kube", "KubeConfig"]

log = logging.getLogger(__name__)

WRITES = prometheus_client.Counter(
    "mimo_operator_api_writes_total", "Kubernetes API writes made by the operator", ["verb", "kind"])
API_ERRORS = prometheus_client.Counter(
    "mimo_operator_api_errors_total", "Kubernetes API requests that failed", ["verb", "kind", "code"])
# As client-go's rest_client_request_duration_seconds, but from the moment the request is made: the wait for
# one of the pooled connections counts, since that is what a reconcile waits for too.
API_SECONDS = prometheus_client.Histogram(
    "mimo_operator_api_request_duration_seconds", "Kubernetes API requests by verb, from made to answered",
    ["verb"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# apiVersion/kind → (plural, namespaced). Only what the builders produce and the reconciler reads.
_KINDS: dict[tuple[str, str], str] = {
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Event"): "events",
    ("v1", "Node"): "nodes",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("batch/v1", "Job"): "jobs",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("scheduling.x-k8s.io/v1alpha1", "PodGroup"): "podgroups",
    ("scheduling.volcano.sh/v1beta1", "PodGroup"): "podgroups",
    **{(api, "PodGroup"): "podgroups" for api in L.NATIVE_PODGROUP_APIS},
    **{(api, "Workload"): "workloads" for api in L.KUEUE_APIS},
    **{(api, "LocalQueue"): "localqueues" for api in L.KUEUE_APIS},
    **{(api, "ClusterQueue"): "clusterqueues" for api in L.KUEUE_APIS},
    **{(api, "ResourceFlavor"): "resourceflavors" for api in L.KUEUE_APIS},
    **{(api, "Topology"): "topologies" for api in L.KUEUE_APIS},
    (f"{L.GROUP}/{L.VERSION}", L.KIND): L.PLURAL,
}


class ApiError(MimoError):
    def __init__(self, code: int, verb: str, what: str, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{verb} {what}: {code} {message}")
        self.code = code
        self.message = str(message)


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_data: str | bytes | None = None
    ca_path: str | None = None
    cert_data: str | bytes | None = None
    key_data: str | bytes | None = None
    token: str | None = None
    # A projected service-account token is rotated by the kubelet; read it again now and then (client-go
    # does the same every minute) instead of keeping the first one until it expires.
    token_path: str | None = None
    insecure: bool = False

    @classmethod
    def from_kopf(cls, info: Any) -> KubeConfig:
        """From the ``kopf.ConnectionInfo`` a Kopf login handler returned."""
        return cls(server=info.server, ca_data=info.ca_data, ca_path=info.ca_path, cert_data=info.certificate_data,
                   key_data=info.private_key_data, token=info.token, insecure=bool(info.insecure))

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.ca_path:
            ctx.load_verify_locations(cafile=self.ca_path)
        if self.ca_data:
            ctx.load_verify_locations(cadata=_pem(self.ca_data).decode())
        if self.cert_data and self.key_data:
            # ssl loads client certificates from files only; they live as long as the context needs them.
            with tempfile.NamedTemporaryFile("wb", suffix=".pem") as cert, \
                    tempfile.NamedTemporaryFile("wb", suffix=".pem") as key:
                cert.write(_pem(self.cert_data))
                key.write(_pem(self.key_data))
                cert.flush()
                key.flush()
                ctx.load_cert_chain(cert.name, key.name)
        return ctx


_TOKEN_REREAD_SECONDS = 60.0
_DISCOVERY_SECONDS = 60.0


def _pem(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)


def path_of(api_version: str, kind: str, namespace: str | None, name: str | None = None,
            subresource: str | None = None) -> str:
    plural = _KINDS.get((api_version, kind))
    if plural is None:
        raise MimoError(f"the operator has no API path for {api_version} {kind}")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _selector(labels: Mapping[str, str | None]) -> str:
    """``key=value`` for each label; ``!key`` (the label absent) where the value is None."""
    return ",".join(f"!{k}" if v is None else f"{k}={v}" for k, v in sorted(labels.items()))


class Kube:
    def __init__(self, config: KubeConfig, timeout: float = 30.0) -> None:
        self.config = config
        self._token = config.token
        self._token_read_at = time.monotonic()
        self._discovery: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._informers: list[Informer] = []
        self._accepted: dict[str, tuple[float, bool]] = {}
        headers = {"Accept": "application/json"}
        self._session = aiohttp.ClientSession(
            # Per request on the wire, not counting the wait for one of the pooled connections: a reconcile
            # that creates a hundred gangs queues hundreds of requests, which are not late for waiting.
            base_url=config.server, headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            connector=aiohttp.TCPConnector(ssl=config.ssl_context(), limit=32),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, verb: str, kind: str, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       body: Any = None, content_type: str = "application/json", write: bool = True) -> Any:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type, **self._auth()}
        started = time.monotonic()
        async with self._session.request(method, path, params=params, data=data, headers=headers) as resp:
            text = await resp.text()
            API_SECONDS.labels(verb).observe(time.monotonic() - started)
            if write:
                WRITES.labels(verb, kind).inc()
            if resp.status >= 400:
                API_ERRORS.labels(verb, kind, str(resp.status)).inc()
                raise ApiError(resp.status, verb, f"{kind} {path}", text)
            return json.loads(text) if text else None

    def _auth(self) -> dict[str, str]:
        token = self._current_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _current_token(self) -> str | None:
        path = self.config.token_path
        if path and time.monotonic() - self._token_read_at > _TOKEN_REREAD_SECONDS:
            self._token_read_at = time.monotonic()
            try:
                with open(path, encoding="utf-8") as f:
                    self._token = f.read().strip() or self._token
            except OSError:
                pass  # keep the token we have; the API will say when it stops working
        return self._token

    async def served_resources(self, group_version: str) -> frozenset[str] | None:
        """The resource names (plurals) an API group version serves, None when it is not served; read from
        discovery at most once a minute (a CRD installed later is seen within that)."""
        now = time.monotonic()
        cached = self._discovery.get(group_version)
        if cached is not None and now - cached[0] < _DISCOVERY_SECONDS:
            return cached[1]
        path = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        try:
            result = await self._request("discovery", group_version, "GET", path, write=False)
            served: frozenset[str] | None = frozenset(r["name"] for r in result.get("resources") or [])
        except ApiError as e:
            if e.code != 404:
                raise
            served = None
        self._discovery[group_version] = (now, served)
        return served

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        """Objects of a kind with these labels (a None value: without that label); ``namespace`` None for a
        cluster-scoped kind. Served from an informer's cache where one holds every object that can match (then
        the objects are the cache's own: read them, never change them)."""
        for informer in self._informers:
            if informer.covers(api_version, kind, namespace, labels):
                return informer.select(namespace, labels)
        result = await self._request("list", kind, "GET", path_of(api_version, kind, namespace),
                                     params={"labelSelector": _selector(labels)}, write=False)
        return list(result.get("items") or [])

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result = await self._request("get", kind, "GET", path_of(api_version, kind, namespace, name), write=False)
        except ApiError as e:
            if e.code == 404:
                return None
            raise
        return dict(result)

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager (forcing: the operator owns its children)."""
        meta = obj["metadata"]
        path = path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        result = await self._request("apply", obj["kind"], "PATCH", path, body=obj,
                                     params={"fieldManager": L.FIELD_MANAGER, "force": "true"},
                                     content_type="application/apply-patch+yaml")
        return dict(result)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None,
                     grace_seconds: int | None = None) -> bool:
        """Delete one object; with ``uid``, only that very object (never a newer one of the same name)."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self._request("delete", kind, "DELETE", path_of(api_version, kind, namespace, name), body=body)
        except ApiError as e:
            if e.code in (404, 409):
                return False
            raise
        return True

    async def delete_collection(self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]) -> None:
        await self._request("deletecollection", kind, "DELETE", path_of(api_version, kind, namespace),
                            params={"labelSelector": _selector(labels)}, body={"propagationPolicy": "Background"})

    async def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                          patch: Mapping[str, Any],
                          subresource: str | None = None) -> dict[str, Any]:
        result = await self._request("patch", kind, "PATCH",
                                     path_of(api_version, kind, namespace, name, subresource),
                                     body=patch, content_type="application/merge-patch+json")
        return dict(result)

    async def create(self, obj: Mapping[str, Any], exist_ok: bool = False) -> dict[str, Any] | None:
        """Create under the operator's field manager; with ``exist_ok`` an existing object is not an error."""
        meta = obj["metadata"]
        try:
            result = await self._request("create", obj["kind"], "POST",
                                         path_of(obj["apiVersion"], obj["kind"], meta.get("namespace")), body=obj,
                                         params={"fieldManager": L.FIELD_MANAGER})
        except ApiError as e:
            if exist_ok and e.code == 409:
                return None
            raise
        return dict(result)

    async def accepts(self, key: str, obj: Mapping[str, Any]) -> bool:
        """Whether the API server would create ``obj`` (a dry run, not stored), for features that discovery
        does not show (a field behind a feature gate); remembered under ``key`` for a minute. A refusal
        (400, 404, 422) is False, a name taken (409, after validation) True; other errors are raised."""
        now = time.monotonic()
        cached = self._accepted.get(key)
        if cached is not None and now - cached[0] < _DISCOVERY_SECONDS:
            return cached[1]
        meta = obj["metadata"]
        try:
            await self._request("dryrun", obj["kind"], "POST",
                                path_of(obj["apiVersion"], obj["kind"], meta.get("namespace")), body=obj,
                                params={"dryRun": "All", "fieldManager": L.FIELD_MANAGER}, write=False)
            accepted = True
        except ApiError as e:
            if e.code == 409:  # one of that name exists: the request got past validation to storage
                accepted = True
            elif e.code in (400, 404, 422):
                accepted = False
            else:
                raise
        self._accepted[key] = (now, accepted)
        return accepted

    def informer(self, api_version: str, kind: str, namespace: str | None, label: str,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> Informer:
        """Keep every object of a kind that carries ``label`` (in ``namespace``, or in all of them) from a list
        and a watch; from the first list on, ``list`` calls whose selector names a value of ``label`` are
        answered from it. Run it with ``Informer.run``."""
        informer = Informer(self, api_version, kind, namespace, label, on_event)
        self._informers.append(informer)
        return informer

    async def _watch(self, kind: str, path: str, params: Mapping[str, str],
                     read_seconds: float) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request, as they arrive, until the server ends it."""
        async with self._session.get(path, params={**params, "watch": "true"}, headers=self._auth(),
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_seconds)
                                     ) as resp:
            if resp.status >= 400:
                API_ERRORS.labels("watch", kind, str(resp.status)).inc()
                raise ApiError(resp.status, "watch", path, await resp.text())
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)


class _Expired(Exception):
    """The watch's resource version is too old (410): list again."""


# How long the API server keeps one watch open before the informer asks again (it ends it, cleanly, then).
_WATCH_SECONDS = 300
_RETRY_SECONDS = (1.0, 30.0)


class Informer:
    """Every object of a kind that carries a label, kept current from a list and then a watch, as client-go's
    informers keep them. At scale the reconciler's pod lists were most of the operator's CPU (decoding a
    deployment's pods on every reconcile); the watch decodes each change once.

    Until its first list has come back (and again after an error, until it has listed again) it serves
    nothing, and ``Kube.list`` asks the API server. A change the watch has not delivered yet (milliseconds
    behind the server) is what the reconciler's expectations already allow for: a gang created by the last
    reconcile may not be seen whole by the next. Managed fields are dropped: nothing reads them, and kept they
    would be a large part of the cache."""

    def __init__(self, kube: Kube, api_version: str, kind: str, namespace: str | None, label: str,
                 on_event: Callable[[str, dict[str, Any]], None] | None) -> None:
        self.kube = kube
        self.api_version = api_version
        self.kind = kind
        self.namespace = namespace
        self.label = label
        self.on_event = on_event
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        # The same objects by namespace and value of ``label``: a deployment's lists (a reconcile's pods, its
        # routers on every drain) read its own objects, not every deployment's.
        self._by_value: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self.synced = False
        self.resource_version = ""
        self._failures = 0

    def covers(self, api_version: str, kind: str, namespace: str | None, labels: Mapping[str, str | None]) -> bool:
        return (self.synced and api_version == self.api_version and kind == self.kind
                and (self.namespace is None or namespace == self.namespace) and labels.get(self.label) is not None)

    def select(self, namespace: str | None, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        """The kept objects in ``namespace`` (None: all) that match ``labels`` as a label selector would."""
        if namespace is not None and (value := labels.get(self.label)) is not None:
            return [obj for obj in self._by_value.get((namespace, value), {}).values() if _matches(obj, labels)]
        return [obj for (ns, _), obj in self.objects.items()
                if (namespace is None or ns == namespace) and _matches(obj, labels)]

    def _value_key(self, key: tuple[str, str], obj: Mapping[str, Any]) -> tuple[str, str]:
        return key[0], ((obj.get("metadata") or {}).get("labels") or {}).get(self.label, "")

    def _keep(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        self._forget(key)
        self.objects[key] = obj
        self._by_value.setdefault(self._value_key(key, obj), {})[key] = obj

    def _forget(self, key: tuple[str, str]) -> None:
        if (old := self.objects.pop(key, None)) is None:
            return
        bucket = self._by_value.get(value := self._value_key(key, old), {})
        bucket.pop(key, None)
        if not bucket:
            self._by_value.pop(value, None)

    async def run(self) -> None:
        """List, then watch from the list's version; list again when the version has expired or a request
        failed. Runs until cancelled."""
        while True:
            try:
                if not self.synced:
                    await self._list()
                await self._watch()
            except asyncio.CancelledError:
                raise
            except _Expired:
                self.synced = False
            except ApiError as e:
                if e.code == 410:  # the version expired, answered as a status code rather than a watch event
                    self.synced = False
                    continue
                await self._failed(e)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                await self._failed(e)

    async def _failed(self, error: Exception) -> None:
        """Serve nothing until listed again, after a back-off that grows with the failures since the last
        watch event."""
        self.synced = False
        self._failures += 1
        delay = min(_RETRY_SECONDS[1], _RETRY_SECONDS[0] * 2 ** min(self._failures - 1, 5))
        log.warning("%s watch in %s failed (%s); listing again in %.0f s", self.kind,
                    self.namespace or "all namespaces", error, delay)
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter, not a secret)

    def _tell(self, kind: str, obj: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, obj)
        except Exception:  # a bug in a listener must not stop the cache
            log.exception("%s %s: the %s event's listener failed", self.kind, obj["metadata"].get("name"), kind)

    def _path(self) -> str:
        return path_of(self.api_version, self.kind, self.namespace)

    async def _list(self) -> None:
        result = await self.kube._request("list", self.kind, "GET", self._path(),
                                          params={"labelSelector": self.label}, write=False)
        listed = {}
        for obj in result.get("items") or []:
            _trim(obj)
            listed[(obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        gone = [obj for key, obj in self.objects.items() if key not in listed]
        self.objects, self._by_value = {}, {}
        for key, obj in listed.items():
            self._keep(key, obj)
        self.resource_version = (result.get("metadata") or {}).get("resourceVersion", "")
        self.synced = True
        # What changed while no watch was open is told as if the watch had seen it.
        for obj in gone:
            self._tell("DELETED", obj)
        for obj in listed.values():
            self._tell("ADDED", obj)

    async def _watch(self) -> None:
        params = {"labelSelector": self.label, "resourceVersion": self.resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(_WATCH_SECONDS)}
        async for event in self.kube._watch(self.kind, self._path(), params, read_seconds=_WATCH_SECONDS + 30):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired
                raise ApiError(int(obj.get("code") or 500), "watch", self._path(), json.dumps(obj))
            self._failures = 0
            meta = obj.get("metadata") or {}
            if meta.get("resourceVersion"):
                self.resource_version = meta["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            _trim(obj)
            key = (meta.get("namespace", ""), meta["name"])
            if kind == "DELETED":
                self._forget(key)
            else:
                self._keep(key, obj)
            self._tell(str(kind), obj)


def _trim(obj: dict[str, Any]) -> None:
    (obj.get("metadata") or {}).pop("managedFields", None)


def _matches(obj: Mapping[str, Any], labels: Mapping[str, str | None]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(k not in have if v is None else have.get(k) == v for k, v in labels.items())
