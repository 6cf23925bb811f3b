"""The operator's API client: paths of the kinds it writes, and a rotated service-account token is used."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mimo_operator import kube
from mimo_operator.kube import Kube, KubeConfig, path_of


def test_paths_of_namespaced_cluster_scoped_and_sub_resources() -> None:
    assert path_of("v1", "Pod", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert path_of("v1", "Node", None, "n") == "/api/v1/nodes/n"
    assert path_of("serving.mimo-operator.io/v1alpha1", "MiMoDeployment", "ns", "d", "scale") == \
        "/apis/serving.mimo-operator.io/v1alpha1/namespaces/ns/mimodeployments/d/scale"


def test_a_label_selector_can_ask_for_a_label_to_be_absent() -> None:
    # The shared objects are listed without the gangs' own: deployment=d,!gang.
    assert kube._selector({"mimo/gang": None, "mimo/deployment": "d"}) == "mimo/deployment=d,!mimo/gang"


async def test_a_rotated_token_file_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    client = Kube(KubeConfig(server="https://127.0.0.1:1", token="first", token_path=str(token), insecure=True))
    try:
        assert client._current_token() == "first"
        token.write_text("second\n")
        assert client._current_token() == "first", "not re-read on every request"
        monkeypatch.setattr(kube, "_TOKEN_REREAD_SECONDS", 0.0)
        assert client._current_token() == "second"
    finally:
        await client.close()


async def test_an_informer_that_cannot_list_serves_nothing_and_tries_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "_RETRY_SECONDS", (0.01, 0.02))
    client = Kube(KubeConfig(server="https://127.0.0.1:1", insecure=True))  # nothing listens there
    informer = client.informer("v1", "Pod", "ns", "mimo/deployment")
    task = asyncio.create_task(informer.run())
    try:
        for _ in range(200):
            if informer._failures >= 3:
                break
            await asyncio.sleep(0.01)
        assert informer._failures >= 3, "it keeps trying"
        assert not informer.synced
        assert not informer.covers("v1", "Pod", "ns", {"mimo/deployment": "d"})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


def test_the_cache_answers_a_selector_as_the_api_server_would() -> None:
    informer = kube.Informer(None, "v1", "Pod", None, "d", None)  # type: ignore[arg-type]
    informer.synced = True
    for key, obj in {
        ("a", "p1"): {"metadata": {"name": "p1", "labels": {"d": "x", "c": "engine"}}},
        ("a", "p2"): {"metadata": {"name": "p2", "labels": {"d": "x", "c": "router"}}},
        ("b", "p3"): {"metadata": {"name": "p3", "labels": {"d": "x", "c": "engine", "g": "0"}}},
        ("a", "p4"): {"metadata": {"name": "p4", "labels": {"d": "y"}}},
    }.items():
        informer._keep(key, obj)
    assert informer.covers("v1", "Pod", "a", {"d": "x"})
    assert informer.covers("v1", "Pod", None, {"d": "x"})
    assert not informer.covers("v1", "Pod", "a", {"c": "engine"}), "the informer's label must be named"
    assert not informer.covers("v1", "Pod", "a", {"d": None}), "its absence is not what it keeps"
    assert not informer.covers("v1", "Service", "a", {"d": "x"})

    def select(ns: str | None, labels: dict[str, str | None]) -> list[str]:
        return sorted(o["metadata"]["name"] for o in informer.select(ns, labels))

    assert select("a", {"d": "x"}) == ["p1", "p2"]
    assert select("a", {"d": "x", "c": "engine"}) == ["p1"]
    assert select(None, {"d": "x", "c": "engine"}) == ["p1", "p3"]
    assert select(None, {"d": "x", "g": None}) == ["p1", "p2"]
    assert select("a", {"d": "y"}) == ["p4"]
    assert select("b", {"d": "y"}) == []

    # A label value edited moves the object between the deployments' lists; a deleted one leaves both.
    informer._keep(("a", "p1"), {"metadata": {"name": "p1", "labels": {"d": "y", "c": "engine"}}})
    assert select("a", {"d": "x"}) == ["p2"]
    assert select("a", {"d": "y"}) == ["p1", "p4"]
    assert select(None, {"d": "y"}) == ["p1", "p4"]
    informer._forget(("a", "p4"))
    informer._forget(("a", "gone"))
    assert select("a", {"d": "y"}) == ["p1"]
    assert select(None, {"d": "y"}) == ["p1"]


async def test_each_request_is_timed_by_verb_from_made_to_answered() -> None:
    from aiohttp import web

    async def slow_patch(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response({"metadata": {"name": request.match_info["name"]}})

    app = web.Application()
    app.router.add_patch("/api/v1/namespaces/ns/configmaps/{name}", slow_patch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = Kube(KubeConfig(server=f"http://127.0.0.1:{port}"))

    def seen() -> tuple[float, float]:
        child = kube.API_SECONDS.labels("patch")
        return child._sum.get(), sum(b.get() for b in child._buckets)

    try:
        total0, count0 = seen()
        await asyncio.gather(*(client.merge_patch("v1", "ConfigMap", "ns", f"c{i}", {"data": {}}) for i in range(3)))
        total, count = seen()
        assert count - count0 == 3
        assert total - total0 >= 3 * 0.05
    finally:
        await client.close()
        await runner.cleanup()
