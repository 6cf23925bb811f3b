"""Runs the real operator against the local cluster, under exactly the chart's RBAC rules."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.processes import free_port
from tests.conftest import REPO, wait_for

RULES = REPO / "charts" / "mimo-operator" / "files" / "operator-rules.yaml"
CLUSTER_RULES = REPO / "charts" / "mimo-operator" / "files" / "cluster-rules.yaml"
CRD = REPO / "crds" / "mimodeployment.yaml"
OPERATOR_NS = "mimo-system"
SA = "mimo-operator"


def install_rbac(cluster: LocalCluster) -> str:
    """The operator's ServiceAccount bound to a ClusterRole with the chart's rules; returns a token."""
    cluster.apply_crd(CRD)
    manifests = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "mimo-operator-test"},
         "rules": yaml.safe_load(RULES.read_text()) + yaml.safe_load(CLUSTER_RULES.read_text())},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "mimo-operator-test"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "mimo-operator-test"},
         "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": OPERATOR_NS}]},
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    return cluster.kubectl("create", "token", SA, "-n", OPERATOR_NS, "--duration=4h").stdout.strip()


def token_kubeconfig(cluster: LocalCluster, token: str, path: Path) -> Path:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": "local", "user": SA}}],
        "current-context": "op",
    }))
    return path


class RunningOperator:
    def __init__(self, cluster: LocalCluster, kubeconfig: Path, log: Path, extra: list[str]) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.log = log
        self.extra = extra
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_NAMESPACE": OPERATOR_NS}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mimo_operator", "-A", "--metrics-address", f"127.0.0.1:{self.metrics_port}",
                 "--health-address", f"127.0.0.1:{self.health_port}", *self.extra],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for(self.healthy, 60, what=f"the operator's /healthz (log: {self.log})")

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the operator exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def metrics(self) -> dict[str, float]:
        """Sample name{labels} → value, summed over labels for the plain name too."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
                key = sample.name + json.dumps(sample.labels, sort_keys=True)
                out[key] = sample.value
        return out

    def writes(self) -> float:
        return self.metrics().get("mimo_operator_api_writes_total", 0.0)

    def writes_by_kind(self) -> dict[str, float]:
        """The API writes made so far, by verb and kind (``mimo_operator_api_writes_total``)."""
        prefix = "mimo_operator_api_writes_total{"
        return {k[len(prefix) - 1:]: v for k, v in self.metrics().items() if k.startswith(prefix) and v}

    def reconciles(self) -> float:
        return self.metrics().get("mimo_operator_reconciles_total", 0.0)


def delete_left_behind(cluster: LocalCluster) -> None:
    """Delete the MiMoDeployments that earlier tests left in namespaces being deleted (a test's namespace goes
    without waiting): a new operator would otherwise reconcile them, and its writes and reconciles, which the tests
    count, would include theirs."""
    going = {ns["metadata"]["name"] for ns in cluster.kubectl_json("get", "namespaces")["items"]
             if ns["metadata"].get("deletionTimestamp")}
    left: dict[str, list[str]] = {}
    for obj in cluster.kubectl_json("get", "mimodeployments", "-A")["items"]:
        if obj["metadata"]["namespace"] in going:
            left.setdefault(obj["metadata"]["namespace"], []).append(obj["metadata"]["name"])
    for ns, names in left.items():
        cluster.kubectl("delete", "mimodeployments", "-n", ns, "--ignore-not-found", "--wait=true", *names)


def operator_fixture(cluster: LocalCluster, tmp: Path, extra: list[str]) -> Iterator[RunningOperator]:
    token = install_rbac(cluster)
    delete_left_behind(cluster)
    kubeconfig = token_kubeconfig(cluster, token, tmp / "operator.kubeconfig")
    op = RunningOperator(cluster, kubeconfig, tmp / "operator.log", extra)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def get(cluster: LocalCluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def engine_pods(cluster: LocalCluster, namespace: str, deployment: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l",
        f"mimo-operator.io/deployment={deployment},app.kubernetes.io/component=engine")["items"]
    return items


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def wait_phase(cluster: LocalCluster, namespace: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(cluster, "mimodeployment", namespace, name)
        return obj if obj and (obj.get("status") or {}).get("phase") == phase else None

    result: dict[str, Any] = wait_for(check, timeout, what=f"{namespace}/{name} to reach phase {phase}")
    return result


def now() -> float:
    return time.time()
