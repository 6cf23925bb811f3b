"""Media through the real sglang-router to simulated engines (processes on 127.0.0.1, no cluster):
MiMo-V2.5 serves an image, MiMo-V2.5-Pro refuses it in SGLang's error shape, and the router refuses audio
parts itself."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mimo_operator.localcluster.processes import free_port
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("sglang_router") is None, reason="sglang-router is not installed"),
]

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def routed_engine(manifest: Path, tmp: Path) -> Iterator[str]:
    """One simulated engine for a manifest, the real router in front; the router's base URL."""
    engine_port, router_port = free_port(), free_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "mimo_worker.simengine", "--mimo-manifest", str(manifest), "--host", "127.0.0.1",
         "--port", str(engine_port), "--mimo-startup-seconds", "0"],
        stdout=(tmp / "engine.log").open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    router = subprocess.Popen(
        [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(router_port),
         "--prometheus-port", str(free_port()), "--worker-urls", f"http://127.0.0.1:{engine_port}"],
        stdout=(tmp / "router.log").open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    base = f"http://127.0.0.1:{router_port}"
    try:
        deadline = time.monotonic() + 60
        while not (_get_ok(f"http://127.0.0.1:{engine_port}/health") and _get_ok(base + "/health")):
            assert time.monotonic() < deadline, (tmp / "router.log").read_text()[-2000:]
            time.sleep(0.3)
        yield base
    finally:
        for process in (router, engine):
            process.terminate()
        for process in (router, engine):
            process.wait(timeout=20)


def chat(base: str, model: str, part: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    body = json.dumps({"model": model, "messages": messages, "max_tokens": 2}).encode()
    request = urllib.request.Request(
        base + "/v1/chat/completions", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mimo_v25_serves_an_image_through_the_router_and_the_router_refuses_audio(tmp_path: Path) -> None:
    with routed_engine(REPO / "examples" / "mimo-v25-fp8-h100.yaml", tmp_path) as base:
        status, body = chat(base, "XiaomiMiMo/MiMo-V2.5", IMAGE)
        assert status == 200, body
        assert body["usage"]["prompt_tokens"] > 1000  # a remote image of unknown size: 1,024×1,024 → 1,280
        status, body = chat(base, "XiaomiMiMo/MiMo-V2.5", AUDIO)
        assert status == 400
        assert body["error"]["code"] == "json_parse_error"  # sglang-router 0.3.2 has no audio content part


def test_mimo_v25_pro_refuses_an_image_through_the_router_in_sglangs_error_shape(tmp_path: Path) -> None:
    with routed_engine(REPO / "examples" / "mimo-v25-pro-simulated.yaml", tmp_path) as base:
        status, body = chat(base, "XiaomiMiMo/MiMo-V2.5-Pro", IMAGE)
        assert status == 400
        assert body["object"] == "error"
        assert body["type"] == "BadRequestError"
        assert body["code"] == 400
        assert "text-only" in body["message"]
