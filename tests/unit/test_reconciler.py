"""The reconciler as a unit, against an in-memory fake of the `Kube` boundary and a fake clock.

Whole sequences — create, fail, back off, budget, roll, drain, scale flap, refusal, delete — with the
deployment body each reconcile is given chosen adversarially (the watch cache may be far behind our own
status writes), and the API writes of each step counted.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mimo_operator import labels as L
from mimo_operator import reconciler
from mimo_operator.handlers import intent_of
from mimo_operator.reconciler import MAX_GANG_CREATES, Memory
from tests.helpers.fakekube import FakeKube
from tests.helpers.operator_world import CRD, NS, World, writes_during_weights_download
from tests.helpers.specs import DeploymentBuilder, a_deployment


def one_replica() -> DeploymentBuilder:
    return a_deployment("d").replicas(1)


# Which deployment body a reconcile is handed: what a pod event's reconcile has is the last MiMoDeployment
# watch event, which may predate any number of our own status writes.
BODIES: dict[str, Callable[[World], dict[str, Any] | None]] = {
    "the newest body": lambda w: None,
    "the body of the first watch event, before any status": lambda w: w.bodies[0],
    "a body one status write behind": lambda w: w.bodies[-2] if len(w.bodies) > 1 else w.bodies[0],
}


@pytest.mark.parametrize("given", list(BODIES), ids=list(BODIES))
@pytest.mark.parametrize("process", ["one operator process", "a new operator process every reconcile"])
def test_a_budget_of_n_allows_exactly_n_recreations_with_doubling_back_off_whatever_body_comes(
        given: str, process: str) -> None:
    w = World(one_replica(), budget=3)
    creations: list[float] = []
    for _ in range(120):  # one reconcile a second of fake time, pods failing as fast as they start
        if process != "one operator process":
            w.memory = Memory()
        before = set(w.created)
        w.reconcile(BODIES[given](w))
        if set(w.created) - before:
            creations.append(w.now)
        w.run_pods()  # Ready for a moment: that alone proves nothing
        w.reconcile(BODIES[given](w))
        w.fail_pods()
        w.kube.finish_deletions()
        w.now += 1.0 if w.live_gangs() else 5.0
    assert len(creations) == 1 + 3, "the first gang and exactly three recreations"
    gaps = [b - a for a, b in itertools.pairwise(creations)]
    assert gaps == [11.0, 21.0, 41.0], "a back-off of 10, 20, 40 s after each failure (seen one tick later)"
    assert len(set(w.created)) == len(w.created), "no gang name is used twice"
    status = w.status()
    (record,) = status["replicaRecords"]
    assert record["failed"]
    assert record["restarts"] == 4
    assert status["phase"] == "Degraded"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "exit code 1 (Error)" in degraded["message"]


def test_a_failing_replicas_reason_is_in_status_from_its_first_failure() -> None:
    w = World(one_replica())
    w.reconcile()
    w.fail_pods()
    w.now += 1
    w.reconcile(w.bodies[0])  # a pod event's reconcile, holding the body from before any status
    degraded = next(c for c in w.status()["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "exit code 1 (Error)" in degraded["message"]
    assert "back-off" in degraded["message"]


def test_a_spent_budget_starts_over_when_the_spec_changes() -> None:
    w = World(one_replica(), budget=0)
    w.reconcile()
    w.fail_pods()
    w.now += 1
    w.reconcile()
    w.kube.finish_deletions()
    w.now += 100
    w.reconcile()
    assert w.status()["replicaRecords"][0]["failed"]
    assert not w.live_gangs()
    w.edit("engine.image", "registry.example.com/mimo/worker:fixed")
    w.reconcile()
    assert list(w.live_gangs().values()) == [0], "the failed replica comes back for the new spec"
    assert not w.status()["replicaRecords"][0]["failed"]


def test_a_scale_flap_during_a_drain_never_reuses_a_name_and_leaves_no_orphan() -> None:
    w = World(a_deployment("d").replicas(3))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    assert w.status()["readyReplicas"] == 3
    first = dict(w.live_gangs())
    w.edit("replicas", 2)
    w.reconcile()
    draining = [p["metadata"]["labels"][L.LABEL_GANG] for p in w.pods()
                if L.ANNOTATION_DRAIN_STARTED in (p["metadata"].get("annotations") or {})]
    assert [first[g] for g in draining] == [2], "the highest slot drains"
    w.now += 6
    w.reconcile(w.bodies[0])  # asks the head to drain
    w.edit("replicas", 3)
    w.reconcile(w.bodies[1])
    w.run_pods()
    w.now += 30
    w.reconcile(w.bodies[0])  # the drained gang goes
    w.kube.finish_deletions()
    w.now += 31
    w.reconcile()
    assert len(w.created) == len(set(w.created)) == 4, w.created
    assert sorted(w.live_gangs().values()) == [0, 1, 2]
    assert w.orphans() == []
    records = {r["replica"]: r["attempt"] for r in w.status()["replicaRecords"]}
    assert records[2] == 2, "the refilled slot's attempt went up, not back to 1"


def test_a_scale_down_takes_a_starting_gang_before_a_serving_one() -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    w.edit("replicas", 3)
    w.reconcile()  # slot 2: created, still pending
    w.edit("replicas", 2)
    w.reconcile()
    assert sorted(w.live_gangs().values()) == [0, 1]


def test_an_object_of_a_gang_without_pods_is_collected() -> None:
    w = World(one_replica())
    w.reconcile()
    leftover = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "d-0-dead0", "namespace": NS, "labels": {L.LABEL_DEPLOYMENT: "d", L.LABEL_COMPONENT: "engine",
                                                         L.LABEL_GANG: "d-0-dead0"}}}
    asyncio.run(w.kube.create(leftover))
    w.reconcile()
    assert w.kube.of("ConfigMap", NS, {L.LABEL_GANG: "d-0-dead0"}), "not within the creation grace"
    w.now += 31
    w.reconcile()
    assert not w.kube.of("ConfigMap", NS, {L.LABEL_GANG: "d-0-dead0"})
    assert w.orphans() == []


def test_the_pod_group_of_a_scheduler_the_spec_no_longer_names_goes_with_its_gang() -> None:
    w = World(one_replica().set("scheduling.gangScheduler", "scheduler-plugins"))
    w.kube.served = {"scheduling.x-k8s.io/v1alpha1": frozenset({"podgroups"}),
                     "scheduling.k8s.io/v1alpha2": frozenset({"podgroups"})}
    w.reconcile()
    (old,) = w.kube.of("PodGroup", NS)
    assert old["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    gang = old["metadata"]["name"]
    # The spec now names Kubernetes' own gang scheduling; the old gang's pods are gone (a failure or a
    # rollout), and its scheduler-plugins PodGroup goes with them although the spec no longer names it.
    w.edit("scheduling.gangScheduler", "kubernetes")
    for pod in w.kube.of("Pod", NS, {L.LABEL_GANG: gang}):
        asyncio.run(w.kube.delete("v1", "Pod", NS, pod["metadata"]["name"]))
    for _ in range(3):
        w.kube.finish_deletions()
        w.now += 31
        w.reconcile()
    groups = {(g["apiVersion"], g["metadata"]["name"]) for g in w.kube.of("PodGroup", NS)}
    assert ("scheduling.x-k8s.io/v1alpha1", gang) not in groups
    assert {api for api, _ in groups} == {"scheduling.k8s.io/v1alpha2"}, "the new gangs' PodGroups"



@pytest.mark.parametrize("accepted", [True, False])
def test_the_topology_key_goes_into_native_pod_groups_only_where_a_dry_run_takes_it(accepted: bool) -> None:
    w = World(one_replica().set("scheduling.gangScheduler", "kubernetes").set("scheduling.topologyKey", "block"))
    w.kube.served = {"scheduling.k8s.io/v1alpha3": frozenset({"podgroups"})}
    w.kube.accepted = {"scheduling.k8s.io/v1alpha3 PodGroup topology": accepted}
    w.reconcile()
    (group,) = w.kube.of("PodGroup", NS)
    assert w.kube.dry_runs
    assert group["spec"].get("schedulingConstraints") == ({"topology": [{"key": "block"}]} if accepted else None)
    assert w.kube.of("Pod", NS), "the gang is created either way"

def test_a_pod_list_that_lags_the_creates_neither_duplicates_a_gang_nor_holds_back_the_other_slots() -> None:
    w = World(a_deployment("d").replicas(6))
    w.reconciler.options = dataclasses.replace(w.reconciler.options, max_gang_creates=2)
    w.kube.lag = True  # the pod watch shows none of the new pods for now
    for _ in range(4):
        w.reconcile()
        w.now += 0.5
    assert len(w.created) == len(set(w.created)) == 6, w.created
    assert sorted(w.live_gangs().values()) == list(range(6))
    mark = len(w.kube.writes)
    w.reconcile()
    assert not [v for v, kind, _ in w.kube.writes_since(mark) if (v, kind) == ("create", "Pod")]
    w.kube.catch_up()
    w.reconcile()
    assert len(w.created) == 6
    # A gang deleted before the list showed it is not planned from its creates any more.
    w.kube.lag = True
    w.edit("replicas", 7)
    w.reconcile()
    w.edit("replicas", 6)
    w.reconcile()
    w.reconcile()
    assert sorted(w.live_gangs().values()) == list(range(6))
    assert len(w.created) == 7
    assert sorted(g["name"] for g in w.status()["gangs"]) == sorted(w.live_gangs()), "no gang planned from memory"
    w.kube.catch_up()
    # A gang whose pods the list never shows is planned as created only until the guard's deadline.
    w.kube.lag = True
    w.edit("replicas", 7)
    w.reconcile()
    assert len(w.created) == 8
    w.now += 31
    w.reconcile()
    assert len(w.created) == 9, "after the deadline the list is the truth: slot 6 is created again"


def test_shared_objects_are_applied_when_the_spec_changes_them_and_checked_in_place_every_half_minute() -> None:
    w = World(one_replica())
    w.reconcile()
    assert w.kube.of("Deployment", NS)
    asyncio.run(w.kube.delete("apps/v1", "Deployment", NS, "d-router"))  # someone deleted the router
    w.now += 5
    w.reconcile()
    assert not w.kube.of("Deployment", NS), "not looked for again within half a minute"
    w.edit("router", {"replicas": 3})
    w.reconcile()
    (router,) = w.kube.of("Deployment", NS)
    assert router["spec"]["replicas"] == 3, "a change of the spec is applied at once"
    asyncio.run(w.kube.delete("apps/v1", "Deployment", NS, "d-router"))
    w.now += 31
    w.reconcile()
    assert w.kube.of("Deployment", NS), "put back by the next check"


KUEUE = "kueue.x-k8s.io/v1beta2"


def kueue_queue(kube: FakeKube, flavors: dict[str, list[str] | None]) -> None:
    """LocalQueue ``gpus`` in the test namespace on ClusterQueue ``gpus``, whose flavors are ``flavors``: each a
    Topology's levels, or None for a flavor without one."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": "gpus", "namespace": NS},
         "spec": {"clusterQueue": "gpus"}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": "gpus"}, "spec": {"resourceGroups": [
            {"coveredResources": ["nvidia.com/gpu"], "flavors": [{"name": f} for f in flavors]}]}},
    ]
    for flavor, levels in flavors.items():
        spec: dict[str, Any] = {"nodeLabels": {"pool": flavor}}
        if levels is not None:
            spec["topologyName"] = f"{flavor}-topology"
            objects.append({"apiVersion": KUEUE, "kind": "Topology", "metadata": {"name": f"{flavor}-topology"},
                            "spec": {"levels": [{"nodeLabel": level} for level in levels]}})
        objects.append({"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": flavor}, "spec": spec})
    for obj in objects:
        asyncio.run(kube.create(obj))


