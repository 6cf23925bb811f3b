"""The autoscaling policy: whole decision sequences for scripted loads, and the single rules.

The sequences run the pure policy against a *fluid fleet*: every ready gang serves exactly 10 requests
per second (each request is 1,000 prompt tokens, a replica prefills 10,000 tokens per second, so a
request is 0.1 replica-seconds of work); what a gang cannot serve waits in its queue; the router splits
arrivals evenly over ready gangs; gangs are ready a fixed start-up after they are ordered and a drained
gang leaves at once. So demand is easy to work out by hand: R requests per second need R × 0.1
replicas flat out, R × 0.1 / 0.7 at the default target (7 requests per second per gang).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest

from mimo_operator.autoscaling import (
    Action,
    Decision,
    Gang,
    GangPhase,
    MetricSample,
    Observation,
    PolicyConfig,
    ReplicaCapacity,
    Signals,
    decide,
)
from mimo_operator.autoscaling.policy import DEMAND_HISTORY_SECONDS, recurrence, remember

WORK = 0.1  # replica-seconds per request
CAPACITY = ReplicaCapacity(
    prefill_tokens_per_second=10_000.0,
    decode_tokens_per_second=1_000.0,
    max_running_requests=1_000,
    typical_request_seconds=WORK,
)
TICK = 15.0


def config(**overrides: object) -> PolicyConfig:
    # The stable target is pinned at 0.7 (7 req/s per gang) so the sequences below work out by hand.
    values: dict[str, object] = {"capacity": CAPACITY, "min_replicas": 1, "max_replicas": 8, "target_utilisation": 0.7}
    values.update(overrides)
    return PolicyConfig(**values)  # type: ignore[arg-type]


@dataclass
class FluidGang:
    name: str
    phase: GangPhase
    since: float
    ready_at: float
    queue: float = 0.0
    served: float = 0.0


@dataclass
class FluidFleet:
    """Gangs serving 1 / WORK requests per second each; see the module docstring."""

    startup: float
    gangs: list[FluidGang] = field(default_factory=list)
    history: dict[str, list[MetricSample]] = field(default_factory=dict)
    last_up: float | None = None
    last_down: float | None = None
    demand_history: tuple[tuple[float, float], ...] = ()
    clock: float = 0.0
    made: int = 0

    @classmethod
    def of(cls, ready: int, startup: float) -> FluidFleet:
        fleet = cls(startup)
        for _ in range(ready):
            fleet.gangs.append(FluidGang(fleet._name(), GangPhase.READY, 0.0, 0.0))
        return fleet

    def _name(self) -> str:
        self.made += 1
        return f"gang-{self.made}"

    def advance(self, now: float, rate: Callable[[float], float]) -> None:
        """Serve the load from the last tick to `now` in one-second steps, then scrape."""
        while self.clock < now:
            for gang in self.gangs:
                if gang.phase is GangPhase.STARTING and gang.ready_at <= self.clock:
                    gang.phase, gang.since = GangPhase.READY, gang.ready_at
            ready = [g for g in self.gangs if g.phase is GangPhase.READY]
            for gang in ready:
                arrived = rate(self.clock) / len(ready)
                served = min(gang.queue + arrived, 1.0 / WORK)
                gang.queue += arrived - served
                gang.served += served
            self.clock += 1.0
        for gang in self.gangs:
            if gang.phase is GangPhase.READY:
                self.history.setdefault(gang.name, []).append(
                    MetricSample(
                        at=now,
                        token_usage=0.01,
                        queue_requests=gang.queue,
                        running_requests=0.0,
                        ttft_p95_seconds=WORK + gang.queue * WORK,
                        prompt_tokens_total=gang.served * 1_000,
                        generation_tokens_total=0.0,
                        requests_total=gang.served,
                    )
                )
        for name in self.history:
            self.history[name] = [s for s in self.history[name] if s.at > now - 700]

    def observation(self, now: float, pending: int | None = 0) -> Observation:
        return Observation(
            now=now,
            gangs=tuple(Gang(g.name, g.phase, g.since) for g in self.gangs),
            samples={name: tuple(samples) for name, samples in self.history.items() if samples},
            last_scale_up_at=self.last_up,
            last_scale_down_at=self.last_down,
            pending_requests=pending,
            demand_history=self.demand_history,
        )

    def apply(self, decision: Decision, now: float) -> None:
        current = [g for g in self.gangs if g.phase is not GangPhase.DRAINING]
        if decision.desired_replicas > len(current):
            self.last_up = now
            for _ in range(decision.desired_replicas - len(current)):
                self.gangs.append(FluidGang(self._name(), GangPhase.STARTING, now, now + self.startup))
        elif decision.desired_replicas < len(current):
            self.last_down = now
            assert decision.remove is not None, "a scale-down names the gang to remove"
            # The policy's choice first, then starting gangs, then the newest (the operator's order).
            order = sorted(
                current,
                key=lambda g: (g.name != decision.remove, g.phase is not GangPhase.STARTING, -g.since, g.name),
            )
            gone = {g.name for g in order[: len(current) - decision.desired_replicas]}
            self.gangs = [g for g in self.gangs if g.name not in gone]


def run(
    rate: Callable[[float], float],
    *,
    ready: int,
    minutes: float,
    startup: float,
    cfg: PolicyConfig,
    demand_history: bool = True,
) -> list[tuple[float, str, int]]:
    """The policy against the fluid fleet: every decision that was not a hold, as (time, action, desired).

    `demand_history=False` runs it as a loop that never keeps the policy's demand figures would.
    """
    fleet = FluidFleet.of(ready, startup)
    changes: list[tuple[float, str, int]] = []
    for k in range(int(minutes * 60 / TICK) + 1):
        now = k * TICK
        fleet.advance(now, rate)
        decision = decide(fleet.observation(now), cfg)
        if demand_history:
            fleet.demand_history = remember(fleet.demand_history, decision, now)
        if decision.action is not Action.HOLD:
            changes.append((now, decision.action.value, decision.desired_replicas))
        fleet.apply(decision, now)
    return changes


def steps(*levels: tuple[float, float]) -> Callable[[float], float]:
    """Requests per second: (from second, rate) pairs, each rate holding until the next."""

    def rate(t: float) -> float:
        current = 0.0
        for start, value in levels:
            if t >= start:
                current = value
        return current

    return rate


@dataclass(frozen=True)
class Case:
    name: str
    rate: Callable[[float], float]
    ready: int
    minutes: float
    startup: float
    expected: Sequence[tuple[float, str, int]]
    cfg: PolicyConfig = field(default_factory=config)


SEQUENCES = [
    Case(
        # 10.5 req/s is 1.05 replicas busy, 1.5 at the 0.7 target: two gangs hold it, one would not.
        "holds a steady load that two gangs serve and never scales",
        steps((0, 10.5)),
        ready=2,
        minutes=30,
        startup=120,
        expected=[],
    ),
    Case(
        # Three gangs for 1.5 replicas of demand: after the 300 s window one goes (2 × 0.9 ≥ 1.5);
        # two cannot become one (1.5 > 0.9).
        "drains one surplus gang after the stabilisation window and keeps the rest",
        steps((0, 10.5)),
        ready=3,
        minutes=20,
        startup=120,
        expected=[(300.0, "ScaleDown", 2)],
    ),
    Case(
        # The rate climbs one gang's worth (7 req/s) every five minutes. A climb adds a gang once the
        # stable window's mean passes the gangs × 1.1: a quarter of the window at the new rate is
        # enough for 7 → 14 (1.25 > 1.1) and 14 → 21 (2.25 > 2.2), half of it for 21 → 28 (3.5 > 3.3).
        "follows a ramp one gang per step and never scales down on the way",
        steps((0, 7.0), (300, 14.0), (600, 21.0), (900, 28.0)),
        ready=1,
        minutes=20,
        startup=120,
        expected=[(315.0, "ScaleUp", 2), (615.0, "ScaleUp", 3), (930.0, "ScaleUp", 4)],
    ),
    Case(
        # A burst of 35 req/s for two minutes on one gang serving 6. The panic path acts on the first
        # tick: its 30 s window is half burst, 20.5 req/s over the 0.9 burst target = 2.28 replicas, so
        # three gangs; on the next tick the window is all burst (3.89): four; a minute in, the stable
        # window is too (5.0 at the 0.7 target): five. Nothing comes down for the stabilisation window
        # after the last order; then the gangs the window's peak no longer needs go at once: one while
        # the backlog's last panic window is still in it, the rest 30 s later, back to one (6 req/s is
        # 0.86 replicas).
        "answers a burst at once through the panic window and comes back when the window has cleared",
        steps((0, 6.0), (300, 35.0), (420, 6.0)),
        ready=1,
        minutes=30,
        startup=120,
        expected=[
            (315.0, "ScaleUp", 3),
            (330.0, "ScaleUp", 4),
            (360.0, "ScaleUp", 5),
            (735.0, "ScaleDown", 4),
            (765.0, "ScaleDown", 1),
        ],
    ),
    Case(
        # After five quiet minutes the load flaps between 21 req/s (three gangs) and 6 every two
        # minutes for twenty minutes. The first peak orders three gangs, through the panic window
        # (2 then 3); no gang goes while the flapping lasts, since every peak is inside the window. The
        # last peak ends at 1380 s; once no stable window holds more than 1.8 replicas (1710 s) one gang
        # goes, and the next 30 s later.
        "rides out a flapping load without flapping, then steps down when it stops",
        steps((0, 6.0), *[(300 + t, 21.0 if (t // 120) % 2 == 0 else 6.0) for t in range(0, 1200, 120)], (1500, 6.0)),
        ready=1,
        minutes=40,
        startup=120,
        expected=[
            (315.0, "ScaleUp", 2),
            (330.0, "ScaleUp", 3),
            (1710.0, "ScaleDown", 2),
            (1740.0, "ScaleDown", 1),
        ],
    ),
    Case(
        # 14 req/s on one gang (capacity 10): one gang more is ordered at once. The ready gang then
        # stays overloaded for the whole five-minute start-up, its queue growing by 4 requests per
        # second, yet demand (the arrivals, 2.0 replicas) is already covered by ready + starting.
        "does not add a second gang while the first still loads",
        steps((0, 7.0), (300, 14.0)),
        ready=1,
        minutes=15,
        startup=300,
        expected=[(315.0, "ScaleUp", 2)],
    ),
    Case(
        # The last request is served at 120 s; the window of 300 s without one ends at 420 s.
        "scales to zero after an idle window when minReplicas is 0",
        steps((0, 3.0), (120, 0.0)),
        ready=1,
        minutes=10,
        startup=120,
        cfg=config(min_replicas=0),
        expected=[(420.0, "ScaleDown", 0)],
    ),
    Case(
        "stays at one gang when idle unless minReplicas is 0",
        steps((0, 3.0), (120, 0.0)),
        ready=1,
        minutes=10,
        startup=120,
        expected=[],
    ),
    Case(
        "never goes beyond maxReplicas however large the burst",
        steps((0, 7.0), (60, 100.0)),
        ready=1,
        minutes=5,
        startup=600,
        cfg=config(max_replicas=3),
        expected=[(75.0, "ScaleUp", 3)],
    ),
]


@pytest.mark.parametrize("case", SEQUENCES, ids=[c.name for c in SEQUENCES])
def test_decision_sequence(case: Case) -> None:
    assert run(case.rate, ready=case.ready, minutes=case.minutes, startup=case.startup, cfg=case.cfg) == list(
        case.expected
    )


def test_a_ramp_is_forecast_one_start_up_ahead_but_a_step_is_not() -> None:
    # One more request per second every minute: demand grows 0.14 replicas a minute.
    ramp = run(lambda t: 2.0 + t / 60, ready=2, minutes=16, startup=300, cfg=config(forecast_seconds=300))
    blind = run(lambda t: 2.0 + t / 60, ready=2, minutes=16, startup=300, cfg=config())
    # Without a forecast the third gang comes when demand itself passes 2.2 (15.4 req/s, 800 s and a
    # tick); projected 300 s ahead, the ramp asks for it about five minutes sooner.
    assert blind == [(840.0, "ScaleUp", 3)]
    assert ramp == [(540.0, "ScaleUp", 3)]
    step = steps((0, 7.0), (300, 14.0))
    assert run(step, ready=1, minutes=15, startup=300, cfg=config(forecast_seconds=300)) == [(315.0, "ScaleUp", 2)], (
        "a single step is not extrapolated into more gangs"
    )


def test_with_a_short_start_up_a_step_is_still_not_a_ramp() -> None:
    # Two minutes of start-up: the forecast looks 120 s ahead, but the trend is read over four stable
    # windows. Read over two, its quarters were half a stable window long, a step from 7 to 12-15 requests
    # per second (two gangs hold 16 at the target) lifted three of them in a row, and the "ramp" ordered a
    # gang or two that went five minutes later.
    for height in (12.0, 14.0):
        for ramp_seconds in (0.0, 60.0):
            def rate(t: float, height: float = height, ramp_seconds: float = ramp_seconds) -> float:
                up = 1.0 if t >= 300 + ramp_seconds else max(0.0, (t - 300) / max(ramp_seconds, 1.0))
                return 7.0 + (height - 7.0) * up

            assert run(rate, ready=2, minutes=15, startup=120, cfg=config(forecast_seconds=120)) == []
    # A ramp is still a ramp: the third gang comes two minutes before demand itself asks for it.
    ramp = run(lambda t: 2.0 + t / 60, ready=2, minutes=16, startup=120, cfg=config(forecast_seconds=120))
    assert ramp == [(720.0, "ScaleUp", 3)]
    assert run(lambda t: 2.0 + t / 60, ready=2, minutes=16, startup=120, cfg=config()) == [(840.0, "ScaleUp", 3)]


def test_a_ramp_that_wobbles_is_still_forecast_but_a_wobble_on_a_level_load_is_not() -> None:
    # The ramp above with ±1 request per second every four minutes on top: one quarter of the trend
    # window in three then falls behind the one before. The forecast orders the third gang as early as
    # on the clean ramp (a trend that had to rise through every quarter waited until 735 s).
    noisy = run(lambda t: 2.0 + t / 60 + math.sin(2 * math.pi * t / 240), ready=2, minutes=16, startup=300,
                cfg=config(forecast_seconds=300))
    assert noisy == [(540.0, "ScaleUp", 3)]
    # 11 requests per second (two gangs hold 14) going up and down by 2.5 every three minutes: up, down
    # and up again inside one trend window is a wobble, and projecting its last rise orders a gang.
    level = run(lambda t: 11.0 + 2.5 * math.sin(2 * math.pi * t / 180), ready=2, minutes=30, startup=300,
                cfg=config(forecast_seconds=300))
    assert level == []
    # A gentle rise (0.3 requests per second a minute) and then a step of 3: the step lifts the newest
    # quarter far more than the rise before it, and 13 requests per second fit in the two gangs there are.
    step = run(lambda t: 6.0 + t / 200 + (3.0 if t >= 600 else 0.0), ready=2, minutes=14, startup=300,
               cfg=config(forecast_seconds=300))
    assert step == []


# --- single decisions --------------------------------------------------------------------------


def sample(at: float, *, served: float = 0.0, queue: float = 0.0, ttft: float | None = None) -> MetricSample:
    return MetricSample(
        at=at,
        token_usage=0.1,
        queue_requests=queue,
        running_requests=0.0,
        ttft_p95_seconds=ttft,
        prompt_tokens_total=served * 1_000,
        generation_tokens_total=0.0,
        requests_total=served,
    )


def steady(
    name: str, now: float, per_second: float, *, queue: float = 0.0, ttft: float | None = None
) -> list[MetricSample]:
    """A gang's last ten minutes at a constant served rate."""
    return [sample(t, served=per_second * t, queue=queue, ttft=ttft) for t in range(int(now) - 600, int(now) + 1, 15)]


