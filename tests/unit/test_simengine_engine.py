"""The simulated engine's scheduler model, in virtual time (engine.py)."""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from mimo_worker.simengine.engine import (
    AdmissionPolicy,
    Arrival,
    Batch,
    BatchKind,
    ClosedLoop,
    Engine,
    EngineLimits,
    OpenLoop,
    PauseMode,
    Progress,
    ReplicaBatch,
    ReplicaEngine,
    RequestRejected,
    RequestState,
    run_virtual,
)
from tests.unit.simengine_support import SmallReplica

REPLICA = SmallReplica()


def engine(replica: SmallReplica = REPLICA, policy: AdmissionPolicy | None = None) -> Engine:
    return Engine(replica.limits, replica, policy)


def drain(e: Engine, now: float = 0.0) -> tuple[float, list[Batch]]:
    """Run an engine until idle; the end time and the batches it ran."""
    batches: list[Batch] = []
    while (batch := e.next_batch(now)) is not None:
        e.complete(batch)
        batches.append(batch)
        now = batch.end
    return now, batches


def test_a_lone_request_gets_its_first_token_after_prefill_and_the_rest_one_per_decode_step() -> None:
    e = engine()
    request = e.submit("a", prompt_tokens=1000, max_new_tokens=5, now=0.0)
    end, batches = drain(e)
    prefill = REPLICA.prefill_seconds(1000)
    decodes = [REPLICA.decode_step_seconds(1, 1000 + i) for i in range(4)]
    assert [b.kind for b in batches] == [BatchKind.PREFILL] + [BatchKind.DECODE] * 4
    assert request.ttft == pytest.approx(prefill)
    assert request.e2e_seconds == pytest.approx(prefill + sum(decodes))
    assert request.output_tokens == 5
    assert request.state is RequestState.FINISHED
    assert e.stats(end).full_used_tokens == 0
    assert e.stats(end).swa_used_tokens == 0


def test_a_long_prompt_is_prefilled_in_chunks_and_stalls_decoding_meanwhile() -> None:
    e = engine()
    running = e.submit("running", prompt_tokens=100, max_new_tokens=50, now=0.0)
    now = 0.0
    for _ in range(3):  # prefill + two decode steps
        batch = e.next_batch(now)
        assert batch is not None
        e.complete(batch)
        now = batch.end
    assert running.output_tokens == 3
    long = e.submit("long", prompt_tokens=3 * 4096 + 10, max_new_tokens=5, now=now)
    kinds = []
    for _ in range(4):
        batch = e.next_batch(now)
        assert batch is not None
        kinds.append(batch.kind)
        e.complete(batch)
        now = batch.end
    assert kinds == [BatchKind.PREFILL] * 4  # 4096 + 4096 + 4096 + 10 tokens, one chunk per step
    assert running.output_tokens == 3  # no decode step ran while the prompt was chunked
    assert long.output_tokens == 1
    assert long.first_token_at == pytest.approx(now)


def test_admission_stops_at_max_running_requests_and_the_rest_queue() -> None:
    e = engine()
    for i in range(40):
        e.submit(f"r{i}", prompt_tokens=100, max_new_tokens=50, now=0.0)
    batch = e.next_batch(0.0)
    assert batch is not None
    e.complete(batch)
    stats = e.stats(batch.end)
    assert (stats.num_running_reqs, stats.num_queue_reqs) == (32, 8)


def test_admission_stops_when_the_kv_cache_cannot_hold_another_whole_request() -> None:
    # each request needs page_round(10000) + 2000 = 12048 tokens reserved; 64000 holds five of them
    e = engine(policy=AdmissionPolicy.reserve_all())
    arrivals = [Arrival(0.0, 10_000, 2000) for _ in range(8)]
    run = run_virtual(e, OpenLoop(arrivals))
    assert max(s.num_running_reqs for _, s in run.samples) == 5
    assert any(s.num_running_reqs == 5 and s.num_queue_reqs == 3 for _, s in run.samples)
    assert max(s.full_used_tokens for _, s in run.samples) <= REPLICA.max_total_num_tokens
    assert all(r.output_tokens == 2000 for r in run.requests)
    assert e.counters.retracted_requests == 0


