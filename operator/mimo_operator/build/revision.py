"""Revisions: which gangs a deployment's spec wants, and which pods an older operator rendered — pure.

Two fingerprints, for two questions:

- The **revision** (``revision_of``) answers "did the user ask for different pods?". It is a versioned hash
  of the user's inputs that change a pod (model, hardware, network, parallelism, engine, scheduling, pod
  template), as LeaderWorkerSet hashes its template into a ControllerRevision. It is not a hash of what the
  builders make of those inputs: an operator upgrade that renders one byte differently must not roll every
  gang of every deployment on its own. Settings that do not change a pod (replicas, autoscaling with its
  drain timeout, router, rollout) are left out, so editing them never restarts a gang. A changed revision
  rolls the gangs (``steps``).
- The **template** (``template_of``) answers "would this operator render the gang's objects differently?".
  It hashes the builders' output for the deployment with placeholder identity and is stamped on every gang
  object (``labels.LABEL_TEMPLATE``). A gang of the current revision whose template differs from this
  operator's was rendered by an older operator (or one configured differently): it keeps running, a
  replacement after a failure gets this operator's pods, and status says the pods are outdated
  (``operator_upgrade_condition``) until the user opts into a roll with ``spec.rollout.operatorUpgrades:
  Automatic``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mimo_operator import labels as L
from mimo_operator.build.gang import template_of
from mimo_operator.build.options import BuildContext
from mimo_operator.spec import DeploymentSpec

__all__ = [
    "NON_POD_FIELDS",
    "NON_POD_POOL_FIELDS",
    "NON_POD_SUBFIELDS",
    "OPERATOR_UPGRADE_CONDITION",
    "POD_FIELDS",
    "REVISION_SCHEMA",
    "OperatorUpgrade",
    "operator_upgrade",
    "outdated_marker",
    "pool_revision_inputs",
    "revision_inputs",
    "revision_of",
]

# Bumped only when the meaning of the hashed inputs changes (a field moves between the two sets below, or
# the canonical form changes): every gang then rolls once, which is the point of the bump. The prefix also
# tells a person reading a label which scheme made it.
REVISION_SCHEMA = "r1"

# Top-level spec fields that change what a gang's pods run or where they run.
# disaggregation has no CRD default: absent (colocated) it is not in the stored object and hashes as before.
POD_FIELDS: tuple[str, ...] = ("model", "hardware", "network", "parallelism", "engine", "scheduling", "pod_template",
                               "disaggregation")
# Top-level spec fields that never restart a gang: how many gangs, when to scale and how long a drain may
# take (read when a drain starts), the router in front, how a rollout proceeds.
NON_POD_FIELDS: tuple[str, ...] = ("replicas", "autoscaling", "router", "rollout")
# Fields inside POD_FIELDS that change no pod: whether gangs wait for the weights, and their cleanup.
NON_POD_SUBFIELDS: tuple[tuple[str, ...], ...] = (("model", "cache", "gate_on_weights_ready"),
                                                  ("model", "cache", "keep_after_delete"))

# The condition status carries while gangs of the current revision run pods this operator renders otherwise.
OPERATOR_UPGRADE_CONDITION = "OperatorUpgradeAvailable"


def revision_inputs(spec: DeploymentSpec) -> dict[str, Any]:
    """The inputs that change a pod, as the stored object has them: the fields it sets, by value.

    Never compared with this operator's defaults: the API server persists the CRD's defaults when an object
    is created, so a stored spec keeps the defaults of its day (the engine image of the release it was
    created under, say), and a later operator with other defaults computes the same revision. A default a
    new operator renders differently shows up in the template instead (``template_of``), which rolls nothing
    until the user opts in. The API server also fills in defaults when it reads an object, so a pod field
    added in a later release must not carry a CRD default (its default lives in ``spec``): it would change
    the revision of every stored deployment (``tests/unit/test_revision.py`` pins the CRD's defaults).
    """
    dumped: dict[str, Any] = spec.model_dump(mode="json", by_alias=False, exclude_unset=True,
                                             include=set(POD_FIELDS))
    for path in NON_POD_SUBFIELDS:
        parent: Any = dumped
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    pruned = _prune(dumped)
    return pruned if isinstance(pruned, dict) else {}


# Fields of a pool (spec.disaggregation.<role>) that change no pod: how many gangs the pool runs.
NON_POD_POOL_FIELDS: tuple[str, ...] = ("replicas", "min_replicas", "max_replicas")


def pool_revision_inputs(spec: DeploymentSpec, role: str) -> dict[str, Any]:
    """The inputs that change a pod of one pool of a disaggregated deployment: the deployment's, with only
    this pool's section of spec.disaggregation (the other pool's gangs are planned apart) and without its
    replica counts, so that scaling or reshaping one pool never rolls the other."""
    inputs = revision_inputs(spec)
    pd = dict(inputs.get("disaggregation") or {})
    own = {k: v for k, v in (pd.get(role) or {}).items() if k not in NON_POD_POOL_FIELDS}
    for side in ("prefill", "decode"):
        pd.pop(side, None)
    inputs["disaggregation"] = {**pd, "pool": role, **({role: own} if own else {})}
    return inputs


def revision_of(ctx: BuildContext) -> str:
    """``r1-<10 hex>``: the revision of the deployment's gangs (a label value and part of gang names); a
    pool's own (``pool_revision_inputs``) for a gang of a disaggregated deployment."""
    inputs = pool_revision_inputs(ctx.spec, ctx.pool) if ctx.pool else revision_inputs(ctx.spec)
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return f"{REVISION_SCHEMA}-{L.short_hash(canonical, length=10)}"