def ready(*names: str) -> tuple[Gang, ...]:
    return tuple(Gang(n, GangPhase.READY, 0.0) for n in names)


def test_no_fresh_metrics_from_a_ready_gang_means_no_action() -> None:
    now = 1_000.0
    observation = Observation(
        now=now,
        gangs=ready("a", "b"),
        samples={"a": steady("a", now, 30.0), "b": steady("b", now - 120, 30.0)},
    )
    decision = decide(observation, config())
    assert decision.action is Action.NO_DATA
    assert decision.desired_replicas == 2
    assert "b" in decision.reason


def test_a_gang_without_any_metrics_is_missing_data_too() -> None:
    decision = decide(Observation(now=100.0, gangs=ready("a"), samples={}), config())
    assert (decision.action, decision.desired_replicas) == (Action.NO_DATA, 1)


def test_gangs_still_starting_count_as_capacity_on_its_way() -> None:
    now = 1_000.0
    # 14 req/s is 2.0 replicas at the target; one gang ready, one starting: nothing more to order.
    gangs = (*ready("a"), Gang("b", GangPhase.STARTING, now - 60))
    observation = Observation(now=now, gangs=gangs, samples={"a": steady("a", now, 14.0)})
    assert decide(observation, config()).action is Action.HOLD
    alone = Observation(now=now, gangs=ready("a"), samples={"a": steady("a", now, 14.0)})
    assert decide(alone, config()).desired_replicas == 2


