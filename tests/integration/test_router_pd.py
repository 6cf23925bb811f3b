"""A PD rehearsal without a cluster: the real sglang-router in --pd-disaggregation mode on 127.0.0.1 in front of
one simulated prefill server and one simulated decode server (processes), planned from a PD manifest whose
KV hand-over is slow enough to measure (one 1 Gb/s HCA)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.localcluster.processes import free_port
from mimo_worker.simengine.replica import planned_replica
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("sglang_router") is None, reason="sglang-router is not installed"),
]

MODEL = "XiaomiMiMo/MiMo-V2.5-Pro"
SPEEDUP = 2.0


@dataclass(frozen=True)
class Rehearsal:
    router: str
    prefill: str
    decode: str
    manifest: Path


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def slow_transfer_manifest(tmp: Path) -> Path:
    document = yaml.safe_load((REPO / "examples" / "mimo-v25-pro-pd.yaml").read_text(encoding="utf-8"))
    document["spec"]["network"].update({"ibDevices": ["mlx5_0"], "linkSpeedGbps": 1})
    path = tmp / "pd.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@contextmanager
def pd_rehearsal(tmp: Path) -> Iterator[Rehearsal]:
    manifest = slow_transfer_manifest(tmp)
    prefill_port, decode_port, bootstrap_port, router_port = (free_port() for _ in range(4))
    common = ["--mimo-manifest", str(manifest), "--host", "127.0.0.1", "--mimo-startup-seconds", "0",
              "--mimo-speedup", str(SPEEDUP), "--enable-metrics"]  # fmt: skip
    engines = []
    for role, port in (("prefill", prefill_port), ("decode", decode_port)):
        argv = [*common, "--disaggregation-mode", role, "--port", str(port),
                "--disaggregation-bootstrap-port", str(bootstrap_port)]  # fmt: skip
        log = (tmp / f"{role}.log").open("wb")
        engines.append(
            subprocess.Popen(
                [sys.executable, "-m", "mimo_worker.simengine", *argv], stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        )
    prefill, decode = f"http://127.0.0.1:{prefill_port}", f"http://127.0.0.1:{decode_port}"
    router = subprocess.Popen(
        [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(router_port),
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()), "--pd-disaggregation",
         "--prefill", prefill, str(bootstrap_port),
         "--decode", decode],
        stdout=(tmp / "router.log").open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not all(_status(url + "/health") == 200 for url in (prefill, decode, f"http://127.0.0.1:{router_port}")):
            assert time.monotonic() < deadline, (tmp / "router.log").read_text()[-2000:]
            time.sleep(0.3)
        yield Rehearsal(f"http://127.0.0.1:{router_port}", prefill, decode, manifest)
    finally:
        for process in (router, *engines):
            process.terminate()
        for process in (router, *engines):
            process.wait(timeout=20)


def chat(base: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        base + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode()}


def metrics(base: str) -> dict[str, float]:
    """Every sample of /metrics summed over its series, by sample name (and mode, for realtime tokens)."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name + (f"/{sample.labels['mode']}" if "mode" in sample.labels else "")
            totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def serve_first(base: str, body: dict[str, Any], within: float = 30.0) -> tuple[int, dict[str, Any], float]:
    """Send until the router has registered both workers (it answers 503 before); status, body, wall seconds."""
    deadline = time.monotonic() + within
    while True:
        start = time.monotonic()
        status, answer = chat(base, body)
        if status != 503 or time.monotonic() > deadline:
            return status, answer, time.monotonic() - start
        time.sleep(0.3)


def test_the_real_router_serves_a_request_through_a_simulated_prefill_and_decode_pair(tmp_path: Path) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "y" * 16000}], "max_tokens": 8}
    with pd_rehearsal(tmp_path) as pd:
        status, warmup, _ = serve_first(pd.router, {**body, "max_tokens": 1})
        assert status == 200, warmup
        before_prefill, before_decode = metrics(pd.prefill), metrics(pd.decode)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            answer = pool.submit(chat, pd.router, body)
            seen = {"prefill_inflight": 0.0, "decode_transfer": 0.0}
            while not answer.done():
                seen["prefill_inflight"] = max(
                    seen["prefill_inflight"], metrics(pd.prefill)["sglang:num_prefill_inflight_queue_reqs"]
                )
                seen["decode_transfer"] = max(
                    seen["decode_transfer"], metrics(pd.decode)["sglang:num_decode_transfer_queue_reqs"]
                )
                time.sleep(0.02)
            status, reply = answer.result()
            wall = time.monotonic() - started
        prefill, decode = metrics(pd.prefill), metrics(pd.decode)
        transfer = planned_replica(pd.manifest, role="prefill").kv_transfer(reply["usage"]["prompt_tokens"])
    assert status == 200, reply
    assert reply["usage"]["completion_tokens"] == 8  # the decode's answer: the prefill's would carry 1
    assert transfer.seconds > 0.5  # the slow HCA makes the hand-over the bulk of the wait
    # the decode waited for the planned hand-over (simulated seconds / speedup of wall time)
    assert wall >= transfer.seconds / SPEEDUP
    ttft = "sglang:time_to_first_token_seconds_sum"
    assert decode[ttft] - before_decode[ttft] >= transfer.seconds
    # the PD metrics moved: queues while the KV was in flight, the hand-over on both sides
    assert seen == {"prefill_inflight": 1.0, "decode_transfer": 1.0}
    latency_ms = prefill["sglang:kv_transfer_latency_ms_sum"] - before_prefill["sglang:kv_transfer_latency_ms_sum"]
    assert latency_ms == pytest.approx(transfer.seconds * 1000)
    megabytes = prefill["sglang:kv_transfer_total_mb_sum"] - before_prefill["sglang:kv_transfer_total_mb_sum"]
    assert megabytes == pytest.approx(transfer.total_bytes / 2**20)
    assert decode["sglang:kv_transfer_bootstrap_ms_count"] == 2
    # the decode computed no prompt: its prompt came with the KV
    assert decode["sglang:realtime_tokens_total/prefill_compute"] == 0
    assert prefill["sglang:realtime_tokens_total/prefill_compute"] > 4000
