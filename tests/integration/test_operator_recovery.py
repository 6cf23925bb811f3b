"""Recovery bookkeeping on the real control plane: restart budgets and back-off while pods fail as fast as
they start (kwok's failure stage), a scale flap during a drain, and a failed replica revived by a spec
change — with the operator under its chart's RBAC, reading its watch events in whatever order they come."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from tests.conftest import NodePool, wait_for
from tests.helpers.specs import DeploymentBuilder, a_deployment
from tests.integration.operator_harness import RunningOperator, engine_pods, get, operator_fixture, wait_phase

pytestmark = [pytest.mark.cluster]

BUDGET = 3
BACKOFF = 2.0
# kwok's chaos stage: a running pod carrying this label fails (exit code 1) a second or two later.
FAILS_WHEN_RUNNING = "pod-container-running-failed.stage.kwok.x-k8s.io"
GANG = "mimo-operator.io/gang"


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(cluster, tmp_path_factory.mktemp("operator"),
                                ["--backoff-seconds", str(BACKOFF), "--restart-budget", str(BUDGET),
                                 "--resync-seconds", "5"])


def v25_on(pool: NodePool, name: str = "v25") -> DeploymentBuilder:
    """MiMo-V2.5 on H200: one node per replica."""
    return (a_deployment(name).h200()
            .set("hardware.nodeSelector", pool.selector)
            .set("hardware.tolerations", [pool.toleration]))


def apply(cluster: LocalCluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def events(cluster: LocalCluster, namespace: str, reason: str) -> list[tuple[float, str]]:
    """(time, message) of the operator's events with this reason, oldest first."""
    out = []
    for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]:
        if e.get("reason") != reason:
            continue
        stamp = e.get("eventTime") or e.get("firstTimestamp") or e["metadata"]["creationTimestamp"]
        out.append((dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), e.get("message", "")))
    return sorted(out)


def gang_objects(cluster: LocalCluster, namespace: str, name: str) -> dict[str, set[str]]:
    """Gang name → kinds of its ConfigMap, Service and NetworkPolicy that exist (not being deleted)."""
    out: dict[str, set[str]] = {}
    for kind in ("configmap", "service", "networkpolicy"):
        for o in cluster.kubectl_json("get", kind, "-n", namespace, "-l",
                                      f"mimo-operator.io/deployment={name},app.kubernetes.io/component=engine")["items"]:
            gang = o["metadata"]["labels"].get(GANG)
            if gang and not o["metadata"].get("deletionTimestamp"):
                out.setdefault(gang, set()).add(kind)
    return out


