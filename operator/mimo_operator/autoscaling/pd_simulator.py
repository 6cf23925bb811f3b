"""The autoscaling simulator's prefill/decode fleet: two pools of gangs, one stream of requests.

Each pool is the colocated simulator's engine (`simulator._Engine`: queues, admission by KV pool and
running-request limit, chunked prefill, decode steps, drains, the scrape the operator would read) run with its
side's performance model from `planner_pd.plan_disaggregated`, on one shared clock:

* a request arrives at the router and is prefilled on a prefill gang (the prefill side's prefill time, its
  prefix cache, its chunked prefill); a prefill gang generates the first token only, so the request leaves it
  when its prompt's last chunk is done;
* its KV moves to a decode gang in `planner_pd.kv_transfer(spec, prefill plan, prompt tokens).seconds`;
* the decode gang admits it when its KV pool and running-request limit allow (no prefill: the KV arrived)
  and it joins the decode batch; its first token is out at the end of the first decode step it takes part
  in, the rest one decode step each (the decode side's step time, MTP included where the side runs it).

TTFT is therefore the prefill queue + the prefill + the transfer + any wait for decode KV + one decode step;
ITL is the decode side's steps alone: a prompt never pauses a decode batch, which is what PD is for.

Every scrape interval both pools are scraped into their own `ScaleMemory` (the router's counter of requests
that found no gang goes to both, as in the operator, which reads one router), and a pool autoscaler
(`pools.PoolsPolicy`, i.e. `pools.decide_pools`, or a fixed split) decides both at once; each pool carries out
its decision as the colocated fleet does. GPU-hours are both pools' gangs from creation through drain.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, cast

from mimo_operator.autoscaling.observation import TPOT_BUCKETS, Scrape, histogram_of
from mimo_operator.autoscaling.policy import Action, Decision, GangPhase, Observation, Signals
from mimo_operator.autoscaling.pools import DECODE, PREFILL, ROLES
from mimo_operator.autoscaling.simulator import (
    _TICK,
    FleetConfig,
    PolicyResult,
    Router,
    Tick,
    TimelinePoint,
    _Engine,
    _percentile,
    _Replica,
)
from mimo_operator.autoscaling.trace import Trace
from mimo_operator.planner_pd import Role

__all__ = [
    "PoolAutoscaler",
    "PoolsFleet",
    "PoolsResult",
    "PoolsTick",
    "StaticPools",
    "simulate_pools",
]

# A request's KV on its way to a decode gang: an engine event, ordered with the others by time.
_HANDOFF = 1


class PoolAutoscaler(Protocol):
    """Anything that sizes both pools from their observations: `pools.PoolsPolicy` or a fixed split."""

    @property
    def name(self) -> str: ...

    def decide(self, observations: Mapping[Role, Observation]) -> Mapping[Role, Decision]: ...


@dataclass(frozen=True)
class StaticPools:
    """A fixed number of gangs in each pool: PD at a given GPU count, without autoscaling."""

    prefill: int
    decode: int
    name: str = "static-pd"

    def decide(self, observations: Mapping[Role, Observation]) -> Mapping[Role, Decision]:
        out = {}
        for role, count in ((PREFILL, self.prefill), (DECODE, self.decode)):
            gangs = observations[role].gangs
            ready = sum(1 for g in gangs if g.phase is GangPhase.READY)
            starting = sum(1 for g in gangs if g.phase is GangPhase.STARTING)
            current = ready + starting
            action = Action.HOLD if count == current else Action.SCALE_UP if count > current else Action.SCALE_DOWN
            out[role] = Decision(count, action, f"static: {count} {role} gangs",
                                 Signals(ready=ready, starting=starting, draining=len(gangs) - current))
        return out


@dataclass(frozen=True)
class PoolsFleet:
    """Both pools: each a `FleetConfig` of its side's plan, and the KV hand-over time of a prompt."""

    prefill: FleetConfig
    decode: FleetConfig
    transfer_seconds: Callable[[int], float]  # prompt tokens → seconds (planner_pd.kv_transfer)


@dataclass(frozen=True)
class PoolsTick:
    """One decision of both pools, each as the colocated simulator's `Tick` (the operator-parity test replays it)."""

    at: float
    pools: Mapping[Role, Tick]
    router_refused_total: float


@dataclass(frozen=True)
class PoolsResult:
    """The fleet as users and the bill see it (`fleet`: end-to-end TTFT and ITL, both pools' GPU-hours), and
    each pool's own figures (`pools`: scale events, gangs, GPU-hours; prefill's TTFT ends at its prefill)."""

    fleet: PolicyResult
    pools: Mapping[Role, PolicyResult]
    transfer_seconds_p99: float


