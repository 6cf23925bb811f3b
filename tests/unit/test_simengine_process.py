"""``python -m mimo_worker.simengine`` as a process: planned from a manifest or from SGLang's argv, and
SIGTERM's drain. Each test starts a real process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.localcluster.processes import free_port
from mimo_worker.simengine.replica import planned_replica

pytestmark = pytest.mark.slow

PRO = {
    "apiVersion": "serving.mimo-operator.io/v1alpha1",
    "kind": "MiMoDeployment",
    "metadata": {"name": "pro"},
    "spec": {
        "model": {"variant": "MiMo-V2.5-Pro"},
        "hardware": {"gpuType": "H200-141GB"},
        "engine": {"type": "simulated", "simulation": {"speedup": 2}},
    },
}


@contextmanager
def engine_process(*argv: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    command = [sys.executable, "-m", "mimo_worker.simengine", *argv, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def status_of(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError):
        return None


def wait_serving(process: subprocess.Popen[str], base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while status_of(base + "/health") != 200:
        if process.poll() is not None:
            pytest.fail(f"the engine exited with {process.returncode}: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail("the engine did not serve in time")
        time.sleep(0.1)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "pro.yaml"
    path.write_text(yaml.safe_dump(PRO))
    return path


def test_a_manifest_alone_serves_a_replica_with_the_plans_capacity_and_argv(manifest: Path) -> None:
    plan = planned_replica(PRO).plan
    with engine_process("--mimo-manifest", str(manifest), "--mimo-startup-seconds", "0") as (process, base):
        wait_serving(process, base)
        info = get_json(base + "/server_info")
        assert info["max_total_num_tokens"] == plan.kv.tokens_per_group
        assert info["simulated"]["replica_max_total_num_tokens"] == plan.kv.tokens
        assert info["simulated"]["speedup"] == 2  # spec.engine.simulation.speedup
        # the argv-facing options are the plan's
        assert info["tp_size"] == plan.tensor_parallel
        assert info["attn_dp_size"] == plan.attention_data_parallel
        assert info["max_running_requests"] == plan.max_running_requests
        assert info["chunked_prefill_size"] == plan.chunked_prefill_size
        assert info["context_length"] == plan.context_length
        assert info["served_model_name"] == plan.served_model_name
        assert info["nnodes"] == plan.nodes_per_replica
        models = get_json(base + "/v1/models")
        assert [m["id"] for m in models["data"]] == ["XiaomiMiMo/MiMo-V2.5-Pro"]
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        dp_ranks = sorted(s.labels["dp_rank"] for s in families["sglang:max_total_num_tokens"].samples)
        assert dp_ranks == ["0", "1"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_the_plans_argv_without_a_manifest_plans_the_same_replica() -> None:
    plan = planned_replica(PRO).plan
    argv = [a for a in plan.server_args(0, "127.0.0.1")]
    # the test's own host and port come last and win
    with engine_process(*argv, "--mimo-startup-seconds", "0") as (process, base):
        wait_serving(process, base)
        info = get_json(base + "/server_info")
        assert info["max_total_num_tokens"] == plan.kv.tokens_per_group
        assert info["simulated"]["gpu_type"] == "H200-141GB"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def test_sigterm_drains_requests_in_flight_then_exits_0(manifest: Path) -> None:
    with engine_process("--mimo-manifest", str(manifest), "--mimo-startup-seconds", "0") as (process, base):
        wait_serving(process, base)
        results = asyncio.run(drain_with_requests_in_flight(process, base))
        assert process.wait(timeout=30) == 0
    in_flight, health_during_drain, refused = results
    assert health_during_drain == 503
    assert refused == 503
    assert [(status, tokens) for status, tokens in in_flight] == [(200, 300)] * 3  # none failed, all complete


async def drain_with_requests_in_flight(
    process: subprocess.Popen[str], base: str
) -> tuple[list[tuple[int, int]], int, int]:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 300, "mimo_prompt_tokens": 2000}
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, int]:
            async with session.post(base + "/v1/chat/completions", json=body) as response:
                answer = await response.json()
                return response.status, answer["usage"]["completion_tokens"]

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        while True:
            async with session.get(base + "/metrics") as response:
                text = await response.text()
            running = sum(
                s.value
                for f in text_string_to_metric_families(text)
                if f.name == "sglang:num_running_reqs"
                for s in f.samples
            )
            if running >= 3:
                break
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert not all(t.done() for t in tasks)
        async with session.get(base + "/health") as response:
            health = response.status
        async with session.post(base + "/v1/chat/completions", json=body) as response:
            refused = response.status
        return await asyncio.gather(*tasks), health, refused


def test_node_rank_one_runs_the_dummy_health_server(manifest: Path) -> None:
    with engine_process("--mimo-manifest", str(manifest), "--node-rank", "1") as (process, base):
        deadline = time.monotonic() + 60
        while status_of(base + "/health") != 200:
            assert process.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status_of(base + "/health_generate") == 200
        assert status_of(base + "/v1/models") == 404  # no API on nodes ≥ 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-path", "meta-llama/Llama-3-8B"], "not a checkpoint the planner knows"),
        (["--mimo-manifest", "/nonexistent/manifest.yaml"], "No such file"),
        (["--mimo-speedup", "-3", "--model-path", "XiaomiMiMo/MiMo-V2.5"], "--mimo-speedup"),
    ],
)
def test_an_unusable_command_line_exits_2_with_the_reason(argv: list[str], message: str) -> None:
    with engine_process(*argv) as (process, _):
        assert process.wait(timeout=30) == 2
        assert message in process.communicate()[1]


def test_a_refused_plan_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**PRO, "spec": {**PRO["spec"], "model": {"variant": "MiMo-V9"}}}))  # type: ignore[dict-item]
    with engine_process("--mimo-manifest", str(path)) as (process, _):
        assert process.wait(timeout=30) == 2
        assert "spec.model.variant" in process.communicate()[1]