def test_scale_down_drains_the_least_loaded_ready_gang() -> None:
    now = 1_000.0
    observation = Observation(
        now=now,
        gangs=ready("a", "b", "c"),
        samples={
            "a": steady("a", now, 1.0, queue=3.0),
            "b": steady("b", now, 1.0, queue=0.0),
            "c": steady("c", now, 1.0, queue=5.0),
        },
    )
    decision = decide(observation, config())
    # 3 req/s in all fits in one gang: both surplus gangs go at once, the least loaded named first.
    assert (decision.action, decision.desired_replicas, decision.remove) == (Action.SCALE_DOWN, 1, "b")


@pytest.mark.parametrize(
    ("extra", "blocker"),
    [
        ({"gangs": (*ready("a", "b", "c"), Gang("d", GangPhase.DRAINING, 990.0))}, "still draining"),
        ({"last_scale_down_at": 990.0}, "last scale-down"),
        ({"last_scale_up_at": 900.0}, "last scale-up"),
    ],
    ids=[
        "not while another gang is still draining",
        "not sooner than the interval after the last scale-down",
        "not within the stabilisation window after a scale-up",
    ],
)
def test_scale_down_waits(extra: dict[str, object], blocker: str) -> None:
    now = 1_000.0
    values: dict[str, object] = {
        "now": now,
        "gangs": ready("a", "b", "c"),
        "samples": {n: steady(n, now, 1.0) for n in "abc"},
    }
    values.update(extra)
    decision = decide(Observation(**values), config())  # type: ignore[arg-type]
    assert decision.action is Action.HOLD
    assert blocker in decision.reason


