"""The Kubernetes objects of one gang — pure functions of (deployment, plan, replica, attempt, revision).

A gang is a head pod (node rank 0: Ray's head, SGLang's HTTP server) and ``nodes − 1`` member pods, each
carrying the gang's launch plan in an annotation, a NetworkPolicy that keeps Ray's unauthenticated ports
inside the gang, and a PodGroup when a gang scheduler is named. Every pod's stable DNS name comes from the
deployment's one headless Service (``gangs_service``), as a StatefulSet's pods get theirs from its governing
Service: a gang costs its pods and one more object to create. Names and labels are deterministic
(``mimo_operator.labels``).
"""

from __future__ import annotations

import json
from typing import Any

from mimo_operator import labels as L
from mimo_operator.build.options import BuildContext
from mimo_operator.build.placement import gang_tolerations
from mimo_operator.build.weights import weights_node_affinity
from mimo_operator.cachepaths import CACHE_MOUNT_PATH
from mimo_operator.launchplan import (
    LAUNCH_PLAN_KEY,
    LAUNCH_PLAN_MOUNT,
    LAUNCH_PLAN_VERSION,
    Deadlines,
    DeploymentRef,
    FabricExpectation,
    GangInfo,
    LaunchPlan,
    Ports,
    sglang_ports,
)
from mimo_operator.planner import node_nic_gbps
from mimo_operator.planner_pd import EXPERT_LOCATION_FILE, EXPERT_LOCATION_MOUNT
from mimo_operator.spec import ConfigMapKeyRef

__all__ = [
    "LAUNCH_PLAN_MOUNT",
    "WORKER_PROGRAM",
    "gang_objects",
    "gangs_service",
    "gangs_service_name",
    "launch_plan",
    "owner_reference",
    "template_of",
]

# The worker's entry point in the engine image (console script of the mimo-worker package); it runs the
# engine the launch plan names.
WORKER_PROGRAM = ["mimo-worker"]
# How long a head drains on SIGTERM when its pod is deleted by anyone but the operator (an eviction, a node
# drain): a fixed bound, not spec.autoscaling.drainTimeoutSeconds, so that editing the spec's timeout
# changes no pod. The operator's own drains carry the spec's timeout as it is when they start (POST /drain).
SIGTERM_DRAIN_SECONDS = 600
# The kubelet's SIGKILL comes this long after SIGTERM: the drain above plus stopping the engines and Ray.
TERMINATION_GRACE_SECONDS = SIGTERM_DRAIN_SECONDS + 30


def owner_reference(ctx: BuildContext) -> dict[str, Any]:
    return {"apiVersion": f"{L.GROUP}/{L.VERSION}", "kind": L.KIND, "name": ctx.name, "uid": ctx.uid,
            "controller": True, "blockOwnerDeletion": True}


def deployment_labels(ctx: BuildContext, component: str) -> dict[str, str]:
    return {
        L.LABEL_NAME: "mimo", L.LABEL_INSTANCE: ctx.name, L.LABEL_COMPONENT: component,
        L.LABEL_MANAGED_BY: L.MANAGED_BY, L.LABEL_DEPLOYMENT: ctx.name,
    }


def _gang_labels(ctx: BuildContext, gang: str, replica: int, attempt: int, revision: str,
                 template: str) -> dict[str, str]:
    labels = {
        **deployment_labels(ctx, "engine"), L.LABEL_GANG: gang, L.LABEL_REPLICA: str(replica),
        L.LABEL_ATTEMPT: str(attempt), L.LABEL_REVISION: revision, L.LABEL_TEMPLATE: template,
        L.LABEL_GANG_SIZE: str(ctx.plan.nodes_per_replica),
    }
    if ctx.pool:
        labels[L.LABEL_POOL] = ctx.pool
    return labels


def _meta(ctx: BuildContext, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.namespace, "labels": labels, "ownerReferences": [owner_reference(ctx)]}


