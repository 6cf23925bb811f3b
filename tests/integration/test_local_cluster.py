"""The local cluster behaves like a real one: the real scheduler places GPU pods on kwok nodes, the
controller-manager collects garbage, injected failures show through the API, and labelled pods run
as real local processes on their pod IPs."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mimo_operator.localcluster import chaos
from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.podrunner import PROCESS_LABEL
from tests.conftest import NodePool, wait_for

pytestmark = pytest.mark.cluster


def gpu_pod(name: str, gpus: int, pool: NodePool | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{
            "name": "engine", "image": "example.invalid/engine:1",
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        }],
    }
    if pool is not None:
        spec["tolerations"] = [pool.toleration]
        spec["nodeSelector"] = pool.selector
    spec.update(extra)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def create(cluster: LocalCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))


def get_pod(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    return {}


def test_a_pod_asking_for_8_gpus_runs_on_a_kwok_node_and_one_asking_for_9_stays_pending(
        cluster: LocalCluster, namespace: str) -> None:
    create(cluster, namespace, gpu_pod("eight", 8))
    create(cluster, namespace, gpu_pod("nine", 9))

    def running_and_ready() -> dict[str, Any] | None:
        pod = get_pod(cluster, namespace, "eight")
        ok = pod and pod["status"].get("phase") == "Running" and condition(pod, "Ready").get("status") == "True"
        return pod if ok else None

    pod = wait_for(running_and_ready, 60, what="the 8-GPU pod to run")
    node = cluster.kubectl_json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert pod["status"]["podIP"].startswith("127."), "pod IPs live inside 127.0.0.0/8"

    def unschedulable() -> dict[str, Any]:
        return condition(get_pod(cluster, namespace, "nine"), "PodScheduled")

    scheduled = wait_for(lambda: unschedulable().get("reason") == "Unschedulable" and unschedulable(), 60,
                         what="the scheduler to refuse the 9-GPU pod")
    assert "nvidia.com/gpu" in scheduled["message"]
    assert get_pod(cluster, namespace, "nine")["status"]["phase"] == "Pending"


def test_four_8_gpu_pods_on_three_nodes_exactly_three_run(
        cluster: LocalCluster, namespace: str, node_pool: NodePool) -> None:
    node_pool.add(3)
    for i in range(4):
        create(cluster, namespace, gpu_pod(f"p{i}", 8, node_pool))

    def phases() -> list[str]:
        pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
        return sorted(p["status"].get("phase", "") for p in pods)

    wait_for(lambda: phases() == ["Pending", "Running", "Running", "Running"], 60, what="3 running, 1 pending")
    pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    nodes = {p["spec"].get("nodeName") for p in pods if p["status"]["phase"] == "Running"}
    assert nodes == set(node_pool.names), "one 8-GPU pod per node"


def test_an_owned_config_map_is_garbage_collected_with_its_owner(cluster: LocalCluster, namespace: str) -> None:
    create(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    owner = cluster.kubectl_json("get", "configmap", "owner", "-n", namespace)
    create(cluster, namespace, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]},
    })
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    def gone() -> bool:
        return cluster.kubectl("get", "configmap", "owned", "-n", namespace, check=False).returncode != 0

    wait_for(gone, 60, what="the garbage collector to delete the owned ConfigMap")


def test_a_node_made_not_ready_reports_it_and_recovers(cluster: LocalCluster, node_pool: NodePool) -> None:
    (node,) = node_pool.add(1)
    chaos.make_node_not_ready(cluster, node)
    wait_for(lambda: condition(cluster.kubectl_json("get", "node", node), "Ready").get("status") == "False", 30,
             what="the node to report NotReady")
    chaos.make_node_ready(cluster, node)
    wait_for(lambda: condition(cluster.kubectl_json("get", "node", node), "Ready").get("status") == "True", 30,
             what="the node to become Ready again")


def test_a_failed_pod_shows_failed_with_its_exit_code(cluster: LocalCluster, namespace: str) -> None:
    create(cluster, namespace, gpu_pod("victim", 8, restartPolicy="Never"))
    wait_for(lambda: (get_pod(cluster, namespace, "victim") or {}).get("status", {}).get("phase") == "Running", 60,
             what="the pod to run")
    chaos.fail_pod(cluster, namespace, "victim", exit_code=3)

    def failed() -> dict[str, Any] | None:
        pod = get_pod(cluster, namespace, "victim")
        return pod if pod and pod["status"].get("phase") == "Failed" else None

    pod = wait_for(failed, 30, what="the pod to fail")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3


def test_deleting_a_node_removes_its_pods(cluster: LocalCluster, namespace: str, node_pool: NodePool) -> None:
    (node,) = node_pool.add(1)
    create(cluster, namespace, gpu_pod("orphan", 8, node_pool))
    wait_for(lambda: (get_pod(cluster, namespace, "orphan") or {}).get("spec", {}).get("nodeName") == node, 60,
             what="the pod to be bound to the pool's node")
    chaos.delete_node(cluster, node)
    wait_for(lambda: get_pod(cluster, namespace, "orphan") is None, 90,
             what="the pod garbage collector to remove the pod of the deleted node")


# -- local pod processes -------------------------------------------------------------------------

SERVER = """
import http.server, os, sys
ip, port = os.environ["POD_IP"], int(os.environ["PORT"])
plan = open("/etc/mimo/launch/plan.txt").read()
note = open("/etc/mimo/pod/note.txt").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['POD_NAME']} {plan} {note} {os.getpid()}".encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((ip, port), H).serve_forever()
"""


def process_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {PROCESS_LABEL: "true"}, "annotations": {"example.com/note": "noted"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "server", "image": "example.invalid/server:1",
                "command": ["python", "-c", SERVER],
                "ports": [{"name": "http", "containerPort": 18080}],
                "env": [
                    {"name": "PORT", "value": "18080"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "launch", "mountPath": "/etc/mimo/launch"},
                                 {"name": "pod", "mountPath": "/etc/mimo/pod"}],
            }],
            "volumes": [{"name": "launch", "configMap": {"name": "launch-plan"}},
                        {"name": "pod", "downwardAPI": {"items": [{"path": "note.txt", "fieldRef": {
                            "fieldPath": "metadata.annotations['example.com/note']"}}]}}],
        },
    }


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_labelled_pod_runs_its_command_as_a_local_process_on_its_pod_ip(
        cluster: LocalCluster, namespace: str) -> None:
    create(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "launch-plan"},
                                "data": {"plan.txt": "plan-v1"}})
    create(cluster, namespace, process_pod("server"))

    def ready() -> dict[str, Any] | None:
        pod = get_pod(cluster, namespace, "server")
        return pod if condition(pod, "Ready").get("status") == "True" else None

    pod = wait_for(ready, 60, what="the process's readiness probe to pass")
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:18080/", timeout=5) as resp:
        name, plan, note, pid_text = resp.read().decode().split()
    assert (name, plan) == ("server", "plan-v1"), "env from the pod and the ConfigMap volume at its mount path"
    assert note == "noted", "the pod's annotation through a downward-API volume"
    pid = int(pid_text)
    assert pid_exists(pid)

    os.kill(pid, signal.SIGKILL)

    def failed() -> dict[str, Any] | None:
        p = get_pod(cluster, namespace, "server")
        return p if p and p["status"].get("phase") == "Failed" else None

    pod = wait_for(failed, 30, what="the killed process to fail its pod")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 128 + signal.SIGKILL


def test_deleting_a_labelled_pod_stops_its_process(cluster: LocalCluster, namespace: str) -> None:
    create(cluster, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "launch-plan"},
                                "data": {"plan.txt": "plan-v2"}})
    create(cluster, namespace, process_pod("short-lived"))
    pod = wait_for(lambda: (p := get_pod(cluster, namespace, "short-lived")) and
                   condition(p, "Ready").get("status") == "True" and p, 60, what="the pod to be ready")
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:18080/", timeout=5) as resp:
        pid = int(resp.read().decode().split()[3])
    cluster.kubectl("delete", "pod", "short-lived", "-n", namespace, "--wait=false")
    wait_for(lambda: not pid_exists(pid), 30, what="the process to stop")
    wait_for(lambda: get_pod(cluster, namespace, "short-lived") is None, 30, what="the pod object to go")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
