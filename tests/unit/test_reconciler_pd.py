"""A disaggregated deployment's two pools on the reconciler: gangs of two roles on one lifecycle."""

from __future__ import annotations

import json
from typing import Any

from mimo_operator import labels as L
from mimo_operator.build import BuildContext, gang_objects, pools_of, revision_of, shared_objects
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import plan_disaggregated
from mimo_operator.spec import parse_spec
from tests.helpers.operator_world import NS, World
from tests.helpers.specs import a_deployment
from tests.unit.test_planner_pd import pro_pd


def _world(**pools: Any) -> World:
    pd = {"prefill": {"nodesPerGang": 2, "replicas": 1}, "decode": {"nodesPerGang": 2, "replicas": 2}, **pools}
    return World(pro_pd(**pd).named("d").simulated())


def _pools(w: World) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for p in w.pods():
        labels = p["metadata"]["labels"]
        out.setdefault(labels.get(L.LABEL_POOL, ""), set()).add(labels[L.LABEL_GANG])
    return out


def test_both_pools_get_their_gangs_named_and_labelled_by_role() -> None:
    w = _world()
    w.reconcile()
    pools = _pools(w)
    assert set(pools) == {"prefill", "decode"}
    assert len(pools["prefill"]) == 1
    assert len(pools["decode"]) == 2
    assert all(g.startswith("d-prefill-0-") for g in pools["prefill"])
    assert {g.rsplit("-", 1)[0] for g in pools["decode"]} == {"d-decode-0", "d-decode-1"}
    # Every pod of a gang runs its side's argv; only the prefill head announces its bootstrap port.
    for p in w.pods():
        labels, annotations = p["metadata"]["labels"], p["metadata"].get("annotations") or {}
        head_of_prefill = labels[L.LABEL_POOL] == "prefill" and labels[L.LABEL_ROLE] == L.ROLE_HEAD
        assert (L.ANNOTATION_BOOTSTRAP_PORT in annotations) == head_of_prefill
    heads = w.kube.of("Pod", NS, {L.LABEL_COMPONENT: "engine", L.LABEL_ROLE: L.ROLE_HEAD})
    assert {h["metadata"]["labels"][L.LABEL_POOL] for h in heads} == {"prefill", "decode"}
    for head in heads:
        role = head["metadata"]["labels"][L.LABEL_POOL]
        document = json.loads(head["metadata"]["annotations"][L.ANNOTATION_LAUNCH_PLAN])
        for rank in document["engine"]["ranks"]:
            argv = rank["argv"]
            assert argv[argv.index("--disaggregation-mode") + 1] == role


def test_status_shows_each_pool_and_the_deployment_is_ready_only_when_both_are() -> None:
    w = _world()
    w.reconcile()
    for p in w.pods():
        if p["metadata"]["labels"][L.LABEL_POOL] == "decode":
            w.kube.set_pod(p["metadata"]["name"], node="n-" + p["metadata"]["name"], phase="Running",
                           podIP="10.0.0.9", conditions=[{"type": "Ready", "status": "True"}])
    w.now += 5
    w.reconcile()
    status = w.status()
    assert status["pools"]["decode"]["phase"] == "Ready"
    assert status["pools"]["decode"]["readyReplicas"] == 2
    assert status["pools"]["prefill"]["phase"] != "Ready"
    assert status["phase"] != "Ready"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert "prefill: 0 of 1 replicas ready" in ready["message"]
    assert {g["pool"] for g in status["gangs"]} == {"prefill", "decode"}
    # kubectl get's Desired and Nodes columns: both pools together, each pool's own under pools.<role>.
    assert (status["pools"]["prefill"]["desiredReplicas"], status["pools"]["decode"]["desiredReplicas"]) == (1, 2)
    assert status["desiredReplicas"] == 3
    assert status["nodes"] == 2 * 1 + 2 * 2
    w.run_pods()
    w.now += 5
    w.reconcile()
    status = w.status()
    assert status["phase"] == "Ready", status["conditions"]
    assert status["readyReplicas"] == 3
    assert "replicaRecords" not in status or status["replicaRecords"] is None


