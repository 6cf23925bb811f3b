"""Quantised copies: the download reads the checkpoint's config.json and refuses, before fetching any shard, a
precision the plan did not size (AWQ, GPTQ, GGUF-only, BF16 for an FP8 plan), saying what would work; the
operator shows the reason (exit code 7) in status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mimo_operator import weights as W
from mimo_operator.build.weights import PERMANENT_EXIT_CODES, cache_ref
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from mimo_worker.weights.download import DownloadOptions, download
from mimo_worker.weights.errors import EXIT_REASONS, UnsupportedPrecision
from mimo_worker.weights.layout import COMPLETE_FILE, STATUS_FILE, read_json
from mimo_worker.weights.verify import precision_problem
from tests.conftest import REPO
from tests.helpers.fakehub import (
    AWQ_QUANTIZATION,
    FP8_QUANTIZATION,
    GPTQ_QUANTIZATION,
    FakeHub,
    gguf_only_checkpoint,
    tiny_checkpoint,
)
from tests.helpers.specs import a_deployment


@pytest.mark.parametrize(
    ("config", "planned", "words"),
    [
        ({"quantization_config": AWQ_QUANTIZATION}, "fp8", ["AWQ checkpoint", "spec.model.source.huggingFaceId",
                                                            "FP8 release", "1 byte per parameter"]),
        ({"quantization_config": GPTQ_QUANTIZATION}, "bf16", ["GPTQ checkpoint", "spec.model.precision bf16"]),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "fp8", ["bitsandbytes checkpoint"]),
        ({"torch_dtype": "bfloat16"}, "fp8", ["unquantised BF16", "set spec.model.precision: bf16"]),
        ({"torch_dtype": "float32"}, "bf16", ["unquantised FP32", "BF16 or FP8 copy"]),
        ({"quantization_config": FP8_QUANTIZATION}, "bf16", ["FP8 weights", "set spec.model.precision: fp8"]),
    ],
    ids=["awq-for-fp8", "gptq-for-bf16", "bnb-for-fp8", "bf16-for-fp8", "fp32-for-bf16", "fp8-for-bf16"],
)
def test_a_precision_the_plan_did_not_size_is_refused_with_what_would_work(
        config: dict[str, Any], planned: str, words: list[str]) -> None:
    problem = precision_problem(config, planned, "someone/MiMo-V2.5-copy")
    assert problem is not None
    for word in words:
        assert word in problem


@pytest.mark.parametrize(
    ("config", "planned"),
    [({"quantization_config": FP8_QUANTIZATION, "torch_dtype": "bfloat16"}, "fp8"),
     ({"torch_dtype": "bfloat16"}, "bf16"), ({"torch_dtype": "float16"}, "bf16"), ({}, "bf16")],
)
def test_the_precision_the_plan_sized_passes(config: dict[str, Any], planned: str) -> None:
    assert precision_problem(config, planned, "x/y") is None


def test_an_awq_copy_is_refused_before_any_shard_is_fetched(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "repo", quantization=AWQ_QUANTIZATION)
    with FakeHub(ckpt, repo="someone/MiMo-V2.5-AWQ") as hub, pytest.raises(UnsupportedPrecision) as refused:
        download(hub.repo, "main", tmp_path / "w",
                 options=DownloadOptions(endpoint=hub.url, reserve_bytes=0, precision="fp8"))
    assert "someone/MiMo-V2.5-AWQ is a AWQ checkpoint" in str(refused.value)
    assert not any(p.endswith(".safetensors") for m, p, _ in hub.requests if m == "GET")
    assert not (tmp_path / "w" / COMPLETE_FILE).exists()


def test_the_fp8_release_downloads_for_an_fp8_plan(tmp_path: Path) -> None:
    with FakeHub(tiny_checkpoint(tmp_path / "repo")) as hub:
        download(hub.repo, "main", tmp_path / "w",
                 options=DownloadOptions(endpoint=hub.url, reserve_bytes=0, precision="fp8"))
    assert (tmp_path / "w" / COMPLETE_FILE).exists()


def test_a_complete_cache_is_still_refused_to_a_plan_of_another_precision(tmp_path: Path) -> None:
    with FakeHub(tiny_checkpoint(tmp_path / "repo")) as hub:
        download(hub.repo, "main", tmp_path / "w", options=DownloadOptions(endpoint=hub.url, reserve_bytes=0))
        with pytest.raises(UnsupportedPrecision, match=r"set spec\.model\.precision: fp8"):
            download(hub.repo, "main", tmp_path / "w",
                     options=DownloadOptions(endpoint=hub.url, reserve_bytes=0, precision="bf16"))


def test_a_gguf_only_repository_is_refused_naming_the_format_and_the_fix(tmp_path: Path) -> None:
    with FakeHub(gguf_only_checkpoint(tmp_path / "repo"), repo="someone/MiMo-V2.5-GGUF") as hub, \
            pytest.raises(UnsupportedPrecision) as refused:
        download(hub.repo, "main", tmp_path / "w", options=DownloadOptions(endpoint=hub.url, reserve_bytes=0))
    assert "GGUF-only repository" in str(refused.value)
    assert "spec.model.source.huggingFaceId" in str(refused.value)


def test_the_command_exits_7_with_the_reason_in_its_status(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "repo", quantization=GPTQ_QUANTIZATION)
    with FakeHub(ckpt, repo="someone/MiMo-V2.5-GPTQ-Int4") as hub:
        done = subprocess.run(
            [sys.executable, "-m", "mimo_worker.weights", "download", "--repo", hub.repo, "--dest", str(tmp_path / "w"),
             "--precision", "fp8", "--reserve-gb", "0"],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
            env={"PATH": os.environ["PATH"], "HF_ENDPOINT": hub.url})
    assert done.returncode == 7, done.stderr[-2000:]
    assert EXIT_REASONS[7] == "UnsupportedPrecision"
    status = read_json(tmp_path / "w" / STATUS_FILE)
    assert status is not None
    assert "UnsupportedPrecision" in status["message"]
    assert "GPTQ checkpoint" in status["message"]


def test_the_operator_passes_the_planned_precision_and_treats_a_refusal_as_permanent() -> None:
    spec = parse_spec(a_deployment().set("model.cache", {"mode": "shared-volume", "claimName": "w"})
                      .set("model.precision", "bf16").set("model.source", {"huggingFaceId": "someone/MiMo-V2.5-BF16"})
                      .build())
    ref = cache_ref(spec, plan_deployment(spec))
    assert ref is not None
    assert ref.precision == "bf16"
    assert 7 in PERMANENT_EXIT_CODES
    assert W.EXIT_REASONS[7] == "UnsupportedPrecision"
    assert {"UnsupportedPrecision"} <= W._PERMANENT


@pytest.mark.parametrize(
    ("repo", "hinted"),
    [("someone/MiMo-V2.5-AWQ", True), ("someone/MiMo-V2.5-Pro-GGUF", True), ("a/MiMo-V2.5-GPTQ-Int4", True),
     ("a/mimo-v2.5-4bit", True), ("XiaomiMiMo/MiMo-V2.5", False), ("a/MiMo-V2.5-Pro-FP8", False),
     ("a/MiMo-V2.5-awqward-finetune", False)],
)
def test_the_plan_warns_early_when_the_repository_is_named_like_a_quantised_copy(repo: str, hinted: bool) -> None:
    plan = plan_deployment(parse_spec(a_deployment().set("model.source", {"huggingFaceId": repo}).build()))
    assert any("looks like a" in w and repo in w for w in plan.warnings) == hinted


def test_the_reason_line_is_picked_out_of_a_log_tail_termination_message() -> None:
    tail = ("2026-12-04 17:40:01 INFO mimo.weights: listing someone/MiMo-V2.5-AWQ\n"
            "2026-12-04 17:40:02 ERROR mimo.weights: UnsupportedPrecision: someone/MiMo-V2.5-AWQ is a AWQ checkpoint "
            "(config.json quantization_config.quant_method awq); …")
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 7, "message": tail}}}]}}
    reason, message = W._failure(pod)
    assert reason == "UnsupportedPrecision"
    assert message.startswith("UnsupportedPrecision: someone/MiMo-V2.5-AWQ is a AWQ checkpoint")
