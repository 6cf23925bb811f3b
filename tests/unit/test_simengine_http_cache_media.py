"""The prefix cache and media requests through the simulated engine's HTTP surface (real sockets)."""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.localcluster.processes import free_port
from mimo_operator.perf import performance_of
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from mimo_worker.simengine.engine import EngineLimits, ReplicaEngine
from mimo_worker.simengine.options import SimOptions
from mimo_worker.simengine.server import ModelClock, SimulatedEngineServer

SYSTEM = "You are MiMo, a careful assistant for the operations team. " * 120  # ≈ 1,800 tokens


def _performance(model: str) -> Any:
    variant = model.split("/")[-1]
    spec = parse_spec({"model": {"variant": variant}, "hardware": {"gpuType": "H200-141GB"}})
    return performance_of(plan_deployment(spec))


@asynccontextmanager
async def serving(
    model: str, planned_dp: bool = False, **options: Any
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, SimulatedEngineServer]]:
    perf = _performance(model)
    opts = SimOptions(
        model_path=model,
        host="127.0.0.1",
        port=free_port(),
        enable_metrics=True,
        mimo_speedup=200.0,
        mimo_startup_seconds=0.0,
        tp_size=perf.gpus,
        **options,
    )
    engine = ReplicaEngine(
        EngineLimits.of(perf),
        perf,
        # one scheduler unless asked: with two, SGLang hands requests to the groups in turn and a repeat
        # lands on the other group's cache
        attention_dp=perf.attention_data_parallel if planned_dp else 1,
        prefix_cache=not opts.disable_radix_cache,
    )
    server = SimulatedEngineServer(opts, engine, ModelClock(opts.mimo_speedup))
    runner = web.AppRunner(server.app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, opts.host, opts.port).start()
    await server.start()
    server.state = server.state.SERVING
    try:
        async with aiohttp.ClientSession() as session:
            yield session, f"http://127.0.0.1:{opts.port}", server
    finally:
        await server.close()
        await runner.cleanup()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, json.loads(await response.text())


def ask(question: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 4,
        **extra,
    }


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(base + "/metrics") as response:
        text = await response.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def test_a_shared_system_prompt_is_reported_cached_and_counted_in_sglangs_metrics() -> None:
    async with serving("XiaomiMiMo/MiMo-V2.5", enable_cache_report=True) as (session, base, _server):
        status, first = await post(session, base + "/v1/chat/completions", ask("How many gangs are ready?"))
        assert status == 200
        assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        status, second = await post(session, base + "/v1/chat/completions", ask("Why did the last drain take long?"))
        assert status == 200
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert 1500 < cached < second["usage"]["prompt_tokens"]
        assert await metric(session, base, "sglang:cached_tokens_total") == cached
        assert 0.5 < await metric(session, base, "sglang:cache_hit_rate") < 1.0
        assert await metric(session, base, "sglang:kv_evictable_tokens") > 0
        # /generate reports it in meta_info, whatever --enable-cache-report says
        status, native = await post(
            session, base + "/generate", {"text": SYSTEM + "x", "sampling_params": {"max_new_tokens": 2}}
        )
        assert status == 200
        assert native["meta_info"]["cached_tokens"] == 0
        status, native = await post(
            session, base + "/generate", {"text": SYSTEM + "y", "sampling_params": {"max_new_tokens": 2}}
        )
        assert native["meta_info"]["cached_tokens"] > 1500


async def test_without_cache_report_usage_has_no_details_and_without_the_cache_nothing_hits() -> None:
    async with serving("XiaomiMiMo/MiMo-V2.5", disable_radix_cache=True) as (session, base, _server):
        for question in ("one?", "two?"):
            status, body = await post(session, base + "/v1/chat/completions", ask(question))
            assert status == 200
            assert body["usage"]["prompt_tokens_details"] is None
        assert await metric(session, base, "sglang:cache_hit_rate") == 0.0