@pytest.mark.parametrize(
    ("policy", "expect_retractions"),
    [
        pytest.param(AdmissionPolicy(), True, id="SGLang's estimate overcommits and retracts under KV pressure"),
        pytest.param(AdmissionPolicy.reserve_all(), False, id="reserving the whole output never retracts"),
    ],
)
def test_kv_pressure_is_handled_by_retraction_or_by_reservation(
    policy: AdmissionPolicy, expect_retractions: bool
) -> None:
    replica = dataclasses.replace(REPLICA, max_total_num_tokens=20_000, swa_max_tokens=10_000)
    e = engine(replica, policy)
    peak = 0
    ratios_after_retraction: list[float] = []

    def watch(batch: ReplicaBatch, progress: list[Progress]) -> None:
        nonlocal peak
        peak = max(peak, e.stats(batch.end).full_used_tokens)
        if batch.retracted:
            ratios_after_retraction.append(e.new_token_ratio)

    run = run_virtual(
        e, ClosedLoop(concurrency=24, prompt_tokens=1000, max_new_tokens=1500, total_requests=48), on_step=watch
    )
    assert (e.counters.retracted_requests > 0) is expect_retractions
    assert len(run.finished) == 48
    assert all(r.output_tokens == 1500 for r in run.finished)  # a retracted request keeps its output
    assert peak <= replica.max_total_num_tokens
    if expect_retractions:
        assert any(r.retractions for r in run.finished)
        # SGLang's correction: after retracting, the estimate is raised to what requests really use
        assert max(ratios_after_retraction) > AdmissionPolicy().init_new_token_ratio


def test_over_capacity_it_queues_throughput_flattens_and_ttft_grows() -> None:
    results = {}
    for concurrency in (4, 32, 64, 128):
        run = run_virtual(engine(), ClosedLoop(concurrency, 512, 128, total_requests=concurrency * 3))
        tokens = sum(r.output_tokens for r in run.finished)
        results[concurrency] = (
            tokens / run.end,
            statistics.mean(r.ttft or 0.0 for r in run.finished),
            max(s.num_queue_reqs for _, s in run.samples),
        )
    throughput = {c: r[0] for c, r in results.items()}
    ttft = {c: r[1] for c, r in results.items()}
    queue = {c: r[2] for c, r in results.items()}
    assert throughput[32] > 4 * throughput[4]  # below capacity, batching scales throughput
    # past max_running_requests (32) throughput stays flat ...
    assert throughput[64] == pytest.approx(throughput[32], rel=0.1)
    assert throughput[128] == pytest.approx(throughput[32], rel=0.1)
    # ... while the queue and TTFT grow with the offered load
    assert queue[4] <= 4 < queue[64] < queue[128]
    assert ttft[4] < ttft[32] < ttft[64] < ttft[128]
    assert ttft[128] > 2 * ttft[64] > 4 * ttft[32]


def test_kv_usage_follows_the_tokens_in_flight() -> None:
    e = engine()
    requests = [e.submit(f"r{i}", prompt_tokens=900 + 100 * i, max_new_tokens=200, now=0.0) for i in range(10)]
    now = 0.0
    checked = 0
    while (batch := e.next_batch(now)) is not None:
        e.complete(batch)
        now = batch.end
        admitted = [r for r in requests if r.state in (RequestState.RUNNING, RequestState.PREFILLING)]
        if admitted and all(r.state is RequestState.RUNNING for r in admitted):
            in_flight = sum(r.prompt_tokens + r.output_tokens for r in admitted)
            used = e.stats(now).full_used_tokens
            # each sequence holds its tokens (minus the one not yet written) rounded up to a page
            assert in_flight - len(admitted) <= used <= in_flight + len(admitted) * REPLICA.page_size
            checked += 1
    assert checked > 100
    assert e.stats(now).full_used_tokens == 0
    assert e.stats(now).token_usage == 0