@pytest.mark.parametrize(("before", "action"), [(0.2, Action.HOLD), (1.4, Action.SCALE_DOWN)],
                         ids=["not while demand rises above the window's median", "once the window shows it"])
def test_no_gang_goes_while_demand_rises(before: float, action: Action) -> None:
    # 3.5 req/s a gang: 10.5 in all, 1.5 replicas at the target, which two gangs hold. The policy's record of
    # the last five minutes says demand was 0.2 replicas until now: a burst beginning (a late one of a
    # pattern, say), and the window's peak says nothing of where it goes.
    now = 1_000.0
    history = tuple((t, before) for t in range(int(now) - 300, int(now), 15))
    observation = Observation(now=now, gangs=ready("a", "b", "c"), samples={n: steady(n, now, 3.5) for n in "abc"},
                              demand_history=history)
    decision = decide(observation, config())
    assert (decision.action, decision.desired_replicas) == (action, 3 if action is Action.HOLD else 2)
    if action is Action.HOLD:
        assert "rising" in decision.reason


def test_ttft_above_the_slo_on_most_gangs_adds_a_gang_when_none_is_starting() -> None:
    now = 1_000.0
    # 7 req/s over two gangs is 1.0 replica of demand: by the model two gangs are plenty.
    samples = {n: steady(n, now, 3.5, ttft=3.0) for n in "ab"}
    observation = Observation(now=now, gangs=ready("a", "b"), samples=samples)
    decision = decide(observation, config(ttft_slo_seconds=2.0))
    assert (decision.action, decision.desired_replicas) == (Action.SCALE_UP, 3)
    assert decide(observation, config()).action is not Action.SCALE_UP, "without an SLO, nothing to see"


@pytest.mark.parametrize(
    ("per_second", "queue", "scales"),
    [
        (1.0, 0.0, False),  # a tenth of a replica, nothing queued: one long prompt's TTFT, not capacity
        (1.0, 2.0, True),  # requests waited in the queue: capacity
        (1.2, 0.0, False),  # 18 requests a window, under half the target: a tail, not capacity
        (5.0, 0.0, True),  # half the target and more, over 75 requests a window
    ],
)
def test_a_ttft_miss_orders_a_gang_only_where_the_gangs_were_busy(
    per_second: float, queue: float, scales: bool
) -> None:
    now = 1_000.0
    samples = {n: steady(n, now, per_second, queue=queue, ttft=3.0) for n in "ab"}
    observation = Observation(now=now, gangs=ready("a", "b"), samples=samples)
    decision = decide(observation, config(ttft_slo_seconds=2.0))
    assert (decision.action is Action.SCALE_UP) is scales, decision.reason


