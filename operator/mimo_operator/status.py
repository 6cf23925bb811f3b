"""The deployment's status — pure: what the user reads in ``kubectl get mimo`` and ``kubectl describe``.

Conditions follow Kubernetes' conventions (type, status, reason, message, lastTransitionTime,
observedGeneration); every refusal and every wait carries a reason a person can act on.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from mimo_operator import labels as L
from mimo_operator.gangs import GangHealth, ObservedGang
from mimo_operator.plan import Plan
from mimo_operator.spec import DeploymentSpec
from mimo_operator.steps import Outcome, ReplicaRecord
from mimo_operator.weights import WeightsState

__all__ = [
    "condition",
    "disaggregated_status",
    "merge_conditions",
    "plan_summary",
    "records_from_status",
    "records_to_status",
    "refusal_from_api",
    "refusal_from_status",
    "refusal_text",
    "refused_status",
    "running_status",
    "selector",
    "spec_values",
]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message[:1000],
            "observedGeneration": generation}


def merge_conditions(old: Sequence[Mapping[str, Any]], new: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a condition's lastTransitionTime while its status does not change."""
    before = {c.get("type"): c for c in old}
    merged = []
    for c in new:
        prev = before.get(c["type"])
        stamp = prev.get("lastTransitionTime") if prev and prev.get("status") == c["status"] else None
        merged.append({**c, "lastTransitionTime": stamp or _now()})
    return merged


def selector(name: str) -> str:
    """The label selector of /scale: one head pod per replica, so HPA counts replicas, not pods."""
    return f"{L.LABEL_DEPLOYMENT}={name},{L.LABEL_ROLE}={L.ROLE_HEAD}"


def plan_summary(plan: Plan, revision: str) -> dict[str, Any]:
    return {
        "revision": revision,
        "nodesPerReplica": plan.nodes_per_replica,
        "gpusPerReplica": plan.gpus_per_replica,
        "tensorParallel": plan.tensor_parallel,
        "expertParallel": plan.expert_parallel,
        "attentionDataParallel": plan.attention_data_parallel,
        "kvCacheTokens": plan.kv.tokens,
        "maxConcurrentSequences": plan.max_concurrent_sequences(),
        "weightsBytes": plan.weights_bytes,
        "contextLength": plan.context_length,
        "startupSeconds": round(plan.startup.expected_seconds),
        # What the planner would have a person know: a setting that does nothing, a layout not yet verified.
        **({"warnings": list(plan.warnings)} if plan.warnings else {}),
    }


def records_from_status(status: Mapping[str, Any] | None) -> dict[int, ReplicaRecord]:
    records = {}
    for item in (status or {}).get("replicaRecords") or []:
        records[int(item["replica"])] = ReplicaRecord(
            attempt=int(item.get("attempt", 0)), restarts=int(item.get("restarts", 0)),
            next_attempt_at=float(item.get("nextAttemptAt", 0.0)), failed=bool(item.get("failed", False)),
            last_failure=str(item.get("lastFailure", "")), last_failed_gang=str(item.get("lastFailedGang", "")),
            surge_blocked_revision=str(item.get("surgeBlockedRevision", "")),
            revision=str(item.get("revision", "")),
        )
    return records


def records_to_status(records: Mapping[int, ReplicaRecord]) -> list[dict[str, Any]]:
    out = []
    for replica, rec in sorted(records.items()):
        d = asdict(rec)
        out.append({"replica": replica, "attempt": d["attempt"], "restarts": d["restarts"],
                    "nextAttemptAt": d["next_attempt_at"], "failed": d["failed"], "lastFailure": d["last_failure"],
                    "lastFailedGang": d["last_failed_gang"], "surgeBlockedRevision": d["surge_blocked_revision"],
                    "revision": d["revision"]})
    return out


def refused_status(old: Mapping[str, Any], generation: int, field: str, message: str, reason: str) -> dict[str, Any]:
    """An invalid spec or an impossible plan: no child is created, and the conditions say why."""
    text = f"{field}: {message}" if not message.startswith(field) else message
    return {
        "observedGeneration": generation,
        "phase": "Refused",
        "conditions": merge_conditions(old.get("conditions") or [], [
            condition("Planned", False, reason, text, generation),
            condition("Ready", False, reason, text, generation),
            condition("Progressing", False, reason, text, generation),
            condition("Degraded", True, reason, text, generation),
        ]),
    }


