"""spec.engine.extraArgs against the pinned SGLang's flags: the generated table is current, and what SGLang's
argparse would refuse is refused at parse time, naming the element and the nearest valid flag."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml

from mimo_operator.errors import SpecError
from mimo_operator.planner import OWNED_FLAGS, plan_deployment
from mimo_operator.sglang_flags import check_extra_args, flag_table, resolve
from mimo_operator.spec import parse_spec
from mimo_operator.versions import SGLANG_VERSION
from tests.conftest import REPO
from tests.helpers.specs import a_deployment

SCRIPT = REPO / "hack" / "sglang-flags.py"


@pytest.mark.sglang
@pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                    reason="sglang not installed: pip install --no-deps -r hack/sglang-parser-requirements.txt")
def test_the_committed_table_is_what_the_pinned_sglang_parser_says() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_table_is_of_the_pinned_sglang() -> None:
    assert flag_table()["sglang"] == SGLANG_VERSION
    assert len(flag_table()["flags"]) > 400


def test_every_flag_the_planner_owns_is_a_flag_of_the_pinned_sglang() -> None:
    # --tp is no SGLang flag but an abbreviation of several; the planner lists it so that it is refused too.
    unknown = sorted(f for f in OWNED_FLAGS if f not in flag_table()["flags"] and f != "--tp")
    assert unknown == []


def test_the_planner_s_own_argv_passes_the_same_check() -> None:
    plan = plan_deployment(parse_spec(a_deployment().pro().build()))
    check_extra_args(plan.server_args(1, "10.0.0.1"))


@pytest.mark.parametrize(
    ("args", "index", "words"),
    [
        (["--no-such-flag"], 0, "is not a flag of SGLang"),
        (["--enable-metrcs"], 0, "did you mean --enable-metrics"),
        (["--enable-torch-compile", "--enable-metrix"], 1, "did you mean --enable-metrics"),
        (["--max-total-tokens", "lots"], 0, "takes an integer"),
        (["--schedule-conservativeness", "high"], 0, "takes a number"),
        (["--schedule-policy", "fifo"], 0, "takes one of"),
        (["--enable-torch-compile=yes"], 0, "is a switch and takes no value"),
        (["stray"], 0, "follows no flag that takes a value"),
        (["--log-level", "info", "extra"], 2, "follows no flag that takes a value"),
        (["--api-key"], 0, "needs a value after it"),
        (["--api-key", "--enable-metrics"], 0, "needs a value after it"),
        (["--enable"], 0, "it is the start of --enable-adaptive-dispatch-to-encoder"),
        (["--enable-cache-rep"], 0, "it abbreviates --enable-cache-report; write --enable-cache-report"),
        (["--mem-frac=0.5"], 0, "it abbreviates --mem-fraction-static"),
        (["-x"], 0, "long options starting with --"),
        (["--context-length", "3x"], 0, "32k or 1Mi"),
        (["--radix-eviction-policy-config", "{not json"], 0, "takes JSON"),
        (["--allowed-media-domains"], 0, "needs at least one value"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_what_sglang_would_refuse_is_refused_naming_the_element(args: list[str], index: int, words: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(a_deployment().extra_args(*args).build())
    assert raised.value.field == f"spec.engine.extraArgs[{index}]"
    assert words in raised.value.message


@pytest.mark.parametrize(
    "args",
    [
        ["--enable-torch-compile"],
        ["--log-level", "debug"],
        ["--log-level=debug"],
        ["--context-length", "32k"],
        ["--cuda-graph-bs-decode", "1", "2", "4", "--enable-cache-report"],
        ["--schedule-policy", "lpm"],
        ["--torch-compile-max-bs", "8"],
        ["--enable-cache-report"],
    ],
)
def test_flags_sglang_accepts_are_accepted(args: list[str]) -> None:
    parse_spec(a_deployment().extra_args(*args).build())


def test_a_full_flag_resolves_to_itself() -> None:
    assert resolve("--enable-cache-report") == "--enable-cache-report"


def test_the_crd_refuses_exactly_the_flags_the_table_does_not_know() -> None:
    crd = yaml.safe_load((REPO / "crds" / "mimodeployment.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    nul, rule = spec["properties"]["engine"]["properties"]["extraArgs"]["items"]["x-kubernetes-validations"]
    assert "x00" in nul["rule"]  # a NUL first, then the flag
    assert set(re.findall(r"'(--[^']+)': true", rule["rule"])) == set(flag_table()["flags"])
    assert f"SGLang {SGLANG_VERSION} (flags are written in full" in rule["messageExpression"]


def test_a_flag_the_plan_owns_is_refused_with_the_field_to_set_instead() -> None:
    with pytest.raises(SpecError) as raised:
        plan_deployment(parse_spec(a_deployment().extra_args("--tp-size", "4").build()))
    assert "spec.parallelism.tensorParallel" in raised.value.message
