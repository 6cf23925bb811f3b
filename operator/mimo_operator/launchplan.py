"""The launch plan: the one document that tells every pod of a gang what to run — its one schema.

The planner writes the engine's final per-rank launch (:class:`EngineLaunch`: program, argv, environment;
``Plan.launch``); the builders put it, with the gang's identity, ports and deadlines, into a ConfigMap
mounted at ``/etc/mimo/launch/plan.json`` in every pod of the gang, adding nothing to the launch; the worker
(``mimo_worker.launchplan``, which imports this module) reads it there. Head and members read the same
document. It is versioned (``version``): a worker refuses a version
it does not know rather than guess, so an operator and a worker image of different ages fail loudly.

Placeholders. A rank's argv items and env values may contain ``{head_ip}`` (the IP that node 0 actually
has) and ``{node_ip}`` (the IP of the node the rank runs on). Pods learn each other's IPs only at run
time — the operator writes the plan before the pods are scheduled — and ``--dist-init-addr`` must be an
address node 0 can bind and every node can reach before any pod is Ready (the headless Service
publishes a pod's DNS record only when the pod is Ready, and node 0 becomes Ready only once the engine,
which needs the dist-init address, is up). The head substitutes both placeholders just before it starts
each rank. Substitution is literal text replacement, not ``str.format``: SGLang argv carries JSON
(``--model-loader-extra-config '{"num_threads": 64}'``) whose braces must pass through untouched.

The full field list with an example is in ``docs/worker.md``; :func:`example_plan` builds that example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "DEFAULT_PLAN_PATH",
    "HEAD_IP",
    "LAUNCH_PLAN_KEY",
    "LAUNCH_PLAN_KIND",
    "LAUNCH_PLAN_MOUNT",
    "LAUNCH_PLAN_VERSION",
    "NODE_IP",
    "SGLANG_HANDSHAKE_PORT_DELTA",
    "SGLANG_ZMQ_PORTS",
    "SGLANG_ZMQ_TCP_PORT_DELTA",
    "Deadlines",
    "DeploymentRef",
    "EngineLaunch",
    "FabricExpectation",
    "GangInfo",
    "LaunchPlan",
    "LaunchPlanError",
    "PortUse",
    "Ports",
    "RankLaunch",
    "example_plan",
    "fixed_ports",
    "launch_plan_bytes",
    "parse_plan",
    "port_listing",
    "sglang_ports",
    "substitute",
]

LAUNCH_PLAN_KIND = "MiMoLaunchPlan"
LAUNCH_PLAN_VERSION = 1
# Where the builders mount the gang's launch plan (a downward-API volume of the pod's annotation), and its file
# name; read by head and members alike.
LAUNCH_PLAN_MOUNT = "/etc/mimo/launch"
LAUNCH_PLAN_KEY = "plan.json"
DEFAULT_PLAN_PATH = PurePosixPath(LAUNCH_PLAN_MOUNT) / LAUNCH_PLAN_KEY
# Placeholders the head replaces in argv items and env values (see the module docstring).
HEAD_IP = "{head_ip}"
NODE_IP = "{node_ip}"

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class LaunchPlanError(ValueError):
    """A launch plan this worker cannot run; the message names the field and what is wrong."""


class _Model(BaseModel):
    # Unknown keys are refused: a misspelt field silently taking its default would launch the wrong gang.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentRef(_Model):
    """The MiMoDeployment this gang serves (for logs, status and metrics labels)."""

    name: str = Field(min_length=1)
    namespace: str = Field(min_length=1)


class GangInfo(_Model):
    """One replica of the deployment: its pods, one per node, and the head's stable address."""

    name: str = Field(min_length=1, description="the gang's name, also its pods' name prefix")
    replica: int = Field(ge=0, description="the replica index within the deployment")
    revision: str = Field(min_length=1, description="hash of everything that needs a restart when it changes")
    nodes: int = Field(ge=1, description="pods (= nodes) in the gang, head included")
    gpus_per_node: int = Field(ge=0)
    head_address: str = Field(
        min_length=1,
        description="the head pod's stable DNS name, <gang>-0.<gang>.<ns>.svc.cluster.local; members join it",
    )
    pods: list[str] = Field(description="pod names by node rank; pods[0] is the head")

    @model_validator(mode="after")
    def _pods_match_nodes(self) -> GangInfo:
        if len(self.pods) != self.nodes:
            raise ValueError(f"gang.pods lists {len(self.pods)} pods but gang.nodes is {self.nodes}")
        if len(set(self.pods)) != len(self.pods):
            raise ValueError("gang.pods has duplicate names")
        return self


