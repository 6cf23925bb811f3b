"""Revisions hash the user's inputs that change a pod; templates hash what this operator renders of them."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
import yaml

from mimo_operator import labels as L
from mimo_operator.build import BuildContext, WorkerPorts, gang_objects, operator_upgrade, revision_of, template_of
from mimo_operator.build.gang import TERMINATION_GRACE_SECONDS
from mimo_operator.build.revision import NON_POD_FIELDS, POD_FIELDS, REVISION_SCHEMA, revision_inputs
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import DeploymentSpec, parse_spec
from mimo_operator.versions import WORKER_IMAGE
from tests.conftest import REPO
from tests.helpers.specs import DeploymentBuilder, a_deployment

PRO = a_deployment("pro").pro().h200()


def context(builder: DeploymentBuilder, **extra: Any) -> BuildContext:
    manifest = builder.build()
    spec = parse_spec(manifest)
    return BuildContext(name=manifest["metadata"]["name"], namespace="serving", uid="uid-1", spec=spec,
                        plan=plan_deployment(spec), **extra)


def test_a_revision_is_versioned_and_a_label_value() -> None:
    revision = revision_of(context(PRO))
    assert re.fullmatch(rf"{REVISION_SCHEMA}-[0-9a-f]{{10}}", revision)


def test_every_spec_field_either_changes_a_pod_or_never_restarts_a_gang() -> None:
    assert set(POD_FIELDS) | set(NON_POD_FIELDS) == set(DeploymentSpec.model_fields)
    assert not set(POD_FIELDS) & set(NON_POD_FIELDS)


@pytest.mark.parametrize("edit", [
    pytest.param(lambda b: b.replicas(5), id="replicas"),
    pytest.param(lambda b: b.autoscaling(enabled=True, maxReplicas=8, targetKVCacheUsage=0.6), id="autoscaling"),
    pytest.param(lambda b: b.autoscaling(drainTimeoutSeconds=30), id="drain timeout"),
    pytest.param(lambda b: b.set("router.policy", "round_robin"), id="router policy"),
    pytest.param(lambda b: b.set("router.replicas", 3), id="router replicas"),
    pytest.param(lambda b: b.set("rollout", {"maxSurge": 0, "maxUnavailable": 1}), id="rollout"),
    pytest.param(lambda b: b.set("rollout.operatorUpgrades", "Automatic"), id="operator upgrades"),
])
def test_settings_that_do_not_change_a_pod_keep_the_revision_and_the_pods(edit: Any) -> None:
    base = context(PRO)
    edited = context(edit(PRO))
    assert revision_of(edited) == revision_of(base)
    pods = [o for o in gang_objects(base, 0, 1, revision_of(base)) if o["kind"] == "Pod"]
    assert [o for o in gang_objects(edited, 0, 1, revision_of(edited)) if o["kind"] == "Pod"] == pods


@pytest.mark.parametrize("edit", [
    pytest.param(lambda b: b.v25(), id="model variant"),
    pytest.param(lambda b: b.context(262_144), id="context length"),
    pytest.param(lambda b: b.engine(image="example.invalid/mimo-worker:next"), id="engine image"),
    pytest.param(lambda b: b.extra_args("--log-level", "debug"), id="engine extra args"),
    pytest.param(lambda b: b.engine(env=[{"name": "NCCL_DEBUG", "value": "INFO"}]), id="engine env"),
    pytest.param(lambda b: b.mtp(False), id="speculative decoding"),
    pytest.param(lambda b: b.b200(), id="hardware"),
    pytest.param(lambda b: b.network("podNetwork"), id="network"),
    pytest.param(lambda b: b.set("scheduling.topologyKey", "network.topology.kubernetes.io/block"), id="scheduling"),
    pytest.param(lambda b: b.set("podTemplate.labels", {"team": "search"}), id="pod template"),
    pytest.param(lambda b: b.cache("node-local"), id="weights placement"),
])
def test_a_model_engine_or_placement_edit_changes_the_revision(edit: Any) -> None:
    assert revision_of(context(edit(PRO))) != revision_of(context(PRO))


def test_the_revision_hashes_the_stored_values_never_this_operators_defaults() -> None:
    """The API server persisted the CRD's defaults of the day (the engine image of that release): a later
    operator with another default image must compute the same revision for the same stored object."""
    stored = parse_spec(PRO.engine(image=WORKER_IMAGE).build())
    assert revision_inputs(stored)["engine"]["image"] == WORKER_IMAGE
    assert revision_of(context(PRO.engine(image=WORKER_IMAGE))) != revision_of(context(PRO))


def test_waiting_for_weights_and_their_cleanup_change_no_pod() -> None:
    base = PRO.cache("shared-volume", claimName="mimo-weights")
    edited = base.cache("shared-volume", claimName="mimo-weights", gateOnWeightsReady=False, keepAfterDelete=False)
    assert revision_of(context(edited)) == revision_of(context(base))


def crd_defaults(schema: dict[str, Any], path: str) -> list[str]:
    found = [path] if "default" in schema else []
    for key, sub in (schema.get("properties") or {}).items():
        found += crd_defaults(sub, f"{path}.{key}")
    if "items" in schema:
        found += crd_defaults(schema["items"], f"{path}[]")
    return found


# The CRD's defaults inside the fields that change a pod, as of revision schema r1. The API server fills
# them in whenever it reads a stored object: a default added to a new pod field would change the revision
# of every deployment already running, and roll them all on an operator upgrade. Give a new pod field its
# default in spec.py instead (or bump REVISION_SCHEMA on purpose).
R1_POD_FIELD_DEFAULTS = {
    "model.precision", "model.kvCacheDtype", "model.tokenSecretRef.key", "model.cache", "model.cache.mode",
    "model.cache.nodeLocalPath", "model.cache.gateOnWeightsReady", "model.cache.keepAfterDelete",
    "hardware.gpusPerNode", "hardware.gpuResourceName", "network", "network.mode", "network.rdma.resourceName",
    "network.rdma.resourceCount", "parallelism", "parallelism.moeA2ABackend", "parallelism.deepepMode",
    "parallelism.mtp", "engine", "engine.type", "engine.image", "engine.imagePullPolicy", "engine.port",
    "engine.distInitPort", "engine.pageSize", "engine.watchdogTimeoutSeconds", "engine.shmSize",
    "engine.env[].value", "engine.simulation", "engine.simulation.speedup", "scheduling",
    "scheduling.gangScheduler", "podTemplate",
}


def test_no_pod_field_gains_a_crd_default_after_r1() -> None:
    crd = yaml.safe_load((REPO / "crds" / "mimodeployment.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    aliases = {name: (info.alias or name) for name, info in DeploymentSpec.model_fields.items()}
    defaults = {d for field in POD_FIELDS for d in crd_defaults(spec[aliases[field]], aliases[field])}
    assert defaults - R1_POD_FIELD_DEFAULTS == set(), (
        "a pod field with a CRD default changes the revision of every stored deployment: default it in spec.py")


def test_an_operator_that_renders_pods_differently_keeps_the_revision_but_not_the_template() -> None:
    before, after = context(PRO), context(PRO, ports=WorkerPorts(worker_http=8001))
    assert revision_of(after) == revision_of(before)
    assert template_of(after) != template_of(before)
    assert template_of(context(PRO)) == template_of(before), "deterministic"


def test_drain_timeout_feeds_no_pod_and_no_launch_plan() -> None:
    base, edited = context(PRO), context(PRO.autoscaling(drainTimeoutSeconds=3600))
    assert template_of(edited) == template_of(base)
    pod = next(o for o in gang_objects(edited, 0, 1, revision_of(edited)) if o["kind"] == "Pod")
    assert pod["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS


def pods_of(ctx: BuildContext, replica: int, attempt: int) -> list[dict[str, Any]]:
    return [o for o in gang_objects(ctx, replica, attempt, revision_of(ctx)) if o["kind"] == "Pod"]


def test_status_names_the_gangs_an_older_operator_rendered_and_rolls_them_only_when_asked() -> None:
    old_operator = context(PRO, ports=WorkerPorts(worker_http=8001))
    ctx = context(PRO)
    revision = revision_of(ctx)
    old_gang = pods_of(old_operator, 0, 1)
    new_gang = pods_of(ctx, 1, 1)
    old_name = old_gang[0]["metadata"]["labels"][L.LABEL_GANG]

    upgrade = operator_upgrade(ctx, revision, old_gang + new_gang)
    assert upgrade.outdated == (old_name,)
    assert not upgrade.automatic
    condition = upgrade.condition()
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "OperatorUpgradeAvailable", "True", "PodsOutdatedByOperatorTemplate")
    assert old_name in condition["message"]
    assert "operatorUpgrades: Automatic" in condition["message"]

    assert operator_upgrade(ctx, revision, new_gang).condition()["status"] == "False"
    automatic = replace(ctx, spec=parse_spec(PRO.set("rollout.operatorUpgrades", "Automatic").build()))
    assert operator_upgrade(automatic, revision, old_gang).condition()["reason"] == "RollingToOperatorTemplate"


def test_gangs_of_another_revision_or_without_a_template_label() -> None:
    ctx = context(PRO)
    revision = revision_of(ctx)
    other = pods_of(context(PRO.engine(image="example.invalid/mimo-worker:next")), 0, 1)
    assert operator_upgrade(ctx, revision, other).outdated == (), "a rollout replaces those anyway"
    legacy = pods_of(ctx, 0, 1)
    for pod in legacy:
        del pod["metadata"]["labels"][L.LABEL_TEMPLATE]
    assert operator_upgrade(ctx, revision, legacy).outdated == (legacy[0]["metadata"]["labels"][L.LABEL_GANG],)
