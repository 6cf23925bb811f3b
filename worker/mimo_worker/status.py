"""The head's view of its gang: the status document behind ``GET /status`` and the worker's own metrics.

The head's lifecycle writes here; the HTTP handlers only read. Everything lives in one object so that the
document and the metrics never disagree. The metrics use a private registry: the head serves them
appended to the engine's ``/metrics``, and must not drag in the process-wide default collectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info, generate_latest

from mimo_worker.fabric import FabricReport, FabricVerdict
from mimo_worker.launchplan import LaunchPlan

__all__ = ["PHASES", "DrainProgress", "GangStatus", "Phase", "RankState"]

Phase = Literal[
    "starting-ray",  # the head's own Ray node is starting
    "joining",  # waiting for every member to join with its GPUs
    "fabric-check",
    "starting-engine",  # engine processes launched; node 0's /health not yet 200
    "serving",
    "draining",
    "drained",  # the engine finished its requests and stopped; waiting for the pods to be deleted
    "stopping",  # SIGTERM: stopping engines and Ray
    "failed",
]
PHASES: tuple[Phase, ...] = (
    "starting-ray",
    "joining",
    "fabric-check",
    "starting-engine",
    "serving",
    "draining",
    "drained",
    "stopping",
    "failed",
)


@dataclass
class RankState:
    """One node of the gang, as the head knows it."""

    rank: int
    pod: str
    node_ip: str | None = None
    ray_node_id: str | None = None
    gpus: float | None = None
    engine: str = "pending"  # pending | starting | ready | draining | exited(<code>)
    engine_pid: int | None = None
    exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "pod": self.pod,
            "node_ip": self.node_ip,
            "ray_node_id": self.ray_node_id,
            "gpus": self.gpus,
            "engine": self.engine,
            "exit_code": self.exit_code,
        }


@dataclass
class DrainProgress:
    state: Literal["idle", "draining", "drained", "timed-out"] = "idle"
    started_at: float | None = None
    finished_at: float | None = None
    running_requests: int | None = None
    queued_requests: int | None = None
    timeout_seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        now = self.finished_at or time.time()
        return {
            "state": self.state,
            "running_requests": self.running_requests,
            "queued_requests": self.queued_requests,
            "elapsed_seconds": round(now - self.started_at, 3) if self.started_at else None,
            "timeout_seconds": self.timeout_seconds,
            "message": self.message,
        }


@dataclass
class GangStatus:
    """The whole state the head publishes; mutate only through the methods, which keep metrics in step."""

    plan: LaunchPlan
    phase: Phase = "starting-ray"
    message: str = ""
    ranks: list[RankState] = field(default_factory=list)
    fabric: FabricReport | None = None
    fabric_verdict: FabricVerdict | None = None
    drain: DrainProgress = field(default_factory=DrainProgress)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.ranks = [RankState(i, pod) for i, pod in enumerate(self.plan.gang.pods)]
        self.drain.timeout_seconds = self.plan.deadlines.drain_seconds
        r = self.registry
        info = Info("mimo_worker_gang", "The gang this head runs", registry=r)
        info.info(
            {
                "deployment": self.plan.deployment.name,
                "namespace": self.plan.deployment.namespace,
                "gang": self.plan.gang.name,
                "replica": str(self.plan.gang.replica),
                "revision": self.plan.gang.revision,
                "mode": self.plan.engine.mode,
            }
        )
        self._phase = Enum("mimo_worker_phase", "The head's lifecycle phase", states=list(PHASES), registry=r)
        self._phase.state(self.phase)
        Gauge("mimo_worker_gang_nodes_expected", "Nodes (pods) in the gang", registry=r).set(self.plan.gang.nodes)
        self._joined = Gauge("mimo_worker_gang_nodes_joined", "Gang nodes alive in Ray with their GPUs", registry=r)
        self._gpus = Gauge("mimo_worker_gang_gpus_joined", "GPUs the joined nodes brought to Ray", registry=r)
        self._bus = Gauge(
            "mimo_worker_fabric_bus_bandwidth_gbps",
            "Measured bus bandwidth per collective and message size (GB/s, nccl-tests' busbw)",
            ["op", "size_bytes"],
            registry=r,
        )
        self._latency = Gauge(
            "mimo_worker_fabric_latency_seconds", "All-reduce time at the smallest message size", registry=r
        )
        self._fabric_ok = Gauge(
            "mimo_worker_fabric_check_passed", "1 when the fabric check let the engine start", registry=r
        )
        self._engine_up = Gauge("mimo_worker_engine_up", "1 while the rank's engine process runs", ["rank"], registry=r)
        self._engine_ready = Gauge("mimo_worker_engine_ready", "1 while node 0's /health answered 200", registry=r)
        self._engine_exits = Counter(
            "mimo_worker_engine_exits",
            "Engine processes that ended, by rank and exit code",
            ["rank", "code"],
            registry=r,
        )
        self._drain_running = Gauge(
            "mimo_worker_drain_running_requests", "Requests still running while draining", registry=r
        )

    # -- transitions --------------------------------------------------------------------------

    def set_phase(self, phase: Phase, message: str = "") -> None:
        self.phase = phase
        self.message = message
        self._phase.state(phase)

    def set_joined(self, nodes: int, gpus: float) -> None:
        self._joined.set(nodes)
        self._gpus.set(gpus)

    def set_fabric(self, report: FabricReport, verdict: FabricVerdict) -> None:
        self.fabric = report
        self.fabric_verdict = verdict
        for s in report.samples:
            self._bus.labels(s.op, str(s.size_bytes)).set(s.bus_gbps)
        self._latency.set(report.latency_seconds)
        self._fabric_ok.set(1 if verdict.ok else 0)

    def set_fabric_skipped(self, verdict: FabricVerdict) -> None:
        self.fabric_verdict = verdict
        self._fabric_ok.set(1)

    def set_engine(self, rank: int, state: str, *, pid: int | None = None) -> None:
        r = self.ranks[rank]
        r.engine = state
        if pid is not None:
            r.engine_pid = pid
        self._engine_up.labels(str(rank)).set(1)
        if rank == 0:
            self._engine_ready.set(1 if state == "ready" else 0)

    def set_engine_exited(self, rank: int, code: int) -> None:
        r = self.ranks[rank]
        if r.exit_code is not None:
            return
        r.exit_code = code
        r.engine = f"exited({code})"
        self._engine_up.labels(str(rank)).set(0)
        self._engine_exits.labels(str(rank), str(code)).inc()
        if rank == 0:
            self._engine_ready.set(0)

    def set_drain(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.drain, k, v)
        if self.drain.running_requests is not None:
            self._drain_running.set(self.drain.running_requests)

    # -- views --------------------------------------------------------------------------------

    @property
    def engine_started(self) -> bool:
        return any(r.engine != "pending" for r in self.ranks)

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        fabric: dict[str, Any] | None = None
        if self.fabric is not None or self.fabric_verdict is not None:
            fabric = {
                "backend": plan.fabric.backend,
                "expected_bus_gbps": plan.fabric.expected_bus_gbps,
                "min_fraction": plan.fabric.min_fraction,
                "verdict": self.fabric_verdict.verdict if self.fabric_verdict else None,
                "message": self.fabric_verdict.message if self.fabric_verdict else "",
            }
            if self.fabric is not None:
                fabric.update(self.fabric.to_dict())
        return {
            "deployment": plan.deployment.model_dump(),
            "gang": plan.gang.name,
            "replica": plan.gang.replica,
            "revision": plan.gang.revision,
            "mode": plan.engine.mode,
            "phase": self.phase,
            "message": self.message,
            "nodes": {
                "expected": plan.gang.nodes,
                "joined": sum(1 for r in self.ranks if r.ray_node_id is not None),
                "gpus_per_node": plan.gang.gpus_per_node,
            },
            "ranks": [r.to_dict() for r in self.ranks],
            "fabric": fabric,
            "drain": self.drain.to_dict(),
        }

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)