@pytest.mark.parametrize(("flavors", "asks"), [
    pytest.param({"tas": ["block", "kubernetes.io/hostname"]}, True, id="a flavor whose topology has the level"),
    pytest.param({"plain": None, "tas": ["block"]}, True, id="one of two flavors has it"),
    pytest.param({"plain": None, "tas": ["rack", "kubernetes.io/hostname"]}, False,
                 id="a topology without the level beside a flavor without one"),
    pytest.param({"plain": None}, False, id="no flavor with a topology"),
])
def test_kueue_is_asked_for_one_block_only_where_the_queues_flavors_have_that_level(
        flavors: dict[str, list[str] | None], asks: bool) -> None:
    w = World(one_replica().pro().set("scheduling.gangScheduler", "kueue").set("scheduling.queueName", "gpus")
              .set("scheduling.topologyKey", "block"))
    w.kube.served = {KUEUE: frozenset({"workloads", "localqueues", "clusterqueues", "resourceflavors", "topologies"})}
    kueue_queue(w.kube, flavors)
    w.reconcile()
    pods = w.kube.of("Pod", NS)
    assert len(pods) >= 2, "the gang is created either way"
    # Asking where no flavor has the level would leave the gang gated for ever.
    assert {p["metadata"]["annotations"].get(L.KUEUE_REQUIRED_TOPOLOGY) for p in pods} == {"block" if asks else None}


