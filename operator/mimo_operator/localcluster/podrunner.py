"""Local pod processes: the part of a kubelet the local cluster needs.

kwok fakes every pod, but a pod labelled ``localcluster.mimo-operator.io/process`` gets its first
container's command run as a real process on this machine, the way a kubelet would run it:

- the pod's environment (values, field references, ConfigMap and Secret keys), ``$(VAR)`` expansion;
- its volumes (ConfigMap, Secret, emptyDir, projected service-account token, PVC, hostPath) bind-mounted
  at their mount paths inside a private mount namespace, and an ``/etc/hosts`` that resolves the pods'
  ``hostname.subdomain.namespace.svc.cluster.local`` names, as cluster DNS would;
- bound to the pod's IP (kwok assigns it from a range inside 127.0.0.0/8; the program reads it from the
  pod's env, as in a real cluster); in-cluster API access reaches the apiserver on loopback;
- readiness from the container's readiness probe, patched into the pod's status;
- its exit ends the pod (Failed with the exit code, or Succeeded), or restarts it per restartPolicy;
- deleting the pod sends SIGTERM, then SIGKILL after the grace period, then removes the pod object.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import ALL_NS, Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret, ServiceAccount

from mimo_operator.localcluster.processes import _die_with_parent

__all__ = ["PROCESS_LABEL", "PodRunner"]

log = logging.getLogger("mimo.localcluster.pods")

# Set on a pod (by a test, or through MiMoDeployment.spec pod labels) to have it run as a local process.
PROCESS_LABEL = "localcluster.mimo-operator.io/process"
# Pod IPs of local processes (kwok's --cidr range serves the other pods).
LOCAL_PROCESS_CIDR = "127.65.0.0/16"
_CLUSTER_DOMAIN = "cluster.local"
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: unknown references stay as written, ``$$`` escapes a ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


@dataclass
class _Probe:
    spec: dict[str, Any]
    next_at: float = 0.0
    failures: int = 0
    pending: Future[bool] | None = None


@dataclass
class _Running:
    """One pod's process and what the runner knows about it."""

    uid: str
    namespace: str
    name: str
    container: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: str
    probe: _Probe | None = None
    ready: bool = False
    restarts: int = 0
    stop_deadline: float | None = None


