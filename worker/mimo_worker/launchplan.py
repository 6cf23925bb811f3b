"""Reading the launch plan in an engine pod. The schema is the operator's (``mimo_operator.launchplan``):
one model for the operator that writes the document and the worker that runs it.

The plan is read from ``$MIMO_LAUNCH_PLAN`` if set (tests, local pod processes), else from the pod's
downward-API mount (``/etc/mimo/launch/plan.json``). The full field list with an example is in ``docs/worker.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mimo_operator.launchplan import (
    DEFAULT_PLAN_PATH,
    HEAD_IP,
    LAUNCH_PLAN_KIND,
    LAUNCH_PLAN_VERSION,
    NODE_IP,
    Deadlines,
    DeploymentRef,
    EngineLaunch,
    FabricExpectation,
    GangInfo,
    LaunchPlan,
    LaunchPlanError,
    Ports,
    RankLaunch,
    example_plan,
    parse_plan,
    substitute,
)

__all__ = [
    "DEFAULT_PLAN_PATH",
    "ENV_PLAN_PATH",
    "HEAD_IP",
    "LAUNCH_PLAN_KIND",
    "LAUNCH_PLAN_VERSION",
    "NODE_IP",
    "Deadlines",
    "DeploymentRef",
    "EngineLaunch",
    "FabricExpectation",
    "GangInfo",
    "LaunchPlan",
    "LaunchPlanError",
    "Ports",
    "RankLaunch",
    "example_plan",
    "load_plan",
    "parse_plan",
    "substitute",
]

# Overrides DEFAULT_PLAN_PATH; set by tests and by local pod processes.
ENV_PLAN_PATH = "MIMO_LAUNCH_PLAN"


def load_plan(path: str | Path | None = None) -> LaunchPlan:
    """Read the plan from ``path``, else ``$MIMO_LAUNCH_PLAN``, else the ConfigMap mount."""
    where = Path(path or os.environ.get(ENV_PLAN_PATH) or DEFAULT_PLAN_PATH)
    try:
        text = where.read_text()
    except OSError as e:
        raise LaunchPlanError(f"cannot read the launch plan at {where}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LaunchPlanError(f"the launch plan at {where} is not JSON: {e}") from None
    return parse_plan(data)
