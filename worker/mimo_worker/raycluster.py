"""This pod's Ray node, and the gang as Ray sees it.

Every pod runs exactly one ``ray start --block`` of its own, as a child of the worker. Stopping it is how
the worker stops Ray: ``ray stop`` kills every Ray process of the user on the machine, which in a pod is
the same thing but on a shared test machine (several gangs' raylets side by side) is not. ``ray start``
SIGTERMed kills its node's processes; SIGKILLed, its children follow through Ray's own parent-death
signal; and it gets a parent-death signal from us, so a worker killed outright takes its Ray node along,
as a deleted pod would.

Which node is which rank: each node announces a custom resource ``mimo_rank_<r>: 1`` when it starts.
The placement group asks for it in bundle ``r``, so Ray itself pins bundle ``r`` on rank ``r``'s node —
the engine's node 0 must be the head, whose IP ``--dist-init-addr`` names and whose ``/health`` is the
gang's readiness.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from mimo_worker.launchplan import LaunchPlan

__all__ = [
    "ENV_RAY_TEMP_DIR",
    "GangProgress",
    "NodeView",
    "RayNodeProcess",
    "become_subreaper",
    "end_descendants",
    "gang_progress",
    "node_views",
    "rank_resource",
    "ray_auth_default",
    "tcp_reachable",
]

log = logging.getLogger("mimo_worker.ray")

# A private Ray temp dir (default /tmp/ray); set by tests so that gangs on one machine stay apart.
# Keep it short: Ray puts unix sockets under it, and a socket path has at most 107 bytes.
ENV_RAY_TEMP_DIR = "MIMO_RAY_TEMP_DIR"
# Printed by `ray start` (Ray 2.60) once the node runs and `--block` takes over.
_STARTED_MARKERS = ("Ray runtime started", "This command will now block forever")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def rank_resource(rank: int) -> str:
    return f"mimo_rank_{rank}"


def _die_with_worker() -> None:
    # preexec_fn: `ray start` is forked from the worker's main thread, which lives as long as the worker.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def ray_auth_default() -> None:
    """Pin Ray's authentication mode for this process and every Ray process it starts.

    Left unset, Ray 2.60 turns token authentication on by itself whenever ``~/.ray/auth_token`` happens
    to exist — on one node and not another, the gang fails to form with "InvalidAuthToken". The gang's
    Ray ports are confined to the gang by the operator's NetworkPolicy; a pod that sets RAY_AUTH_MODE
    itself (with a token mounted from a Secret) keeps its choice.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def become_subreaper() -> None:
    """Adopt this worker's orphaned descendants, as a pod's init would.

    Ray's agents are children of the raylet; when the raylet goes they outlive it for a while, reparented
    to whoever reaps orphans. As the subreaper, the worker finds them again and ends them on its way out
    (:func:`end_descendants`), so a worker that has exited left nothing of its Ray node behind.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def end_descendants(grace: float = 3.0) -> None:
    """SIGTERM every process below this one, SIGKILL what is left after ``grace``, and reap them all."""
    me = os.getpid()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        pids = _descendants(me)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _descendants(me):
            _reap()
            time.sleep(0.1)
    _reap()


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _ray_env() -> dict[str, str]:
    ray_auth_default()
    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's SIGTERM handler would otherwise wait up to 30 s for a Ray-level drain that only Ray Serve uses;
    # the worker drains the engine itself before it stops Ray.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    return env


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve(host: str) -> str | None:
    """The IPv4 address of ``host`` (a pod's DNS name resolves only once its record is published)."""
    try:
        infos = socket.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


class RayNodeProcess:
    """Our ``ray start --block``: this pod's Ray node, alive exactly as long as that process."""

    def __init__(self, argv: list[str], popen: subprocess.Popen[str]) -> None:
        self.argv = argv
        self.popen = popen
        self.started = threading.Event()
        self._relay = threading.Thread(target=self._relay_output, name="ray-start-output", daemon=True)
        self._relay.start()

    @classmethod
    def launch(cls, args: list[str]) -> RayNodeProcess:
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--block"]
        temp_dir = os.environ.get(ENV_RAY_TEMP_DIR)
        if temp_dir:
            argv.append(f"--temp-dir={temp_dir}")
        log.info("starting Ray: %s", " ".join(argv[3:]))
        popen = subprocess.Popen(
            argv,
            env=_ray_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_worker,
        )
        return cls(argv, popen)

    @classmethod
    def head(cls, plan: LaunchPlan, pod_ip: str) -> RayNodeProcess:
        return cls.launch(
            [
                "--head",
                f"--port={plan.ports.ray_gcs}",
                f"--node-ip-address={pod_ip}",
                f"--num-gpus={plan.gang.gpus_per_node}",
                f"--resources={json.dumps({rank_resource(0): 1})}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ]
        )

    @classmethod
    def member(cls, plan: LaunchPlan, pod_ip: str, rank: int, head_ip: str) -> RayNodeProcess:
        return cls.launch(
            [
                f"--address={head_ip}:{plan.ports.ray_gcs}",
                f"--node-ip-address={pod_ip}",
                f"--num-gpus={plan.gang.gpus_per_node}",
                f"--resources={json.dumps({rank_resource(rank): 1})}",
            ]
        )

    def _relay_output(self) -> None:
        out: IO[str] | None = self.popen.stdout
        if out is None:
            return
        for line in out:
            sys.stderr.write(f"[ray] {line}")
            if any(m in line for m in _STARTED_MARKERS):
                self.started.set()
        sys.stderr.flush()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait_started(self, timeout: float, abort: threading.Event | None = None) -> bool:
        """True once Ray reports the node up; False if ``ray start`` exited, ``timeout`` passed or
        ``abort`` was set."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (abort is not None and abort.is_set()):
            if self.started.wait(0.2):
                return True
            if self.popen.poll() is not None:
                return self.started.is_set()
        return self.started.is_set()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (Ray stops its node's processes), then SIGKILL after ``grace`` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("ray start %d did not stop within %.0f s; killing it", self.popen.pid, grace)
                self.popen.kill()
                self.popen.wait(5)
        self._relay.join(2)
        return self.popen.returncode


@dataclass(frozen=True)
class NodeView:
    """One Ray node as ``ray.nodes()`` reports it, reduced to what the gang needs."""

    node_id: str
    ip: str
    alive: bool
    gpus: float
    rank: int | None  # from its mimo_rank_<r> resource; None for a node that is not ours


def node_views(nodes: Iterable[Mapping[str, Any]]) -> list[NodeView]:
    views = []
    for n in nodes:
        resources: Mapping[str, float] = n.get("Resources") or {}
        ranks = [int(k.removeprefix("mimo_rank_")) for k in resources if k.startswith("mimo_rank_")]
        views.append(
            NodeView(
                node_id=str(n.get("NodeID", "")),
                ip=str(n.get("NodeManagerAddress", "")),
                alive=bool(n.get("Alive")),
                gpus=float(resources.get("GPU", 0.0)),
                rank=ranks[0] if len(ranks) == 1 else None,
            )
        )
    return views


@dataclass(frozen=True)
class GangProgress:
    """Who has joined and who is missing; ``message`` is the line the head logs."""

    joined: dict[int, NodeView]
    missing: list[int]
    short_of_gpus: dict[int, float]  # rank → GPUs it joined with, when fewer than the plan's
    complete: bool
    message: str


def gang_progress(plan: LaunchPlan, views: Iterable[NodeView]) -> GangProgress:
    """Compare the alive Ray nodes with the plan: a pure function, so the messages are tested directly."""
    want = plan.gang.gpus_per_node
    joined: dict[int, NodeView] = {}
    for v in views:
        if v.alive and v.rank is not None and 0 <= v.rank < plan.gang.nodes:
            joined.setdefault(v.rank, v)
    missing = [r for r in range(plan.gang.nodes) if r not in joined]
    short = {r: v.gpus for r, v in joined.items() if v.gpus < want}
    complete = not missing and not short
    pods = plan.gang.pods
    gpus = sum(v.gpus for v in joined.values())
    head = f"{len(joined)}/{plan.gang.nodes} nodes joined ({gpus:g}/{want * plan.gang.nodes} GPUs)"
    parts = []
    if missing:
        names = ", ".join(f"rank {r} ({pods[r]})" for r in missing)
        parts.append(f"missing {names}")
    if short:
        names = ", ".join(f"rank {r} ({pods[r]}) has {g:g} of {want} GPUs" for r, g in sorted(short.items()))
        parts.append(names)
    message = head + (": " + "; ".join(parts) if parts else "")
    return GangProgress(joined, missing, short, complete, message)
