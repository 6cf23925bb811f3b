"""Simulated gangs behind an emulation of the router's policies (fleet.py), in virtual time."""

from __future__ import annotations

import dataclasses

import pytest

from mimo_worker.simengine.engine import ReplicaEngine
from mimo_worker.simengine.fleet import FleetArrival, FleetRun, RouterEmulation, RouterSettings, run_fleet
from mimo_worker.simengine.prefix import segment_blocks
from tests.unit.simengine_support import SmallReplica

# Each gang's cache holds about four of the eleven documents: together the fleet holds them all.
REPLICA = dataclasses.replace(SmallReplica(), max_total_num_tokens=26_000, swa_max_tokens=20_000)
PAGE = REPLICA.page_size


def rag(queries: int = 240) -> list[FleetArrival]:
    """Questions over eleven 6,000-token documents, each asked about in turn, 20 per second."""
    arrivals = []
    for q in range(queries):
        doc = (q * 5) % 11
        segments = [("system", 500), (f"doc-{doc}", 6000)]
        blocks = segment_blocks(segments, 6560, PAGE, f"q{q}")
        arrivals.append(FleetArrival(q * 0.05, 6560, 8, blocks))
    return arrivals


def agents(steps: int = 120) -> list[FleetArrival]:
    """Four agents sharing one 6,000-token tool prompt, each re-sending its growing context."""
    arrivals = []
    for step in range(steps):
        agent, turn = step % 4, step // 4
        segments = [("tools", 6000)] + [(f"agent-{agent}-{t}", 200) for t in range(turn + 1)]
        tokens = sum(t for _, t in segments)
        arrivals.append(FleetArrival(step * 0.02, tokens, 8, segment_blocks(segments, tokens, PAGE, f"s{step}")))
    return arrivals


def run(policy: str, arrivals: list[FleetArrival], settings: RouterSettings | None = None) -> FleetRun:
    engines = [ReplicaEngine(REPLICA.limits, REPLICA) for _ in range(3)]
    return run_fleet(engines, arrivals, RouterEmulation(policy, 3, settings, page_size=PAGE))


def test_cache_aware_routing_keeps_each_document_on_one_gang_and_raises_the_hit_rate() -> None:
    aware, blind = run("cache_aware", rag()), run("round_robin", rag())
    assert all(r.output_tokens == 8 for r in aware.requests + blind.requests)
    assert aware.hit_rate > blind.hit_rate + 0.3
    ttft = {name: sum(r.ttft or 0 for r in x.requests) / len(x.requests) for name, x in (("a", aware), ("b", blind))}
    assert ttft["a"] < ttft["b"]


def test_one_long_prompt_shared_by_everything_piles_every_request_on_one_gang_until_the_balance_rule_trips() -> None:
    piled = run("cache_aware", agents())
    assert piled.spread > 20
    balanced = run("cache_aware", agents(), RouterSettings(balance_abs=2))
    assert balanced.spread < 3


@pytest.mark.parametrize("policy", ["round_robin", "power_of_two"])
def test_the_load_blind_policies_spread_requests_evenly(policy: str) -> None:
    assert run(policy, rag()).spread < 1.5


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="random"):
        RouterEmulation("random", 2)
