"""The local cluster's supervisor: one process that owns every other process of the cluster.

It starts the control plane and kwok, registers the fake GPU nodes, runs the local pod processes, and
on SIGTERM/SIGINT (or when the process that asked for it exits, with ``--exit-with-parent``) stops all
of them, last started first. Its progress is written to ``state.json`` in the state directory, which is
how :class:`mimo_operator.localcluster.cluster.LocalCluster` (the CLI, the test fixture, the demo)
follows it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import ssl
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import httpx2
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ServiceAccount

from mimo_operator.errors import MimoError
from mimo_operator.localcluster import binaries
from mimo_operator.localcluster.controlplane import ClusterConfig, ControlPlane
from mimo_operator.localcluster.nodes import NODE_GPU_TYPES, gpu_node, node_names
from mimo_operator.localcluster.podrunner import PodRunner
from mimo_operator.localcluster.processes import ComponentFailed

log = logging.getLogger("mimo.localcluster")

_SYNC_INTERVAL = 0.3
_REGISTER_PARALLELISM = 16


class _Stop(Exception):
    pass


def write_state(state_dir: Path, **fields: Any) -> None:
    path = state_dir / "state.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2))
    tmp.replace(path)


def _wait(what: str, predicate: Any, timeout: float, plane: ControlPlane, stopping: Any) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        plane.check_running()
        if stopping():
            raise _Stop
        if time.monotonic() > deadline:
            raise ComponentFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def api_session(plane: ControlPlane) -> httpx.Client:
    """A plain JSON client for the bulk work on nodes: lightkube's typed models cost more CPU than the
    apiserver's own handling of a node, and at 2,000 nodes that CPU is what start-up waits for."""
    assert plane.pki is not None
    pki = plane.pki
    tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    tls.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return httpx.Client(base_url=plane.api_url, verify=tls, timeout=60.0,
                        limits=httpx.Limits(max_connections=_REGISTER_PARALLELISM))