def simulate_pools(
    trace: Trace, fleet: PoolsFleet, autoscaler: PoolAutoscaler, *, on_tick: Callable[[PoolsTick], None] | None = None
) -> PoolsResult:
    """Replay `trace` against a PD fleet whose pools `autoscaler` sizes; see the module docstring."""
    clock = time.process_time()
    engine = _PoolsEngine(trace, fleet, autoscaler, on_tick)
    engine.run()
    return engine.result(time.process_time() - clock)


class _Named:
    """The autoscaler slot of one pool's engine: the pools' autoscaler decides for it (never called)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def decide(self, observation: Observation) -> Decision:
        raise AssertionError("a PD pool is decided by its PoolAutoscaler")


class _Pool(_Engine):
    """One pool of a PD fleet: the colocated engine on the shared clock of `_PoolsEngine`."""

    def __init__(self, owner: _PoolsEngine, role: Role, trace: Trace, fleet: FleetConfig) -> None:
        self.owner = owner
        self.gang_prefix = role
        self.role = role
        super().__init__(trace, fleet, _Named(f"{owner.autoscaler.name} {role}"))

    def _push(self, at: float, kind: int, payload: object) -> None:
        self.owner.push(at, kind, self, payload)


class _PrefillPool(_Pool):
    """Prefill gangs: a request's output here is its first token; when its prefill ends it leaves for decode."""

    def __init__(self, owner: _PoolsEngine, trace: Trace, fleet: FleetConfig) -> None:
        super().__init__(owner, PREFILL, trace, fleet)
        self.generated = [1] * len(self.generated)

    def _finished(self, replica: _Replica, i: int, now: float) -> None:
        super()._finished(replica, i, now)
        self.owner.hand_over(i, now)


class _DecodePool(_Pool):
    """Decode gangs: a request arrives with its KV, is admitted without prefill and decodes all its tokens."""

    def __init__(self, owner: _PoolsEngine, trace: Trace, fleet: FleetConfig) -> None:
        # SGLang disables the radix cache on a decode server; the router picks a decode gang by load.
        super().__init__(owner, DECODE, trace, replace(fleet, prefix_cache=False, router=Router.LEAST_OUTSTANDING))
        self.admitted: list[int] = []

    def receive(self, i: int, now: float) -> None:
        """Request `i`'s KV has arrived: queue it on a decode gang (or at the router when none serves)."""
        if self.context[i] + self.generated[i] > self.context_limit:
            self.failed[i] = True
            return
        if not self.serving:
            self.refused_total += 1
            self.pending.append(i)
            return
        replica = self._route(i)
        replica.waiting.append(i)
        self._kick(replica, now)

    def _start_prefill(self, replica: _Replica, now: float) -> bool:
        """Admit what fits (KV for the prompt and the output, a sliding-window slot, the running limit) straight
        into the decode batch: there is nothing to prefill. False: the replica goes on decoding."""
        waiting = replica.waiting
        heap = replica.decode_heap
        context, generated = self.context, self.generated
        while waiting and len(heap) < self.max_running:
            i = waiting[0]
            need = self._pages(context[i]) + generated[i]
            if replica.reserved + need > self.kv_capacity or self.swa_capacity < (len(heap) + 1) * self.swa_per_seq:
                if not heap:  # can never fit this replica's pool: refused
                    waiting.popleft()
                    self.failed[i] = True
                    continue
                break  # first come, first served: it waits for running requests to finish
            waiting.popleft()
            replica.reserved += need
            self.private[i] = need
            heapq.heappush(heap, (replica.progress + generated[i], i))
            replica.ctx_sum += context[i]
            replica.start_sum += replica.progress
            self.decode_start[i] = replica.progress
            self.admitted.append(i)
        return False

    def _kick(self, replica: _Replica, now: float) -> None:
        self.admitted = []
        super()._kick(replica, now)
        for i in self.admitted:  # out at the end of the first step they take part in
            self.first_token[i] = now + replica.step
            replica.ttfts.append(self.first_token[i] - self.arrival[i])

    def _finished(self, replica: _Replica, i: int, now: float) -> None:
        super()._finished(replica, i, now)
        if self.generated[i] > 1:
            replica.tpots.append((now - self.first_token[i]) / (self.generated[i] - 1))

    def _scrape(self, replica: _Replica, now: float) -> Scrape:
        scrape = super()._scrape(replica, now)
        replica.tpot_buckets = histogram_of(replica.tpots, replica.tpot_buckets, TPOT_BUCKETS)
        replica.tpots = []
        return replace(scrape, tpot_buckets=replica.tpot_buckets)


@dataclass
class _Flight:
    seconds: list[float] = field(default_factory=list)
    in_flight: int = 0