def gang_ports(ctx: BuildContext, gang: str) -> tuple[int, int]:
    """(Ray GCS port, fabric-check port) of one gang: the fixed ones in a pod network of its own, else a
    pair derived from the gang's name, below Linux's ephemeral range (32768–60999) where Ray's own
    random ports fall."""
    if not (ctx.distinct_gang_ports or ctx.spec.network.mode == "hostNetwork"):
        return ctx.ports.ray_gcs, ctx.ports.fabric
    # Every port SGLang takes (the planner's account of them: dist-init, its ZMQ channels and handshake), the
    # worker's and the bootstrap port.
    plan = ctx.plan
    sglang = sglang_ports(engine_http=plan.port, dist_init=plan.dist_init_port, nodes=plan.nodes_per_replica,
                          attention_dp=plan.attention_data_parallel)
    taken = {*(u.port for u in sglang), ctx.ports.worker_http, bootstrap_port(ctx)}
    slot = int(L.short_hash(gang, length=8), 16) % 5000
    while {20000 + 2 * slot, 20001 + 2 * slot} & taken:
        slot = (slot + 1) % 5000
    return 20000 + 2 * slot, 20001 + 2 * slot


def gangs_service_name(ctx: BuildContext) -> str:
    """The deployment's headless Service, every engine pod's DNS subdomain (both pools of a disaggregated one)."""
    return f"{ctx.name}-gangs"


def head_dns(ctx: BuildContext, gang: str) -> str:
    return f"{L.pod_name(gang, 0)}.{gangs_service_name(ctx)}.{ctx.namespace}.svc.cluster.local"


def gangs_service(ctx: BuildContext) -> dict[str, Any]:
    """The headless Service that gives every engine pod of the deployment its DNS name,
    ``<pod>.<deployment>-gangs.<namespace>.svc``: members find their head by it before anything is Ready.
    It lists no ports (a headless Service need not): what a pod serves is in its gang's launch plan, and who
    may reach it in the gang's NetworkPolicy."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": gangs_service_name(ctx), "namespace": ctx.namespace,
                     "labels": deployment_labels(ctx, "engine"), "ownerReferences": [owner_reference(ctx)]},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "engine"},
        },
    }


def launch_plan(ctx: BuildContext, gang: str, replica: int, revision: str) -> dict[str, Any]:
    """The launch-plan document every pod of the gang reads (``mimo_operator.launchplan``): the plan's
    launch as the planner wrote it, with the gang's identity, ports and deadlines around it."""
    plan = ctx.plan
    ray_gcs, fabric = gang_ports(ctx, gang)
    document = LaunchPlan(
        version=LAUNCH_PLAN_VERSION,
        deployment=DeploymentRef(name=ctx.name, namespace=ctx.namespace),
        gang=GangInfo(name=gang, replica=replica, revision=revision, nodes=plan.nodes_per_replica,
                      gpus_per_node=plan.gpus_per_node, head_address=head_dns(ctx, gang),
                      pods=[L.pod_name(gang, r) for r in range(plan.nodes_per_replica)]),
        ports=Ports(ray_gcs=ray_gcs, engine_http=plan.port, dist_init=plan.dist_init_port, fabric=fabric,
                    worker_http=ctx.ports.worker_http),
        engine=plan.launch,
        fabric=FabricExpectation(enabled=plan.nodes_per_replica > 1,
                                 backend="gloo" if plan.engine == "simulated" else "nccl",
                                 expected_bus_gbps=_expected_bus_gbps(ctx), min_fraction=0.5),
        deadlines=Deadlines(drain_seconds=float(SIGTERM_DRAIN_SECONDS),
                            engine_ready_seconds=max(600.0, 2 * plan.startup.cold_seconds)),
    )
    return document.model_dump(mode="json")


def _expected_bus_gbps(ctx: BuildContext) -> float | None:
    # What an all-reduce across nodes should reach on the chosen fabric: InfiniBand NDR is ≈ 50 GB/s per
    # port with one port per GPU (mimo-facts.md). Over a plain pod network, or with the simulated engine
    # (gloo over loopback), there is nothing to expect: measure only.
    if ctx.plan.engine == "simulated" or ctx.spec.network.mode == "podNetwork" or ctx.plan.nodes_per_replica < 2:
        return None
    # A node's NIC total (HCAs × line rate): what NCCL's all-reduce rings reach between nodes; the worker
    # derives the all-to-all expectation from it (mimo_worker.fabric.expected_bus_gbps). NCCL falling back
    # to sockets gives a few GB/s, far below either.
    return node_nic_gbps(ctx.spec)