# Where a value the API refused in a child object came from in the spec: (kind or "" for any, the API's
# field path, the spec field). The first match wins; the builders decide which spec field feeds which
# object field, so this table follows them.
_REFUSED_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("", r"topologyKey", "spec.scheduling.topologyKey"),
    ("Pod", r"^metadata\.labels", "spec.podTemplate.labels"),
    ("Pod", r"^metadata\.annotations", "spec.podTemplate.annotations"),
    ("Pod", r"^spec\.nodeSelector", "spec.hardware.nodeSelector"),
    ("Pod", r"^spec\.tolerations", "spec.hardware.tolerations"),
    ("Pod", r"^spec\.(initContainers|containers)\[\d+\]\.image", "spec.engine.image"),
    ("Pod", r"^spec\.(initContainers|containers)\[\d+\]\.env", "spec.engine.env"),
    ("Pod", r"^spec\.(initContainers|containers)\[\d+\]\.resources", "spec.hardware"),
    ("Pod", r"^spec\.(initContainers|containers)\[\d+\]\.(command|args)", "spec.engine.extraArgs"),
    ("Pod", r"^spec\.(schedulerName|schedulingGroup)", "spec.scheduling.gangScheduler"),
    ("PodGroup", r"^spec\.", "spec.scheduling.gangScheduler"),
    ("Pod", r"^spec\.(hostname|subdomain)", "metadata.name"),
    ("", r"^metadata\.(name|labels|namespace)", "metadata.name"),
    ("", r"^spec\.selector", "metadata.name"),
)
_API_FIELD = re.compile(r"([A-Za-z][\w.\[\]]*): (?:Invalid|Required|Unsupported|Too long|Too many|Duplicate|"
                        r"Forbidden|Not found)")


