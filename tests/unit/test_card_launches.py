"""The planner's launches against the commands their publishers give, flag by flag, both parsed by SGLang.

Each golden command below is written out from its named source, not from the planner. Both sides go through
the pinned SGLang's own parser (the golden one as `sglang serve` parses it: argparse with abbreviations, which
is how the cookbook's short `--tp`/`--dp`/`--ep` reach `--tp-size`/...); every setting the golden command makes
must be the plan's too, after SGLang's own equivalences:

- `--dp-size N --enable-dp-attention` is `--attn-dp-size N` (0.5.23 deprecates the former; its help text);
- `--moe-a2a-backend deepep` sets ep = tp (``sglang.srt.arg_groups.overrides._a2a_ep_size``).

What differs is listed in DEVIATIONS with the reason; nothing else may.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from mimo_operator.plan import SGLANG_PROGRAM, Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from tests.helpers.gangs import launch_plan_document
from tests.helpers.specs import DeploymentBuilder, a_deployment

pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                       reason="sglang not installed: pip install --no-deps -r hack/sglang-parser-requirements.txt"),
]

HEAD = "10.0.0.1"

# The MiMo-V2.5 model card (XiaomiMiMo/MiMo-V2.5 on Hugging Face, README "Deployment" with SGLang): the one-node
# 8-GPU command's parallelism, backends and parsers.
MODEL_CARD_V25 = [
    "--model-path", "XiaomiMiMo/MiMo-V2.5", "--trust-remote-code",
    "--tp-size", "8", "--dp-size", "2", "--enable-dp-attention",
    "--moe-a2a-backend", "deepep", "--deepep-mode", "auto", "--moe-dense-tp-size", "1",
    "--enable-dp-lm-head", "--mm-enable-dp-encoder",
    "--attention-backend", "fa3", "--mm-attention-backend", "fa3",
    "--reasoning-parser", "qwen3", "--tool-call-parser", "mimo",
]

# SGLang's MiMo-V2.5 cookbook (sgl-project/sglang docs_new/src/snippets/autoregressive/mimo-v25-deployment.jsx,
# generateCommand): Pro × H200 (tp 16, 2 nodes), EAGLE MTP, DP attention, expert parallelism and DeepEP on.
# `--dp 2`: Pro's fused QKV is split for attention TP 8 (sglang#24607), so 16 GPUs make 2 attention-DP groups
# (field-update-2026-12 quotes the cookbook's command with `--dp 2`).
COOKBOOK_PRO_H200 = [
    "--trust-remote-code", "--model-path", "XiaomiMiMo/MiMo-V2.5-Pro",
    "--tp", "16", "--dp", "2", "--enable-dp-attention", "--ep", "16",
    "--nnodes", "2", "--node-rank", "{rank}", "--dist-init-addr", f"{HEAD}:20000",
    "--moe-a2a-backend", "deepep", "--moe-dense-tp-size", "1",
    "--mem-fraction-static", "0.7", "--max-running-requests", "128", "--chunked-prefill-size", "32768",
    "--cuda-graph-max-bs", "64", "--page-size", "64", "--swa-full-tokens-ratio", "0.3",
    "--model-loader-extra-config", '{"enable_multithread_load": "true","num_threads": 64}',
    "--speculative-algorithm", "EAGLE", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
    "--speculative-num-draft-tokens", "4", "--enable-multi-layer-eagle",
    "--reasoning-parser", "mimo", "--tool-call-parser", "mimo",
    "--host", "0.0.0.0", "--port", "30000",
]
COOKBOOK_PRO_H200_ENV = {"SGLANG_ENABLE_SPEC_V2": "1", "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK": "256"}

# Where the plan differs from a golden command on purpose (parser dest → why).
DEVIATIONS: dict[str, dict[str, str]] = {
    "card-v25": {},
    "cookbook-pro-h200": {
        # SGLang 0.5.23 refuses the cookbook's `--cuda-graph-max-bs` (ambiguous: -decode or -prefill); the
        # planner writes the decode spelling with the same 64 (test_the_cookbooks_cuda_graph_flag_is_refused).
        "cuda_graph_max_bs": "spelled --cuda-graph-max-bs-decode in 0.5.23",
    },
}


@pytest.fixture(scope="module")
def sglang() -> Any:
    from sglang.srt.arg_groups import overrides
    from sglang.srt.server_args import ServerArgs

    return SimpleNamespace(ServerArgs=ServerArgs, overrides=overrides)


def serve_parser(sglang: Any) -> argparse.ArgumentParser:
    """The parser `sglang serve` builds (sglang.srt.server_args.prepare_server_args)."""
    parser = argparse.ArgumentParser(prog="sglang serve")
    sglang.ServerArgs.add_cli_args(parser)
    return parser


def parsed(sglang: Any, argv: list[str], *, strict: bool) -> dict[str, Any]:
    """Parser dests after SGLang's equivalences. ``strict``: no abbreviations (the planner spells in full)."""
    parser = argparse.ArgumentParser(allow_abbrev=False) if strict else serve_parser(sglang)
    if strict:
        sglang.ServerArgs.add_cli_args(parser)
    logging.disable(logging.WARNING)  # the golden commands' deprecated spelling logs a notice
    try:
        ns = vars(parser.parse_args(argv))
    finally:
        logging.disable(logging.NOTSET)
    if ns.get("enable_dp_attention") and ns["dp_size"] > 1:
        ns["attn_dp_size"], ns["dp_size"] = ns["dp_size"], 1
    ns["enable_dp_attention"] = False
    view = SimpleNamespace(moe_a2a_backend=ns["moe_a2a_backend"], ep_size=ns["ep_size"], tp_size=ns["tp_size"])
    ns.update(sglang.overrides._a2a_ep_size(view))
    if ns.get("model_loader_extra_config"):
        ns["model_loader_extra_config"] = json.loads(ns["model_loader_extra_config"])
    return ns


