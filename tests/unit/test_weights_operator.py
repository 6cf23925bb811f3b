"""The operator's side of the weights cache: cache keys, the objects, node eligibility, and ensure_weights
against an in-memory API (the local cluster test runs it against the real one)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from typing import Any

import pytest

from mimo_operator import weights as W
from mimo_operator.build import BuildContext
from mimo_operator.build.weights import (
    LABEL_ROLE,
    NODE_READY,
    PERMANENT_EXIT_CODES,
    WeightsOptions,
    cache_key,
    cache_ref,
    download_job,
    eligible_node,
    prefetch_pod,
    weights_match_expressions,
    weights_model_path,
    weights_node_affinity,
)
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import DeploymentSpec, parse_spec
from mimo_worker.weights.errors import EXIT_REASONS
from tests.helpers.specs import a_deployment

REPO_ID = "XiaomiMiMo/MiMo-V2.5-Pro"
PROCESS = ("localcluster.mimo-operator.io/process", "true")


def spec_of(builder: Any) -> DeploymentSpec:
    return parse_spec(builder.build())


def shared() -> Any:
    return a_deployment().pro().h200().source(huggingFaceId=REPO_ID).cache("shared-volume", claimName="models")


def node_local(**more: Any) -> Any:
    return a_deployment().pro().h200().cache("node-local", **more)


def ctx_of(spec: DeploymentSpec, name: str = "a") -> BuildContext:
    return BuildContext(name=name, namespace="ns", uid=f"uid-{name}", spec=spec, plan=plan_deployment(spec))


def test_the_cache_key_depends_on_the_checkpoint_only_and_is_a_valid_name() -> None:
    key = cache_key(REPO_ID, "main")
    assert key == cache_key(REPO_ID, "main")
    assert key.startswith("mimo-v2-5-pro-")
    assert len(key) <= 40
    assert key != cache_key(REPO_ID, "0123abc")
    assert key != cache_key("someone/MiMo-V2.5-Pro", "main")
    a = cache_ref(spec_of(shared().named("a")), plan_deployment(spec_of(shared())))
    b = cache_ref(spec_of(shared().named("b").replicas(3)), plan_deployment(spec_of(shared())))
    assert a is not None
    assert b is not None
    assert (a.key, a.name, a.model_path) == (b.key, b.name, b.model_path)


def test_no_cache_is_managed_for_mode_none_or_a_path_source() -> None:
    plain = spec_of(a_deployment().pro().h200())
    assert cache_ref(plain, plan_deployment(plain)) is None
    on_path = spec_of(a_deployment().pro().h200().source(path="/models/pro").cache("node-local"))
    assert weights_model_path(on_path, plan_deployment(on_path)) is None


def test_the_default_source_is_the_catalog_checkpoint_at_main() -> None:
    spec = spec_of(node_local())
    ref = cache_ref(spec, plan_deployment(spec))
    assert ref is not None
    assert (ref.repo, ref.revision) == (REPO_ID, "main")
    assert weights_model_path(spec, plan_deployment(spec)) == f"/mimo-cache/weights/{ref.key}"


def test_the_download_job_mounts_the_claim_runs_the_download_and_holds_the_token_by_reference_only() -> None:
    spec = spec_of(shared().set("model.tokenSecretRef", {"name": "hf", "key": "token"}))
    ref = cache_ref(spec, plan_deployment(spec))
    assert ref is not None
    job = download_job(ref, "ns", "img", WeightsOptions(pod_labels=(PROCESS,), hub_endpoint="http://mirror"))
    pod = job["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert job["metadata"]["name"] == ref.name
    assert "ownerReferences" not in job["metadata"]  # shared by every deployment of the checkpoint
    assert pod["metadata"]["labels"][PROCESS[0]] == "true"
    assert pod["metadata"]["labels"][LABEL_ROLE] == "download"
    assert pod["spec"]["volumes"] == [{"name": "weights", "persistentVolumeClaim": {"claimName": "models"}}]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["command"] == ["python3", "-m", "mimo_worker.weights"]
    args = container["args"]
    assert args[:7] == ["download", "--repo", REPO_ID, "--revision", "main", "--dest", ref.model_path]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert env["HF_ENDPOINT"]["value"] == "http://mirror"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == list(PERMANENT_EXIT_CODES)


def test_the_operator_and_the_worker_agree_on_exit_codes() -> None:
    assert W.EXIT_REASONS == EXIT_REASONS
    assert {EXIT_REASONS[c] for c in PERMANENT_EXIT_CODES} == {"NotEnoughSpace", "InvalidCheckpoint", "Unauthorized",
                                                          "UnsupportedPrecision"}


def test_gangs_require_the_node_label_only_with_the_node_local_cache() -> None:
    local = spec_of(node_local(nodeLocalPath="/nvme/weights"))
    ref = cache_ref(local, plan_deployment(local))
    assert ref is not None
    expressions = weights_match_expressions(local, plan_deployment(local))
    assert expressions == [{"key": ref.node_label, "operator": "In", "values": [NODE_READY]}]
    affinity = weights_node_affinity(local, plan_deployment(local))
    assert affinity is not None
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": expressions}]
    other_path = spec_of(node_local(nodeLocalPath="/other"))
    assert weights_match_expressions(other_path, plan_deployment(other_path)) != expressions  # not the same copy
    assert weights_match_expressions(spec_of(shared()), plan_deployment(spec_of(shared()))) == []


def node(name: str, *, labels: Mapping[str, str] | None = None, gpus: int = 8,
         taints: list[dict[str, str]] | None = None, ready: bool = True, unschedulable: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


POOL = {"pool": "a"}
TAINT = {"key": "dedicated", "value": "mimo", "effect": "NoSchedule"}


@pytest.mark.parametrize(("description", "n", "eligible"), [
    ("a matching node with 8 GPUs", node("n", labels=POOL), True),
    ("a node outside the node selector", node("n", labels={"pool": "b"}), False),
    ("a node with too few GPUs", node("n", labels=POOL, gpus=4), False),
    ("a cordoned node", node("n", labels=POOL, unschedulable=True), False),
    ("a node that is not Ready", node("n", labels=POOL, ready=False), False),
    ("a node tainted with a tolerated taint", node("n", labels=POOL, taints=[TAINT]), True),
    ("a node tainted with another taint", node("n", labels=POOL, taints=[{**TAINT, "value": "x"}]), False),
    ("a node with the GPU taint the gangs always tolerate",
     node("n", labels=POOL, taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]), True),
    ("a PreferNoSchedule taint never excludes", node("n", labels=POOL, taints=[{**TAINT, "value": "x",
                                                                             "effect": "PreferNoSchedule"}]), True),
])
def test_eligible_nodes_are_those_a_gang_pod_could_use(description: str, n: dict[str, Any], eligible: bool) -> None:
    spec = spec_of(node_local().set("hardware.nodeSelector", POOL).set(
        "hardware.tolerations", [{"key": "dedicated", "operator": "Equal", "value": "mimo", "effect": "NoSchedule"}]))
    assert eligible_node(n, spec, 8) is eligible, description


# ------------------------------------------------------------------------------ ensure_weights in memory


class FakeKube:
    """The calls ensure_weights makes, on dicts; counts writes like the real client."""

    def __init__(self, nodes: list[dict[str, Any]] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes = {n["metadata"]["name"]: n for n in nodes or []}
        self.writes: list[tuple[str, str, str]] = []

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   labels: Mapping[str, str]) -> list[dict[str, Any]]:
        if kind == "Node":
            return [copy.deepcopy(n) for n in self.nodes.values()]
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind
                and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in labels.items())]

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found else None

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = json.loads(json.dumps(obj))
        return dict(obj)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None,
                     grace_seconds: int | None = None) -> bool:
        self.writes.append(("delete", kind, name))
        return self.objects.pop((kind, name), None) is not None

    async def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                          patch: Mapping[str, Any], subresource: str | None = None) -> dict[str, Any]:
        self.writes.append(("patch", kind, name))
        if kind == "Node":
            labels = self.nodes[name]["metadata"]["labels"]
            for key, value in patch["metadata"]["labels"].items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            return {}
        obj = self.objects[(kind, name)]
        obj["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        return obj


def jobs(kube: FakeKube) -> list[dict[str, Any]]:
    return [o for (k, _), o in kube.objects.items() if k == "Job"]


async def ensure(kube: FakeKube, ctx: BuildContext, now: float = 1e9) -> W.WeightsState:
    return await W.ensure_weights(kube, ctx, WeightsOptions(), clock=lambda: now)  # type: ignore[arg-type]


async def test_two_deployments_of_one_checkpoint_share_one_download_job() -> None:
    kube = FakeKube()
    a, b = ctx_of(spec_of(shared().named("a")), "a"), ctx_of(spec_of(shared().named("b")), "b")
    first = await ensure(kube, a)
    assert (first.ready, first.reason, first.blocks_gangs) == (False, "Pending", True)
    assert [e.reason for e in first.events] == ["WeightsCacheRecorded", "WeightsDownloadStarted"]
    second = await ensure(kube, b)
    assert second.reason == "Pending"
    assert len(jobs(kube)) == 1
    record = next(o for (k, _), o in kube.objects.items() if k == "ConfigMap")
    assert {k: v for k, v in record["metadata"]["annotations"].items() if k.startswith("users.")} == {
        "users.weights.mimo-operator.io/a": "keep", "users.weights.mimo-operator.io/b": "keep"}

    jobs(kube)[0]["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    kube.writes.clear()
    for ctx in (a, b):
        state = await ensure(kube, ctx)
        assert (state.ready, state.reason, state.blocks_gangs) == (True, "Ready", False)
        assert state.condition()["status"] == "True"
    assert kube.writes == []  # level-based: nothing to do once ready


async def test_a_failed_download_reports_its_reason_and_is_retried_after_a_pause() -> None:
    kube = FakeKube()
    ctx = ctx_of(spec_of(shared()))
    await ensure(kube, ctx)
    job = jobs(kube)[0]
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": "2001-09-09T01:46:40Z"}]}
    labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": job["metadata"]["name"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dl-x", "labels": labels},
        "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
            "exitCode": 3, "message": "NotEnoughSpace: needs 1,030.0 GB more"}}}]}}
    await kube.apply(pod)
    failed_at = 1_000_000_000.0
    soon = await ensure(kube, ctx, now=failed_at + 60)
    assert (soon.reason, soon.ready) == ("NotEnoughSpace", False)
    assert "needs 1,030.0 GB" in soon.message
    assert len(jobs(kube)) == 1  # a person must act first: not retried within 10 minutes
    later = await ensure(kube, ctx, now=failed_at + W.PERMANENT_RETRY_SECONDS + 1)
    assert [e.reason for e in later.events] == ["WeightsDownloadRetry"]
    assert jobs(kube) == []


async def test_node_local_prefetches_onto_each_eligible_node_and_labels_it_when_its_pod_succeeded() -> None:
    kube = FakeKube([node("g1", labels=POOL), node("g2", labels=POOL), node("cpu", labels={"pool": "b"})])
    spec = spec_of(node_local().set("hardware.nodeSelector", POOL))
    ctx = ctx_of(spec)
    ref = cache_ref(spec, ctx.plan)
    assert ref is not None
    state = await ensure(kube, ctx)
    pods = {o["metadata"]["annotations"]["weights.mimo-operator.io/node"]: o for (k, _), o in kube.objects.items()
            if k == "Pod"}
    assert sorted(pods) == ["g1", "g2"]
    assert (state.ready, state.nodes_eligible, state.nodes_ready) == (False, 2, ())
    assert pods["g1"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["g1"]

    kube.objects[("Pod", pods["g1"]["metadata"]["name"])]["status"] = {"phase": "Succeeded"}
    state = await ensure(kube, ctx)
    assert kube.nodes["g1"]["metadata"]["labels"][ref.node_label] == NODE_READY
    assert ref.node_label not in kube.nodes["g2"]["metadata"]["labels"]
    assert ("Pod", pods["g1"]["metadata"]["name"]) not in kube.objects  # done: removed
    assert state.nodes_ready == ("g1",)
    needed = ctx.plan.nodes_per_replica
    assert state.ready is (needed <= 1)

    # Another deployment of the same checkpoint on the same nodes: nothing new to fetch on g1.
    other = ctx_of(spec_of(node_local().named("other").set("hardware.nodeSelector", POOL)), "other")
    kube.writes.clear()
    again = await ensure(kube, other)
    assert again.nodes_ready == ("g1",)
    assert [w for w in kube.writes if w[1] == "Pod"] == []


def test_the_prefetch_pod_tolerates_what_the_gangs_tolerate() -> None:
    spec = spec_of(node_local().set("hardware.tolerations", [{"key": "dedicated", "operator": "Exists"}]))
    ref = cache_ref(spec, plan_deployment(spec))
    assert ref is not None
    pod = prefetch_pod(ref, "ns", "g1", spec, "img", WeightsOptions())
    assert {"key": "dedicated", "operator": "Exists"} in pod["spec"]["tolerations"]
    assert pod["spec"]["volumes"][0]["hostPath"]["path"] == "/var/lib/mimo/weights"


async def test_a_cache_is_cleaned_only_when_every_user_is_gone_and_asked_for_it() -> None:
    kube = FakeKube()
    keep = spec_of(shared().named("keeper"))
    drop = spec_of(shared().named("dropper").set("model.cache.keepAfterDelete", False))
    await ensure(kube, ctx_of(keep, "keeper"))
    await ensure(kube, ctx_of(drop, "dropper"))
    fake: Any = kube
    # Both gone, but one wanted the copy kept: nothing happens.
    assert await W.collect_weights(fake, "ns", {}) == []
    assert len(jobs(kube)) == 1

    kube2 = FakeKube()
    await ensure(kube2, ctx_of(drop, "dropper"))
    fake = kube2
    # Still in use: nothing happens.
    assert await W.collect_weights(fake, "ns", {"dropper": drop}) == []
    events = await W.collect_weights(fake, "ns", {})
    assert [e.reason for e in events] == ["WeightsCacheCleaning"]
    roles = sorted(j["metadata"]["labels"][LABEL_ROLE] for j in jobs(kube2))
    assert roles == ["clean"]  # the download Job went, the clean Job runs `clean --dest <model path>`
    cleaner = jobs(kube2)[0]
    assert cleaner["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["clean", "--dest"]
    cleaner["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    events = await W.collect_weights(fake, "ns", {})
    assert [e.reason for e in events] == ["WeightsCacheRemoved"]
    assert kube2.objects == {}


async def test_the_collector_cleans_after_a_deletion_until_nothing_removable_is_left() -> None:
    kube = FakeKube()
    drop = spec_of(shared().named("dropper").set("model.cache.keepAfterDelete", False))
    await ensure(kube, ctx_of(drop, "dropper"))
    fake: Any = kube
    collector = W.WeightsCollector(fake, WeightsOptions(), interval=0.01)
    # The deployment still exists (as the API lists it): nothing to clean.
    live = {"apiVersion": "serving.mimo-operator.io/v1alpha1", "kind": "MiMoDeployment",
            "metadata": {"name": "dropper"}, "spec": drop.model_dump(by_alias=True, exclude_none=True)}
    kube.objects[("MiMoDeployment", "dropper")] = live
    assert await collector.step("ns") is False
    assert [j["metadata"]["labels"][LABEL_ROLE] for j in jobs(kube)] == ["download"]

    del kube.objects[("MiMoDeployment", "dropper")]
    task = asyncio.create_task(collector.run())
    try:
        collector.deleted("ns")

        async def cleaning() -> None:
            while [j["metadata"]["labels"][LABEL_ROLE] for j in jobs(kube)] != ["clean"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # the fake API has no watch to wait on
        await asyncio.wait_for(cleaning(), 5)
        assert collector.pending == {"ns"}  # the clean Job runs: the collector keeps looking
        jobs(kube)[0]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}

        async def done() -> None:
            while collector.pending:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.wait_for(done(), 5)
        assert kube.objects == {}
    finally:
        task.cancel()