def refusal_from_api(message: str, values: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """The spec field behind an API refusal (422) of a child object, from the API's message, e.g.
    ``Pod "d-0-1a2b3-0" is invalid: metadata.labels: Invalid value: "a b": ...``. When the message names
    no field path (an admission policy's own words), the spec field whose value it quotes
    (``values``: spec field → the user's values in it)."""
    kind = message.split(" ", 1)[0] if message else ""
    text = message[:1000]
    _, _, details = message.partition(" is invalid: ")
    paths = [m.group(1) for m in _API_FIELD.finditer(details or message)]
    for want_kind, pattern, spec_field in _REFUSED_FIELDS:
        if want_kind and want_kind.lower() not in (kind.lower(), kind.lower().rstrip("s")):
            continue
        if any(re.search(pattern, p) for p in paths):
            return {"field": spec_field, "kind": kind, "message": text}
    for spec_field, quoted in (values or {}).items():
        if any(len(v) >= 3 and v in message for v in quoted):
            return {"field": spec_field, "kind": kind, "message": text}
    return {"field": "spec", "kind": kind, "message": text}


def spec_values(spec: DeploymentSpec) -> dict[str, list[str]]:
    """The user's values that reach child objects, by spec field (for `refusal_from_api`), most specific
    first."""
    template, hardware = spec.pod_template, spec.hardware
    return {
        "spec.podTemplate.labels": [*(template.labels or {}), *(template.labels or {}).values()],
        "spec.podTemplate.annotations": list(template.annotations or {}),
        "spec.hardware.nodeSelector": [*(hardware.node_selector or {}), *(hardware.node_selector or {}).values()],
        "spec.scheduling.topologyKey": [spec.scheduling.topology_key or ""],
        "spec.scheduling.priorityClassName": [spec.scheduling.priority_class_name or ""],
        "spec.engine.image": [spec.engine.image],
    }


def refusal_from_status(status: Mapping[str, Any] | None, generation: int) -> dict[str, Any] | None:
    """The API's refusal of this generation's child objects, if one is recorded (it lifts when the spec
    changes: a new generation)."""
    refused = (status or {}).get("refusal")
    if isinstance(refused, Mapping) and int(refused.get("generation", -1)) == generation:
        return dict(refused)
    return None


def refusal_text(refused: Mapping[str, Any]) -> str:
    return f"{refused['field']}: {refused['kind']} refused by the API: {refused['message']}"


def running_status(*, old: Mapping[str, Any], name: str, generation: int, replicas: int, plan: Plan,
                   revision: str, gangs: Sequence[ObservedGang], outcome: Outcome, endpoint: str | None,
                   autoscaling: Mapping[str, Any] | None = None, weights: WeightsState | None = None,
                   operator_upgrade: Mapping[str, str] | None = None,
                   refused: Mapping[str, Any] | None = None,
                   fabric: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    health = outcome.health
    fabric = fabric or {}
    in_range = [g for g in gangs if g.replica in outcome.slots]
    ready = [g for g in in_range if health[g.name].state is GangHealth.READY]
    current = [g for g in in_range if g.revision == revision]
    updated_ready = [g for g in ready if g.revision == revision]
    failed_replicas = [r for r, rec in outcome.records.items() if rec.failed and r in outcome.slots]
    troubles = [f"gang {g.name}: {health[g.name].reason}" for g in gangs if health[g.name].degraded]
    troubles += [w for w in outcome.waiting if "failed" in w or "back-off" in w]
    # A failed replica tried again at the back-off cap has a gang again, and no wait says why it is Degraded.
    troubles += [f"replica {r} spent its restart budget ({outcome.records[r].restarts} failures; last: "
                 f"{outcome.records[r].last_failure}) and is being tried again at the back-off cap"
                 for r in failed_replicas if not any(w.startswith(f"replica {r} ") for w in outcome.waiting)]
    if refused:
        troubles.append(refusal_text(refused))
    # A gang whose pods stay Terminating long after their grace period is reported under Degraded, and does not
    # hold the deployment at Progressing once its replacement serves: nothing the operator does makes it go.
    counted = [g for g in gangs if not health[g.name].extra.get("stuck")]
    settled = len(updated_ready) == replicas and len(counted) == replicas and not outcome.steps
    progressing_bits = [f"{type(s).__name__} {getattr(s, 'gang', getattr(s, 'replica', ''))}: {s.reason}"
                        for s in outcome.steps] + [w for w in outcome.waiting if w not in troubles]

    if refused and not ready:
        phase = "Refused"
    elif failed_replicas:
        phase = "Degraded"
    elif settled:
        phase = "Ready"
    elif troubles:
        phase = "Degraded"
    else:
        phase = "Progressing" if ready else "Pending"
    conditions = [
        condition("Ready", (len(ready) >= replicas and replicas > 0) or (replicas == 0 and not gangs),
                  "AllReplicasReady" if len(ready) >= replicas else "ReplicasNotReady",
                  f"{len(ready)} of {replicas} replicas ready", generation),
        condition("Progressing", not settled, "Settled" if settled else "Reconciling",
                  "; ".join(progressing_bits) or "nothing to do", generation),
        condition("Degraded", bool(troubles or failed_replicas),
                  "ChildRefused" if refused else "ReplicaFailures" if troubles or failed_replicas else "Healthy",
                  "; ".join(troubles) or "no failures", generation),
        condition("ChildrenAccepted", not refused, "ChildRefused" if refused else "Accepted",
                  refusal_text(refused) if refused else "the API accepted every child object", generation),
    ]
    if weights is not None:
        c = weights.condition()
        conditions.append(condition(c["type"], c["status"] == "True", c["reason"], c["message"], generation))
    if operator_upgrade is not None:
        # build.OperatorUpgrade.condition(): gangs of this revision that another operator version rendered.
        u = operator_upgrade
        conditions.append(condition(u["type"], u["status"] == "True", u["reason"], u["message"], generation))
    scaling = dict(autoscaling or {})
    if weights is not None and weights.managed:
        scaling["weights"] = weights.status()
    if "autoscaling" in scaling:
        decision = scaling["autoscaling"]
        conditions.append(condition(
            "AutoscalingActive", decision["action"] != "NoData",
            "MissingMetrics" if decision["action"] == "NoData" else decision["action"], decision["reason"],
            generation))
    return {
        **scaling,
        "observedGeneration": generation,
        "phase": phase,
        "replicas": len({g.replica for g in in_range}),
        "desiredReplicas": replicas,
        "nodes": replicas * plan.nodes_per_replica,
        "readyReplicas": len(ready),
        "updatedReplicas": len({g.replica for g in current}),
        "selector": selector(name),
        "endpoint": endpoint,
        "plan": plan_summary(plan, revision),
        "gangs": [
            {
                "name": g.name, "index": g.replica, "revision": g.revision, "attempt": g.attempt,
                "phase": health[g.name].state.value, "message": health[g.name].reason,
                "pods": len(g.pods), "readyPods": sum(1 for p in g.pods if p.ready),
                "podNames": [p.name for p in g.pods], "nodes": g.nodes,
                "leader": g.head.name if g.head else "",
                **({"fabric": dict(fabric[g.name])} if g.name in fabric else {}),
            }
            for g in sorted(gangs, key=lambda g: (g.replica, g.name))
        ],
        "replicaRecords": records_to_status(outcome.records),
        "pools": None,  # a deployment that was disaggregated before
        "refusal": dict(refused) if refused else None,
        "conditions": merge_conditions(old.get("conditions") or [], conditions),
    }


# How bad a phase is, for a deployment of several pools: it is as far along as its worst pool.
_PHASE_ORDER = ("Refused", "Degraded", "Pending", "Progressing", "Ready")


def disaggregated_status(*, old: Mapping[str, Any], name: str, generation: int, pools: Mapping[str, Mapping[str, Any]],
                         endpoint: str | None, weights: WeightsState | None = None,
                         refused: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A disaggregated deployment's status from its pools' (each a ``running_status``): every pool's own
    under ``pools.<role>``, and the deployment's phase, counts, gangs and conditions over both.

    Ready only when every pool is: a PD deployment with no prefill gang, or no decode gang, serves nothing.
    """
    shown: dict[str, dict[str, Any]] = {}
    for role, pool in pools.items():
        shown[role] = {k: pool[k] for k in ("phase", "replicas", "desiredReplicas", "nodes", "readyReplicas",
                                            "updatedReplicas", "plan",
                                            "replicaRecords", "conditions", "autoscaling", "lastScaleDecision",
                                            "kvCacheUsage", "queue") if k in pool}
    phase = min((p["phase"] for p in pools.values()), key=_PHASE_ORDER.index, default="Pending")
    conditions = []
    for kind in ("Ready", "Progressing", "Degraded", "ChildrenAccepted"):
        parts = [(role, next(c for c in p["conditions"] if c["type"] == kind)) for role, p in pools.items()]
        # Ready and ChildrenAccepted hold when they hold in every pool; Progressing and Degraded in any.
        every = kind in ("Ready", "ChildrenAccepted")
        ok = all(c["status"] == "True" for _, c in parts) if every else any(c["status"] == "True" for _, c in parts)
        deciding = [c for _, c in parts if (c["status"] == "True") == ok] or [c for _, c in parts]
        conditions.append(condition(kind, ok, deciding[0]["reason"],
                                    "; ".join(f"{role}: {c['message']}" for role, c in parts), generation))
    if weights is not None:
        c = weights.condition()
        conditions.append(condition(c["type"], c["status"] == "True", c["reason"], c["message"], generation))
    gangs = [{**g, "pool": role} for role, p in pools.items() for g in p.get("gangs") or []]
    return {
        "observedGeneration": generation,
        "phase": phase,
        **{k: sum(int(p.get(k) or 0) for p in pools.values())
           for k in ("replicas", "desiredReplicas", "nodes", "readyReplicas", "updatedReplicas")},
        "selector": selector(name),
        "endpoint": endpoint,
        "pools": shown,
        "gangs": gangs,
        # The colocated fields a deployment had before it turned disaggregated go (a merge patch keeps
        # what it does not name).
        "plan": None,
        "replicaRecords": None,
        "refusal": dict(refused) if refused else None,
        "conditions": merge_conditions(old.get("conditions") or [], conditions),
    }