def test_scaling_one_pool_rolls_nothing_and_leaves_the_other_alone() -> None:
    w = _world()
    w.reconcile()
    w.run_pods()
    w.now += 5
    w.reconcile()
    before = _pools(w)
    w.edit("disaggregation.prefill.replicas", 2)
    w.now += 5
    w.reconcile()
    after = _pools(w)
    assert before["decode"] == after["decode"]
    assert before["prefill"] < after["prefill"]
    assert len(after["prefill"]) == 2
    # Reshaping the prefill pool rolls the prefill gangs only.
    spec = parse_spec(w.body())
    ctx = BuildContext(name="d", namespace=NS, uid="u", spec=spec, plan=plan_disaggregated(spec).decode.plan,
                       disaggregated=plan_disaggregated(spec))
    revisions = {p.key: revision_of(p.ctx) for p in pools_of(ctx)}
    assert revisions["prefill"] != revisions["decode"]
    w.edit("disaggregation.prefill.nodesPerGang", 3)
    spec = parse_spec(w.body())
    ctx = BuildContext(name="d", namespace=NS, uid="u", spec=spec, plan=plan_disaggregated(spec).decode.plan,
                       disaggregated=plan_disaggregated(spec))
    changed = {p.key: revision_of(p.ctx) for p in pools_of(ctx)}
    assert changed["decode"] == revisions["decode"]
    assert changed["prefill"] != revisions["prefill"]


def test_a_failed_prefill_gang_is_replaced_within_its_pool_on_its_own_records() -> None:
    w = _world()
    w.reconcile()
    w.run_pods()
    w.now += 5
    w.reconcile()
    prefill = next(p for p in w.pods() if p["metadata"]["labels"][L.LABEL_POOL] == "prefill")
    w.kube.set_pod(prefill["metadata"]["name"], phase="Failed", containerStatuses=[
        {"name": "engine", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}])
    decode_before = _pools(w)["decode"]
    for _ in range(4):
        w.now += 30
        w.reconcile()
    status = w.status()
    records = status["pools"]["prefill"]["replicaRecords"]
    assert records[0]["restarts"] == 1
    assert records[0]["attempt"] == 2
    assert all(r["restarts"] == 0 for r in status["pools"]["decode"]["replicaRecords"])
    assert _pools(w)["decode"] == decode_before
    assert any(g.startswith("d-prefill-0-") and g != prefill["metadata"]["labels"][L.LABEL_GANG]
               for g in _pools(w)["prefill"])


def test_turning_colocated_deletes_the_pools_gangs() -> None:
    w = _world()
    w.reconcile()
    assert set(_pools(w)) == {"prefill", "decode"}
    obj = w.body()
    del obj["spec"]["disaggregation"]
    obj["spec"].setdefault("parallelism", {})["nodesPerReplica"] = 2
    w.kube.objects[("serving.mimo-operator.io/v1alpha1", L.KIND, NS, "d")]["spec"] = obj["spec"]
    w.kube.objects[("serving.mimo-operator.io/v1alpha1", L.KIND, NS, "d")]["metadata"]["generation"] += 1
    w.now += 5
    w.reconcile()
    live = {p["metadata"]["labels"].get(L.LABEL_POOL, "") for p in w.pods()
            if not p["metadata"].get("deletionTimestamp")}
    assert live == {""}
    assert w.status().get("pools") is None


def test_the_router_runs_in_pd_mode_and_gangs_admit_the_other_pool() -> None:
    spec = parse_spec(pro_pd(prefill={"nodesPerGang": 2}, decode={"nodesPerGang": 2}).named("d").build())
    pd = plan_disaggregated(spec)
    ctx = BuildContext(name="d", namespace=NS, uid="u", spec=spec, plan=pd.decode.plan, disaggregated=pd)
    router = next(o for o in shared_objects(ctx) if o["kind"] == "Deployment")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--pd-disaggregation" in args
    assert "--selector" not in args
    prefill_sel = args[args.index("--prefill-selector") + 1:args.index("--decode-selector")]
    assert f"{L.LABEL_POOL}=prefill" in prefill_sel
    assert f"{L.LABEL_SERVING}=true" in prefill_sel
    budgets = [o for o in shared_objects(ctx) if o["kind"] == "PodDisruptionBudget"]
    assert {b["spec"]["selector"]["matchLabels"][L.LABEL_POOL] for b in budgets} == {"prefill", "decode"}
    assert {b["metadata"]["name"] for b in budgets} == {"d-engine-prefill", "d-engine-decode"}
    colocated = parse_spec(a_deployment("d-prefill").build())
    beside = BuildContext(name="d-prefill", namespace=NS, uid="v", spec=colocated, plan=plan_deployment(colocated))
    (own,) = [o for o in shared_objects(beside) if o["kind"] == "PodDisruptionBudget"]
    assert own["metadata"]["name"] not in {b["metadata"]["name"] for b in budgets}, "one name, two deployments"
    for pool in pools_of(ctx):
        objects = gang_objects(pool.ctx, 0, 1, revision_of(pool.ctx))
        policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
        peers = [rule for rule in policy["spec"]["ingress"]
                 if rule["from"][0].get("podSelector", {}).get("matchLabels", {}).get(L.LABEL_POOL)]
        assert len(peers) == 1
        other = peers[0]["from"][0]["podSelector"]["matchLabels"][L.LABEL_POOL]
        assert other == ("decode" if pool.role == "prefill" else "prefill")
        ports = {p["port"] for p in peers[0]["ports"]}
        assert (pd.bootstrap_port in ports) == (pool.role == "prefill")
        # Ray's GCS stays closed to the other pool.
        assert all(not (p["port"] <= 6379 <= p.get("endPort", p["port"])) for p in peers[0]["ports"])