def test_ttft_above_the_slo_on_one_gang_with_an_old_backlog_adds_nothing() -> None:
    now = 1_000.0
    samples = {"a": steady("a", now, 3.5, ttft=30.0), "b": steady("b", now, 3.5, ttft=0.2)}
    samples["c"] = steady("c", now, 3.5, ttft=0.2)
    observation = Observation(now=now, gangs=ready("a", "b", "c"), samples=samples)
    assert decide(observation, config(ttft_slo_seconds=2.0)).action is not Action.SCALE_UP


@pytest.mark.parametrize(
    ("pending", "expected"),
    [(5, (Action.SCALE_UP, 1)), (0, (Action.HOLD, 0)), (None, (Action.NO_DATA, 0))],
    ids=[
        "scales from zero when requests wait at the router",
        "stays at zero with nothing waiting",
        "holds at zero when the router's queue cannot be read",
    ],
)
def test_from_zero(pending: int | None, expected: tuple[Action, int]) -> None:
    decision = decide(Observation(now=0.0, gangs=(), samples={}, pending_requests=pending), config(min_replicas=0))
    assert (decision.action, decision.desired_replicas) == expected


@pytest.mark.parametrize(
    ("gangs", "cfg", "expected"),
    [
        ((), config(min_replicas=2), (Action.SCALE_UP, 2, None)),
        (
            (*ready("a", "b"), Gang("c", GangPhase.READY, 500.0)),
            config(max_replicas=2),
            (Action.SCALE_DOWN, 2, "c"),
        ),
        (
            (*ready("a", "b"), Gang("s", GangPhase.STARTING, 10.0)),
            config(max_replicas=2),
            (Action.SCALE_DOWN, 2, "s"),
        ),
    ],
    ids=[
        "restores minReplicas without waiting for metrics",
        "comes down to maxReplicas when it was lowered, draining the newest of equally loaded gangs",
        "cancels a starting gang before draining a ready one",
    ],
)
def test_bounds(gangs: tuple[Gang, ...], cfg: PolicyConfig, expected: tuple[Action, int, str | None]) -> None:
    now = 1_000.0
    samples = {g.name: steady(g.name, now, 1.0) for g in gangs if g.phase is GangPhase.READY}
    decision = decide(Observation(now=now, gangs=gangs, samples=samples), cfg)
    assert (decision.action, decision.desired_replicas, decision.remove) == expected


def test_kv_cache_use_is_demand_even_when_compute_is_idle() -> None:
    now = 1_000.0
    full = [
        MetricSample(at=t, token_usage=0.95, queue_requests=0.0, running_requests=40.0, requests_total=0.0)
        for t in range(int(now) - 600, int(now) + 1, 15)
    ]
    observation = Observation(now=now, gangs=ready("a"), samples={"a": full})
    decision = decide(observation, config(target_token_usage=0.8))
    # 0.95 / 0.8 = 1.19 replicas' worth: above 1 gang with the 10 % tolerance.
    assert (decision.action, decision.desired_replicas) == (Action.SCALE_UP, 2)


def test_an_overloaded_gang_that_finishes_nothing_still_shows_its_load() -> None:
    # Prefill-first under overload: requests pile up in queue and running, none finish for a while.
    now = 1_000.0
    history = [
        MetricSample(
            at=t, token_usage=0.2, queue_requests=(t - 400) * 3.5, running_requests=(t - 400) * 0.5, requests_total=0.0
        )
        for t in range(400, int(now) + 1, 15)
    ]
    decision = decide(Observation(now=now, gangs=ready("a"), samples={"a": history}), config())
    # 4 requests per second arrive and none finishes; at the typical 0.1 s of work that is 0.4 of a
    # replica, 0.57 at the 0.7 target. Only the growth of queued + running shows it.
    assert decision.signals.demand == pytest.approx(4.0 * WORK / 0.7)


def test_decide_is_pure() -> None:
    now = 1_000.0
    observation = Observation(now=now, gangs=ready("a", "b"), samples={n: steady(n, now, 9.0) for n in "ab"})
    assert decide(observation, config()) == decide(observation, config())


# --- recurring bursts, backlogs and steep rises (the scenario suite's failure modes, bench/scenarios.py)


def bursts(
    onsets: Sequence[float], *, length: float, high: float, low: float, until: float, tick: float = 15.0
) -> tuple[tuple[float, float], ...]:
    """A demand history (time, replicas) with bursts at `onsets`."""
    return tuple(
        (t, high if any(o <= t < o + length for o in onsets) else low)
        for t in (k * tick for k in range(int(until / tick) + 1))
    )


def test_bursts_at_a_steady_period_are_recognised_with_their_size_and_next_onset() -> None:
    history = bursts([600, 1500, 2400], length=300, high=8.0, low=1.0, until=2800)
    found = recurrence(history, 2800.0, config())
    assert found is not None
    assert found.period_seconds == pytest.approx(900, abs=15)
    assert found.next_onset == pytest.approx(3300, abs=15)
    assert found.demand == 8.0
    assert found.duration_seconds == pytest.approx(300, abs=30)


def test_bursts_that_fill_most_of_the_history_are_still_recognised() -> None:
    # 25 minutes on, 6 off: the lulls are under a fifth of the two hours kept. Read with the history's 20th
    # percentile as its low, the pattern vanished in the middle of the fifth burst.
    onsets = [360 + k * 1860 for k in range(5)]
    cfg = config(startup_seconds=240.0, forecast_seconds=240.0)
    for until in (8400.0, 9150.0):
        found = recurrence(bursts(onsets, length=1500, high=12.0, low=1.5, until=until), until, cfg)
        assert found is not None, until
        assert found.period_seconds == pytest.approx(1860, abs=15)
        assert found.next_onset == pytest.approx(360 + 5 * 1860, abs=15)
        assert found.demand == 12.0