class Ports(_Model):
    """Every port a gang uses; the operator's NetworkPolicy opens exactly these inside the gang."""

    ray_gcs: Port = Field(default=6379, description="Ray's GCS on node 0, which the members join")
    engine_http: Port = Field(default=30000, description="SGLang's --port on node 0 (/health, /metrics, API)")
    dist_init: Port = Field(default=5000, description="the port of --dist-init-addr on node 0")
    fabric: Port = Field(default=29400, description="the fabric check's rendezvous on node 0")
    worker_http: Port = Field(default=8000, description="the head's own endpoints (/readyz, /status, /drain)")

    @model_validator(mode="after")
    def _distinct(self) -> Ports:
        values = [self.ray_gcs, self.engine_http, self.dist_init, self.fabric, self.worker_http]
        if len(set(values)) != len(values):
            raise ValueError(f"ports must be distinct, got {self.model_dump()}")
        return self


# SGLang 0.5.23's ports derived from others (srt/server_args.py: PortArgs.init_new; managers/
# data_parallel_controller.py: the worker-port handshake). With attention DP its processes talk ZMQ over TCP: from a
# base port, the base + 1 and the five after it, and the handshake at the base + 13. The base is --dist-init-addr's
# port on several nodes, else --port + 233 (and the handshake --port + 13).
SGLANG_ZMQ_TCP_PORT_DELTA = 233
SGLANG_ZMQ_PORTS = 6
SGLANG_HANDSHAKE_PORT_DELTA = 13


@dataclass(frozen=True)
class PortUse:
    """A port that node 0 of a gang listens on (or SGLang waits to find free), who uses it, and the :class:`Ports`
    field whose value places it (``engine_http``, ``dist_init``; None for a fixed port)."""

    port: int
    user: str
    placed_by: str | None


# What Kubernetes itself listens on, on every node: a pod in the node's network cannot have these.
NODE_DAEMON_PORTS = (
    PortUse(10248, "the kubelet's health endpoint on the node (hostNetwork)", None),
    PortUse(10249, "kube-proxy's metrics on the node (hostNetwork)", None),
    PortUse(10250, "the kubelet's API on the node (hostNetwork)", None),
    PortUse(10255, "the kubelet's read-only port on the node (hostNetwork)", None),
    PortUse(10256, "kube-proxy's health endpoint on the node (hostNetwork)", None),
)


def fixed_ports(*, host_network: bool) -> list[PortUse]:
    """The ports a gang pod cannot give SGLang: :class:`Ports`' defaults, the head worker's, and outside
    hostNetwork Ray's GCS and the fabric check's (in hostNetwork the builders pick those two for each gang, clear
    of SGLang's ports); in hostNetwork also the node's own daemons' (``NODE_DAEMON_PORTS``)."""
    names = ["worker_http"] + ([] if host_network else ["ray_gcs", "fabric"])
    fields = Ports.model_fields
    ours = [PortUse(int(fields[n].default), str(fields[n].description), None) for n in names]
    return ours + list(NODE_DAEMON_PORTS) if host_network else ours


def sglang_ports(*, engine_http: int, dist_init: int, nodes: int, attention_dp: int) -> list[PortUse]:
    """The ports SGLang 0.5.23 takes on node 0 of a gang of ``nodes`` with ``attention_dp`` attention-DP groups,
    and the dist-init port, which the launch plan names whatever the node count."""
    uses = [PortUse(engine_http, "SGLang's HTTP server (engine.port)", "engine_http")]
    if nodes > 1:
        base, placed_by, origin = dist_init, "dist_init", "engine.distInitPort"
        uses.append(PortUse(base, "torch.distributed's store (--dist-init-addr, engine.distInitPort)", placed_by))
    else:
        uses.append(PortUse(dist_init, "the gang's dist-init port (engine.distInitPort)", "dist_init"))
        base = engine_http + SGLANG_ZMQ_TCP_PORT_DELTA
        base = base if base <= 65535 else engine_http - SGLANG_ZMQ_TCP_PORT_DELTA
        placed_by, origin = "engine_http", f"engine.port + {SGLANG_ZMQ_TCP_PORT_DELTA}"
        if attention_dp > 1:
            uses.append(PortUse(base, f"SGLang's attention-DP base port ({origin})", placed_by))
    if attention_dp > 1:
        first = base + 1 if base + SGLANG_ZMQ_PORTS <= 65535 else base - SGLANG_ZMQ_PORTS - 1
        uses += [PortUse(first + k, f"SGLang's ZMQ channels ({origin} + 1…{SGLANG_ZMQ_PORTS})", placed_by)
                 for k in range(SGLANG_ZMQ_PORTS)]
        handshake, of = (dist_init, "engine.distInitPort") if nodes > 1 else (engine_http, "engine.port")
        uses.append(PortUse(handshake + SGLANG_HANDSHAKE_PORT_DELTA,
                            f"SGLang's attention-DP handshake ({of} + {SGLANG_HANDSHAKE_PORT_DELTA})", placed_by))
    return uses