def gang_objects(ctx: BuildContext, replica: int, attempt: int, revision: str) -> list[dict[str, Any]]:
    """Every object of one gang: NetworkPolicy, [PodGroup], then the pods by rank.
    Each carries this operator's template (``template_of``), so a later operator can tell its own pods."""
    return _objects(ctx, L.gang_name(ctx.gang_prefix, replica, revision, attempt), replica, attempt, revision,
                    template_of(ctx))


def gang_network_policy(ctx: BuildContext, gang: str, replica: int, attempt: int, revision: str,
                        template: str) -> dict[str, Any]:
    """A gang's NetworkPolicy, as ``gang_objects`` builds it (``template``: ``template_of(ctx)``)."""
    return _network_policy(ctx, gang, _gang_labels(ctx, gang, replica, attempt, revision, template))


def template_of(ctx: BuildContext) -> str:
    """The hash of the builders' output for this deployment: a gang's objects built with placeholder
    identity. Not the revision (``build.revision``): it changes when an operator renders the same spec
    differently, which status reports and which rolls gangs only when the user opts in."""
    canonical = _objects(ctx, "gang", 0, 0, "revision", "template")
    return L.short_hash(json.dumps(canonical, sort_keys=True), length=10)


def _objects(ctx: BuildContext, gang: str, replica: int, attempt: int, revision: str,
             template: str) -> list[dict[str, Any]]:
    labels = _gang_labels(ctx, gang, replica, attempt, revision, template)
    document = json.dumps(launch_plan(ctx, gang, replica, revision), separators=(",", ":"))
    objects: list[dict[str, Any]] = [_network_policy(ctx, gang, labels)]
    objects += _pod_group(ctx, gang, labels)
    objects += [_pod(ctx, gang, labels, rank, document) for rank in range(ctx.plan.nodes_per_replica)]
    return objects


def _expert_location(ctx: BuildContext) -> ConfigMapKeyRef | None:
    """The ConfigMap key a pool's EPLB placement comes from, when the spec names one (a weights-cache file is
    read where the cache is mounted)."""
    pd = ctx.spec.disaggregation
    if ctx.pool is None or pd is None:
        return None
    eplb = getattr(pd, ctx.pool).eplb
    location = eplb.expert_location if eplb is not None else None
    return location.config_map if location is not None else None


def bootstrap_port(ctx: BuildContext) -> int | None:
    """The KV bootstrap port a prefill gang's head serves (the decode side asks it where each request's KV
    is); None on decode and colocated gangs."""
    if ctx.pool != "prefill" or ctx.disaggregated is None:
        return None
    return ctx.disaggregated.bootstrap_port


# Where the KV transfer engines (mooncake, NIXL) open their TCP side channels: ports the OS hands out at
# run time, in Linux's default ephemeral range. The KV itself moves by RDMA, which no NetworkPolicy sees.
TRANSFER_PORTS = (32768, 60999)


