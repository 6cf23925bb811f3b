"""The autoscaler's loop in the operator: scrape each ready gang and the router, ask the pure policy.

Per deployment with ``spec.autoscaling.enabled``, every scrape interval: each Ready gang's SGLang
``/metrics`` is read from every pod that hosts an attention-DP group's scheduler (node 0, and for Pro
with DP attention over two nodes node 1 too; addressed by pod IP at the plan's port: the gang's
NetworkPolicy admits the operator), the scrapes of one gang are combined, and the router pods'
Prometheus metrics say how many requests found no gang (scale from zero). Configuration, observation
and decision are the functions `mimoctl simulate autoscaling` runs (`autoscaling.config`,
`autoscaling.observation`, `autoscaling.policy`). The reconciler writes a changed decision through
``/scale`` and hands `Decision.remove` to the steps planner, which takes gangs out in
`autoscaling.observation.removal_order`. A ready gang without fresh metrics means no action. The
signals are exported as the operator's metrics, so KEDA or HPA can scale on them instead.

A prefill/decode deployment (``spec.disaggregation``) runs `step_pools` instead: the same scrape of each pool's
Ready gangs (with that pool's plan) into that pool's own memory, the router read once for both, and
`autoscaling.pools.decide_pools` for both pools at once (what `mimoctl simulate autoscaling` runs on a PD
manifest).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import prometheus_client

from mimo_operator.autoscaling.config import SCRAPE_INTERVAL_SECONDS, history_seconds, policy_config
from mimo_operator.autoscaling.observation import (
    GangState,
    RouterScrape,
    ScaleMemory,
    Scrape,
    combine,
    dp_leader_ranks,
    parse_router_metrics,
    parse_sglang_metrics,
)
from mimo_operator.autoscaling.policy import Decision, GangPhase, Observation, decide
from mimo_operator.autoscaling.pools import ROLES, decide_pools, pool_configs
from mimo_operator.gangs import GangHealth, Health, ObservedGang
from mimo_operator.plan import Plan
from mimo_operator.planner_pd import DisaggregatedPlan, Role
from mimo_operator.spec import DeploymentSpec

__all__ = [
    "SCRAPE_INTERVAL_SECONDS",
    "AutoscalerMemory",
    "HttpMetrics",
    "MetricsPort",
    "gang_states",
    "scrape_gang",
    "step",
    "step_pools",
]

log = logging.getLogger("mimo.operator.autoscaler")

# Exported for KEDA/HPA (through an adapter) and dashboards: what the policy sees, per deployment.
SIGNAL = prometheus_client.Gauge("mimo_autoscaler_signal", "Signals the autoscaling policy reads",
                                 ["namespace", "deployment", "signal"])
DESIRED = prometheus_client.Gauge("mimo_autoscaler_desired_replicas", "The policy's desired replicas",
                                  ["namespace", "deployment"])
DECISIONS = prometheus_client.Counter("mimo_autoscaler_decisions_total", "Scale decisions taken",
                                      ["namespace", "deployment", "action"])
SCRAPE_FAILURES = prometheus_client.Counter("mimo_autoscaler_scrape_failures_total",
                                            "Scrapes of a gang's or the router's /metrics that failed",
                                            ["namespace", "deployment"])


class MetricsPort(Protocol):
    """The one boundary the loop reads through: a Prometheus exposition by URL, None when unreachable."""

    async def get_text(self, url: str) -> str | None: ...


class HttpMetrics:
    def __init__(self, session: aiohttp.ClientSession, timeout: float = 3.0) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def get_text(self, url: str) -> str | None:
        try:
            async with self.session.get(url, timeout=self.timeout) as r:
                if r.status != 200:
                    return None
                return await r.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None


@dataclass
class AutoscalerMemory(ScaleMemory):
    """`ScaleMemory` plus when this deployment was last scraped (the loop runs once per interval) and the
    policy's choice of gangs to take out first at its last scale decision (`Desired.remove_first`)."""

    history_seconds: float = 0.0
    last_scrape: float = -math.inf
    remove_first: tuple[str, ...] = ()


def gang_states(gangs: Sequence[ObservedGang], health: Mapping[str, Health]) -> tuple[GangState, ...]:
    """The gangs in the policy's phases; failed and terminating ones are neither capacity nor load."""
    out = []
    for g in gangs:
        state = health[g.name].state
        if state is GangHealth.READY:
            phase = GangPhase.READY
        elif state is GangHealth.DRAINING:
            phase = GangPhase.DRAINING
        elif state in (GangHealth.PENDING, GangHealth.STARTING):
            phase = GangPhase.STARTING
        else:
            continue
        out.append(GangState(g.name, phase, g.created, g.drain_started))
    return tuple(out)


async def scrape_gang(port: MetricsPort, gang: ObservedGang, plan: Plan, at: float) -> Scrape | None:
    """Every DP group's metrics of one gang, combined; None unless every pod hosting one answered."""
    ranks = dp_leader_ranks(attention_data_parallel=plan.attention_data_parallel,
                            attention_tensor_parallel=plan.attention_tensor_parallel,
                            gpus_per_node=plan.gpus_per_node, nodes=plan.nodes_per_replica)
    pods = {p.rank: p for p in gang.pods}
    urls = []
    for rank in ranks:
        pod = pods.get(rank)
        if pod is None or not pod.ip:
            return None
        urls.append(f"http://{pod.ip}:{plan.port}/metrics")
    texts = await asyncio.gather(*(port.get_text(u) for u in urls))
    if any(t is None for t in texts):
        return None  # part of the gang's load would be missing: no sample rather than a wrong one
    return combine([parse_sglang_metrics(t, at) for t in texts if t is not None])


