"""Fake GPU nodes that look like the nodes of a real GPU cluster.

The labels are the ones NVIDIA's GPU feature discovery and the network operator put on real nodes, so
that node selectors and affinities written for production work unchanged here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "GPU_MEMORY_LABEL",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "IB_BLOCK_LABEL",
    "KWOK_NODE_ANNOTATION",
    "NODE_GPU_TYPES",
    "RDMA_RESOURCE",
    "NodeShape",
    "gpu_node",
]

# Read by kwok (--manage-nodes-with-annotation-selector): only annotated nodes are faked.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
# The resource the Mellanox RDMA shared-device plugin advertises; pods of the rdma network mode ask for it.
RDMA_RESOURCE = "rdma/rdma_shared_device_a"
# GPU feature discovery's labels, read by node selectors written for real clusters.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
# The InfiniBand block (leaf switch group) a node sits in; a gang's topology key points here.
IB_BLOCK_LABEL = "network.topology.kubernetes.io/block"


@dataclass(frozen=True)
class NodeShape:
    product: str     # what GPU feature discovery reports as nvidia.com/gpu.product
    memory_mib: int  # nvidia.com/gpu.memory, per GPU


# The GPU types the local cluster can fake, by the names MiMoDeployment.spec.hardware.gpuType uses.
NODE_GPU_TYPES: dict[str, NodeShape] = {
    "H100-80GB": NodeShape("NVIDIA-H100-80GB-HBM3", 81559),
    "H200-141GB": NodeShape("NVIDIA-H200", 143771),
    "B200-180GB": NodeShape("NVIDIA-B200", 183359),
}


# The conditions a healthy kubelet reports (kwok's own set, from its node-initialize stage).
_CONDITIONS = (
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("NetworkUnavailable", "False", "RouteCreated", "RouteController created a route"),
)


def gpu_node(name: str, gpu_type: str, block: int, gpus: int = 8, now: str | None = None,
             node_ip: str = "127.0.0.1") -> dict[str, Any]:
    """The Node object of one fake 8-GPU node; its status is set on create, which the API allows for nodes.

    With ``now`` (an RFC 3339 time) the node registers already Ready, as a kubelet's first status would
    say, so kwok's node-initialize stage has nothing left to write: one write per node fewer, which is a
    third of the start-up time of 2,000 nodes.
    """
    shape = NODE_GPU_TYPES[gpu_type]
    resources = {
        "cpu": "192",
        "memory": "2Ti",
        "ephemeral-storage": "30Ti",
        "pods": "110",
        "hugepages-2Mi": "0",
        GPU_RESOURCE: str(gpus),
        RDMA_RESOURCE: "1000",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": f"{gpus}x{gpu_type}",
                "topology.kubernetes.io/zone": "local-a",
                IB_BLOCK_LABEL: f"block-{block}",
                "nvidia.com/gpu.present": "true",
                GPU_COUNT_LABEL: str(gpus),
                GPU_PRODUCT_LABEL: shape.product,
                GPU_MEMORY_LABEL: str(shape.memory_mib),
                "feature.node.kubernetes.io/rdma.available": "true",
            },
        },
        "spec": {"providerID": f"kwok://{name}"},
        "status": {"capacity": resources, "allocatable": dict(resources), **(_ready_status(name, now, node_ip)
                                                                              if now else {})},
    }


def _ready_status(name: str, now: str, node_ip: str) -> dict[str, Any]:
    return {
        "phase": "Running",
        "conditions": [{"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": now,
                        "lastTransitionTime": now} for t, s, r, m in _CONDITIONS],
        "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "kwok",
                     "kubeProxyVersion": "kwok", "containerRuntimeVersion": "kwok", "kernelVersion": "kwok",
                     "osImage": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }


def node_names(count: int, blocks: int) -> list[tuple[str, int]]:
    """``count`` node names spread over ``blocks`` InfiniBand blocks, contiguous like racks."""
    return [(f"gpu-node-{i}", i * blocks // count) for i in range(count)]
