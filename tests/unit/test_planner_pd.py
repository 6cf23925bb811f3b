"""The prefill/decode planner: both sides, the KV hand-over, EPLB's memory, the refusals — and SGLang's own parser
reading every rank's argv of both sides."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mimo_operator.build.revision import revision_inputs
from mimo_operator.catalog import checkpoint
from mimo_operator.errors import PlanRefused
from mimo_operator.plan import CACHE_MOUNT_PATH, HEAD_ADDRESS_PLACEHOLDER
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import (
    DEFAULT_TYPICAL_PROMPT_TOKENS,
    EXPERT_LOCATION_FILE,
    EXPERT_LOCATION_MOUNT,
    DisaggregatedPlan,
    check_attention_tp,
    expert_slot_bytes,
    plan_disaggregated,
)
from mimo_operator.spec import parse_spec
from tests.helpers.specs import DeploymentBuilder, a_deployment

HCAS = [f"mlx5_{i}" for i in range(8)]


def pro_pd(**disaggregation: Any) -> DeploymentBuilder:
    """The public MiMo-V2.5-Pro PD recipe's shape on H200: 2 prefill + 2 decode nodes, tp16/ep16 each, FP8 KV."""
    pd: dict[str, Any] = {"prefill": {"nodesPerGang": 2}, "decode": {"nodesPerGang": 2}, **disaggregation}
    return (a_deployment().pro().h200().kv_fp8().network("hostNetwork", ibDevices=HCAS)
            .set("disaggregation", pd))


def plan_of(builder: DeploymentBuilder) -> DisaggregatedPlan:
    return plan_disaggregated(parse_spec(builder.build()))


def flag(argv: list[str] | tuple[str, ...], name: str) -> str | None:
    args = list(argv)
    return args[args.index(name) + 1] if name in args else None


def test_each_side_runs_its_role_with_deepep_in_its_mode_and_mtp_on_decode_only() -> None:
    pd = plan_of(pro_pd())
    prefill, decode = pd.prefill.plan, pd.decode.plan
    for plan, role in ((prefill, "prefill"), (decode, "decode")):
        assert (plan.nodes_per_replica, plan.tensor_parallel, plan.expert_parallel) == (2, 16, 16)
        for rank in range(plan.nodes_per_replica):
            argv = plan.argv(rank, "10.0.0.1")
            assert flag(argv, "--disaggregation-mode") == role
            assert flag(argv, "--disaggregation-transfer-backend") == "mooncake"
            assert flag(argv, "--disaggregation-ib-device") == ",".join(HCAS)
            assert flag(argv, "--node-rank") == str(rank)
    assert (flag(prefill.argv(0, "h"), "--deepep-mode"), flag(decode.argv(0, "h"), "--deepep-mode")) == (
        "normal", "low_latency")
    assert (prefill.mtp, decode.mtp) == (False, True)
    assert "--speculative-algorithm" not in prefill.argv(0, "h")
    assert flag(decode.argv(0, "h"), "--speculative-algorithm") == "EAGLE"
    assert "SGLANG_ENABLE_SPEC_V2" in decode.env
    assert "SGLANG_ENABLE_SPEC_V2" not in prefill.env
    # Without MTP's draft pool the prefill side holds more KV tokens on the same memory.
    assert prefill.kv.tokens > decode.kv.tokens
    assert (pd.prefill.replicas, pd.decode.replicas) == (1, 1)


def test_the_kv_one_request_moves_grows_with_its_global_layers_and_stops_at_the_window() -> None:
    pro = checkpoint("MiMo-V2.5-Pro")
    pd = plan_of(pro_pd(typicalPromptTokens=8192))
    t = pd.transfer
    # mimo-facts: 25.6 KB/token of global-layer KV in FP8; the SWA layers hold 19.7 MB per sequence at most.
    assert t.global_bytes == 8192 * 10 * 8 * 320 == 209_715_200
    assert t.swa_bytes == 60 * 128 * 8 * 320 == 19_660_800
    # One attention-DP group is 8 GPUs, each sending its KV-head shard over its own 400 Gb/s HCA.
    assert (t.senders, t.bytes_per_second) == (8, 8 * 50e9)
    assert t.seconds == pytest.approx(229_376_000 / 400e9)
    longer = plan_of(pro_pd(typicalPromptTokens=65536)).transfer
    assert longer.global_bytes == 8 * t.global_bytes
    assert longer.swa_bytes == t.swa_bytes == pro.kv_values_per_token_swa * pro.swa_window
    assert plan_of(pro_pd()).transfer.prompt_tokens == DEFAULT_TYPICAL_PROMPT_TOKENS


