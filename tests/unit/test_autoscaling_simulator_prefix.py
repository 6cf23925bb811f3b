"""The autoscaling simulator's prefix caches: shared prompt prefixes skip their prefill, evict under KV
pressure, reach the policy as sglang:cached_tokens_total, and the scenario suite's caching families.

The replica has round numbers (a prefill of N new tokens takes 0.01 + N / 40,000 s, 64-token pages), so
the expected latencies can be worked out by hand.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

import mimo_worker.simengine.prefix as engine_prefix
from mimo_operator.autoscaling import prefix_cache
from mimo_operator.autoscaling.baselines import StaticPeak, demand_per_bin, prefix_hits
from mimo_operator.autoscaling.simulator import FleetConfig, Router, Tick, _Engine
from mimo_operator.autoscaling.trace import Request, Trace
from mimo_operator.autoscaling.workloads import chat_sessions, rag_documents
from tests.unit.test_autoscaling_simulator import RoundReplica
from tests.unit.test_autoscaling_simulator import fleet as round_fleet

PAGE = 64


# The simulator tests' round-numbered replica, with whole 64-token pages and a larger prefill chunk.
PAGED = replace(RoundReplica(), chunked_prefill_size=16_384, page_size=PAGE)


def fleet(replicas: int = 1, **overrides: object) -> FleetConfig:
    return round_fleet(**{"performance": PAGED, "initial_replicas": replicas, **overrides})


def asking(at: float, system: str, question: str, system_tokens: int = 100 * PAGE, own: int = PAGE) -> Request:
    """One request: a shared system prompt of whole pages, then a question of its own."""
    return Request(at, system_tokens + own, 1, ((system, system_tokens), (question, own)))


def run(config: FleetConfig, *requests: Request, ticks: list[Tick] | None = None) -> _Engine:
    trace = Trace("test", requests, max(r.arrival for r in requests) + 1.0)
    engine = _Engine(trace, config, StaticPeak(config.initial_replicas), ticks.append if ticks is not None else None)
    engine.run()
    return engine


def ttft(engine: _Engine, i: int) -> float:
    return engine.first_token[i] - engine.arrival[i]


def test_the_engine_and_the_autoscaling_simulator_share_one_cache_model() -> None:
    assert engine_prefix.RadixCache is prefix_cache.RadixCache
    assert engine_prefix.segment_blocks is prefix_cache.segment_blocks


def test_a_shared_system_prompt_is_prefilled_once_and_counted_as_cached_tokens() -> None:
    ticks: list[Tick] = []
    engine = run(fleet(), asking(1.0, "system", "q1"), asking(10.0, "system", "q2"), ticks=ticks)
    assert ttft(engine, 0) == pytest.approx(0.01 + 101 * PAGE / 40_000)
    assert ttft(engine, 1) == pytest.approx(0.01 + PAGE / 40_000)
    (scrape,) = ticks[-1].scrapes.values()
    assert scrape.sample.cached_tokens_total == 100 * PAGE
    assert engine.result(0.0).prefix_hit_rate == pytest.approx(100 / 202)


def test_without_the_cache_every_prompt_is_prefilled_whole_and_no_cached_counter_is_shown() -> None:
    ticks: list[Tick] = []
    engine = run(fleet(prefix_cache=False), asking(1.0, "system", "q1"), asking(10.0, "system", "q2"), ticks=ticks)
    assert ttft(engine, 1) == pytest.approx(0.01 + 101 * PAGE / 40_000)
    (scrape,) = ticks[-1].scrapes.values()
    assert scrape.sample.cached_tokens_total is None
    assert engine.result(0.0).prefix_hit_rate == 0.0


def test_a_policy_blind_to_caching_is_not_shown_the_counter_while_the_cache_still_serves() -> None:
    ticks: list[Tick] = []
    config = fleet(report_cached_tokens=False)
    engine = run(config, asking(1.0, "system", "q1"), asking(10.0, "system", "q2"), ticks=ticks)
    assert ttft(engine, 1) == pytest.approx(0.01 + PAGE / 40_000)
    (scrape,) = ticks[-1].scrapes.values()
    assert scrape.sample.cached_tokens_total is None


def test_an_unused_cached_prefix_is_evicted_when_admission_needs_the_room_and_no_more() -> None:
    # A pool of 150 pages holds the first prompt's 101 cached pages; the second prompt needs 101 pages and
    # a token: 53 of the first prompt's pages go (its last ones: a leaf goes first), 48 stay for the third.
    config = fleet(performance=replace(PAGED, max_total_num_tokens=150 * PAGE))
    engine = run(config, asking(1.0, "a", "q1"), asking(10.0, "b", "q2"), asking(20.0, "a", "q3"))
    assert not any(engine.failed)
    assert engine.cached == [0, 0, 48 * PAGE]
    assert ttft(engine, 2) == pytest.approx(0.01 + (101 - 48) * PAGE / 40_000)


def test_cache_aware_routing_keeps_a_conversation_on_the_gang_that_holds_it() -> None:
    # Three conversations on two gangs, each turn re-sending the one before: round robin moves each
    # conversation to the other gang at every turn.
    requests = []
    for turn in range(6):
        for offset, session in enumerate("xyz"):
            history = tuple((f"{session}-{k}", 20 * PAGE) for k in range(turn + 1))
            requests.append(Request(turn * 10.0 + offset, (turn + 1) * 20 * PAGE, 1, history))
    cached = run(fleet(2, router=Router.CACHE_AWARE), *requests).result(0.0).prefix_hit_rate
    spread = run(fleet(2, router=Router.ROUND_ROBIN), *requests).result(0.0).prefix_hit_rate
    assert cached == pytest.approx(sum(range(6)) / sum(range(1, 7)))  # every turn after the first hits whole
    assert spread < 0.5


def test_the_oracle_prices_a_prompt_without_what_an_unbounded_cache_would_supply() -> None:
    trace = Trace("t", (asking(0.0, "s", "q1"), asking(1.0, "s", "q2")), 2.0)
    assert prefix_hits(trace, PAGE) == [0, 100 * PAGE]
    assert demand_per_bin(trace, lambda context, _: float(context), 2.0, page_size=PAGE) == [(202 - 100) * PAGE / 2]
    assert demand_per_bin(trace, lambda context, _: float(context), 2.0) == [202 * PAGE / 2]


def test_chat_sessions_re_send_each_conversation_so_far_and_are_reproducible() -> None:
    workload = chat_sessions(hours=0.25)
    trace = workload.trace(2.0, seed=3)
    assert trace == workload.trace(2.0, seed=3)
    assert all(r.context_tokens == sum(t for _, t in r.segments) for r in trace.requests)
    sent = {r.segments for r in trace.requests}
    continued = [r for r in trace.requests if len(r.segments) > 2 and r.segments[:-2] in sent]
    assert len(continued) > len(trace.requests) / 2
    assert sum(prefix_hits(trace, PAGE)) > 0.6 * trace.prompt_tokens


def test_rag_queries_share_the_system_prompt_and_popular_documents() -> None:
    trace = rag_documents(hold_seconds=300).trace(1.0, seed=3)
    assert {r.segments[0][0] for r in trace.requests} == {"rag-system"}
    assert sum(prefix_hits(trace, PAGE)) > 0.7 * trace.prompt_tokens


def test_the_scenario_suite_runs_its_caching_families_behind_cache_aware_with_the_caches_chosen() -> None:
    from tests.unit.test_autoscaling_workloads import load_bench

    bench = load_bench()
    caching = [s for s in bench.SCENARIOS if s.key in bench.CACHING]
    assert [s.key for s in caching] == ["chat-sessions", "rag-documents"]
    trace = chat_sessions(hours=0.1).trace(1.0, seed=1)
    on, off, blind = (bench._comparison(trace, caching[0], cache) for cache in ("on", "off", "blind"))
    assert on.fleet.router == Router.CACHE_AWARE
    assert (on.fleet.prefix_cache, on.fleet.report_cached_tokens) == (True, True)
    assert off.fleet.prefix_cache is False
    assert (blind.fleet.prefix_cache, blind.fleet.report_cached_tokens) == (True, False)
    # The oracle counts the hits where the fleet caches (and the blind policy's fleet still caches).
    assert on._cache_page_size() == blind._cache_page_size() == on.fleet.performance.page_size
    assert off._cache_page_size() == 0
