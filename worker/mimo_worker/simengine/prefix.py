"""The simulated engine's prefix cache: the operator package's model (one model for the engine and the
autoscaling simulator, which must not drift apart; the operator never imports the worker)."""

from __future__ import annotations

from mimo_operator.autoscaling.prefix_cache import (
    CHARS_PER_TOKEN,
    CacheNode,
    RadixCache,
    id_blocks,
    segment_blocks,
    text_blocks,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "CacheNode",
    "RadixCache",
    "id_blocks",
    "segment_blocks",
    "text_blocks",
]