class _PoolsEngine:
    def __init__(
        self,
        trace: Trace,
        fleet: PoolsFleet,
        autoscaler: PoolAutoscaler,
        on_tick: Callable[[PoolsTick], None] | None,
    ) -> None:
        self.trace = trace
        self.fleet = fleet
        self.autoscaler = autoscaler
        self.on_tick = on_tick
        self.events: list[tuple[float, int, int, _Pool | None, object]] = []
        self.seq = 0
        self.flight = _Flight()
        self.transfer: dict[int, float] = {}
        self.prefill = _PrefillPool(self, trace, fleet.prefill)
        self.decode = _DecodePool(self, trace, fleet.decode)
        self.pools: dict[Role, _Pool] = {PREFILL: self.prefill, DECODE: self.decode}

    def push(self, at: float, kind: int, pool: _Pool | None, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, kind, self.seq, pool, payload))

    def hand_over(self, i: int, now: float) -> None:
        """Request `i`'s prompt is prefilled: its KV reaches the decode pool one transfer later."""
        tokens = self.prefill.context[i]
        seconds = self.transfer.get(tokens)
        if seconds is None:
            seconds = self.transfer[tokens] = self.fleet.transfer_seconds(tokens)
        self.flight.seconds.append(seconds)
        self.flight.in_flight += 1
        self.push(now + seconds, _HANDOFF, None, i)

    def run(self) -> None:
        prefill = self.prefill
        arrival = prefill.arrival
        n = len(arrival)
        interval = self.fleet.prefill.decision_interval_seconds
        horizon = self.trace.span_seconds
        self.push(0.0, _TICK, None, None)
        i = 0
        events = self.events
        while i < n or events:
            if i < n and (not events or arrival[i] < events[0][0]):
                now = arrival[i]
                touched: list[_Replica] = []
                while i < n and arrival[i] == now:
                    if prefill.context[i] + self.decode.generated[i] > prefill.context_limit:
                        prefill.failed[i] = True  # longer than the context: refused at once, never prefilled
                    else:
                        replica = prefill._arrive(i, now)
                        if replica is not None and replica not in touched:
                            touched.append(replica)
                    i += 1
                for replica in touched:
                    if not replica.prefilling:
                        prefill._kick(replica, now)
                continue
            at, kind, _, pool, payload = heapq.heappop(events)
            if kind == _TICK:
                self._tick(at)
                busy = prefill.busy() or self.decode.busy() or self.flight.in_flight > 0
                if i < n or at < horizon or busy:
                    self.push(at + interval, _TICK, None, None)
            elif pool is None:  # a hand-over
                self.flight.in_flight -= 1
                self.decode.receive(cast(int, payload), at)
            else:
                pool._handle(kind, payload, at)
        finish = self.decode.finish
        end = max(horizon, max((t for t in finish if not math.isnan(t)), default=0.0))
        for engine in self.pools.values():
            engine._close(end)

    def _tick(self, now: float) -> None:
        refused = float(self.prefill.refused_total + self.decode.refused_total)
        seen = {role: pool._observe(now, refused) for role, pool in self.pools.items()}
        decisions = self.autoscaler.decide({role: s.observation for role, s in seen.items()})
        ticks = {role: self.pools[role]._carry_out(seen[role], decisions[role], now) for role in ROLES}
        if self.on_tick is not None:
            self.on_tick(PoolsTick(now, ticks, refused))

    def result(self, cpu_seconds: float) -> PoolsResult:
        prefill = self.prefill.result(cpu_seconds)
        decode = self.decode.result(cpu_seconds)
        timeline = tuple(
            TimelinePoint(
                at=p.at,
                arrivals_per_second=p.arrivals_per_second,
                prompt_tokens_per_second=p.prompt_tokens_per_second,
                ready=p.ready + d.ready,
                starting=p.starting + d.starting,
                draining=p.draining + d.draining,
                desired=p.desired + d.desired,
                ttft_p95_seconds=d.ttft_p95_seconds,
            )
            for p, d in zip(prefill.timeline, decode.timeline, strict=True)
        )
        peak = max((t.ready + t.starting for t in timeline), default=0)
        fleet = replace(
            decode,
            name=self.autoscaler.name,
            gpu_hours=prefill.gpu_hours + decode.gpu_hours,
            scale_events=prefill.scale_events + decode.scale_events,
            gangs_started=prefill.gangs_started + decode.gangs_started,
            gangs_drained=prefill.gangs_drained + decode.gangs_drained,
            peak_replicas=max(peak, self.fleet.prefill.initial_replicas + self.fleet.decode.initial_replicas),
            timeline=timeline,
            prefix_hit_rate=prefill.prefix_hit_rate,
        )
        seconds = sorted(self.flight.seconds)
        return PoolsResult(
            fleet=fleet,
            pools={PREFILL: replace(prefill, name=f"{self.autoscaler.name} prefill"),
                   DECODE: replace(decode, name=f"{self.autoscaler.name} decode")},
            transfer_seconds_p99=_percentile(seconds, 0.99) if seconds else math.nan,
        )
