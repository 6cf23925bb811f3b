"""The builders turn a deployment and its plan into complete, deterministic Kubernetes objects."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from mimo_operator import labels as L
from mimo_operator.build import BuildContext, gang_objects, revision_of, shared_objects
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from mimo_worker.launchplan import parse_plan
from tests.helpers.gangs import launch_plan_document
from tests.helpers.specs import DeploymentBuilder, a_deployment


def context(builder: DeploymentBuilder, **extra: Any) -> BuildContext:
    manifest = builder.build()
    spec = parse_spec(manifest)
    return BuildContext(name=manifest["metadata"]["name"], namespace="serving", uid="uid-1", spec=spec,
                        plan=plan_deployment(spec), **extra)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


PRO_H200 = a_deployment("pro").pro().h200()


def test_a_pro_gang_on_h200_is_one_head_and_members_with_8_gpus_each() -> None:
    ctx = context(PRO_H200)
    revision = revision_of(ctx)
    objects = gang_objects(ctx, replica=1, attempt=2, revision=revision)
    pods = by_kind(objects, "Pod")
    assert len(pods) == ctx.plan.nodes_per_replica >= 2
    gang = L.gang_name("pro", 1, revision, 2)
    assert [p["metadata"]["name"] for p in pods] == [f"{gang}-{r}" for r in range(len(pods))]
    assert [p["metadata"]["labels"][L.LABEL_ROLE] for p in pods] == ["head"] + ["member"] * (len(pods) - 1)
    assert pods[0]["metadata"]["labels"][L.LABEL_SERVING] == "true"
    assert pods[0]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert all("readinessProbe" not in p["spec"]["containers"][0] for p in pods[1:])
    assert all(L.LABEL_SERVING not in p["metadata"]["labels"] for p in pods[1:])
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["subdomain"] == "pro-gangs"
        assert pod["spec"]["hostname"] == pod["metadata"]["name"]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert pod["spec"]["automountServiceAccountToken"] is False
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "launch-plan")
        (item,) = volume["downwardAPI"]["items"]
        assert item == {"path": "plan.json",
                        "fieldRef": {"fieldPath": f"metadata.annotations['{L.ANNOTATION_LAUNCH_PLAN}']"}}
    assert by_kind(objects, "Service") == by_kind(objects, "ConfigMap") == []
    (service,) = [o for o in by_kind(shared_objects(ctx), "Service") if o["metadata"]["name"] == "pro-gangs"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {L.LABEL_DEPLOYMENT: "pro", L.LABEL_COMPONENT: "engine"}


def test_the_launch_plan_is_what_the_worker_reads_with_one_rank_per_pod() -> None:
    ctx = context(PRO_H200)
    plan = parse_plan(launch_plan_document(gang_objects(ctx, 0, 1, "abc")))
    assert plan.gang.nodes == ctx.plan.nodes_per_replica == len(plan.engine.ranks)
    argv, _ = plan.engine_command(1, head_ip="10.1.2.3", node_ip="10.1.2.4")
    assert "--node-rank" in argv
    assert argv[argv.index("--node-rank") + 1] == "1"
    assert argv[argv.index("--dist-init-addr") + 1] == f"10.1.2.3:{ctx.plan.dist_init_port}"
    assert plan.gang.head_address == f"{plan.gang.pods[0]}.pro-gangs.serving.svc.cluster.local"


def test_the_revision_ignores_replicas_and_router_but_not_the_image() -> None:
    base = revision_of(context(PRO_H200))
    assert revision_of(context(PRO_H200.replicas(5))) == base
    assert revision_of(context(PRO_H200.set("router.policy", "round_robin"))) == base
    assert revision_of(context(PRO_H200.engine(image="example.invalid/sglang:next"))) != base
    assert revision_of(context(PRO_H200.set("scheduling.topologyKey", "network.topology.kubernetes.io/block"))) != base


def test_the_network_policy_keeps_ray_inside_the_gang_and_lets_the_router_reach_only_the_serving_port() -> None:
    ctx = context(PRO_H200)
    (policy,) = by_kind(gang_objects(ctx, 0, 1, "abc"), "NetworkPolicy")
    gang = policy["spec"]["podSelector"]["matchLabels"][L.LABEL_GANG]
    peers, router, operator = policy["spec"]["ingress"]
    assert peers == {"from": [{"podSelector": {"matchLabels": {L.LABEL_GANG: gang}}}]}
    assert router["ports"] == [{"protocol": "TCP", "port": ctx.plan.port}]
    assert router["from"][0]["podSelector"]["matchLabels"][L.LABEL_COMPONENT] == "router"
    assert {p["port"] for p in operator["ports"]} == {ctx.ports.worker_http, ctx.plan.port}


def test_every_engine_pod_of_the_deployment_is_closed_to_what_its_gangs_policy_does_not_open() -> None:
    ctx = context(PRO_H200)
    (closed,) = by_kind(shared_objects(ctx), "NetworkPolicy")
    assert closed["spec"] == {"podSelector": {"matchLabels": {L.LABEL_DEPLOYMENT: ctx.name,
                                                               L.LABEL_COMPONENT: "engine"}},
                              "policyTypes": ["Ingress"]}, "ingress of every kind denied"
    assert L.LABEL_GANG not in closed["metadata"]["labels"], "the deployment's, not a gang's"
    for pod in by_kind(gang_objects(ctx, 0, 1, "abc"), "Pod"):
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in closed["spec"]["podSelector"]["matchLabels"].items())


def test_a_topology_key_keeps_the_gang_in_one_block_and_its_pods_on_distinct_nodes() -> None:
    ctx = context(PRO_H200.set("scheduling.topologyKey", "network.topology.kubernetes.io/block"))
    pod = by_kind(gang_objects(ctx, 0, 1, "abc"), "Pod")[0]
    affinity = pod["spec"]["affinity"]
    (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "network.topology.kubernetes.io/block"
    (anti,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"


def test_a_topology_key_spreads_the_deployments_gangs_over_blocks_as_a_preference_only() -> None:
    ctx = context(PRO_H200.replicas(2).set("scheduling.topologyKey", "network.topology.kubernetes.io/block"))
    pods = {p["metadata"]["labels"][L.LABEL_GANG]: p for p in
            by_kind(gang_objects(ctx, 0, 1, "abc") + gang_objects(ctx, 1, 1, "abc"), "Pod")}
    gang0, gang1 = sorted(pods)
    (spread,) = pods[gang0]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    term = spread["podAffinityTerm"]
    assert term["topologyKey"] == "network.topology.kubernetes.io/block"
    assert 1 <= spread["weight"] <= 100

    def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and all(
            (labels.get(e["key"]) in e["values"]) == (e["operator"] == "In") for e in selector["matchExpressions"])

    assert matches(term["labelSelector"], pods[gang1]["metadata"]["labels"]), "another gang of the deployment"
    assert not matches(term["labelSelector"], pods[gang0]["metadata"]["labels"]), "not the gang's own pods"
    ctx_other = context(a_deployment("other").pro().h200().set("scheduling.topologyKey", "b"))
    other = by_kind(gang_objects(ctx_other, 0, 1, "abc"), "Pod")[0]
    assert not matches(term["labelSelector"], other["metadata"]["labels"]), "not another deployment's gangs"


def test_without_a_topology_key_gangs_have_no_block_preference() -> None:
    pod = by_kind(gang_objects(context(PRO_H200), 0, 1, "abc"), "Pod")[0]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in pod["spec"]["affinity"]["podAntiAffinity"]
    assert "podAffinity" not in pod["spec"]["affinity"]



@pytest.mark.parametrize(("mode", "check"), [
    ("hostNetwork", lambda spec, c: spec["hostNetwork"] and any(v["name"] == "infiniband" for v in spec["volumes"])),
    ("rdma", lambda spec, c: c["resources"]["limits"].get("rdma/rdma_shared_device_a") == "1"
     and "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]),
    ("podNetwork", lambda spec, c: "hostNetwork" not in spec and "capabilities" not in c["securityContext"]),
])
def test_each_network_mode_shapes_the_pod(mode: str, check: Any) -> None:
    ctx = context(PRO_H200.network(mode))
    pod = by_kind(gang_objects(ctx, 0, 1, "abc"), "Pod")[0]
    assert check(pod["spec"], pod["spec"]["containers"][0])


def test_multus_networks_are_requested_by_annotation() -> None:
    ctx = context(PRO_H200.network("rdma", rdma={"networks": ["ib-0", "ib-1"]}))
    pod = by_kind(gang_objects(ctx, 0, 1, "abc"), "Pod")[0]
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-0,ib-1"


@pytest.mark.parametrize(("scheduler", "kinds", "label"), [
    ("scheduler-plugins", ["PodGroup"], "scheduling.x-k8s.io/pod-group"),
    ("volcano", ["PodGroup"], None),
    ("kueue", [], "kueue.x-k8s.io/pod-group-name"),
    ("none", [], None),
])
def test_gang_schedulers_get_their_pod_group(scheduler: str, kinds: list[str], label: str | None) -> None:
    ctx = context(PRO_H200.set("scheduling.gangScheduler", scheduler).set("scheduling.queueName", "gpu"))
    objects = gang_objects(ctx, 0, 1, "abc")
    groups = by_kind(objects, "PodGroup")
    assert [g["kind"] for g in groups] == kinds
    if groups:
        assert groups[0]["spec"]["minMember"] == ctx.plan.nodes_per_replica
    pod = by_kind(objects, "Pod")[0]
    if label:
        assert pod["metadata"]["labels"][label] == L.gang_name("pro", 0, "abc", 1)


@pytest.mark.parametrize("served", [None, "scheduling.k8s.io/v1alpha2"])
def test_kubernetes_gang_scheduling_gets_a_pod_group_of_the_served_version_and_every_pod_names_it(
        served: str | None) -> None:
    ctx = dataclasses.replace(context(PRO_H200.set("scheduling.gangScheduler", "kubernetes")), gang_api=served)
    objects = gang_objects(ctx, 0, 1, "abc")
    gang = L.gang_name("pro", 0, "abc", 1)
    (group,) = by_kind(objects, "PodGroup")
    assert group["apiVersion"] == (served or "scheduling.k8s.io/v1alpha3")
    assert group["metadata"]["name"] == gang
    assert group["spec"] == {"schedulingPolicy": {"gang": {"minCount": ctx.plan.nodes_per_replica}}}
    pods = by_kind(objects, "Pod")
    assert len(pods) == ctx.plan.nodes_per_replica
    assert all(p["spec"]["schedulingGroup"] == {"podGroupName": gang} for p in pods)
    assert all("schedulerName" not in p["spec"] for p in pods), "kube-scheduler itself schedules the gang"
    plain = by_kind(gang_objects(context(PRO_H200), 0, 1, "abc"), "Pod")
    assert all("schedulingGroup" not in p["spec"] for p in plain)



@pytest.mark.parametrize(("topology_key", "served"), [("block", True), ("block", False), (None, True)])
def test_a_native_pod_group_carries_the_topology_key_where_the_cluster_takes_it(topology_key: str | None,
                                                                                served: bool) -> None:
    spec = PRO_H200.set("scheduling.gangScheduler", "kubernetes")
    if topology_key:
        spec = spec.set("scheduling.topologyKey", topology_key)
    ctx = dataclasses.replace(context(spec), gang_topology=served)
    (group,) = by_kind(gang_objects(ctx, 0, 1, "abc"), "PodGroup")
    want = {"topology": [{"key": topology_key}]} if topology_key and served else None
    assert group["spec"].get("schedulingConstraints") == want
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": ctx.plan.nodes_per_replica}}

@pytest.mark.parametrize(("topology_key", "served"), [("block", True), ("block", False), (None, True)])
def test_kueue_gang_pods_ask_for_one_block_where_the_queue_has_that_topology(topology_key: str | None,
                                                                             served: bool) -> None:
    spec = PRO_H200.set("scheduling.gangScheduler", "kueue").set("scheduling.queueName", "gpus")
    if topology_key:
        spec = spec.set("scheduling.topologyKey", topology_key)
    ctx = dataclasses.replace(context(spec), gang_topology=served)
    pods = by_kind(gang_objects(ctx, 0, 1, "abc"), "Pod")
    want = topology_key if topology_key and served else None
    assert [p["metadata"]["annotations"].get(L.KUEUE_REQUIRED_TOPOLOGY) for p in pods] == [want] * len(pods)
    assert by_kind(gang_objects(ctx, 0, 1, "abc"), "PodGroup") == []


def test_the_token_goes_by_secret_reference_only() -> None:
    ctx = context(PRO_H200.set("model.tokenSecretRef", {"name": "hf", "key": "token"}))
    objects = gang_objects(ctx, 0, 1, "abc")
    pod = by_kind(objects, "Pod")[0]
    (token,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "HF_TOKEN"]
    assert token == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert "HF_TOKEN" not in json.dumps(launch_plan_document(objects))


def test_the_router_discovers_only_serving_heads_of_its_deployment() -> None:
    ctx = context(PRO_H200)
    objects = shared_objects(ctx)
    (router,) = by_kind(objects, "Deployment")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    selectors = args[args.index("--selector") + 1: args.index("--service-discovery-port")]
    assert selectors == [f"{L.LABEL_DEPLOYMENT}=pro", f"{L.LABEL_ROLE}=head", f"{L.LABEL_SERVING}=true"]
    (role,) = by_kind(objects, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == ctx.spec.replicas * ctx.plan.nodes_per_replica - 1
    assert by_kind(shared_objects(context(PRO_H200.set("router.enabled", False))), "Deployment") == []


@pytest.mark.parametrize("replicas", [0, 1, 3])
@pytest.mark.parametrize("manifest", [PRO_H200, a_deployment("flash").h200(), a_deployment("pro4").pro().h100()],
                         ids=["pro-h200", "flash-h200", "pro-h100"])
def test_the_disruption_budget_lets_one_pod_go_at_a_time_counted_in_pods(manifest: Any, replicas: int) -> None:
    # Never maxUnavailable or a percentage: those make the disruption controller count the pods' owner's
    # /scale, which counts gangs.
    ctx = context(manifest.replicas(replicas))
    (pdb,) = by_kind(shared_objects(ctx), "PodDisruptionBudget")
    assert set(pdb["spec"]) == {"minAvailable", "selector", "unhealthyPodEvictionPolicy"}
    assert pdb["spec"]["minAvailable"] == max(0, replicas * ctx.plan.nodes_per_replica - 1)


def test_builders_are_deterministic() -> None:
    assert gang_objects(context(PRO_H200), 0, 1, "abc") == gang_objects(context(PRO_H200), 0, 1, "abc")


def test_a_simulated_engine_binds_its_pod_ip_and_models_the_plans_gpu() -> None:
    ctx = context(PRO_H200.simulated().set("engine.simulation", {"speedup": 20.0}))
    plan = parse_plan(launch_plan_document(gang_objects(ctx, 0, 1, "abc")))
    argv, _ = plan.engine_command(1, head_ip="127.64.0.2", node_ip="127.64.0.3")
    assert argv[:3] == ["python3", "-m", "mimo_worker.simengine"]
    # the last --host wins, as in argparse
    assert argv[len(argv) - 1 - argv[::-1].index("--host") + 1] == "127.64.0.3"
    assert argv[argv.index("--mimo-gpu-type") + 1] == "H200-141GB"
    assert argv[argv.index("--mimo-speedup") + 1] == "20.0"


def test_pod_template_labels_reach_every_pod_but_never_override_the_operators() -> None:
    ctx = context(PRO_H200, pod_labels=(("team", "search"), (L.LABEL_GANG, "spoofed"), (L.LABEL_COMPONENT, "x")),
                  pod_annotations=(("cost-center", "42"),))
    for pod in by_kind(gang_objects(ctx, 0, 1, "abc"), "Pod"):
        assert pod["metadata"]["labels"]["team"] == "search"
        assert pod["metadata"]["labels"][L.LABEL_GANG] == L.gang_name("pro", 0, "abc", 1)
        assert pod["metadata"]["annotations"]["cost-center"] == "42"
    (router,) = by_kind(shared_objects(ctx), "Deployment")
    assert router["spec"]["template"]["metadata"]["labels"]["team"] == "search"
    assert router["spec"]["template"]["metadata"]["labels"][L.LABEL_COMPONENT] == "router"


def test_gangs_sharing_a_network_get_ports_of_their_own() -> None:
    def ray_ports(ctx: BuildContext) -> set[int]:
        plans = [launch_plan_document(gang_objects(ctx, r, 1, "abc")) for r in range(3)]
        return {p["ports"]["ray_gcs"] for p in plans}

    assert ray_ports(context(PRO_H200.network("rdma"))) == {6379}
    assert len(ray_ports(context(PRO_H200.network("hostNetwork")))) == 3
    assert len(ray_ports(context(PRO_H200.network("rdma"), distinct_gang_ports=True))) == 3


def test_a_node_local_cache_sends_gangs_only_to_nodes_holding_the_checkpoint_and_sglang_reads_it_there() -> None:
    ctx = context(PRO_H200.set("model.cache", {"mode": "node-local"}))
    objects = gang_objects(ctx, 0, 1, "abc")
    pod = by_kind(objects, "Pod")[0]
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expression,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert expression["key"].startswith("weights.mimo-operator.io/")
    assert expression["values"] == ["ready"]
    plan = parse_plan(launch_plan_document(objects))
    argv, env = plan.engine_command(0, head_ip="10.0.0.1", node_ip="10.0.0.1")
    assert argv[argv.index("--model-path") + 1].startswith("/mimo-cache/weights/")
    assert env["HF_HUB_OFFLINE"] == "1"
    plain = by_kind(gang_objects(context(PRO_H200), 0, 1, "abc"), "Pod")[0]
    assert "nodeAffinity" not in plain["spec"]["affinity"]


@pytest.mark.parametrize("builder", [
    pytest.param(PRO_H200, id="sglang"),
    pytest.param(PRO_H200.cache("shared-volume", claimName="mimo-weights"), id="weights cache"),
    pytest.param(a_deployment("sim").pro().h200().simulated(), id="simulated"),
])
def test_the_builders_render_the_planners_launch_and_add_nothing(builder: DeploymentBuilder) -> None:
    ctx = context(builder)
    document = parse_plan(launch_plan_document(gang_objects(ctx, 0, 1, "r1-abc")))
    assert document.engine == ctx.plan.launch
    assert document.engine.program == ctx.plan.argv(0, "h")[:len(document.engine.program)]
    for rank in document.engine.ranks:
        assert rank.env == dict(ctx.plan.env)
    cached = "--model-path" in ctx.plan.server_args(0, "h") and ctx.spec.model.cache.mode != "none"
    assert ctx.plan.model_path.startswith("/mimo-cache/weights/") == cached
