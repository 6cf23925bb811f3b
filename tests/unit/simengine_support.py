"""Shared helpers for the simulated-engine tests.

``SmallReplica`` is a stand-in for ``mimo_operator.perf.ReplicaPerformance`` with round numbers, so a
test can work out by hand what the scheduler must do (a prefill of N tokens takes exactly
``prefill_base + N / prefill_rate`` seconds, and so on). Tests of behaviour that depends on the real
plan (the trace, the bench) use the real performance model.
"""

from __future__ import annotations

from dataclasses import dataclass

from mimo_worker.simengine.engine import EngineLimits


@dataclass(frozen=True)
class SmallReplica:
    model_name: str = "XiaomiMiMo/MiMo-V2.5-Pro"
    gpus: int = 16
    max_total_num_tokens: int = 64_000
    swa_max_tokens: int = 20_000
    swa_window: int = 128
    max_running_requests: int = 32
    context_length: int = 32_768
    chunked_prefill_size: int = 4096
    page_size: int = 64
    prefill_base: float = 0.01
    prefill_rate: float = 40_000.0  # prompt tokens per second
    decode_base: float = 0.02
    decode_per_seq: float = 0.0005
    decode_per_kv_token: float = 1e-8

    def prefill_seconds(self, new_tokens: int, cached_context_tokens: int = 0) -> float:
        return self.prefill_base + new_tokens / self.prefill_rate

    def decode_step_seconds(self, batch_size: int, kv_tokens: int) -> float:
        return self.decode_base + batch_size * self.decode_per_seq + kv_tokens * self.decode_per_kv_token

    def decode_tokens_per_second(self, concurrency: int, context_tokens: int) -> float:
        return concurrency / self.decode_step_seconds(concurrency, concurrency * context_tokens)

    @property
    def limits(self) -> EngineLimits:
        return EngineLimits.of(self)

