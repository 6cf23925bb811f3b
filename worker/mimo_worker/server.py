"""The head's HTTP endpoints (aiohttp), bound to the head pod's IP on the plan's worker port.

- ``GET /readyz``: the gang's readiness = node 0's own SGLang ``/health`` (200 only when it answers 200).
  Members' engines run SGLang's dummy health servers, which always say 200, so they say nothing here.
- ``GET /status``: the gang status document (phase, nodes, ranks, node IPs, fabric figures, engine
  state per rank, drain progress).
- ``POST /drain``: stop taking requests and wait until the running ones finish (or the drain timeout
  passes); answers with the drain's progress when it ends. ``?wait=false`` answers 202 at once.
  ``GET /drain``: the progress.
- ``GET /metrics``: the engine's ``/metrics`` text followed by the worker's own metrics.

Members serve nothing: their liveness is their process (it exits when the head or its Ray node goes).
"""

from __future__ import annotations

import logging
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from mimo_worker.status import DrainProgress, GangStatus

__all__ = ["ENGINE_HEALTH_TIMEOUT", "HeadApi", "build_app", "serve"]

log = logging.getLogger("mimo_worker.server")

# SGLang's /health runs a one-token generation bounded by SGLANG_HEALTH_CHECK_TIMEOUT (20 s by default);
# wait a little longer than that before calling the engine unhealthy.
ENGINE_HEALTH_TIMEOUT = 25.0
ENGINE_METRICS_TIMEOUT = 5.0
# Phases in which an engine may be answering on node 0.
_ENGINE_PHASES = frozenset({"starting-engine", "serving"})


class HeadApi(Protocol):
    """What the endpoints need from the head (a fake in tests)."""

    status: GangStatus
    engine_url: str

    @property
    def http(self) -> aiohttp.ClientSession: ...

    async def drain(self, seconds: float | None = None) -> DrainProgress: ...

    def start_drain(self, seconds: float | None = None) -> None: ...


def build_app(head: HeadApi) -> web.Application:
    async def readyz(_: web.Request) -> web.Response:
        phase = head.status.phase
        if phase not in _ENGINE_PHASES:
            return web.json_response({"ready": False, "phase": phase, "message": head.status.message}, status=503)
        try:
            timeout = aiohttp.ClientTimeout(total=ENGINE_HEALTH_TIMEOUT)
            async with head.http.get(f"{head.engine_url}/health", timeout=timeout) as r:
                code = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            return web.json_response({"ready": False, "phase": phase, "engine": f"unreachable: {e!r}"}, status=503)
        ready = code == 200
        return web.json_response({"ready": ready, "phase": phase, "engine_health": code}, status=200 if ready else 503)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(head.status.to_dict())

    async def drain_get(_: web.Request) -> web.Response:
        return web.json_response(head.status.drain.to_dict())

    async def drain_post(request: web.Request) -> web.Response:
        # The operator sends the deployment's drain timeout as it is when the drain starts, so editing it
        # never has to change (and so restart) a gang; without it, the launch plan's default holds.
        timeout: float | None = None
        if "timeout" in request.query:
            try:
                timeout = float(request.query["timeout"])
            except ValueError:
                timeout = None
            if timeout is None or not timeout > 0:
                return web.json_response({"error": "timeout must be a number of seconds above 0"}, status=400)
        if request.query.get("wait", "true").lower() in ("0", "false", "no"):
            head.start_drain(timeout)
            return web.json_response(head.status.drain.to_dict(), status=202)
        progress = await head.drain(timeout)
        return web.json_response(progress.to_dict())

    async def metrics(_: web.Request) -> web.Response:
        engine_text = b""
        if head.status.engine_started and head.status.ranks[0].exit_code is None:
            try:
                timeout = aiohttp.ClientTimeout(total=ENGINE_METRICS_TIMEOUT)
                async with head.http.get(f"{head.engine_url}/metrics", timeout=timeout) as r:
                    if r.status == 200:
                        engine_text = await r.read()
            except (aiohttp.ClientError, TimeoutError) as e:
                log.debug("engine /metrics unreachable: %r", e)
        if engine_text and not engine_text.endswith(b"\n"):
            engine_text += b"\n"
        return web.Response(
            body=engine_text + head.status.metrics_text(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        )

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/drain", drain_get)
    app.router.add_post("/drain", drain_post)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(head: HeadApi, host: str, port: int) -> web.AppRunner:
    """Start serving on ``host:port``; the caller cleans the runner up."""
    runner = web.AppRunner(build_app(head), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("head endpoints on http://%s:%d (/readyz /status /drain /metrics)", host, port)
    return runner
