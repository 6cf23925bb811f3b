"""The README's demo, in its short mode: from a cluster start to the summary, cleaning up after itself."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mimo_operator.localcluster.binaries import binaries_missing
from tests.conftest import REPO

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (the worker extra)"),
    pytest.mark.skipif(bool(binaries_missing()), reason="local cluster binaries not built"),
]


def test_the_short_demo_serves_traffic_and_ends_with_the_summary(tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    result = subprocess.run([sys.executable, "-m", "mimo_operator.cli", "demo", "--short", "--plot", str(plot)],
                            cwd=REPO, capture_output=True, text=True, timeout=840)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "operator pod" in out
    assert "Ready under its chart RBAC" in out
    summary = out[out.index("==> Summary"):]
    served = int(summary.split("requests: ")[1].split(" served")[0])
    assert served > 10
    assert ", 0 failed" in summary
    assert plot.stat().st_size > 10_000, "a PNG plot"
    assert "Cleaning up" in out
