"""`mimoctl plan`: the table, the data formats and the refusal path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from mimo_operator.cli import COMMAND_MODULES, build_parser, main
from tests.helpers.specs import a_deployment

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
PRO_H200 = MANIFESTS / "valid" / "pro-fp8-h200-rdma.yaml"


def write(tmp_path: Path, manifest: object) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def test_json_has_the_fields_scripts_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(PRO_H200), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["nodesPerReplica"] == 2
    assert data["gpusPerReplica"] == 16
    assert (data["tensorParallel"], data["expertParallel"], data["attentionDataParallel"]) == (16, 16, 2)
    assert data["weightsBytes"] == 1_050_600_000_000
    assert data["kvBytesPerToken"] == 51_200
    assert data["kvCacheTokens"] > 1_048_576
    assert data["maxConcurrentSequences"] == 2
    assert [rank[rank.index("--node-rank") + 1] for rank in data["argv"]] == ["0", "1"]
    assert data["env"]["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"
    assert data["performance"]["decodeTokensPerSecondAt1"] > 0


def test_yaml_is_the_same_data(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", "-f", str(PRO_H200), "-o", "json"])
    as_json = json.loads(capsys.readouterr().out)
    main(["plan", "-f", str(PRO_H200), "-o", "yaml"])
    assert yaml.safe_load(capsys.readouterr().out) == as_json


def test_the_table_explains_each_decision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(PRO_H200)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MiMo-V2.5-Pro fp8 on H200-141GB: 2 nodes × 8 GPUs per replica")
    for line in ("nodes per replica", "attention data parallel", "expert all-to-all", "KV cache", "start-up"):
        assert line in out
    # Why not fewer nodes, with the numbers.
    assert "1 node of 8×H200-141GB has 1,128 GB" in out
    assert "sglang serve --model-type llm" in out
    assert "--dist-init-addr <node-0-address>:20000" in out
    assert "NVSHMEM_IB_ENABLE_IBGDA=true" in out


def test_an_impossible_plan_exits_non_zero_with_the_refusal_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = a_deployment().pro().h100().nodes(1).build()
    assert main(["plan", "-f", write(tmp_path, manifest), "-o", "json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "spec.parallelism.nodesPerReplica" in captured.err
    assert "needs ≈1,051 GB of weights" in captured.err


def test_an_invalid_spec_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", write(tmp_path, a_deployment().gpu("A100").build())]) == 1
    assert "spec.hardware.gpuType" in capsys.readouterr().err


def test_unreadable_manifests_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "two.yaml").write_text(yaml.safe_dump_all([a_deployment().build(), a_deployment().build()]))
    assert main(["plan", "-f", str(tmp_path / "two.yaml")]) == 2
    assert "expected one MiMoDeployment, found 2" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("spec: [unclosed")
    assert main(["plan", "-f", str(tmp_path / "bad.yaml")]) == 2


def test_other_kinds_in_the_file_are_skipped_and_stdin_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "serving"}}
    text = yaml.safe_dump_all([namespace, a_deployment().pro().b200().build()])
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["plan", "-f", "-", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpuType"] == "B200-180GB"


def test_the_command_list_is_the_registration_point() -> None:
    assert COMMAND_MODULES[0] == "mimo_operator.commands.plan"
    args = build_parser().parse_args(["plan", "-f", "x.yaml"])
    assert args.command == "plan"
    assert callable(args.func)
    assert args.output == "table"
