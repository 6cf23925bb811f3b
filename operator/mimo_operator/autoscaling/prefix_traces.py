"""Seeded request traces whose prompts share prefixes: the workloads prompt caching is for.

Each request is a list of *segments* — a stable id and a token count, in prompt order — so the prefix
structure is explicit: two prompts share a prefix exactly as far as their leading segments agree. Three
families, each from a seed:

* :func:`chat_sessions` — users in multi-turn conversations under a few tenants' system prompts; turn k
  re-sends the system prompt and every earlier turn and answer, then a new question.
* :func:`agent_loops` — agents working a task: a long shared system prompt with tool definitions, then a
  context that grows by one action and one tool result per step, re-sent at every step, back to back.
* :func:`rag_queries` — questions over a document set with Zipf popularity: system prompt, one or two
  retrieved documents, the question.

A request can be sent as token counts (``segments`` go to the simulated engine's ``mimo_prefix``) or
as text (:func:`segment_text` renders a segment as stable filler text of its length), which is what the
router's ``cache_aware`` policy needs: it matches prompts by their text.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from mimo_operator.autoscaling.trace import Request, Trace

__all__ = [
    "FAMILIES",
    "PrefixRequest",
    "PrefixTrace",
    "agent_loops",
    "chat_sessions",
    "rag_queries",
    "segment_text",
]

CHARS_PER_TOKEN = 4  # the simulated engine's token estimate
ASSISTANT = "~a"  # marks the id of a segment the model wrote (an answer, an agent's action)
_WORDS = [
    "gang",
    "replica",
    "prefill",
    "decode",
    "expert",
    "router",
    "cache",
    "window",
    "token",
    "layer",
    "shard",
    "node",
    "drain",
    "plan",
    "metric",
    "queue",
    "batch",
    "revision",
    "weights",
    "fabric",
]


@dataclass(frozen=True, slots=True)
class PrefixRequest:
    arrival: float  # seconds from the start
    segments: tuple[tuple[str, int], ...]  # (stable id, tokens) in prompt order; the last is this request's own
    generated_tokens: int
    session: str  # the conversation, agent or user it belongs to

    @property
    def prompt_tokens(self) -> int:
        return sum(tokens for _, tokens in self.segments)

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages: the first segment is the system prompt; answers and agent actions
        (ids ending in ``ASSISTANT``) are assistant turns, everything else (questions, documents, tool
        results) user turns."""
        out = [{"role": "system", "content": segment_text(*self.segments[0])}]
        for segment in self.segments[1:]:
            role = "assistant" if segment[0].endswith(ASSISTANT) else "user"
            out.append({"role": role, "content": segment_text(*segment)})
        return out


@dataclass(frozen=True)
class PrefixTrace:
    name: str
    requests: tuple[PrefixRequest, ...]  # sorted by arrival

    @property
    def span_seconds(self) -> float:
        return self.requests[-1].arrival if self.requests else 0.0

    def shareable_tokens(self) -> int:
        """Prompt tokens an unbounded cache that saw every earlier request could supply (the hit ceiling)."""
        seen: set[tuple[tuple[str, int], ...]] = set()
        shared = 0
        for request in self.requests:
            prefix: tuple[tuple[str, int], ...] = ()
            best = 0
            for segment in request.segments[:-1]:
                prefix = (*prefix, segment)
                if prefix in seen:
                    best = sum(t for _, t in prefix)
            for end in range(1, len(request.segments) + 1):
                seen.add(request.segments[:end])
            shared += best
        return shared

    def as_trace(self) -> Trace:
        """The same arrivals as a plain trace (the autoscaling simulator's input: token counts only)."""
        return Trace(
            self.name,
            tuple(Request(r.arrival, r.prompt_tokens, r.generated_tokens, r.segments) for r in self.requests),
            self.span_seconds,
        )


def segment_text(segment_id: str, tokens: int) -> str:
    """Stable filler text of ``tokens`` tokens (the simulated engine's 4 characters per token), the
    same for the same id, different for different ids from its first characters on."""
    head = f"[{segment_id}] "
    seed = int.from_bytes(hashlib.sha256(segment_id.encode()).digest()[:8], "big")
    rng = random.Random(seed)  # noqa: S311 (reproducible load, not secrets)
    words: list[str] = [head]
    length = len(head)
    target = tokens * CHARS_PER_TOKEN
    while length < target:
        word = rng.choice(_WORDS) + " "
        words.append(word)
        length += len(word)
    return "".join(words)[:target]


def _exp(rng: random.Random, mean: float) -> float:
    return rng.expovariate(1.0 / mean) if mean > 0 else 0.0


