"""Property tests: any spec yields a plan or the one refusal error (SpecError), never another exception;
and every plan keeps SGLang's and the checkpoint's rules."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimo_operator.catalog import CHECKPOINTS, GPU_TYPES
from mimo_operator.errors import SpecError
from mimo_operator.perf import performance_of
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3_000_000), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


# Zero and tiny memories included: a GPU too small for any shard must be refused, not divided by.
GPU_MEMORIES = ["0", "1", "15G", "16G", "24Gi", "48G", "96Gi", "141G", "300Gi", "1Ti"]


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a plausible value, sometimes anything at all."""
    return st.one_of(good, good, good, junk)


def spec_strategy(mostly: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Specs shaped like the CRD; ``mostly`` decides how often a field holds junk instead."""
    models = st.fixed_dictionaries(
        {"variant": mostly(st.sampled_from(list(CHECKPOINTS)))},
        optional={
            "precision": mostly(st.sampled_from(["fp8", "bf16"])),
            "kvCacheDtype": mostly(st.sampled_from(["fp8", "bf16"])),
            "contextLength": mostly(st.integers(4096, 1_048_576)),
            "source": mostly(st.sampled_from([{"path": "/w"}, {"huggingFaceId": "org/model"}])),
            "cache": mostly(st.sampled_from([{"mode": "node-local"}, {"mode": "shared-volume", "claimName": "c"}])),
        },
    )
    hardware = st.one_of(
        st.fixed_dictionaries({"gpuType": mostly(st.sampled_from(list(GPU_TYPES)))},
                              optional={"gpusPerNode": mostly(st.sampled_from([1, 2, 4, 8]))}),
        st.fixed_dictionaries({"gpuMemory": mostly(st.sampled_from(GPU_MEMORIES))},
                              optional={"architecture": mostly(st.sampled_from(["hopper", "blackwell"])),
                                        "gpusPerNode": mostly(st.sampled_from([1, 2, 4, 8]))}),
    )
    parallelism = st.fixed_dictionaries({}, optional={
        "nodesPerReplica": mostly(st.integers(1, 16)),
        "tensorParallel": mostly(st.sampled_from([4, 8, 12, 16, 24, 32, 48, 64])),
        "expertParallel": mostly(st.sampled_from([1, 2, 4, 8, 16, 24, 32, 64])),
        "attentionDataParallel": mostly(st.integers(1, 8)),
        "moeA2ABackend": mostly(st.sampled_from(["auto", "deepep", "none"])),
        "deepepMode": mostly(st.sampled_from(["auto", "normal", "low_latency"])),
        "mtp": mostly(st.booleans()),
    })
    engine = st.fixed_dictionaries({}, optional={
        "type": mostly(st.sampled_from(["sglang", "simulated"])),
        "memFractionStatic": mostly(st.floats(0.3, 0.95)),
        "pageSize": mostly(st.sampled_from([1, 16, 32, 64, 128, 256])),
        "maxRunningRequests": mostly(st.integers(1, 4096)),
        "chunkedPrefillSize": mostly(st.integers(1024, 262144)),
        "swaFullTokensRatio": mostly(st.floats(0.01, 1.0)),
        "extraArgs": mostly(st.lists(st.sampled_from(["--log-level", "debug", "--tp", "--mem", "--port=1", "x"]),
                                     max_size=3)),
    })
    specs = st.fixed_dictionaries(
        {"model": mostly(models), "hardware": mostly(hardware)},
        optional={
            "network": mostly(st.fixed_dictionaries(
                {"mode": mostly(st.sampled_from(["hostNetwork", "rdma", "podNetwork"]))},
                optional={"ibGidIndex": mostly(st.integers(0, 255))})),
            "parallelism": mostly(parallelism),
            "engine": mostly(engine),
            "replicas": mostly(st.integers(0, 8)),
            "autoscaling": mostly(st.fixed_dictionaries({}, optional={"minReplicas": st.integers(0, 5),
                                                                      "maxReplicas": st.integers(1, 5)})),
        },
    )
    return specs


def plausible(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return good


specs = spec_strategy(mostly)
plausible_specs = spec_strategy(plausible)


def plan_or_refusal(obj: Any) -> Plan | SpecError:
    try:
        return plan_deployment(parse_spec(obj))
    except SpecError as refusal:
        return refusal


@SETTINGS
@given(specs)
def test_any_spec_gives_a_plan_or_a_spec_error(spec: dict[str, Any]) -> None:
    result = plan_or_refusal(spec)
    if isinstance(result, SpecError):
        assert result.field.startswith(("spec", "metadata", "kind", "apiVersion"))
        assert str(result).startswith(result.field + ": ")
        return
    check_plan(result)


@SETTINGS
@given(plausible_specs)
def test_every_plausible_spec_plans_within_the_rules_or_is_refused_with_a_reason(spec: dict[str, Any]) -> None:
    result = plan_or_refusal(spec)
    if isinstance(result, SpecError):
        assert result.message
        return
    check_plan(result)


@SETTINGS
@given(st.recursive(junk, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.sampled_from(["spec", "model", "hardware",
                                                                                   "variant", "gpuType", "kind"]),
                                                                  inner, max_size=3)),
                    max_leaves=12))
def test_arbitrary_data_never_crashes_the_parser(obj: Any) -> None:
    result = plan_or_refusal(obj)
    assert isinstance(result, SpecError | Plan)


def check_plan(plan: Plan) -> None:
    entry = plan.checkpoint
    assert plan.tensor_parallel == plan.nodes_per_replica * plan.gpus_per_node
    # The fused QKV split: attention TP per DP group is exactly the checkpoint's.
    assert plan.tensor_parallel // plan.attention_data_parallel == entry.attention_tp
    assert plan.tensor_parallel % entry.attention_tp == 0
    assert entry.experts % plan.expert_parallel == 0
    assert plan.tensor_parallel % plan.expert_parallel == 0
    if plan.moe_a2a_backend == "deepep":
        assert plan.expert_parallel == plan.tensor_parallel
    mem = plan.memory
    assert 0 < mem.weights < mem.static <= mem.total
    assert mem.weights + mem.kv_cache == mem.static
    # At least one full-context sequence per attention-DP group.
    assert plan.kv.tokens_per_group >= plan.context_length
    assert plan.max_concurrent_sequences() >= 1
    ranks = [plan.server_args(r, "h") for r in range(plan.nodes_per_replica)]
    assert all(args.count("--tp-size") == 1 for args in ranks)
    assert all(len(args) == len(ranks[0]) for args in ranks)
    assert "--enable-dp-attention" not in ranks[0]
    replica = performance_of(plan)
    for seconds in (replica.prefill_seconds(4096), replica.decode_step_seconds(4, 4 * 4096)):
        assert math.isfinite(seconds)
        assert seconds > 0
