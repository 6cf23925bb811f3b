"""One autoscaling path for PD: the operator's `step_pools` decides as the simulator's PD fleet did.

The simulator runs a MiMo-V2.5-Pro PD fleet (prefill and decode gangs of two nodes, two attention-DP groups
each) with per-pool autoscaling through a burst of long prompts, a lull long enough to scale both pools to zero,
and a return of traffic. Every tick is replayed into `autoscaler.step_pools`: the same gangs by pool, each gang's
metrics as SGLang expositions split over its two nodes (the decode gangs' time-per-output-token histogram on
node 0 with the TTFT one), the router's 503 counter. The operator must take the same decisions for both pools.
"""

from __future__ import annotations

import math
import random
from typing import Any

from mimo_operator import autoscaler
from mimo_operator.autoscaling.observation import GangState, Scrape, removal_order
from mimo_operator.autoscaling.pd_simulator import PoolsTick, simulate_pools
from mimo_operator.autoscaling.policy import Action, GangPhase
from mimo_operator.autoscaling.pools import DECODE, PREFILL, ROLES, PoolsPolicy
from mimo_operator.autoscaling.trace import Request, Trace
from mimo_operator.commands.simulate_autoscaling import pools_comparison_for
from mimo_operator.gangs import Health, ObservedGang, ObservedPod
from mimo_operator.plan import Plan
from tests.unit.test_autoscaling_parity import HEALTH, ROUTER_URL, Pages, exposition, router_exposition
from tests.unit.test_autoscaling_pools import pd_manifest

MANIFEST = pd_manifest(prefill={"minReplicas": 0, "maxReplicas": 4}, decode={"minReplicas": 0, "maxReplicas": 4})
MANIFEST["spec"]["autoscaling"] = {**MANIFEST["spec"]["autoscaling"], "scaleUpWindowSeconds": 30,
                                   "scaleDownWindowSeconds": 120}


def burst_lull_return() -> Trace:
    """Long prompts with long answers for ten minutes, nothing for ten, then a lighter return."""
    rng = random.Random(11)
    requests = []
    for start, end, rate in ((0.0, 600.0, 12.0), (1200.0, 1500.0, 3.0)):
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            requests.append(Request(t, rng.randint(4000, 12000), rng.randint(100, 600)))
    return Trace("PD burst, lull, return", tuple(requests), 1800.0)


def pd_exposition(scrape: Scrape, node: int) -> str:
    """A gang's node `node` as SGLang shows it; node 0 also the per-request TPOT histogram (a decode gang's)."""
    text = exposition(scrape, node)
    if node == 0 and scrape.tpot_buckets:
        lines = ["# TYPE sglang:request_time_per_output_token_seconds histogram"]
        for le, count in scrape.tpot_buckets:
            bound = "+Inf" if math.isinf(le) else repr(float(le))
            lines.append(f'sglang:request_time_per_output_token_seconds_bucket{{le="{bound}",model_name="m",'
                         f'is_streaming="true"}} {count!r}')
        text += "\n".join(lines) + "\n"
    return text


def observed(tick: PoolsTick, plans: dict[str, Plan]) -> tuple[dict[str, list[ObservedGang]], dict[str, Health],
                                                              Pages]:
    gangs: dict[str, list[ObservedGang]] = {}
    health: dict[str, Health] = {}
    port = Pages()
    serial = 0
    for role in ROLES:
        plan, pool = plans[role], tick.pools[role]
        gangs[role] = []
        for g in pool.gangs:
            serial += 1
            pods = tuple(ObservedPod(name=f"{g.name}-{r}", uid=f"{g.name}-{r}", rank=r, phase="Running",
                                     ready=g.phase is not GangPhase.STARTING, deleting=False, node=f"n{serial}-{r}",
                                     created=g.created, ip=f"10.{serial // 200}.{serial % 200}.{r + 1}")
                         for r in range(plan.nodes_per_replica))
            gangs[role].append(ObservedGang(g.name, pool.index.get(g.name, 0), "rev", 0, plan.nodes_per_replica, pods,
                                            serving=g.phase is GangPhase.READY, drain_started=g.drain_started))
            health[g.name] = Health(HEALTH[g.phase])
            if g.name in pool.scrapes:
                for r, pod in enumerate(pods):
                    port.pages[f"http://{pod.ip}:{plan.port}/metrics"] = pd_exposition(pool.scrapes[g.name], r)
    port.pages[ROUTER_URL] = router_exposition(tick.router_refused_total)
    return gangs, health, port


async def test_step_pools_decides_both_pools_as_the_simulator_did_at_every_tick() -> None:
    comparison = pools_comparison_for(MANIFEST)
    plans = {PREFILL: comparison.pd.prefill.plan, DECODE: comparison.pd.decode.plan}
    assert all((p.nodes_per_replica, p.attention_data_parallel) == (2, 2) for p in plans.values())
    ticks: list[PoolsTick] = []
    result = simulate_pools(burst_lull_return(), comparison.fleet, PoolsPolicy(comparison.config),
                            on_tick=ticks.append)
    for role in ROLES:
        actions = {t.pools[role].decision.action for t in ticks}
        assert {Action.SCALE_UP, Action.SCALE_DOWN} <= actions, role
    assert any(s.tpot_buckets for t in ticks for s in t.pools[DECODE].scrapes.values()), "decode gangs report TPOT"
    assert result.fleet.failed_requests == 0

    memory = {role: autoscaler.AutoscalerMemory() for role in ROLES}
    mismatches: list[tuple[float, str, Any, Any]] = []
    for tick in ticks:
        gangs, health, port = observed(tick, plans)
        decisions = await autoscaler.step_pools(
            port=port, namespace="ns", name="pro-pd", spec=comparison.spec, pd_plan=comparison.pd,
            gangs_by_role=gangs, health=health, memory_by_role=memory, now=tick.at, routers=[ROUTER_URL])
        assert decisions is not None
        for role in ROLES:
            ours, theirs = decisions[role], tick.pools[role].decision
            if (ours.desired_replicas, ours.action, ours.remove, ours.reason) != (
                    theirs.desired_replicas, theirs.action, theirs.remove, theirs.reason):
                mismatches.append((tick.at, role, ours, theirs))
            current = tick.pools[role].current
            if ours.desired_replicas != current and ours.action in (Action.SCALE_UP, Action.SCALE_DOWN):
                memory[role].scaled(ours.desired_replicas, current, tick.at)
            removed = tick.pools[role].removed
            if removed:
                states = [GangState(g.name, g.phase, g.created, g.drain_started) for g in tick.pools[role].gangs]
                order = removal_order(states, (ours.remove,) if ours.remove else (), tick.pools[role].index)
                assert tuple(order[: len(removed)]) == removed
    assert not mismatches, mismatches[:3]
    assert len(ticks) > 150
    assert any(t.pools[PREFILL].decision.reason.endswith("scale from zero") for t in ticks)
    assert any(s.tpot_p95_seconds is not None for h in memory[DECODE].samples.values() for s in h), \
        "the operator reads the decode gangs' TPOT"
