"""What the builders need to know about a deployment, in one typed object (no hidden environment reads)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mimo_operator.launchplan import Ports
from mimo_operator.plan import Plan
from mimo_operator.planner_pd import DisaggregatedPlan, Role
from mimo_operator.spec import DeploymentSpec

__all__ = ["BuildContext", "OperatorIdentity", "WorkerPorts"]


@dataclass(frozen=True)
class WorkerPorts:
    """Ports inside a gang besides SGLang's own (``plan.port``, ``plan.dist_init_port``)."""

    # The launch plan's defaults, which the planner checks the spec's ports against (``launchplan.fixed_ports``).
    ray_gcs: int = Ports.model_fields["ray_gcs"].default
    fabric: int = Ports.model_fields["fabric"].default
    worker_http: int = Ports.model_fields["worker_http"].default
    router_http: int = 8080
    router_metrics: int = 29000


@dataclass(frozen=True)
class OperatorIdentity:
    """How a NetworkPolicy recognises the operator's pods (they call the heads' drain and metrics)."""

    namespace: str = "mimo-system"
    pod_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "mimo-operator"),)


@dataclass(frozen=True)
class BuildContext:
    """A MiMoDeployment as the builders see it: identity, parsed spec and plan."""

    name: str
    namespace: str
    uid: str
    spec: DeploymentSpec
    plan: Plan
    ports: WorkerPorts = field(default_factory=WorkerPorts)
    operator: OperatorIdentity = field(default_factory=OperatorIdentity)
    # Give each gang its own Ray GCS and fabric-check ports. Ray's GCS and torch's rendezvous listen on
    # every interface, so gangs that share a network namespace (hostNetwork pods on one node, the local
    # cluster's processes) would collide on fixed ports.
    distinct_gang_ports: bool = False
    # Extra labels and annotations on every engine and router pod (from the spec's pod template).
    pod_labels: tuple[tuple[str, str], ...] = ()
    pod_annotations: tuple[tuple[str, str], ...] = ()
    # A disaggregated deployment (spec.disaggregation): both pools' plans. ``pool`` names the side a gang
    # builder builds for (``build.pools.pool_context``); ``plan`` is then that side's plan.
    disaggregated: DisaggregatedPlan | None = None
    pool: Role | None = None
    # The group version of the gang scheduler's PodGroup that the cluster serves (read from discovery by the
    # reconciler); None renders the newest one the builders know.
    gang_api: str | None = None
    # Whether the gang scheduler can be asked to place each gang inside one domain of
    # spec.scheduling.topologyKey, as the reconciler found: a native PodGroup's topology constraint
    # (kube-scheduler's topology-aware workload scheduling, an alpha gate the API refuses the field without),
    # or Kueue's topology-aware scheduling (a level of the Topology behind the queue's flavors).
    gang_topology: bool = False

    @property
    def gang_prefix(self) -> str:
        """What gang names start with: the deployment's name, and a pool's role after it."""
        return f"{self.name}-{self.pool}" if self.pool else self.name