def _network_policy(ctx: BuildContext, gang: str, labels: dict[str, str]) -> dict[str, Any]:
    """Ray's ports (GCS, raylets, object store) and NCCL's are unauthenticated: only the gang's own pods
    may reach them. The router reaches the serving port; the operator the worker and metrics ports.

    A gang of a disaggregated deployment also admits the other pool's pods of the same deployment: on the
    prefill head's bootstrap port, and on the transfer engines' side channels (``TRANSFER_PORTS``) in both
    directions. Ray's GCS and SGLang's dist-init ports stay outside that range.
    """
    ports = ctx.ports
    router = {"podSelector": {"matchLabels": {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "router"}}}
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.operator.namespace}},
        "podSelector": {"matchLabels": dict(ctx.operator.pod_labels)},
    }
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": {L.LABEL_GANG: gang}}}]},
        {"from": [router], "ports": [{"protocol": "TCP", "port": ctx.plan.port}]},
        {"from": [operator], "ports": [{"protocol": "TCP", "port": ports.worker_http},
                                       {"protocol": "TCP", "port": ctx.plan.port}]},
    ]
    if ctx.pool:
        other = "decode" if ctx.pool == "prefill" else "prefill"
        peers = {"podSelector": {"matchLabels": {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "engine",
                                                 L.LABEL_POOL: other}}}
        allowed = [{"protocol": "TCP", "port": TRANSFER_PORTS[0], "endPort": TRANSFER_PORTS[1]}]
        if bootstrap := bootstrap_port(ctx):
            allowed.insert(0, {"protocol": "TCP", "port": bootstrap})
        ingress.append({"from": [peers], "ports": allowed})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(ctx, gang, labels),
        "spec": {
            "podSelector": {"matchLabels": {L.LABEL_GANG: gang}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _pod_group(ctx: BuildContext, gang: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    scheduler = ctx.spec.scheduling.gang_scheduler
    size = ctx.plan.nodes_per_replica
    if scheduler == "scheduler-plugins":
        return [{"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
                 "metadata": _meta(ctx, gang, labels), "spec": {"minMember": size, "scheduleTimeoutSeconds": 300}}]
    if scheduler == "volcano":
        group: dict[str, Any] = {"minMember": size}
        if ctx.spec.scheduling.queue_name:
            group["queue"] = ctx.spec.scheduling.queue_name
        if ctx.spec.scheduling.priority_class_name:
            group["priorityClassName"] = ctx.spec.scheduling.priority_class_name
        return [{"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup",
                 "metadata": _meta(ctx, gang, labels), "spec": group}]
    if scheduler == "kubernetes":
        # A standalone PodGroup (no Workload): kube-scheduler binds none of the gang's pods until all of them
        # fit. Its spec is immutable; a gang's PodGroup lives and dies with the gang.
        spec: dict[str, Any] = {"schedulingPolicy": {"gang": {"minCount": size}}}
        if ctx.gang_topology and (key := ctx.spec.scheduling.topology_key):
            # The scheduler then places the whole gang inside one block at once, instead of following the
            # block of whichever pod it placed first (the pods' affinity, kept for other schedulers).
            spec["schedulingConstraints"] = {"topology": [{"key": key}]}
        return [{"apiVersion": ctx.gang_api or L.NATIVE_PODGROUP_APIS[0], "kind": "PodGroup",
                 "metadata": _meta(ctx, gang, labels), "spec": spec}]
    return []  # kueue: labels on the pods; none: the default scheduler


def _scheduler_fields(ctx: BuildContext, gang: str) -> tuple[dict[str, str], dict[str, str], str | None]:
    """(extra pod labels, extra pod annotations, schedulerName) for the named gang scheduler."""
    scheduling = ctx.spec.scheduling
    size = str(ctx.plan.nodes_per_replica)
    if scheduling.gang_scheduler == "scheduler-plugins":
        return {"scheduling.x-k8s.io/pod-group": gang}, {}, "scheduler-plugins-scheduler"
    if scheduling.gang_scheduler == "volcano":
        return {}, {"scheduling.k8s.io/group-name": gang}, "volcano"
    if scheduling.gang_scheduler == "kueue":
        kueue_labels = {L.KUEUE_GROUP_LABEL: gang}
        if scheduling.queue_name:
            kueue_labels["kueue.x-k8s.io/queue-name"] = scheduling.queue_name
        # A plain pod group, not a "serving" one: Kueue keeps its finalizer on a serving group's pods until
        # someone deletes the group's Workload, while the operator ends a gang by deleting its pods (and a
        # deleted deployment's pods go by garbage collection). A plain group's Workload finishes once every
        # pod of the gang has stopped, and Kueue lets the pods go and releases the quota.
        annotations = {"kueue.x-k8s.io/pod-group-total-count": size}
        if ctx.gang_topology and scheduling.topology_key:
            # Kueue admits the group only where one block has room for all of it, and pins each pod to a node
            # of that block. Head and members have the same shape for Kueue (requests, ports, affinity), so
            # the gang is one PodSet and the request covers every pod.
            annotations[L.KUEUE_REQUIRED_TOPOLOGY] = scheduling.topology_key
        return kueue_labels, annotations, None
    return {}, {}, None


def _pod(ctx: BuildContext, gang: str, gang_labels: dict[str, str], rank: int, plan_document: str
         ) -> dict[str, Any]:
    plan, spec, ports = ctx.plan, ctx.spec, ctx.ports
    role = L.ROLE_HEAD if rank == 0 else L.ROLE_MEMBER
    name = L.pod_name(gang, rank)
    sched_labels, sched_annotations, scheduler_name = _scheduler_fields(ctx, gang)
    labels = {**dict(ctx.pod_labels), **gang_labels, **sched_labels, L.LABEL_ROLE: role, L.LABEL_RANK: str(rank)}
    if rank == 0:
        labels[L.LABEL_SERVING] = "true"
    annotations = {**dict(ctx.pod_annotations), **sched_annotations, L.ANNOTATION_LAUNCH_PLAN: plan_document}
    bootstrap = bootstrap_port(ctx)
    if rank == 0 and bootstrap:
        annotations[L.ANNOTATION_BOOTSTRAP_PORT] = str(bootstrap)
    network = spec.network
    if network.mode == "rdma" and network.rdma and network.rdma.networks:
        annotations["k8s.v1.cni.cncf.io/networks"] = ",".join(network.rdma.networks)
    if network.mode == "sriov" and network.sriov:
        # One VF per GPU: each network attachment brings one SR-IOV VF into the pod (NVIDIA network operator).
        annotations["k8s.v1.cni.cncf.io/networks"] = ",".join(network.sriov.networks)

    env: list[dict[str, Any]] = [
        {"name": "MIMO_ROLE", "value": role},
        {"name": "MIMO_LAUNCH_PLAN", "value": f"{LAUNCH_PLAN_MOUNT}/{LAUNCH_PLAN_KEY}"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    token = spec.model.token_secret_ref
    if token is not None:
        # By reference only: the token never appears in the pod spec, the launch plan or a log.
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    env += [{"name": e.name, "value": e.value} for e in spec.engine.env or []]

    resources: dict[str, Any] = {"limits": {spec.hardware.gpu_resource_name: str(plan.gpus_per_node)}}
    if network.mode == "rdma" or (network.mode == "hostNetwork" and network.privileged is False):
        # The RDMA shared device plugin hands the pod its /dev/infiniband devices (unprivileged pods).
        rdma = network.rdma
        resource = rdma.resource_name if rdma else "rdma/rdma_shared_device_a"
        resources["limits"][resource] = str(rdma.resource_count if rdma else 1)
    if network.mode == "sriov" and network.sriov:
        resources["limits"][network.sriov.resource_name] = str(len(network.sriov.networks))
    container_ports = [
        {"name": "ray-gcs", "containerPort": gang_ports(ctx, gang)[0]},
        {"name": "engine-http", "containerPort": plan.port},
        {"name": "dist-init", "containerPort": plan.dist_init_port},
        {"name": "worker-http", "containerPort": ports.worker_http},
        *([{"name": "bootstrap", "containerPort": bootstrap}] if bootstrap else []),
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "launch-plan", "mountPath": LAUNCH_PLAN_MOUNT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 - the pod's own shared memory
    ]
    volumes: list[dict[str, Any]] = [
        # The plan from the pod's own annotation: the kubelet writes the file before the container starts.
        {"name": "launch-plan", "downwardAPI": {"items": [{"path": LAUNCH_PLAN_KEY, "fieldRef": {
            "fieldPath": f"metadata.annotations['{L.ANNOTATION_LAUNCH_PLAN}']"}}]}},
        # NCCL and DeepEP need far more than the runtime's 64 MiB default /dev/shm.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.engine.shm_size}},
    ]
    if (placement := _expert_location(ctx)) is not None:
        # EPLB's initial expert placement (--init-expert-location), from the user's ConfigMap key.
        mounts.append({"name": "expert-location", "mountPath": EXPERT_LOCATION_MOUNT, "readOnly": True})
        volumes.append({"name": "expert-location", "configMap": {
            "name": placement.name, "items": [{"key": placement.key, "path": EXPERT_LOCATION_FILE}]}})
    cache = spec.model.cache
    if cache.mode == "shared-volume" and cache.claim_name:
        mounts.append({"name": "weights", "mountPath": CACHE_MOUNT_PATH})
        volumes.append({"name": "weights", "persistentVolumeClaim": {"claimName": cache.claim_name}})
    elif cache.mode == "node-local":
        mounts.append({"name": "weights", "mountPath": CACHE_MOUNT_PATH})
        volumes.append({"name": "weights", "hostPath": {"path": cache.node_local_path, "type": "DirectoryOrCreate"}})

    security: dict[str, Any] = {"allowPrivilegeEscalation": False}
    pod_spec: dict[str, Any] = {}
    if network.mode in ("hostNetwork", "rdma", "sriov"):
        # RDMA needs locked memory for its registered buffers.
        security = {"capabilities": {"add": ["IPC_LOCK", "SYS_RESOURCE"]}}
    if network.mode == "hostNetwork":
        pod_spec.update({"hostNetwork": True, "hostIPC": True, "dnsPolicy": "ClusterFirstWithHostNet"})
        if network.privileged is not False:
            # As SGLang's LWS example (lws_pd/lws-examples): privileged with IPC_LOCK and /dev/infiniband
            # mounted, since a container's device rules block a hostPath device node on its own and NCCL and
            # NVSHMEM would fall back to sockets. network.privileged: false takes the device plugin's resource.
            security = {"privileged": True, "capabilities": {"add": ["IPC_LOCK", "SYS_RESOURCE"]}}
            mounts.append({"name": "infiniband", "mountPath": "/dev/infiniband"})
            volumes.append({"name": "infiniband", "hostPath": {"path": "/dev/infiniband"}})

    affinity: dict[str, Any] = {
        # One pod of a gang per node, whatever the GPU count says.
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {L.LABEL_GANG: gang}}, "topologyKey": "kubernetes.io/hostname"}]},
    }
    if weights := weights_node_affinity(spec, plan):
        # Node-local cache: only nodes whose copy of the checkpoint is complete and verified.
        affinity["nodeAffinity"] = weights
    if topology := spec.scheduling.topology_key:
        # The whole gang inside one InfiniBand block: DeepEP's all-to-all crosses every pair of nodes.
        affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {L.LABEL_GANG: gang}}, "topologyKey": topology}]}
        # The deployment's other gangs in other blocks when there is room: a block's switch failing then takes
        # out fewer replicas, and a gang's first pod does not take the last free node of a block that another
        # gang is filling. A preference only (a score), so a full cluster still packs gangs into one block.
        affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = [{
            "weight": 100, "podAffinityTerm": {"labelSelector": {
                "matchLabels": {L.LABEL_DEPLOYMENT: ctx.name, L.LABEL_COMPONENT: "engine"},
                "matchExpressions": [{"key": L.LABEL_GANG, "operator": "NotIn", "values": [gang]}]},
                "topologyKey": topology}}]

    tolerations = gang_tolerations(spec)
    pod_spec.update({
        "hostname": name,
        "subdomain": gangs_service_name(ctx),
        # A rank cannot rejoin a running SGLang server: a failed pod fails the gang, which is replaced whole.
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "tolerations": tolerations,
        "affinity": affinity,
        "containers": [{
            "name": "engine",
            "image": spec.engine.image,
            "imagePullPolicy": spec.engine.image_pull_policy,
            "command": WORKER_PROGRAM,
            "args": ["--role", role],
            "env": env,
            "ports": container_ports,
            "resources": resources,
            "volumeMounts": mounts,
            "securityContext": security,
        }],
        "volumes": volumes,
    })
    if spec.hardware.node_selector:
        pod_spec["nodeSelector"] = dict(spec.hardware.node_selector)
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    if scheduler_name:
        pod_spec["schedulerName"] = scheduler_name
    if spec.scheduling.gang_scheduler == "kubernetes":
        pod_spec["schedulingGroup"] = {"podGroupName": gang}
    if rank == 0:
        # The gang's readiness: the engine's own /health on node 0, through the head's worker. Members
        # serve nothing of their own (SGLang's dummy health server on nodes ≥ 1 always says yes); a member
        # whose Ray node or engine dies exits, which fails its pod and so the gang.
        pod_spec["containers"][0]["readinessProbe"] = {
            "httpGet": {"path": "/readyz", "port": "worker-http"},
            # SGLang's /health may take up to 20 s while it runs a generation; the head waits 25 s.
            "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 26}
    meta = _meta(ctx, name, labels)
    meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
