"""Fixtures shared by every test: the local cluster (one per test run) and per-test namespaces."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mimo_operator.localcluster.binaries import binaries_missing
from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.nodes import gpu_node

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, what: str = "") -> Any:
    """Poll until ``predicate`` returns something truthy; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One real control plane with kwok GPU nodes for the whole run; stopped when the run ends."""
    if missing := binaries_missing():
        message = f"local cluster binaries not built ({', '.join(missing)}): run hack/build-binaries.sh"
        if os.environ.get("MIMO_REQUIRE_CLUSTER"):
            pytest.fail(message)
        pytest.skip(message)
    state_dir = tmp_path_factory.mktemp("local-cluster")
    local = LocalCluster.up(state_dir, nodes=int(os.environ.get("MIMO_TEST_NODES", "6")), exit_with_parent=True)
    try:
        yield local
    finally:
        local.down()


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, with its default ServiceAccount in place."""
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    cluster.kubectl("create", "namespace", name)

    def has_sa() -> bool:
        return cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0

    wait_for(has_sa, 30, what=f"the default ServiceAccount in {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


class NodePool:
    """Fake GPU nodes of a test's own, tainted so that only pods tolerating the taint land on them."""

    def __init__(self, cluster: LocalCluster, key: str) -> None:
        self.cluster = cluster
        self.key = key
        self.names: list[str] = []

    @property
    def toleration(self) -> dict[str, str]:
        return {"key": "mimo-test/pool", "operator": "Equal", "value": self.key, "effect": "NoSchedule"}

    @property
    def selector(self) -> dict[str, str]:
        return {"mimo-test/pool": self.key}

    def add(self, count: int, gpu_type: str = "H200-141GB", block: int = 0) -> list[str]:
        added = []
        for i in range(count):
            node = gpu_node(f"pool-{self.key}-{len(self.names) + i}", gpu_type, block=block)
            node["metadata"]["labels"].update(self.selector)
            node["spec"]["taints"] = [{"key": "mimo-test/pool", "value": self.key, "effect": "NoSchedule"}]
            self.cluster.kubectl("create", "-f", "-", input=json.dumps(node))
            added.append(node["metadata"]["name"])
        self.names += added

        def schedulable() -> bool:
            for name in added:
                node = self.cluster.kubectl_json("get", "node", name)
                ready = any(c["type"] == "Ready" and c["status"] == "True"
                            for c in node.get("status", {}).get("conditions", []))
                tainted = any(t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", []))
                if not ready or tainted:
                    return False
            return True

        wait_for(schedulable, 60, what=f"nodes {added} to become schedulable")
        return added

    def remove_all(self) -> None:
        if self.names:
            self.cluster.kubectl("delete", "node", *self.names, "--wait=false", check=False)
        self.names.clear()


@pytest.fixture
def node_pool(cluster: LocalCluster) -> Iterator[NodePool]:
    pool = NodePool(cluster, uuid.uuid4().hex[:6])
    yield pool
    pool.remove_all()
