"""Autoscaling a prefill/decode deployment: each pool on its own signals, the two kept in a sane ratio.

A PD deployment (``spec.disaggregation``) runs two pools of gangs. Each is sized by the colocated policy
(`policy.decide`), shown only its own gangs' metrics and configured with its own side's capacity:

* **prefill** prices a request by its prompt alone (a prefill gang generates one token), so its demand is
  the prompt tokens reaching it (queued, in flight, finished) at the side's prefill rate; it holds to the
  TTFT objective (``ttftSloSeconds``) on the TTFT its gangs report (arrival to the prompt's last chunk);
* **decode** prices a request by its output alone (its prompt arrives as KV, computed elsewhere), so its
  demand is generated tokens at the side's decode rate, KV-cache use and running requests (not the queueing
  time read from TTFT, which on a decode gang counts the prefill pool's queue too). Two signals of its
  own come on top, each when most ready decode gangs show it and no decode gang is starting: the ITL budget on
  ``sglang:request_time_per_output_token_seconds`` (a request's mean ITL; its p95 above the budget: one more
  gang), and requests queued on a decode gang throughout the panic window (a decode server queues a request only
  while its KV pool or running-request limit is full: with long contexts and long answers these bind before the
  token rate does; one more gang).

The two pools share one stream of requests, so neither may run far from the other: the ratio of decode to
prefill gangs stays within `PoolsConfig.min_decode_per_prefill`..`max_decode_per_prefill`, derived from the
plans' capacities (see `ratio_bounds`). A pool that the other's decision would leave short is raised (its
decision becomes a scale-up that names the bound), and a scale-down that would break the bound stops at it.

`pool_configs(spec, pd_plan)` is the one translation of a PD deployment into this configuration, and
`decide_pools(observations, config)` the one decision: the operator's loop (`autoscaler.step_pools`), the
simulator (`mimoctl simulate autoscaling` on a PD manifest) and bench/ call these. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from mimo_operator.autoscaling.capacity import capacity_of
from mimo_operator.autoscaling.config import (
    ITL_BUDGET_SECONDS,
    SCRAPE_INTERVAL_SECONDS,
    TYPICAL_CONTEXT_TOKENS,
    TYPICAL_OUTPUT_TOKENS,
    policy_config,
)
from mimo_operator.autoscaling.policy import Action, Decision, GangPhase, Observation, PolicyConfig, decide
from mimo_operator.perf import performance_of
from mimo_operator.planner_pd import DEFAULT_TYPICAL_PROMPT_TOKENS, DisaggregatedPlan, PoolPlan, Role
from mimo_operator.spec import DeploymentSpec

__all__ = [
    "DECODE",
    "PREFILL",
    "ROLES",
    "SHAPE_SPREAD",
    "PoolsConfig",
    "PoolsPolicy",
    "decide_pools",
    "pool_configs",
    "ratio_bounds",
]

PREFILL: Role = "prefill"
DECODE: Role = "decode"
ROLES: tuple[Role, ...] = (PREFILL, DECODE)

# How far a request's prompt may stray from the typical one, either way, before the ratio bound binds: a prompt
# 4× shorter or longer than typicalPromptTokens (at the typical output) moves the decode:prefill work 4× either
# way. Wider, the bound stops protecting a pool; narrower, it fights the pools' own signals on ordinary mixes.
SHAPE_SPREAD = 4.0


@dataclass(frozen=True)
class PoolsConfig:
    """Each pool's policy configuration, and the bounds on decode gangs per prefill gang."""

    policies: Mapping[Role, PolicyConfig]
    min_decode_per_prefill: float
    max_decode_per_prefill: float
    itl_slo_seconds: float = ITL_BUDGET_SECONDS  # the decode pool's objective on a request's mean ITL

    def __post_init__(self) -> None:
        if set(self.policies) != set(ROLES):
            raise ValueError(f"need a policy for each of {', '.join(ROLES)}, got {', '.join(sorted(self.policies))}")
        if not 0.0 < self.min_decode_per_prefill <= self.max_decode_per_prefill:
            raise ValueError(
                f"need 0 < min ≤ max decode gangs per prefill gang, got "
                f"{self.min_decode_per_prefill} and {self.max_decode_per_prefill}"
            )