def test_the_sliding_window_pool_holds_only_the_window_of_each_sequence() -> None:
    e = engine()
    e.submit("a", prompt_tokens=10_000, max_new_tokens=100, now=0.0)
    now = 0.0
    while (batch := e.next_batch(now)) is not None and batch.kind is BatchKind.PREFILL:
        e.complete(batch)
        now = batch.end
    stats = e.stats(now)
    assert stats.full_used_tokens == 10_048  # the whole prompt, page-rounded
    assert stats.swa_used_tokens <= 128 + 64  # the pages over the last 128 tokens
    assert stats.token_usage == pytest.approx(stats.full_token_usage)


def test_a_small_sliding_window_pool_limits_the_prefill_chunk() -> None:
    replica = dataclasses.replace(REPLICA, swa_max_tokens=1000)
    e = engine(replica)
    request = e.submit("a", prompt_tokens=8000, max_new_tokens=3, now=0.0)
    _, batches = drain(e)
    prefills = [b for b in batches if b.kind is BatchKind.PREFILL]
    assert len(prefills) >= 8  # ≤ 1000 tokens per chunk instead of 4096
    assert all(sum(c.tokens for c in b.chunks) <= 1000 for b in prefills)
    assert request.output_tokens == 3


@pytest.mark.parametrize(
    ("prompt", "output", "why"),
    [
        (30_000, 5000, "longer than the context"),
        (1, 0, "no output asked for"),
        (0, 10, "empty prompt"),
    ],
)
def test_requests_the_replica_can_never_serve_are_rejected(prompt: int, output: int, why: str) -> None:
    with pytest.raises(RequestRejected):
        engine().submit("x", prompt, output, now=0.0)


def test_a_request_larger_than_the_kv_cache_is_rejected() -> None:
    replica = dataclasses.replace(REPLICA, max_total_num_tokens=8000, context_length=32_768)
    with pytest.raises(RequestRejected, match="max_total_num_tokens"):
        engine(replica).submit("x", 9000, 10, now=0.0)


def test_abort_frees_the_kv_of_a_running_request_and_removes_a_queued_one() -> None:
    e = engine()
    running = e.submit("running", 2000, 100, now=0.0)
    batch = e.next_batch(0.0)
    assert batch is not None
    e.complete(batch)
    queued = e.submit("queued", 100, 10, now=batch.end)
    assert e.stats(batch.end).full_used_tokens > 0
    assert e.abort("running", batch.end) is running
    assert e.abort("queued", batch.end) is queued
    stats = e.stats(batch.end)
    assert (stats.full_used_tokens, stats.swa_used_tokens, stats.num_queue_reqs) == (0, 0, 0)
    assert e.idle
    assert e.next_batch(batch.end) is None
    assert e.counters.aborted_requests == 2


def test_pause_in_retract_mode_requeues_running_requests_and_continue_finishes_them() -> None:
    e = engine()
    requests = [e.submit(f"r{i}", 500, 20, now=0.0) for i in range(3)]
    now = 0.0
    for _ in range(3):
        batch = e.next_batch(now)
        assert batch is not None
        e.complete(batch)
        now = batch.end
    e.pause(PauseMode.RETRACT, now)
    stats = e.stats(now)
    assert (stats.num_running_reqs, stats.num_queue_reqs, stats.full_used_tokens) == (0, 3, 0)
    assert e.next_batch(now) is None  # paused
    e.resume()
    drain(e, now)
    assert all(r.output_tokens == 20 and r.state is RequestState.FINISHED for r in requests)


def test_pause_in_abort_mode_drops_everything() -> None:
    e = engine()
    for i in range(3):
        e.submit(f"r{i}", 500, 20, now=0.0)
    dropped = e.pause(PauseMode.ABORT, 0.0)
    assert len(dropped) == 3
    assert all(r.state is RequestState.ABORTED for r in dropped)
    assert e.idle


def test_pause_in_place_keeps_requests_where_they_are() -> None:
    e = engine()
    e.submit("a", 500, 20, now=0.0)
    batch = e.next_batch(0.0)
    assert batch is not None
    e.complete(batch)
    used = e.stats(batch.end).full_used_tokens
    e.pause(PauseMode.IN_PLACE, batch.end)
    assert e.next_batch(batch.end) is None
    assert e.stats(batch.end).full_used_tokens == used
    assert e.stats(batch.end).num_running_reqs == 1


