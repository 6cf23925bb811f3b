"""The reconcile loops: the events of a deployment that arrive within the batch period are acted on together."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from typing import Any

from mimo_operator.handlers import Loops
from mimo_operator.reconciler import Memory, ReconcileResult


class _Counting:
    def __init__(self) -> None:
        self.starts: list[float] = []

    async def reconcile(self, body: Mapping[str, Any], memory: Memory) -> ReconcileResult:
        self.starts.append(time.monotonic())
        return ReconcileResult(requeue_after=30.0)


async def test_pod_events_that_arrive_together_are_acted_on_together_and_none_is_left_out() -> None:
    reconciler = _Counting()
    loops = Loops(reconciler, None, 30.0, batch=0.2)  # type: ignore[arg-type]
    body = {"metadata": {"namespace": "ns", "name": "d", "uid": "u", "generation": 1}, "spec": {}}
    began = time.monotonic()
    loops.seen(body, deleted=False)
    try:
        for _ in range(40):  # 0.4 s of pod events, one every 10 ms
            last_poke = time.monotonic()
            loops.poke("ns", "d")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
    finally:
        await loops.stop()
    starts = reconciler.starts
    assert starts[0] - began < 0.1, "the first event is acted on at once"
    assert 2 <= len(starts) <= 4, f"40 events in 0.4 s: a reconcile per batch, not per event ({len(starts)})"
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(starts))
    assert starts[-1] > last_poke, "the last event is acted on too, by a reconcile after it"