def differences(sglang: Any, golden: list[str], plan_argv: list[str]) -> dict[str, tuple[Any, Any]]:
    """Every setting the golden command makes (a dest it moves off SGLang's default) that the plan does not."""
    defaults = parsed(sglang, ["--model-path", "-"], strict=False)
    want = parsed(sglang, golden, strict=False)
    got = parsed(sglang, plan_argv, strict=True)
    return {dest: (value, got.get(dest)) for dest, value in want.items()
            if value != defaults.get(dest) and got.get(dest) != value}


def plan_of(builder: DeploymentBuilder) -> Plan:
    return plan_deployment(parse_spec(builder.build()))


def test_mimo_v25_on_one_node_is_the_model_cards_command(sglang: Any) -> None:
    plan = plan_of(a_deployment().v25().h200())
    assert plan.nodes_per_replica == 1
    diff = differences(sglang, MODEL_CARD_V25, plan.server_args(0, HEAD))
    assert diff.keys() == DEVIATIONS["card-v25"].keys(), diff


@pytest.mark.parametrize("gpu", ["H100-80GB", "H200-141GB"])
def test_mimo_v25_keeps_the_cards_flags_on_hopper_whatever_the_node_count(sglang: Any, gpu: str) -> None:
    """On H100 the 1M context takes two nodes at the cookbook's memory fraction: the card's backends,
    parsers and DeepEP settings stay (parallel sizes grow with the GPUs)."""
    plan = plan_of(a_deployment().v25().gpu(gpu))
    sizes = {"tp_size", "attn_dp_size", "ep_size"}
    for rank in range(plan.nodes_per_replica):
        diff = differences(sglang, MODEL_CARD_V25, plan.server_args(rank, HEAD))
        assert diff.keys() <= sizes, diff
        got = parsed(sglang, plan.server_args(rank, HEAD), strict=True)
        assert got["tp_size"] == 4 * got["attn_dp_size"] == got["ep_size"]