@pytest.mark.parametrize("flavors", [
    pytest.param({"tas": ["rack", "kubernetes.io/hostname"]}, id="one flavor"),
    pytest.param({"a": ["rack"], "b": ["kubernetes.io/hostname"]}, id="two flavors, neither with the level"),
])
def test_a_topology_key_that_kueue_cannot_place_by_is_refused_naming_the_field_and_the_levels(
        flavors: dict[str, list[str] | None]) -> None:
    w = World(one_replica().pro().set("scheduling.gangScheduler", "kueue").set("scheduling.queueName", "gpus")
              .set("scheduling.topologyKey", "block"))
    w.kube.served = {KUEUE: frozenset({"workloads", "localqueues", "clusterqueues", "resourceflavors", "topologies"})}
    kueue_queue(w.kube, flavors)
    w.reconcile()
    status = w.status()
    assert status["phase"] == "Refused"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"].startswith("spec.scheduling.topologyKey: 'block' is not a level of the Kueue Topology")
    assert "rack" in ready["message"], "the levels it may name"
    assert w.pods() == [], "no gang that Kueue could place across blocks"
    w.edit("scheduling", {"gangScheduler": "kueue", "queueName": "gpus", "topologyKey": "rack"})
    w.reconcile()
    assert w.status()["phase"] != "Refused"
    pods = w.kube.of("Pod", NS)
    assert len(pods) >= 2
    assert {p["metadata"]["annotations"].get(L.KUEUE_REQUIRED_TOPOLOGY) for p in pods} == {"rack"}