def ratio_bounds(prefill: PoolPlan, decode: PoolPlan, *, prompt_tokens: int, output_tokens: int) -> tuple[float, float]:
    """(min, max) decode gangs per prefill gang: the typical request's balance, `SHAPE_SPREAD` either way.

    A prefill gang finishes `prefill rate / prompt` requests per second, a decode gang `decode rate / output`
    at the ITL budget (both from the plans' performance models, `capacity.capacity_of`); the balance is the
    decode gangs that keep up with one prefill gang.
    """
    p = capacity_of(performance_of(prefill.plan), itl_slo_seconds=ITL_BUDGET_SECONDS,
                    context_tokens=min(prompt_tokens, prefill.plan.context_length), output_tokens=output_tokens)
    d = capacity_of(performance_of(decode.plan), itl_slo_seconds=ITL_BUDGET_SECONDS,
                    context_tokens=min(prompt_tokens, decode.plan.context_length), output_tokens=output_tokens)
    balance = (p.prefill_tokens_per_second / prompt_tokens) / (d.decode_tokens_per_second / output_tokens)
    return balance / SHAPE_SPREAD, balance * SHAPE_SPREAD


def pool_configs(
    spec: DeploymentSpec,
    pd_plan: DisaggregatedPlan,
    *,
    startup_seconds: float | None = None,
    scrape_interval_seconds: float = SCRAPE_INTERVAL_SECONDS,
) -> PoolsConfig:
    """Each pool's configuration: `config.policy_config` of the pool's plan (windows, targets, start-up from the
    spec's autoscaling block and the side's plan), its bounds from ``spec.disaggregation.<pool>`` (unset: the
    autoscaling block's), its capacity priced on its own phase only, and the TTFT objective on prefill alone."""
    pd = spec.disaggregation
    prompt = pd.typical_prompt_tokens if pd is not None and pd.typical_prompt_tokens else DEFAULT_TYPICAL_PROMPT_TOKENS
    policies: dict[Role, PolicyConfig] = {}
    for pool in (pd_plan.prefill, pd_plan.decode):
        base = policy_config(spec, pool.plan, startup_seconds=startup_seconds,
                             scrape_interval_seconds=scrape_interval_seconds)
        capacity = base.capacity
        context = min(TYPICAL_CONTEXT_TOKENS, pool.plan.context_length)
        if pool.role == PREFILL:
            # A prefill gang generates the first token only; its work is the prompt.
            capacity = replace(capacity, decode_tokens_per_second=math.inf,
                               typical_request_seconds=context / capacity.prefill_tokens_per_second)
        else:
            # A decode gang receives the prompt's KV; its work is the output.
            capacity = replace(capacity, prefill_tokens_per_second=math.inf,
                               typical_request_seconds=TYPICAL_OUTPUT_TOKENS / capacity.decode_tokens_per_second)
        low = spec.autoscaling.min_replicas if pool.min_replicas is None else pool.min_replicas
        high = spec.autoscaling.max_replicas if pool.max_replicas is None else pool.max_replicas
        policies[pool.role] = replace(
            base,
            capacity=capacity,
            min_replicas=low,
            max_replicas=max(high, low, 1),
            ttft_slo_seconds=base.ttft_slo_seconds if pool.role == PREFILL else None,
            # A decode gang's TTFT counts from the request's arrival, through the prefill pool's queue: its rise
            # is not the decode gang's own queueing time.
            queue_wait_view=base.queue_wait_view and pool.role == PREFILL,
        )
    low_ratio, high_ratio = ratio_bounds(pd_plan.prefill, pd_plan.decode, prompt_tokens=prompt,
                                         output_tokens=TYPICAL_OUTPUT_TOKENS)
    return PoolsConfig(policies=policies, min_decode_per_prefill=low_ratio, max_decode_per_prefill=high_ratio)


def decide_pools(observations: Mapping[Role, Observation], config: PoolsConfig) -> dict[Role, Decision]:
    """Each pool's desired gangs: its own policy on its own observation, the decode ITL objective, the ratio."""
    decisions = {role: decide(observations[role], config.policies[role]) for role in ROLES}
    decisions[DECODE] = _decode_short(observations[DECODE], config, decisions[DECODE])
    current = {role: _current(observations[role]) for role in ROLES}
    for _ in range(4):  # raising one pool can raise the other's floor once more; the counts are capped
        changed = False
        floor = {
            DECODE: math.ceil(decisions[PREFILL].desired_replicas * config.min_decode_per_prefill - 1e-9),
            PREFILL: math.ceil(decisions[DECODE].desired_replicas / config.max_decode_per_prefill - 1e-9),
        }
        for role in ROLES:
            bounded = _bounded(decisions[role], floor[role], current[role], config.policies[role], role)
            if bounded is not decisions[role]:
                decisions[role] = bounded
                changed = True
        if not changed:
            break
    return decisions