@pytest.mark.parametrize(
    ("onsets", "until", "why"),
    [
        ([600], 1200, "one burst is no period"),
        ([600, 1500, 2700], 3000, "intervals of 900 and 1200 s are no period"),
        ([600, 1500, 2400], 3600, "the expected onset at 3300 s passed a quarter period ago without a burst"),
    ],
)
def test_no_recurrence_without_a_steady_period(onsets: list[float], until: float, why: str) -> None:
    history = bursts(onsets, length=300, high=8.0, low=1.0, until=until)
    assert recurrence(history, until, config()) is None, why


def test_two_bursts_alike_in_size_and_length_are_a_period_already() -> None:
    history = bursts([600, 1500], length=300, high=8.0, low=1.0, until=1900)
    found = recurrence(history, 1900.0, config())
    assert found is not None
    assert found.period_seconds == pytest.approx(900, abs=15)
    assert found.next_onset == pytest.approx(2400, abs=15)
    assert found.demand == 8.0


@pytest.mark.parametrize(
    ("second", "why"),
    [
        ({"length": 300, "high": 4.0}, "the second burst is half the first's size"),
        ({"length": 90, "high": 8.0}, "the second burst is a third of the first's length"),
        ({"length": 700, "high": 8.0}, "the second burst lasts more than twice the first"),
    ],
)
def test_two_unlike_bursts_are_no_period(second: dict[str, float], why: str) -> None:
    first = bursts([600], length=300, high=8.0, low=1.0, until=2600)
    other = bursts([1500], low=1.0, until=2600, **second)
    history = tuple((t, max(a, b)) for (t, a), (_, b) in zip(first, other, strict=True))
    assert recurrence(history, 2600.0, config()) is None, why


def test_swings_smaller_than_a_gang_are_not_bursts() -> None:
    history = bursts([600, 1500, 2400], length=300, high=1.8, low=1.0, until=2800)
    assert recurrence(history, 2800.0, config()) is None


def test_the_demand_history_keeps_fresh_decisions_only_and_ages_out() -> None:
    signals = Signals(ready=2, starting=0, draining=0, demand=1.5, panic_demand=2.0, target_correction=0.5)
    hold = Decision(2, Action.HOLD, "", signals)
    history = remember((), hold, 100.0)
    # The figure is kept at the uncorrected targets: 2.0 replicas at half the targets is 1.0.
    assert history == ((100.0, 1.0),)
    assert remember(history, Decision(2, Action.NO_DATA, "", signals), 115.0) == history
    later = 100.0 + DEMAND_HISTORY_SECONDS + 1
    assert remember(history, hold, later) == ((later, 1.0),)


# Bursts of 28 req/s (4 replicas at the 0.7 target) for four minutes every fifteen, on 6 req/s, with
# two gangs ready; gangs start in five minutes. The fourth burst begins at 3000 s.
ON_OFF = steps((0, 6.0), *[(300 + k * 900 + d, r) for k in range(5) for d, r in ((0, 28.0), (240, 6.0))])


def desired_at(changes: Sequence[tuple[float, str, int]], moment: float, initial: int) -> int:
    """The gangs wanted (ready or starting) at `moment`, from a run's changes."""
    return next((d for at, _, d in reversed(changes) if at <= moment), initial)


def test_a_recurring_burst_is_served_by_gangs_there_before_it_begins() -> None:
    # Every twenty minutes: the gangs of the third burst go in the lull after it, and come back for
    # the fourth (at 3900 s) a start-up ahead.
    rate = steps((0, 6.0), *[(300 + k * 1200 + d, r) for k in range(4) for d, r in ((0, 28.0), (240, 6.0))])
    cfg = config(forecast_seconds=300)
    learned = run(rate, ready=2, minutes=70, startup=300, cfg=cfg)
    blind = run(rate, ready=2, minutes=70, startup=300, cfg=cfg, demand_history=False)
    assert desired_at(learned, 3300, 2) < 4, f"released in the lull: {learned}"
    # Ready at the onset means wanted a start-up before it.
    assert desired_at(learned, 3900 - 300, 2) >= 4, learned
    assert desired_at(blind, 3900 - 300, 2) < 4, "without the history the burst finds one gang"


def test_a_recurring_bursts_gangs_go_in_a_lull_longer_than_a_start_up() -> None:
    cfg = config(forecast_seconds=300)
    learned = run(ON_OFF, ready=2, minutes=55, startup=300, cfg=cfg)
    blind = run(ON_OFF, ready=2, minutes=55, startup=300, cfg=cfg, demand_history=False)
    # The fourth burst ends at 3240 s and the fifth begins at 3900: gangs released soon after the end
    # and ordered again before 3900 cost less than eleven idle minutes.
    released = [c for c in learned if 3240 < c[0] <= 3240 + 120 and c[1] == "ScaleDown"]
    assert released, f"the burst's gangs were kept through the lull: {learned}"
    assert not [c for c in blind if 3240 < c[0] <= 3240 + 120 and c[1] == "ScaleDown"], (
        "without the pattern, the stabilisation window holds them"
    )


