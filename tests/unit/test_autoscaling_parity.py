"""One autoscaling path: the operator's loop and the simulator decide the same from the same metrics.

The simulator runs a MiMo-V2.5-Pro fleet (two attention-DP groups on two nodes per gang) through a
burst, a lull long enough to scale to zero, and a return of traffic (scale from zero). Every decision
it took is then replayed into the operator's `autoscaler.step`: the same gangs, each gang's metrics
served as SGLang expositions split over its two nodes (the second DP group's scheduler on node 1), the
router's 503 counter as sglang-router exports it. The operator's loop must reach the same decision at
every tick, with the same configuration, and take out the same gangs.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from mimo_operator import autoscaler
from mimo_operator.autoscaling.baselines import MimoPolicy
from mimo_operator.autoscaling.config import policy_config
from mimo_operator.autoscaling.observation import GangState, Scrape, removal_order
from mimo_operator.autoscaling.policy import Action, GangPhase
from mimo_operator.autoscaling.simulator import Tick, simulate
from mimo_operator.autoscaling.trace import Request, Trace
from mimo_operator.commands.simulate_autoscaling import DEFAULT_MANIFEST, comparison_for, with_overrides
from mimo_operator.gangs import GangHealth, Health, ObservedGang, ObservedPod
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec

MANIFEST = with_overrides(DEFAULT_MANIFEST, min_replicas=0, max_replicas=4, ttft_slo_seconds=2.0)
MANIFEST["spec"]["autoscaling"] = {**MANIFEST["spec"]["autoscaling"], "scaleUpWindowSeconds": 30,
                                   "scaleDownWindowSeconds": 120}


def burst_lull_return(work_seconds: float) -> Trace:
    """Poisson traffic: three gangs' worth for ten minutes, nothing for ten, then one gang's worth."""
    rng = random.Random(7)
    requests = []
    for start, end, gangs in ((0.0, 600.0, 3.0), (1200.0, 1500.0, 1.0)):
        rate = 0.7 * gangs / work_seconds
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            requests.append(Request(t, rng.randint(1000, 3000), rng.randint(100, 400)))
    return Trace("burst, lull, return", tuple(requests), 1800.0)


def exposition(scrape: Scrape, node: int) -> str:
    """What node `node` of a two-node Pro gang serves at /metrics: its own DP group's scheduler
    gauges; node 0 also the tokenizer's counters and TTFT histogram (with its sum and count)."""
    s = scrape.sample
    queue = [math.floor(s.queue_requests / 2), s.queue_requests - math.floor(s.queue_requests / 2)]
    running = [math.floor(s.running_requests / 2), s.running_requests - math.floor(s.running_requests / 2)]
    usage = [s.token_usage, s.token_usage / 2] if node == 0 else [s.token_usage / 2, s.token_usage]
    labels = f'model_name="m",dp_rank="{node}",tp_rank="{8 * node}"'
    lines = [
        "# TYPE sglang:num_queue_reqs gauge", f"sglang:num_queue_reqs{{{labels}}} {queue[node]!r}",
        "# TYPE sglang:num_running_reqs gauge", f"sglang:num_running_reqs{{{labels}}} {running[node]!r}",
        "# TYPE sglang:token_usage gauge", f"sglang:token_usage{{{labels}}} {usage[node]!r}",
    ]
    if node == 0:
        for name, value in (("prompt_tokens", s.prompt_tokens_total), ("generation_tokens", s.generation_tokens_total),
                            ("num_requests", s.requests_total)):
            lines += [f"# TYPE sglang:{name} counter", f'sglang:{name}_total{{model_name="m"}} {value!r}']
        lines.append("# TYPE sglang:time_to_first_token_seconds histogram")
        for le, count in scrape.ttft_buckets:
            bound = "+Inf" if math.isinf(le) else repr(float(le))
            lines.append(f'sglang:time_to_first_token_seconds_bucket{{le="{bound}",model_name="m"}} {count!r}')
        lines += [f'sglang:time_to_first_token_seconds_sum{{model_name="m"}} {s.ttft_seconds_sum!r}',
                  f'sglang:time_to_first_token_seconds_count{{model_name="m"}} {s.ttft_count!r}']
    return "\n".join(lines) + "\n"


def router_exposition(refused: float) -> str:
    return ("# TYPE smg_http_responses_total counter\n"
            f'smg_http_responses_total{{status_code="503",error_code="no_available_workers"}} {refused!r}\n'
            "# TYPE smg_http_connections_active gauge\nsmg_http_connections_active 0\n")


class Pages:
    def __init__(self) -> None:
        self.pages: dict[str, str] = {}

    async def get_text(self, url: str) -> str | None:
        return self.pages.get(url)