class PodRunner:
    """Reconciles labelled pods with local processes; call :meth:`sync` periodically from the main thread."""

    def __init__(self, client: Client, state_dir: Path, api_port: int, ca_cert: Path,
                 ip_range: str = LOCAL_PROCESS_CIDR) -> None:
        self.client = client
        self.dir = state_dir / "pods"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hosts_file = state_dir / "hosts"
        self._write_hosts([])
        self.api_port = api_port
        self.ca_cert = ca_cert
        self.running: dict[str, _Running] = {}
        self.finished: set[str] = set()
        self._restart_at: dict[str, float] = {}
        self._restarts: dict[str, int] = {}
        self._created_dirs: set[Path] = set()
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        network = ipaddress.ip_network(ip_range)
        self._ip_base = network.network_address
        self._next_ip = 0

    # -- the loop ---------------------------------------------------------------------------------

    def sync(self) -> None:
        pods = [p.to_dict() for p in self.client.list(Pod, namespace=ALL_NS)]
        self._update_hosts(pods)
        local = {p["metadata"]["uid"]: p for p in pods if PROCESS_LABEL in (p["metadata"].get("labels") or {})}
        for uid, pod in local.items():
            try:
                self._sync_pod(uid, pod)
            except ApiError as e:
                if e.status.code != 404:
                    log.warning("pod %s/%s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], e)
        for uid in list(self.running):
            if uid not in local:  # the pod object is gone (force-deleted, or its node was deleted)
                self._kill(self.running.pop(uid))
        self.finished &= set(local)

    def _sync_pod(self, uid: str, pod: dict[str, Any]) -> None:
        meta, _spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        run = self.running.get(uid)
        if meta.get("deletionTimestamp"):
            self._terminate(uid, pod, run)
            return
        if run is not None:
            if status.get("phase") in ("Failed", "Succeeded"):  # ended from outside (an injected failure)
                self._kill(self.running.pop(uid))
                self.finished.add(uid)
                return
            code = run.popen.poll()
            if code is None:
                self._probe(run, pod)
            else:
                # A signal's death reads as 128 + its number, as a container runtime reports it.
                self._exited(run, pod, code if code >= 0 else 128 - code)
            return
        if uid in self.finished or status.get("phase") != "Running":
            return
        if time.monotonic() < self._restart_at.get(uid, 0.0):
            return
        if not status.get("podIP"):
            status["podIP"] = self._assign_ip(pod)
        self._start(uid, pod)

    # -- starting ---------------------------------------------------------------------------------

    def _assign_ip(self, pod: dict[str, Any]) -> str:
        """The next address of the local-process range: never reused while the cluster runs."""
        if pod["spec"].get("hostNetwork"):
            ip = str((pod.get("status") or {}).get("hostIP") or "127.0.0.1")
        else:
            self._next_ip += 1
            ip = str(self._ip_base + self._next_ip)
        meta = pod["metadata"]
        self._patch_status(meta["namespace"], meta["name"], {"podIP": ip, "podIPs": [{"ip": ip}]})
        return ip

    def _start(self, uid: str, pod: dict[str, Any]) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        container = spec["containers"][0]
        pod_dir = self.dir / meta["namespace"] / meta["name"]
        pod_dir.mkdir(parents=True, exist_ok=True)
        log_path = pod_dir / f"{container['name']}.log"
        argv_raw = list(container.get("command") or []) + list(container.get("args") or [])
        if not container.get("command"):
            self._end(pod, container["name"], 128, "ContainerCannotRun",
                      "a local process needs the container's command: images' entrypoints are not known here")
            self.finished.add(uid)
            return
        try:
            env = self._env(pod, container)
            mounts = self._mounts(pod, container, pod_dir)
        except (ApiError, KeyError, ValueError) as e:
            self._end(pod, container["name"], 128, "CreateContainerConfigError", str(e))
            self.finished.add(uid)
            return
        argv = [expand(a, env) for a in argv_raw]
        for _, target, _ in mounts:
            if not target.exists():
                # Bind targets must exist. They are removed when the cluster stops, not with the pod:
                # removing a directory unmounts it from every other pod's namespace too.
                self._created_dirs.update(p for p in [target, *target.parents] if not p.exists())
                target.mkdir(parents=True, exist_ok=True)
        launch = {
            "argv": argv,
            "env": env,
            "cwd": container.get("workingDir") or "/",
            "mounts": [[str(s), str(t), ro] for s, t, ro in mounts],
        }
        launch_file = pod_dir / "launch.json"
        launch_file.write_text(json.dumps(launch))
        launch_file.chmod(0o600)  # it holds the pod's environment, secrets included
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--",
                 sys.executable, "-m", "mimo_operator.localcluster.podexec", str(launch_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        run = _Running(uid, meta["namespace"], meta["name"], container["name"], popen, log_path, _now(),
                       restarts=self._restarts.get(uid, 0))
        probe = container.get("readinessProbe")
        if probe:
            delay = float(probe.get("initialDelaySeconds", 0))
            run.probe = _Probe(probe, next_at=time.monotonic() + delay)
        self.running[uid] = run
        log.info("pod %s/%s: started %s (pid %d, ip %s)", meta["namespace"], meta["name"], argv[0], popen.pid,
                 status["podIP"])
        self._patch_status(meta["namespace"], meta["name"], {
            "containerStatuses": [self._container_status(run, container, ready=False)],
        })
        if run.probe is None:
            self._set_ready(run, container, True)

    def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        env: dict[str, str] = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": spec.get("hostname") or meta["name"],
            # In-cluster clients reach the apiserver on loopback (its Service IP is not routed here).
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
        }
        ns = meta["namespace"]
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if ref := source.get("configMapRef"):
                data = self._config_map(ns, ref["name"], ref.get("optional", False))
                env.update({prefix + k: v for k, v in data.items()})
            if ref := source.get("secretRef"):
                data = self._secret(ns, ref["name"], ref.get("optional", False))
                env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = expand(item["value"] or "", env)
                continue
            source = item.get("valueFrom") or {}
            value: str | None = None
            if ref := source.get("fieldRef"):
                value = _field(pod, ref["fieldPath"])
            elif ref := source.get("configMapKeyRef"):
                value = self._config_map(ns, ref["name"], ref.get("optional", False)).get(ref["key"])
            elif ref := source.get("secretKeyRef"):
                value = self._secret(ns, ref["name"], ref.get("optional", False)).get(ref["key"])
            elif ref := source.get("resourceFieldRef"):
                value = _resource_field(container, ref)
            if value is not None:
                env[name] = value
        return env

    def _config_map(self, ns: str, name: str, optional: bool) -> dict[str, str]:
        try:
            cm = self.client.get(ConfigMap, name, namespace=ns)
        except ApiError as e:
            if e.status.code == 404 and optional:
                return {}
            raise ValueError(f"configmap {ns}/{name} not found") from e
        return dict(cm.data or {})

    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, str]:
        try:
            secret = self.client.get(Secret, name, namespace=ns)
        except ApiError as e:
            if e.status.code == 404 and optional:
                return {}
            raise ValueError(f"secret {ns}/{name} not found") from e
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        data.update(secret.stringData or {})
        return data

    def _mounts(self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path
                ) -> list[tuple[Path, Path, bool]]:
        """(source on this machine, mount path, read-only) for each of the container's volume mounts."""
        meta, spec = pod["metadata"], pod["spec"]
        ns = meta["namespace"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: list[tuple[Path, Path, bool]] = [(self.hosts_file, Path("/etc/hosts"), True)]
        for vm in container.get("volumeMounts") or []:
            volume = volumes[vm["name"]]
            target = Path(vm["mountPath"])
            read_only = bool(vm.get("readOnly", False))
            source = pod_dir / "volumes" / vm["name"]
            if "configMap" in volume:
                ref = volume["configMap"]
                _materialise(source, self._config_map(ns, ref["name"], ref.get("optional", False)),
                             ref.get("items"), 0o644)
                read_only = True
            elif "secret" in volume:
                ref = volume["secret"]
                _materialise(source, self._secret(ns, ref["secretName"], ref.get("optional", False)),
                             ref.get("items"), 0o600)
                read_only = True
            elif "downwardAPI" in volume:
                _materialise(source, _downward(pod, volume["downwardAPI"]), None, 0o644)
                read_only = True
            elif "projected" in volume:
                _materialise(source, self._projected(pod, volume["projected"]), None, 0o600)
                read_only = True
            elif "emptyDir" in volume:
                source.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                # Every pod mounting the same claim shares one directory, as with a ReadWriteMany volume.
                claim = volume["persistentVolumeClaim"]["claimName"]
                source = self.dir.parent / "volumes" / ns / claim
                source.mkdir(parents=True, exist_ok=True)
                read_only = read_only or bool(volume["persistentVolumeClaim"].get("readOnly", False))
            elif "hostPath" in volume:
                host = Path(volume["hostPath"]["path"])
                kind = volume["hostPath"].get("type", "")
                if not host.exists():
                    if kind in ("DirectoryOrCreate",):
                        host.mkdir(parents=True, exist_ok=True)
                    elif kind == "":
                        log.info("pod %s/%s: hostPath %s does not exist here; not mounted", ns, meta["name"], host)
                        continue
                    else:
                        raise ValueError(f"hostPath {host} (type {kind}) does not exist on this machine")
                source = host
            else:
                log.info("pod %s/%s: volume %s of an unsupported kind is not mounted", ns, meta["name"], vm["name"])
                continue
            if sub := vm.get("subPath"):
                source = source / sub
            mounts.append((source, target, read_only))
        return mounts

    def _projected(self, pod: dict[str, Any], projected: dict[str, Any]) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        files: dict[str, str] = {}
        for src in projected.get("sources") or []:
            if token := src.get("serviceAccountToken"):
                files[token["path"]] = self._token(
                    meta["namespace"], spec.get("serviceAccountName", "default"), meta["name"], meta["uid"],
                    token.get("audience"), int(token.get("expirationSeconds", 3600)))
            elif ref := src.get("configMap"):
                data = self._config_map(meta["namespace"], ref["name"], ref.get("optional", False))
                files.update(_select(data, ref.get("items")))
            elif ref := src.get("secret"):
                data = self._secret(meta["namespace"], ref["name"], ref.get("optional", False))
                files.update(_select(data, ref.get("items")))
            elif api := src.get("downwardAPI"):
                files.update(_downward(pod, api))
        return files

    def _token(self, ns: str, sa: str, pod: str, uid: str, audience: str | None, seconds: int) -> str:
        """A bound service-account token from the TokenRequest API, as the kubelet gets one."""
        spec: dict[str, Any] = {
            "expirationSeconds": max(seconds, 600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
        }
        if audience:
            spec["audiences"] = [audience]
        request = ServiceAccount.Token.from_dict({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                                  "metadata": {"name": sa, "namespace": ns}, "spec": spec})
        result: Any = self.client.create(request, name=sa, namespace=ns)  # type: ignore[call-overload]
        return str(result.status.token)

    # -- readiness --------------------------------------------------------------------------------

    def _probe(self, run: _Running, pod: dict[str, Any]) -> None:
        probe = run.probe
        if probe is None:
            return
        if probe.pending is not None:
            if not probe.pending.done():
                return
            ok = probe.pending.result()
            probe.pending = None
            if ok:
                probe.failures = 0
                if not run.ready:
                    self._set_ready(run, pod["spec"]["containers"][0], True)
            else:
                probe.failures += 1
                if run.ready and probe.failures >= int(probe.spec.get("failureThreshold", 3)):
                    self._set_ready(run, pod["spec"]["containers"][0], False)
        if time.monotonic() >= probe.next_at:
            probe.next_at = time.monotonic() + float(probe.spec.get("periodSeconds", 10))
            probe.pending = self._probes.submit(_check, probe.spec, pod)

    def _set_ready(self, run: _Running, container: dict[str, Any], ready: bool) -> None:
        run.ready = ready
        state = "True" if ready else "False"
        reason = None if ready else "ContainersNotReady"
        conditions: list[dict[str, str]] = []
        for kind in ("ContainersReady", "Ready"):
            conditions.append({"type": kind, "status": state, "lastTransitionTime": _now()})
            if reason:
                conditions[-1]["reason"] = reason
        self._patch_status(run.namespace, run.name, {
            "conditions": conditions,
            "containerStatuses": [self._container_status(run, container, ready=ready)],
        })
        log.info("pod %s/%s: ready=%s", run.namespace, run.name, ready)

    def _container_status(self, run: _Running, container: dict[str, Any], ready: bool) -> dict[str, Any]:
        return {
            "name": container["name"], "image": container.get("image", ""), "ready": ready, "started": True,
            "restartCount": run.restarts, "state": {"running": {"startedAt": run.started_at}},
        }

    # -- ending -----------------------------------------------------------------------------------

    def _exited(self, run: _Running, pod: dict[str, Any], code: int) -> None:
        self.running.pop(run.uid)
        policy = pod["spec"].get("restartPolicy", "Always")
        container = pod["spec"]["containers"][0]
        log.info("pod %s/%s: process exited with %d (restartPolicy %s)", run.namespace, run.name, code, policy)
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            # CrashLoopBackOff in miniature: 1, 2, 4 … 30 s.
            delay = min(30.0, 2.0 ** run.restarts)
            self._restart_at[run.uid] = time.monotonic() + delay
            self._patch_status(run.namespace, run.name, {
                "conditions": [{"type": t, "status": "False", "reason": "ContainersNotReady",
                                "lastTransitionTime": _now()} for t in ("ContainersReady", "Ready")],
                "containerStatuses": [{
                    "name": container["name"], "image": container.get("image", ""), "ready": False,
                    "restartCount": run.restarts + 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": code, "startedAt": run.started_at,
                                                 "finishedAt": _now(), "reason": "Error" if code else "Completed"}},
                }],
            })
            # Started again by _sync_pod once the back-off passes, with the restart counted.
            self._restarts[run.uid] = run.restarts + 1
            return
        self.finished.add(run.uid)
        message = f"exit code {code}"
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            # As the kubelet does: a local process has no /dev/termination-log, so the log's tail (at most 80
            # lines and 2048 bytes) is the message, which is where the operator reads a failure's reason.
            with contextlib.suppress(OSError):
                tail = run.log_path.read_bytes()[-2048:].decode(errors="replace").splitlines()[-80:]
                message = "\n".join(tail).strip() or message
        self._end(pod, container["name"], code, "Completed" if code == 0 else "Error", message,
                  started_at=run.started_at)

    def _end(self, pod: dict[str, Any], container: str, code: int, reason: str, message: str,
             started_at: str | None = None) -> None:
        meta = pod["metadata"]
        image = pod["spec"]["containers"][0].get("image", "")
        self._patch_status(meta["namespace"], meta["name"], {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": t, "status": "False", "reason": "PodCompleted" if code == 0 else "PodFailed",
                            "lastTransitionTime": _now()} for t in ("ContainersReady", "Ready")],
            "containerStatuses": [{
                "name": container, "image": image, "ready": False, "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": code, "reason": reason, "message": message,
                                         "startedAt": started_at or _now(), "finishedAt": _now()}},
            }],
        })

    def _terminate(self, uid: str, pod: dict[str, Any], run: _Running | None) -> None:
        """The pod is being deleted: SIGTERM, SIGKILL after its grace period, then remove the object."""
        meta = pod["metadata"]
        if run is not None and run.popen.poll() is None:
            if run.stop_deadline is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                run.stop_deadline = time.monotonic() + float(grace if grace is not None else 30)
                run.popen.send_signal(signal.SIGTERM)
                log.info("pod %s/%s: deleting, SIGTERM sent", meta["namespace"], meta["name"])
                return
            if time.monotonic() < run.stop_deadline:
                return
            run.popen.kill()
            run.popen.wait(5)
        if run is not None:
            self.running.pop(uid, None)
        try:
            self.client.delete(Pod, meta["name"], namespace=meta["namespace"], grace_period=0)
        except ApiError as e:
            if e.status.code != 404:
                raise

    def _kill(self, run: _Running) -> None:
        if run.popen.poll() is None:
            run.popen.send_signal(signal.SIGTERM)
            try:
                run.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                run.popen.kill()
                run.popen.wait(5)
        log.info("pod %s/%s: process stopped", run.namespace, run.name)

    def stop_all(self) -> None:
        for run in list(self.running.values()):
            self._kill(run)
        self.running.clear()
        for d in sorted(self._created_dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        self._probes.shutdown(wait=False, cancel_futures=True)

    # -- helpers ----------------------------------------------------------------------------------

    def _patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self.client.patch(Pod.Status, name, {"status": status}, namespace=ns)

    def _update_hosts(self, pods: list[dict[str, Any]]) -> None:
        lines = []
        for p in pods:
            spec, status = p["spec"], p.get("status") or {}
            ip = status.get("podIP")
            if not ip or not spec.get("hostname") or not spec.get("subdomain"):
                continue
            fqdn = f"{spec['hostname']}.{spec['subdomain']}.{p['metadata']['namespace']}.svc.{_CLUSTER_DOMAIN}"
            lines.append(f"{ip}\t{fqdn} {spec['hostname']}.{spec['subdomain']}.{p['metadata']['namespace']}.svc")
        self._write_hosts(sorted(lines))

    def _write_hosts(self, lines: list[str]) -> None:
        text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n" + "".join(f"{line}\n" for line in lines)
        # Written in place: processes see it through a bind mount of this very inode.
        if not self.hosts_file.exists() or self.hosts_file.read_text() != text:
            with self.hosts_file.open("a+") as f:
                f.seek(0)
                f.truncate()
                f.write(text)


def _downward(pod: dict[str, Any], api: dict[str, Any]) -> dict[str, str]:
    """A downward-API volume's files: each item's pod field (resource fields are not served here)."""
    return {item["path"]: _field(pod, item["fieldRef"]["fieldPath"]) or ""
            for item in api.get("items") or [] if "fieldRef" in item}


def _field(pod: dict[str, Any], path: str) -> str | None:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"), "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        found = simple[path]
        return None if found is None else str(found)
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        value = (meta.get(m.group(1)) or {}).get(m.group(2))
        return None if value is None else str(value)
    raise ValueError(f"fieldRef {path} is not supported by the local cluster")


def _resource_field(container: dict[str, Any], ref: dict[str, Any]) -> str:
    kind, _, resource = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    return str(value) if value is not None else "0"


def _select(data: dict[str, str], items: list[dict[str, Any]] | None) -> dict[str, str]:
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def _materialise(directory: Path, data: dict[str, str], items: list[dict[str, Any]] | None, mode: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in _select(data, items).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)


def _check(probe: dict[str, Any], pod: dict[str, Any]) -> bool:
    """One readiness check, run on a probe thread."""
    container = pod["spec"]["containers"][0]
    ip = (pod.get("status") or {}).get("podIP", "127.0.0.1")
    timeout = float(probe.get("timeoutSeconds", 1))

    def port_of(value: int | str) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        for p in container.get("ports") or []:
            if p.get("name") == value:
                return int(p["containerPort"])
        raise ValueError(f"no container port named {value}")

    try:
        if http := probe.get("httpGet"):
            scheme = str(http.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{http.get('host') or ip}:{port_of(http['port'])}{http.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in http.get("httpHeaders") or []}
            req = urllib.request.Request(url, headers=headers)  # noqa: S310 - pod IPs are loopback here
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                return bool(200 <= resp.status < 400)
        if tcp := probe.get("tcpSocket"):
            with socket.create_connection((tcp.get("host") or ip, port_of(tcp["port"])), timeout=timeout):
                return True
        return True  # exec and grpc probes are not run here: the process being up stands for them
    except (urllib.error.URLError, OSError, ValueError):
        return False