def _lognormal_int(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return int(min(max(rng.lognormvariate(math.log(median), sigma), low), high))


def chat_sessions(
    *,
    seed: int = 0,
    sessions: int = 40,
    tenants: int = 4,
    system_tokens: int = 2000,
    turns: tuple[int, int] = (2, 8),
    user_tokens: int = 150,
    answer_tokens: int = 250,
    think_seconds: float = 20.0,
    session_rate: float = 0.5,  # new sessions per second
) -> PrefixTrace:
    """Multi-turn chats: each session re-sends its tenant's system prompt and its whole history."""
    rng = random.Random(seed)  # noqa: S311 (reproducible load, not secrets)
    requests: list[PrefixRequest] = []
    start = 0.0
    for s in range(sessions):
        start += _exp(rng, 1.0 / session_rate)
        tenant = rng.randrange(tenants)
        history: list[tuple[str, int]] = [(f"chat-system-{tenant}", system_tokens)]
        at = start
        for turn in range(rng.randint(*turns)):
            question = (f"chat-{seed}-{s}-u{turn}", _lognormal_int(rng, user_tokens, 0.6, 8, 4000))
            answer = _lognormal_int(rng, answer_tokens, 0.5, 16, 2000)
            requests.append(PrefixRequest(at, (*history, question), answer, f"chat-{s}"))
            history += [question, (f"chat-{seed}-{s}-a{turn}{ASSISTANT}", answer)]
            at += _exp(rng, think_seconds)
    return PrefixTrace(f"chat-sessions-{seed}", tuple(sorted(requests, key=lambda r: r.arrival)))


def agent_loops(
    *,
    seed: int = 0,
    agents: int = 12,
    system_tokens: int = 6000,
    steps: tuple[int, int] = (6, 20),
    observation_tokens: int = 600,
    action_tokens: int = 120,
    step_seconds: float = 4.0,
    agent_rate: float = 0.2,
) -> PrefixTrace:
    """Agents re-sending a growing context: system prompt + tools, then one action and one tool result
    per step; the next step follows the last after the tool's run time."""
    rng = random.Random(seed)  # noqa: S311 (reproducible load, not secrets)
    requests: list[PrefixRequest] = []
    start = 0.0
    for a in range(agents):
        start += _exp(rng, 1.0 / agent_rate)
        context: list[tuple[str, int]] = [
            ("agent-system-tools", system_tokens),
            (f"agent-{seed}-{a}-task", 300),
        ]
        at = start
        for step in range(rng.randint(*steps)):
            action = _lognormal_int(rng, action_tokens, 0.5, 16, 1000)
            requests.append(PrefixRequest(at, tuple(context), action, f"agent-{a}"))
            observation = _lognormal_int(rng, observation_tokens, 0.8, 16, 8000)
            context += [
                (f"agent-{seed}-{a}-act{step}{ASSISTANT}", action),
                (f"agent-{seed}-{a}-obs{step}", observation),
            ]
            at += _exp(rng, step_seconds)
    return PrefixTrace(f"agent-loops-{seed}", tuple(sorted(requests, key=lambda r: r.arrival)))


def rag_queries(
    *,
    seed: int = 0,
    queries: int = 300,
    documents: int = 24,
    document_tokens: int = 6000,
    system_tokens: int = 800,
    question_tokens: int = 60,
    answer_tokens: int = 200,
    rate: float = 2.0,  # queries per second
    zipf: float = 1.1,
) -> PrefixTrace:
    """Questions over a document set: system prompt, one retrieved document (popular ones more often,
    Zipf), sometimes a second, then the question."""
    rng = random.Random(seed)  # noqa: S311 (reproducible load, not secrets)
    weights = [1.0 / (rank + 1) ** zipf for rank in range(documents)]
    sizes = [_lognormal_int(rng, document_tokens, 0.4, 500, 32000) for _ in range(documents)]
    requests: list[PrefixRequest] = []
    at = 0.0
    for q in range(queries):
        at += _exp(rng, 1.0 / rate)
        picked = rng.choices(range(documents), weights)[0]
        segments = [("rag-system", system_tokens), (f"rag-doc-{seed}-{picked}", sizes[picked])]
        if rng.random() < 0.25:
            second = rng.choices(range(documents), weights)[0]
            if second != picked:
                segments.append((f"rag-doc-{seed}-{second}", sizes[second]))
        segments.append((f"rag-{seed}-q{q}", _lognormal_int(rng, question_tokens, 0.5, 8, 600)))
        answer = _lognormal_int(rng, answer_tokens, 0.5, 16, 2000)
        requests.append(PrefixRequest(at, tuple(segments), answer, f"user-{q}"))
    return PrefixTrace(f"rag-{seed}", tuple(requests))


FAMILIES: dict[str, Callable[..., PrefixTrace]] = {
    "chat": chat_sessions,
    "agent": agent_loops,
    "rag": rag_queries,
}
