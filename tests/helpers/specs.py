"""A fluent builder of MiMoDeployment manifests for tests.

    a_deployment().pro().h200().replicas(2).build()

returns a manifest dict (apiVersion, kind, metadata, spec) that ``parse_spec`` and the apiserver accept
unless a step made it invalid on purpose. Each step returns a new builder, so a base can be shared.
"""

from __future__ import annotations

import copy
from typing import Any

API_VERSION = "serving.mimo-operator.io/v1alpha1"
KIND = "MiMoDeployment"


class DeploymentBuilder:
    def __init__(self, manifest: dict[str, Any]) -> None:
        self._manifest = manifest

    def _with(self, path: str, value: Any) -> DeploymentBuilder:
        """A copy with ``spec.<path>`` (dotted) set to ``value``; None removes the field."""
        manifest = copy.deepcopy(self._manifest)
        node = manifest["spec"]
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
        return DeploymentBuilder(manifest)

    # --- model
    def variant(self, name: str) -> DeploymentBuilder:
        return self._with("model.variant", name)

    def v25(self) -> DeploymentBuilder:
        return self.variant("MiMo-V2.5")

    def v25_base(self) -> DeploymentBuilder:
        return self.variant("MiMo-V2.5-Base")

    def pro(self) -> DeploymentBuilder:
        return self.variant("MiMo-V2.5-Pro")

    def pro_base(self) -> DeploymentBuilder:
        return self.variant("MiMo-V2.5-Pro-Base")

    def bf16(self, path: str = "/models/bf16") -> DeploymentBuilder:
        """BF16 weights, which need a BF16 checkpoint: by default from a path on a volume."""
        return self._with("model.precision", "bf16")._with("model.source", {"path": path})

    def kv_fp8(self) -> DeploymentBuilder:
        return self._with("model.kvCacheDtype", "fp8")

    def context(self, tokens: int) -> DeploymentBuilder:
        return self._with("model.contextLength", tokens)

    def source(self, **source: str) -> DeploymentBuilder:
        return self._with("model.source", source)

    def cache(self, mode: str, **more: Any) -> DeploymentBuilder:
        return self._with("model.cache", {"mode": mode, **more})

    # --- hardware
    def gpu(self, name: str) -> DeploymentBuilder:
        return self._with("hardware.gpuType", name)

    def h100(self) -> DeploymentBuilder:
        return self.gpu("H100-80GB")

    def h200(self) -> DeploymentBuilder:
        return self.gpu("H200-141GB")

    def b200(self) -> DeploymentBuilder:
        return self.gpu("B200-180GB")

    def gpus_per_node(self, count: int) -> DeploymentBuilder:
        return self._with("hardware.gpusPerNode", count)

    # --- network
    def network(self, mode: str, **more: Any) -> DeploymentBuilder:
        return self._with("network", {"mode": mode, **more})

    # --- parallelism and engine
    def nodes(self, count: int) -> DeploymentBuilder:
        return self._with("parallelism.nodesPerReplica", count)

    def parallelism(self, **fields: Any) -> DeploymentBuilder:
        builder = self
        for key, value in fields.items():
            builder = builder._with(f"parallelism.{key}", value)
        return builder

    def mtp(self, on: bool) -> DeploymentBuilder:
        return self._with("parallelism.mtp", on)

    def engine(self, **fields: Any) -> DeploymentBuilder:
        builder = self
        for key, value in fields.items():
            builder = builder._with(f"engine.{key}", value)
        return builder

    def simulated(self) -> DeploymentBuilder:
        return self._with("engine.type", "simulated")

    def extra_args(self, *args: str) -> DeploymentBuilder:
        return self._with("engine.extraArgs", list(args))

    # --- scale
    def replicas(self, count: int) -> DeploymentBuilder:
        return self._with("replicas", count)

    def autoscaling(self, **fields: Any) -> DeploymentBuilder:
        return self._with("autoscaling", fields)

    def set(self, path: str, value: Any) -> DeploymentBuilder:
        """Any field by dotted path below spec (None removes it)."""
        return self._with(path, value)

    def named(self, name: str) -> DeploymentBuilder:
        manifest = copy.deepcopy(self._manifest)
        manifest["metadata"]["name"] = name
        return DeploymentBuilder(manifest)

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = copy.deepcopy(self._manifest["spec"])
        return spec


def a_deployment(name: str = "mimo") -> DeploymentBuilder:
    """MiMo-V2.5 fp8 on H200: the smallest valid deployment (one node per replica)."""
    return DeploymentBuilder({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"model": {"variant": "MiMo-V2.5"}, "hardware": {"gpuType": "H200-141GB"}},
    })
