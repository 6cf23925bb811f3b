"""The API client's informer on the real API server: it keeps a kind's labelled objects from a list and a
watch, answers the lists it can from them, tells every change, and after a gap in its watch tells what
changed meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mimo_operator.kube import Informer, Kube
from mimo_operator.localcluster.cluster import LocalCluster
from tests.integration.test_weights_cluster import kube_of

pytestmark = [pytest.mark.cluster]

KEY = "test.mimo-operator.io/deployment"


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[Kube]:
    client = kube_of(cluster)
    yield client
    await client.close()


def config_map(namespace: str, name: str, labels: dict[str, str], data: str = "1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": {"v": data},
            "metadata": {"name": name, "namespace": namespace, "labels": labels}}


async def until(predicate: Any, what: str, limit: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def names(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


async def test_lists_are_answered_from_the_watch_once_it_has_listed(kube: Kube, namespace: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    await kube.create(config_map(namespace, "before", {KEY: "a"}))
    await kube.create(config_map(namespace, "other", {KEY: "b", "extra": "x"}))
    await kube.create(config_map(namespace, "unlabelled", {"extra": "x"}))
    events: list[tuple[str, str, str]] = []
    informer = kube.informer("v1", "ConfigMap", namespace, KEY,
                             lambda kind, obj: events.append((kind, obj["metadata"]["name"],
                                                              obj.get("data", {}).get("v", ""))))
    assert not informer.covers("v1", "ConfigMap", namespace, {KEY: "a"}), "nothing is served before the list"
    task = asyncio.create_task(informer.run())
    try:
        await until(lambda: informer.synced, "the first list")
        assert ("ADDED", "before", "1") in events
        await kube.create(config_map(namespace, "after", {KEY: "a"}))
        await kube.merge_patch("v1", "ConfigMap", namespace, "before", {"data": {"v": "2"}})
        await kube.delete("v1", "ConfigMap", namespace, "other")
        await until(lambda: ("DELETED", "other", "1") in events, "the deletion")
        assert ("ADDED", "after", "1") in events
        assert ("MODIFIED", "before", "2") in events
        # A label value edited: the object moves from one value's lists to the other's.
        await kube.create(config_map(namespace, "moves", {KEY: "a"}))
        await until(lambda: (namespace, "moves") in informer.objects, "the new object in the cache")
        await kube.merge_patch("v1", "ConfigMap", namespace, "moves", {"metadata": {"labels": {KEY: "b"}}})
        await until(lambda: names(informer.select(namespace, {KEY: "b"})) == ["moves"], "the relabelled object")

        served = 0

        async def no_api(*args: Any, **kwargs: Any) -> Any:
            nonlocal served
            served += 1
            raise AssertionError("asked the API server")

        monkeypatch.setattr(kube, "_request", no_api)
        assert names(await kube.list("v1", "ConfigMap", namespace, {KEY: "a"})) == ["after", "before"]
        assert names(await kube.list("v1", "ConfigMap", namespace, {KEY: "a", "extra": None})) == ["after", "before"]
        assert await kube.list("v1", "ConfigMap", namespace, {KEY: "a", "extra": "x"}) == []
        listed = await kube.list("v1", "ConfigMap", namespace, {KEY: "a"})
        assert all("managedFields" not in o["metadata"] for o in listed), "managed fields are not kept"
        assert served == 0
        # A selector that does not name the informer's label, another namespace, another kind: the API server.
        for args in (("v1", "ConfigMap", namespace, {"extra": "x"}), ("v1", "ConfigMap", "default", {KEY: "a"}),
                     ("v1", "Service", namespace, {KEY: "a"})):
            with pytest.raises(AssertionError, match="asked the API server"):
                await kube.list(*args)
        assert served == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_what_changed_while_no_watch_was_open_is_told_when_it_lists_again(kube: Kube, namespace: str) -> None:
    await kube.create(config_map(namespace, "stays", {KEY: "a"}))
    await kube.create(config_map(namespace, "goes", {KEY: "a"}))
    events: list[tuple[str, str]] = []
    informer = kube.informer("v1", "ConfigMap", namespace, KEY,
                             lambda kind, obj: events.append((kind, obj["metadata"]["name"])))
    task = asyncio.create_task(informer.run())
    await until(lambda: informer.synced, "the first list")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    # The watch is down (as after an error or an expired version): the cache is not served, then listed again.
    informer.synced = False
    await kube.delete("v1", "ConfigMap", namespace, "goes")
    await kube.create(config_map(namespace, "new", {KEY: "a"}))
    events.clear()
    assert names(await kube.list("v1", "ConfigMap", namespace, {KEY: "a"})) == ["new", "stays"]
    task = asyncio.create_task(informer.run())
    try:
        await until(lambda: informer.synced, "the second list")
        assert ("DELETED", "goes") in events
        assert ("ADDED", "new") in events
        assert sorted(name for _, name in informer.objects) == ["new", "stays"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_listener_that_fails_does_not_stop_the_cache(kube: Kube, namespace: str) -> None:
    def broken(kind: str, obj: dict[str, Any]) -> None:
        raise RuntimeError("a bug")

    informer: Informer = kube.informer("v1", "ConfigMap", namespace, KEY, broken)
    task = asyncio.create_task(informer.run())
    try:
        await until(lambda: informer.synced, "the first list")
        await kube.create(config_map(namespace, "seen", {KEY: "a"}))
        await until(lambda: (namespace, "seen") in informer.objects, "the new object in the cache")
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