def test_what_kueue_says_of_topology_is_read_again_after_a_minute() -> None:
    w = World(one_replica().pro().set("scheduling.gangScheduler", "kueue").set("scheduling.queueName", "gpus")
              .set("scheduling.topologyKey", "block"))
    w.kube.served = {KUEUE: frozenset({"workloads", "localqueues", "clusterqueues", "resourceflavors", "topologies"})}
    kueue_queue(w.kube, {"plain": None})
    w.reconcile()
    for kind, namespace in (("LocalQueue", NS), ("ClusterQueue", "")):
        asyncio.run(w.kube.delete(KUEUE, kind, namespace, "gpus"))
    kueue_queue(w.kube, {"tas": ["block"]})  # the administrator made the queue's flavor topology-aware
    w.edit("replicas", 2)
    w.reconcile()
    assert not any(L.KUEUE_REQUIRED_TOPOLOGY in p["metadata"]["annotations"] for p in w.kube.of("Pod", NS))
    w.now += 61
    w.edit("replicas", 3)
    w.reconcile()
    asked = [p for p in w.kube.of("Pod", NS) if L.KUEUE_REQUIRED_TOPOLOGY in p["metadata"]["annotations"]]
    assert {p["metadata"]["labels"][L.LABEL_REPLICA] for p in asked} == {"2"}


