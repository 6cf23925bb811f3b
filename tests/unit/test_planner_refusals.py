"""Specs the planner refuses because they cannot work, though every field is valid on its own: ports that meet
another port of the gang's pods, environment the operator owns, extraArgs that contradict or undo the plan,
annotations past Kubernetes' limit, top-level parallelism a disaggregated deployment does not run, and a prefill
chunk the sliding-window pool cannot hold. Each refusal names the field to change; each family is checked against
what the builders and the worker actually use, so that a refused spec is one the gang could not have run."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from mimo_operator.build import BuildContext, WorkerPorts, gang_objects, pools_of
from mimo_operator.catalog import checkpoint
from mimo_operator.errors import SpecError
from mimo_operator.launchplan import Ports
from mimo_operator.plan import Plan
from mimo_operator.planner import OWNED_FLAGS, plan_deployment
from mimo_operator.planner_pd import PD_OWNED_FLAGS, DisaggregatedPlan, plan_disaggregated
from mimo_operator.sglang_flags import flag_table
from mimo_operator.spec import DeploymentSpec, parse_spec
from mimo_worker import __main__ as worker_main
from mimo_worker import launchplan as worker_launchplan
from tests.helpers.specs import DeploymentBuilder, a_deployment

HCAS = [f"mlx5_{i}" for i in range(8)]
BUILDER_PORTS = WorkerPorts()


def planned(builder: DeploymentBuilder) -> tuple[DeploymentSpec, Plan | DisaggregatedPlan]:
    spec = parse_spec(builder.build())
    return spec, (plan_disaggregated(spec) if spec.disaggregation is not None else plan_deployment(spec))


def colocated(builder: DeploymentBuilder) -> Plan:
    plan = planned(builder)[1]
    assert isinstance(plan, Plan)
    return plan


def disaggregated(builder: DeploymentBuilder) -> DisaggregatedPlan:
    plan = planned(builder)[1]
    assert isinstance(plan, DisaggregatedPlan)
    return plan


def refusal(builder: DeploymentBuilder) -> SpecError:
    with pytest.raises(SpecError) as raised:
        planned(builder)
    assert str(raised.value).startswith(raised.value.field + ": ")
    return raised.value


def gang_pods(builder: DeploymentBuilder) -> list[dict[str, Any]]:
    """Every pool's first gang's pods, as the reconciler builds them after planning."""
    spec, plan = planned(builder)
    manifest = builder.build()
    pd = plan if isinstance(plan, DisaggregatedPlan) else None
    ctx = BuildContext(name=manifest["metadata"]["name"], namespace="serving", uid="uid-1", spec=spec,
                       plan=plan if isinstance(plan, Plan) else plan.decode.plan, disaggregated=pd,
                       pod_annotations=tuple(sorted((spec.pod_template.annotations or {}).items())))
    return [o for pool in pools_of(ctx) for o in gang_objects(pool.ctx, 0, 0, "rev") if o["kind"] == "Pod"]


def pods_or_refusal(builder: DeploymentBuilder) -> list[dict[str, Any]] | SpecError:
    try:
        return gang_pods(builder)
    except SpecError as refused:
        return refused


def pro_pd(**disaggregation: Any) -> DeploymentBuilder:
    """MiMo-V2.5-Pro with 2 prefill + 2 decode H200 nodes (the public PD recipe's shape)."""
    pd: dict[str, Any] = {"prefill": {"nodesPerGang": 2}, "decode": {"nodesPerGang": 2}, **disaggregation}
    return a_deployment().pro().h200().kv_fp8().network("hostNetwork", ibDevices=HCAS).set("disaggregation", pd)


V25 = a_deployment().v25().h200()  # one node, tp 8, attention DP 2
PRO = a_deployment().pro().h200()  # two nodes, tp 16, attention DP 2


# ------------------------------------------------------------------------------------------------ ports


def test_the_planner_and_the_builders_take_the_gang_s_fixed_ports_from_one_place() -> None:
    ports = Ports()
    assert (BUILDER_PORTS.worker_http, BUILDER_PORTS.ray_gcs, BUILDER_PORTS.fabric) == (
        ports.worker_http, ports.ray_gcs, ports.fabric)


# (network mode, the builders' fixed ports a gang pod holds there besides SGLang's): in hostNetwork the builders
# pick Ray's and the fabric check's ports for each gang, clear of SGLang's.
FIXED = [
    ("podNetwork", [BUILDER_PORTS.worker_http, BUILDER_PORTS.ray_gcs, BUILDER_PORTS.fabric]),
    ("rdma", [BUILDER_PORTS.worker_http, BUILDER_PORTS.ray_gcs, BUILDER_PORTS.fabric]),
    ("hostNetwork", [BUILDER_PORTS.worker_http]),
]


@pytest.mark.parametrize(("mode", "port"), [(m, p) for m, ports in FIXED for p in ports])
def test_an_engine_port_on_a_port_the_builders_fix_is_refused_naming_the_port(mode: str, port: int) -> None:
    refused = refusal(V25.network(mode).engine(port=port))
    assert refused.field == "spec.engine.port"
    assert refused.message.startswith(f"engine.port {port} is taken by ")
    assert "choose another engine.port (the default is 30000)" in refused.message


@pytest.mark.parametrize("port", [BUILDER_PORTS.ray_gcs, BUILDER_PORTS.fabric])
def test_in_host_network_ray_s_and_the_fabric_check_s_fixed_ports_are_free_for_the_engine(port: int) -> None:
    assert gang_pods(V25.network("hostNetwork").engine(port=port))


# SGLang 0.5.23 on several nodes with attention DP: the dist-init port P, its ZMQ channels P+1…P+6 and the
# attention-DP handshake P+13 (PortArgs.init_new, DataParallelController).
DIST_INIT_OFFSETS = [0, 1, 2, 3, 4, 5, 6, 13]


@pytest.mark.parametrize("offset", DIST_INIT_OFFSETS)
def test_a_dist_init_port_whose_sglang_ports_reach_the_worker_s_is_refused_naming_it(offset: int) -> None:
    refused = refusal(PRO.engine(distInitPort=BUILDER_PORTS.worker_http - offset))
    assert refused.field == "spec.engine.distInitPort"
    assert f"taken by {Ports.model_fields['worker_http'].description}" in refused.message


@pytest.mark.parametrize("offset", [7, 8, 12, 14])
def test_a_dist_init_port_whose_sglang_ports_miss_the_others_plans_and_builds(offset: int) -> None:
    assert gang_pods(PRO.engine(distInitPort=BUILDER_PORTS.worker_http - offset))


@pytest.mark.parametrize("offset", [6, 13])
def test_a_dist_init_port_whose_sglang_ports_reach_the_engine_port_is_refused(offset: int) -> None:
    # The spec refuses an engine.port within distInitPort's first six ports; the planner knows the rest.
    refused = refusal(PRO.engine(port=30000, distInitPort=30000 - offset))
    assert refused.field == "spec.engine.distInitPort"
    assert "on 30000, which is taken by SGLang's HTTP server (engine.port)" in refused.message


@pytest.mark.parametrize("offset", [0, 1, 6])
def test_on_one_node_the_zmq_ports_sglang_derives_from_the_engine_port_are_checked(offset: int) -> None:
    # One node with attention DP: SGLang's ZMQ base is --port + 233, its channels the six after it.
    refused = refusal(V25.engine(port=BUILDER_PORTS.worker_http - 233 - offset))
    assert refused.field == "spec.engine.port"
    assert "puts SGLang's" in refused.message


def test_on_one_node_without_attention_dp_sglang_derives_no_tcp_ports() -> None:
    one_group = V25.gpus_per_node(4)  # tp 4 = the attention TP: IPC, no ZMQ ports
    assert gang_pods(one_group.engine(port=BUILDER_PORTS.worker_http - 233))


@pytest.mark.parametrize("mode", ["podNetwork", "rdma", "hostNetwork"])
@pytest.mark.parametrize("builder", [V25, PRO], ids=["one node", "two nodes"])
def test_every_engine_and_dist_init_port_the_planner_accepts_builds(mode: str, builder: DeploymentBuilder) -> None:
    """Around every fixed port: the planner refuses it naming a port field, or the builders build the gang."""
    spec_ports = [p for _, ports in FIXED for p in ports]
    candidates = sorted({p + d for p in spec_ports for d in (-246, -240, -233, -14, -13, -7, -6, -1, 0, 1)})
    for field, value in [("port", p) for p in candidates] + [("distInitPort", p) for p in candidates]:
        outcome = pods_or_refusal(builder.network(mode).engine(**{field: value}))
        if isinstance(outcome, SpecError):
            assert outcome.field in ("spec.engine.port", "spec.engine.distInitPort"), outcome
        else:
            assert outcome, (field, value)


@pytest.mark.parametrize(
    ("bootstrap", "why"),
    [(BUILDER_PORTS.worker_http, "the head's own endpoints"), (30000, "SGLang's HTTP server"),
     *[(20000 + k, "SGLang's" if k else "torch.distributed") for k in DIST_INIT_OFFSETS]],
)
def test_a_bootstrap_port_on_a_port_of_the_prefill_head_is_refused_naming_it(bootstrap: int, why: str) -> None:
    refused = refusal(pro_pd(bootstrapPort=bootstrap))
    assert refused.field == "spec.disaggregation.bootstrapPort"
    assert refused.message.startswith(f"bootstrapPort {bootstrap} is taken on the prefill side's head by {why}")


def test_the_default_bootstrap_port_taken_by_the_engine_is_refused_on_the_bootstrap_field() -> None:
    refused = refusal(pro_pd().engine(port=8998))
    assert refused.field == "spec.disaggregation.bootstrapPort"
    assert refused.message.startswith("the default bootstrapPort 8998 is taken")


def test_a_bootstrap_port_clear_of_the_head_s_ports_plans() -> None:
    assert disaggregated(pro_pd(bootstrapPort=20007)).bootstrap_port == 20007


# -------------------------------------------------------------------------------------------------- env


def _builders_env_names() -> set[str]:
    """The names the builders set on a gang pod themselves, with a token Secret (the user's env left out)."""
    pods = gang_pods(PRO.set("model.tokenSecretRef", {"name": "hf"}))
    return {e["name"] for p in pods for e in p["spec"]["containers"][0]["env"]}


OWNED_ENV = sorted(
    _builders_env_names()
    | {worker_main.ENV_ROLE, worker_main.ENV_POD_IP, worker_main.ENV_NODE_RANK, worker_main.ENV_POD_NAME,
       worker_launchplan.ENV_PLAN_PATH, "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "RAY_ADDRESS"}
)


@pytest.mark.parametrize("name", OWNED_ENV)
def test_env_the_builders_or_the_worker_own_is_refused_naming_the_entry(name: str) -> None:
    env = [{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": name, "value": "x"}]
    refused = refusal(PRO.set("model.tokenSecretRef", {"name": "hf"}).engine(env=env))
    assert refused.field == "spec.engine.env[1].name"
    assert refused.message.startswith(f"{name} is set by the operator: ")


def test_a_literal_hf_token_is_the_user_s_own_without_a_token_secret() -> None:
    assert colocated(V25.engine(env=[{"name": "HF_TOKEN", "value": "hf_x"}])).env["HF_TOKEN"] == "hf_x"


# Variables the planner writes that stay the user's to tune (the planner's comment on OPERATOR_ENV says why).
TUNING = ["NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "NVSHMEM_HCA_LIST", "NCCL_IB_GID_INDEX",
          "NVSHMEM_IB_ENABLE_IBGDA", "HF_HUB_CACHE", "SGLANG_DG_CACHE_DIR", "SGLANG_ENABLE_SPEC_V2"]


@pytest.mark.parametrize("name", TUNING)
def test_tuning_the_planner_s_network_and_cache_variables_is_allowed_and_wins(name: str) -> None:
    builder = PRO.network("rdma", ibDevices=HCAS).cache("shared-volume", claimName="w")
    assert colocated(builder.engine(env=[{"name": name, "value": "7"}])).env[name] == "7"


@pytest.mark.parametrize(("mtp", "value"), [(True, "64"), (True, "255"), (False, "63"), (True, "1025"),
                                            (True, "lots"), (True, "")])
def test_a_deepep_dispatch_buffer_below_a_graph_batch_or_above_deepep_s_cap_is_refused(mtp: bool, value: str) -> None:
    env = [{"name": "NCCL_DEBUG", "value": "INFO"},
           {"name": "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "value": value}]
    refused = refusal(V25.mtp(mtp).engine(env=env))
    assert refused.field == "spec.engine.env[1].value"
    assert "1,024" in refused.message


@pytest.mark.parametrize(("mtp", "value"), [(True, "256"), (True, "1024"), (False, "64"), (False, "128")])
def test_a_deepep_dispatch_buffer_that_holds_a_graph_batch_is_the_user_s(mtp: bool, value: str) -> None:
    env = [{"name": "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "value": value}]
    assert colocated(V25.mtp(mtp).engine(env=env)).env["SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"] == value


def test_without_deepep_the_dispatch_buffer_is_not_the_planner_s_business() -> None:
    env = [{"name": "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "value": "8"}]
    assert planned(V25.parallelism(moeA2ABackend="none").engine(env=env))


@pytest.mark.parametrize(("mtp", "batch", "refused"), [(True, 257, True), (True, 256, False), (True, 1024, True),
                                                       (False, 1024, False)])
def test_a_cuda_graph_batch_past_deepep_s_dispatch_cap_is_refused(mtp: bool, batch: int, refused: bool) -> None:
    # With MTP each request of the batch dispatches its draft tokens too (4 per step).
    builder = V25.mtp(mtp).engine(cudaGraphMaxBatchSize=batch)
    if refused:
        assert refusal(builder).field == "spec.engine.cudaGraphMaxBatchSize"
    else:
        assert planned(builder)


# ------------------------------------------------------------------------------------------- extraArgs


def _sample(flag: str) -> list[str]:
    """``flag`` with a value SGLang's parser takes (a switch alone)."""
    entry = flag_table()["flags"][flag]
    if not entry["takes_value"]:
        return [flag]
    kind = entry.get("kind", "str")
    value = str(entry["choices"][-1]) if entry.get("choices") else {"int": "8", "float": "0.5",
                                                                     "human-int": "8", "json": "{}"}.get(kind, "x")
    return [flag, value]


@pytest.mark.parametrize("flag", sorted(PD_OWNED_FLAGS))
def test_a_prefill_decode_flag_in_a_colocated_deployment_is_refused_at_its_index(flag: str) -> None:
    refused = refusal(V25.extra_args("--log-level", "info", *_sample(flag)))
    assert refused.field == "spec.engine.extraArgs[2]"
    assert refused.message.startswith(f"{flag} belongs to a prefill/decode deployment")


OWNED_DESTS = {flag_table()["flags"][f]["dest"]: f for f in OWNED_FLAGS if f in flag_table()["flags"]}
SAME_DEST = sorted(f for f, e in flag_table()["flags"].items() if e["dest"] in OWNED_DESTS and f not in OWNED_FLAGS)


def test_the_pinned_sglang_has_flags_that_undo_an_owned_one() -> None:
    assert "--no-mm-enable-dp-encoder" in SAME_DEST


@pytest.mark.parametrize("flag", SAME_DEST)
def test_a_flag_setting_what_an_owned_flag_sets_is_refused_naming_the_owner_s_field(flag: str) -> None:
    refused = refusal(V25.extra_args("--enable-cache-report", *_sample(flag)))
    owned = OWNED_DESTS[flag_table()["flags"][flag]["dest"]]
    assert refused.field == "spec.engine.extraArgs[1]"
    assert f"as {owned} does" in refused.message
    assert OWNED_FLAGS[owned] in refused.message


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config", "/mimo-cache/args.yaml"], "past every check of this plan"),
        (["--disable-hybrid-swa-memory"], "72,960 KV values per token instead of the global layers' 23,040"),
        (["--base-gpu-id", "4"], "GPUs 0–7"),
        (["--base-gpu-id=1"], "starts the engine's ranks at GPU 1"),
        (["--gpu-id-step", "2"], "2 GPUs apart"),
        (["--max-total-tokens", "4096"], "below one contextLength 1,048,576 sequence"),
        (["--max-total-tokens", "1000k"], "raise it to at least 1,048,576"),
        (["--max-total-tokens=1048575"], "below one contextLength"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_flag_that_breaks_what_the_plan_sized_or_placed_is_refused_at_its_index(args: list[str], words: str) -> None:
    refused = refusal(V25.extra_args("--enable-metrics", *args))
    assert refused.field == "spec.engine.extraArgs[1]"
    assert words in refused.message


@pytest.mark.parametrize(
    "args",
    [["--base-gpu-id", "0"], ["--gpu-id-step", "1"], ["--max-total-tokens", "1Mi"], ["--max-total-tokens", "2M"],
     ["--enable-cache-report"], ["--random-seed", "-1"]],
    ids=" ".join,
)
def test_the_same_flags_with_values_the_plan_can_run_are_passed_on(args: list[str]) -> None:
    assert list(colocated(V25.extra_args(*args)).server_args_by_rank[0][-len(args):]) == args


def test_the_hybrid_swa_refusal_gives_each_checkpoint_s_own_figures() -> None:
    pro = checkpoint("MiMo-V2.5-Pro")
    refused = refusal(PRO.extra_args("--disable-hybrid-swa-memory"))
    every = pro.kv_values_per_token_global + pro.kv_values_per_token_swa
    assert f"{every:,} KV values per token" in refused.message


def test_max_total_tokens_is_measured_against_the_planned_context_in_pages() -> None:
    assert planned(V25.context(65536).extra_args("--max-total-tokens", "64Ki"))
    assert refusal(V25.context(65000).extra_args("--max-total-tokens", "65000")).field == "spec.engine.extraArgs[0]"


@pytest.mark.parametrize("flag", sorted(PD_OWNED_FLAGS))
def test_a_prefill_decode_flag_in_a_disaggregated_deployment_names_its_pd_field(flag: str) -> None:
    refused = refusal(pro_pd().extra_args("--log-level", "info", *_sample(flag)))
    assert refused.field == "spec.engine.extraArgs[2]"
    assert PD_OWNED_FLAGS[flag] in refused.message


# ---------------------------------------------------------------------- values that start with a dash


@pytest.mark.parametrize(
    "args",
    [["--api-key", "-abc"], ["--api-key", "-x", "--enable-metrics"], ["--log-level", "-debug"],
     ["--allowed-media-domains", "-example.com"]],
    ids=" ".join,
)
def test_a_value_argparse_would_take_for_an_option_is_refused_with_the_equals_form(args: list[str]) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(V25.extra_args(*args).build())
    assert raised.value.field == "spec.engine.extraArgs[0]"
    assert f"write {args[0]}={args[1]} as one element" in raised.value.message


@pytest.mark.parametrize(
    "args",
    [["--api-key=-abc"], ["--random-seed", "-1"], ["--schedule-conservativeness", "-0.5"],
     ["--schedule-conservativeness", "-.5"], ["--api-key", "-"], ["--api-key", "-a b"]],
    ids=" ".join,
)
def test_negative_numbers_lone_dashes_and_equals_forms_are_values(args: list[str]) -> None:
    assert planned(V25.extra_args(*args))


# ---------------------------------------------------------------------------------------- annotations

LIMIT = 256 * 1024


def many_annotations(count: int, size: int) -> dict[str, str]:
    return {f"example.com/a{i}": "x" * size for i in range(count)}


def many_env(count: int, size: int) -> list[dict[str, str]]:
    return [{"name": f"V{i}", "value": "y" * size} for i in range(count)]


@pytest.mark.parametrize(("builder", "env_count"), [(V25, 40), (PRO, 16), (pro_pd(), 16)],
                         ids=["one node", "two nodes", "prefill/decode"])
def test_pod_template_annotations_that_take_a_pod_past_kubernetes_limit_are_refused(
        builder: DeploymentBuilder, env_count: int) -> None:
    refused = refusal(builder.engine(env=many_env(env_count, 4000))
                      .set("podTemplate.annotations", many_annotations(32, 4000)))
    assert refused.field == "spec.podTemplate.annotations"
    assert "past Kubernetes' limit of 256 KiB" in refused.message


@pytest.mark.parametrize(("builder", "nodes"), [(V25, 1), (PRO, 2), (pro_pd(), 2)],
                         ids=["one node", "two nodes", "prefill/decode"])
def test_every_annotation_size_the_planner_accepts_fits_the_pods_it_builds(builder: DeploymentBuilder,
                                                                          nodes: int) -> None:
    outcomes = set()
    for env_count in range(0, 49 // nodes, 3):
        for annotation_count in (8, 16, 24, 32):
            case = (builder.engine(env=many_env(env_count, 4000) if env_count else None)
                    .set("podTemplate.annotations", many_annotations(annotation_count, 4000)))
            pods = pods_or_refusal(case)
            if isinstance(pods, SpecError):
                assert pods.field in ("spec.podTemplate.annotations", "spec.engine.env"), pods
                outcomes.add("refused")
                continue
            for pod in pods:
                size = sum(len(k.encode()) + len(v.encode()) for k, v in pod["metadata"]["annotations"].items())
                assert size <= LIMIT, (env_count, annotation_count, size)
            outcomes.add("built")
    assert outcomes == {"refused", "built"}


# ---------------------------------------------------------------------------- disaggregated parallelism


@pytest.mark.parametrize(("field", "value"), [("expertParallel", 7), ("expertParallel", 8), ("expertParallel", 32),
                                              ("attentionDataParallel", 1), ("attentionDataParallel", 4)])
def test_top_level_parallelism_that_no_side_runs_is_refused_rather_than_dropped(field: str, value: int) -> None:
    refused = refusal(pro_pd().parallelism(**{field: value}))
    assert refused.field == f"spec.parallelism.{field}"
    assert "(prefill 16, decode 16)" in refused.message or "(prefill 2, decode 2)" in refused.message
    assert "spec.disaggregation.prefill.nodesPerGang" in refused.message


@pytest.mark.parametrize("fields", [{"expertParallel": 16}, {"attentionDataParallel": 2},
                                    {"nodesPerReplica": 1}, {"tensorParallel": 8}], ids=str)
def test_top_level_parallelism_the_sides_run_or_the_pools_replace_plans(fields: dict[str, int]) -> None:
    # nodesPerReplica and tensorParallel give way to the pools' nodesPerGang (docs/disaggregation.md).
    assert disaggregated(pro_pd().parallelism(**fields)).prefill.plan.tensor_parallel == 16


# ------------------------------------------------------------------------------- the prefill chunk


H100_ONE_NODE = a_deployment().v25().gpu("H100-80GB").nodes(1).context(65536)


@pytest.mark.parametrize("chunk", [1_048_576, 524_288, 300_000])
def test_a_prefill_chunk_the_sliding_window_pool_cannot_hold_is_refused_naming_the_chunk(chunk: int) -> None:
    refused = refusal(H100_ONE_NODE.engine(chunkedPrefillSize=chunk))
    assert refused.field == "spec.engine.chunkedPrefillSize"
    assert refused.message.startswith(f"chunkedPrefillSize {chunk:,} does not fit")
    found = re.search(r"lower it to at most ([\d,]+), or raise swaFullTokensRatio", refused.message)
    assert found is not None, refused.message
    offered = int(found.group(1).replace(",", ""))
    # The chunk offered fits; one token more does not.
    assert planned(H100_ONE_NODE.engine(chunkedPrefillSize=offered))
    assert refusal(H100_ONE_NODE.engine(chunkedPrefillSize=offered + 1)).field == "spec.engine.chunkedPrefillSize"


def test_a_sliding_window_pool_too_small_for_the_default_chunk_names_the_ratio() -> None:
    refused = refusal(H100_ONE_NODE.engine(swaFullTokensRatio=0.01))
    assert refused.field == "spec.engine.swaFullTokensRatio"


# --- The network between the nodes, and the prompt the PD hand-over is sized for.


@pytest.mark.parametrize("interface", ["lo", "l", "=lo", "eth0,lo", "=eth1,lo"])
def test_a_gang_of_several_nodes_is_refused_the_loopback_interface(interface: str) -> None:
    error = refusal(PRO.set("network.socketInterface", interface))
    assert error.field == "spec.network.socketInterface"
    assert "loopback" in str(error)


@pytest.mark.parametrize("interface", ["^lo", "^docker,lo", "eth0", "=local0", "low", "ib"])
def test_an_interface_list_that_excludes_loopback_or_names_others_plans(interface: str) -> None:
    colocated(PRO.set("network.socketInterface", interface))


def test_one_node_may_use_the_loopback_interface() -> None:
    colocated(a_deployment().h200().set("network.socketInterface", "lo"))


@pytest.mark.parametrize("over", [1, 100_000])
def test_a_typical_prompt_longer_than_the_context_is_refused(over: int) -> None:
    context = 65_536
    assert disaggregated(pro_pd().set("model.contextLength", context)).prefill.plan.context_length == context
    error = refusal(pro_pd(typicalPromptTokens=context + over).set("model.contextLength", context))
    assert error.field == "spec.disaggregation.typicalPromptTokens"
    assert f"{context:,}" in str(error)


@pytest.mark.parametrize("dist_init", [20000, 20100, 24000])
def test_the_ray_and_fabric_ports_each_gang_gets_in_host_network_miss_every_port_sglang_takes(dist_init: int) -> None:
    from mimo_operator.build.gang import gang_ports
    from mimo_operator.launchplan import sglang_ports

    builder = PRO.network("hostNetwork", ibDevices=HCAS).engine(distInitPort=dist_init)
    spec = parse_spec(builder.build())
    plan = plan_deployment(spec)
    ctx = BuildContext(name="d", namespace="ns", uid="u", spec=spec, plan=plan)
    taken = {u.port for u in sglang_ports(engine_http=plan.port, dist_init=plan.dist_init_port,
                                          nodes=plan.nodes_per_replica, attention_dp=plan.attention_data_parallel)}
    assert {dist_init + 6, dist_init + 13} <= taken  # past the five ZMQ ports the first rule knew of
    for i in range(3000):
        assert not set(gang_ports(ctx, f"d-{i}-abcde-1")) & taken


@pytest.mark.parametrize(("change", "warned"), [
    (lambda b: b.set("scheduling.queueName", "gpus"), "scheduling.queueName is not used"),
    (lambda b: b.set("model.cache", {"mode": "node-local", "claimName": "weights"}),
     "model.cache.claimName is not used"),
    (lambda b: b.network("rdma", privileged=True), "network.privileged is not used"),
    (lambda b: b.network("podNetwork", ibDevices=HCAS), "network.ibDevices is not used"),
], ids=["queue without a queueing scheduler", "claim of a node-local cache", "privileged outside host network",
        "hcas in a pod network"])
def test_a_field_nothing_reads_is_said_in_the_plan_s_warnings(
        change: Callable[[DeploymentBuilder], DeploymentBuilder], warned: str) -> None:
    assert not [w for w in colocated(a_deployment().h200()).warnings if "is not used" in w]
    plan = colocated(change(a_deployment().h200()))
    assert [w for w in plan.warnings if w.startswith(warned)], plan.warnings
    pd = disaggregated(change(pro_pd()).set("engine.type", "simulated"))  # a rehearsal may hand KV over TCP
    assert len([w for w in pd.warnings if w.startswith(warned)]) == 1, "said once, not once per pool"


def test_spec_replicas_and_a_pool_above_its_maximum_are_said_in_a_disaggregated_plan() -> None:
    assert not [w for w in disaggregated(pro_pd()).warnings if "replicas" in w]
    plan = disaggregated(pro_pd(decode={"nodesPerGang": 2, "replicas": 3, "maxReplicas": 2}).replicas(2)
                         .set("autoscaling", {"enabled": True}))
    assert any(w.startswith("replicas 2 is not used with spec.disaggregation") for w in plan.warnings)
    assert any(w.startswith("disaggregation.decode.replicas 3 is above its maxReplicas 2") for w in plan.warnings)
