"""Builders: pure functions from a deployment and its plan to the complete Kubernetes objects it needs.
No builder calls the API; the reconciler applies what they return."""

from mimo_operator.build.gang import gang_network_policy, gang_objects, launch_plan, owner_reference, template_of
from mimo_operator.build.options import BuildContext, OperatorIdentity, WorkerPorts
from mimo_operator.build.pools import Pool, pool_context, pools_of
from mimo_operator.build.revision import OperatorUpgrade, operator_upgrade, outdated_marker, revision_of
from mimo_operator.build.shared import router_url, shared_objects

__all__ = [
    "BuildContext",
    "OperatorIdentity",
    "OperatorUpgrade",
    "Pool",
    "WorkerPorts",
    "gang_network_policy",
    "gang_objects",
    "launch_plan",
    "operator_upgrade",
    "outdated_marker",
    "owner_reference",
    "pool_context",
    "pools_of",
    "revision_of",
    "router_url",
    "shared_objects",
    "template_of",
]