async def _scrape_routers(port: MetricsPort, routers: Sequence[str]) -> list[RouterScrape] | None:
    texts = await asyncio.gather(*(port.get_text(u) for u in routers))
    if not routers or any(t is None for t in texts):
        return None
    return [parse_router_metrics(t) for t in texts if t is not None]


async def step(*, port: MetricsPort, namespace: str, name: str, spec: DeploymentSpec, plan: Plan,
               gangs: Sequence[ObservedGang], health: Mapping[str, Health], memory: AutoscalerMemory,
               now: float, routers: Sequence[str] = ()) -> Decision | None:
    """Scrape and decide, at most once per scrape interval; None between intervals.

    `routers`: the router pods' metrics URLs (none when the router is off: then no scale from zero).
    """
    if now - memory.last_scrape < SCRAPE_INTERVAL_SECONDS:
        return None
    memory.last_scrape = now
    config = policy_config(spec, plan)
    memory.history_seconds = history_seconds(config)
    _, refused = await asyncio.gather(_record_pool(port, namespace, name, plan, gangs, health, memory, now),
                                      _scrape_routers(port, routers))
    if routers and refused is None:
        SCRAPE_FAILURES.labels(namespace, name).inc()
    observation = memory.observe(now, gang_states(gangs, health), memory.pending(refused))
    decision = decide(observation, config)
    memory.decided(decision, now)
    _export(namespace, name, "", decision, observation)
    DESIRED.labels(namespace, name).set(decision.desired_replicas)
    return decision


async def step_pools(*, port: MetricsPort, namespace: str, name: str, spec: DeploymentSpec,
                     pd_plan: DisaggregatedPlan, gangs_by_role: Mapping[Role, Sequence[ObservedGang]],
                     health: Mapping[str, Health], memory_by_role: Mapping[Role, AutoscalerMemory], now: float,
                     routers: Sequence[str] = ()) -> dict[Role, Decision] | None:
    """`step` for a PD deployment: scrape each pool and decide both, at most once per scrape interval.

    `gangs_by_role` and `memory_by_role` have one entry per role ("prefill", "decode"): the pool's gangs and the
    pool's own `AutoscalerMemory` (kept across calls, like `step`'s); `health` covers the gangs of both pools;
    `routers` as for `step` (the PD router's requests that found no gang reach both pools' memories). Returns each
    pool's decision (`Decision.desired_replicas` for the pool; `Decision.remove` its gang to take out first), or
    None between intervals. The caller writes a changed count and then calls
    `memory_by_role[role].scaled(desired, current, now)`, as for `step`.
    """
    if any(now - memory_by_role[role].last_scrape < SCRAPE_INTERVAL_SECONDS for role in ROLES):
        return None
    config = pool_configs(spec, pd_plan)
    plans = {pd_plan.prefill.role: pd_plan.prefill.plan, pd_plan.decode.role: pd_plan.decode.plan}
    for role in ROLES:
        memory_by_role[role].last_scrape = now
        memory_by_role[role].history_seconds = history_seconds(config.policies[role])
    *_, refused = await asyncio.gather(
        *(_record_pool(port, namespace, name, plans[role], gangs_by_role.get(role, ()), health,
                       memory_by_role[role], now) for role in ROLES),
        _scrape_routers(port, routers))
    if routers and refused is None:
        SCRAPE_FAILURES.labels(namespace, name).inc()
    observations: dict[Role, Observation] = {}
    for role in ROLES:
        memory = memory_by_role[role]
        observations[role] = memory.observe(now, gang_states(gangs_by_role.get(role, ()), health),
                                            memory.pending(refused))
    decisions = decide_pools(observations, config)
    for role in ROLES:
        memory_by_role[role].decided(decisions[role], now)
        _export(namespace, name, f"{role}_", decisions[role], observations[role])
        SIGNAL.labels(namespace, name, f"{role}_desired_replicas").set(decisions[role].desired_replicas)
    return decisions


async def _record_pool(port: MetricsPort, namespace: str, name: str, plan: Plan, gangs: Sequence[ObservedGang],
                       health: Mapping[str, Health], memory: AutoscalerMemory, now: float) -> None:
    """Scrape every Ready gang of one pool (all gangs of `plan`) into its memory."""
    ready = [g for g in gangs if health[g.name].state is GangHealth.READY]
    scrapes = await asyncio.gather(*(scrape_gang(port, g, plan, now) for g in ready))
    for g, got in zip(ready, scrapes, strict=True):
        if got is None:
            SCRAPE_FAILURES.labels(namespace, name).inc()
        else:
            memory.record(g.name, got)


def _export(namespace: str, name: str, prefix: str, decision: Decision, observation: Observation) -> None:
    signals = decision.signals
    for key, value in (("demand", signals.demand), ("panic_demand", signals.panic_demand),
                       ("forecast_demand", signals.forecast_demand), ("wait_demand", signals.wait_demand),
                       ("token_usage", signals.token_usage),
                       ("queue_requests", signals.queue_requests), ("running_requests", signals.running_requests),
                       ("ttft_p95_seconds", signals.ttft_p95_seconds), ("utilisation", signals.utilisation),
                       ("router_pending_requests", observation.pending_requests)):
        if value is not None:
            SIGNAL.labels(namespace, name, prefix + key).set(value)