def test_a_budget_of_n_allows_exactly_n_recreations_with_growing_back_off_then_a_spec_change_revives_it(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(1)
    failing = v25_on(node_pool).replicas(1).set("podTemplate", {"labels": {FAILS_WHEN_RUNNING: "true"}})
    apply(cluster, namespace, failing.build())

    def spent() -> dict[str, Any] | None:
        obj = get(cluster, "mimodeployment", namespace, "v25")
        records = ((obj or {}).get("status") or {}).get("replicaRecords") or []
        return obj if records and records[0].get("failed") else None

    obj = wait_for(spent, 90, what="the restart budget to be spent")
    time.sleep(3 * BACKOFF)  # nothing more may come
    created = events(cluster, namespace, "GangCreated")
    failed = events(cluster, namespace, "GangFailed")
    assert len(created) == 1 + BUDGET, [m for _, m in created]
    assert len(failed) == 1 + BUDGET, [m for _, m in failed]
    # Each recreation waits out its back-off after the failure before it: 2, 4, 8 s.
    waits = [c - f for (f, _), (c, _) in zip(failed, created[1:], strict=False)]
    for wait, backoff in zip(waits, [BACKOFF, 2 * BACKOFF, 4 * BACKOFF], strict=True):
        assert wait >= backoff - 1.0, waits  # event times are whole seconds
    assert waits == sorted(waits), waits
    names = [m.split()[1] for _, m in created]
    assert len(set(names)) == len(names), "no gang name used twice"
    status = obj["status"]
    assert status["phase"] == "Degraded"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "exit code 1" in degraded["message"]
    assert not [p for p in engine_pods(cluster, namespace, "v25") if not p["metadata"].get("deletionTimestamp")]

    apply(cluster, namespace, v25_on(node_pool).replicas(1).set("podTemplate", {"labels": {"team": "fixed"}}).build())
    obj = wait_phase(cluster, namespace, "v25", "Ready", timeout=60)
    assert not obj["status"]["replicaRecords"][0]["failed"]
    wait_for(lambda: set(gang_objects(cluster, namespace, "v25")) ==
             {p["metadata"]["labels"][GANG] for p in engine_pods(cluster, namespace, "v25")},
             30, what="no gang object without pods")


def test_a_scale_flap_during_a_drain_leaves_no_orphan_and_reuses_no_name(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(4)
    apply(cluster, namespace, v25_on(node_pool).replicas(3).set("autoscaling.drainTimeoutSeconds", 15).build())
    wait_phase(cluster, namespace, "v25", "Ready")
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(p["metadata"]["labels"][GANG] for p in engine_pods(cluster, namespace, "v25"))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        first = {p["metadata"]["labels"][GANG]: p["metadata"]["uid"] for p in engine_pods(cluster, namespace, "v25")}
        cluster.kubectl("scale", "mimodeployment", "v25", "-n", namespace, "--replicas=2")

        def draining() -> str | None:
            for p in engine_pods(cluster, namespace, "v25"):
                if "mimo-operator.io/drain-started" in (p["metadata"].get("annotations") or {}):
                    return str(p["metadata"]["labels"][GANG])
            return None

        drained = wait_for(draining, 30, what="a gang to start draining")
        cluster.kubectl("scale", "mimodeployment", "v25", "-n", namespace, "--replicas=3")

        def settled() -> bool:
            pods = engine_pods(cluster, namespace, "v25")
            obj = get(cluster, "mimodeployment", namespace, "v25") or {}
            return (len(pods) == 3 and drained not in {p["metadata"]["labels"][GANG] for p in pods}
                    and (obj.get("status") or {}).get("readyReplicas") == 3)

        wait_for(settled, 90, what="three ready gangs and the drained one gone")
    finally:
        stop.set()
        watcher.join()
    pods = engine_pods(cluster, namespace, "v25")
    now = {p["metadata"]["labels"][GANG]: p["metadata"]["uid"] for p in pods}
    new = set(now) - set(first)
    assert len(new) == 1, "one gang replaced the drained one"
    assert drained not in now
    assert new.isdisjoint(first), "the refilled slot's gang has a name of its own"
    assert len(seen) == 4
    assert sorted(p["metadata"]["labels"]["mimo-operator.io/replica"] for p in pods) == ["0", "1", "2"]
    wait_for(lambda: set(gang_objects(cluster, namespace, "v25")) == set(now), 45,
             what="no ConfigMap, Service or NetworkPolicy of a gang without pods")


def test_a_pod_the_api_refuses_becomes_a_condition_naming_the_field_and_stops_gang_creation(
        cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool) -> None:
    """A cluster policy the operator cannot know of (a ValidatingAdmissionPolicy answering 422 Invalid)
    refuses the gang's pods for a label the user put in spec.podTemplate.labels."""
    node_pool.add(1)
    policy = f"b1-refuse-{namespace}"[:63]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": policy},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["pods"]}]},
                  "validations": [{"expression": "!has(object.metadata.labels) || "
                                                 "!('example.com/forbidden' in object.metadata.labels)",
                                   "reason": "Invalid",
                                   "message": "the label example.com/forbidden is not allowed here"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": policy},
         "spec": {"policyName": policy, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": namespace}}}}}]}))
    try:
        probe = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "policy-probe", "namespace": namespace,
                              "labels": {"example.com/forbidden": "yes"}},
                 "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}

        def enforced() -> bool:
            # The policy reaches the apiserver's admission a moment after it is created; the deployment goes
            # in only once a pod like its gang's is refused, so the gang cannot slip through before.
            r = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
            return r.returncode != 0 and "example.com/forbidden is not allowed" in r.stderr

        wait_for(enforced, 60, interval=1, what="the admission policy to be enforced")
        refused = v25_on(node_pool).replicas(1).set("podTemplate", {"labels": {"example.com/forbidden": "yes"}})

        def applied() -> bool:
            apply(cluster, namespace, refused.build())
            obj = get(cluster, "mimodeployment", namespace, "v25")
            return bool(((obj or {}).get("status") or {}).get("refusal"))

        wait_for(applied, 60, interval=2, what="the API to refuse the gang's pod")
        obj = get(cluster, "mimodeployment", namespace, "v25")
        assert obj is not None
        status = obj["status"]
        assert status["refusal"]["field"] == "spec.podTemplate.labels", status["refusal"]
        accepted = next(c for c in status["conditions"] if c["type"] == "ChildrenAccepted")
        assert accepted["status"] == "False"
        assert "example.com/forbidden is not allowed" in accepted["message"]
        assert events(cluster, namespace, "ChildRefused")
        created = len(events(cluster, namespace, "GangCreated"))
        time.sleep(8)
        assert len(events(cluster, namespace, "GangCreated")) == created, "no new gang for a refused spec"
        wait_for(lambda: not gang_objects(cluster, namespace, "v25") and not engine_pods(cluster, namespace, "v25"),
                 30, what="nothing of the refused gang left")
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", policy,
                        "--wait=false", check=False)
    apply(cluster, namespace, v25_on(node_pool).replicas(1).set("podTemplate", {"labels": {"team": "ok"}}).build())
    obj = wait_phase(cluster, namespace, "v25", "Ready", timeout=60)
    assert obj["status"].get("refusal") is None
