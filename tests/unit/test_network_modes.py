"""Each network mode's gang pod against the documented examples it follows.

- hostNetwork: SGLang's LWS example (sgl-project/sglang docs/references/multi_node_deployment/lws_pd/lws-examples/
  d.yaml and p.yaml): hostNetwork, hostIPC, dnsPolicy ClusterFirstWithHostNet, a privileged container with
  IPC_LOCK, /dev/infiniband from the host and a memory-backed /dev/shm.
- hostNetwork with privileged false, and rdma: the NVIDIA network operator's RDMA shared device plugin
  (resource rdma/rdma_shared_device_a) with IPC_LOCK, no privileged container.
- sriov: the NVIDIA network operator's SR-IOV examples: one VF per attachment through the SR-IOV device
  plugin's resource, the attachments named in k8s.v1.cni.cncf.io/networks, IPC_LOCK.
"""

from __future__ import annotations

from typing import Any

import pytest

from mimo_operator.build import BuildContext, gang_objects
from mimo_operator.errors import SpecError
from mimo_operator.planner import node_nic_gbps, plan_deployment
from mimo_operator.spec import parse_spec
from tests.helpers.specs import DeploymentBuilder, a_deployment

PRO = a_deployment("pro").pro().h200()
SRIOV = {"resourceName": "nvidia.com/sriov_ib_vf", "networks": [f"ib-vf-{i}" for i in range(8)]}


def pod_of(builder: DeploymentBuilder, rank: int = 0) -> dict[str, Any]:
    manifest = builder.build()
    spec = parse_spec(manifest)
    ctx = BuildContext(name=manifest["metadata"]["name"], namespace="serving", uid="uid-1", spec=spec,
                       plan=plan_deployment(spec))
    return [o for o in gang_objects(ctx, 0, 1, "abc") if o["kind"] == "Pod"][rank]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def mounts(pod: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container(pod).get("volumeMounts", [])}


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["spec"]["volumes"]}


def test_host_network_is_sglangs_lws_example() -> None:
    pod = pod_of(PRO.network("hostNetwork"))
    spec, security = pod["spec"], container(pod)["securityContext"]
    assert (spec["hostNetwork"], spec["hostIPC"], spec["dnsPolicy"]) == (True, True, "ClusterFirstWithHostNet")
    assert security["privileged"] is True
    assert "IPC_LOCK" in security["capabilities"]["add"]
    assert volumes(pod)[mounts(pod)["/dev/infiniband"]]["hostPath"]["path"] == "/dev/infiniband"
    assert volumes(pod)[mounts(pod)["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_host_network_without_privileged_takes_the_rdma_device_plugins_resource() -> None:
    pod = pod_of(PRO.network("hostNetwork", privileged=False))
    security = container(pod)["securityContext"]
    assert "privileged" not in security
    assert security["capabilities"]["add"] == ["IPC_LOCK", "SYS_RESOURCE"]
    assert container(pod)["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    assert "/dev/infiniband" not in mounts(pod)  # the device plugin brings the devices
    custom = pod_of(PRO.network("hostNetwork", privileged=False, rdma={"resourceName": "rdma/ib", "resourceCount": 2}))
    assert container(custom)["resources"]["limits"]["rdma/ib"] == "2"


def test_rdma_mode_keeps_the_pod_network_with_the_shared_device_plugin() -> None:
    pod = pod_of(PRO.network("rdma", rdma={"networks": ["ib-0"]}))
    assert "hostNetwork" not in pod["spec"]
    assert "privileged" not in container(pod)["securityContext"]
    assert "IPC_LOCK" in container(pod)["securityContext"]["capabilities"]["add"]
    assert container(pod)["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-0"


def test_sriov_gives_every_gpu_its_own_vf() -> None:
    pod = pod_of(PRO.network("sriov", sriov=SRIOV))
    limits = container(pod)["resources"]["limits"]
    assert limits["nvidia.com/sriov_ib_vf"] == "8" == limits["nvidia.com/gpu"]
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == ",".join(SRIOV["networks"])
    assert "hostNetwork" not in pod["spec"]
    security = container(pod)["securityContext"]
    assert "privileged" not in security
    assert "IPC_LOCK" in security["capabilities"]["add"]
    plan = plan_deployment(parse_spec(PRO.network("sriov", sriov=SRIOV).build()))
    assert plan.moe_a2a_backend == "deepep"  # RDMA between nodes
    assert plan.env["NCCL_SOCKET_IFNAME"] == "eth0"  # bootstrap over the pod's own interface
    assert "NCCL_IB_DISABLE" not in plan.env


@pytest.mark.parametrize(("network", "field"), [
    ({"mode": "sriov"}, "spec.network.sriov"),
    ({"mode": "rdma", "sriov": SRIOV}, "spec.network.sriov"),
    ({"mode": "sriov", "sriov": {"resourceName": "nvidia.com/vf", "networks": []}}, "spec.network.sriov.networks"),
    ({"mode": "sriov", "sriov": {"resourceName": "not a resource", "networks": ["a"]}},
     "spec.network.sriov.resourceName"),
    ({"mode": "hostNetwork", "rdma": {"resourceName": "rdma/ib"}}, "spec.network.rdma"),
])
def test_sriov_and_rdma_settings_belong_to_their_modes(network: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(PRO.set("network", network).build())
    assert refused.value.field == field


def test_the_fabric_expectation_is_the_nodes_nic_total() -> None:
    assert node_nic_gbps(parse_spec(PRO.build())) == 400.0  # 8 GPUs, one 400 Gb/s NDR port each
    hdr = parse_spec(PRO.network("hostNetwork", ibDevices=["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"],
                                 linkSpeedGbps=200).build())
    assert node_nic_gbps(hdr) == 100.0
