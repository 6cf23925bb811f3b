"""``mimoctl simulate autoscaling``: its output contract, defaults, errors and the plot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from mimo_operator.autoscaling.baselines import POLICY_NAMES
from mimo_operator.cli import main


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten minutes of code-assistant-like requests: a quiet start, a busy middle."""
    rng = random.Random(7)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = 0.0
    while t < 600:
        t += rng.expovariate(4.0 if 200 < t < 400 else 1.0)
        lines.append(f"{t:.3f},{rng.randint(200, 6000)},{rng.randint(2, 60)}")
    path = tmp_path_factory.mktemp("trace") / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, object], str]:
    code = main(["simulate", "autoscaling", "-o", "json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def test_json_reports_every_policy_with_the_required_keys(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = run_json(capsys, "--trace", str(trace), "--copies", "4")
    policies = data["policies"]
    assert isinstance(policies, dict)
    assert list(policies) == list(POLICY_NAMES)
    for name, figures in policies.items():
        assert 0.0 <= figures["ttftAttainment"] <= 1.0, name
        assert 0.0 <= figures["itlAttainment"] <= 1.0, name
        assert figures["gpuHours"] > 0, name
        assert isinstance(figures["scaleEvents"], int), name
    assert policies["oracle"]["gpuHoursVsOracle"] == 1.0
    assert policies["static-peak"]["scaleEvents"] == 0


def test_json_mode_prints_the_defaults_on_stderr_only(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, err = run_json(capsys, "--trace", str(trace), "--copies", "2", "--policy", "mimo")
    # Without -f: MiMo-V2.5-Pro fp8 on H200 nodes, two per replica, the plan's warm start-up.
    assert "MiMo-V2.5-Pro fp8 on H200-141GB, 2 nodes (16 GPUs) per replica" in err
    assert "TTFT ≤ 2 s, ITL ≤ 0.1 s" in err
    settings = data["settings"]
    assert isinstance(settings, dict)
    assert settings["gpusPerReplica"] == 16
    assert settings["startupSeconds"] == pytest.approx(330.1, abs=1)


def test_a_policy_list_runs_only_those(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = run_json(capsys, "--trace", str(trace), "--copies", "2", "--policy", "keda-queue,oracle")
    assert list(data["policies"]) == ["keda-queue", "oracle"]  # type: ignore[call-overload]


def test_flags_override_the_slos_and_the_start_up(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strict, _ = run_json(
        capsys, "--trace", str(trace), "--copies", "4", "--policy", "static-peak", "--ttft-slo", "0.05"
    )
    loose, _ = run_json(capsys, "--trace", str(trace), "--copies", "4", "--policy", "static-peak", "--ttft-slo", "30")
    assert strict["policies"]["static-peak"]["ttftAttainment"] < loose["policies"]["static-peak"]["ttftAttainment"]  # type: ignore[index]
    quick, _ = run_json(capsys, "--trace", str(trace), "--copies", "2", "--policy", "mimo", "--startup-seconds", "42")
    assert quick["settings"]["startupSeconds"] == 42  # type: ignore[index]


def test_the_manifest_sets_the_fleet_and_its_start_up(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "v25.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "serving.mimo-operator.io/v1alpha1",
                "kind": "MiMoDeployment",
                "metadata": {"name": "small"},
                "spec": {
                    "model": {"variant": "MiMo-V2.5"},
                    "hardware": {"gpuType": "H200-141GB"},
                    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 3},
                },
            }
        )
    )
    data, err = run_json(capsys, "--trace", str(trace), "--copies", "2", "--policy", "mimo", "-f", str(manifest))
    settings = data["settings"]
    assert isinstance(settings, dict)
    assert (settings["model"], settings["nodesPerReplica"], settings["gpusPerReplica"]) == ("MiMo-V2.5 fp8", 1, 8)
    assert (settings["minReplicas"], settings["maxReplicas"]) == (2, 3)
    # No weights cache in this manifest: a cold start (download + DeepGEMM JIT) per gang.
    assert settings["startupSeconds"] > 600
    assert "MiMo-V2.5 fp8" in err


def test_peak_replicas_sizes_the_number_of_copies(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two, _ = run_json(capsys, "--trace", str(trace), "--policy", "static-peak", "--peak-replicas", "2")
    four, _ = run_json(capsys, "--trace", str(trace), "--policy", "static-peak", "--peak-replicas", "4")
    assert two["settings"]["copies"] < four["settings"]["copies"]  # type: ignore[index]
    assert four["policies"]["static-peak"]["peakReplicas"] >= 4  # type: ignore[index]


def test_the_table_has_a_row_per_policy(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "autoscaling", "--trace", str(trace), "--copies", "2"]) == 0
    out = capsys.readouterr().out
    assert "fleet: MiMo-V2.5-Pro fp8" in out
    rows = out.splitlines()
    header = next(i for i, line in enumerate(rows) if line.startswith("POLICY"))
    assert [row.split()[0] for row in rows[header + 1 :]] == list(POLICY_NAMES)


def test_the_plot_is_written(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "run.png"
    run_json(capsys, "--trace", str(trace), "--copies", "2", "--policy", "mimo,oracle", "--plot", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--policy", "knative"], 2, "unknown policy knative"),
        (["--speedup", "0"], 2, "--speedup must be a positive number"),
        (["--copies", "0"], 2, "--copies must be at least 1"),
        (["--trace", "/nonexistent/trace.csv"], 2, "No such file"),
    ],
    ids=[
        "an unknown policy is refused",
        "a zero speed-up is refused",
        "zero copies are refused",
        "a missing trace is reported",
    ],
)
def test_bad_arguments(
    trace: Path, args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    full = ["simulate", "autoscaling", "--trace", str(trace), *args]
    assert main(full) == code
    assert message in capsys.readouterr().err


def test_a_refused_plan_exits_1_with_the_reason(
    tmp_path: Path, trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: serving.mimo-operator.io/v1alpha1\nkind: MiMoDeployment\nmetadata: {name: x}\n"
        "spec: {model: {variant: MiMo-V2.5-Pro}, hardware: {gpuType: H100-80GB}, parallelism: {nodesPerReplica: 1}}\n"
    )
    assert main(["simulate", "autoscaling", "--trace", str(trace), "-f", str(manifest)]) == 1
    assert "refused" in capsys.readouterr().err


def test_simulate_is_a_group_that_needs_a_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate"])
    assert "required: KIND" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "autoscaling" in capsys.readouterr().out
