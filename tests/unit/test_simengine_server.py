"""The simulated engine's HTTP surface (server.py), served on 127.0.0.1 and spoken to over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.localcluster.processes import free_port
from mimo_worker.simengine.engine import ReplicaEngine
from mimo_worker.simengine.options import SimOptions
from mimo_worker.simengine.server import (
    ModelClock,
    ServerState,
    SimulatedEngineServer,
    chat_prompt_tokens,
    dummy_health_app,
    text_prompt_tokens,
)
from tests.unit.simengine_support import SmallReplica

MODEL = "XiaomiMiMo/MiMo-V2.5-Pro"
REPLICA = SmallReplica()
SCHEDULER_GAUGES = (
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "sglang:full_token_usage",
    "sglang:swa_token_usage",
    "sglang:gen_throughput",
    "sglang:kv_used_tokens",
    "sglang:kv_available_tokens",
    "sglang:max_total_num_tokens",
    "sglang:cache_hit_rate",
    "sglang:num_retracted_reqs",
)
HISTOGRAMS = (
    "sglang:time_to_first_token_seconds",
    "sglang:inter_token_latency_seconds",
    "sglang:request_time_per_output_token_seconds",
    "sglang:e2e_request_latency_seconds",
    "sglang:queue_time_seconds",
)
COUNTERS = ("sglang:prompt_tokens", "sglang:generation_tokens", "sglang:num_requests")


@dataclass
class Running:
    server: SimulatedEngineServer
    session: aiohttp.ClientSession
    base: str

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path) as response:
            return response.status, await response.text()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(self.base + path, json=body) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def stream(self, path: str, body: dict[str, Any]) -> list[Any]:
        """POST with stream: the SSE payloads in order ('[DONE]' as a string)."""
        events: list[Any] = []
        async with self.session.post(self.base + path, json={**body, "stream": True}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for raw in response.content:
                line = raw.decode().strip()
                if not line:
                    continue
                assert line.startswith("data: ")
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
        return events

    async def metrics(self) -> dict[str, Any]:
        status, text = await self.get("/metrics")
        assert status == 200
        return {family.name: family for family in text_string_to_metric_families(text)}

    async def gauge(self, name: str) -> float:
        family = (await self.metrics())[name]
        return float(family.samples[0].value)


@asynccontextmanager
async def serving(
    replica: SmallReplica = REPLICA,
    *,
    speedup: float = 50.0,
    startup: float = 0.0,
    enable_metrics: bool = True,
    attention_dp: int = 1,
    tp_size: int = 1,
    nnodes: int = 1,
) -> AsyncIterator[Running]:
    options = SimOptions(
        model_path=MODEL,
        nnodes=nnodes,
        tp_size=tp_size,
        ep_size=tp_size,
        dp_size=attention_dp,
        host="127.0.0.1",
        port=free_port(),
        enable_metrics=enable_metrics,
        mimo_speedup=speedup,
        mimo_startup_seconds=startup,
        mimo_metrics_per_node=nnodes > 1,
    )
    server = SimulatedEngineServer(
        options, ReplicaEngine(replica.limits, replica, attention_dp=attention_dp), ModelClock(speedup)
    )
    runner = web.AppRunner(server.app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, options.host, options.port).start()
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            running = Running(server, session, f"http://127.0.0.1:{options.port}")
            if startup == 0:
                await until(lambda: ok(running, "/health"), "the server to serve")
            yield running
    finally:
        await server.close()
        await runner.cleanup()


async def ok(running: Running, path: str) -> bool:
    return (await running.get(path))[0] == 200


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def chat(max_tokens: int, prompt_tokens: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 10}]}
    body["max_tokens"] = max_tokens
    if prompt_tokens is not None:
        body["mimo_prompt_tokens"] = prompt_tokens
    return {**body, **extra}


# ---- health and lifecycle -------------------------------------------------------------------------


async def test_health_answers_503_while_starting_then_200() -> None:
    async with serving(startup=20.0, speedup=40.0) as running:  # 0.5 s of wall time
        assert running.server.state is ServerState.STARTING
        assert (await running.get("/health"))[0] == 503
        assert (await running.get("/health_generate"))[0] == 503
        status, body = await running.post("/v1/chat/completions", chat(4))
        assert status == 503
        assert body["object"] == "error"
        await until(lambda: ok(running, "/health"), "the simulated load to finish")
        assert (await running.get("/health_generate"))[0] == 200
        assert (await running.get("/ping"))[0] == 200


async def test_health_generate_runs_a_generation_through_the_scheduler() -> None:
    async with serving() as running:
        assert (await running.get("/health_generate"))[0] == 200
        assert running.server.engine.counters.finished_requests == 1  # the probe went through the engine
        # the probe is not a user request: it stays out of the request metrics
        families = await running.metrics()
        assert all(s.value == 0 for s in families["sglang:num_requests"].samples if s.name.endswith("_total"))


async def test_drain_refuses_new_requests_and_returns_only_after_those_in_flight_complete() -> None:
    async with serving(speedup=20.0) as running:
        in_flight = [
            asyncio.create_task(running.post("/v1/chat/completions", chat(400, prompt_tokens=500))),
            asyncio.create_task(running.stream("/v1/completions", {"prompt": [1] * 300, "max_tokens": 120})),
            asyncio.create_task(
                running.post("/generate", {"input_ids": [1] * 50, "sampling_params": {"max_new_tokens": 90}})
            ),
        ]
        await until(lambda: running_reqs_at_least(running, 3), "three requests to run")
        running.server.begin_drain()
        stopped = asyncio.create_task(running.server.wait_stopped())
        assert (await running.get("/health"))[0] == 503
        status, _ = await running.post("/v1/chat/completions", chat(4))
        assert status == 503
        await asyncio.sleep(0.1)
        assert not stopped.done()  # requests are still in flight
        chat_result, stream_events, native_result = await asyncio.gather(*in_flight)
        await asyncio.wait_for(stopped, timeout=10)
        assert chat_result[0] == 200
        assert chat_result[1]["usage"]["completion_tokens"] == 400
        assert stream_events[-1] == "[DONE]"
        assert stream_events[-2]["choices"][0]["finish_reason"] == "length"
        assert native_result[0] == 200
        assert native_result[1]["meta_info"]["completion_tokens"] == 90
        assert running.server.engine.idle


async def running_reqs_at_least(running: Running, n: int) -> bool:
    return await running.gauge("sglang:num_running_reqs") >= n


# ---- the OpenAI API ---------------------------------------------------------------------------------


async def test_models_lists_the_served_model() -> None:
    async with serving() as running:
        status, text = await running.get("/v1/models")
        body = json.loads(text)
        assert status == 200
        assert [m["id"] for m in body["data"]] == [MODEL]
        assert body["data"][0]["max_model_len"] == REPLICA.context_length


async def test_chat_completion_reports_usage_and_writes_max_tokens_of_text() -> None:
    async with serving() as running:
        status, body = await running.post("/v1/chat/completions", chat(7, prompt_tokens=1234))
        assert status == 200
        assert body["object"] == "chat.completion"
        assert body["model"] == MODEL
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert choice["finish_reason"] == "length"
        assert body["usage"] == {
            "prompt_tokens": 1234,
            "completion_tokens": 7,
            "total_tokens": 1241,
            "prompt_tokens_details": None,
        }
        assert len(choice["message"]["content"].split()) == 7  # one filler word per token


async def test_chat_completion_streams_a_role_chunk_content_a_finish_and_usage() -> None:
    async with serving() as running:
        events = await running.stream(
            "/v1/chat/completions", chat(9, prompt_tokens=100, stream_options={"include_usage": True})
        )
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert len(text.split()) == 9
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 9
        assert chunks[-1]["usage"]["prompt_tokens"] == 100


async def test_completions_count_token_id_prompts_exactly_and_stream() -> None:
    async with serving() as running:
        status, body = await running.post("/v1/completions", {"prompt": list(range(321)), "max_tokens": 5})
        assert status == 200
        assert body["object"] == "text_completion"
        assert body["usage"]["prompt_tokens"] == 321
        assert body["usage"]["completion_tokens"] == 5
        assert len(body["choices"][0]["text"].split()) == 5
        events = await running.stream("/v1/completions", {"prompt": "x" * 400, "max_tokens": 6})
        assert events[-1] == "[DONE]"
        text = "".join(e["choices"][0]["text"] for e in events[:-1])
        assert len(text.split()) == 6
        assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_native_generate_takes_input_ids_and_streams_cumulative_text() -> None:
    async with serving() as running:
        status, body = await running.post(
            "/generate", {"input_ids": [5] * 40, "sampling_params": {"max_new_tokens": 4}}
        )
        assert status == 200
        assert body["meta_info"]["prompt_tokens"] == 40
        assert body["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
        events = await running.stream("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 4}})
        assert events[-1] == "[DONE]"
        assert len(events[-2]["text"].split()) == 4


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", chat(20_000, prompt_tokens=20_000), "maximum context length"),
        ("/v1/chat/completions", chat(4, n=2), "one choice"),
        ("/v1/completions", {"prompt": {"not": "a prompt"}}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ("/generate", {"sampling_params": {"max_new_tokens": 3}}, "input_ids"),
    ],
)
async def test_malformed_or_impossible_requests_get_400_with_an_openai_error(
    path: str, body: dict[str, Any], message: str
) -> None:
    async with serving() as running:
        status, answer = await running.post(path, body)
        assert status == 400
        assert answer["object"] == "error"
        assert message in answer["message"]
        assert running.server.engine.idle


def test_prompt_tokens_are_estimated_from_text_length() -> None:
    assert text_prompt_tokens("a" * 400) == 100
    assert text_prompt_tokens("") == 1
    messages = [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 40}]},
    ]
    assert chat_prompt_tokens(messages) == 20 + 2 * 4 + 3


# ---- server_info, metrics ---------------------------------------------------------------------------


async def test_server_info_reports_the_kv_capacity_under_both_names() -> None:
    async with serving() as running:
        for path in ("/server_info", "/get_server_info"):
            status, text = await running.get(path)
            info = json.loads(text)
            assert status == 200
            assert info["max_total_num_tokens"] == REPLICA.max_total_num_tokens
            assert info["max_running_requests"] == REPLICA.max_running_requests
            assert info["served_model_name"] == MODEL
            assert info["internal_states"][0]["memory_usage"]["token_capacity"] == REPLICA.max_total_num_tokens


async def test_metrics_parse_and_carry_sglang_names_and_labels() -> None:
    async with serving() as running:
        await running.post("/v1/chat/completions", chat(5, prompt_tokens=300))
        await running.stream("/v1/chat/completions", chat(3, prompt_tokens=200))
        families = await running.metrics()
        for name in SCHEDULER_GAUGES:
            assert families[name].type == "gauge", name
            (sample,) = families[name].samples
            assert sample.labels == {
                "model_name": MODEL,
                "engine_type": "unified",
                "tp_rank": "0",
                "pp_rank": "0",
                "moe_ep_rank": "0",
            }
        for name in HISTOGRAMS:
            assert families[name].type == "histogram", name
        for name in COUNTERS:
            assert families[name].type == "counter", name

        def total(name: str, streaming: str) -> float:
            return sum(
                float(s.value)
                for s in families[name].samples
                if s.name == name + "_total" and s.labels == {"model_name": MODEL, "is_streaming": streaming}
            )

        assert total("sglang:num_requests", "false") == 1
        assert total("sglang:num_requests", "true") == 1
        assert total("sglang:prompt_tokens", "false") == 300
        assert total("sglang:generation_tokens", "true") == 3
        ttft_count = [s for s in families["sglang:time_to_first_token_seconds"].samples if s.name.endswith("_count")]
        assert sum(s.value for s in ttft_count) == 2
        # One sample per finished request of more than one token, as SGLang's tokenizer manager records it.
        tpot = families["sglang:request_time_per_output_token_seconds"].samples
        assert sum(s.value for s in tpot if s.name.endswith("_count")) == 2
        assert sum(s.value for s in tpot if s.name.endswith("_sum")) > 0
        assert families["sglang:max_total_num_tokens"].samples[0].value == REPLICA.max_total_num_tokens


async def test_with_attention_dp_every_group_reports_its_own_series_with_dp_rank() -> None:
    async with serving(attention_dp=2, tp_size=16) as running:
        await asyncio.gather(*(running.post("/v1/chat/completions", chat(3, prompt_tokens=100)) for _ in range(4)))
        families = await running.metrics()
        samples = families["sglang:max_total_num_tokens"].samples
        assert sorted((s.labels["dp_rank"], s.labels["tp_rank"], s.labels["moe_ep_rank"]) for s in samples) == [
            ("0", "0", "0"),
            ("1", "8", "8"),
        ]
        assert {s.value for s in samples} == {REPLICA.max_total_num_tokens // 2}
        queue_counts = [s for s in families["sglang:queue_time_seconds"].samples if s.name.endswith("_count")]
        assert sorted((s.labels["dp_rank"], s.value) for s in queue_counts) == [("0", 2.0), ("1", 2.0)]
        info = json.loads((await running.get("/server_info"))[1])
        assert info["max_total_num_tokens"] == REPLICA.max_total_num_tokens // 2  # per scheduler, as SGLang
        assert [s["dp_rank"] for s in info["internal_states"]] == [0, 1]


async def test_metrics_need_enable_metrics_as_in_sglang() -> None:
    async with serving(enable_metrics=False) as running:
        assert (await running.get("/metrics"))[0] == 404


async def test_kv_usage_on_metrics_follows_the_tokens_in_flight() -> None:
    prompts = [1000, 2000, 3000]
    async with serving(speedup=10.0) as running:
        assert await running.gauge("sglang:kv_used_tokens") == 0
        tasks = [asyncio.create_task(running.post("/v1/chat/completions", chat(150, prompt_tokens=p))) for p in prompts]
        await until(lambda: running_reqs_at_least(running, 3), "three requests to run")
        await until(lambda: kv_used_at_least(running, sum(prompts)), "the prompts to be in the KV cache", within=10)
        used = await running.gauge("sglang:kv_used_tokens")
        usage = await running.gauge("sglang:token_usage")
        assert sum(prompts) <= used <= sum(prompts) + 3 * 150 + 3 * 64
        assert usage == pytest.approx(used / REPLICA.max_total_num_tokens, rel=0.05)
        await asyncio.gather(*tasks)
        assert await running.gauge("sglang:kv_used_tokens") == 0
        assert await running.gauge("sglang:num_running_reqs") == 0


async def kv_used_at_least(running: Running, tokens: int) -> bool:
    return await running.gauge("sglang:kv_used_tokens") >= tokens


# ---- pause, abort, dummy ranks ----------------------------------------------------------------------


async def test_pause_in_place_holds_requests_and_continue_lets_them_finish() -> None:
    async with serving(speedup=20.0) as running:
        task = asyncio.create_task(running.post("/v1/chat/completions", chat(100, prompt_tokens=100)))
        await until(lambda: running_reqs_at_least(running, 1), "the request to run")
        status, _ = await running.post("/pause_generation", {"mode": "in_place"})
        assert status == 200
        await asyncio.sleep(0.3)
        assert not task.done()
        assert (await running.post("/continue_generation", {}))[0] == 200
        status, body = await task
        assert status == 200
        assert body["usage"]["completion_tokens"] == 100


async def test_pause_in_abort_mode_ends_requests_in_flight() -> None:
    async with serving(speedup=5.0) as running:
        plain = asyncio.create_task(running.post("/v1/chat/completions", chat(200, prompt_tokens=100)))
        streamed = asyncio.create_task(running.stream("/v1/chat/completions", chat(200, prompt_tokens=100)))
        await until(lambda: running_reqs_at_least(running, 2), "two requests to run")
        assert (await running.post("/pause_generation", {}))[0] == 200
        status, body = await plain
        assert status == 503
        assert body["object"] == "error"
        events = await streamed
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "abort"
        assert running.server.engine.idle


async def test_a_client_that_goes_away_aborts_its_request() -> None:
    async with serving(speedup=5.0) as running:
        async with running.session.post(
            running.base + "/v1/chat/completions", json={**chat(500, prompt_tokens=100), "stream": True}
        ) as response:
            await response.content.readline()  # the stream has started
        await until(lambda: engine_idle(running), "the engine to drop the request")
        families = await running.metrics()
        aborted = [s for s in families["sglang:num_aborted_requests"].samples if s.name.endswith("_total")]
        assert sum(s.value for s in aborted) == 1


async def engine_idle(running: Running) -> bool:
    return running.server.engine.idle


async def test_node_ranks_above_zero_serve_a_dummy_health_server() -> None:
    port = free_port()
    runner = web.AppRunner(dummy_health_app(enable_metrics=True))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/health", "/health_generate", "/ping", "/metrics"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 200, path
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat(3)) as response:
                assert response.status in (404, 405)  # no API on non-zero ranks
    finally:
        await runner.cleanup()


async def test_a_multi_node_gang_shows_each_groups_scheduler_on_the_node_that_hosts_it() -> None:
    # Pro's shape: TP 16 over two nodes, two attention-DP groups; group 1's first GPU (tp_rank 8) is on node 1.
    async with serving(attention_dp=2, tp_size=16, nnodes=2) as running:
        await asyncio.gather(*(running.post("/v1/chat/completions", chat(3, prompt_tokens=100)) for _ in range(4)))
        node0 = await running.metrics()
        assert [s.labels["dp_rank"] for s in node0["sglang:max_total_num_tokens"].samples] == ["0"]
        assert sum(s.value for s in node0["sglang:num_requests"].samples if s.name.endswith("_total")) == 4

        # Node 1's dummy server asks node 0's process for its groups, as the operator's scrape reaches node 1.
        port = free_port()
        node_metrics = running.base + "/mimo/metrics/node/1"
        runner = web.AppRunner(dummy_health_app(enable_metrics=True, node_metrics=node_metrics))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with running.session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                node1 = {f.name: f for f in text_string_to_metric_families(await response.text())}
        finally:
            await runner.cleanup()
        assert [s.labels["dp_rank"] for s in node1["sglang:max_total_num_tokens"].samples] == ["1"]
        assert [s.labels["tp_rank"] for s in node1["sglang:num_running_reqs"].samples] == ["8"]
        assert not node1.get("sglang:num_requests") or not node1["sglang:num_requests"].samples
        status, _ = await running.get("/mimo/metrics/node/2")
        assert status == 404


async def test_a_dummy_server_whose_node_zero_cannot_be_asked_answers_503() -> None:
    port = free_port()
    runner = web.AppRunner(dummy_health_app(enable_metrics=True,
                                            node_metrics=f"http://127.0.0.1:{free_port()}/mimo/metrics/node/1"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 503
    finally:
        await runner.cleanup()


async def test_stop_now_ends_requests_in_flight_as_aborted() -> None:
    async with serving(speedup=2.0) as running:
        streamed = asyncio.create_task(running.stream("/v1/chat/completions", chat(500, prompt_tokens=100)))
        await until(lambda: running_reqs_at_least(running, 1), "the request to run")
        running.server.stop_now()
        await asyncio.wait_for(running.server.wait_stopped(), timeout=5)
        events = await asyncio.wait_for(streamed, timeout=5)
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "abort"