def test_a_pod_network_has_no_rdma_for_the_kv_transfer_and_the_refusal_says_how_much_would_cross() -> None:
    builder = pro_pd().network("podNetwork")
    with pytest.raises(PlanRefused, match=r"RDMA, and network.mode podNetwork has none: one 8,192-token request "
                                          r"hands over 229.4 MB") as refused:
        plan_of(builder.set("parallelism.moeA2ABackend", "none"))
    assert refused.value.field == "spec.disaggregation.transferBackend"


def test_sides_of_different_attention_tp_are_refused_with_both_layouts() -> None:
    pd = plan_of(pro_pd())
    other = dataclasses.replace(pd.decode.plan, attention_data_parallel=4)  # attention TP 16 / 4 = 4
    with pytest.raises(PlanRefused, match=r"prefill side runs attention TP 8 .* decode side 4 .* does not transfer "
                                          r"the KV cache of a non-MLA hybrid sliding-window model"):
        check_attention_tp(pd.prefill.plan, other)


def test_a_side_that_cannot_hold_the_weights_is_refused_on_its_pool() -> None:
    with pytest.raises(PlanRefused, match="the decode side") as refused:
        plan_of(pro_pd(decode={"nodesPerGang": 1}))
    assert refused.value.field == "spec.disaggregation.decode.nodesPerGang"


def test_eplb_takes_one_expert_slot_per_gpu_from_the_kv_cache_when_it_costs_a_tenth_or_less() -> None:
    plain = plan_of(pro_pd()).decode.plan
    pd = plan_of(pro_pd(decode={"nodesPerGang": 2, "eplb": {}}))
    eplb, plan = pd.decode.eplb, pd.decode.plan
    assert eplb is not None
    pro = checkpoint("MiMo-V2.5-Pro")
    # One expert in all 69 MoE layers: 69 × 3 × 6144 × 2048 FP8 parameters (plus block scales).
    assert eplb.bytes_per_slot == expert_slot_bytes(pro, "fp8")
    assert 69 * 3 * 6144 * 2048 < eplb.bytes_per_slot < 1.05 * 69 * 3 * 6144 * 2048
    assert (eplb.redundant_experts, eplb.slots_per_gpu) == (16, 1)
    assert plan.memory.kv_cache == plain.memory.kv_cache - eplb.bytes_per_slot
    assert plan.memory.weights == plain.memory.weights + eplb.bytes_per_slot
    assert plan.kv.tokens < plain.kv.tokens
    assert flag(plan.argv(0, "h"), "--ep-num-redundant-experts") == "16"
    assert "--enable-eplb" not in plan.argv(0, "h")


def test_eplb_settings_become_sglang_flags_and_a_configmap_placement_is_read_as_a_json_file() -> None:
    eplb = {"redundantExperts": 32, "algorithm": "deepseek_hierarchical", "rebalance": True,
            "expertLocation": {"configMap": {"name": "pro-experts", "key": "placement"}}}
    plan = plan_of(pro_pd(decode={"nodesPerGang": 2, "eplb": eplb})).decode.plan
    argv = plan.argv(1, "h")
    assert flag(argv, "--ep-num-redundant-experts") == "32"
    assert flag(argv, "--eplb-algorithm") == "deepseek_hierarchical"
    assert "--enable-eplb" in argv
    # SGLang reads --init-expert-location as a file only when it ends in .pt or .json.
    assert flag(argv, "--init-expert-location") == f"{EXPERT_LOCATION_MOUNT}/{EXPERT_LOCATION_FILE}"
    cached = pro_pd(prefill={"nodesPerGang": 2, "eplb": {"expertLocation": {"cacheFile": "eplb/pro.pt"}}})
    prefill = plan_of(cached.cache("shared-volume", claimName="w")).prefill.plan
    assert flag(prefill.argv(0, "h"), "--init-expert-location") == f"{CACHE_MOUNT_PATH}/eplb/pro.pt"