def _prune(value: Any) -> Any:
    """Drop empty mappings left by sections whose fields are all at their defaults."""
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v != {}}
    return value


def outdated_marker(revision: str) -> str:
    """The revision a gang outdated by the operator's template is treated as having once the user opted
    into operator upgrades: never equal to a real revision, so the rollout replaces it like any other."""
    return f"{revision}+template"


@dataclass(frozen=True)
class OperatorUpgrade:
    """Gangs of the current revision whose objects this operator would render differently."""

    template: str                    # this operator's template for the deployment
    outdated: tuple[str, ...]        # gang names, sorted
    automatic: bool                  # spec.rollout.operatorUpgrades is Automatic: they are rolled

    def condition(self) -> dict[str, str]:
        """``OperatorUpgradeAvailable``: True while such gangs run (``type``/``status``/``reason``/``message``)."""
        if not self.outdated:
            return {"type": OPERATOR_UPGRADE_CONDITION, "status": "False", "reason": "PodsCurrent",
                    "message": "every gang runs the pods this operator renders"}
        names = ", ".join(self.outdated[:8]) + (f" and {len(self.outdated) - 8} more" if len(self.outdated) > 8 else "")
        if self.automatic:
            return {"type": OPERATOR_UPGRADE_CONDITION, "status": "True", "reason": "RollingToOperatorTemplate",
                    "message": f"pods outdated by the operator's template: {names}; rolling them "
                               "(spec.rollout.operatorUpgrades: Automatic)"}
        return {"type": OPERATOR_UPGRADE_CONDITION, "status": "True", "reason": "PodsOutdatedByOperatorTemplate",
                "message": f"pods outdated by the operator's template: {names}; they keep running (a replacement "
                           "after a failure gets the new pods); set spec.rollout.operatorUpgrades: Automatic to "
                           "roll them now"}


def operator_upgrade(ctx: BuildContext, revision: str, pods: Iterable[Mapping[str, Any]]) -> OperatorUpgrade:
    """Which gangs of ``revision`` an older (or differently configured) operator rendered, from their
    pods' labels. A pod without the template label predates templates: it counts as outdated."""
    template = template_of(ctx)
    outdated = set()
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(L.LABEL_REVISION) == revision and labels.get(L.LABEL_TEMPLATE) != template:
            outdated.add(labels.get(L.LABEL_GANG, ""))
    outdated.discard("")
    return OperatorUpgrade(template=template, outdated=tuple(sorted(outdated)),
                           automatic=ctx.spec.rollout.operator_upgrades == "Automatic")