def test_gen_throughput_reports_recent_output_and_falls_to_zero_when_idle() -> None:
    e = engine()
    run = run_virtual(e, ClosedLoop(16, 200, 400, total_requests=16))
    busy = [s.gen_throughput for t, s in run.samples if 6.0 < t < run.end - 1.0]
    expected = sum(r.output_tokens for r in run.finished) / run.end
    assert busy
    assert statistics.mean(busy) == pytest.approx(expected, rel=0.2)
    assert e.stats(run.end + 10.0).gen_throughput == 0.0


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="page_size"):
        dataclasses.replace(REPLICA.limits, page_size=0)


def test_limits_are_read_from_a_performance_model() -> None:
    limits = EngineLimits.of(REPLICA)
    assert limits.max_total_num_tokens == REPLICA.max_total_num_tokens
    assert limits.swa_window == 128


# ---- a replica with data-parallel attention -----------------------------------------------------------


def test_attention_dp_groups_split_the_replicas_limits_as_sglang_does() -> None:
    replica = ReplicaEngine(REPLICA.limits, REPLICA, attention_dp=2)
    group = replica.group_limits
    assert group.max_total_num_tokens == REPLICA.max_total_num_tokens // 2
    assert group.swa_max_tokens == REPLICA.swa_max_tokens // 2
    assert group.max_running_requests == REPLICA.max_running_requests // 2
    assert group.chunked_prefill_size == REPLICA.chunked_prefill_size // 2
    assert group.context_length == REPLICA.context_length
    # schedule conservativeness × 0.3 with DP attention
    assert replica.groups[0].policy.init_new_token_ratio == pytest.approx(0.7 * 0.3)
    assert ReplicaEngine(REPLICA.limits, REPLICA).groups[0].policy == AdmissionPolicy()


def test_requests_go_to_the_groups_in_turn_and_each_group_has_its_own_queue() -> None:
    replica = ReplicaEngine(REPLICA.limits, REPLICA, attention_dp=2)
    requests = [replica.submit(f"r{i}", 100, 10, now=0.0) for i in range(6)]
    assert [r.group for r in requests] == [0, 1, 0, 1, 0, 1]
    assert [s.num_queue_reqs for s in replica.group_stats(0.0)] == [3, 3]
    assert replica.stats(0.0).num_queue_reqs == 6


def test_groups_step_in_lockstep_for_as_long_as_the_replica_needs_for_their_union() -> None:
    replica = ReplicaEngine(REPLICA.limits, REPLICA, attention_dp=2)
    replica.submit("a", 1000, 50, now=0.0)
    replica.submit("b", 1000, 50, now=0.0)
    first = replica.next_batch(0.0)
    assert first is not None
    assert first.kind is BatchKind.PREFILL
    assert first.duration == pytest.approx(REPLICA.prefill_seconds(2000, 0))  # both prompts, one pass
    replica.complete(first)
    decode = replica.next_batch(first.end)
    assert decode is not None
    assert decode.duration == pytest.approx(REPLICA.decode_step_seconds(2, 2000))
    replica.complete(decode)
    # a new prompt in group 0 while group 1 decodes: the pass lasts as long as the longer of the two
    replica.submit("c", 3000, 5, now=decode.end)
    mixed = replica.next_batch(decode.end)
    assert mixed is not None
    kinds = [p.kind if p is not None else None for p in mixed.parts]
    assert kinds == [BatchKind.PREFILL, BatchKind.DECODE]
    assert mixed.duration == pytest.approx(
        max(REPLICA.prefill_seconds(2048, 0), REPLICA.decode_step_seconds(1, 1001))
    )  # group 0 prefills one chunk of its halved budget


def test_a_sequence_must_fit_one_groups_pool() -> None:
    replica = ReplicaEngine(dataclasses.replace(REPLICA, context_length=64_000).limits, REPLICA, attention_dp=2)
    with pytest.raises(RequestRejected, match="max_total_num_tokens"):
        replica.submit("long", 40_000, 10, now=0.0)  # fits the replica's 64,000 tokens, not a group's 32,000
