"""A draining or deleted gang leaves every router pod's worker set through the router's own API, whatever the
router's pod discovery saw (in PD mode it never sees a head leave its pool's selector)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from mimo_operator import labels as L
from mimo_operator.heads import Heads
from tests.helpers.operator_world import NS, World
from tests.unit.test_planner_pd import pro_pd


async def _leave(workers: list[dict[str, Any]], worker: str, *, fail_delete: bool = False) -> tuple[bool, list[str]]:
    deleted: list[str] = []

    async def listing(_: web.Request) -> web.Response:
        return web.json_response({"workers": workers, "total": len(workers)})

    async def delete(request: web.Request) -> web.Response:
        deleted.append(request.match_info["id"])
        if fail_delete:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_get("/workers", listing)
    app.router.add_delete("/workers/{id}", delete)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            ok = await Heads(session).leave_router(str(server.make_url("")).rstrip("/"), worker)
    finally:
        await server.close()
    return ok, deleted


def test_a_head_leaves_the_router_by_its_url_and_no_other_worker_does() -> None:
    workers = [{"id": "a", "url": "http://10.0.0.1:30000", "worker_type": "prefill"},
               {"id": "b", "url": "http://10.0.0.11:30000", "worker_type": "prefill"},
               {"id": "c", "url": "http://10.0.0.1:30000@1", "worker_type": "regular"}]
    ok, deleted = asyncio.run(_leave(workers, "http://10.0.0.1:30000"))
    assert ok
    assert deleted == ["a", "c"]


def test_a_router_that_does_not_list_the_head_has_nothing_to_remove_and_a_refused_removal_is_reported() -> None:
    ok, deleted = asyncio.run(_leave([{"id": "b", "url": "http://10.0.0.11:30000"}], "http://10.0.0.1:30000"))
    assert (ok, deleted) == (True, [])
    ok, deleted = asyncio.run(_leave([{"id": "a", "url": "http://10.0.0.1:30000"}], "http://10.0.0.1:30000",
                                     fail_delete=True))
    assert (ok, deleted) == (False, ["a"])


def test_a_drained_pd_gang_leaves_every_router_pod_until_its_pods_go() -> None:
    w = World(pro_pd(prefill={"nodesPerGang": 2, "replicas": 2}, decode={"nodesPerGang": 2}).named("d").simulated())
    w.reconcile()
    w.run_pods()
    for ip in ("10.9.0.1", "10.9.0.2"):
        router = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"d-router-{ip[-1]}", "namespace": NS,
            "labels": {L.LABEL_DEPLOYMENT: "d", L.LABEL_COMPONENT: "router"}}, "status": {"podIP": ip}}
        asyncio.run(w.kube.create(router))
    w.now += 5
    w.reconcile()
    assert w.heads.left_router == []  # nothing drains: no router is asked anything
    w.edit("disaggregation.prefill.replicas", 1)
    w.now += 5
    w.reconcile()
    drained = next(p for p in w.pods() if p["metadata"]["labels"][L.LABEL_ROLE] == L.ROLE_HEAD
                   and p["metadata"]["labels"][L.LABEL_POOL] == "prefill"
                   and p["metadata"]["labels"][L.LABEL_REPLICA] == "1")
    head = f"http://{drained['status']['podIP']}:30000"
    assert sorted(w.heads.left_router) == [("http://10.9.0.1:8080", head), ("http://10.9.0.2:8080", head)]
    w.now += 2
    w.reconcile()  # asked again while it drains: a router that missed it is asked once more
    assert w.heads.left_router.count(("http://10.9.0.1:8080", head)) == 2
