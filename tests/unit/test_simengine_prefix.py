"""The simulated engine's prefix cache (prefix.py, engine.py item 8): SGLang's radix cache at page granularity."""

from __future__ import annotations

import dataclasses

import pytest

from mimo_worker.simengine.engine import Engine, ReplicaEngine
from mimo_worker.simengine.prefix import RadixCache, id_blocks, segment_blocks, text_blocks
from tests.unit.simengine_support import SmallReplica

REPLICA = SmallReplica()
PAGE = REPLICA.page_size


def drain(e: Engine | ReplicaEngine, now: float = 0.0) -> float:
    while (batch := e.next_batch(now)) is not None:
        e.complete(batch)  # type: ignore[arg-type]
        now = batch.end
    return now


def prompt(shared: str, unique: str, tokens: int) -> tuple[int, ...]:
    return segment_blocks([(shared, tokens - 100)], tokens, PAGE, unique)


# ---- keys -------------------------------------------------------------------------------------------


def test_keys_of_prompts_that_share_a_beginning_agree_on_the_whole_pages_of_it_and_nothing_after() -> None:
    a = segment_blocks([("system", 1000)], 3000, PAGE, "req-a")
    b = segment_blocks([("system", 1000)], 2000, PAGE, "req-b")
    assert len(a) == 3000 // PAGE
    assert len(b) == 2000 // PAGE
    shared = 1000 // PAGE  # 15 whole pages; page 16 holds system tokens and each request's own
    assert a[:shared] == b[:shared]
    assert a[shared] != b[shared]
    assert segment_blocks([("system", 1000)], 3000, PAGE, "req-a") == a  # stable across calls


