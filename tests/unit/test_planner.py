"""The planner against hand computation from shared/mimo-facts.md, and the SGLang argv and env it writes."""

from __future__ import annotations

import math

import pytest

from mimo_operator.errors import PlanRefused
from mimo_operator.plan import HEAD_ADDRESS_PLACEHOLDER, SGLANG_PROGRAM, Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from tests.helpers.specs import DeploymentBuilder, a_deployment

GB = 1e9


def plan_of(builder: DeploymentBuilder) -> Plan:
    return plan_deployment(parse_spec(builder.build()))


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# Hand arithmetic, written out from the fact sheet rather than taken from the catalog.
V25_WEIGHTS = 310e9 * 1.03  # 310B params × 1 byte (FP8) + 3 % kept in higher precision
PRO_WEIGHTS = 1.02e12 * 1.03
V25_EXPERT_SHARE = (47 * 256 * 3 * 4096 * 2048) / 310e9  # MoE layers × experts × 3 matrices × hidden × inter
PRO_EXPERT_SHARE = (69 * 384 * 3 * 6144 * 2048) / 1.02e12


def test_mimo_v25_fp8_on_one_h200_node_by_hand() -> None:
    plan = plan_of(a_deployment().v25().h200())
    assert (plan.nodes_per_replica, plan.tensor_parallel, plan.attention_data_parallel) == (1, 8, 2)
    # The model card's one-node launch: DeepEP, so ep = tp.
    assert plan.expert_parallel == 8
    assert plan.moe_a2a_backend == "deepep"
    # Experts split over 8 GPUs; attention and the rest over the attention TP of 4; the data-parallel
    # encoders (ViT 729M + audio 261M, BF16) whole on every GPU instead of a quarter of their FP8 share.
    encoders = (729e6 + 261e6) * 2 - V25_WEIGHTS * (729e6 + 261e6) / 310e9 / 4
    weights_per_gpu = V25_WEIGHTS * V25_EXPERT_SHARE / 8 + V25_WEIGHTS * (1 - V25_EXPERT_SHARE) / 4 + encoders
    assert plan.memory.weights == pytest.approx(weights_per_gpu, rel=1e-6)
    assert plan.mem_fraction_static == 0.65  # the cookbook's MiMo-V2.5 value
    static = 0.65 * 141 * GB
    # Per GPU and full-pool token, bf16 KV, 2 of 8 global KV heads and 1 of 4 SWA heads per rank:
    # 9 × 2 × 320 × 2 + 0.3 × (39 × 1 × 320 × 2) + MTP draft 3 × 1 × 320 × 2 = 11,520 + 7,488 + 1,920.
    per_token = 11_520 + 0.3 * 24_960 + 1_920
    assert plan.kv.bytes_per_token_per_gpu == pytest.approx(per_token)
    tokens_per_group = int((static - weights_per_gpu) // per_token) // 64 * 64
    assert plan.kv.tokens_per_group == pytest.approx(tokens_per_group, abs=64)
    assert plan.kv.tokens == 2 * plan.kv.tokens_per_group
    # Two 1M-token sequences per attention-DP group fit, three do not.
    assert plan.max_concurrent_sequences() == 4


def test_mimo_v25_pro_fp8_on_two_h200_nodes_by_hand() -> None:
    plan = plan_of(a_deployment().pro().h200())
    assert (plan.nodes_per_replica, plan.tensor_parallel, plan.expert_parallel) == (2, 16, 16)
    assert plan.attention_data_parallel == 2
    assert plan.moe_a2a_backend == "deepep"
    assert plan.mem_fraction_static == 0.7  # the cookbook's multi-node DeepEP value
    weights_per_gpu = PRO_WEIGHTS * PRO_EXPERT_SHARE / 16 + PRO_WEIGHTS * (1 - PRO_EXPERT_SHARE) / 8
    assert plan.memory.weights == pytest.approx(weights_per_gpu, rel=1e-6)
    assert plan.memory.weights / GB == pytest.approx(66.9, abs=0.1)
    # 10 × 1 × 320 × 2 + 0.3 × (60 × 1 × 320 × 2) + 3 × 1 × 320 × 2
    per_token = 6_400 + 0.3 * 38_400 + 1_920
    expected = int((0.7 * 141 * GB - weights_per_gpu) // per_token) // 64 * 64
    assert plan.kv.tokens_per_group == pytest.approx(expected, abs=64)
    # mimo-facts: "on H200, 2 nodes leave ≈ 1.2 TB for KV and activations".
    assert (2 * 8 * 141 * GB - plan.weights_bytes) / 1e12 == pytest.approx(1.2, abs=0.05)


def test_kv_per_token_and_swa_per_sequence_match_the_fact_sheet() -> None:
    v25_bf16 = plan_of(a_deployment().v25().h200()).kv
    pro_fp8 = plan_of(a_deployment().pro().h200().kv_fp8()).kv
    assert v25_bf16.bytes_per_token == 46_080  # 23,040 values × 2 bytes: "46.1 KB in BF16"
    assert pro_fp8.bytes_per_token == 25_600  # "25.6 KB/token FP8"
    assert pro_fp8.swa_bytes_per_sequence == 19_660_800  # "19.7 MB FP8" per sequence
    assert v25_bf16.swa_bytes_per_sequence == 2 * 6_389_760


# Nodes per replica at the checkpoint's full context (1M; 256K for -Base), default settings.
NODES_NEEDED = [
    # variant, precision, GPU, nodes, why
    ("MiMo-V2.5", "fp8", "H100-80GB", 2, "the cookbook's 0.65 leaves 533K bf16 KV tokens per group on one"),
    ("MiMo-V2.5", "fp8", "H200-141GB", 1, ""),
    ("MiMo-V2.5", "fp8", "B200-180GB", 1, ""),
    ("MiMo-V2.5", "bf16", "H100-80GB", 4, "2 nodes hold the weights but not 1M tokens; 3 give ep 24 ∤ 256"),
    ("MiMo-V2.5", "bf16", "H200-141GB", 2, "at 0.65 one node leaves 571K tokens per group"),
    ("MiMo-V2.5", "bf16", "B200-180GB", 1, ""),
    ("MiMo-V2.5-Base", "bf16", "H100-80GB", 2, "a 256K context fits where 1M does not"),
    ("MiMo-V2.5-Pro", "fp8", "H100-80GB", 4, "3 hold the weights; the 4th makes room for 1M tokens"),
    ("MiMo-V2.5-Pro", "fp8", "H200-141GB", 2, "does not fit one H200 node (mimo-facts)"),
    ("MiMo-V2.5-Pro", "fp8", "B200-180GB", 1, "the cookbook's verified B200 TP8"),
    ("MiMo-V2.5-Pro", "bf16", "H200-141GB", 4, ""),
    ("MiMo-V2.5-Pro", "bf16", "B200-180GB", 2, ""),
    ("MiMo-V2.5-Pro-Base", "fp8", "H100-80GB", 3, ""),
    ("MiMo-V2.5-Pro-Base", "bf16", "H100-80GB", 6, "5 would do for memory, but tp 40 ∤ 384 experts"),
]


@pytest.mark.parametrize(("variant", "precision", "gpu", "nodes", "why"), NODES_NEEDED,
                         ids=[f"{v}-{p}-{g}" for v, p, g, _, _ in NODES_NEEDED])
def test_nodes_needed(variant: str, precision: str, gpu: str, nodes: int, why: str) -> None:
    builder = a_deployment().variant(variant).gpu(gpu)
    if precision == "bf16":
        builder = builder.bf16()
    assert plan_of(builder).nodes_per_replica == nodes, why


def test_pro_bf16_needs_four_h100_nodes_for_the_weights_alone() -> None:
    # mimo-facts: "≥ 4 for weights alone (2.05 TB / 640 GB)". With almost all memory given to SGLang and
    # a short context, 4 nodes are enough; 3 are not (83.7 GB of experts per GPU > 76 GB).
    base = a_deployment().pro().h100().bf16().context(16384).engine(memFractionStatic=0.95)
    assert plan_of(base).nodes_per_replica == 4
    with pytest.raises(PlanRefused, match="needs ≈2,050 GB of weights"):
        plan_of(base.nodes(3))


def test_a_shorter_context_needs_fewer_nodes() -> None:
    assert plan_of(a_deployment().pro().h100()).nodes_per_replica == 4
    assert plan_of(a_deployment().pro().h100().context(131072)).nodes_per_replica == 3


def test_refusal_names_the_numbers_and_what_would_work() -> None:
    with pytest.raises(PlanRefused) as raised:
        plan_of(a_deployment().pro().h100().nodes(1))
    message = str(raised.value)
    assert raised.value.field == "spec.parallelism.nodesPerReplica"
    assert "MiMo-V2.5-Pro fp8 needs ≈1,051 GB of weights; 1 node of 8×H100-80GB has 640 GB" in message
    assert "use ≥ 4 nodes (3 hold the weights, 4 also hold one 1,048,576-token sequence)" in message
    assert "H200-141GB (2 nodes)" in message
    assert "B200-180GB (1 node)" in message


def test_refusal_when_the_weights_fit_but_one_sequence_does_not() -> None:
    with pytest.raises(PlanRefused) as raised:
        plan_of(a_deployment().pro().h100().nodes(3))
    assert raised.value.field == "spec.model.contextLength"
    assert "short of one contextLength 1,048,576 sequence" in str(raised.value)


def test_an_fp8_kv_cache_holds_twice_the_tokens() -> None:
    bf16 = plan_of(a_deployment().v25().h200()).kv.tokens
    fp8 = plan_of(a_deployment().v25().h200().kv_fp8()).kv.tokens
    assert fp8 / bf16 == pytest.approx(2.0, rel=1e-3)


def test_global_layers_grow_with_context_and_the_window_does_not() -> None:
    plan = plan_of(a_deployment().pro().b200())
    long, short = plan.max_concurrent_sequences(1_048_576), plan.max_concurrent_sequences(131_072)
    assert short >= 8 * long  # full pool: sequences ∝ 1 / context
    assert plan.max_concurrent_sequences(1024) == plan.max_running_requests  # short ones: the request cap
    assert plan_of(a_deployment().pro().b200().context(65536)).kv.swa_bytes_per_sequence == \
        plan.kv.swa_bytes_per_sequence


def test_memory_split_adds_up() -> None:
    mem = plan_of(a_deployment().pro().h200()).memory
    assert mem.weights + mem.kv_cache == mem.static
    assert mem.static + mem.reserve == mem.total == 141 * GB


# ------------------------------------------------------------------------- argv and environment


def test_multi_node_ranks_differ_only_in_node_rank() -> None:
    plan = plan_of(a_deployment().pro().h100())
    ranks = [plan.server_args(rank, "10.1.2.3") for rank in range(plan.nodes_per_replica)]
    assert [flag(args, "--node-rank") for args in ranks] == ["0", "1", "2", "3"]
    assert all(flag(args, "--nnodes") == "4" for args in ranks)
    assert all(flag(args, "--dist-init-addr") == "10.1.2.3:20000" for args in ranks)
    strip = [[a for i, a in enumerate(args) if i != args.index("--node-rank") + 1] for args in ranks]
    assert all(s == strip[0] for s in strip)
    assert f"{HEAD_ADDRESS_PLACEHOLDER}:20000" in plan.server_args_by_rank[0]
    assert plan.argv(1, "h") == [*SGLANG_PROGRAM, *plan.server_args(1, "h")]


def test_deepep_forces_ep_equal_tp_and_brings_its_env() -> None:
    plan = plan_of(a_deployment().pro().h200())
    args = plan.server_args(0, "h")
    assert flag(args, "--tp-size") == flag(args, "--ep-size") == "16"
    assert flag(args, "--moe-a2a-backend") == "deepep"
    assert flag(args, "--moe-dense-tp-size") == "1"
    assert flag(args, "--attn-dp-size") == "2"
    assert "--enable-dp-attention" not in args
    assert "--dp-size" not in args
    # The cookbook's 256 (= 64 graphs per rank × 4 MTP tokens).
    assert plan.env["SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"] == "256"
    assert plan.env["NVSHMEM_IB_ENABLE_IBGDA"] == "true"
    with pytest.raises(PlanRefused, match="DeepEP forces expertParallel = tensorParallel = 16"):
        plan_of(a_deployment().pro().h200().parallelism(expertParallel=8, moeA2ABackend="deepep"))
    # Left to the planner, an expertParallel other than tp means no DeepEP.
    chosen = plan_of(a_deployment().pro().h200().parallelism(expertParallel=8))
    assert (chosen.moe_a2a_backend, chosen.expert_parallel) == ("none", 8)


def test_deepep_inside_one_node_needs_no_hca() -> None:
    plan = plan_of(a_deployment().v25().h200())
    assert plan.moe_a2a_backend == "deepep"
    assert plan.env["SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"] == "256"
    assert "NVSHMEM_REMOTE_TRANSPORT" not in plan.env


def test_mimo_v25_attention_dp_brings_the_cookbook_flags_and_pro_does_not() -> None:
    v25 = plan_of(a_deployment().v25().h200()).server_args(0, "h")
    assert flag(v25, "--attn-dp-size") == "2"
    assert "--enable-dp-lm-head" in v25
    assert "--mm-enable-dp-encoder" in v25
    pro = plan_of(a_deployment().pro().b200()).server_args(0, "h")
    assert "--attn-dp-size" not in pro
    assert "--enable-dp-lm-head" not in pro


def test_hopper_and_blackwell_backends() -> None:
    hopper = plan_of(a_deployment().v25().h200()).server_args(0, "h")
    blackwell = plan_of(a_deployment().pro().b200()).server_args(0, "h")
    assert flag(hopper, "--attention-backend") == "fa3"
    assert flag(hopper, "--swa-full-tokens-ratio") == "0.3"
    assert flag(blackwell, "--attention-backend") == "fa4"
    assert flag(blackwell, "--swa-full-tokens-ratio") == "0.1"
    assert flag(blackwell, "--moe-runner-backend") == "flashinfer_trtllm"


def test_mtp_flags_and_env_follow_the_switch() -> None:
    on = plan_of(a_deployment())
    off = plan_of(a_deployment().mtp(False))
    args = on.server_args(0, "h")
    assert flag(args, "--speculative-algorithm") == "EAGLE"
    assert (flag(args, "--speculative-num-steps"), flag(args, "--speculative-eagle-topk"),
            flag(args, "--speculative-num-draft-tokens")) == ("3", "1", "4")
    assert "--enable-multi-layer-eagle" in args
    assert on.env["SGLANG_ENABLE_SPEC_V2"] == "1"
    assert "--speculative-algorithm" not in off.server_args(0, "h")
    assert "SGLANG_ENABLE_SPEC_V2" not in off.env


def test_precision_and_kv_dtype_flags() -> None:
    fp8 = plan_of(a_deployment().kv_fp8()).server_args(0, "h")
    bf16 = plan_of(a_deployment().bf16("/w")).server_args(0, "h")
    assert flag(fp8, "--quantization") == "fp8"
    assert flag(fp8, "--kv-cache-dtype") == "fp8_e4m3"
    assert "--quantization" not in bf16
    assert flag(bf16, "--model-path") == "/w"
    assert flag(bf16, "--served-model-name") == "XiaomiMiMo/MiMo-V2.5"


def test_every_argv_serves_on_all_interfaces_with_metrics() -> None:
    args = plan_of(a_deployment()).server_args(0, "h")
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--port") == "30000"
    assert "--enable-metrics" in args
    assert flag(args, "--reasoning-parser") == "qwen3"  # MiMo-V2.5: the model card's parser


def test_the_simulated_engine_gets_the_same_sglang_argv() -> None:
    real = plan_of(a_deployment().pro().h200())
    simulated = plan_of(a_deployment().pro().h200().simulated())
    assert simulated.engine == "simulated"
    assert simulated.server_args_by_rank == real.server_args_by_rank


def test_extra_args_come_last_and_owned_flags_are_refused() -> None:
    args = plan_of(a_deployment().extra_args("--log-level", "debug")).server_args(0, "h")
    assert args[-2:] == ["--log-level", "debug"]
    with pytest.raises(PlanRefused, match=r"set spec\.parallelism\.tensorParallel"):
        plan_of(a_deployment().extra_args("--tp-size=4"))


def test_an_engine_environment_that_would_not_fit_in_a_pod_annotation_is_refused_naming_the_field() -> None:
    # Within what the CRD allows (64 variables of up to 4,096 characters), repeated for every rank of the gang.
    env = [{"name": f"NOTE_{i}", "value": "n" * 4000} for i in range(16)]
    two = plan_of(a_deployment().pro().h200().engine(env=env))
    assert two.nodes_per_replica == 2
    assert len(two.launch.model_dump_json()) > 120 * 1024, "accepted at two ranks"
    with pytest.raises(PlanRefused, match=r"at most 192 KiB") as refused:
        plan_of(a_deployment().pro().h200().set("parallelism.nodesPerReplica", 4).engine(env=env))
    assert refused.value.field == "spec.engine.env"


@pytest.mark.parametrize(
    ("network", "expected", "absent"),
    [
        ({"mode": "hostNetwork"}, {}, ["NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE"]),
        ({"mode": "hostNetwork", "ibDevices": ["mlx5_0", "mlx5_1"], "socketInterface": "bond0"},
         {"NCCL_IB_HCA": "mlx5_0,mlx5_1", "NVSHMEM_HCA_LIST": "mlx5_0,mlx5_1", "NCCL_SOCKET_IFNAME": "bond0",
          "GLOO_SOCKET_IFNAME": "bond0"}, []),
        ({"mode": "rdma", "ibGidIndex": 3},
         {"NCCL_SOCKET_IFNAME": "eth0", "NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME": "eth0", "NCCL_IB_GID_INDEX": "3",
          "NVSHMEM_IB_GID_INDEX": "3"}, ["NCCL_IB_DISABLE"]),
        ({"mode": "podNetwork"}, {"NCCL_IB_DISABLE": "1", "NCCL_SOCKET_IFNAME": "eth0"}, ["NCCL_IB_HCA"]),
    ],
    ids=["host-default", "host-hcas", "rdma-roce", "pod"],
)
def test_network_environment(network: dict[str, object], expected: dict[str, str], absent: list[str]) -> None:
    env = plan_of(a_deployment().pro().h200().network(**network)).env  # type: ignore[arg-type]
    assert {k: env.get(k) for k in expected} == expected
    assert [k for k in absent if k in env] == []


def test_pod_network_across_nodes_uses_no_deepep_and_warns() -> None:
    plan = plan_of(a_deployment().pro().h200().network("podNetwork"))
    assert plan.moe_a2a_backend == "none"
    assert plan.expert_parallel == plan.tensor_parallel == 16
    assert any("TCP" in w for w in plan.warnings)


def test_the_user_s_env_wins_and_the_cache_moves_hub_and_kernel_caches() -> None:
    plan = plan_of(a_deployment().cache("shared-volume", claimName="w")
                   .engine(env=[{"name": "SGLANG_ENABLE_SPEC_V2", "value": "0"}]))
    assert plan.env["SGLANG_ENABLE_SPEC_V2"] == "0"
    assert plan.env["HF_HUB_CACHE"].startswith("/mimo-cache")
    assert plan.env["SGLANG_DG_CACHE_DIR"].startswith("/mimo-cache")


def test_pinned_values_are_used_and_tensor_parallel_alone_pins_the_nodes() -> None:
    plan = plan_of(a_deployment().pro().h200().parallelism(tensorParallel=24)
                   .engine(memFractionStatic=0.75, maxRunningRequests=40, chunkedPrefillSize=8192))
    assert plan.nodes_per_replica == 3
    assert plan.attention_data_parallel == 3
    args = plan.server_args(0, "h")
    assert (flag(args, "--mem-fraction-static"), flag(args, "--max-running-requests"),
            flag(args, "--chunked-prefill-size")) == ("0.75", "40", "8192")


# ---------------------------------------------------------------------------------- start-up


def test_time_to_weights_and_start_up() -> None:
    plan = plan_of(a_deployment().pro().h200())
    # 1,050.6 GB at 2 GB/s from the hub, then at 7 GB/s from local NVMe.
    assert plan.startup.time_to_weights_seconds == pytest.approx(PRO_WEIGHTS / 2e9 + PRO_WEIGHTS / 7e9)
    assert plan.startup.jit_seconds == 15 * 60  # DeepGEMM on Hopper, first start
    assert plan.startup.expected_seconds == plan.startup.cold_seconds  # no cache: every gang starts cold
    cached = plan_of(a_deployment().pro().h200().cache("node-local"))
    assert cached.startup.expected_seconds == cached.startup.warm_seconds
    # mimo-facts: "plan 3–8 minutes or more per Pro replica before it serves".
    assert 3 * 60 <= cached.startup.warm_seconds <= 8 * 60
    faster = plan_deployment(parse_spec(a_deployment().pro().h200().build()), download_bytes_per_second=10e9)
    assert faster.startup.download_seconds == pytest.approx(PRO_WEIGHTS / 10e9)


# --------------------------------------------------------------------------------- explanation


def test_the_plan_explains_why_fewer_nodes_would_not_do() -> None:
    plan = plan_of(a_deployment().pro().h200())
    nodes = next(d for d in plan.decisions if d.topic == "nodes per replica")
    assert nodes.choice == "2"
    assert "fewer: MiMo-V2.5-Pro fp8 needs ≈1,051 GB of weights; 1 node of 8×H200-141GB has 1,128 GB" in nodes.reason


def test_plan_data_has_the_keys_scripts_read() -> None:
    data = plan_of(a_deployment().pro().h200()).to_dict()
    for key in ("nodesPerReplica", "gpusPerReplica", "tensorParallel", "expertParallel", "attentionDataParallel",
                "weightsBytes", "kvBytesPerToken", "kvCacheTokens", "maxConcurrentSequences", "argv", "env"):
        assert key in data
    assert len(data["argv"]) == 2
    assert data["argv"][1][: len(SGLANG_PROGRAM)] == list(SGLANG_PROGRAM)
    assert data["gpusPerReplica"] == 16


def test_a_rank_outside_the_gang_is_an_error() -> None:
    with pytest.raises(IndexError):
        plan_of(a_deployment()).server_args(1, "h")


def test_page_rounding_of_kv_capacity() -> None:
    plan = plan_of(a_deployment().engine(pageSize=32))
    assert plan.kv.tokens_per_group % 32 == 0
    assert math.isclose(plan.kv.swa_tokens, plan.kv.tokens * plan.swa_full_tokens_ratio, rel_tol=1e-3)


def test_the_public_surface_is_pinned() -> None:
    # Other packages (the simulated engine, the autoscaling simulator, the builders) import these names.
    from mimo_operator import catalog, perf, plan, planner, spec

    assert planner.__all__ == ["DEFAULT_DOWNLOAD_BYTES_PER_SECOND", "DEFAULT_LOAD_BYTES_PER_SECOND", "OWNED_FLAGS",
                               "node_nic_gbps", "plan_deployment"]
    assert plan.__all__ == ["CACHE_MOUNT_PATH", "HEAD_ADDRESS_PLACEHOLDER", "SGLANG_PROGRAM", "SIMULATED_PROGRAM",
                            "Decision", "GpuMemorySplit", "KvCachePlan", "Plan", "StartupEstimate"]
    assert perf.__all__ == ["CALIBRATION", "CALIBRATION_ENV", "MTP_ACCEPT_LENGTH", "Calibration", "ReplicaPerformance",
                            "load_calibration", "performance_of"]
    assert {"parse_spec", "DeploymentSpec", "parse_quantity"} <= set(spec.__all__)
    assert {"CHECKPOINTS", "GPU_TYPES", "checkpoint", "gpu_type", "weights_bytes"} <= set(catalog.__all__)


def test_pro_on_one_h200_node_is_offered_with_the_context_it_holds() -> None:
    """vLLM serves Pro on one 8×H200 node at TP8 and 0.95 of each GPU; the planner plans two nodes (DeepEP at the
    cookbook's 0.7) and shows the one-node layout beside it with the KV cache it leaves."""
    plan = plan_of(a_deployment().pro().h200())
    (offer,) = [d for d in plan.decisions if d.topic == "one node instead"]
    # Per GPU: 0.95 × 141 GB − Pro's weights at attention TP 8 and expert TP 8 (1,051 GB / 8).
    kv_per_gpu = 0.95 * 141 * GB - PRO_WEIGHTS / 8
    assert kv_per_gpu / GB == pytest.approx(2.6, abs=0.1)
    # bf16 KV, 1 of 8 KV heads per rank: 10 × 320 × 2 + 0.3 × 60 × 320 × 2 + MTP 3 × 320 × 2.
    tokens = int(kv_per_gpu // (6_400 + 0.3 * 38_400 + 1_920)) // 64 * 64
    assert offer.choice == f"contextLength ≤ {tokens:,}"
    assert "nodesPerReplica: 1, memFractionStatic: 0.95, moeA2ABackend: none" in offer.reason
    # Asked for as offered, it plans; at the full 1M context it is refused with the arithmetic.
    one = a_deployment().pro().h200().parallelism(nodesPerReplica=1, moeA2ABackend="none").set(
        "engine.memFractionStatic", 0.95)
    asked = plan_of(one.set("model.contextLength", tokens))
    assert (asked.nodes_per_replica, asked.tensor_parallel, asked.expert_parallel) == (1, 8, 1)
    assert asked.kv.tokens == tokens
    with pytest.raises(PlanRefused, match=r"leaves 2\.6 GB per GPU for the KV cache after 131\.3 GB of weights: "
                                          rf"{tokens:,} tokens per attention-DP group, short of one contextLength "
                                          r"1,048,576 sequence"):
        plan_of(one.set("model.contextLength", 1_048_576))


def test_a_one_node_plan_offers_nothing_else() -> None:
    assert not [d for d in plan_of(a_deployment().v25().h200()).decisions if d.topic == "one node instead"]
