"""Revisions hash the user's inputs that change a pod; templates hash what this operator renders of them."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from mimo_operator import labels as L
from mimo_operator.build import BuildContext, WorkerPorts, gang_objects, operator_upgrade, revision_of, template_of
from mimo_operator.build.gang import TERMINATION_GRACE_SECONDS
from mimo_operator.build.revision import NON_POD_FIELDS, POD_FIELDS, REVISION_SCHEMA
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import DeploymentSpec, parse_spec
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


def test_writing_out_a_default_does_not_change_the_revision() -> None:
    """A CRD that starts filling in a default (or a user spelling one out) restarts nothing."""
    assert revision_of(context(PRO.engine(pageSize=64, port=30000))) == revision_of(context(PRO))


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