def test_text_and_token_id_keys_follow_content_not_identity() -> None:
    system = "You are MiMo. " * 200
    assert text_blocks(system + "question one", PAGE)[:5] == text_blocks(system + "another question", PAGE)[:5]
    assert text_blocks("x" * 1000, PAGE) != text_blocks("y" * 1000, PAGE)
    ids = list(range(300))
    assert id_blocks(ids, PAGE) == id_blocks([*ids, 7, 8], PAGE)[: 300 // PAGE]
    assert id_blocks([1, *ids], PAGE)[0] != id_blocks(ids, PAGE)[0]


# ---- the tree ---------------------------------------------------------------------------------------


def test_the_tree_evicts_unlocked_leaves_least_recently_used_first_and_never_a_locked_page() -> None:
    cache = RadixCache(PAGE)
    old, new, held = [], [], []
    cache.extend(old, [1, 2], now=0.0)
    cache.extend(new, [3, 4], now=1.0)
    cache.extend(held, [5], now=0.5)
    cache.unlock(old, now=0.0)
    cache.unlock(new, now=1.0)
    assert cache.total_tokens == 5 * PAGE
    assert cache.evictable_tokens == 4 * PAGE
    cache.match([1, 2], now=2.0)  # touching [1, 2] makes [3, 4] the least recently used
    assert cache.evict(PAGE) == PAGE
    assert [n.key for n in cache.match([3, 4], now=3.0)] == [3]  # the leaf went first, its parent stays
    assert cache.evict(10 * PAGE) == 3 * PAGE  # everything unlocked; page 5 is still in use
    assert cache.total_tokens == PAGE
    assert cache.protected_tokens == PAGE


# ---- the engine -------------------------------------------------------------------------------------


def test_a_repeated_prompt_skips_the_prefill_of_its_cached_pages_and_reports_them() -> None:
    e = Engine(REPLICA.limits, REPLICA)
    blocks = prompt("system", "a", 8000)
    first = e.submit("a", 8000, 4, 0.0, blocks=blocks)
    end = drain(e)
    cold_rate = e.stats(end).cache_hit_rate
    again = e.submit("b", 8000, 4, end, blocks=blocks)
    drain(e, end)
    cached = (8000 - 1) // PAGE * PAGE  # every whole page but the one holding the last token
    assert first.cached_tokens == 0
    assert again.cached_tokens == cached
    assert e.counters.prefill_tokens_computed == 8000 + (8000 - cached)
    assert e.counters.prefill_tokens_cached == cached
    # one chunk of 4096 tokens instead of two, and a shorter one: TTFT falls with the work
    assert first.ttft == pytest.approx(REPLICA.prefill_seconds(4096) + REPLICA.prefill_seconds(8000 - 4096))
    assert again.ttft == pytest.approx(REPLICA.prefill_seconds(8000 - cached))
    assert cold_rate == 0.0
    assert e.last_cache_hit_rate == pytest.approx(cached / 8000)


def test_without_the_cache_nothing_is_shared() -> None:
    e = Engine(REPLICA.limits, REPLICA, prefix_cache=False)
    blocks = prompt("system", "a", 8000)
    e.submit("a", 8000, 4, 0.0, blocks=blocks)
    end = drain(e)
    again = e.submit("b", 8000, 4, end, blocks=blocks)
    drain(e, end)
    assert again.cached_tokens == 0
    assert e.counters.prefill_tokens_computed == 16000


def test_requests_reading_the_same_prefix_hold_its_pages_once() -> None:
    e = Engine(REPLICA.limits, REPLICA)
    e.submit("warm", 6000, 1, 0.0, blocks=prompt("doc", "warm", 6000))
    end = drain(e)
    assert e.stats(end).full_used_tokens == 0  # finished: its pages are cached but evictable
    assert e.stats(end).full_evictable_tokens == 6000 // PAGE * PAGE  # its own last whole page too
    for i in range(4):
        e.submit(f"r{i}", 6000, 50, end, blocks=prompt("doc", f"r{i}", 6000))
    batch = e.next_batch(end)
    assert batch is not None
    e.complete(batch)
    stats = e.stats(batch.end)
    shared_pages = 5900 // PAGE * PAGE
    own = 4 * ((6000 + PAGE - 1) // PAGE * PAGE - shared_pages)
    assert stats.full_used_tokens == shared_pages + own  # not 4 × 6000
    assert stats.full_evictable_tokens == PAGE  # only the warm-up's own last page is unread


def test_kv_pressure_evicts_cold_prefixes_before_it_queues_or_retracts_anything() -> None:
    small = dataclasses.replace(REPLICA, max_total_num_tokens=20_000)
    e = Engine(small.limits, small)
    now = 0.0
    for doc in range(6):  # six 3,000-token documents, each asked once: 18,000 tokens cached
        e.submit(f"d{doc}", 3000, 1, now, blocks=prompt(f"doc{doc}", f"d{doc}", 3000))
        now = drain(e, now)
    assert e.stats(now).full_evictable_tokens > 15_000
    big = e.submit("big", 12_000, 10, now, blocks=prompt("other", "big", 12_000))
    drain(e, now)
    assert big.ttft is not None
    assert big.retractions == 0
    assert e.cache is not None
    assert e.cache.evicted_tokens > 0
    # the most recently used document survived; the oldest went
    assert e.cache.match(prompt("doc5", "x", 3000), now=0.0)
    assert not e.cache.match(prompt("doc0", "x", 3000), now=0.0)


def test_retractions_under_kv_pressure_release_every_cached_page_they_locked() -> None:
    tight = dataclasses.replace(REPLICA, max_total_num_tokens=6_400, swa_max_tokens=6_400, max_running_requests=8)
    e = Engine(tight.limits, tight)
    requests = [e.submit(f"r{i}", 200, 1800, 0.0, blocks=prompt("sys", f"r{i}", 200)) for i in range(4)]
    drain(e)
    assert all(r.output_tokens == 1800 for r in requests)
    assert sum(r.retractions for r in requests) > 0
    assert e.cache is not None
    assert e.cache.protected_tokens == 0
    assert e.stats(1e9).full_used_tokens == 0


def test_the_cache_hit_rate_and_cached_tokens_show_in_sglangs_metrics() -> None:
    from mimo_worker.simengine.metrics import EngineMetrics, GroupTotals

    replica = ReplicaEngine(REPLICA.limits, REPLICA)
    blocks = prompt("system", "a", 4000)
    replica.submit("a", 4000, 2, 0.0, blocks=blocks)
    end = drain(replica)
    replica.submit("b", 4000, 2, end, blocks=blocks)
    end = drain(replica, end)
    group = replica.groups[0]
    metrics = EngineMetrics("m", replica.group_limits)
    totals = GroupTotals(
        retracted=0,
        prefill=group.counters.prefill_tokens_computed,
        decode=group.counters.generation_tokens,
        cached=group.counters.prefill_tokens_cached,
    )
    metrics.update([(group.stats(end), totals)])
    text = metrics.render().decode()
    hit = (4000 - 1) // PAGE * PAGE
    labels = 'engine_type="unified",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"'
    assert f"sglang:cache_hit_rate{{{labels}}} {hit / 4000}" in text
    cache_labels = 'engine_type="unified",mode="prefill_cache",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"'
    assert f"sglang:realtime_tokens_total{{{cache_labels}}} {float(hit)}" in text
    assert "sglang:kv_evictable_tokens{" in text
