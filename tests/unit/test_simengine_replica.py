"""Which replica the simulated engine simulates: a manifest's plan, or the plan behind an SGLang argv."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mimo_worker.simengine.options import OptionsError, parse_options
from mimo_worker.simengine.replica import planned_replica, replica_from_argv
from tests.unit.test_simengine_options import COOKBOOK_PRO


def deployment(variant: str, gpu: str, **spec: Any) -> dict[str, Any]:
    return {"spec": {"model": {"variant": variant}, "hardware": {"gpuType": gpu}, **spec}}


@pytest.mark.parametrize(
    "manifest",
    [
        pytest.param(deployment("MiMo-V2.5", "H200-141GB"), id="MiMo-V2.5 on one H200 node, attention DP 2"),
        pytest.param(deployment("MiMo-V2.5-Pro", "H200-141GB"), id="Pro on two H200 nodes with DeepEP"),
        pytest.param(deployment("MiMo-V2.5-Pro", "B200-180GB"), id="Pro on one B200 node"),
        pytest.param(
            deployment(
                "MiMo-V2.5",
                "H100-80GB",
                model={"variant": "MiMo-V2.5", "contextLength": 131072, "kvCacheDtype": "fp8"},
                engine={"maxRunningRequests": 64, "chunkedPrefillSize": 8192, "memFractionStatic": 0.8},
                parallelism={"mtp": False},
            ),
            id="MiMo-V2.5 on H100 with engine settings, fp8 KV, no MTP",
        ),
    ],
)
def test_the_argv_of_a_plan_plans_the_same_replica_again(
    manifest: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    replica = planned_replica(manifest)
    plan = replica.plan
    argv = [*plan.server_args(0, "10.1.2.3"), "--mimo-gpu-type", plan.gpu.name]
    with caplog.at_level(logging.WARNING):
        again = replica_from_argv(parse_options(argv))
    assert again.plan.kv == plan.kv
    assert again.limits == replica.limits
    assert again.attention_dp == replica.attention_dp
    assert again.performance == replica.performance
    assert "different arguments" not in caplog.text


def test_the_cookbooks_pro_argv_plans_a_two_node_replica_of_its_settings() -> None:
    argv = list(COOKBOOK_PRO)
    argv[argv.index("--node-rank") + 1] = "0"
    replica = replica_from_argv(parse_options(argv))
    assert replica.plan.nodes_per_replica == 2
    assert replica.plan.attention_data_parallel == 2
    assert replica.plan.mtp
    assert replica.plan.mem_fraction_static == 0.7
    assert replica.plan.kv.swa_full_tokens_ratio == 0.3
    assert replica.limits.max_running_requests == 128
    assert replica.limits.max_total_num_tokens == replica.plan.kv.tokens > 0


def test_an_argv_for_a_model_the_planner_does_not_know_is_refused() -> None:
    with pytest.raises(OptionsError, match="not a checkpoint the planner knows"):
        replica_from_argv(parse_options(["--model-path", "Qwen/Qwen3-8B"]))


def test_an_argv_the_planner_refuses_is_refused_with_the_planners_reason() -> None:
    # 1.02 TB of Pro weights do not fit one 8×H100 node
    with pytest.raises(OptionsError, match="planning the replica from the SGLang arguments"):
        replica_from_argv(
            parse_options(
                ["--model-path", "XiaomiMiMo/MiMo-V2.5-Pro", "--tp-size", "8", "--mimo-gpu-type", "H100-80GB"]
            )
        )