def test_redundant_experts_that_do_not_split_over_the_ep_ranks_or_crowd_out_the_kv_cache_are_refused() -> None:
    with pytest.raises(PlanRefused, match=r"384 experts \+ 20 redundant slots must split evenly over "
                                          r"expertParallel 16: use a multiple of 16"):
        plan_of(pro_pd(decode={"nodesPerGang": 2, "eplb": {"redundantExperts": 20}}))
    with pytest.raises(PlanRefused, match=r"of experts on each GPU of the decode side, leaving .* short of one "
                                          r"contextLength") as refused:
        plan_of(pro_pd(decode={"nodesPerGang": 2, "eplb": {"redundantExperts": 16 * 12}}))
    assert refused.value.field == "spec.disaggregation.decode.eplb.redundantExperts"


def test_the_planner_owns_the_pd_flags() -> None:
    with pytest.raises(PlanRefused, match="--disaggregation-mode is written by the planner"):
        plan_of(pro_pd().extra_args("--disaggregation-mode", "decode"))


def test_a_spec_without_disaggregation_hashes_and_plans_as_before() -> None:
    spec = parse_spec(a_deployment().pro().h200().build())
    assert "disaggregation" not in revision_inputs(spec)
    pd_spec = parse_spec(pro_pd().build())
    assert "disaggregation" in revision_inputs(pd_spec)
    assert "--disaggregation-mode" not in plan_deployment(spec).argv(0, "h")


def test_an_impossible_pd_spec_is_refused_with_its_arithmetic() -> None:
    with pytest.raises(PlanRefused, match=r"spec\.disaggregation\.transferBackend.*RDMA"):
        plan_disaggregated(parse_spec(pro_pd().network("podNetwork").set("parallelism.moeA2ABackend", "none")
                                      .build()))


def test_spec_rules_of_the_pools() -> None:
    from mimo_operator.errors import SpecError

    with pytest.raises(SpecError, match="minReplicas must be <= maxReplicas"):
        parse_spec(pro_pd(prefill={"minReplicas": 3, "maxReplicas": 2}).build())
    with pytest.raises(SpecError, match="exactly one of configMap or cacheFile"):
        parse_spec(pro_pd(decode={"eplb": {"expertLocation": {}}}).build())
    with pytest.raises(SpecError, match=r"model\.cache\.mode must not be none"):
        parse_spec(pro_pd(decode={"eplb": {"expertLocation": {"cacheFile": "x.pt"}}}).build())


# ------------------------------------------------------------------------------------ SGLang's parser

needs_sglang = pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                                  reason="sglang not installed: pip install --no-deps -r "
                                         "hack/sglang-parser-requirements.txt")

PD_CASES = {
    "pro-h200-recipe": pro_pd(decode={"nodesPerGang": 2, "eplb": {
        "algorithm": "auto", "expertLocation": {"configMap": {"name": "e", "key": "k"}}}}),
    "pro-h200-nixl-eplb-both": pro_pd(transferBackend="nixl", bootstrapPort=9000,
                                      prefill={"nodesPerGang": 2, "eplb": {"redundantExperts": 16, "rebalance": True}},
                                      decode={"nodesPerGang": 3, "eplb": {}}),
    "v25-h100-one-node-sides": (a_deployment().v25().h100().kv_fp8().network("hostNetwork", ibDevices=HCAS)
                                .set("disaggregation", {"prefill": {}, "decode": {"eplb": {}}})),
}


@needs_sglang
@pytest.mark.sglang
@pytest.mark.parametrize("name", list(PD_CASES))
def test_sglang_parses_every_rank_of_both_sides(name: str) -> None:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(allow_abbrev=False)
    ServerArgs.add_cli_args(parser)
    pd = plan_of(PD_CASES[name])
    for pool in (pd.prefill, pd.decode):
        plan = pool.plan
        for rank in range(plan.nodes_per_replica):
            argv = [a.replace(HEAD_ADDRESS_PLACEHOLDER, "10.0.0.1") for a in plan.server_args_by_rank[rank]]
            assert plan.launch.ranks[rank].argv[:len(argv)] == list(plan.server_args_by_rank[rank])
            try:
                args = ServerArgs.from_cli_args(parser.parse_args(argv))
            except SystemExit:
                pytest.fail(f"SGLang's parser refused the {pool.role} side's rank {rank}: {argv}")
            assert args.disaggregation_mode == pool.role
            assert args.disaggregation_transfer_backend == pd.transfer_backend
            assert args.disaggregation_ib_device == ",".join(HCAS)
            assert (args.tp_size, args.ep_size, args.attn_dp_size) == (
                plan.tensor_parallel, plan.expert_parallel, plan.attention_data_parallel)
            eplb = pool.eplb
            assert args.ep_num_redundant_experts == (eplb.redundant_experts if eplb else 0)
            assert args.enable_eplb == bool(eplb and eplb.rebalance)
            assert args.init_expert_location == ((eplb and eplb.expert_location) or "trivial")
            if pool.role == "prefill" and pd.bootstrap_port != 8998:
                assert args.disaggregation_bootstrap_port == pd.bootstrap_port


