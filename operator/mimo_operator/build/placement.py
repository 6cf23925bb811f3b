"""Where engine-side pods may run: shared by gang pods and the weights pods that must reach the same nodes."""

from __future__ import annotations

from typing import Any

from mimo_operator.spec import DeploymentSpec

__all__ = ["GPU_TAINT_TOLERATION", "gang_tolerations"]

# GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule so that only GPU workloads land there.
GPU_TAINT_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gang_tolerations(spec: DeploymentSpec) -> list[dict[str, Any]]:
    """The tolerations of a gang's pods: the GPU taint plus the spec's own."""
    return [dict(GPU_TAINT_TOLERATION)] + [t.model_dump(by_alias=True, exclude_none=True)
                                           for t in spec.hardware.tolerations or []]