@pytest.mark.parametrize("rank", [0, 1])
def test_mimo_v25_pro_on_two_h200_nodes_is_the_cookbooks_command(sglang: Any, rank: int) -> None:
    plan = plan_of(a_deployment().pro().h200())
    assert plan.nodes_per_replica == 2
    golden = [a.replace("{rank}", str(rank)) for a in COOKBOOK_PRO_H200]
    golden = [("--cuda-graph-max-bs-decode" if a == "--cuda-graph-max-bs" else a) for a in golden]
    diff = differences(sglang, golden, plan.server_args(rank, HEAD))
    assert diff == {}, diff
    for name, value in COOKBOOK_PRO_H200_ENV.items():
        assert plan.env.get(name) == value, name


def test_the_cookbooks_cuda_graph_flag_is_refused_by_the_pinned_sglang(sglang: Any) -> None:
    """The one documented deviation from the cookbook's Pro command, held against SGLang itself."""
    assert "cuda_graph_max_bs" in DEVIATIONS["cookbook-pro-h200"]
    with pytest.raises(SystemExit):
        serve_parser(sglang).parse_args(["--cuda-graph-max-bs", "64"])


def test_the_launch_program_is_sglang_serve() -> None:
    # The cookbook launches with `sglang serve` (0.5.23's console script sglang.cli.main:main).
    assert SGLANG_PROGRAM[:2] == ("sglang", "serve")


def test_pro_on_one_b200_node_keeps_the_cookbooks_blackwell_stack(sglang: Any) -> None:
    """Cookbook, Pro × B200 (verified): single node, TP 8, fa4 + flashinfer_trtllm, no DeepEP."""
    plan = plan_of(a_deployment().pro().b200())
    golden = ["--trust-remote-code", "--model-path", "XiaomiMiMo/MiMo-V2.5-Pro", "--tp", "8",
              "--moe-runner-backend", "flashinfer_trtllm", "--attention-backend", "fa4",
              "--swa-full-tokens-ratio", "0.1", "--reasoning-parser", "mimo", "--tool-call-parser", "mimo"]
    diff = differences(sglang, golden, plan.server_args(0, HEAD))
    assert diff == {}, diff


def test_the_sglang_ray_launcher_is_one_driver_that_sglangs_parser_accepts(sglang: Any) -> None:
    """spec.engine.launcher sglang-ray: SGLang's own Ray engine on the head (--use-ray), rank 0's arguments;
    the launch plan the builders render from it is what the worker validates and runs."""
    from mimo_operator.build import BuildContext, gang_objects
    from mimo_worker.head import sglang_ray_launch
    from mimo_worker.launchplan import parse_plan

    builder = a_deployment().pro().h200().set("engine.launcher", "sglang-ray")
    plan = plan_of(builder)
    assert plan.launch.mode == "sglang-ray"
    (driver,) = plan.launch.ranks
    argv = [a.replace("{head_ip}", HEAD) for a in driver.argv]
    got = parsed(sglang, argv, strict=True)
    assert got["use_ray"] is True
    assert (got["nnodes"], got["node_rank"], got["tp_size"], got["attn_dp_size"]) == (2, 0, 16, 2)
    assert any("not shown to work with DeepEP" in w for w in plan.warnings)
    spec = parse_spec(builder.build())
    ctx = BuildContext(name="mimo", namespace="serving", uid="u", spec=spec, plan=plan)
    document = parse_plan(launch_plan_document(gang_objects(ctx, 0, 1, "abc")))
    command, env = sglang_ray_launch(document, HEAD)
    assert command.count("--use-ray") == 1
    assert command[:len(SGLANG_PROGRAM)] == list(SGLANG_PROGRAM)
    assert env["RAY_ADDRESS"].startswith(f"{HEAD}:")
    # The per-node default stays one process per node.
    assert [r.rank for r in plan_of(a_deployment().pro().h200()).launch.ranks] == [0, 1]
