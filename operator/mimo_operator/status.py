"""The deployment's status — pure: what the user reads in ``kubectl get mimo`` and ``kubectl describe``.

Conditions follow Kubernetes' conventions (type, status, reason, message, lastTransitionTime,
observedGeneration); every refusal and every wait carries a reason a person can act on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from mimo_operator import labels as L
from mimo_operator.gangs import GangHealth, ObservedGang
from mimo_operator.plan import Plan
from mimo_operator.steps import Outcome, ReplicaRecord
from mimo_operator.weights import WeightsState

__all__ = ["condition", "merge_conditions", "plan_summary", "records_from_status", "records_to_status",
           "refused_status", "running_status", "selector"]


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
    }


def records_from_status(status: Mapping[str, Any] | None) -> dict[int, ReplicaRecord]:
    records = {}
    for item in (status or {}).get("replicaRecords") or []:
        records[int(item["replica"])] = ReplicaRecord(
            attempt=int(item.get("attempt", 0)), restarts=int(item.get("restarts", 0)),
            next_attempt_at=float(item.get("nextAttemptAt", 0.0)), failed=bool(item.get("failed", False)),
            last_failure=str(item.get("lastFailure", "")), last_failed_gang=str(item.get("lastFailedGang", "")),
            surge_blocked_revision=str(item.get("surgeBlockedRevision", "")),
        )
    return records


def records_to_status(records: Mapping[int, ReplicaRecord]) -> list[dict[str, Any]]:
    out = []
    for replica, rec in sorted(records.items()):
        d = asdict(rec)
        out.append({"replica": replica, "attempt": d["attempt"], "restarts": d["restarts"],
                    "nextAttemptAt": d["next_attempt_at"], "failed": d["failed"], "lastFailure": d["last_failure"],
                    "lastFailedGang": d["last_failed_gang"], "surgeBlockedRevision": d["surge_blocked_revision"]})
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


def running_status(*, old: Mapping[str, Any], name: str, generation: int, replicas: int, plan: Plan,
                   revision: str, gangs: Sequence[ObservedGang], outcome: Outcome, endpoint: str | None,
                   autoscaling: Mapping[str, Any] | None = None, weights: WeightsState | None = None,
                   operator_upgrade: Mapping[str, str] | None = None) -> dict[str, Any]:
    health = outcome.health
    in_range = [g for g in gangs if g.replica < replicas]
    ready = [g for g in in_range if health[g.name].state is GangHealth.READY]
    current = [g for g in in_range if g.revision == revision]
    updated_ready = [g for g in ready if g.revision == revision]
    failed_replicas = [r for r, rec in outcome.records.items() if rec.failed and r < replicas]
    troubles = [f"gang {g.name}: {health[g.name].reason}" for g in gangs
                if health[g.name].state is GangHealth.FAILED
                or (health[g.name].state is GangHealth.PENDING and health[g.name].extra.get("unschedulable"))]
    troubles += [w for w in outcome.waiting if "failed" in w or "back-off" in w]
    settled = len(updated_ready) == replicas and len(gangs) == replicas and not outcome.steps
    progressing_bits = [f"{type(s).__name__} {getattr(s, 'gang', getattr(s, 'replica', ''))}: {s.reason}"
                        for s in outcome.steps] + [w for w in outcome.waiting if w not in troubles]

    if failed_replicas:
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
        condition("Degraded", bool(troubles or failed_replicas), "ReplicaFailures" if troubles or failed_replicas
                  else "Healthy", "; ".join(troubles) or "no failures", generation),
    ]
    if weights is not None:
        c = weights.condition()
        conditions.append(condition(c["type"], c["status"] == "True", c["reason"], c["message"], generation))
    if operator_upgrade is not None:
        # build.OperatorUpgrade.condition(): gangs of this revision that another operator version rendered.
        c = operator_upgrade
        conditions.append(condition(c["type"], c["status"] == "True", c["reason"], c["message"], generation))
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
            }
            for g in sorted(gangs, key=lambda g: (g.replica, g.name))
        ],
        "replicaRecords": records_to_status(outcome.records),
        "conditions": merge_conditions(old.get("conditions") or [], conditions),
    }
