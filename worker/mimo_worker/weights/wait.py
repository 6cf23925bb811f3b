"""Waiting for a cache directory to be complete — for engine pods started before their weights
(``spec.model.cache.gateOnWeightsReady: false``), which must not load a half-written checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from mimo_worker.weights.layout import COMPLETE_FILE, STATUS_FILE, read_json

__all__ = ["wait_until_complete"]

log = logging.getLogger("mimo.weights")


def wait_until_complete(dest: Path, timeout: float, interval: float = 5.0,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> bool:
    """True once ``dest`` has its completion marker; False after ``timeout`` seconds. Logs progress from
    the status file the downloader keeps next to it, so a person reading the engine's log sees why."""
    deadline = clock() + timeout
    last = -1.0
    while True:
        if (dest / COMPLETE_FILE).is_file():
            return True
        now = clock()
        if now >= deadline:
            return False
        if now - last >= 60 or last < 0:
            status = read_json(dest / STATUS_FILE) or {}
            done, total = status.get("bytesDone", 0), status.get("bytesTotal", 0)
            log.info("waiting for the weights in %s: %s, %.1f of %.1f GB, ETA %s s", dest,
                     status.get("phase", "not started"), done / 1e9, total / 1e9, status.get("etaSeconds"))
            last = now
        sleep(min(interval, max(0.0, deadline - now)))