class _Exposition:
    """A metrics answer with no sample: the pools' policy then holds each pool within its own bounds."""

    status = 200

    async def text(self) -> str:
        return ""

    async def __aenter__(self) -> _Exposition:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Scrapes:
    def get(self, url: str, **_: Any) -> _Exposition:
        return _Exposition()


def test_each_pool_is_autoscaled_on_its_own_and_its_count_written_to_its_spec() -> None:
    w = World(pro_pd(prefill={"nodesPerGang": 2, "replicas": 1, "minReplicas": 2, "maxReplicas": 3},
                     decode={"nodesPerGang": 2, "replicas": 1}).named("d").simulated()
              .set("autoscaling", {"enabled": True, "minReplicas": 1, "maxReplicas": 4}))
    w.heads.session = _Scrapes()  # type: ignore[assignment]
    result = w.reconcile()
    spec = w.body()["spec"]["disaggregation"]
    assert (spec["prefill"]["replicas"], spec["decode"]["replicas"]) == (2, 1)
    assert len(_pools(w)["prefill"]) == 2  # acted on in the same reconcile
    assert len(_pools(w)["decode"]) == 1
    scaled = [e.message for e in result.events if e.reason == "ScaledUp"]
    assert len(scaled) == 1
    assert scaled[0].startswith("prefill pool: 1 → 2 gangs")
    pools = w.status()["pools"]
    assert (pools["prefill"]["lastScaleDecision"]["from"], pools["prefill"]["lastScaleDecision"]["to"]) == (1, 2)
    assert "lastScaleDecision" not in pools["decode"]
    assert pools["decode"]["autoscaling"]["desiredReplicas"] == 1
    # Between scrapes the pools' autoscaling status stays as it was.
    w.run_pods()
    w.now += 2
    w.reconcile()
    assert w.status()["pools"]["prefill"]["lastScaleDecision"] == pools["prefill"]["lastScaleDecision"]


def test_a_pools_expert_placement_from_a_configmap_is_mounted_where_its_argv_reads_it() -> None:
    spec = parse_spec(pro_pd(decode={"nodesPerGang": 2, "eplb": {"expertLocation": {
        "configMap": {"name": "experts", "key": "placement.json"}}}}).named("d").build())
    pd = plan_disaggregated(spec)
    ctx = BuildContext(name="d", namespace=NS, uid="u", spec=spec, plan=pd.decode.plan, disaggregated=pd)
    for pool in pools_of(ctx):
        pods = [o for o in gang_objects(pool.ctx, 0, 1, revision_of(pool.ctx)) if o["kind"] == "Pod"]
        for pod in pods:
            container = pod["spec"]["containers"][0]
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            if pool.role == "decode":
                argv = pool.ctx.plan.launch.ranks[0].argv
                path = argv[argv.index("--init-expert-location") + 1]
                assert path.startswith(mounts["expert-location"] + "/")
                items = volumes["expert-location"]["configMap"]["items"]
                assert items == [{"key": "placement.json", "path": path.rsplit("/", 1)[1]}]
                assert volumes["expert-location"]["configMap"]["name"] == "experts"
            else:
                assert "expert-location" not in mounts
