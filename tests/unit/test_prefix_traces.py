"""Seeded traces with shared prefixes (autoscaling/prefix_traces.py)."""

from __future__ import annotations

import itertools

import pytest

from mimo_operator.autoscaling.prefix_traces import (
    ASSISTANT,
    FAMILIES,
    agent_loops,
    chat_sessions,
    rag_queries,
    segment_text,
)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_is_reproducible_from_its_seed_and_mostly_shareable(family: str) -> None:
    make = FAMILIES[family]
    a, b, other = make(seed=3), make(seed=3), make(seed=4)
    assert a == b
    assert a != other
    arrivals = [r.arrival for r in a.requests]
    assert arrivals == sorted(arrivals)
    prompt = sum(r.prompt_tokens for r in a.requests)
    assert 0.5 < a.shareable_tokens() / prompt < 1.0
    assert a.as_trace().prompt_tokens == prompt


def test_a_chat_turn_resends_the_whole_conversation_so_far() -> None:
    trace = chat_sessions(seed=1, sessions=1, turns=(3, 3))
    first, second, third = trace.requests
    assert second.segments[: len(first.segments)] == first.segments
    assert third.segments[: len(second.segments)] == second.segments
    assert second.segments[len(first.segments)][0].endswith(ASSISTANT)  # the first answer comes back
    roles = [m["role"] for m in third.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]


def test_an_agents_context_only_grows_and_rag_queries_share_documents() -> None:
    steps = [r for r in agent_loops(seed=2, agents=1).requests]
    for before, after in itertools.pairwise(steps):
        assert after.segments[: len(before.segments)] == before.segments
        assert after.prompt_tokens > before.prompt_tokens
    documents = [r.segments[1][0] for r in rag_queries(seed=2, queries=200).requests]
    assert len(set(documents)) < len(documents) / 4  # popular documents come back


def test_segment_text_is_stable_has_its_length_and_differs_from_the_first_characters() -> None:
    assert segment_text("doc-1", 500) == segment_text("doc-1", 500)
    assert len(segment_text("doc-1", 500)) == 2000
    assert segment_text("doc-1", 500)[:8] != segment_text("doc-2", 500)[:8]