ROUTER_URL = "http://10.9.9.9:29000/metrics"
HEALTH = {GangPhase.READY: GangHealth.READY, GangPhase.STARTING: GangHealth.STARTING,
          GangPhase.DRAINING: GangHealth.DRAINING}


def observed(tick: Tick, plan: Plan) -> tuple[list[ObservedGang], dict[str, Health], Pages]:
    """The simulator's world at one tick as the operator would read it from the API and over HTTP."""
    gangs, health, port = [], {}, Pages()
    for serial, g in enumerate(tick.gangs):
        ready = g.phase is not GangPhase.STARTING
        pods = tuple(ObservedPod(name=f"{g.name}-{r}", uid=f"{g.name}-{r}", rank=r, phase="Running", ready=ready,
                                 deleting=False, node=f"node-{serial}-{r}", created=g.created,
                                 ip=f"10.{serial // 200}.{serial % 200}.{r + 1}")
                     for r in range(plan.nodes_per_replica))
        gangs.append(ObservedGang(g.name, tick.index.get(g.name, 0), "rev", 0, plan.nodes_per_replica, pods,
                                  serving=g.phase is GangPhase.READY, drain_started=g.drain_started))
        health[g.name] = Health(HEALTH[g.phase])
        if g.name in tick.scrapes:
            for r, pod in enumerate(pods):
                port.pages[f"http://{pod.ip}:{plan.port}/metrics"] = exposition(tick.scrapes[g.name], r)
    port.pages[ROUTER_URL] = router_exposition(tick.router_refused_total)
    return gangs, health, port


async def test_the_operators_loop_decides_as_the_simulator_did_at_every_tick() -> None:
    spec = parse_spec(MANIFEST)
    plan = plan_deployment(spec)
    assert (plan.nodes_per_replica, plan.attention_data_parallel) == (2, 2)
    config = policy_config(spec, plan)
    trace = burst_lull_return(config.capacity.typical_request_seconds)
    _, _, comparison = comparison_for(MANIFEST, trace)
    assert comparison.policy == config, "the simulator runs the operator's configuration"

    ticks: list[Tick] = []
    simulate(trace, comparison.fleet, MimoPolicy(comparison.policy), on_tick=ticks.append)
    actions = [t.decision.action for t in ticks]
    assert {Action.SCALE_UP, Action.SCALE_DOWN} <= set(actions)
    assert any(t.decision.reason.endswith("scale from zero") for t in ticks), "the lull reached zero gangs"

    memory = autoscaler.AutoscalerMemory()
    mismatches: list[tuple[float, Any, Any]] = []
    for tick in ticks:
        gangs, health, port = observed(tick, plan)
        decision = await autoscaler.step(port=port, namespace="ns", name="pro", spec=spec, plan=plan, gangs=gangs,
                                         health=health, memory=memory, now=tick.at, routers=[ROUTER_URL])
        assert decision is not None
        theirs = tick.decision
        if (decision.desired_replicas, decision.action, decision.remove, decision.reason) != (
                theirs.desired_replicas, theirs.action, theirs.remove, theirs.reason):
            mismatches.append((tick.at, decision, theirs))
        if decision.desired_replicas != tick.current and decision.action in (Action.SCALE_UP, Action.SCALE_DOWN):
            # What the reconciler's _autoscale does with a decision it writes through /scale.
            memory.scaled(decision.desired_replicas, tick.current, tick.at)
        if tick.removed:
            states = [GangState(g.name, g.phase, g.created, g.drain_started) for g in tick.gangs]
            order = removal_order(states, (decision.remove,) if decision.remove else (), tick.index)
            assert tuple(order[: len(tick.removed)]) == tick.removed
    assert not mismatches, mismatches[:3]
    assert len(ticks) > 150


@pytest.mark.parametrize(("phases", "remove_first", "expected"), [
    pytest.param({"a": GangPhase.READY, "b": GangPhase.STARTING, "c": GangPhase.READY}, ("a",), ["b", "a", "c"],
                 id="a gang that never served goes first, then the policy's choice"),
    pytest.param({"a": GangPhase.READY, "b": GangPhase.READY, "c": GangPhase.READY}, (), ["c", "b", "a"],
                 id="without a choice the highest replica index goes"),
    pytest.param({"a": GangPhase.READY, "b": GangPhase.DRAINING, "c": GangPhase.READY}, ("c",), ["c", "a"],
                 id="a draining gang is already going"),
])
def test_scale_down_takes_gangs_out_in_the_agreed_order(phases: dict[str, GangPhase], remove_first: tuple[str, ...],
                                                         expected: list[str]) -> None:
    states = [GangState(name, phase, created=float(i)) for i, (name, phase) in enumerate(phases.items())]
    assert removal_order(states, remove_first, {name: i for i, name in enumerate(phases)}) == expected
