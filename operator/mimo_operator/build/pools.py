"""The pools of a deployment: one (colocated, unnamed) or two (prefill and decode, spec.disaggregation).

Every gang belongs to one pool and lives the lifecycle of today's gangs within it (slots, budgets, drains,
surge rollouts); the pools differ in their plan, their gang names (``<deployment>-<role>-<slot>-<hash>``)
and the ``mimo-operator.io/pool`` label their objects carry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mimo_operator.build.options import BuildContext
from mimo_operator.planner_pd import PoolPlan, Role

__all__ = ["PD_ROLES", "Pool", "pool_context", "pools_of"]

PD_ROLES: tuple[Role, ...] = ("prefill", "decode")


@dataclass(frozen=True)
class Pool:
    """One pool as the reconciler runs it: its builders' context and its replica bounds."""

    role: Role | None  # None: the colocated deployment's one pool
    ctx: BuildContext
    replicas: int
    min_replicas: int | None
    max_replicas: int | None

    @property
    def key(self) -> str:
        """The pool's name in status (``status.pools.<key>``) and in memory: its role, or "" when colocated."""
        return self.role or ""


def pool_context(ctx: BuildContext, role: Role) -> BuildContext:
    """The builders' context for one side of a disaggregated deployment: its plan and its role."""
    if ctx.disaggregated is None:
        raise ValueError("pool_context needs a disaggregated deployment")
    side: PoolPlan = getattr(ctx.disaggregated, role)
    return dataclasses.replace(ctx, plan=side.plan, pool=role)


def pools_of(ctx: BuildContext) -> list[Pool]:
    """The deployment's pools, in the order they are reconciled (prefill before decode)."""
    pd = ctx.disaggregated
    if pd is None:
        autoscaling = ctx.spec.autoscaling
        return [Pool(role=None, ctx=ctx, replicas=ctx.spec.replicas, min_replicas=autoscaling.min_replicas,
                     max_replicas=autoscaling.max_replicas)]
    pools = []
    for role in PD_ROLES:
        side: PoolPlan = getattr(pd, role)
        pools.append(Pool(role=role, ctx=pool_context(ctx, role), replicas=side.replicas,
                          min_replicas=side.min_replicas, max_replicas=side.max_replicas))
    return pools