def port_listing(uses: list[PortUse]) -> str:
    """``8000 for …; 20001–20006 for …``: a run of consecutive ports with one user is shown as one range."""
    runs: list[tuple[int, int, str]] = []
    for use in sorted(uses, key=lambda u: u.port):
        if runs and runs[-1][2] == use.user and runs[-1][1] + 1 == use.port:
            runs[-1] = (runs[-1][0], use.port, use.user)
        elif not runs or (runs[-1][1], runs[-1][2]) != (use.port, use.user):
            runs.append((use.port, use.port, use.user))
    return "; ".join(f"{a}–{b} for {who}" if a != b else f"{a} for {who}" for a, b, who in runs)


class RankLaunch(_Model):
    """What one engine process runs: the argv after the program, and extra environment."""

    rank: int = Field(ge=0)
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)


class EngineLaunch(_Model):
    """How the engine starts across the gang.

    ``per-node``: one engine process per node (``ranks`` has one entry per node, each with its own
    ``--node-rank``), placed by a STRICT_SPREAD placement group — the launch SGLang's cookbook tests with
    DeepEP. ``sglang-ray``: SGLang's own Ray engine (``--use-ray``) started on the head, which places its
    schedulers itself (``ranks`` has exactly one entry, the driver's argv).
    """

    mode: Literal["per-node", "sglang-ray"] = "per-node"
    program: list[str] = Field(
        min_length=1,
        description='["sglang", "serve", "--model-type", "llm"], or "mimo_worker.simengine" for engine: simulated',
    )
    ranks: list[RankLaunch]


class FabricExpectation(_Model):
    """What the interconnect must deliver before a terabyte of weights is worth loading."""

    enabled: bool = True
    backend: Literal["nccl", "gloo"] = "nccl"
    expected_bus_gbps: float | None = Field(
        default=None,
        gt=0,
        description="all-reduce bus bandwidth the plan's fabric should reach (GB/s); null = measure only",
    )
    min_fraction: float = Field(default=0.5, gt=0, le=1)
    sizes_bytes: list[Annotated[int, Field(ge=4)]] = Field(
        default_factory=lambda: [4096, 1 << 20, 16 << 20, 64 << 20],
        min_length=1,
        description="message sizes; the smallest gives the latency, the largest the bandwidth",
    )
    iterations: int = Field(default=5, ge=1)
    warmup: int = Field(default=2, ge=0)


class Deadlines(_Model):
    """Bounds on every wait, so a stuck gang fails and is replaced instead of hanging."""

    members_join_seconds: PositiveSeconds = 600.0
    fabric_seconds: PositiveSeconds = 300.0
    # DeepGEMM JIT (10–20 min without a warm cache), weight loading and CUDA-graph capture.
    engine_ready_seconds: PositiveSeconds = 3600.0
    drain_seconds: PositiveSeconds = 600.0


class LaunchPlan(_Model):
    """The whole document; see ``docs/worker.md`` for an annotated example."""

    kind: Literal["MiMoLaunchPlan"] = "MiMoLaunchPlan"
    version: int
    deployment: DeploymentRef
    gang: GangInfo
    ports: Ports = Field(default_factory=Ports)
    engine: EngineLaunch
    fabric: FabricExpectation = Field(default_factory=FabricExpectation)
    deadlines: Deadlines = Field(default_factory=Deadlines)

    @model_validator(mode="after")
    def _consistent(self) -> LaunchPlan:
        if self.version != LAUNCH_PLAN_VERSION:
            raise ValueError(
                f"version {self.version} is not supported by this worker (it reads version {LAUNCH_PLAN_VERSION}); "
                "the operator and the worker image are of different releases"
            )
        ranks = [r.rank for r in self.engine.ranks]
        if self.engine.mode == "per-node":
            if ranks != list(range(self.gang.nodes)):
                raise ValueError(
                    f"engine.ranks must list ranks 0..{self.gang.nodes - 1} in order for mode per-node, got {ranks}"
                )
        elif ranks != [0]:
            raise ValueError(f"engine.ranks must hold exactly rank 0 (the driver) for mode sglang-ray, got {ranks}")
        return self

    def rank(self, index: int) -> RankLaunch:
        return self.engine.ranks[index]

    def engine_command(self, rank: int, *, head_ip: str, node_ip: str) -> tuple[list[str], dict[str, str]]:
        """The program + argv and the extra environment of ``rank``, with the placeholders filled in."""
        launch = self.engine.ranks[rank]
        argv = [*self.engine.program, *(substitute(a, head_ip=head_ip, node_ip=node_ip) for a in launch.argv)]
        env = {k: substitute(v, head_ip=head_ip, node_ip=node_ip) for k, v in launch.env.items()}
        return argv, env