def test_a_kueue_queue_that_does_not_exist_is_refused_naming_the_field_until_it_is_created() -> None:
    w = World(one_replica().set("scheduling.gangScheduler", "kueue").set("scheduling.queueName", "gpus"))
    w.kube.served = {"kueue.x-k8s.io/v1beta2": frozenset({"workloads", "localqueues"})}
    w.reconcile()
    status = w.status()
    assert status["phase"] == "Refused"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"].startswith("spec.scheduling.queueName: no Kueue LocalQueue 'gpus' in namespace")
    assert w.kube.of("Pod", NS) == []
    asyncio.run(w.kube.create({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                               "metadata": {"name": "gpus", "namespace": NS}, "spec": {"clusterQueue": "gpus"}}))
    w.reconcile()
    assert w.status()["phase"] != "Refused"
    pods = w.kube.of("Pod", NS)
    assert pods
    assert all(p["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus" for p in pods)


REFUSALS = [
    ("a pod label value with a space", "Pod",
     'Pod "d-0-1a2b3-0" is invalid: metadata.labels: Invalid value: "a b": a valid label must be ...',
     "spec.podTemplate.labels"),
    ("a nodeSelector value with spaces", "Pod",
     'Pod "d-0-1a2b3-0" is invalid: spec.nodeSelector: Invalid value: "a b c": a valid label must be ...',
     "spec.hardware.nodeSelector"),
    ("a topologyKey that is not a label key", "Pod",
     'Pod "d-0-1a2b3-0" is invalid: spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution'
     '[0].topologyKey: Invalid value: "a b": name part must consist of ...', "spec.scheduling.topologyKey"),
    ("a deployment name with dots in a pod's DNS subdomain", "Pod",
     'Pod "mimo.pro.v25-0-1a2b3-0" is invalid: spec.subdomain: Invalid value: "mimo.pro.v25-gangs": '
     "a lowercase RFC 1123 label must consist of ...", "metadata.name"),
]


@pytest.mark.parametrize(("case", "kind", "message", "spec_field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_an_api_refusal_of_a_child_names_the_field_and_stops_gang_creation_until_the_spec_changes(
        case: str, kind: str, message: str, spec_field: str) -> None:
    w = World(one_replica())
    w.kube.fail("create", kind, 422, message)
    result = w.reconcile()
    status = w.status()
    assert status["refusal"]["field"] == spec_field
    accepted = next(c for c in status["conditions"] if c["type"] == "ChildrenAccepted")
    assert accepted["status"] == "False"
    assert spec_field in accepted["message"]
    assert "is invalid" in accepted["message"]
    assert any(e.reason == "ChildRefused" and spec_field in e.message for e in result.events)
    assert w.pods() == [], "nothing of the half-created gang is left"
    assert w.orphans() == []
    assert not w.kube.of("ConfigMap", NS, {L.LABEL_COMPONENT: "engine"})
    # Level-based: later reconciles, from any body, create nothing and write nothing.
    mark = len(w.kube.writes)
    for body in (w.bodies[0], None, None):
        w.now += 60
        w.reconcile(body)
    assert w.kube.writes_since(mark) == []
    assert len(w.created) == 0
    w.edit("podTemplate", {"labels": {"team": "fixed"}})
    w.reconcile()
    assert len(w.live_gangs()) == 1, "a changed spec is tried again"
    assert w.status().get("refusal") is None


def test_status_shows_the_desired_replicas_and_the_nodes_they_take_before_any_gang_exists() -> None:
    w = World(a_deployment("d").replicas(3))
    w.reconcile()
    status = w.status()
    assert status["desiredReplicas"] == 3
    assert status["nodes"] == 3 * status["plan"]["nodesPerReplica"]
    w.edit("replicas", 1)
    w.reconcile()
    assert (w.status()["desiredReplicas"], w.status()["nodes"]) == (1, w.status()["plan"]["nodesPerReplica"])


def test_a_settled_deployment_writes_nothing() -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    assert w.status()["phase"] == "Ready"
    mark = len(w.kube.writes)
    for body in (None, w.bodies[0], w.bodies[1]):
        w.now += 30
        w.reconcile(body)
    assert w.kube.writes_since(mark) == []


@pytest.mark.parametrize("edit", [
    lambda status: {},                                           # wiped (a patch of the status subresource)
    lambda status: {**status, "phase": "Degraded", "readyReplicas": 0},
], ids=["wiped", "edited"])
def test_a_status_someone_else_wrote_is_written_again(edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    # HPA reads status.selector and status.replicas through the scale subresource; kubectl get reads the phase.
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.now += 60
    w.reconcile()
    decided = w.status()
    assert decided["phase"] == "Ready"
    asyncio.run(w.kube.merge_patch(CRD, "MiMoDeployment", NS, "d", {"status": None}, subresource=None))
    asyncio.run(w.kube.merge_patch(CRD, "MiMoDeployment", NS, "d", {"status": edit(copy.deepcopy(decided))},
                                   subresource="status"))
    w.now += 31
    w.reconcile()
    assert {k: w.status().get(k) for k in ("phase", "readyReplicas", "selector", "replicas")} == {
        k: decided[k] for k in ("phase", "readyReplicas", "selector", "replicas")}
    mark = len(w.kube.writes)
    w.now += 31
    w.reconcile()
    assert w.kube.writes_since(mark) == [], "once as decided, nothing more"


@pytest.mark.parametrize("edit", [
    {"ingress": [{}]},                                              # opens every port to everyone
    {"podSelector": {"matchLabels": {"nothing": "selected"}}},      # closes nothing
    {"policyTypes": None},
])
def test_network_policies_edited_by_hand_are_put_back_as_built(edit: dict[str, Any]) -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    policies = {key: copy.deepcopy(o) for key, o in w.kube.objects.items() if key[1] == "NetworkPolicy"}
    assert len(policies) == 3  # the deployment's closing one, one per gang
    for _, _, _, name in policies:
        asyncio.run(w.kube.merge_patch("networking.k8s.io/v1", "NetworkPolicy", NS, name, {"spec": edit}))
    assert all(w.kube.objects[key]["spec"] != o["spec"] for key, o in policies.items())
    w.now += 31  # the shared objects' check and the gangs' sweep come every 30 s
    w.reconcile()
    w.reconcile()
    assert {key: w.kube.objects[key]["spec"] for key in policies} == {key: o["spec"] for key, o in policies.items()}
    mark = len(w.kube.writes)
    w.now += 31
    w.reconcile()
    assert w.kube.writes_since(mark) == [], "nothing more once they are as built"


def _without_defaults(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_defaults(v) for k, v in value.items() if k != "defaultedField"}
    return [_without_defaults(v) for v in value] if isinstance(value, list) else value


def _router_edits(router: dict[str, Any]) -> dict[str, Any]:
    """A router Deployment as kubectl scale, set image and set env leave it."""
    container = router["spec"]["template"]["spec"]["containers"][0]
    return {"spec": {"replicas": 0, "template": {"spec": {"containers": [
        {**container, "image": "elsewhere/router:latest", "env": [*container["env"], {"name": "DEBUG", "value": "1"}]},
    ]}}}}


@pytest.mark.parametrize(("kind", "name", "edit"), [
    ("Deployment", "d-router", _router_edits),
    ("Role", "d-router", lambda role: {"rules": [*role["rules"], {"apiGroups": [""], "resources": ["secrets"],
                                                                 "verbs": ["get"]}]}),
    ("RoleBinding", "d-router", lambda binding: {"subjects": [*binding["subjects"], {"kind": "Group",
                                                                                    "name": "everyone"}]}),
    ("Service", "d-router", lambda svc: {"spec": {"selector": {"app": "something-else"}}}),
    ("PodDisruptionBudget", "d-engine", lambda pdb: {"spec": {"minAvailable": 0}}),
    ("ServiceAccount", "d-router", lambda sa: {"automountServiceAccountToken": False}),
])
def test_shared_objects_edited_by_hand_are_put_back_and_the_api_s_defaults_left_alone(
        kind: str, name: str, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    key = next(k for k in w.kube.objects if k[1] == kind and k[3] == name)
    built = copy.deepcopy(w.kube.objects[key])
    # What the API adds to the object is not an edit: defaults at every depth, inside list items too.
    defaulted = copy.deepcopy(built)
    if "spec" in defaulted:
        defaulted["spec"]["defaultedField"] = 7
    for item in (defaulted.get("rules") or defaulted.get("subjects") or []):
        item["defaultedField"] = "x"
    w.kube.objects[key] = defaulted
    mark = len(w.kube.writes)
    w.now += 31  # the shared objects are checked every 30 s
    w.reconcile()
    w.reconcile()
    assert w.kube.writes_since(mark) == [], "the API's defaults read as an edit"
    asyncio.run(w.kube.merge_patch(key[0], kind, NS, name, edit(copy.deepcopy(defaulted))))
    assert w.kube.objects[key] != defaulted
    w.now += 31
    w.reconcile()
    w.reconcile()
    restored = w.kube.objects[key]
    assert ({k: _without_defaults(v) for k, v in restored.items() if k != "metadata"}
            == {k: v for k, v in built.items() if k != "metadata"})
    assert restored.get("spec", {}).get("defaultedField", 7) == 7, "the API's defaults are left alone"
    mark = len(w.kube.writes)
    w.now += 31
    w.reconcile()
    assert w.kube.writes_since(mark) == [], "nothing more once it is as built"


def test_a_live_gang_s_network_policy_deleted_by_hand_is_created_again() -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.now += 60
    w.reconcile()
    gang = sorted(w.live_gangs())[0]
    key = ("networking.k8s.io/v1", "NetworkPolicy", NS, gang)
    built = copy.deepcopy(w.kube.objects[key])
    asyncio.run(w.kube.delete(*key))
    assert key not in w.kube.objects
    w.now += 31
    w.reconcile()
    again = w.kube.objects[key]
    assert (again["spec"], again["metadata"]["labels"]) == (built["spec"], built["metadata"]["labels"])
    assert set(w.live_gangs()) == set(w.gang_names()), "the gangs themselves are left alone"


def test_a_pod_stuck_terminating_is_asked_about_once_not_on_every_reconcile() -> None:
    w = World(a_deployment("d").replicas(1))
    w.reconcile()
    w.run_pods()
    w.now += 100
    w.reconcile()
    # Its node is gone: the pod is being deleted, and stays so.
    asyncio.run(w.kube.delete("v1", "Pod", NS, w.pods()[0]["metadata"]["name"]))
    for _ in range(3):
        w.now += 30
        w.reconcile()
        w.run_pods()
    w.memory = Memory()  # a restarted operator did not delete it
    asked: list[str] = []
    get = w.kube.get

    async def counting(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        asked.append(kind)
        return await get(api_version, kind, namespace, name)

    w.kube.get = counting  # type: ignore[method-assign]
    for _ in range(10):
        w.now += 10
        w.reconcile()
    assert asked.count(L.KIND) <= 2, "the first read after the restart, and once about the stuck pod"
    assert len(w.live_gangs()) == 1


def test_writes_of_each_step_of_a_first_start() -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    first = [(verb, kind) for verb, kind, _ in w.kube.writes]
    # per gang: a NetworkPolicy and one pod (the launch plan travels in the pod); the shared objects, the
    # deployment's one headless Service among them; two statuses: the deployment seen (its shared objects
    # being applied, no gang yet), then its gangs created
    assert first.count(("create", "Pod")) == 2
    assert first.count(("create", "NetworkPolicy")) == 2
    assert not {("create", "ConfigMap"), ("create", "Service")} & set(first)
    assert first.count(("patch", L.KIND)) == 2
    assert first.index(("create", "Pod")) > max(i for i, (verb, _) in enumerate(first) if verb == "apply"), \
        "a gang before the shared objects (the policy that closes the engine pods among them)"
    status_writes = []
    for step in ("the gangs are seen pending", "nothing changed", "nothing changed", "the pods run"):
        if step == "the pods run":
            w.run_pods()
        mark = len(w.kube.writes)
        w.now += 2
        w.reconcile(w.bodies[0])
        status_writes.append(len(w.kube.writes_since(mark)))
    assert status_writes == [1, 0, 0, 1], "a status write only when what it says changes"
    assert w.status()["phase"] == "Ready"


def test_a_deployment_deleted_meanwhile_is_left_alone() -> None:
    w = World(one_replica())
    w.reconcile()
    stale = w.bodies[0]
    asyncio.run(w.kube.delete(CRD, L.KIND, NS, "d"))
    mark = len(w.kube.writes)
    w.memory = Memory()
    w.reconcile(stale)
    assert w.kube.writes_since(mark) == []


def replacement(w: World) -> str:
    """The gang of the one slot after its old gang failed: the deletion ends, the back-off passes."""
    w.now += 1
    w.reconcile()
    w.kube.finish_deletions()
    w.now += 60
    w.reconcile()
    (gang,) = w.live_gangs()
    return gang


def test_pods_the_garbage_collector_deletes_after_the_deployment_get_no_new_gangs() -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    stale = w.body()
    # kubectl delete: the deployment goes at once, and the garbage collector deletes its pods after; their
    # events reach the operator before the deployment's own, and it decides from the status it last wrote.
    asyncio.run(w.kube.delete(CRD, L.KIND, NS, "d"))
    for pod in w.pods():
        asyncio.run(w.kube.delete("v1", "Pod", NS, pod["metadata"]["name"]))
    mark = len(w.kube.writes)
    w.now += 1
    w.reconcile(stale)
    assert [x for x in w.kube.writes_since(mark) if x[0] == "create"] == [], "no gang for a deleted deployment"


def test_a_pod_someone_else_deletes_while_the_deployment_exists_gets_its_gang_replaced() -> None:
    w = World(a_deployment("d").replicas(1))
    w.reconcile()
    w.run_pods()
    w.reconcile()
    (first,) = w.live_gangs()
    asyncio.run(w.kube.delete("v1", "Pod", NS, w.pods()[0]["metadata"]["name"]))  # evicted
    assert replacement(w) != first


def test_a_new_leader_decides_from_a_fresh_read() -> None:
    w = World(one_replica())
    w.reconcile()
    w.fail_pods()
    w.now += 1
    w.reconcile()  # failure counted, back-off set
    w.kube.finish_deletions()
    w.memory.forget_status()  # leadership lost and regained: another replica may have written
    w.now += 1
    w.reconcile(w.bodies[0])
    assert not w.live_gangs(), "still in back-off, as the fresh status says"


@pytest.mark.parametrize(("case", "change", "pokes"), [
    ("a status write of our own", lambda b: b.setdefault("status", {}).update(phase="Ready"), False),
    ("a new resourceVersion and managedFields", lambda b: b["metadata"].update(
        resourceVersion="99", managedFields=[{"manager": "x"}]), False),
    ("a spec edit", lambda b: b["spec"].update(replicas=5), True),
    ("a new annotation", lambda b: b["metadata"].setdefault("annotations", {}).update(a="b"), True),
], ids=lambda v: v if isinstance(v, str) else "")
def test_only_events_that_change_what_is_asked_poke_the_loop(case: str, change: Callable[[dict[str, Any]], None],
                                                            pokes: bool) -> None:
    body = a_deployment("d").build()
    body["metadata"].update(namespace=NS, uid="u", generation=1, resourceVersion="1")
    after = copy.deepcopy(body)
    change(after)
    assert (intent_of(after) != intent_of(body)) is pokes


@pytest.mark.parametrize(("progress", "most"), [(True, 11), (False, 1)],
                         ids=["the download reports progress", "it reports none"])
def test_a_ten_minute_weights_download_of_two_replicas_writes_nothing_after_the_first_status(
        progress: bool, most: int) -> None:
    figures = writes_during_weights_download(minutes=10, replicas=2, progress=progress)
    assert figures.reconciles >= 100, "the loop keeps looking (every few seconds) while it waits"
    assert set(figures.after) <= {("patch", L.KIND, "d")}, "no attempt, record or child is written while blocked"
    # Status changes once when the download starts (Pending → Downloading), and then only with its
    # progress, at most once a minute.
    assert 1 <= len(figures.after) <= most


def test_a_refused_pod_of_a_multi_node_gang_leaves_none_of_its_ranks_behind() -> None:
    w = World(a_deployment("d").pro().h200().replicas(1))
    w.kube.fail("create", "Pod", 422, 'Pod "d-0-1a2b3-0" is invalid: spec.nodeSelector: Invalid value: "a b c"')
    w.reconcile()
    assert [(v, k) for v, k, _ in w.kube.writes].count(("create", "Pod")) == 2, "both ranks were tried"
    assert w.live_gangs() == {}, "the rank the API accepted is deleted with the rest"
    assert w.orphans() == []
    assert w.status()["refusal"]["field"] == "spec.hardware.nodeSelector"


def test_a_refusal_whose_message_names_no_field_is_traced_to_the_spec_value_it_quotes() -> None:
    w = World(one_replica().set("podTemplate", {"labels": {"example.com/forbidden": "yes"}}))
    w.kube.fail("create", "Pod", 422, 'pods "d-0-1a2b3-0" is forbidden: ValidatingAdmissionPolicy \'p\' with '
                                      "binding 'p' denied request: the label example.com/forbidden is not allowed")
    w.reconcile()
    assert w.status()["refusal"]["field"] == "spec.podTemplate.labels"


def test_the_policy_closing_the_engine_pods_is_in_place_before_any_gang_and_a_gang_is_one_round_of_creates() -> None:
    w = World(a_deployment("d").replicas(2))
    w.reconcile()
    writes = [(verb, kind) for verb, kind, _ in w.kube.writes]
    closed = writes.index(("apply", "NetworkPolicy"))
    assert closed < writes.index(("create", "NetworkPolicy"))
    assert closed < writes.index(("create", "Pod"))
    assert w.kube.of("NetworkPolicy", NS, {L.LABEL_DEPLOYMENT: "d", L.LABEL_GANG: None})
    assert len(w.live_gangs()) == 2


def test_a_shared_object_the_api_refuses_holds_back_every_gang_from_the_first_reconcile_on() -> None:
    w = World(one_replica())
    w.kube.fail("apply", "Deployment", 422, 'Deployment.apps "d-router" is invalid: spec.template.spec.'
                                            'containers[0].image: Invalid value: "a b": invalid reference format')
    result = w.reconcile()
    assert any(e.reason == "ChildRefused" for e in result.events)
    assert w.status()["refusal"]
    assert w.pods() == [], "no gang created for a deployment whose router the API refused"


def test_a_lost_status_write_does_not_make_a_gang_name_come_back() -> None:
    w = World(one_replica(), budget=5)
    w.apply_shared()
    w.kube.fail("patch", L.KIND, 500, "etcd timeout")

    async def lose_the_lease_before_the_write_is_tried_again() -> None:
        await w.reconciler.reconcile(w.body(), w.memory)
        await w.memory.creations.settle()  # the gang is created
        for _ in range(200):
            if w.memory.status.failures:
                break
            await asyncio.sleep(0.01)
        assert w.memory.status.failures == 1, "its record's write failed"
        # This process stops leading before it tries again, and leads again: it reads the status afresh.
        await w.memory.stop()
        w.memory.forget_status()

    asyncio.run(lose_the_lease_before_the_write_is_tried_again())
    assert not w.status().get("replicaRecords"), "the record was never written"
    (first,) = w.live_gangs()
    w.fail_pods()
    assert replacement(w) != first


def test_a_failed_status_write_fails_no_reconcile_and_is_tried_again_until_it_lands(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler, "_STATUS_RETRY_SECONDS", 0.01)
    w = World(a_deployment("d").replicas(2))
    w.kube.fail("patch", L.KIND, 500, "etcd timeout", times=2)
    w.reconcile()  # before, the reconcile failed and its loop backed off
    assert [v for v, k, _ in w.kube.writes if k == L.KIND and v == "patch"] == ["patch"] * 3, \
        "two failed, the third landed"
    assert sorted(r["replica"] for r in w.status()["replicaRecords"]) == [0, 1]
    assert len(w.live_gangs()) == 2


def test_a_reconcile_decides_from_the_status_it_decided_while_that_is_still_being_written() -> None:
    w = World(a_deployment("d").replicas(2))
    w.apply_shared()
    hold = asyncio.Event()
    patch = w.kube.merge_patch

    async def slow_status(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get("subresource") == "status":
            await hold.wait()
        return await patch(*args, **kwargs)

    w.kube.merge_patch = slow_status  # type: ignore[method-assign]

    async def two_reconciles_then_the_write() -> None:
        before = w.status()
        await w.reconciler.reconcile(w.body(), w.memory)
        await w.memory.creations.settle()
        assert w.status() == before, "the status with the gangs is still on its way"
        assert w.memory.latest is not None
        assert sorted(r["replica"] for r in w.memory.latest["status"]["replicaRecords"]) == [0, 1]
        mark = len(w.kube.writes)
        await w.reconciler.reconcile(w.body(), w.memory)  # from the decided status: nothing created again
        await w.memory.creations.settle()
        assert [v for v, k, _ in w.kube.writes[mark:] if k == "Pod"] == []
        hold.set()
        await w.memory.status.settle()

    asyncio.run(two_reconciles_then_the_write())
    assert len(w.live_gangs()) == 2
    assert sorted(r["replica"] for r in w.status()["replicaRecords"]) == [0, 1]
    assert w.memory.latest is not None
    assert w.memory.latest["metadata"]["resourceVersion"] == w.body()["metadata"]["resourceVersion"], \
        "once written, the API's answer is what the next reconcile decides from"


def test_a_status_decided_while_an_older_one_is_being_written_replaces_the_unwritten_ones() -> None:
    async def scenario() -> list[str]:
        writes = reconciler.StatusWrites()
        written: list[str] = []
        release = asyncio.Event()

        def status(name: str) -> Callable[[], Awaitable[None]]:
            async def write() -> None:
                if name == "first":
                    await release.wait()
                written.append(name)
            return write

        writes.submit(status("first"))
        await asyncio.sleep(0)  # the first write is under way
        for name in ("second", "third", "fourth"):
            writes.submit(status(name))
        assert writes.pending()
        release.set()
        await writes.settle()
        assert not writes.pending()
        return written

    assert asyncio.run(scenario()) == ["first", "fourth"]


def test_a_reconcile_creates_a_bounded_number_of_gangs_and_comes_back_at_once_for_the_rest() -> None:
    w = World(a_deployment("d").replicas(2 * MAX_GANG_CREATES + 3))
    counts = []
    for _ in range(4):
        result = w.reconcile()
        counts.append(len(w.gang_names()))
        if len(w.gang_names()) < 2 * MAX_GANG_CREATES + 3:
            assert result.requeue_after == 0.0, "the rest is created by a reconcile that follows at once"
    assert counts == [MAX_GANG_CREATES, 2 * MAX_GANG_CREATES, 2 * MAX_GANG_CREATES + 3, 2 * MAX_GANG_CREATES + 3]
    records = w.status()["replicaRecords"]
    assert sorted(r["replica"] for r in records) == list(range(2 * MAX_GANG_CREATES + 3))
    assert {r["attempt"] for r in records} == {1}, "a slot left for later was never given an attempt"
    assert len(w.created) == len(set(w.created))


@pytest.mark.parametrize(("code", "message"), [
    (403, 'poddisruptionbudgets.policy is forbidden: User "system:serviceaccount:mimo:op" cannot patch resource'),
    (422, 'admission webhook "pdb.policy.example.com" denied the request: minAvailable may not be set'),
])
def test_a_disruption_budget_the_api_refuses_is_reported_and_gangs_go_on(code: int, message: str) -> None:
    w = World(a_deployment("d").replicas(2))
    w.kube.fail("apply", "PodDisruptionBudget", code, message, times=2)
    w.reconcile()
    w.run_pods()
    w.now += 60
    w.reconcile()
    assert len(w.live_gangs()) == 2, "the gangs do not wait for the budget"
    assert any(k[1] == "Deployment" for k in w.kube.objects), "nor does the router"
    degraded = next(c for c in w.status()["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "PodDisruptionBudget d-engine" in degraded["message"]
    for _ in range(3):  # the refusal passes (the policy changed): applied at a later check, and said no more
        w.now += 31
        w.reconcile()
    assert any(k[1] == "PodDisruptionBudget" for k in w.kube.objects)
    assert next(c for c in w.status()["conditions"] if c["type"] == "Degraded")["status"] == "False"
