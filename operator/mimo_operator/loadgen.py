"""A trace-driven load generator: replays (context, generated) token counts from a request trace against
an OpenAI-compatible endpoint, streaming, and records each request's time to first token and outcome.

Used by the demo; its shape (time-compressed segments of the trace) is what makes load rise and fall.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

__all__ = ["MAX_CONTEXT_TOKENS", "MAX_OUTPUT_TOKENS", "LoadResult", "Phase", "RequestShape", "read_trace", "replay",
           "schedule"]

# Requests are clipped to these sizes (the demo's rehearsal has a 64k context; most of the trace fits).
MAX_CONTEXT_TOKENS = 8192
MAX_OUTPUT_TOKENS = 512


@dataclass(frozen=True)
class RequestShape:
    offset: float            # seconds from the start of the trace
    context_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class Phase:
    """Play trace time [start, start + trace_seconds) squeezed into ``wall_seconds``."""

    name: str
    wall_seconds: float
    trace_seconds: float


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    ttft: list[tuple[float, float]] = field(default_factory=list)  # (wall time sent, seconds to first token)
    done: list[float] = field(default_factory=list)                # wall time of each completion

    def rate(self, now: float, window: float = 10.0) -> float:
        return sum(1 for t in self.done if now - window <= t <= now) / window


def read_trace(path: Path) -> list[RequestShape]:
    """The Azure trace format: TIMESTAMP, ContextTokens, GeneratedTokens (examples/traces/README.md)."""
    import datetime as dt

    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            stamp = dt.datetime.fromisoformat(row["TIMESTAMP"][:26])
            rows.append((stamp.timestamp(), int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    start = rows[0][0]
    return [RequestShape(t - start, c, g) for t, c, g in rows]


def schedule(trace: Sequence[RequestShape], phases: Sequence[Phase], *, max_context: int = MAX_CONTEXT_TOKENS,
             max_output: int = MAX_OUTPUT_TOKENS) -> list[RequestShape]:
    """What `replay` sends: each request at its wall-clock offset from the start (``offset``), clipped to the
    sizes it asks for. The demo hands the same list to the simulator for its prediction."""
    out = []
    cursor = 0.0
    wall = 0.0
    span = max(trace[-1].offset, 1.0) if trace else 1.0
    for phase in phases:
        squeeze = phase.trace_seconds / phase.wall_seconds
        for s in trace:
            if cursor <= s.offset < cursor + phase.trace_seconds:
                out.append(RequestShape(wall + (s.offset - cursor) / squeeze,
                                        max(16, min(s.context_tokens, max_context)),
                                        max(1, min(s.generated_tokens, max_output))))
        wall += phase.wall_seconds
        cursor = (cursor + phase.trace_seconds) % span
    return out


async def _one(session: aiohttp.ClientSession, url: str, model: str, shape: RequestShape,
               result: LoadResult) -> None:
    body = {"model": model, "prompt": "x " * 8, "max_tokens": shape.generated_tokens, "stream": True,
            "mimo_prompt_tokens": shape.context_tokens}
    sent = time.monotonic()
    result.sent += 1
    first: float | None = None
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=600)) as resp:
            if resp.status != 200:
                result.failed += 1
                result.errors.append(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                return
            async for line in resp.content:
                if first is None and line.startswith(b"data:") and b"[DONE]" not in line:
                    first = time.monotonic()
                if line.strip() == b"data: [DONE]":
                    break
    except (TimeoutError, aiohttp.ClientError, OSError, json.JSONDecodeError) as e:
        result.failed += 1
        result.errors.append(f"{type(e).__name__}: {e}")
        return
    result.ok += 1
    now = time.monotonic()
    result.done.append(now)
    result.ttft.append((sent, (first or now) - sent))


async def replay(url: str, model: str, trace: Sequence[RequestShape], phases: Sequence[Phase], result: LoadResult,
                 *, max_context: int = MAX_CONTEXT_TOKENS, max_output: int = MAX_OUTPUT_TOKENS,
                 max_in_flight: int = 512) -> None:
    """Send the trace's requests on the phases' compressed clocks, one phase after another (`schedule`)."""
    limit = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    planned = schedule(trace, phases, max_context=max_context, max_output=max_output)
    # aiohttp's default pool of 100 connections would hold requests back on this side once 100 streams are
    # open, and their wait would count as TTFT: the in-flight bound above is the only limit.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight)) as session:

        async def guarded(shape: RequestShape) -> None:
            async with limit:
                await _one(session, url, model, shape, result)

        begin = time.monotonic()
        for shape in planned:
            delay = begin + shape.offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(guarded(shape))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        rest = begin + sum(p.wall_seconds for p in phases) - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        if tasks:
            await asyncio.gather(*tasks)
