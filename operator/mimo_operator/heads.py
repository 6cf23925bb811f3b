"""The operator's one boundary to the gangs' heads: their worker endpoints over HTTP (drain, status), and to
the routers in front of them (taking a head out of a router's worker set).

Heads are addressed by pod IP, as the router addresses them; the gang's NetworkPolicy admits the
operator to the worker port only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["DrainState", "Heads", "fabric_of"]

log = logging.getLogger("mimo.operator.heads")


@dataclass(frozen=True)
class DrainState:
    done: bool
    idle: bool          # no drain asked for yet
    running: int | None
    message: str


class Heads:
    def __init__(self, session: aiohttp.ClientSession, timeout: float = 5.0) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def start_drain(self, ip: str, port: int, seconds: float | None = None) -> bool:
        """Ask the head to stop taking requests and finish its running ones; returns at once. ``seconds``:
        seconds the head may wait for running requests (the spec's drain timeout, read now, not at gang
        creation, so that editing it restarts nothing)."""
        params = {"wait": "false"}
        if seconds is not None:
            params["timeout"] = f"{max(1.0, seconds):.0f}"
        try:
            async with self.session.post(f"http://{ip}:{port}/drain", params=params,
                                         timeout=self.timeout) as resp:
                return resp.status in (200, 202)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.info("drain request to %s:%d failed: %s", ip, port, e)
            return False

    async def drain_state(self, ip: str, port: int) -> DrainState | None:
        """The head's drain progress; None when it cannot be asked (then the drain timeout decides)."""
        try:
            async with self.session.get(f"http://{ip}:{port}/drain", timeout=self.timeout) as resp:
                if resp.status != 200:
                    return None
                body: dict[str, Any] = await resp.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        state = body.get("state")
        return DrainState(done=state in ("drained", "timed-out"), idle=state == "idle",
                          running=body.get("running_requests"),
                          message=str(body.get("message") or state))

    async def leave_router(self, router: str, worker: str) -> bool:
        """Take ``worker`` (``http://<head ip>:<port>``) out of the router at ``router`` (its base URL); True when
        the router no longer lists it.

        sglang-router's pod discovery drops a head whose serving label goes only in its regular mode: in PD
        mode it watches every pod and filters each event by the pools' selectors, so a head that leaves a
        selector is never seen again, and stays a worker after its pods are gone. The router's own API
        (``GET /workers``, ``DELETE /workers/{id}``) takes it out whatever the mode.
        """
        try:
            async with self.session.get(f"{router}/workers", timeout=self.timeout) as resp:
                if resp.status != 200:
                    return False
                body: dict[str, Any] = await resp.json()
            ids = [w.get("id") for w in body.get("workers") or []
                   if w.get("url") == worker or str(w.get("url", "")).startswith(worker + "@")]
            for worker_id in ids:
                async with self.session.delete(f"{router}/workers/{worker_id}", timeout=self.timeout) as resp:
                    if resp.status not in (200, 202, 204, 404):
                        return False
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            log.info("removing %s from the router at %s failed: %s", worker, router, e)
            return False
        return True

    async def fabric(self, ip: str, port: int) -> dict[str, Any] | None:
        """The gang's fabric check as the head's ``/status`` shows it (``fabric_of``); None when the head cannot
        be asked or has no verdict yet."""
        try:
            async with self.session.get(f"http://{ip}:{port}/status", timeout=self.timeout) as resp:
                if resp.status != 200:
                    return None
                body: dict[str, Any] = await resp.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        return fabric_of(body)


def fabric_of(head_status: dict[str, Any]) -> dict[str, Any] | None:
    """The deployment status' ``gangs[].fabric`` from a head's ``/status`` document."""
    fabric = head_status.get("fabric")
    if not isinstance(fabric, dict) or not fabric.get("verdict"):
        return None
    out: dict[str, Any] = {"verdict": str(fabric["verdict"]), "message": str(fabric.get("message") or ""),
                           "backend": str(fabric.get("backend") or "")}
    for key, field in (("bus_gbps", "allReduceGBps"), ("all_to_all_bus_gbps", "allToAllGBps"),
                       ("expected_bus_gbps", "expectedGBps")):
        if isinstance(fabric.get(key), int | float):
            out[field] = round(float(fabric[key]), 2)
    return out