@dataclass(frozen=True)
class PoolsPolicy:
    """The per-pool policy as an autoscaler object, for the simulator (the policy itself is `decide_pools`)."""

    config: PoolsConfig
    name: str = "mimo-pd"

    def decide(self, observations: Mapping[Role, Observation]) -> Mapping[Role, Decision]:
        return decide_pools(observations, self.config)


def _current(observation: Observation) -> int:
    return sum(1 for g in observation.gangs if g.phase is not GangPhase.DRAINING)


def _decode_short(observation: Observation, config: PoolsConfig, decision: Decision) -> Decision:
    """More decode gangs when most ready ones saw a request's mean ITL p95 above the objective, or held requests
    queued (waiting for KV or a running slot) throughout the panic window."""
    policy = config.policies[DECODE]
    if decision.action is not Action.HOLD:
        return decision
    gangs = observation.gangs
    ready = [g.name for g in gangs if g.phase is GangPhase.READY]
    starting = sum(1 for g in gangs if g.phase is GangPhase.STARTING)
    current = len(ready) + starting
    if not ready or current >= policy.max_replicas:
        return decision
    start = observation.now - policy.panic_window_seconds
    worst: float | None = None
    missing = 0
    waiting = 0
    queued = 0.0
    for name in ready:
        window = [s for s in observation.samples.get(name, ()) if s.at > start]
        seen = [s.tpot_p95_seconds for s in window if s.tpot_p95_seconds is not None]
        if seen:
            worst = max(worst or 0.0, max(seen))
            missing += any(v > config.itl_slo_seconds for v in seen)
        if len(window) >= 2 and all(s.queue_requests >= 1 for s in window):
            waiting += 1
            queued += window[-1].queue_requests
    if decision.action is not Action.HOLD or starting:
        # A gang on its way is the answer to both; a queue is not moved to a new gang (the router does not move
        # queued requests), so more gangs for it would serve only new arrivals: one at a time, as for the TTFT SLO.
        return decision
    if 2 * waiting >= len(ready):
        return replace(
            decision,
            desired_replicas=current + 1,
            action=Action.SCALE_UP,
            reason=(f"{queued:g} request(s) queued for KV or a running slot on {waiting} of {len(ready)} ready "
                    f"decode gang(s) throughout {policy.panic_window_seconds:g}s: add 1"),
        )
    if worst is None or 2 * missing < len(ready):
        return decision
    return replace(
        decision,
        desired_replicas=current + 1,
        action=Action.SCALE_UP,
        reason=(f"ITL p95 {worst:g}s above {config.itl_slo_seconds:g}s on {missing} of {len(ready)} ready "
                f"decode gang(s): add 1"),
    )


def _bounded(decision: Decision, floor: int, current: int, policy: PolicyConfig, role: Role) -> Decision:
    """`decision` raised to `floor` gangs (capped at maxReplicas); a scale-down stops at the floor."""
    if decision.action is Action.NO_DATA:
        return decision
    floor = min(floor, policy.max_replicas)
    if decision.desired_replicas >= floor:
        return decision
    other = DECODE if role == PREFILL else PREFILL
    if floor > current:
        return replace(decision, desired_replicas=floor, action=Action.SCALE_UP, remove=None,
                       reason=f"{floor} {role} gang(s) to keep the ratio to the {other} pool's; "
                              f"{role}'s own policy: {decision.reason}")
    if floor < current:  # a smaller scale-down than the policy's own, down to the bound
        return replace(decision, desired_replicas=floor,
                       reason=f"down to {floor}, not {decision.desired_replicas}: the {other} pool needs at least "
                              f"{floor} {role} gang(s); {role}'s own policy: {decision.reason}")
    return replace(decision, desired_replicas=current, action=Action.HOLD, remove=None,
                   reason=f"holding at {current}: the {other} pool needs at least {floor} {role} gang(s); "
                          f"{role}'s own policy: {decision.reason}")
