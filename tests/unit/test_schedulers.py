"""Whether a named gang scheduler is installed: read from API discovery through the operator's client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mimo_operator import kube
from mimo_operator.kube import Kube, KubeConfig
from mimo_operator.schedulers import missing_gang_scheduler, served_gang_api


@pytest.fixture
async def api() -> AsyncIterator[tuple[Kube, list[str]]]:
    """An API server that serves scheduler-plugins' PodGroups and Kubernetes 1.36's (scheduling.k8s.io/v1alpha2),
    and nothing else of the gang schedulers."""
    seen: list[str] = []

    async def discovery(request: web.Request) -> web.Response:
        seen.append(request.path)
        gv = request.match_info["gv"]
        if gv in ("scheduling.x-k8s.io/v1alpha1", "scheduling.k8s.io/v1alpha2"):
            return web.json_response({"kind": "APIResourceList", "groupVersion": gv,
                                      "resources": [{"name": "podgroups", "namespaced": True, "kind": "PodGroup"},
                                                    {"name": "podgroups/status", "namespaced": True}]})
        if gv == "scheduling.k8s.io/v1":  # what every cluster serves there: no gangs
            return web.json_response({"kind": "APIResourceList", "groupVersion": gv, "resources": [
                {"name": "priorityclasses", "namespaced": False, "kind": "PriorityClass"}]})
        return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)

    app = web.Application()
    app.router.add_get("/apis/{gv:.+}", discovery)
    server = TestServer(app)
    await server.start_server()
    client = Kube(KubeConfig(server=str(server.make_url(""))))
    try:
        yield client, seen
    finally:
        await client.close()
        await server.close()


async def test_none_needs_nothing(api: tuple[Kube, list[str]]) -> None:
    client, seen = api
    assert await missing_gang_scheduler(client, "none") is None
    assert seen == []


async def test_an_installed_scheduler_passes(api: tuple[Kube, list[str]]) -> None:
    client, _ = api
    assert await missing_gang_scheduler(client, "scheduler-plugins") is None


async def test_a_scheduler_that_is_not_installed_is_named_with_what_to_install(api: tuple[Kube, list[str]]) -> None:
    client, seen = api
    message = await missing_gang_scheduler(client, "volcano")
    assert message is not None
    assert "'volcano' is not installed" in message
    assert "scheduling.volcano.sh/v1beta1" in message
    kueue = await missing_gang_scheduler(client, "kueue")
    assert kueue is not None
    assert "kueue.x-k8s.io/v1beta2 or kueue.x-k8s.io/v1beta1" in kueue
    assert seen == ["/apis/scheduling.volcano.sh/v1beta1", "/apis/kueue.x-k8s.io/v1beta2",
                    "/apis/kueue.x-k8s.io/v1beta1"]


async def test_discovery_is_read_once_a_minute(api: tuple[Kube, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    client, seen = api
    for _ in range(3):
        assert await missing_gang_scheduler(client, "volcano") is not None
    assert len(seen) == 1, "a reconcile of every deployment must not cost a discovery read each"
    monkeypatch.setattr(kube, "_DISCOVERY_SECONDS", 0.0)
    await missing_gang_scheduler(client, "volcano")
    assert len(seen) == 2


async def test_kubernetes_gang_scheduling_is_found_in_the_version_the_cluster_serves(
        api: tuple[Kube, list[str]]) -> None:
    client, seen = api
    assert await missing_gang_scheduler(client, "kubernetes") is None
    assert await served_gang_api(client, "kubernetes") == "scheduling.k8s.io/v1alpha2"
    assert seen == ["/apis/scheduling.k8s.io/v1alpha3", "/apis/scheduling.k8s.io/v1alpha2"], "newest first, then cached"
    assert await served_gang_api(client, "none") is None
    assert await served_gang_api(client, "volcano") is None
