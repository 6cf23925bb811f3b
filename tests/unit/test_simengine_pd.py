"""The simulated engine in its prefill/decode roles: the flags, the side it plans, transferred KV in the
scheduler, and a prefill and a decode server on 127.0.0.1 spoken to as sglang-router 0.3.2 speaks to them
(the same body, with bootstrap_host/port/room, POSTed to both at once)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.launchplan import substitute
from mimo_operator.localcluster.processes import free_port
from mimo_operator.planner_pd import KvTransfer, kv_transfer, plan_disaggregated
from mimo_operator.spec import parse_spec
from mimo_worker.simengine.disaggregation import WAITING_TIMEOUT_ENV
from mimo_worker.simengine.engine import Engine, ReplicaEngine, RequestState
from mimo_worker.simengine.options import OptionsError, SimOptions, parse_options
from mimo_worker.simengine.replica import planned_replica, replica_from_argv
from mimo_worker.simengine.server import ModelClock, SimulatedEngineServer, chat_prompt_tokens
from tests.conftest import REPO
from tests.unit.simengine_support import SmallReplica

PD_EXAMPLE = REPO / "examples" / "mimo-v25-pro-pd.yaml"
MODEL = "XiaomiMiMo/MiMo-V2.5-Pro"
REPLICA = SmallReplica()


def pd_manifest() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(PD_EXAMPLE.read_text(encoding="utf-8"))
    return document


# ---- flags and planning -------------------------------------------------------------------------------


def test_the_pd_flags_default_to_sglangs_and_are_read() -> None:
    plain = parse_options([])
    assert (plain.disaggregation_mode, plain.disaggregation_bootstrap_port) == ("null", 8998)
    assert plain.disaggregation_transfer_backend == "mooncake"
    assert plain.server_args()["load_balance_method"] == "round_robin"
    prefill = parse_options(
        ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", "9100",
         "--disaggregation-transfer-backend", "nixl", "--disaggregation-ib-device", "mlx5_0,mlx5_1"]
    )  # fmt: skip
    assert prefill.disaggregation_mode == "prefill"
    assert prefill.disaggregation_bootstrap_port == 9100
    assert prefill.disaggregation_transfer_backend == "nixl"
    assert prefill.disaggregation_ib_device == "mlx5_0,mlx5_1"
    assert prefill.server_args()["load_balance_method"] == "follow_bootstrap_room"


def test_a_mode_sglang_does_not_know_is_refused_as_sglangs_parser_refuses_it() -> None:
    with pytest.raises(SystemExit):
        parse_options(["--disaggregation-mode", "both"])


def test_a_prefill_servers_bootstrap_port_may_not_be_its_http_port() -> None:
    with pytest.raises(OptionsError, match="bootstrap server needs a port of its own"):
        parse_options(["--disaggregation-mode", "prefill", "--port", "8998"])


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_a_pd_manifest_plans_the_side_the_mode_names_through_planner_pd(role: str) -> None:
    document = pd_manifest()
    side = getattr(plan_disaggregated(parse_spec(document["spec"])), role).plan
    replica = planned_replica(document, role=role)
    assert replica.plan == side
    assert replica.role == role
    assert f"--disaggregation-mode {role}" in " ".join(replica.server_args(0))


def test_a_pd_manifest_without_a_mode_is_refused() -> None:
    with pytest.raises(OptionsError, match="--disaggregation-mode prefill or decode"):
        planned_replica(pd_manifest())


def test_the_hand_over_time_is_planner_pds_for_the_prompt_from_the_manifest_and_from_the_sides_argv() -> None:
    document = pd_manifest()
    spec = parse_spec(document["spec"])
    prefill = plan_disaggregated(spec).prefill.plan
    replica = planned_replica(document, role="prefill")
    assert replica.kv_transfer(30_000) == kv_transfer(spec, prefill, 30_000)
    # what a prefill pod runs: the side's argv, no manifest (--disaggregation-ib-device gives the HCAs)
    argv = [*prefill.server_args(0, "127.0.0.1"), "--mimo-gpu-type", prefill.gpu.name]
    from_argv = replica_from_argv(parse_options(argv))
    assert from_argv.role == "prefill"
    assert from_argv.kv_transfer(30_000).seconds == pytest.approx(replica.kv_transfer(30_000).seconds)
    assert from_argv.kv_transfer(30_000).total_bytes == replica.kv_transfer(30_000).total_bytes


def test_a_sides_argv_with_the_link_speed_gives_the_manifests_hand_over_time() -> None:
    document = pd_manifest()
    document["spec"]["network"]["linkSpeedGbps"] = 100
    replica = planned_replica(document, role="prefill")
    argv = [*replica.server_args(0), "--mimo-gpu-type", replica.plan.gpu.name]
    at_default = replica_from_argv(parse_options(argv)).kv_transfer(30_000)
    at_100 = replica_from_argv(parse_options([*argv, "--mimo-link-speed-gbps", "100"])).kv_transfer(30_000)
    assert at_100.seconds == pytest.approx(replica.kv_transfer(30_000).seconds)
    assert at_default.seconds == pytest.approx(at_100.seconds / 4)  # 400 Gb/s HCAs by default


# ---- transferred KV in the scheduler --------------------------------------------------------------------


def test_a_request_with_transferred_kv_decodes_at_once_without_prefill_compute() -> None:
    computed = Engine(REPLICA.limits, REPLICA)
    received = Engine(REPLICA.limits, REPLICA)
    computed.submit("a", 8000, 4, 0.0)
    received.submit("a", 8000, 4, 0.0, transferred=True)
    first_computed = computed.next_batch(0.0)
    first_received = received.next_batch(0.0)
    assert first_computed is not None
    assert first_received is not None
    assert first_computed.duration == pytest.approx(REPLICA.prefill_seconds(4096))  # a chunk of 4096
    assert first_received.duration < 1e-5  # the whole prompt, nothing computed
    progress = received.complete(first_received)
    assert [p.first for p in progress] == [True]  # the prefill's token is its first
    assert received.counters.prefill_tokens_computed == 0
    assert received.stats(first_received.end).full_used_tokens >= 8000  # its KV is held all the same


def test_a_prefill_request_keeps_its_kv_after_its_token_until_released() -> None:
    engine = ReplicaEngine(REPLICA.limits, REPLICA, attention_dp=2, prefix_cache=False)
    engine.submit("a", 1500, 1, 0.0, hold_kv=True, group=3)  # the bootstrap room picks the group
    batch = engine.next_batch(0.0)
    assert batch is not None
    [progress] = engine.complete(batch)
    assert progress.finished
    assert progress.request.group == 1
    used = engine.stats(batch.end).full_used_tokens
    assert used >= 1500
    assert engine.idle  # finished: it no longer runs, it only holds KV
    assert engine.release("a", batch.end)
    assert engine.stats(batch.end).full_used_tokens == 0
    assert not engine.release("a", batch.end)


def test_a_request_awaiting_its_kv_reserves_its_pages_at_admission_and_runs_once_it_arrives() -> None:
    small = SmallReplica(max_total_num_tokens=1600)
    engine = Engine(small.limits, small, prefix_cache=False)
    engine.submit("a", 1000, 4, 0.0, awaiting_kv=True)
    engine.submit("b", 1000, 4, 0.0, awaiting_kv=True)
    assert engine.next_batch(0.0) is None  # admission alone runs no step
    assert engine.request("a").state is RequestState.RECEIVING  # type: ignore[union-attr]
    assert engine.request("b").state is RequestState.WAITING  # type: ignore[union-attr]  # no room for two
    assert engine.stats(0.0).full_used_tokens == 1024  # a's pages, reserved before its KV is there
    assert engine.stats(0.0).num_running_reqs == 0
    assert engine.kv_arrived("a")
    batch = engine.next_batch(0.0)
    assert batch is not None
    assert batch.duration < 1e-5  # its KV arrived: nothing to compute
    [first] = engine.complete(batch)
    assert first.first
    assert engine.counters.prefill_tokens_computed == 0


# ---- a prefill and a decode server, spoken to as the router does ----------------------------------------


@dataclass
class Pair:
    prefill: SimulatedEngineServer
    decode: SimulatedEngineServer
    prefill_url: str
    decode_url: str
    bootstrap_port: int
    session: aiohttp.ClientSession


TRANSFER_SECONDS = 2.0  # simulated


def fixed_transfer(prompt_tokens: int) -> KvTransfer:
    return KvTransfer(prompt_tokens, 1_000_000, 0, 1, 500_000.0, TRANSFER_SECONDS)


@asynccontextmanager
async def pd_pair(speedup: float = 10.0, decode_replica: SmallReplica = REPLICA) -> AsyncIterator[Pair]:
    bootstrap_port = free_port()
    runners: list[web.AppRunner] = []
    servers: list[SimulatedEngineServer] = []
    urls: list[str] = []
    for mode in ("prefill", "decode"):
        options = SimOptions(
            model_path=MODEL, host="127.0.0.1", port=free_port(), enable_metrics=True, mimo_speedup=speedup,
            mimo_startup_seconds=0.0, disaggregation_mode=mode, disaggregation_bootstrap_port=bootstrap_port,
        )  # fmt: skip
        server = SimulatedEngineServer(
            options,
            ReplicaEngine(*(2 * (decode_replica if mode == "decode" else REPLICA,)), prefix_cache=mode != "decode"),
            ModelClock(speedup),
            kv_transfer=fixed_transfer if mode == "prefill" else None,
        )
        apps = [(server.app, options.port)]
        if mode == "prefill":
            apps.append((server.bootstrap_app(), bootstrap_port))
        for app, port in apps:
            runner = web.AppRunner(app, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        await server.start()
        servers.append(server)
        urls.append(f"http://127.0.0.1:{options.port}")
    try:
        async with aiohttp.ClientSession() as session:
            pair = Pair(servers[0], servers[1], urls[0], urls[1], bootstrap_port, session)
            for url in urls:
                await until_ok(session, url + "/health")
            yield pair
    finally:
        for server in servers:
            await server.close()
        for runner in runners:
            await runner.cleanup()


async def until_ok(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        async with session.get(url) as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.02)
    pytest.fail(f"{url} never answered 200")


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, json.loads(await response.text())


async def samples(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """Every sample of /metrics summed over its series, by sample name."""
    async with session.get(base + "/metrics") as response:
        text = await response.text()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def routed(body: dict[str, Any], pair: Pair, room: int) -> dict[str, Any]:
    """What the router adds to the body it sends to both servers."""
    return {**body, "bootstrap_host": "127.0.0.1", "bootstrap_port": pair.bootstrap_port, "bootstrap_room": room}


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 6}


async def test_the_decode_answers_after_the_prefill_computed_and_handed_over_the_kv() -> None:
    async with pd_pair(speedup=10.0) as pair:
        body = routed(CHAT, pair, room=7)
        start = time.monotonic()
        prefill = asyncio.create_task(post(pair.session, pair.prefill_url + "/v1/chat/completions", body))
        decode = asyncio.create_task(post(pair.session, pair.decode_url + "/v1/chat/completions", body))
        # mid-transfer: the prefill holds the KV in flight, the decode waits for it
        await asyncio.sleep(0.1)
        mid_prefill = await samples(pair.session, pair.prefill_url)
        mid_decode = await samples(pair.session, pair.decode_url)
        (p_status, p_body), (d_status, d_body) = await asyncio.gather(prefill, decode)
        waited = time.monotonic() - start
        after_prefill = await samples(pair.session, pair.prefill_url)
        after_decode = await samples(pair.session, pair.decode_url)
    assert (p_status, d_status) == (200, 200), (p_body, d_body)
    # SGLang's prefill answers with the one token it sampled; the decode with the whole output
    assert p_body["usage"]["completion_tokens"] == 1
    assert d_body["usage"] == {
        "prompt_tokens": chat_prompt_tokens(CHAT["messages"]), "completion_tokens": 6,
        "total_tokens": chat_prompt_tokens(CHAT["messages"]) + 6, "prompt_tokens_details": None,
    }  # fmt: skip
    assert waited >= TRANSFER_SECONDS / 10.0
    assert mid_prefill["sglang:num_prefill_inflight_queue_reqs"] == 1
    # the prefill keeps the prompt's KV while it moves, and frees it after
    assert mid_prefill["sglang:kv_used_tokens"] >= chat_prompt_tokens(CHAT["messages"])
    assert after_prefill["sglang:kv_used_tokens"] == 0
    assert mid_decode["sglang:num_decode_transfer_queue_reqs"] == 1
    assert after_prefill["sglang:kv_transfer_latency_ms_count"] == 1
    assert after_prefill["sglang:kv_transfer_latency_ms_sum"] == pytest.approx(TRANSFER_SECONDS * 1000)
    assert after_prefill["sglang:kv_transfer_total_mb_sum"] == pytest.approx(1_000_000 / 2**20)
    assert after_prefill["sglang:num_prefill_inflight_queue_reqs"] == 0
    # the decode's first token came with the KV: its TTFT covers the transfer, it computed no prompt
    assert after_decode["sglang:time_to_first_token_seconds_sum"] >= TRANSFER_SECONDS
    assert after_decode["sglang:kv_transfer_bootstrap_ms_count"] == 1
    assert after_decode["sglang:num_decode_transfer_queue_reqs"] == 0
    assert pair.decode.engine.counters.prefill_tokens_computed == 0
    assert pair.prefill.engine.counters.prefill_tokens_computed == chat_prompt_tokens(CHAT["messages"])


async def test_a_streamed_request_streams_from_the_decode_after_the_transfer() -> None:
    async with pd_pair(speedup=20.0) as pair:
        body = routed({**CHAT, "stream": True}, pair, room=11)
        prefill = asyncio.create_task(post_stream(pair.session, pair.prefill_url + "/v1/chat/completions", body))
        events = await post_stream(pair.session, pair.decode_url + "/v1/chat/completions", body)
        await prefill
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert events[-1] == "[DONE]"
    assert text.startswith("The simulated engine")


async def post_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    events: list[Any] = []
    async with session.post(url, json=body) as response:
        assert response.status == 200
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


@pytest.mark.parametrize("url", [lambda p: p.prefill_url, lambda p: p.decode_url], ids=["prefill", "decode"])
async def test_a_request_without_a_bootstrap_room_is_refused_with_sglangs_message(url: Callable[[Pair], str]) -> None:
    async with pd_pair() as pair:
        status, body = await post(pair.session, url(pair) + "/v1/chat/completions", CHAT)
    assert status == 400
    assert "Disaggregated request received without bootstrap room id" in body["message"]


async def test_a_decode_whose_prefill_never_answers_fails_after_sglangs_waiting_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WAITING_TIMEOUT_ENV, "3")  # simulated seconds: 0.3 s at speedup 10
    async with pd_pair(speedup=10.0) as pair:
        body = {**routed(CHAT, pair, room=5), "bootstrap_port": free_port()}  # nothing listens there
        start = time.monotonic()
        status, answer = await post(pair.session, pair.decode_url + "/v1/chat/completions", body)
        took = time.monotonic() - start
        metrics = await samples(pair.session, pair.decode_url)
    assert status == 500
    assert "Decode handshake failed" in answer["message"]
    assert "timed out after 3." in answer["message"]
    assert 0.3 <= took < 5
    assert metrics["sglang:num_bootstrap_failed_reqs_total"] == 1
    assert metrics["sglang:num_decode_prealloc_queue_reqs"] == 0


async def test_a_decode_waits_for_a_prefill_that_gets_the_request_late() -> None:
    async with pd_pair(speedup=10.0) as pair:
        body = routed(CHAT, pair, room=9)
        decode = asyncio.create_task(post(pair.session, pair.decode_url + "/v1/chat/completions", body))
        await asyncio.sleep(0.2)
        assert not decode.done()
        (p_status, _), (d_status, _) = await asyncio.gather(
            post(pair.session, pair.prefill_url + "/v1/chat/completions", body), decode
        )
    assert (p_status, d_status) == (200, 200)


def test_the_example_pd_manifest_file_plans_both_sides() -> None:
    for role in ("prefill", "decode"):
        assert planned_replica(PD_EXAMPLE, role=role).role == role


async def test_a_request_too_long_for_the_model_is_refused_on_both_sides_before_any_hand_over() -> None:
    too_long = {**CHAT, "max_tokens": REPLICA.context_length}
    async with pd_pair(speedup=10.0) as pair:
        body = routed(too_long, pair, room=13)
        answers = await asyncio.wait_for(
            asyncio.gather(
                post(pair.session, pair.prefill_url + "/v1/chat/completions", body),
                post(pair.session, pair.decode_url + "/v1/chat/completions", body),
            ),
            timeout=5,
        )
        prefill = await samples(pair.session, pair.prefill_url)
    assert [status for status, _ in answers] == [400, 400]
    assert all("maximum context length" in answer["message"] for _, answer in answers)
    assert prefill["sglang:num_prefill_bootstrap_queue_reqs"] == 0


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_the_launch_the_operator_writes_for_a_simulated_side_plans_that_side_again(role: str) -> None:
    document = pd_manifest()
    document["spec"]["engine"] = {"type": "simulated", "simulation": {"speedup": 5}}
    spec = parse_spec(document["spec"])
    side = getattr(plan_disaggregated(spec), role).plan
    launch = side.launch.ranks[0]
    argv = [substitute(a, head_ip="127.0.0.1", node_ip="127.0.0.1") for a in launch.argv]
    assert side.launch.program[-1] == "mimo_worker.simengine"
    again = replica_from_argv(parse_options(argv))
    manifest = planned_replica(document, role=role)
    assert again.role == role
    assert again.plan.kv == manifest.plan.kv  # the decode side's redundant experts come out of its KV as planned
    assert again.plan.memory == manifest.plan.memory
    assert again.limits == manifest.limits
    assert again.performance == manifest.performance
    assert again.kv_transfer(20_000) == manifest.kv_transfer(20_000)


async def test_a_prefill_request_that_goes_away_fails_the_decode_at_once() -> None:
    async with pd_pair(speedup=1.0) as pair:  # a 2 s hand-over: time to cut the prefill's connection
        body = routed(CHAT, pair, room=17)
        prefill = asyncio.create_task(post(pair.session, pair.prefill_url + "/v1/chat/completions", body))
        decode = asyncio.create_task(post(pair.session, pair.decode_url + "/v1/chat/completions", body))
        await asyncio.sleep(0.3)
        prefill.cancel()
        start = time.monotonic()
        status, answer = await asyncio.wait_for(decode, timeout=5)
        took = time.monotonic() - start
        metrics = await samples(pair.session, pair.decode_url)
    assert status == 500
    assert "Decode transfer failed" in answer["message"]
    assert "was aborted" in answer["message"]
    assert took < TRANSFER_SECONDS
    assert metrics["sglang:num_transfer_failed_reqs_total"] == 1


async def test_a_decode_without_kv_room_holds_the_next_request_and_so_its_prefill() -> None:
    one_at_a_time = SmallReplica(max_total_num_tokens=1600)  # one ~1,000-token request's pages at a time
    async with pd_pair(speedup=5.0, decode_replica=one_at_a_time) as pair:  # a 0.4 s hand-over
        requests = []
        for room in (21, 22):
            body = routed({**CHAT, "max_tokens": 30}, pair, room=room)
            for url in (pair.prefill_url, pair.decode_url):
                requests.append(asyncio.create_task(post(pair.session, url + "/v1/chat/completions", body)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        prefill, decode = await samples(pair.session, pair.prefill_url), await samples(pair.session, pair.decode_url)
        answers = await asyncio.gather(*requests)
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    # the first request's KV is on its way; the second waits for decode KV slots, so its prefill waits too
    assert decode["sglang:num_decode_transfer_queue_reqs"] == 1
    assert decode["sglang:num_decode_prealloc_queue_reqs"] == 1
    # the first request's slots are reserved while its KV is on its way
    assert decode["sglang:prealloc_full_token_usage"] == pytest.approx(1024 / 1600)
    assert prefill["sglang:num_prefill_inflight_queue_reqs"] == 1
    assert prefill["sglang:num_prefill_bootstrap_queue_reqs"] == 1
