"""The local cluster's supervisor: one process that owns every other process of the cluster.

It starts the control plane and kwok, registers the fake GPU nodes, runs the local pod processes, and
on SIGTERM/SIGINT (or when the process that asked for it exits, with ``--exit-with-parent``) stops all
of them, last started first. Its progress is written to ``state.json`` in the state directory, which is
how :class:`mimo_operator.localcluster.cluster.LocalCluster` (the CLI, the test fixture, the demo)
follows it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Node, ServiceAccount

from mimo_operator.errors import MimoError
from mimo_operator.localcluster import binaries
from mimo_operator.localcluster.controlplane import ClusterConfig, ControlPlane
from mimo_operator.localcluster.nodes import NODE_GPU_TYPES, gpu_node, node_names
from mimo_operator.localcluster.podrunner import PodRunner
from mimo_operator.localcluster.processes import ComponentFailed

log = logging.getLogger("mimo.localcluster")

_SYNC_INTERVAL = 0.3


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


def register_nodes(client: Client, config: ClusterConfig) -> list[str]:
    names = []
    for name, block in node_names(config.nodes, config.blocks):
        client.create(from_dict(gpu_node(name, config.gpu_type, block)))
        names.append(name)
    return names


def nodes_schedulable(client: Client, names: list[str]) -> bool:
    """Every node Ready, with the not-ready taint (added at creation) removed by the controller-manager."""
    for name in names:
        node = client.get(Node, name)
        conditions = (node.status.conditions if node.status else None) or []
        taints = (node.spec.taints if node.spec else None) or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        tainted = any(t.key.startswith("node.kubernetes.io/") for t in taints)
        if not ready or tainted:
            return False
    return True


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
        client = Client(KubeConfig.from_file(plane.kubeconfig), field_manager="mimo-localcluster")
        names = register_nodes(client, config)
        _wait("the GPU nodes to become Ready and schedulable (kwok, kube-controller-manager)",
              lambda: nodes_schedulable(client, names), config.component_timeout, plane, stopping)

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
            try:
                runner.sync()
            except ApiError as e:
                log.warning("pod sync: %s", e)
            time.sleep(_SYNC_INTERVAL)
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
                           blocks=args.blocks, component_timeout=args.timeout)
    return run(config, args.exit_with_parent)


if __name__ == "__main__":
    sys.exit(main())
