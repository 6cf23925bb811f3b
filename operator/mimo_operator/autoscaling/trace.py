"""Request traces for the autoscaling simulator: loading, and reshaping to a fleet's scale.

The format is the Azure LLM inference trace's: a CSV with `TIMESTAMP` (a date-time, or seconds),
`ContextTokens` and `GeneratedTokens`. Arrival times are kept relative to the first request.

A trace of one service is usually far smaller than a multi-node MiMo-V2.5-Pro fleet, so it can be
reshaped: `speedup` compresses time (2.0 replays an hour in thirty minutes, 0.5 stretches it to two
hours), and `copies` overlays several copies of the trace, copy k shifted by k × `copy_offset_seconds`
and wrapped around the end so that every copy covers the whole span. A small offset keeps the shape of
the original (its bursts and lulls, multiplied); an offset of span / copies spreads the copies evenly and
smooths the shape out.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Request", "Trace", "TraceError", "load_trace", "reshape"]


class TraceError(ValueError):
    """A trace file that cannot be read, with the line and the reason."""


@dataclass(frozen=True, slots=True)
class Request:
    arrival: float  # seconds after the trace's first request
    context_tokens: int
    generated_tokens: int
    # The prompt's shared parts in order, (stable id, tokens): a system prompt, a document, a conversation's
    # earlier turns. Two prompts share a prefix as far as their leading segments agree; the autoscaling
    # simulator's prefix caches read it (prefix_cache.segment_blocks). Empty: nothing shared (CSV traces).
    segments: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Trace:
    name: str
    requests: tuple[Request, ...]  # sorted by arrival
    span_seconds: float  # from the first arrival to the end of the trace window

    @property
    def prompt_tokens(self) -> int:
        return sum(r.context_tokens for r in self.requests)

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.requests)


_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def load_trace(path: str | Path) -> Trace:
    """Read a trace CSV; timestamps may be date-times (any resolution) or seconds."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise TraceError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(_COLUMNS)}")
            raw = list(_parse_rows(path, reader))
    except OSError as error:
        raise TraceError(f"{path}: {error.strerror or error}") from error
    if not raw:
        raise TraceError(f"{path}: no requests")
    raw.sort(key=lambda row: row[0])
    start = raw[0][0]
    requests = tuple(Request(t - start, c, g) for t, c, g in raw)
    span = requests[-1].arrival
    # A window ends one mean inter-arrival after the last request, so that copies wrap cleanly.
    span += span / max(len(requests) - 1, 1)
    return Trace(path.name, requests, span)


def _parse_rows(path: Path, reader: csv.DictReader[str]) -> Iterable[tuple[float, int, int]]:
    for line, row in enumerate(reader, start=2):
        stamp = (row.get("TIMESTAMP") or "").strip()
        if not stamp:
            continue
        try:
            context = int(row["ContextTokens"])
            generated = int(row["GeneratedTokens"])
            seconds = _seconds(stamp)
        except (TypeError, ValueError) as error:
            raise TraceError(f"{path}:{line}: {error}") from error
        if context < 0 or generated < 0:
            raise TraceError(f"{path}:{line}: token counts must not be negative")
        yield seconds, context, generated


def _seconds(stamp: str) -> float:
    try:
        return float(stamp)
    except ValueError:
        pass
    # Python's parser takes at most six fractional digits; the Azure traces carry seven.
    head, dot, fraction = stamp.partition(".")
    if dot:
        stamp = f"{head}.{fraction[:6]}"
    moment = datetime.fromisoformat(stamp)
    if moment.tzinfo is None:  # a naive time is read as UTC, so no daylight-saving jump can enter
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def reshape(trace: Trace, *, speedup: float = 1.0, copies: int = 1, copy_offset_seconds: float = 0.0) -> Trace:
    """Time-compress by `speedup` and overlay `copies` shifted copies (see the module docstring)."""
    if speedup <= 0 or not math.isfinite(speedup):
        raise ValueError(f"speedup must be a positive number, got {speedup}")
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    if copy_offset_seconds < 0:
        raise ValueError(f"copy offset must not be negative, got {copy_offset_seconds}")
    span = trace.span_seconds / speedup
    merged: list[Request] = []
    for copy in range(copies):
        shift = (copy * copy_offset_seconds) % span if span > 0 else 0.0
        for request in trace.requests:
            arrival = request.arrival / speedup + shift
            if arrival >= span:
                arrival -= span
            merged.append(Request(arrival, request.context_tokens, request.generated_tokens, request.segments))
    merged.sort(key=lambda r: r.arrival)
    name = trace.name
    if speedup != 1.0:
        name += f" ×{speedup:g} speed"
    if copies > 1:
        name += f", {copies} copies {copy_offset_seconds:g}s apart"
    return Trace(name, tuple(merged), span)
