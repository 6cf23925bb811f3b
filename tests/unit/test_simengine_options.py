"""The simulated engine's command line: SGLang's argv in, the flags it models out (options.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mimo_worker.simengine.options import OptionsError, parse_options, resolve_limits
from tests.unit.simengine_support import SmallReplica

# The cookbook's MiMo-V2.5-Pro multi-node command (reference/sglang-mimo-facts.md §1.5), rank 1 of 2.
COOKBOOK_PRO = [
    "--model-path", "XiaomiMiMo/MiMo-V2.5-Pro", "--trust-remote-code",
    "--pp-size", "1", "--dp-size", "2", "--ep-size", "16", "--tp-size", "16", "--moe-dense-tp-size", "1",
    "--enable-dp-attention", "--moe-a2a-backend", "deepep",
    "--dist-init-addr", "10.0.0.1:20000", "--node-rank", "1", "--nnodes", "2",
    "--page-size", "64", "--attention-backend", "fa3", "--quantization", "fp8",
    "--mem-fraction-static", "0.7", "--max-running-requests", "128", "--cuda-graph-max-bs", "64",
    "--chunked-prefill-size", "32768", "--context-length", "1048576", "--tokenizer-worker-num", "64",
    "--speculative-algorithm", "EAGLE", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
    "--speculative-num-draft-tokens", "4", "--enable-multi-layer-eagle",
    "--host", "0.0.0.0", "--port", "9001", "--reasoning-parser", "mimo", "--tool-call-parser", "mimo",
    "--watchdog-timeout", "3600",
    "--model-loader-extra-config", '{"enable_multithread_load": "true", "num_threads": 64}',
    "--swa-full-tokens-ratio", "0.3", "--enable-metrics",
]  # fmt: skip


def test_the_cookbook_argv_is_accepted_and_its_serving_flags_are_read() -> None:
    options = parse_options(COOKBOOK_PRO)
    assert options.model_path == "XiaomiMiMo/MiMo-V2.5-Pro"
    assert options.model_name == "XiaomiMiMo/MiMo-V2.5-Pro"  # no --served-model-name: the path
    assert (options.host, options.port) == ("0.0.0.0", 9001)
    assert (options.tp_size, options.dp_size, options.ep_size, options.pp_size) == (16, 2, 16, 1)
    assert (options.nnodes, options.node_rank, options.dist_init_addr) == (2, 1, "10.0.0.1:20000")
    assert options.max_running_requests == 128
    assert options.chunked_prefill_size == 32768
    assert options.context_length == 1_048_576
    assert options.page_size == 64
    assert options.mem_fraction_static == 0.7
    assert options.swa_full_tokens_ratio == 0.3
    assert options.enable_metrics is True
    assert (options.moe_a2a_backend, options.speculative_algorithm, options.quantization) == ("deepep", "EAGLE", "fp8")
    assert options.attention_dp == 2  # --dp-size 2 with --enable-dp-attention
    assert "--attention-backend" in options.ignored
    assert "--enable-multi-layer-eagle" in options.ignored


def test_unknown_flags_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="mimo_worker.simengine.options"):
        parse_options(["--attention-backend", "fa3"])
    assert "--attention-backend fa3" in caplog.text


def test_sglang_aliases_and_defaults() -> None:
    options = parse_options(["--model", "m", "--tp", "8", "--dp", "2", "--ep", "8", "--nccl-init-addr", "h:1"])
    assert (options.model_path, options.tp_size, options.dp_size, options.ep_size) == ("m", 8, 2, 8)
    assert options.dist_init_addr == "h:1"
    defaults = parse_options([])
    assert (defaults.host, defaults.port, defaults.node_rank, defaults.enable_metrics) == ("127.0.0.1", 30000, 0, False)


def test_an_unknown_flag_is_never_taken_for_an_abbreviation_of_a_known_one() -> None:
    options = parse_options(["--page", "7", "--port", "1234"])
    assert options.page_size is None
    assert options.port == 1234


def test_flags_on_the_command_line_override_the_plans_argv() -> None:
    plan_argv = ["--model-path", "XiaomiMiMo/MiMo-V2.5", "--port", "30000", "--host", "0.0.0.0", "--enable-metrics"]
    options = parse_options(["--port", "8123", "--host", "127.0.0.1", "--mimo-speedup", "5"], plan_argv)
    assert (options.host, options.port) == ("127.0.0.1", 8123)
    assert options.model_path == "XiaomiMiMo/MiMo-V2.5"
    assert options.enable_metrics is True  # from the plan
    assert options.mimo_speedup == 5


def test_simulated_engine_options() -> None:
    options = parse_options(["--mimo-manifest", "m.yaml", "--mimo-startup-seconds", "30", "--mimo-speedup", "10"])
    assert options.mimo_manifest == Path("m.yaml")
    assert options.mimo_startup_seconds == 30
    assert options.mimo_speedup == 10


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mimo-speedup", "0"], "--mimo-speedup"),
        (["--mimo-startup-seconds", "-1"], "--mimo-startup-seconds"),
        (["--nnodes", "2", "--node-rank", "2"], "--node-rank"),
        (["--max-running-requests", "0"], "--max-running-requests"),
    ],
)
def test_impossible_options_are_refused_with_the_flag_named(argv: list[str], message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        parse_options(argv)


def test_scheduler_flags_override_the_planned_limits() -> None:
    planned = SmallReplica().limits
    limits = resolve_limits(
        planned,
        parse_options(["--max-running-requests", "8", "--chunked-prefill-size", "-1", "--max-total-tokens", "32000"]),
    )
    assert limits.max_running_requests == 8
    assert limits.chunked_prefill_size == planned.context_length  # -1: no chunking, as in SGLang
    assert limits.max_total_num_tokens == 32000
    assert limits.swa_max_tokens == planned.swa_max_tokens // 2  # the SWA pool keeps its ratio
    assert resolve_limits(planned, parse_options([])) == planned
