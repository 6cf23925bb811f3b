"""Every argv the planner writes, parsed by the pinned SGLang's own ServerArgs parser.

Needs SGLang's argument module: `pip install --no-deps -r hack/sglang-parser-requirements.txt`
(hack/setup.sh does it). Without SGLang installed these tests are skipped; with it installed but broken
(a missing light dependency) they fail.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import itertools
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from mimo_operator.catalog import CHECKPOINTS, GPU_TYPES
from mimo_operator.errors import SpecError
from mimo_operator.plan import HEAD_ADDRESS_PLACEHOLDER, SGLANG_PROGRAM, Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from mimo_operator.versions import SGLANG_VERSION
from tests.helpers.specs import a_deployment

pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                       reason="sglang not installed: pip install --no-deps -r hack/sglang-parser-requirements.txt"),
]

REPO = Path(__file__).resolve().parents[2]
HEAD = "10.0.0.1"


def valid_manifest_plans() -> list[tuple[str, Plan]]:
    return [(p.stem, plan_deployment(parse_spec(yaml.safe_load(p.read_text()))))
            for p in sorted((REPO / "tests" / "manifests" / "valid").glob("*.yaml"))]


def matrix_plans() -> list[tuple[str, Plan]]:
    """Every variant × GPU × precision × network mode × MTP × KV dtype the planner accepts."""
    out = []
    for variant, gpu, precision, network, mtp, kv in itertools.product(
        CHECKPOINTS, GPU_TYPES, ("fp8", "bf16"), ("hostNetwork", "podNetwork"), (True, False), ("bf16", "fp8")
    ):
        builder = a_deployment().variant(variant).gpu(gpu).network(network).mtp(mtp).set("model.kvCacheDtype", kv)
        if precision == "bf16":
            builder = builder.bf16()
        try:
            plan = plan_deployment(parse_spec(builder.build()))
        except SpecError:
            continue  # refusals are the planner tests' business
        out.append((f"{variant}-{precision}-{gpu}-{network}-mtp{int(mtp)}-kv{kv}", plan))
    for mode in ("normal", "low_latency"):
        out.append((f"deepep-{mode}", plan_deployment(parse_spec(
            a_deployment().pro().h200().parallelism(deepepMode=mode).build()))))
    # The operator's weights cache: --model-path is the cache directory.
    out.append(("weights-cache", plan_deployment(parse_spec(
        a_deployment().pro().h200().cache("shared-volume", claimName="mimo-weights").build()))))
    return out


PLANS = valid_manifest_plans() + matrix_plans()
CASES = [(name, plan, rank) for name, plan in PLANS for rank in range(plan.nodes_per_replica)]


@pytest.fixture(scope="module")
def server_args_class() -> Any:
    from sglang.srt.server_args import ServerArgs

    return ServerArgs


@pytest.fixture(scope="module")
def parser(server_args_class: Any) -> argparse.ArgumentParser:
    # allow_abbrev=False: the planner must spell every flag in full, never lean on prefix matching.
    parser = argparse.ArgumentParser(allow_abbrev=False)
    server_args_class.add_cli_args(parser)
    return parser


def parse(parser: argparse.ArgumentParser, server_args_class: Any, argv: list[str],
          caplog: pytest.LogCaptureFixture) -> Any:
    """ServerArgs from argv; fails the test on a parser error or any deprecation notice."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        try:
            namespace = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"SGLang's parser refused: {argv}")
        server_args = server_args_class.from_cli_args(namespace)
    notices = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    deprecated = [n for n in notices if "deprecat" in n.lower()]
    assert deprecated == [], f"deprecated flags in {argv}: {deprecated}"
    return server_args


