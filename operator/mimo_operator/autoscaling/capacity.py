"""What one replica can serve, in the policy's terms, from the plan's performance model.

Product code: the operator's loop, `mimoctl simulate autoscaling` and the benchmarks size the policy's
capacity with this one function, so that a figure the simulator prints is a figure of the configuration
the operator runs.
"""

from __future__ import annotations

from typing import Protocol

from mimo_operator.autoscaling.policy import ReplicaCapacity

__all__ = ["PerformanceModel", "capacity_of"]


class PerformanceModel(Protocol):
    """What capacity and the simulator need from the plan's `ReplicaPerformance` (mimo_operator.perf)."""

    @property
    def gpus(self) -> int: ...
    @property
    def max_total_num_tokens(self) -> int: ...
    @property
    def swa_max_tokens(self) -> int: ...
    @property
    def swa_window(self) -> int: ...
    @property
    def max_running_requests(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def chunked_prefill_size(self) -> int: ...
    @property
    def page_size(self) -> int: ...

    def prefill_seconds(self, new_tokens: int, cached_context_tokens: int = 0) -> float: ...
    def decode_step_seconds(self, batch_size: int, kv_tokens: int) -> float: ...
    def decode_tokens_per_second(self, concurrency: int, context_tokens: int) -> float: ...


def capacity_of(
    performance: PerformanceModel, *, itl_slo_seconds: float, context_tokens: int, output_tokens: int = 256
) -> ReplicaCapacity:
    """A replica's throughput in the policy's terms, from the performance model.

    Prefill: tokens per second for full chunks. Decode: aggregate tokens per second at the largest
    batch whose step still fits in the ITL budget (the load a replica should not be pushed beyond),
    capped by the running-request and KV limits.
    """
    chunk = max(1, min(performance.chunked_prefill_size, context_tokens))
    prefill = chunk / performance.prefill_seconds(chunk, 0)
    per_sequence = context_tokens + 128
    limit = max(
        1,
        min(
            performance.max_running_requests,
            performance.max_total_num_tokens // max(per_sequence, 1),
            performance.swa_max_tokens // max(performance.swa_window + performance.page_size, 1),
        ),
    )
    batch = 1
    low, high = 1, limit
    while low <= high:  # largest batch whose step fits in the ITL budget
        middle = (low + high) // 2
        if performance.decode_step_seconds(middle, middle * per_sequence) <= itl_slo_seconds:
            batch, low = middle, middle + 1
        else:
            high = middle - 1
    decode = batch / performance.decode_step_seconds(batch, batch * per_sequence)
    return ReplicaCapacity(
        prefill_tokens_per_second=prefill,
        decode_tokens_per_second=decode,
        max_running_requests=performance.max_running_requests,
        typical_request_seconds=context_tokens / prefill + output_tokens / decode,
    )