def test_a_steep_rise_that_has_levelled_off_is_not_projected() -> None:
    # 7 → 49 req/s over two minutes, then flat: 7 gangs at the 0.7 target. The stable window smears the
    # rise over four minutes, which looks like a ramp to the trend; projecting it another start-up
    # orders gangs for growth that never comes.
    def crowd(t: float) -> float:
        return 7.0 + 42.0 * min(1.0, max(0.0, (t - 300) / 120))

    changes = run(crowd, ready=1, minutes=20, startup=300, cfg=config(forecast_seconds=300))
    assert max(desired for _, _, desired in changes) <= 7, changes


def backlog(name: str, now: float, *, start: float, end: float, served: float, running: float) -> list[MetricSample]:
    """A gang whose queue goes from `start` to `end` over the last minute, serving `served` req/s."""
    out = []
    for t in range(int(now) - 600, int(now) + 1, 15):
        share = min(1.0, max(0.0, (t - (now - 60)) / 60))
        queue = start if t < now - 60 else start + (end - start) * share
        out.append(
            MetricSample(
                at=t,
                token_usage=0.05,
                queue_requests=queue,
                running_requests=running,
                prompt_tokens_total=served * t * 1_000,
                generation_tokens_total=0.0,
                requests_total=served * t,
            )
        )
    return out


def test_a_backlog_being_cleared_is_not_read_as_demand() -> None:
    now = 1_000.0
    # The gang serves its full 10 req/s out of a queue of 3,000 that shrinks by as much: nothing new
    # arrives. Its running requests (900 of 1,000) would read as 1.1 replicas of demand.
    clearing = backlog("a", now, start=3_000.0, end=2_400.0, served=10.0, running=900.0)
    decision = decide(Observation(now=now, gangs=ready("a"), samples={"a": clearing}), config())
    assert decision.action is not Action.SCALE_UP, decision.reason
    growing = backlog("a", now, start=2_400.0, end=3_000.0, served=10.0, running=900.0)
    decision = decide(Observation(now=now, gangs=ready("a"), samples={"a": growing}), config())
    assert decision.action is Action.SCALE_UP, "a growing queue is load arriving"


def test_the_running_limit_at_the_tail_of_a_short_backlog_is_not_read_as_demand() -> None:
    now = 1_000.0
    # Two gangs at 5 req/s each (0.5 of a gang's compute) empty the last 60 queued requests each, a
    # few seconds of work: a gang with a queue runs at its running-request limit (1,000), which would
    # read as 1.25 replicas each, 2.5 for the two. What arrives is 5 req/s each: no gang to add.
    tail = {n: backlog(n, now, start=60.0, end=0.0, served=6.0, running=1_000.0) for n in "ab"}
    decision = decide(Observation(now=now, gangs=ready("a", "b"), samples=tail), config())
    assert decision.action is not Action.SCALE_UP, decision.reason
    assert decision.signals.demand < 2.0


def test_late_first_tokens_while_a_backlog_clears_add_no_gang() -> None:
    now = 1_000.0
    samples = {n: backlog(n, now, start=100.0, end=40.0, served=3.5, running=0.0) for n in "ab"}
    samples = {n: [replace(s, ttft_p95_seconds=30.0) for s in history] for n, history in samples.items()}
    decision = decide(Observation(now=now, gangs=ready("a", "b"), samples=samples), config(ttft_slo_seconds=2.0))
    assert decision.action is Action.HOLD
    assert "backlog" in decision.reason


def test_no_trend_is_projected_while_the_ready_gangs_queues_grow() -> None:
    # A ramp from 5 to 45 req/s over twenty minutes on one gang (10 req/s) whose help is ten minutes
    # away: its queue grows all along. The gangs ordered are what helps; a trend read off an
    # overloaded gang's finished requests is not a forecast.
    cfg = config(forecast_seconds=300, max_replicas=1)
    fleet = FluidFleet.of(1, 600.0)
    seen = []
    for k in range(int(1500 / TICK) + 1):
        now = k * TICK
        fleet.advance(now, lambda t: 5.0 + 40.0 * min(1.0, t / 1200))
        decision = decide(fleet.observation(now), cfg)
        if now >= 600:
            seen.append((decision.signals.forecast_demand, decision.signals.demand))
    assert seen
    assert all(forecast == demand for forecast, demand in seen)


def ramp_on_a_backlog(now: float, queue: Callable[[float], float]) -> list[MetricSample]:
    """A gang whose arrivals ramp from 5 to 10 req/s over the last ten minutes while its queue follows `queue`."""
    out = []
    finished = 0.0
    for t in range(int(now) - 600, int(now) + 1, 15):
        if out:
            arrived = (5.0 + 5.0 * (t - 7.5 - (now - 600)) / 600) * 15
            finished += arrived - (queue(t) - queue(t - 15))
        out.append(
            MetricSample(
                at=t,
                token_usage=0.05,
                queue_requests=queue(t),
                running_requests=0.0,
                prompt_tokens_total=finished * 1_000,
                generation_tokens_total=0.0,
                requests_total=finished,
            )
        )
    return out


