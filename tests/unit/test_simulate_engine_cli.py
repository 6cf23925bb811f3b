"""``mimoctl simulate engine`` serves a simulated engine for a manifest's plan, as its own process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mimo_operator.localcluster.processes import free_port
from tests.conftest import REPO, wait_for

MANIFEST = """\
apiVersion: serving.mimo-operator.io/v1alpha1
kind: MiMoDeployment
metadata: {name: rehearsal}
spec:
  model: {variant: MiMo-V2.5, contextLength: 8192}
  hardware: {gpuType: H200-141GB}
  engine: {type: simulated, simulation: {speedup: 20}}
"""


def test_it_serves_sglangs_surface_with_the_plans_capacity(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mimo_operator.cli", "simulate", "engine", "-f", str(manifest),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def info() -> dict[str, object] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                    return dict(json.loads(r.read()))
            except OSError:
                return None

        server = wait_for(info, 60, what="the simulated engine to serve")
        plan = json.loads(subprocess.run([sys.executable, "-m", "mimo_operator.cli", "plan", "-f", str(manifest),
                                          "-o", "json"], capture_output=True, text=True, check=True).stdout)
        # Like SGLang, /server_info reports one scheduler's pool: one attention-DP group's share.
        assert server["max_total_num_tokens"] == plan["kvCacheTokens"] // plan["attentionDataParallel"]
        body = json.dumps({"model": "XiaomiMiMo/MiMo-V2.5", "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 8}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] == 8
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0


def test_an_impossible_manifest_is_refused_with_the_reason(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.replace("MiMo-V2.5,", "MiMo-V2.5-Pro,").replace("H200-141GB", "H100-80GB}\n"
                                                                                "  parallelism: {nodesPerReplica: 1"))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mimo_operator.cli", "simulate", "engine", "-f", str(manifest)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "GB" in result.stderr
    assert time.monotonic() - started < 60


def test_a_pd_manifest_serves_the_side_named_by_role_and_needs_one(tmp_path: Path) -> None:
    pd_manifest = REPO / "examples" / "mimo-v25-pro-pd.yaml"
    refused = subprocess.run([sys.executable, "-m", "mimo_operator.cli", "simulate", "engine", "-f", str(pd_manifest)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "--role prefill or --role decode" in refused.stderr
    port, bootstrap = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mimo_operator.cli", "simulate", "engine", "-f", str(pd_manifest),
                             "--port", str(port), "--role", "prefill", "--bootstrap-port", str(bootstrap)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def info() -> dict[str, object] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                    return dict(json.loads(r.read()))
            except OSError:
                return None

        server = wait_for(info, 60, what="the simulated prefill engine to serve")
        assert server["disaggregation_mode"] == "prefill"
        assert server["disaggregation_bootstrap_port"] == bootstrap
        with urllib.request.urlopen(f"http://127.0.0.1:{bootstrap}/health", timeout=5) as r:
            assert r.read() == b"OK"  # SGLang's bootstrap server
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