def deprecated_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Flags whose parser action or help text says they are deprecated."""
    found = []
    for arg in argv:
        action = parser._option_string_actions.get(arg.split("=", 1)[0])  # argparse keeps no public table of actions
        if action is None:
            continue
        help_text = (action.help or "").lstrip("(").lower()
        if type(action).__name__.startswith("Deprecated") or help_text.startswith("deprecated"):
            found.append(arg)
    return found


def test_the_installed_sglang_is_the_pinned_one() -> None:
    assert importlib.metadata.version("sglang") == SGLANG_VERSION
    requirements = (REPO / "hack" / "sglang-parser-requirements.txt").read_text().splitlines()
    assert f"sglang=={SGLANG_VERSION}" in requirements


def test_the_cases_cover_every_variant_gpu_and_multi_node_ranks() -> None:
    assert {plan.variant for _, plan in PLANS} == set(CHECKPOINTS)
    assert {plan.gpu.name for _, plan in PLANS} >= set(GPU_TYPES)
    assert max(plan.nodes_per_replica for _, plan in PLANS) >= 4
    assert {plan.moe_a2a_backend for _, plan in PLANS} == {"deepep", "none"}


@pytest.mark.parametrize(("name", "plan", "rank"), CASES, ids=[f"{n}-rank{r}" for n, _, r in CASES])
def test_sglang_parses_the_argv_of_every_rank(
    name: str, plan: Plan, rank: int, parser: argparse.ArgumentParser, server_args_class: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The final launch, exactly as the builders render it into the gang's launch plan: SGLang's argv, and for
    # the simulated engine its own flags after it.
    launch, sglang_argv = plan.launch.ranks[rank].argv, list(plan.server_args_by_rank[rank])
    assert launch[:len(sglang_argv)] == sglang_argv
    if plan.engine == "sglang":
        assert (plan.launch.program, launch) == (list(SGLANG_PROGRAM), sglang_argv)
    argv = [a.replace(HEAD_ADDRESS_PLACEHOLDER, HEAD) for a in sglang_argv]
    assert deprecated_flags(parser, argv) == []
    args = parse(parser, server_args_class, argv, caplog)
    assert args.tp_size == plan.tensor_parallel
    assert args.ep_size == plan.expert_parallel
    assert args.attn_dp_size == plan.attention_data_parallel
    assert args.dp_size == 1
    assert args.moe_a2a_backend == plan.moe_a2a_backend
    assert (args.nnodes, args.node_rank) == (plan.nodes_per_replica, rank)
    assert args.dist_init_addr == (f"{HEAD}:{plan.dist_init_port}" if plan.nodes_per_replica > 1 else None)
    assert (args.host, args.port) == ("0.0.0.0", plan.port)
    assert args.context_length == plan.context_length
    assert args.mem_fraction_static == plan.mem_fraction_static
    assert args.swa_full_tokens_ratio == plan.swa_full_tokens_ratio
    assert args.page_size == plan.page_size
    assert args.max_running_requests == plan.max_running_requests
    assert args.chunked_prefill_size == plan.chunked_prefill_size
    assert args.cuda_graph_max_bs_decode == plan.cuda_graph_max_batch_size
    assert args.attention_backend == plan.attention_backend
    assert args.quantization == ("fp8" if plan.precision == "fp8" else None)
    assert args.served_model_name == plan.served_model_name
    assert args.model_path == plan.model_path
    assert args.speculative_algorithm == ("EAGLE" if plan.mtp else None)
    assert args.reasoning_parser == plan.checkpoint.reasoning_parser
    assert args.tool_call_parser == "mimo"
    assert args.mm_attention_backend == (plan.gpu.mm_attention_backend if plan.checkpoint.multimodal else None)
    assert args.enable_metrics is True


def test_the_deprecation_check_catches_the_old_dp_attention_flag(
    parser: argparse.ArgumentParser, server_args_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # mimo-facts: SGLang 0.5.23 deprecates --enable-dp-attention in favour of --attn-dp-size.
    argv = ["--model-path", "XiaomiMiMo/MiMo-V2.5-Pro", "--tp-size", "16", "--dp-size", "2", "--enable-dp-attention"]
    assert deprecated_flags(parser, argv) == ["--enable-dp-attention"]
    with pytest.raises(AssertionError, match="deprecated flags"):
        parse(parser, server_args_class, argv, caplog)


def test_sglang_refuses_what_the_planner_must_never_write(parser: argparse.ArgumentParser) -> None:
    # Older spellings the fact sheet quotes: abbreviations are off, and bad choices exit.
    for argv in (["--cuda-graph-max-bs", "64"], ["--attention-backend", "fa5"], ["--moe-a2a-backend", "deepep2"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
