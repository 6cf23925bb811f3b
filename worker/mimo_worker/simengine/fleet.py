"""Several simulated replicas behind a router policy, in virtual time: what routing does to the prefix caches.

Each gang is a :class:`~mimo_worker.simengine.engine.ReplicaEngine`; a request goes to the gang the policy
picks, with the information sglang-router (0.3) has when it picks: the prompt and its own count of requests
in flight per worker.

* ``round_robin``: the next gang in turn.
* ``power_of_two``: two gangs at random, the one with fewer requests in flight.
* ``cache_aware``: if the load is imbalanced — the busiest gang has more than ``balance_abs`` requests more
  than the idlest and more than ``balance_rel`` times as many — the idlest gang; otherwise the gang whose
  tree of routed prompts matches the longest prefix of this one, if that covers more than
  ``cache_threshold`` of it, else the gang whose tree is smallest. The router's tree holds prompt text;
  here it holds the prompt's page keys (``prefix.py``), the same prefixes at 64-token granularity.

``bench/router_policies.py`` prints this prediction beside the real router's measurement.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from mimo_worker.simengine.engine import ReplicaBatch, ReplicaEngine, Request

__all__ = ["ROUTER_POLICIES", "FleetArrival", "FleetRun", "RouterEmulation", "RouterSettings", "run_fleet"]

ROUTER_POLICIES = ("cache_aware", "round_robin", "power_of_two")


@dataclass(frozen=True)
class RouterSettings:
    """sglang-router's cache_aware knobs (its defaults: ``--cache-threshold 0.3``,
    ``--balance-abs-threshold 64``, ``--balance-rel-threshold 1.5``)."""

    cache_threshold: float = 0.3
    balance_abs: int = 64
    balance_rel: float = 1.5


@dataclass(frozen=True)
class FleetArrival:
    at: float
    prompt_tokens: int
    max_new_tokens: int
    blocks: tuple[int, ...] = ()  # the prompt's page keys: the engines' cache and the router's tree read them
    encoder_seconds: float = 0.0


class RouterEmulation:
    """The router's choice of gang for each request (see the module docstring)."""

    def __init__(
        self,
        policy: str,
        gangs: int,
        settings: RouterSettings | None = None,
        *,
        seed: int = 0,
        page_size: int = 64,
    ) -> None:
        if policy not in ROUTER_POLICIES:
            raise ValueError(f"unknown router policy {policy!r}; known: {', '.join(ROUTER_POLICIES)}")
        if gangs < 1:
            raise ValueError("a fleet needs at least one gang")
        self.policy = policy
        self.gangs = gangs
        self.settings = settings or RouterSettings()
        self.page_size = page_size
        self._rng = random.Random(seed)  # noqa: S311 (reproducible choices, not secrets)
        self._next = 0
        self._seen: list[set[int]] = [set() for _ in range(gangs)]
        self._tree = [0] * gangs

    def choose(self, blocks: Sequence[int], prompt_tokens: int, load: Sequence[int]) -> int:
        if self.policy == "round_robin" or self.gangs == 1:
            choice = self._next % self.gangs
            self._next += 1
        elif self.policy == "power_of_two":
            a, b = self._rng.sample(range(self.gangs), 2)
            choice = a if load[a] <= load[b] else b
        else:
            choice = self._cache_aware(blocks, prompt_tokens, load)
        self._seen[choice].update(blocks)
        self._tree[choice] += prompt_tokens
        return choice

    def _cache_aware(self, blocks: Sequence[int], prompt_tokens: int, load: Sequence[int]) -> int:
        s = self.settings
        gangs = range(self.gangs)
        if max(load) - min(load) > s.balance_abs and max(load) > s.balance_rel * min(load):
            return min(gangs, key=lambda g: load[g])
        matched = [0] * self.gangs
        for g in gangs:
            seen = self._seen[g]
            while matched[g] < len(blocks) and blocks[matched[g]] in seen:
                matched[g] += 1
        best = max(gangs, key=lambda g: matched[g])
        if matched[best] * self.page_size / max(prompt_tokens, 1) > s.cache_threshold:
            return best
        return min(gangs, key=lambda g: self._tree[g])


@dataclass
class FleetRun:
    """Every request, by the gang that served it."""

    by_gang: list[list[Request]] = field(default_factory=list)

    @property
    def requests(self) -> list[Request]:
        return [r for gang in self.by_gang for r in gang]

    @property
    def hit_rate(self) -> float:
        requests = self.requests
        return sum(r.cached_tokens for r in requests) / max(sum(r.prompt_tokens for r in requests), 1)

    @property
    def spread(self) -> float:
        """Requests on the busiest gang over those on the idlest."""
        counts = [len(g) for g in self.by_gang]
        return max(counts) / max(min(counts), 1)


def run_fleet(engines: Sequence[ReplicaEngine], arrivals: Sequence[FleetArrival], router: RouterEmulation) -> FleetRun:
    """Replay ``arrivals`` (sorted by time) through ``router`` onto ``engines`` until all are done."""
    count = len(engines)
    clocks = [0.0] * count
    flying: list[ReplicaBatch | None] = [None] * count
    run = FleetRun([[] for _ in range(count)])

    def advance(g: int, until: float) -> None:
        engine = engines[g]
        while True:
            batch = flying[g]
            if batch is None:
                batch = flying[g] = engine.next_batch(clocks[g])
                if batch is None:
                    clocks[g] = max(clocks[g], until)
                    return
            if batch.end > until:
                return
            engine.complete(batch)
            clocks[g] = batch.end
            flying[g] = None

    for index, arrival in enumerate(arrivals):
        for g in range(count):
            advance(g, arrival.at)
        load = [sum(1 for r in gang if not r.done) for gang in run.by_gang]
        g = router.choose(arrival.blocks, arrival.prompt_tokens, load)
        if flying[g] is None:
            clocks[g] = arrival.at
        run.by_gang[g].append(
            engines[g].submit(
                f"f{index}",
                arrival.prompt_tokens,
                arrival.max_new_tokens,
                arrival.at,
                blocks=arrival.blocks,
                encoder_seconds=arrival.encoder_seconds,
            )
        )
    for g in range(count):
        advance(g, float("inf"))
    return run