def test_no_trend_is_projected_while_a_backlog_clears() -> None:
    now = 1_000.0
    cfg = config(forecast_seconds=300, max_replicas=10)
    # A ramp read off two gangs: projected one start-up ahead.
    level = {n: ramp_on_a_backlog(now, lambda t: 0.0) for n in "ab"}
    decision = decide(Observation(now=now, gangs=ready("a", "b"), samples=level), cfg)
    assert decision.signals.forecast_demand > decision.signals.demand + 0.5, decision.signals
    # The same arrivals while gang a clears a queue of 300 that built over the last four minutes (the
    # burst that began the ramp, served by the gangs that have since joined): the demand read then is
    # the fleet catching up with load that has already arrived, and projected a start-up ahead it
    # ordered gangs for a backlog the router never moves to them (21 gangs for a burst of 12).
    def queue(t: float) -> float:
        return max(0.0, min(300.0 * (t - (now - 240)) / 180, 300.0 - 100.0 * (t - (now - 60)) / 60))

    catching_up = {"a": ramp_on_a_backlog(now, queue), "b": level["b"]}
    decision = decide(Observation(now=now, gangs=ready("a", "b"), samples=catching_up), cfg)
    assert decision.signals.forecast_demand == decision.signals.demand, decision.signals
    # A few requests queued for a scrape or two and served is no backlog: the ramp is still projected (read
    # over the panic window, such a blip held back a RAG crowd's first forecast gang).
    blip = {"a": ramp_on_a_backlog(now, lambda t: 3.0 if now - 30 <= t < now else 0.0), "b": level["b"]}
    decision = decide(Observation(now=now, gangs=ready("a", "b"), samples=blip), cfg)
    assert decision.signals.forecast_demand > decision.signals.demand + 0.5, decision.signals


def queueing(
    now: float, slope: float, *, queue: Callable[[float], float] = lambda t: 5.0 + t / 10, wait: float = 40.0
) -> list[MetricSample]:
    """A gang's last ten minutes: it finishes 2 requests a second of the small kind (0.1 replica-seconds each),
    its queue is `queue(t)`, and over the last minute the first tokens it serves come `slope` seconds later every
    second (`wait` seconds after their requests arrived, half a minute ago): the requests it is working through
    are bigger than the ones that finished before them."""
    history = []
    total = 0.0
    for t in range(int(now) - 600, int(now) + 1, 15):
        middle = max(t - 7.5, now - 60)
        total += 30.0 * (wait + slope * (middle - (now - 30)))  # 30 first tokens in the 15 s before t
        history.append(replace(sample(t, served=2.0 * t, queue=queue(t)), ttft_count=2.0 * t, ttft_seconds_sum=total))
    return history


def test_a_backlogged_gang_is_read_from_how_fast_its_queueing_time_rises() -> None:
    now = 1_000.0
    # 2 finished + 0.1 queued a second, priced at the finished requests' 0.1 replica-seconds: 0.3 of a gang
    # at the 0.7 target. But the first tokens come 0.75 s later every second: the requests arriving are 4 times
    # what the gang serves, 5.71 gangs at the target.
    observation = Observation(now=now, gangs=ready("a"), samples={"a": queueing(now, 0.75)})
    decision = decide(observation, config())
    assert decision.signals.demand == pytest.approx(2.1 * WORK / 0.7)
    assert decision.signals.wait_demand == pytest.approx(4.0 / 0.7)
    assert (decision.action, decision.desired_replicas) == (Action.SCALE_UP, 6)
    assert decision.reason.startswith("queue-wait demand 5.71")
    # Nearer a slope of 1 the ratio diverges; it is read as at most 5 times what the gang serves.
    steep = decide(Observation(now=now, gangs=ready("a"), samples={"a": queueing(now, 0.99)}), config())
    assert steep.signals.wait_demand == pytest.approx(5.0 / 0.7)
    # Off (a PD decode pool, whose TTFT holds the prefill pool's queue too), the view is the stable demand.
    off = decide(observation, config(queue_wait_view=False))
    assert off.signals.wait_demand == pytest.approx(off.signals.demand)


def test_a_queue_that_formed_in_the_last_half_minute_is_read_over_the_panic_window() -> None:
    now = 1_000.0
    # No queue a minute ago, so the stable window does not read it; the panic window (30 s) does.
    history = queueing(now, 0.75, queue=lambda t: 0.0 if t < 970 else 5.0 + (t - 970), wait=10.0)
    decision = decide(Observation(now=now, gangs=ready("a"), samples={"a": history}), config())
    assert decision.signals.wait_demand == pytest.approx(4.0 / 0.7)
    assert (decision.action, decision.desired_replicas) == (Action.SCALE_UP, 6)


@pytest.mark.parametrize(
    ("slope", "queue", "since", "why"),
    [
        (0.0, lambda t: 5.0 + t / 10, 0.0, "a queue whose wait does not grow: the gang keeps up with it"),
        (-0.5, lambda t: 5.0 + t / 10, 0.0, "the wait falls"),
        (0.75, lambda t: 0.0 if t == 940 else 5.0 + t / 10, 0.0, "the queue emptied inside the window"),
        (0.75, lambda t: 200.0 - t / 10, 0.0, "the queue shrinks"),
        (0.75, lambda t: 5.0 + t / 10, 900.0, "the gang joined less than a window before it: the router's catch-up"),
        (0.75, lambda t: 5.0 + t / 10, 0.0, "a wait longer than the window tells what arrived then, not now"),
    ],
)
def test_the_queueing_time_is_read_only_on_a_gang_with_a_standing_growing_backlog(
    slope: float, queue: Callable[[float], float], since: float, why: str
) -> None:
    now = 1_000.0
    gangs = (Gang("a", GangPhase.READY, since),)
    wait = 100.0 if why.startswith("a wait longer") else 40.0
    history = queueing(now, slope, queue=queue, wait=wait)
    decision = decide(Observation(now=now, gangs=gangs, samples={"a": history}), config())
    assert decision.signals.wait_demand == pytest.approx(decision.signals.demand), why
