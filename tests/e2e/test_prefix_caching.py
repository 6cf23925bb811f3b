"""End to end on the local cluster: the operator runs two simulated MiMo-V2.5 gangs behind the real
sglang-router (its default policy, cache_aware); questions over a few shared documents hit the gangs'
prefix caches, as SGLang's usage and metrics report; an image and a video are served, and the router
itself refuses audio parts."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from typing import Any

import pytest

from mimo_operator.autoscaling.prefix_traces import segment_text
from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from tests.conftest import NodePool, wait_for
from tests.e2e.test_serving import rehearsal, routed, router_address
from tests.integration.operator_harness import RunningOperator, get, operator_fixture, wait_phase

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (the worker extra)"),
    pytest.mark.skipif(importlib.util.find_spec("sglang_router") is None, reason="sglang-router is not installed"),
]

DOCUMENTS = 4
ASKS = 5
PNG_56 = (
    "iVBORw0KGgoAAAANSUhEUgAAADgAAAA4CAIAAAAn5KxJAAAAV0lEQVR4nO3OwQkAIRAAsfN+23/DtuBjQISkgqyZ+V7w3w6cEq2J"
    "1kRrojXRmmhNtCZaE62J1kRrojXRmmhNtCZaE62J1kRrojXRmmhNtCZaE62J1kRrGyHeAIvYLIO+AAAAAElFTkSuQmCC"
)


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningOperator]:
    yield from operator_fixture(
        cluster,
        tmp_path_factory.mktemp("operator-caching"),
        ["--backoff-seconds", "2", "--distinct-gang-ports", "--resync-seconds", "5"],
    )


def chat(base: str, content: Any, system: str | None = None) -> tuple[int, dict[str, Any]]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    body = json.dumps({"model": "XiaomiMiMo/MiMo-V2.5", "messages": messages, "max_tokens": 4}).encode()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def counters(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("sglang:prompt_tokens_total", "sglang:cached_tokens_total")):
            name = line.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def wav(seconds: float) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(16000)
        clip.writeframes(b"\x00\x00" * int(seconds * 16000))
    return base64.b64encode(buffer.getvalue()).decode()


def test_shared_documents_hit_the_gangs_caches_through_the_router_and_media_is_served(
    cluster: LocalCluster, operator: RunningOperator, namespace: str, node_pool: NodePool
) -> None:
    node_pool.add(2)
    manifest = rehearsal(node_pool).replicas(2).extra_args("--enable-cache-report").build()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    wait_phase(cluster, namespace, "v25", "Ready", timeout=300)
    wait_for(
        lambda: (get(cluster, "mimodeployment", namespace, "v25") or {}).get("status", {}).get("readyReplicas") == 2,
        240,
        what="both gangs to serve",
    )
    base = router_address(cluster, namespace, "v25")
    wait_for(lambda: routed(base), 120, what="the router to discover the ready heads")

    cached_by_ask: list[int] = []
    for ask in range(ASKS):
        for doc in range(DOCUMENTS):
            status, body = chat(base, f"Question {ask} about document {doc}?", system=segment_text(f"doc-{doc}", 1500))
            assert status == 200, body
            cached_by_ask.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert cached_by_ask[:DOCUMENTS] == [0] * DOCUMENTS  # cold
    assert sum(1 for c in cached_by_ask[DOCUMENTS:] if c > 1000) >= DOCUMENTS * (ASKS - 2)

    port = plan_deployment(parse_spec(manifest)).port
    heads = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", "mimo-operator.io/deployment=v25,mimo-operator.io/role=head"
    )["items"]
    assert len(heads) == 2
    totals = [counters(f"{pod['status']['podIP']}:{port}") for pod in heads]
    prompt = sum(t.get("sglang:prompt_tokens_total", 0.0) for t in totals)
    cached = sum(t.get("sglang:cached_tokens_total", 0.0) for t in totals)
    assert cached == sum(cached_by_ask)
    assert cached / prompt > 0.5

    image = "data:image/png;base64," + PNG_56  # 56×56: 4 tokens
    media = [
        {"type": "text", "text": "Describe both."},
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
    ]
    status, body = chat(base, media)
    assert status == 200, body
    text_only = 4 + 4 + 3  # 14 characters, one message, the reply marker
    video = 20 * (448 * 448 // (28 * 28)) // 2  # a remote clip: 10 s at 2 frames/s (media.py's defaults)
    assert body["usage"]["prompt_tokens"] == text_only + 4 + video  # the 56×56 image is 4 tokens

    # sglang-router 0.3.2's chat types have no audio part: it refuses input_audio itself, before any gang
    # (the engine serves it: tests/unit/test_simengine_http_cache_media.py). This notices a router that can.
    audio = [
        {"type": "text", "text": "Transcribe."},
        {"type": "input_audio", "input_audio": {"data": wav(2.0), "format": "wav"}},
    ]
    status, body = chat(base, audio)
    assert status == 400
    assert body["error"]["code"] == "json_parse_error"