def launch_plan_bytes(engine: EngineLaunch, nodes: int) -> int:
    """The size of a gang's launch-plan document with ``engine``, as the builders serialise it into a pod
    annotation (compact JSON, non-ASCII escaped), with its identity fields at their longest: names of 63
    characters, the head's DNS name of 253."""
    document = LaunchPlan(
        version=LAUNCH_PLAN_VERSION,
        deployment=DeploymentRef(name="n" * 63, namespace="n" * 63),
        gang=GangInfo(name="g" * 63, replica=999, revision="r" * 63, nodes=nodes, gpus_per_node=1024,
                      head_address="h" * 253, pods=[f"{i:063}" for i in range(nodes)]),
        engine=engine,
        fabric=FabricExpectation(expected_bus_gbps=123456.789012345),
        deadlines=Deadlines(engine_ready_seconds=1e9 / 7),
    )
    return len(json.dumps(document.model_dump(mode="json"), separators=(",", ":")))


def substitute(text: str, *, head_ip: str, node_ip: str) -> str:
    """Replace the two placeholders literally (never ``str.format``: argv may carry JSON braces)."""
    return text.replace(HEAD_IP, head_ip).replace(NODE_IP, node_ip)


def parse_plan(data: Any) -> LaunchPlan:
    """Validate a decoded document; every problem is reported with its field path."""
    try:
        return LaunchPlan.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}" for err in e.errors()
        )
        raise LaunchPlanError(f"invalid launch plan: {problems}") from None


def example_plan() -> dict[str, Any]:
    """A complete three-node MiMo-V2.5-Pro plan, as the operator writes it (also shown in docs/worker.md)."""
    gang, ns, nodes = "pro-r0", "serving", 3
    common = [
        "--model-path", "XiaomiMiMo/MiMo-V2.5-Pro", "--trust-remote-code",
        "--tp-size", "24", "--nnodes", str(nodes), "--dist-init-addr", f"{HEAD_IP}:5000",
        "--host", "0.0.0.0", "--port", "30000", "--enable-metrics",  # noqa: S104 - pods: every interface
    ]  # fmt: skip
    env = {"NCCL_IB_HCA": "mlx5", "NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0"}
    return {
        "kind": LAUNCH_PLAN_KIND,
        "version": LAUNCH_PLAN_VERSION,
        "deployment": {"name": "pro", "namespace": ns},
        "gang": {
            "name": gang,
            "replica": 0,
            "revision": "5f2c9a1e",
            "nodes": nodes,
            "gpus_per_node": 8,
            "head_address": f"{gang}-0.{gang}.{ns}.svc.cluster.local",
            "pods": [f"{gang}-{i}" for i in range(nodes)],
        },
        "ports": {"ray_gcs": 6379, "engine_http": 30000, "dist_init": 5000, "fabric": 29400, "worker_http": 8000},
        "engine": {
            "mode": "per-node",
            "program": ["sglang", "serve", "--model-type", "llm"],
            "ranks": [{"rank": i, "argv": [*common, "--node-rank", str(i)], "env": env} for i in range(nodes)],
        },
        "fabric": {
            "enabled": True,
            "backend": "nccl",
            "expected_bus_gbps": 40.0,
            "min_fraction": 0.5,
            "sizes_bytes": [4096, 1 << 20, 16 << 20, 64 << 20],
            "iterations": 5,
            "warmup": 2,
        },
        "deadlines": {
            "members_join_seconds": 600,
            "fabric_seconds": 300,
            "engine_ready_seconds": 3600,
            "drain_seconds": 600,
        },
    }
