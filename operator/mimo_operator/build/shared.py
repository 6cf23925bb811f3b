"""The objects a deployment has once, whatever its replica count: the router in front of the gangs
(with the RBAC its pod discovery needs), a PodDisruptionBudget over the engine pods, the headless
Service that names them, and the NetworkPolicy that closes them to everything their gangs' own policies
do not open."""

from __future__ import annotations

from typing import Any

from mimo_operator import labels as L
from mimo_operator.build.gang import deployment_labels, gangs_service, owner_reference
from mimo_operator.build.options import BuildContext
from mimo_operator.build.pools import pools_of

__all__ = ["engines_closed", "router_name", "router_url", "shared_objects"]


def router_name(ctx: BuildContext) -> str:
    return f"{ctx.name}-router"


def router_url(ctx: BuildContext) -> str:
    """The serving endpoint a client uses (OpenAI-compatible API behind the router's Service)."""
    return f"http://{router_name(ctx)}.{ctx.namespace}.svc:80"


def _meta(ctx: BuildContext, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.namespace, "labels": deployment_labels(ctx, component),
            "ownerReferences": [owner_reference(ctx)]}


def shared_objects(ctx: BuildContext) -> list[dict[str, Any]]:
    objects = [engines_closed(ctx), gangs_service(ctx), *_disruption_budget(ctx)]
    if ctx.spec.router.enabled:
        objects += _router(ctx)
    return objects


def engines_closed(ctx: BuildContext) -> dict[str, Any]:
    """Every engine pod of the deployment closed to all ingress (policies add up: each gang's own policy
    opens what its pods need, Ray's ports to the gang and the serving port to the router). It is in place
    before the first gang, so a gang's pods are never open, not even before their gang's policy exists:
    that policy can be created with the pods instead of before them, one round trip fewer per gang."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(ctx, f"{ctx.name}-engines-closed", "engine"),
        "spec": {
            "podSelector": {"matchLabels": {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "engine"}},
            "policyTypes": ["Ingress"],
        },
    }


def _disruption_budget(ctx: BuildContext) -> list[dict[str, Any]]:
    # Pods are counted, gangs are what matters: evicting any pod of a gang ends the gang, so a voluntary
    # disruption may take one pod at a time, per pool (a pool's gangs are its own). The budget is a count of
    # pods that must stay (one fewer than the pool's gangs have when whole): a maxUnavailable or a percentage
    # makes the disruption controller read the pods' owner's /scale, which counts gangs, not pods (2 gangs of
    # 2 pods read as 2 pods expected, so 4 healthy pods allowed every one of them to go). Once a pod has gone,
    # its gang's other pods are unhealthy or gone too, and nothing more is evicted until the replacement is Ready.
    budgets = []
    for pool in pools_of(ctx):
        selector = {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "engine"}
        if pool.role:
            selector[L.LABEL_POOL] = pool.role
        budgets.append({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            # <name>-engine, and <name>-engine-<pool> for a pool: never another deployment's (a pool's gang prefix,
            # <name>-prefill, is also the name of a deployment that may stand beside it).
            "metadata": _meta(ctx, f"{ctx.name}-engine" + (f"-{pool.role}" if pool.role else ""), "engine"),
            "spec": {
                "minAvailable": max(0, pool.replicas * pool.ctx.plan.nodes_per_replica - 1),
                "selector": {"matchLabels": selector},
                # The pods of a gang that has already failed are no loss: a node drain need not wait for them.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        })
    return budgets


def _discovery(ctx: BuildContext) -> list[str]:
    """The router's pod discovery: only head pods that are Ready and still serving (a draining gang's head
    loses the serving label first, so it leaves the router before its pods go); in PD mode one selector per
    pool, and the prefill heads' bootstrap port from their annotation (``labels.ANNOTATION_BOOTSTRAP_PORT``, the
    router's default --bootstrap-port-annotation)."""
    heads = [f"{L.LABEL_DEPLOYMENT}={ctx.name}", f"{L.LABEL_ROLE}={L.ROLE_HEAD}", f"{L.LABEL_SERVING}=true"]
    if ctx.disaggregated is None:
        return ["--service-discovery", "--selector", *heads]
    # spec.router.policy serves both sides (sglang-router's --policy in PD mode).
    return ["--pd-disaggregation", "--service-discovery",
            "--prefill-selector", *heads, f"{L.LABEL_POOL}=prefill",
            "--decode-selector", *heads, f"{L.LABEL_POOL}=decode"]


def _router(ctx: BuildContext) -> list[dict[str, Any]]:
    name = router_name(ctx)
    ports = ctx.ports
    router = ctx.spec.router
    labels = {**dict(ctx.pod_labels), **deployment_labels(ctx, "router")}
    selector = {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "router"}
    args = [
        # The pod's own IP, not every interface: the same in a pod, and safe where pods share a host's
        # network (the local cluster, hostNetwork).
        "--host", "$(POD_IP)", "--port", str(ports.router_http), "--policy", router.policy,
        *_discovery(ctx),
        "--service-discovery-port", str(ctx.plan.port), "--service-discovery-namespace", ctx.namespace,
        "--prometheus-host", "$(POD_IP)", "--prometheus-port", str(ports.router_metrics),
        # A Pro gang takes minutes to load; the router must not give up on a discovered head meanwhile.
        "--worker-startup-timeout-secs", str(int(max(600, ctx.plan.startup.cold_seconds))),
        "--request-timeout-secs", "3600",
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ctx, name, "router"),
         "automountServiceAccountToken": True},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(ctx, name, "router"),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(ctx, name, "router"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ctx.namespace}]},
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(ctx, name, "router"),
            "spec": {
                "replicas": router.replicas,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels, "annotations": dict(ctx.pod_annotations) or None},
                    "spec": {
                        "serviceAccountName": name,
                        "enableServiceLinks": False,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {
                            "type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "router",
                            "image": router.image or ctx.spec.engine.image,
                            "command": ["python3", "-m", "sglang_router.launch_router"],
                            "args": args,
                            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                            "ports": [{"name": "http", "containerPort": ports.router_http},
                                      {"name": "metrics", "containerPort": ports.router_metrics}],
                            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
                            "securityContext": {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                        }],
                    },
                },
            },
        },
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(ctx, name, "router"),
         "spec": {"selector": selector, "ports": [
             {"name": "http", "port": 80, "targetPort": "http"},
             {"name": "metrics", "port": ports.router_metrics, "targetPort": "metrics"}]}},
    ]