def test_mimoctl_plan_shows_both_sides_and_the_hand_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mimo_operator.cli import main

    path = tmp_path / "pd.yaml"
    path.write_text(yaml.safe_dump(pro_pd(decode={"nodesPerGang": 2, "eplb": {}}).build()))
    assert main(["plan", "-f", str(path)]) == 0
    table = capsys.readouterr().out
    assert "=== PREFILL SIDE ===" in table
    assert "=== DECODE SIDE ===" in table
    assert "KV hand-over" in table
    assert "--disaggregation-mode prefill" in table
    assert "--disaggregation-mode decode" in table
    assert main(["plan", "-f", str(path), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kvTransfer"]["totalBytes"] == 229_376_000
    assert data["decode"]["eplb"]["redundantExperts"] == 16
    assert data["prefill"]["plan"]["deepepMode"] == "normal"
    assert data["decode"]["plan"]["performance"]["decodeTokensPerSecondAt1"] > 0


def test_a_sides_own_table_shows_its_pool_and_the_memory_after_the_expert_slots() -> None:
    plan = plan_of(pro_pd(decode={"nodesPerGang": 2, "eplb": {}})).decode.plan
    topics = {d.topic: d for d in plan.decisions}
    assert topics["nodes per replica"].reason == "set by spec.disaggregation.decode.nodesPerGang"
    split = f"{plan.memory.weights / 1e9:.1f} + {plan.memory.kv_cache / 1e9:.1f}"
    assert topics["memory per GPU"].choice.startswith(split)
    assert topics["redundant experts"].choice == "16"
    assert topics["KV cache"].choice == f"{plan.kv.tokens:,} tokens"


def test_the_pools_replace_a_colocated_node_count_that_could_not_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One H200 node cannot hold Pro's weights; with the pools set, that top-level setting does not apply.
    builder = pro_pd().nodes(1)
    with pytest.raises(PlanRefused):
        plan_deployment(parse_spec(builder.build()))
    path = tmp_path / "pd.yaml"
    path.write_text(yaml.safe_dump(builder.build()))
    assert main_plan(["plan", "-f", str(path)]) == 0
    assert "=== DECODE SIDE ===" in capsys.readouterr().out
    assert plan_of(builder).prefill.plan.nodes_per_replica == 2


def main_plan(argv: list[str]) -> int:
    from mimo_operator.cli import main

    return main(argv)


def test_a_simulated_pd_rehearsal_plans_in_a_pod_network() -> None:
    # The simulated engine hands KV over without RDMA; SGLang's engines on the same spec are refused.
    builder = (a_deployment("pd").v25().h200().simulated().network("podNetwork")
               .set("disaggregation", {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}))
    pd = plan_of(builder)
    assert (pd.prefill.plan.engine, pd.decode.plan.engine) == ("simulated", "simulated")
    with pytest.raises(PlanRefused, match="podNetwork has none"):
        plan_of(builder.set("engine.type", "sglang"))


def test_a_simulated_side_carries_the_line_rate_its_hand_over_time_needs() -> None:
    builder = (a_deployment("pd").v25().h200().simulated().network("podNetwork", linkSpeedGbps=200)
               .set("disaggregation", {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}))
    pd = plan_of(builder)
    for side in (pd.prefill, pd.decode):
        assert all(flag(r.argv, "--mimo-link-speed-gbps") == "200" for r in side.plan.launch.ranks)
    # Half the line rate of the default (400 Gb/s NDR): twice the hand-over time.
    default = plan_of(a_deployment("pd").v25().h200().simulated().network("podNetwork")
                      .set("disaggregation", {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}))
    assert pd.transfer.seconds == pytest.approx(2 * default.transfer.seconds)
    assert flag(default.prefill.plan.launch.ranks[0].argv, "--mimo-link-speed-gbps") is None
