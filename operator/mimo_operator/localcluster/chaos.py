"""Failures injected through kwok's chaos stages, observable through the API like real ones.

- a node NotReady: kwok's node-not-ready stage (label), reverted by removing the label;
- a pod failed: kwok's pod-container-running-failed stage (label) — for a local-process pod, the pod
  runner also stops its process, as a dying container would;
- a node deleted: the pod garbage collector removes its pods.
"""

from __future__ import annotations

from mimo_operator.localcluster.cluster import LocalCluster

__all__ = ["delete_node", "fail_pod", "make_node_not_ready", "make_node_ready"]

_NODE_NOT_READY = "node-not-ready.stage.kwok.x-k8s.io"
_POD_FAILED = "pod-container-running-failed.stage.kwok.x-k8s.io"


def make_node_not_ready(cluster: LocalCluster, node: str) -> None:
    cluster.kubectl("label", "node", node, f"{_NODE_NOT_READY}=true", "--overwrite")


def make_node_ready(cluster: LocalCluster, node: str) -> None:
    cluster.kubectl("label", "node", node, f"{_NODE_NOT_READY}-")


def fail_pod(cluster: LocalCluster, namespace: str, pod: str, exit_code: int = 1) -> None:
    cluster.kubectl("annotate", "pod", "-n", namespace, pod,
                    f"{_POD_FAILED}/exit-code={exit_code}", "--overwrite")
    cluster.kubectl("label", "pod", "-n", namespace, pod, f"{_POD_FAILED}=true", "--overwrite")


def delete_node(cluster: LocalCluster, node: str) -> None:
    cluster.kubectl("delete", "node", node, "--wait=false")
