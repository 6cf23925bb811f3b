"""The head's endpoints over a fake head and a fake engine (no Ray): readiness, status, drain, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from mimo_worker.fabric import FabricSample, judge, summarize
from mimo_worker.head import parse_load
from mimo_worker.launchplan import example_plan, parse_plan
from mimo_worker.server import build_app
from mimo_worker.status import DrainProgress, GangStatus

ENGINE_METRICS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{dp_rank="0",model_name="m"} 3.0
sglang:num_running_reqs{dp_rank="1",model_name="m"} 2.0
# HELP sglang:num_queue_reqs The number of queued requests.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{dp_rank="0",model_name="m"} 1.0
"""


@dataclass
class FakeEngine:
    health: int = 200
    hits: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def health(_: web.Request) -> web.Response:
            self.hits.append("/health")
            return web.Response(status=self.health)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=ENGINE_METRICS)

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics)
        return app


class FakeHead:
    def __init__(self, engine_url: str, session: aiohttp.ClientSession) -> None:
        self.status = GangStatus(parse_plan(example_plan()))
        self.engine_url = engine_url
        self._session = session
        self.drain_release = asyncio.Event()
        self.drains = 0
        self.timeouts: list[float | None] = []

    @property
    def http(self) -> aiohttp.ClientSession:
        return self._session

    async def drain(self, seconds: float | None = None) -> DrainProgress:
        self.drains += 1
        self.timeouts.append(seconds)
        self.status.set_drain(state="draining")
        await self.drain_release.wait()
        self.status.set_drain(state="drained", message="drained in 0.1 s")
        return self.status.drain

    def start_drain(self, seconds: float | None = None) -> None:
        self.drains += 1
        self.timeouts.append(seconds)
        self.status.set_drain(state="draining")


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FakeEngine, FakeHead, TestClient[web.Request, web.Application]]]:
    engine = FakeEngine()
    engine_server = TestServer(engine.app(), host="127.0.0.1")
    await engine_server.start_server()
    async with aiohttp.ClientSession() as session:
        head = FakeHead(str(engine_server.make_url("")).rstrip("/"), session)
        client = TestClient(TestServer(build_app(head), host="127.0.0.1"))
        await client.start_server()
        try:
            yield engine, head, client
        finally:
            await client.close()
            await engine_server.close()


Setup = tuple[FakeEngine, FakeHead, "TestClient[web.Request, web.Application]"]


async def test_not_ready_before_the_engine_starts_whatever_the_engine_says(setup: Setup) -> None:
    engine, head, client = setup
    head.status.set_phase("joining", "2/3 nodes joined")
    r = await client.get("/readyz")
    assert r.status == 503
    assert (await r.json())["phase"] == "joining"
    assert engine.hits == []


@pytest.mark.parametrize(("engine_health", "ready"), [(200, 200), (503, 503)])
async def test_readiness_is_node_0s_own_health(setup: Setup, engine_health: int, ready: int) -> None:
    engine, head, client = setup
    head.status.set_phase("serving")
    engine.health = engine_health
    r = await client.get("/readyz")
    assert r.status == ready
    assert engine.hits == ["/health"]


async def test_an_unreachable_engine_is_not_ready(setup: Setup) -> None:
    _, head, client = setup
    head.status.set_phase("serving")
    head.engine_url = "http://127.0.0.1:9"  # discard port: nothing listens
    r = await client.get("/readyz")
    assert r.status == 503
    assert "unreachable" in (await r.json())["engine"]


async def test_metrics_are_the_engines_followed_by_the_workers(setup: Setup) -> None:
    _, head, client = setup
    status = head.status
    status.set_engine(0, "ready")
    status.set_joined(3, 24)
    samples = [[FabricSample.of("all_reduce", 1 << 20, 0.001, 3)] for _ in range(3)]
    report = summarize("gloo", samples)
    status.set_fabric(report, judge(report, status.plan.fabric))
    r = await client.get("/metrics")
    assert r.status == 200
    text = await r.text()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {"sglang:num_running_reqs", "sglang:num_queue_reqs"} <= names
    assert {"mimo_worker_gang_nodes_joined", "mimo_worker_fabric_bus_bandwidth_gbps", "mimo_worker_phase"} <= names
    assert parse_load(text) == (5, 1)


async def test_status_is_the_gang_document(setup: Setup) -> None:
    _, head, client = setup
    head.status.set_phase("joining", "1/3 nodes joined")
    doc = await (await client.get("/status")).json()
    assert doc["gang"] == "pro-r0"
    assert doc["phase"] == "joining"
    assert doc["nodes"] == {"expected": 3, "joined": 0, "gpus_per_node": 8}
    assert [r["pod"] for r in doc["ranks"]] == ["pro-r0-0", "pro-r0-1", "pro-r0-2"]
    assert [r["engine"] for r in doc["ranks"]] == ["pending"] * 3


async def test_post_drain_answers_when_the_drain_ends(setup: Setup) -> None:
    _, head, client = setup
    request = asyncio.ensure_future(client.post("/drain"))
    await asyncio.sleep(0.2)
    assert not request.done()  # still draining
    progress = await (await client.get("/drain")).json()
    assert progress["state"] == "draining"
    head.drain_release.set()
    r = await request
    assert r.status == 200
    assert (await r.json())["state"] == "drained"


async def test_post_drain_without_waiting_answers_202(setup: Setup) -> None:
    _, head, client = setup
    r = await client.post("/drain?wait=false")
    assert r.status == 202
    assert (await r.json())["state"] == "draining"
    assert head.drains == 1


async def test_post_drain_carries_the_operators_drain_timeout(setup: Setup) -> None:
    _, head, client = setup
    assert (await client.post("/drain?wait=false&timeout=45")).status == 202
    assert head.timeouts == [45.0]
    assert (await client.post("/drain?wait=false&timeout=soon")).status == 400
    assert (await client.post("/drain?wait=false&timeout=0")).status == 400
    assert head.timeouts == [45.0]
