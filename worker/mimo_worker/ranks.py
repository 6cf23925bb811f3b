"""What the head runs on each node of the gang through Ray: the fabric probe and the engine rank.

Both are plain Python here; the head wraps them with ``ray.remote`` and places them in the gang's
placement group (bundle ``r`` = rank ``r``'s node), so this module imports neither Ray nor torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from typing import Any, Literal

from mimo_worker.fabric import FabricSample, measure_rank
from mimo_worker.supervise import keeper_argv

__all__ = ["EngineRank", "fabric_probe"]


def _node_ip() -> str:
    import ray  # only ever called inside a Ray worker

    get_node_ip_address: Any = ray.util.get_node_ip_address
    return str(get_node_ip_address())


def fabric_probe(
    *,
    rank: int,
    world_size: int,
    rendezvous_host: str,
    rendezvous_port: int,
    backend: Literal["nccl", "gloo"],
    sizes_bytes: list[int],
    iterations: int,
    warmup: int,
    timeout_seconds: float,
) -> list[FabricSample]:
    """The fabric check's one process on this node (a Ray task); binds to the node's own IP."""
    return measure_rank(
        rank=rank,
        world_size=world_size,
        rendezvous_host=rendezvous_host,
        rendezvous_port=rendezvous_port,
        node_ip=_node_ip(),
        backend=backend,
        sizes_bytes=sizes_bytes,
        iterations=iterations,
        warmup=warmup,
        timeout_seconds=timeout_seconds,
    )


class EngineRank:
    """One node's engine process, run under a keeper (``mimo_worker.supervise``) by a Ray actor.

    The actor is threaded (``max_concurrency`` > 1) so that ``wait`` can block while the head calls
    ``signal`` or ``kill`` on it.
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._keeper: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def node_ip(self) -> str:
        return _node_ip()

    def start(self, command: list[str], env: dict[str, str]) -> dict[str, Any]:
        """Start the engine (``command`` = program + argv, placeholders already filled in)."""
        with self._lock:
            if self._keeper is not None:
                raise RuntimeError(f"rank {self.rank}'s engine was already started")
            # The pod's environment (NCCL_*, the GPUs Ray assigned) plus the plan's for this rank.
            self._keeper = subprocess.Popen(keeper_argv(command, parent_pid=os.getpid()), env={**os.environ, **env})
            return {"pid": self._keeper.pid, "node_ip": _node_ip()}

    def wait(self) -> int:
        """Block until the engine ends; its exit code (128 + N when signal N ended it)."""
        keeper = self._keeper
        if keeper is None:
            raise RuntimeError(f"rank {self.rank}'s engine was never started")
        return keeper.wait()

    def signal(self, signum: int) -> None:
        """Pass a signal to the engine's main process (SIGTERM: SGLang drains, then exits)."""
        keeper = self._keeper
        if keeper is not None and keeper.poll() is None:
            keeper.send_signal(signum)

    def kill(self, grace: float = 5.0) -> None:
        """Kill the engine's whole process tree now (the keeper does it on SIGUSR1); kill the keeper if it
        does not exit within ``grace`` (the engine then follows through its parent-death signal)."""
        keeper = self._keeper
        if keeper is None or keeper.poll() is not None:
            return
        keeper.send_signal(signal.SIGUSR1)
        try:
            keeper.wait(grace)
        except subprocess.TimeoutExpired:
            keeper.kill()
