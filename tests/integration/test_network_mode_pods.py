"""Each network mode's gang pod, as the builders render it, is admitted by the real apiserver and keeps, as stored,
the devices, capabilities and resources its mode needs (the shapes themselves: tests/unit/test_network_modes.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mimo_operator.build import BuildContext, gang_objects
from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from tests.helpers.specs import DeploymentBuilder, a_deployment

pytestmark = pytest.mark.cluster

PRO = a_deployment("pro").pro().h200()
SRIOV = {"resourceName": "nvidia.com/sriov_ib_vf", "networks": [f"ib-vf-{i}" for i in range(8)]}
MODES: dict[str, DeploymentBuilder] = {
    "hostnetwork-privileged": PRO.network("hostNetwork"),
    "hostnetwork-unprivileged": PRO.network("hostNetwork", privileged=False),
    "rdma": PRO.network("rdma", rdma={"networks": ["ib-0"]}),
    "sriov": PRO.network("sriov", sriov=SRIOV),
}


def head_pod(builder: DeploymentBuilder, namespace: str) -> dict[str, Any]:
    manifest = builder.build()
    spec = parse_spec(manifest)
    ctx = BuildContext(name=manifest["metadata"]["name"], namespace=namespace, uid="uid-1", spec=spec,
                       plan=plan_deployment(spec))
    pod = next(o for o in gang_objects(ctx, 0, 1, "abc") if o["kind"] == "Pod")
    pod["metadata"].pop("ownerReferences", None)  # no MiMoDeployment object behind it here
    return pod


def test_each_network_modes_pod_is_admitted_with_what_its_mode_needs(cluster: LocalCluster, namespace: str) -> None:
    stored: dict[str, dict[str, Any]] = {}
    for mode, builder in MODES.items():
        pod = head_pod(builder, namespace)
        pod["metadata"]["name"] = f"{mode}-0"
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
        stored[mode] = cluster.kubectl_json("get", "pod", f"{mode}-0", "-n", namespace)

    def engine(mode: str) -> dict[str, Any]:
        container: dict[str, Any] = stored[mode]["spec"]["containers"][0]
        return container

    def caps(mode: str) -> list[str]:
        return list(engine(mode)["securityContext"]["capabilities"]["add"])

    privileged = stored["hostnetwork-privileged"]
    assert privileged["spec"]["hostNetwork"] is True
    assert privileged["spec"]["hostIPC"] is True
    assert engine("hostnetwork-privileged")["securityContext"]["privileged"] is True
    assert "IPC_LOCK" in caps("hostnetwork-privileged")
    assert any(v.get("hostPath", {}).get("path") == "/dev/infiniband" for v in privileged["spec"]["volumes"])

    unprivileged = stored["hostnetwork-unprivileged"]
    assert unprivileged["spec"]["hostNetwork"] is True
    assert not engine("hostnetwork-unprivileged")["securityContext"].get("privileged")
    assert {"IPC_LOCK", "SYS_RESOURCE"} <= set(caps("hostnetwork-unprivileged"))
    assert engine("hostnetwork-unprivileged")["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"

    rdma = stored["rdma"]
    assert not rdma["spec"].get("hostNetwork")
    assert "IPC_LOCK" in caps("rdma")
    assert engine("rdma")["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
    assert rdma["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-0"

    sriov = stored["sriov"]
    limits = engine("sriov")["resources"]["limits"]
    assert limits["nvidia.com/sriov_ib_vf"] == "8" == limits["nvidia.com/gpu"]
    assert sriov["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == ",".join(SRIOV["networks"])
    assert "IPC_LOCK" in caps("sriov")
    assert not engine("sriov")["securityContext"].get("privileged")