async def test_a_trace_replay_names_its_shared_segments() -> None:
    async with serving("XiaomiMiMo/MiMo-V2.5", enable_cache_report=True) as (session, base, _server):
        body = {
            "prompt": "x",
            "max_tokens": 2,
            "mimo_prompt_tokens": 5000,
            "mimo_prefix": [{"id": "doc-7", "tokens": 4000}],
        }
        await post(session, base + "/v1/completions", body)
        status, again = await post(session, base + "/v1/completions", body)
        assert status == 200
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 4000 // 64 * 64
        status, bad = await post(session, base + "/v1/completions", {**body, "mimo_prefix": [{"id": 3}]})
        assert status == 400
        assert "mimo_prefix" in bad["message"]


def _png(width: int, height: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _wav(seconds: float, rate: int = 16000) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(b"\x00\x00" * int(seconds * rate))
    return base64.b64encode(buffer.getvalue()).decode()


MEDIA_CHAT = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in the picture, and what does the clip say?"},
                {"type": "image_url", "image_url": {"url": _png(896, 672)}},
                {"type": "input_audio", "input_audio": {"data": _wav(4.0), "format": "wav"}},
                {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
            ],
        }
    ],
    "max_tokens": 3,
}


async def test_mimo_v25_serves_an_image_and_an_audio_clip_priced_by_the_encoders() -> None:
    async with serving("XiaomiMiMo/MiMo-V2.5", planned_dp=True, mm_enable_dp_encoder=True) as (
        session,
        base,
        server,
    ):
        submitted: list[float] = []
        submit = server.engine.submit

        def spy(*args: Any, **kwargs: Any) -> Any:
            submitted.append(kwargs.get("encoder_seconds", 0.0))
            return submit(*args, **kwargs)

        server.engine.submit = spy  # type: ignore[method-assign]
        status, body = await post(session, base + "/v1/chat/completions", MEDIA_CHAT)
        assert status == 200, body
        text_only = 13 + 4 + 3  # 51 characters of text, one message, the reply marker
        image, audio = 896 * 672 // (28 * 28), 4 * 25  # media.py's rates: 768 image tokens, 100 audio tokens
        video = 20 * (448 * 448 // (28 * 28)) // 2  # a remote video: 10 s at 2 frames/s, frame pairs merged
        assert body["usage"]["prompt_tokens"] == text_only + image + audio + video
        # 2 × params × patches (frames) at the prefill efficiency, over every GPU: the plan turns on
        # --mm-enable-dp-encoder with attention DP
        flops = 2 * 729e6 * (image + video) * 4 + 2 * 261e6 * audio * 2
        gpu = server.engine.timer.flops  # type: ignore[attr-defined]
        assert submitted == [pytest.approx(flops / (8 * gpu * 0.23))]


def test_the_encoders_time_comes_before_the_first_token() -> None:
    perf = _performance("XiaomiMiMo/MiMo-V2.5")

    def ttft(encoder: float) -> float:
        engine = ReplicaEngine(EngineLimits.of(perf), perf)
        request = engine.submit("r", 900, 2, 0.0, encoder_seconds=encoder)
        now = 0.0
        while (batch := engine.next_batch(now)) is not None:
            engine.complete(batch)
            now = batch.end
        assert request.ttft is not None
        return request.ttft

    assert ttft(0.25) == pytest.approx(ttft(0.0) + 0.25)


async def test_mimo_v25_pro_is_text_only_and_refuses_media_in_sglangs_error_shape() -> None:
    async with serving("XiaomiMiMo/MiMo-V2.5-Pro") as (session, base, _server):
        status, body = await post(session, base + "/v1/chat/completions", MEDIA_CHAT)
        assert status == 400
        assert body["object"] == "error"
        assert body["type"] == "BadRequestError"
        assert body["code"] == 400
        assert "video" in body["message"]
        assert "text-only" in body["message"]
        assert "image" in body["message"]
        assert "audio" in body["message"]


def test_the_catalog_carries_mimo_v25s_encoders_and_pro_has_none() -> None:
    from mimo_operator.catalog import CHECKPOINTS

    for name in ("MiMo-V2.5", "MiMo-V2.5-Base"):
        encoders = {e.name: (e.modalities, e.params) for e in CHECKPOINTS[name].encoders}
        assert encoders == {"vision": (("image", "video"), 729_000_000), "audio": (("audio",), 261_000_000)}
    for name in ("MiMo-V2.5-Pro", "MiMo-V2.5-Pro-Base"):
        assert CHECKPOINTS[name].encoders == ()
        assert not CHECKPOINTS[name].multimodal
