"""Synthetic request traces for autoscaling: parameterised families of load, seeded and reproducible.

Each family is a `Workload`: one or more *streams* (tenants), each with a rate shape (the share of its
peak rate at time t, 0..1) and a request-size distribution. `Workload.trace(peak_rate, seed)` draws
Poisson arrivals by thinning at `peak_rate` requests per second (split over the streams by their
share) and returns a `Trace` in the shared trace's format, so the simulator, `mimoctl simulate
autoscaling` and the benches treat it like a recorded one. The same seed gives the same trace on
every machine (Python's `random.Random` is specified to be reproducible across platforms).

The families are the shapes an autoscaler of multi-minute-start-up gangs must survive: a flash crowd
(a step of several times the load, with a ramp), a diurnal swell, on/off bursts (shorter or longer
than a gang's start-up), bursts of long-context prompts, heavy-tailed output lengths, a slow ramp, and
several tenants with different shapes at once; and the workloads prompt caching is for, whose requests
carry their shared prefixes as `segments` (chat sessions re-sending their history under a few system
prompts, questions over a document set). `Workload.mean_work` prices a request with the
replica's capacity, so a bench can size the peak rate for a given number of gangs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mimo_operator.autoscaling.trace import Request, Trace

__all__ = [
    "CHAT",
    "CODE",
    "RAG",
    "ChatSessions",
    "DocumentQueries",
    "LogNormal",
    "Pareto",
    "Prompts",
    "Sizes",
    "Stream",
    "Workload",
    "chat_sessions",
    "diurnal",
    "flash_crowd",
    "heavy_tailed_outputs",
    "long_context_bursts",
    "multi_tenant",
    "on_off",
    "rag_documents",
    "slow_ramp",
]


@dataclass(frozen=True)
class LogNormal:
    """Token counts with this median and log-space spread, clipped to [low, high]."""

    median: float
    sigma: float
    low: int = 1
    high: int = 1_000_000

    def draw(self, rng: random.Random) -> int:
        value = self.median * math.exp(rng.gauss(0.0, self.sigma)) if self.sigma > 0 else self.median
        return int(min(self.high, max(self.low, round(value))))

    def mean(self) -> float:
        # Clipping makes this an estimate; it only sizes the peak rate.
        return min(float(self.high), self.median * math.exp(self.sigma**2 / 2))


@dataclass(frozen=True)
class Pareto:
    """Heavy-tailed token counts: P(X > x) = (scale / x) ** alpha for x ≥ scale, clipped at `high`."""

    scale: float
    alpha: float
    high: int

    def draw(self, rng: random.Random) -> int:
        return int(min(self.high, round(self.scale * rng.paretovariate(self.alpha))))

    def mean(self) -> float:
        # The mean of the Pareto clipped at `high` (finite for any alpha).
        a, s, h = self.alpha, self.scale, float(self.high)
        log_case = abs(a - 1.0) < 1e-9
        below = s * math.log(h / s) if log_case else a * s / (a - 1.0) * (1.0 - (s / h) ** (a - 1.0))
        return float(below + h * (s / h) ** a)


@dataclass(frozen=True)
class Sizes:
    context: LogNormal | Pareto
    generated: LogNormal | Pareto

    def draw(self, rng: random.Random) -> tuple[int, int]:
        return self.context.draw(rng), max(1, self.generated.draw(rng))


# The shared Azure code trace's sizes, roughly: prompts around 1.5k tokens, answers of a few dozen.
CODE = Sizes(LogNormal(1500, 0.8, 16, 16_000), LogNormal(14, 1.3, 1, 2_000))
CHAT = Sizes(LogNormal(1000, 0.9, 16, 16_000), LogNormal(250, 0.8, 1, 4_000))
# Retrieval-augmented or agent requests: a few thousand prompt tokens and a paragraph of answer.
RAG = Sizes(LogNormal(4000, 0.6, 64, 32_000), LogNormal(200, 0.7, 1, 4_000))


Segments = tuple[tuple[str, int], ...]


class Prompts(Protocol):
    """Draws one request's prompt as segments (stable id, tokens) and its output length. It may keep state
    (a conversation's history): `Stream.prompts` makes a fresh one for each trace."""

    def draw(self, rng: random.Random) -> tuple[Segments, int]: ...


@dataclass
class ChatSessions:
    """Multi-turn conversations: each arrival is the next turn of one of `open_sessions` users (a new user
    once a session ends, after `mean_turns` on average or at `max_context` tokens); a turn re-sends its
    tenant's system prompt, every earlier question and answer, and a new question."""

    tenants: int = 4
    system: LogNormal = LogNormal(2500, 0.4, 200, 12_000)
    question: LogNormal = LogNormal(150, 0.8, 8, 4_000)
    answer: LogNormal = LogNormal(300, 0.6, 16, 2_000)
    mean_turns: float = 8.0
    open_sessions: int = 256
    max_context: int = 32_000
    _sessions: list[list[tuple[str, int]]] = field(default_factory=list, repr=False)
    _names: list[str] = field(default_factory=list, repr=False)
    _made: int = 0

    def draw(self, rng: random.Random) -> tuple[Segments, int]:
        slot = rng.randrange(self.open_sessions)
        while len(self._sessions) <= slot:
            self._sessions.append([])
            self._names.append("")
        history = self._sessions[slot]
        if not history or rng.random() < 1.0 / self.mean_turns or sum(t for _, t in history) > self.max_context:
            tenant = rng.randrange(self.tenants)
            system = self.system.draw(random.Random(f"chat-system-{tenant}"))  # noqa: S311 (a tenant's own size)
            history[:] = [(f"chat-system-{tenant}", system)]
            self._made += 1
            self._names[slot] = f"chat-{self._made}"
        turn = f"{self._names[slot]}-t{len(history) // 2}"
        question = (f"{turn}-u", self.question.draw(rng))
        answer = self.answer.draw(rng)
        segments = (*history, question)
        history += [question, (f"{turn}-a", answer)]
        return segments, answer


@dataclass
class DocumentQueries:
    """Questions over a document set (retrieval-augmented generation): one system prompt, one retrieved
    document (popular ones more often, Zipf), sometimes a second, then the question."""

    documents: int = 48
    document: LogNormal = LogNormal(6000, 0.5, 500, 32_000)
    zipf: float = 1.1
    system_tokens: int = 800
    question: LogNormal = LogNormal(60, 0.5, 8, 600)
    answer: LogNormal = LogNormal(200, 0.6, 16, 2_000)
    second_document: float = 0.25
    _sizes: list[int] = field(default_factory=list, repr=False)
    _asked: int = 0

    def draw(self, rng: random.Random) -> tuple[Segments, int]:
        if not self._sizes:  # the document set is part of the family, not of the draw
            sizes_rng = random.Random(f"rag-documents-{self.documents}")  # noqa: S311
            self._sizes = [self.document.draw(sizes_rng) for _ in range(self.documents)]
        weights = [1.0 / (rank + 1) ** self.zipf for rank in range(self.documents)]
        picked = rng.choices(range(self.documents), weights)[0]
        segments: list[tuple[str, int]] = [
            ("rag-system", self.system_tokens),
            (f"rag-doc-{picked}", self._sizes[picked]),
        ]
        if rng.random() < self.second_document:
            second = rng.choices(range(self.documents), weights)[0]
            if second != picked:
                segments.append((f"rag-doc-{second}", self._sizes[second]))
        self._asked += 1
        segments.append((f"rag-q{self._asked}", self.question.draw(rng)))
        return tuple(segments), self.answer.draw(rng)


@dataclass(frozen=True)
class Stream:
    """One tenant: a rate shape (share of its peak rate at t seconds, 0..1), sizes, a share of the peak;
    or, for prompts that share prefixes, `prompts` (a maker of a fresh `Prompts`) in place of `sizes`."""

    name: str
    shape: Callable[[float], float]
    sizes: Sizes
    share: float = 1.0
    prompts: Callable[[], Prompts] | None = None

    def drawer(self) -> Callable[[random.Random], tuple[int, int, Segments]]:
        """(context, generated, segments) per draw, from `prompts` if set, else from `sizes`."""
        if self.prompts is None:
            sizes = self.sizes

            def plain(rng: random.Random) -> tuple[int, int, Segments]:
                return (*sizes.draw(rng), ())

            return plain
        source = self.prompts()

        def shared(rng: random.Random) -> tuple[int, int, Segments]:
            segments, generated = source.draw(rng)
            return sum(t for _, t in segments), max(1, generated), segments

        return shared


@dataclass(frozen=True)
class Workload:
    name: str
    span_seconds: float
    streams: tuple[Stream, ...]

    def mean_work(self, work: Callable[[int, int], float], samples: int = 4000, seed: int = 0) -> float:
        """Replica-seconds of work per second at a peak rate of one request per second (all streams at peak).

        `work(context, generated)` prices one request (the simulator's `request_work_seconds`).
        """
        rng = random.Random(seed)  # noqa: S311 (reproducible load, not secrets)
        total = 0.0
        for stream in self.streams:
            draw = stream.drawer()
            drawn = [work(*draw(rng)[:2]) for _ in range(samples)]
            total += stream.share * sum(drawn) / samples
        return total

    def trace(self, peak_rate: float, seed: int) -> Trace:
        """Poisson arrivals at up to `peak_rate` requests/s in all (split by share), thinned by the shapes."""
        if peak_rate <= 0 or not math.isfinite(peak_rate):
            raise ValueError(f"peak rate must be a positive number, got {peak_rate}")
        requests: list[Request] = []
        for index, stream in enumerate(self.streams):
            # One generator per stream, seeded from the workload's seed and the stream's place: adding a
            # tenant does not change the arrivals of the others.
            rng = random.Random(f"{seed}:{index}:{stream.name}")  # noqa: S311
            rate = peak_rate * stream.share
            draw = stream.drawer()
            t = 0.0
            while True:
                t += rng.expovariate(rate)
                if t >= self.span_seconds:
                    break
                if rng.random() < stream.shape(t):
                    context, generated, segments = draw(rng)
                    requests.append(Request(t, context, generated, segments))
        requests.sort(key=lambda r: r.arrival)
        return Trace(f"{self.name} (seed {seed})", tuple(requests), self.span_seconds)


def _ramp(t: float, start: float, seconds: float) -> float:
    """0 before start, 1 after start + seconds, linear between."""
    if seconds <= 0:
        return 1.0 if t >= start else 0.0
    return min(1.0, max(0.0, (t - start) / seconds))


def flash_crowd(
    *,
    height: float = 6.0,
    ramp_seconds: float = 120.0,
    hold_seconds: float = 900.0,
    lead_seconds: float = 1200.0,
    tail_seconds: float = 1200.0,
    sizes: Sizes = CODE,
) -> Workload:
    """A base load, then `height` times it within `ramp_seconds`, held, and back down as fast."""
    if height < 1:
        raise ValueError(f"a flash crowd's height must be at least 1, got {height}")
    base = 1.0 / height
    top_end = lead_seconds + ramp_seconds + hold_seconds

    def shape(t: float) -> float:
        up = _ramp(t, lead_seconds, ramp_seconds)
        down = _ramp(t, top_end, ramp_seconds)
        return base + (1.0 - base) * (up - down)

    span = top_end + ramp_seconds + tail_seconds
    name = f"flash crowd {height:g}× in {ramp_seconds:g}s for {hold_seconds / 60:g} min"
    return Workload(name, span, (Stream("crowd", shape, sizes),))


def diurnal(*, hours: float = 3.0, floor: float = 0.15, sizes: Sizes = CHAT) -> Workload:
    """A day compressed into `hours`: night at `floor` of the peak, a swell to the peak and back."""
    span = hours * 3600

    def shape(t: float) -> float:
        return floor + (1.0 - floor) * math.sin(math.pi * t / span) ** 2

    return Workload(f"diurnal swell over {hours:g} h", span, (Stream("day", shape, sizes),))


def on_off(
    *,
    on_seconds: float = 300.0,
    off_seconds: float = 600.0,
    cycles: int = 8,
    base: float = 0.1,
    lead_seconds: float = 900.0,
    sizes: Sizes | None = None,
) -> Workload:
    """Bursts at the peak for `on_seconds`, every `on_seconds + off_seconds`, on `base` of the peak.

    By default prompts of about 20k tokens (a retrieval or agent job that fires on a schedule).
    """
    sizes = sizes or Sizes(LogNormal(20_000, 0.25, 2_000, 60_000), LogNormal(200, 0.6, 1, 2_000))
    period = on_seconds + off_seconds

    def shape(t: float) -> float:
        if t < lead_seconds:
            return base
        phase = (t - lead_seconds) % period
        return 1.0 if phase < on_seconds else base

    span = lead_seconds + cycles * period
    name = f"on/off {on_seconds / 60:g} min on, {off_seconds / 60:g} off"
    return Workload(name, span, (Stream("bursts", shape, sizes),))


def long_context_bursts(
    *, hours: float = 1.5, bursts: int = 4, burst_seconds: float = 600.0, seed: int = 7, share: float = 0.6
) -> Workload:
    """Short chat requests all along, and bursts of 50k–200k-token prompts at irregular times.

    The burst times are drawn from `seed` (a different seed from the trace's: the shape is part of the
    family's parameters). The KV pool, not compute, is what such bursts fill first.
    """
    span = hours * 3600
    rng = random.Random(seed)  # noqa: S311 (reproducible load, not secrets)
    slot = span / bursts
    starts = sorted(k * slot + rng.uniform(0.1 * slot, max(0.1 * slot, slot - burst_seconds)) for k in range(bursts))

    def burst(t: float) -> float:
        return 1.0 if any(s <= t < s + burst_seconds for s in starts) else 0.0

    long_sizes = Sizes(LogNormal(100_000, 0.4, 50_000, 200_000), LogNormal(400, 0.6, 1, 4_000))
    streams = (
        Stream("chat", lambda t: 1.0, CHAT, 1.0 - share),
        Stream("long-context", burst, long_sizes, share),
    )
    return Workload(f"long-context bursts ({bursts} × {burst_seconds / 60:g} min)", span, streams)


def heavy_tailed_outputs(*, hours: float = 1.5, alpha: float = 1.3, floor: float = 0.5) -> Workload:
    """Answers with a Pareto length (a few run to thousands of tokens) on a gentle swell: decode-bound."""
    span = hours * 3600
    sizes = Sizes(LogNormal(4000, 0.7, 16, 32_000), Pareto(60.0, alpha, 8_000))

    def shape(t: float) -> float:
        return floor + (1.0 - floor) * math.sin(math.pi * t / span) ** 2

    return Workload(f"heavy-tailed outputs (Pareto α {alpha:g})", span, (Stream("answers", shape, sizes),))


def slow_ramp(
    *, start: float = 0.12, ramp_seconds: float = 3600.0, hold_seconds: float = 900.0, sizes: Sizes = CODE
) -> Workload:
    """From `start` of the peak up to the peak over `ramp_seconds`, held, then down as slowly as half."""
    lead = 600.0

    def shape(t: float) -> float:
        up = _ramp(t, lead, ramp_seconds)
        down = _ramp(t, lead + ramp_seconds + hold_seconds, ramp_seconds / 2)
        return start + (1.0 - start) * (up - down)

    span = lead + ramp_seconds + hold_seconds + ramp_seconds / 2 + 300.0
    return Workload(f"slow ramp over {ramp_seconds / 60:g} min", span, (Stream("ramp", shape, sizes),))


def multi_tenant(*, hours: float = 2.0, batch_period: float = 1500.0, batch_on: float = 600.0) -> Workload:
    """Three tenants at once: interactive chat on a swell, code completion with noise, a scheduled batch job."""
    span = hours * 3600

    def chat(t: float) -> float:
        return 0.3 + 0.7 * math.sin(math.pi * t / span) ** 2

    def code(t: float) -> float:
        # Minute-scale wobble: two incommensurate sines.
        return 0.6 + 0.25 * math.sin(t / 97.0) + 0.15 * math.sin(t / 31.0)

    def batch(t: float) -> float:
        return 1.0 if (t % batch_period) >= batch_period - batch_on else 0.0

    batch_sizes = Sizes(LogNormal(6000, 0.5, 500, 60_000), LogNormal(600, 0.5, 16, 4_000))
    streams: Sequence[Stream] = (
        Stream("assistant", chat, RAG, 0.55),
        Stream("code", code, CODE, 0.35),
        Stream("batch", batch, batch_sizes, 0.10),
    )
    return Workload(f"multi-tenant mix over {hours:g} h", span, tuple(streams))


def chat_sessions(*, hours: float = 2.0, floor: float = 0.2, sessions: ChatSessions | None = None) -> Workload:
    """Chat sessions on a swell (a working day compressed into `hours`): every turn re-sends its
    conversation so far, so most of a prompt is a prefix the serving gang may hold."""
    span = hours * 3600
    made = sessions or ChatSessions()

    def shape(t: float) -> float:
        return floor + (1.0 - floor) * math.sin(math.pi * t / span) ** 2

    def fresh() -> Prompts:
        return ChatSessions(
            made.tenants, made.system, made.question, made.answer, made.mean_turns, made.open_sessions, made.max_context
        )

    stream = Stream("chat-sessions", shape, CHAT, prompts=fresh)
    return Workload(f"chat sessions over {hours:g} h", span, (stream,))


def rag_documents(
    *, height: float = 4.0, ramp_seconds: float = 300.0, hold_seconds: float = 1200.0, documents: int = 48
) -> Workload:
    """Questions over a document set, stepping up `height` times (a team starts on a corpus): the shared
    system prompt and popular documents are prefixes; a long document's prefill is what caching saves."""
    base = flash_crowd(
        height=height,
        ramp_seconds=ramp_seconds,
        hold_seconds=hold_seconds,
        lead_seconds=600.0,
        tail_seconds=600.0,
        sizes=RAG,
    )
    (crowd,) = base.streams

    def fresh() -> Prompts:
        return DocumentQueries(documents=documents)

    stream = Stream("rag", crowd.shape, RAG, prompts=fresh)
    return Workload(f"RAG over {documents} documents, {height:g}× in {ramp_seconds:g}s", base.span_seconds, (stream,))
