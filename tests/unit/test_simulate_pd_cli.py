"""``mimoctl simulate autoscaling`` on a PD manifest: both pools per policy, and the colocated fleet beside it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from mimo_operator.cli import main
from tests.unit.test_autoscaling_pools import pd_manifest


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    rng = random.Random(3)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = 0.0
    while t < 600:
        t += rng.expovariate(2.0)
        lines.append(f"{t:.3f},{rng.randint(2000, 12000)},{rng.randint(20, 300)}")
    folder = tmp_path_factory.mktemp("pd")
    (folder / "trace.csv").write_text("\n".join(lines) + "\n")
    (folder / "pd.yaml").write_text(yaml.safe_dump(pd_manifest()))
    return folder / "trace.csv", folder / "pd.yaml"


def test_a_pd_manifest_runs_both_pools_and_the_colocated_fleet_of_the_same_gpus(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    trace, manifest = files
    code = main(["simulate", "autoscaling", "--trace", str(trace), "-f", str(manifest), "--copies", "2",
                 "--compare-colocated", "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert set(data["policies"]) == {"mimo-pd", "static-pd", "mimo (colo)", "static-peak (colo)", "oracle (colo)"}
    for name in ("mimo-pd", "static-pd"):
        assert set(data["pools"][name]) == {"prefill", "decode", "transferP99Seconds"}
        assert 0 < data["pools"][name]["transferP99Seconds"] < 0.01
        total = data["pools"][name]["prefill"]["gpuHours"] + data["pools"][name]["decode"]["gpuHours"]
        assert data["policies"][name]["gpuHours"] == pytest.approx(total, abs=0.002)
    settings = data["settings"]
    assert settings["prefill"]["gpusPerGang"] == settings["decode"]["gpusPerGang"] == 16
    assert 0 < settings["minDecodePerPrefill"] < settings["maxDecodePerPrefill"]
    assert "PD fleet" in err


def test_colocated_policies_are_refused_on_a_pd_manifest(files: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    trace, manifest = files
    assert main(["simulate", "autoscaling", "--trace", str(trace), "-f", str(manifest), "--policy", "keda-queue"]) == 2
    assert "unknown policy keda-queue (choose from mimo-pd, static-pd, or all for a PD manifest)" in \
        capsys.readouterr().err


def test_compare_colocated_needs_a_pd_manifest(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    trace, _ = files
    assert main(["simulate", "autoscaling", "--trace", str(trace), "--compare-colocated"]) == 2
    assert "--compare-colocated needs a manifest with spec.disaggregation" in capsys.readouterr().err
