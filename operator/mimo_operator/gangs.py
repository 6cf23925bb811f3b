"""Gangs as the operator sees them, and their health — pure.

A gang is one replica: a head pod and its member pods that together run one SGLang server. It is
all-or-nothing: SGLang cannot survive the loss of one rank, so one failed, deleted or long-unschedulable
pod fails the whole gang, and the whole gang is replaced.

Some troubles do not fail a gang, because replacing it would not help: a container the kubelet cannot start
(an image it cannot pull, a Secret that does not exist) stays as it is and is reported, and so does a pod
that stays Terminating long after its grace period (a finalizer, or a node that is gone).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mimo_operator import labels as L

__all__ = ["STUCK_TERMINATING_SECONDS", "GangHealth", "ObservedGang", "ObservedPod", "epoch", "gangs_from_pods",
           "health_of"]

# A pod still there this long after its deletion's deadline (its deletionTimestamp, which the API sets to when
# the deletion was asked plus the grace period) is stuck: a finalizer holds it, or its node is gone and no
# kubelet will confirm that it stopped. The kubelet kills at the deadline and reports within seconds.
STUCK_TERMINATING_SECONDS = 60.0

# The waiting reasons of a container on its way: the kubelet pulls its image or creates it. Any other reason
# means that it cannot start as things are (ErrImagePull, ImagePullBackOff, CreateContainerConfigError, ...).
_ON_ITS_WAY = frozenset({"ContainerCreating", "PodInitializing"})
# Waiting reasons no retry of the kubelet clears: the spec must change.
_PERMANENT = frozenset({"InvalidImageName", "ErrImageNeverPull"})
# Waiting reasons about the image, whose message is read with the image's name.
_IMAGE = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                    "RegistryUnavailable", "SignatureValidationFailed"})
# A pod's own reason when something outside the gang took it away: the kubelet's eviction under node
# pressure (Evicted), its preemption for a critical pod (Preempting), a node's graceful shutdown (Terminated,
# or NodeShutdown when the pod was refused during one), and the node controller of old clusters (NodeLost).
# Newer clusters also set the DisruptionTarget condition, read as well.
_DISRUPTIONS = frozenset({"Evicted", "Preempting", "NodeLost", "NodeShutdown", "Terminated"})


class GangHealth(enum.StrEnum):
    PENDING = "Pending"          # not every pod is scheduled yet
    STARTING = "Starting"        # every pod is placed; Ray joining, fabric check, weights loading
    READY = "Ready"              # every pod Ready, and the head's readiness is the engine's /health
    DRAINING = "Draining"        # out of the router, finishing in-flight requests
    FAILED = "Failed"            # a pod failed, vanished or stayed unschedulable: replace the gang
    TERMINATING = "Terminating"  # its pods are going


@dataclass(frozen=True)
class ObservedPod:
    name: str
    uid: str
    rank: int
    phase: str
    ready: bool
    deleting: bool
    node: str | None
    created: float                       # epoch seconds
    unschedulable: str | None = None     # the scheduler's message while it cannot place the pod
    terminated: str | None = None        # "exit code 137 (OOMKilled)" once a container ended
    ip: str | None = None
    ready_since: float | None = None     # when the pod last turned Ready (its condition's transition time)
    unready_since: float | None = None   # when the pod last turned not Ready, while it is not (likewise)
    gates: tuple[str, ...] = ()          # scheduling gates still on the pod (a queue such as Kueue's holds it)
    waiting_reason: str | None = None    # why a container cannot start (ImagePullBackOff, ...), as the kubelet says
    waiting: str | None = None           # that reason with its container and the kubelet's message
    disruption: str | None = None        # "Evicted: The node was low on resource: ..." when taken away from outside
    gone_by: float | None = None         # its deletionTimestamp: when its grace period ends, while it is deleted


@dataclass(frozen=True)
class ObservedGang:
    name: str
    replica: int
    revision: str
    attempt: int
    size: int                            # pods the gang should have (its plan's nodes per replica)
    pods: tuple[ObservedPod, ...]
    serving: bool = True                 # the head carries the router's serving label
    drain_started: float | None = None
    drain_reason: str | None = None
    pool: str = ""                       # prefill | decode in a disaggregated deployment; "" colocated
    malformed: str | None = None         # a label of its pods that is not what the operator wrote (edited by hand)

    @property
    def created(self) -> float:
        return min((p.created for p in self.pods), default=0.0)

    @property
    def nodes(self) -> list[str]:
        return sorted(p.node for p in self.pods if p.node)

    @property
    def ready_since(self) -> float | None:
        """Since when every pod has been Ready; None unless all are."""
        if not self.pods or not all(p.ready for p in self.pods):
            return None
        return max(p.ready_since if p.ready_since is not None else p.created for p in self.pods)

    @property
    def head(self) -> ObservedPod | None:
        return next((p for p in self.pods if p.rank == 0), None)


@dataclass(frozen=True)
class Health:
    """A gang's state and why. ``extra`` marks what the planner and the status read: ``unplaced`` (failed
    without being placed), ``disrupted`` (failed because something outside took a pod away), ``unschedulable``
    (the scheduler refuses it for now), ``cannot_start`` (the kubelet's reason a container cannot start),
    ``permanent`` (no retry clears that reason), ``stuck`` (a pod stays Terminating long after its grace period)."""

    state: GangHealth
    reason: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        """Whether the gang needs a person's attention, so that the Degraded condition names it."""
        return self.state is GangHealth.FAILED or any(
            self.extra.get(k) for k in ("unschedulable", "cannot_start", "stuck"))


def health_of(gang: ObservedGang, now: float, unschedulable_deadline: float, missing_grace: float = 10.0,
              gated_deadline: float | None = None, start_deadline: float | None = None) -> Health:
    """Classify a gang. ``unschedulable_deadline``: seconds a pod may stay unschedulable before the
    gang counts as failed (the scheduler's reason is carried either way). ``gated_deadline``: the same for
    a gang its queue holds (scheduling gates), None for no limit: a gang waits its turn for quota.
    ``start_deadline``: seconds from its pods' creation after which a gang that makes no progress by itself (a
    pod no scheduler answers for, a pod placed that never turns Ready) counts as failed, None for no limit; a
    gang waiting on a reason someone must act on (an image, a Secret) is kept and named instead."""
    pods = gang.pods
    if pods and all(p.deleting for p in pods):
        stuck = [p for p in pods if p.gone_by is not None and now - p.gone_by > STUCK_TERMINATING_SECONDS]
        if stuck:
            worst = min(stuck, key=lambda p: p.gone_by or 0.0)
            more = f" ({len(stuck) - 1} more pods of the gang likewise)" if len(stuck) > 1 else ""
            return Health(GangHealth.TERMINATING,
                          f"pod {worst.name} on node {worst.node or '(none)'} is still terminating "
                          f"{now - (worst.gone_by or now):.0f} s after its grace period ended: a finalizer holds it, "
                          f"or its node is gone{more}", {"stuck": True})
        return Health(GangHealth.TERMINATING, "its pods are being deleted")
    if gang.malformed:
        return Health(GangHealth.FAILED, f"its pods' labels were edited ({gang.malformed}): the gang is replaced")
    ranked = sorted(pods, key=lambda p: p.rank)
    # A pod taken away from outside (evicted, preempted, its node lost) is why its gang failed, even when a
    # lower rank ended first because it lost its peer.
    for p in ranked:
        if p.disruption and (p.phase in ("Failed", "Succeeded") or p.deleting):
            return Health(GangHealth.FAILED, f"pod {p.name} (rank {p.rank}) on node {p.node or '(none)'} "
                          f"{'was deleted' if p.phase not in ('Failed', 'Succeeded') else 'ended'}: {p.disruption}",
                          {"disrupted": True})
    for p in ranked:
        if p.phase in ("Failed", "Succeeded"):
            return Health(GangHealth.FAILED, f"pod {p.name} (rank {p.rank}) ended: {p.terminated or p.phase}")
        if p.deleting:
            return Health(GangHealth.FAILED, f"pod {p.name} (rank {p.rank}) was deleted")
    present = {p.rank for p in pods}
    missing = sorted(set(range(gang.size)) - present)
    if missing and now - gang.created > missing_grace:
        return Health(GangHealth.FAILED, f"rank(s) {', '.join(map(str, missing))} of {gang.size} missing")
    if gang.drain_started is not None:
        return Health(GangHealth.DRAINING, gang.drain_reason or "draining")
    waiting = [p for p in pods if p.node is None]
    if waiting or missing:
        blocked = [p for p in waiting if p.unschedulable]
        if blocked:
            worst = min(blocked, key=lambda p: p.created)
            message = f"pod {worst.name} cannot be scheduled: {worst.unschedulable}"
            if now - worst.created > unschedulable_deadline:
                return Health(GangHealth.FAILED, f"{message} (for more than {unschedulable_deadline:.0f} s)",
                              {"unplaced": True})
            return Health(GangHealth.PENDING, message, {"unschedulable": True})
        gated = [p for p in waiting if p.gates]
        if gated:
            # Held before the scheduler, by a queue (Kueue's admission gate): it waits its turn for quota.
            first = min(gated, key=lambda p: p.created)
            message = (f"{len(waiting)} of {gang.size} pods wait for their scheduling gate(s) "
                       f"{', '.join(sorted({g for p in gated for g in p.gates}))} (admission by the gang's queue)")
            if gated_deadline is not None and now - first.created > gated_deadline:
                return Health(GangHealth.FAILED, f"{message} for more than {gated_deadline:.0f} s", {"unplaced": True})
            return Health(GangHealth.PENDING, message)
        message = f"{len(waiting) + len(missing)} of {gang.size} pods not yet scheduled"
        if start_deadline is not None and waiting and now - gang.created > start_deadline:
            # No Unschedulable condition either: no scheduler has looked at them (one named but not running).
            return Health(GangHealth.FAILED, f"{message} {now - gang.created:.0f} s after their creation, and no "
                          f"scheduler has said why (is the scheduler of pod {waiting[0].name} running?)",
                          {"unplaced": True})
        return Health(GangHealth.PENDING, message)
    cannot = [p for p in pods if p.waiting_reason and not p.ready]
    if cannot:
        # Kept, not replaced: a new gang would pull the same image and miss the same Secret. The kubelet keeps
        # trying, so a registry back up or a Secret created lets it start without anyone acting on the gang.
        first = cannot[0]
        permanent = first.waiting_reason in _PERMANENT
        more = f" ({len(cannot) - 1} more pods of the gang likewise)" if len(cannot) > 1 else ""
        return Health(GangHealth.STARTING,
                      f"pod {first.name} (rank {first.rank}) on node {first.node} cannot start: {first.waiting}"
                      + (" (no retry clears this: the spec must change)" if permanent else "") + more,
                      {"cannot_start": first.waiting_reason, "permanent": permanent})
    not_ready = [p for p in pods if not p.ready]
    # Not Ready since its start, or since it last was (a gang that served and whose engine then hung): either way,
    # for longer than a start may take. A readiness check that fails for a while under load is far shorter.
    late = [p for p in not_ready if start_deadline is not None
            and now - max(p.created, p.unready_since or 0.0) > start_deadline]
    if late:
        p = late[0]
        since = max(p.created, p.unready_since or 0.0)
        return Health(GangHealth.FAILED, f"pod {p.name} (rank {p.rank}) on node {p.node} has not been Ready for "
                      f"{now - since:.0f} s, past the {start_deadline:.0f} s a start may take "
                      f"({p.phase}{', its containers not started' if p.phase == 'Pending' else ''})")
    if not_ready:
        head = gang.head
        if head is not None and not head.ready and len(not_ready) == 1:
            return Health(GangHealth.STARTING, "every pod runs; waiting for the engine on the head to serve")
        return Health(GangHealth.STARTING, f"{len(pods) - len(not_ready)} of {gang.size} pods ready")
    return Health(GangHealth.READY, f"{gang.size} pods ready on {', '.join(gang.nodes)}")


def _ready(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def _ready_since(pod: Mapping[str, Any]) -> float | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True" and c.get("lastTransitionTime"):
            return epoch(c["lastTransitionTime"])
    return None


def _unready_since(pod: Mapping[str, Any]) -> float | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") != "True" and c.get("lastTransitionTime"):
            return epoch(c["lastTransitionTime"])
    return None


def _unschedulable(pod: Mapping[str, Any]) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return str(c.get("message") or "Unschedulable")
    return None


def _terminated(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status") or {}
    init = [cs for cs in status.get("initContainerStatuses") or []
            if ((cs.get("state") or {}).get("terminated") or {}).get("exitCode", 0) != 0]
    for cs in [*(status.get("containerStatuses") or []), *init]:
        t = (cs.get("state") or {}).get("terminated")
        if t:
            reason = t.get("reason") or ""
            # The head writes why a gang failed (a fabric check's verdict with its numbers) to its
            # termination message; a status line keeps its first line.
            said = str(t.get("message") or "").strip().splitlines()
            return (f"exit code {t.get('exitCode')}" + (f" ({reason})" if reason else "")
                    + (f": {said[0][:1000]}" if said else ""))
    # No container ended: the pod failed as a whole (the kubelet refused to admit it, say), and says why.
    if status.get("reason"):
        return _reason_text(status.get("reason"), status.get("message"))
    return None


def _waiting(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """The kubelet's reason a container of the pod cannot start, and that reason with the container and the
    message (init containers first: they run first)."""
    status = pod.get("status") or {}
    for kind, statuses in (("init container", status.get("initContainerStatuses")),
                           ("container", status.get("containerStatuses"))):
        for cs in statuses or []:
            w = (cs.get("state") or {}).get("waiting") or {}
            reason = str(w.get("reason") or "")
            if not reason or reason in _ON_ITS_WAY:
                continue
            message = str(w.get("message") or "").strip()
            image = str(cs.get("image") or "")
            if reason in _IMAGE and image and image not in message:
                message = f"{message} (image {image})" if message else f"image {image}"
            return reason, f"{kind} {cs.get('name', '')}: {_reason_text(reason, message)}"
    return None


def _disruption(pod: Mapping[str, Any]) -> str | None:
    """What took the pod away from outside, from its own reason or its DisruptionTarget condition."""
    status = pod.get("status") or {}
    if status.get("reason") in _DISRUPTIONS:
        return _reason_text(status["reason"], status.get("message"))
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return _reason_text(c.get("reason") or "DisruptionTarget", c.get("message"))
    return None


def _reason_text(reason: Any, message: Any) -> str:
    said = str(message or "").strip().splitlines()
    return f"{reason}: {said[0][:1000]}" if said else str(reason)


def epoch(timestamp: str | None) -> float:
    """Epoch seconds of an API timestamp (0 when absent)."""
    if not timestamp:
        return 0.0
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


_NUMBERED = (L.LABEL_RANK, L.LABEL_REPLICA, L.LABEL_ATTEMPT, L.LABEL_GANG_SIZE)


def _numbers(meta: Mapping[str, Any], malformed: list[str]) -> tuple[int, int, int, int | None] | None:
    """(rank, replica, attempt, gang size) from a pod's labels; None, with why in ``malformed``, when one of them
    is not a whole number."""
    labels = meta.get("labels") or {}
    values: list[int | None] = []
    for key in _NUMBERED:
        value = labels.get(key)
        if value is None:
            values.append(None)
        elif value.isdigit():
            values.append(int(value))
        else:
            malformed.append(f"pod {meta.get('name')}: {key}={value!r} is not a number")
            return None
    rank, replica, attempt, size = values
    return rank or 0, replica or 0, attempt or 0, size


def _epoch_or_none(timestamp: str) -> float | None:
    try:
        return epoch(timestamp)
    except ValueError:
        return None


def gangs_from_pods(pods: Iterable[Mapping[str, Any]], sizes: Mapping[str, int] | None = None) -> list[ObservedGang]:
    """Group the deployment's engine pods into gangs by their gang label.

    ``sizes`` gives each gang's expected pod count when known (from its launch plan); otherwise
    the size label on the pods is used.
    """
    by_gang: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        gang = (pod["metadata"].get("labels") or {}).get(L.LABEL_GANG)
        if gang:
            by_gang.setdefault(gang, []).append(pod)
    gangs = []
    for name, members in sorted(by_gang.items()):
        # Only the pods the operator made are the gang's: "<gang>-<rank>" (a pod copied with its labels, as
        # `kubectl debug --copy-to` does, is not a rank of it). A label that is not a number was edited by hand:
        # the gang is failed (and replaced), never a reason for the whole deployment's reconcile to fail.
        malformed: list[str] = []
        numbers = [_numbers(pod["metadata"], malformed) for pod in members]
        members = [pod for pod, n in zip(members, numbers, strict=True)
                   if n is not None and pod["metadata"]["name"] == L.pod_name(name, n[0])]
        sized = [n[3] for n in numbers if n is not None and n[3] is not None]
        size = (sizes or {}).get(name) or (sized[0] if sized else len(members))
        # A rank past the gang's size is no rank of it either (a pod made by hand with the gang's labels).
        members = [pod for pod in members if int(pod["metadata"]["labels"].get(L.LABEL_RANK, "0")) < size]
        if not members:
            if malformed:
                slot = name.rsplit("-", 2)[-2] if name.count("-") >= 2 else ""
                gangs.append(ObservedGang(name=name, replica=int(slot) if slot.isdigit() else 0, revision="",
                                          attempt=0, size=size, pods=(), malformed="; ".join(malformed)))
            continue
        first = members[0]["metadata"]
        labels = first.get("labels") or {}
        observed = []
        head_meta: Mapping[str, Any] = {}
        for pod in members:
            meta, status = pod["metadata"], pod.get("status") or {}
            rank = int((meta.get("labels") or {}).get(L.LABEL_RANK, "0"))
            if rank == 0:
                head_meta = meta
            waiting = _waiting(pod)
            deleted = meta.get("deletionTimestamp")
            observed.append(ObservedPod(
                name=meta["name"], uid=meta.get("uid", ""), rank=rank, phase=status.get("phase", "Pending"),
                ready=_ready(pod), deleting=bool(deleted),
                node=(pod.get("spec") or {}).get("nodeName"), created=epoch(meta.get("creationTimestamp")),
                unschedulable=_unschedulable(pod), terminated=_terminated(pod), ip=status.get("podIP"),
                ready_since=_ready_since(pod), unready_since=_unready_since(pod),
                gates=tuple(str(g.get("name")) for g in (pod.get("spec") or {}).get("schedulingGates") or []),
                waiting_reason=waiting[0] if waiting else None, waiting=waiting[1] if waiting else None,
                disruption=_disruption(pod), gone_by=epoch(deleted) if deleted else None,
            ))
        annotations = head_meta.get("annotations") or {}
        drain = annotations.get(L.ANNOTATION_DRAIN_STARTED)
        drain_at = _epoch_or_none(drain) if drain else None
        if drain and drain_at is None:
            malformed.append(f"pod {head_meta.get('name')}: {L.ANNOTATION_DRAIN_STARTED}={drain!r} is not a time")
        gangs.append(ObservedGang(
            name=name, replica=int(labels.get(L.LABEL_REPLICA, "0")), revision=labels.get(L.LABEL_REVISION, ""),
            attempt=int(labels.get(L.LABEL_ATTEMPT, "0")), size=size, malformed="; ".join(malformed) or None,
            pods=tuple(sorted(observed, key=lambda p: p.rank)),
            serving=(head_meta.get("labels") or {}).get(L.LABEL_SERVING) == "true",
            drain_started=drain_at,
            drain_reason=annotations.get(L.ANNOTATION_DRAIN_REASON),
            pool=labels.get(L.LABEL_POOL, ""),
        ))
    return gangs
