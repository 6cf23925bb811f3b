"""Autoscaling: the policy that sizes a deployment in whole gangs, its baselines, and the simulator.

`policy` is pure and is what the operator's loop runs; `baselines`, `simulator` and `trace` exist so
that the policy can be measured in virtual time (`mimoctl simulate autoscaling`, bench/autoscaling.py).
"""

from mimo_operator.autoscaling.policy import (
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

__all__ = [
    "Action",
    "Decision",
    "Gang",
    "GangPhase",
    "MetricSample",
    "Observation",
    "PolicyConfig",
    "ReplicaCapacity",
    "Signals",
    "decide",
]