def register_nodes(api: httpx.Client, config: ClusterConfig) -> list[str]:
    """Create every fake node, already Ready, many requests in flight (one by one, 2,000 take a minute)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    nodes = [gpu_node(name, config.gpu_type, block, now=now) for name, block in node_names(config.nodes, config.blocks)]

    def create(node: dict[str, Any]) -> None:
        resp = api.post("/api/v1/nodes", params={"fieldManager": "mimo-localcluster"}, json=node)
        if resp.status_code >= 400 and resp.status_code != 409:  # 409: already there (a retried start)
            raise ComponentFailed(f"creating node {node['metadata']['name']}: {resp.status_code} {resp.text[:500]}")

    with ThreadPoolExecutor(max_workers=_REGISTER_PARALLELISM, thread_name_prefix="register") as pool:
        for _ in pool.map(create, nodes):
            pass
    return [n["metadata"]["name"] for n in nodes]


def nodes_not_schedulable(api: httpx.Client, names: list[str]) -> int:
    """How many of the nodes are not yet Ready, or still carry the not-ready taint (added at creation,
    removed by the controller-manager); one list, not a request per node."""
    resp = api.get("/api/v1/nodes")
    resp.raise_for_status()
    ready = set()
    for node in resp.json().get("items") or []:
        conditions = (node.get("status") or {}).get("conditions") or []
        taints = (node.get("spec") or {}).get("taints") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions) \
                and not any(t.get("key", "").startswith("node.kubernetes.io/") for t in taints):
            ready.add(node["metadata"]["name"])
    return sum(1 for name in names if name not in ready)


def run(config: ClusterConfig, exit_with_parent: bool) -> int:
    state_dir = config.state_dir
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        log.info("signal %d: stopping", signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()

    def stopping() -> bool:
        return stop_requested or (exit_with_parent and os.getppid() != parent)

    write_state(state_dir, status="starting", pid=os.getpid(), error=None)
    plane = ControlPlane(config)
    runner: PodRunner | None = None
    started = time.monotonic()
    try:
        plane.start()
        # Listing thousands of pods from a loaded API server can take longer than lightkube's default 10 s.
        client = Client(KubeConfig.from_file(plane.kubeconfig), field_manager="mimo-localcluster",
                        timeout=httpx2.Timeout(60.0))
        api = api_session(plane)
        registering = time.monotonic()
        names = register_nodes(api, config)
        registered = time.monotonic()
        waiting = [len(names)]

        def schedulable() -> bool:
            listed = time.monotonic()
            waiting[0] = nodes_not_schedulable(api, names)
            log.info("%d of %d nodes not schedulable yet", waiting[0], len(names))
            if waiting[0]:
                time.sleep(2 * (time.monotonic() - listed))  # listing thousands of nodes is not free
            return waiting[0] == 0

        try:
            _wait("the GPU nodes to become Ready and schedulable (kwok, kube-controller-manager)", schedulable,
                  max(config.component_timeout, config.nodes / 10), plane, stopping)
        except ComponentFailed as e:
            raise ComponentFailed(f"{e} ({waiting[0]} of {len(names)} nodes not yet)") from None
        plane.timings["nodes-register"] = round(registered - registering, 2)
        plane.timings["nodes-schedulable"] = round(time.monotonic() - registered, 2)

        def default_sa() -> bool:
            try:
                client.get(ServiceAccount, "default", namespace="default")
                return True
            except ApiError:
                return False

        _wait("the default ServiceAccount (kube-controller-manager)", default_sa, config.component_timeout,
              plane, stopping)
        assert plane.pki is not None
        runner = PodRunner(client, state_dir, plane.ports["apiserver"], plane.pki.ca_cert)
        write_state(
            state_dir, status="ready", kubeconfig=str(plane.kubeconfig),
            kubectl=str(binaries.binary("kubectl")), apiserver=plane.api_url,
            ports=plane.ports, pids={p.name: p.pid for p in plane.processes}, nodes=names,
            startSeconds=round(time.monotonic() - started, 2), componentSeconds=plane.timings,
            logs=str(plane.logs),
        )
        log.info("ready in %.1f s", time.monotonic() - started)
        while not stopping():
            plane.check_running()
            synced = time.monotonic()
            try:
                runner.sync()
            except (ApiError, httpx2.TransportError) as e:
                # A refusal or a slow answer is this sync's, not the cluster's: the next sync tries again.
                log.warning("pod sync: %s: %s", type(e).__name__, e)
            # A sync lists every pod: with thousands of them it takes a while, and the supervisor must
            # not take the CPU the control plane needs, so it waits in proportion.
            time.sleep(max(_SYNC_INTERVAL, 3 * (time.monotonic() - synced)))
        raise _Stop
    except _Stop:
        code = 0
    except (MimoError, ApiError, OSError) as e:
        log.error("%s", e)
        write_state(state_dir, status="failed", error=str(e))
        code = 1
    except Exception as e:  # the supervisor must still stop what it started
        log.error("unexpected: %s", traceback.format_exc())
        write_state(state_dir, status="failed", error=f"unexpected {type(e).__name__}: {e}")
        code = 1
    finally:
        if runner is not None:
            runner.stop_all()
        plane.stop()
    write_state(state_dir, status="stopped" if code == 0 else "failed", pid=None)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mimo_operator.localcluster.supervisor")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpu-type", choices=sorted(NODE_GPU_TYPES), default="H200-141GB")
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--timeout", type=float, default=90.0)
    p.add_argument("--exit-with-parent", action="store_true")
    p.add_argument("--gang-scheduler", choices=list(binaries.GANG_SCHEDULERS), action="append", default=[],
                   help="a gang scheduler to run (repeat for several)")
    p.add_argument("--controller", choices=list(binaries.WORKLOAD_CONTROLLERS), action="append", default=[],
                   help="another project's workload controller to run (repeat for several)")
    args = p.parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    (args.state_dir / "logs").mkdir(exist_ok=True)
    logging.basicConfig(
        filename=args.state_dir / "logs" / "supervisor.log", level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per API request otherwise
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = ClusterConfig(state_dir=args.state_dir, nodes=args.nodes, gpu_type=args.gpu_type,
                           blocks=args.blocks, component_timeout=args.timeout,
                           gang_schedulers=tuple(args.gang_scheduler), controllers=tuple(args.controller))
    return run(config, args.exit_with_parent)


if __name__ == "__main__":
    sys.exit(main())
