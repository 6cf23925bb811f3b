"""The typed model of ``MiMoDeployment.spec``: the same fields, defaults and rules as the CRD.

``crds/mimodeployment.yaml`` is the source of truth for the API; this module mirrors it so that the
operator, ``mimoctl plan`` and the tests read one typed object. Every default here equals the CRD's
(``tests/unit/test_spec.py`` walks the CRD and compares) and every ``x-kubernetes-validations`` rule is
checked again in :func:`parse_spec` with the same message, because manifests reach the planner without
an apiserver too (``mimoctl plan -f``).

:func:`parse_spec` is the only way in: it takes a whole manifest or live object, or just its spec, and
raises :class:`~mimo_operator.errors.SpecError` naming the field (``spec.hardware.gpuType``) and what is
allowed. No pydantic or key error escapes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from mimo_operator.errors import SpecError
from mimo_operator.versions import WORKER_IMAGE

__all__ = [
    "MAX_NAME_LENGTH",
    "MIN_GPU_MEMORY",
    "AutoscalingSpec",
    "CacheSpec",
    "DeploymentSpec",
    "EngineSpec",
    "EnvVar",
    "HardwareSpec",
    "ModelSource",
    "ModelSpec",
    "NetworkSpec",
    "ParallelismSpec",
    "RdmaSpec",
    "RolloutSpec",
    "RouterSpec",
    "SchedulingSpec",
    "SecretKeyRef",
    "SimulationSpec",
    "Toleration",
    "parse_quantity",
    "parse_spec",
]

Variant = Literal["MiMo-V2.5", "MiMo-V2.5-Base", "MiMo-V2.5-Pro", "MiMo-V2.5-Pro-Base"]
GpuTypeName = Literal["H100-80GB", "H200-141GB", "H20-96GB", "B200-180GB", "B300-288GB"]

# Gang pod and Service names are "<name>-<replica>-<rank>-<revision>" and must stay within 63 characters.
MAX_NAME_LENGTH = 40
# The smallest GPU the CRD accepts by memory (its gpuMemory rule says the same).
MIN_GPU_MEMORY = 16 * 10**9
# The -Base checkpoints' card context (256K); the CRD's contextLength rule uses the same number.
BASE_MAX_CONTEXT = 262_144
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
_QUANTITY_FACTORS = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}


class _Spec(BaseModel):
    # strict: "8" is not 8 (the apiserver would refuse it too); forbid: a misspelt field is an error,
    # as with kubectl's strict field validation, not silently ignored.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True,
        allow_inf_nan=False,
    )


class ModelSource(_Spec):
    hugging_face_id: str | None = Field(None, max_length=200,
                                        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str | None = Field(None, max_length=4096, pattern=r"^/")


class SecretKeyRef(_Spec):
    name: str = Field(max_length=253)
    key: str = Field("token", max_length=253)


class CacheSpec(_Spec):
    mode: Literal["none", "shared-volume", "node-local"] = "none"
    claim_name: str | None = Field(None, max_length=253)
    node_local_path: str = Field("/var/lib/mimo/weights", max_length=4096, pattern=r"^/")
    gate_on_weights_ready: bool = True
    keep_after_delete: bool = True


class ModelSpec(_Spec):
    variant: Variant
    source: ModelSource | None = None
    revision: str | None = Field(None, max_length=128)
    precision: Literal["fp8", "bf16"] = "fp8"
    kv_cache_dtype: Literal["bf16", "fp8"] = "bf16"
    context_length: int | None = Field(None, ge=4096, le=1_048_576)
    token_secret_ref: SecretKeyRef | None = None
    cache: CacheSpec = Field(default_factory=CacheSpec)


class Toleration(_Spec):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class HardwareSpec(_Spec):
    gpu_type: GpuTypeName | None = None
    gpu_memory: str | None = Field(None, max_length=32, pattern=_QUANTITY.pattern)
    architecture: Literal["hopper", "blackwell"] | None = None
    gpus_per_node: Literal[1, 2, 4, 8] = 8
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253)
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = Field(None, max_length=32)

    @property
    def gpu_memory_bytes(self) -> int | None:
        return None if self.gpu_memory is None else parse_quantity(self.gpu_memory)


class RdmaSpec(_Spec):
    resource_name: str = Field("rdma/rdma_shared_device_a", max_length=253)
    resource_count: int = Field(1, ge=1)
    networks: list[str] | None = Field(None, max_length=16)


class NetworkSpec(_Spec):
    mode: Literal["hostNetwork", "rdma", "podNetwork"] = "hostNetwork"
    rdma: RdmaSpec | None = None
    ib_devices: list[str] | None = Field(None, max_length=32)
    socket_interface: str | None = Field(None, max_length=64)
    ib_gid_index: int | None = Field(None, ge=0, le=255)


class ParallelismSpec(_Spec):
    nodes_per_replica: int | None = Field(None, ge=1, le=64)
    tensor_parallel: int | None = Field(None, ge=1, le=512)
    expert_parallel: int | None = Field(None, ge=1, le=512)
    attention_data_parallel: int | None = Field(None, ge=1, le=128)
    moe_a2a_backend: Literal["auto", "deepep", "none"] = Field("auto", alias="moeA2ABackend")
    deepep_mode: Literal["auto", "normal", "low_latency"] = "auto"
    mtp: bool = True


class EnvVar(_Spec):
    name: str = Field(max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = Field("", max_length=4096)


class SimulationSpec(_Spec):
    speedup: float = Field(1.0, gt=0, le=1000)


class EngineSpec(_Spec):
    type: Literal["sglang", "simulated"] = "sglang"
    image: str = Field(WORKER_IMAGE, max_length=512)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    port: int = Field(30000, ge=1024, le=65535)
    dist_init_port: int = Field(20000, ge=1024, le=65000)
    mem_fraction_static: float | None = Field(None, ge=0.3, le=0.95)
    max_running_requests: int | None = Field(None, ge=1, le=65536)
    chunked_prefill_size: int | None = Field(None, ge=1024, le=1_048_576)
    cuda_graph_max_batch_size: int | None = Field(None, ge=1, le=1024)
    swa_full_tokens_ratio: float | None = Field(None, gt=0, le=1)
    page_size: int = Field(64, ge=1, le=256)
    watchdog_timeout_seconds: int = Field(3600, ge=60)
    shm_size: str = Field("64Gi", max_length=32, pattern=_QUANTITY.pattern)
    extra_args: list[str] | None = Field(None, max_length=64)
    env: list[EnvVar] | None = Field(None, max_length=64)
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)


class AutoscalingSpec(_Spec):
    enabled: bool = False
    min_replicas: int = Field(1, ge=0, le=256)
    max_replicas: int = Field(4, ge=1, le=256)
    target_kv_cache_usage: float = Field(0.8, ge=0.05, le=1, alias="targetKVCacheUsage")
    target_queue_length: int = Field(4, ge=0)
    scale_up_window_seconds: int = Field(60, ge=0)
    scale_down_window_seconds: int = Field(600, ge=0)
    drain_timeout_seconds: int = Field(600, ge=0)
    ttft_slo_seconds: float | None = Field(None, ge=0.01, le=600)


class RouterSpec(_Spec):
    enabled: bool = True
    policy: Literal["cache_aware", "round_robin", "power_of_two", "random"] = "cache_aware"
    replicas: int = Field(1, ge=1, le=16)
    image: str | None = Field(None, max_length=512)


class SchedulingSpec(_Spec):
    gang_scheduler: Literal["none", "scheduler-plugins", "volcano", "kueue"] = "none"
    topology_key: str | None = Field(None, max_length=253)
    priority_class_name: str | None = Field(None, max_length=253)
    queue_name: str | None = Field(None, max_length=253)


class RolloutSpec(_Spec):
    max_surge: int = Field(1, ge=0)
    max_unavailable: int = Field(0, ge=0)


class PodTemplateSpec(_Spec):
    labels: dict[str, str] | None = Field(None, max_length=32)
    annotations: dict[str, str] | None = Field(None, max_length=32)


class DeploymentSpec(_Spec):
    """``MiMoDeployment.spec``, parsed, defaulted and checked against the CRD's rules."""

    model: ModelSpec
    hardware: HardwareSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: int = Field(1, ge=0, le=256)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    pod_template: PodTemplateSpec = Field(default_factory=PodTemplateSpec)


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity without exponent forms ("141Gi", "96G", "80000000000") in bytes."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity such as 96G or 141Gi")
    return int(float(match.group(1)) * _QUANTITY_FACTORS[match.group(2)])


def parse_spec(obj_or_spec: Mapping[str, Any]) -> DeploymentSpec:
    """Parse a MiMoDeployment manifest or live object (with ``spec``), or a bare spec mapping.

    Raises SpecError with ``field`` set to the dotted path of the first offending field.
    """
    if not isinstance(obj_or_spec, Mapping):
        raise SpecError("spec", f"a MiMoDeployment must be a mapping, not {type(obj_or_spec).__name__}")
    if "spec" in obj_or_spec or "kind" in obj_or_spec or "apiVersion" in obj_or_spec:
        _check_object(obj_or_spec)
        raw = obj_or_spec.get("spec")
    else:
        raw = obj_or_spec
    if not isinstance(raw, Mapping):
        raise SpecError("spec", "required: a mapping with at least model and hardware")
    try:
        spec = DeploymentSpec.model_validate(dict(raw))
    except ValidationError as error:
        raise _spec_error(error) from None
    _check_rules(spec)
    return spec


_KIND = "MiMoDeployment"
_GROUP = "serving.mimo-operator.io"


def _check_object(obj: Mapping[str, Any]) -> None:
    kind = obj.get("kind")
    if kind is not None and kind != _KIND:
        raise SpecError("kind", f"must be {_KIND} (got {kind!r})")
    api_version = obj.get("apiVersion")
    if api_version is not None and (not isinstance(api_version, str) or api_version.split("/")[0] != _GROUP):
        raise SpecError("apiVersion", f"must be {_GROUP}/v1alpha1 (got {api_version!r})")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            "metadata.name",
            f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
            "(it prefixes the names of gang pods and Services)",
        )


def _check_rules(spec: DeploymentSpec) -> None:
    """The CRD's x-kubernetes-validations rules, with the CRD's messages, in the CRD's order."""
    rules: list[tuple[bool, str, str]] = []
    p, hw, m = spec.parallelism, spec.hardware, spec.model
    rules.append((
        p.tensor_parallel is None or p.nodes_per_replica is None
        or p.tensor_parallel == p.nodes_per_replica * hw.gpus_per_node,
        "spec.parallelism.tensorParallel",
        "parallelism.tensorParallel must equal parallelism.nodesPerReplica × hardware.gpusPerNode "
        "(SGLang's --tp-size counts every GPU of the replica)",
    ))
    rules.append((
        m.context_length is None or not m.variant.endswith("-Base") or m.context_length <= BASE_MAX_CONTEXT,
        "spec.model.contextLength",
        f"contextLength can be at most {BASE_MAX_CONTEXT} for the -Base checkpoints "
        "(their card gives a 256K context)",
    ))
    rules.append((
        m.precision != "bf16" or m.source is not None,
        "spec.model.source",
        "precision bf16 needs a BF16 checkpoint in model.source (the released weights are FP8)",
    ))
    rules.append((
        m.revision is None or m.source is None or m.source.path is None,
        "spec.model.revision",
        "revision applies to a Hugging Face source only, not to model.source.path",
    ))
    if m.source is not None:
        rules.append((
            (m.source.hugging_face_id is None) != (m.source.path is None),
            "spec.model.source",
            "model.source needs exactly one of huggingFaceId or path",
        ))
    rules.append((
        m.cache.mode != "shared-volume" or m.cache.claim_name is not None,
        "spec.model.cache.claimName",
        "cache.claimName is required when cache.mode is shared-volume",
    ))
    rules.append((
        (hw.gpu_type is None) != (hw.gpu_memory is None),
        "spec.hardware",
        "hardware needs exactly one of gpuType or gpuMemory",
    ))
    rules.append((
        hw.architecture is None or hw.gpu_memory is not None,
        "spec.hardware.architecture",
        "hardware.architecture is only set together with gpuMemory (a gpuType implies its architecture)",
    ))
    rules.append((
        hw.gpu_memory is None or parse_quantity(hw.gpu_memory) >= MIN_GPU_MEMORY,
        "spec.hardware.gpuMemory",
        "hardware.gpuMemory must be at least 16G (no shard of a MiMo checkpoint fits a smaller GPU)",
    ))
    rules.append((
        spec.network.rdma is None or spec.network.mode == "rdma",
        "spec.network.rdma",
        "network.rdma is only used with network.mode rdma",
    ))
    rules.append((
        spec.autoscaling.min_replicas <= spec.autoscaling.max_replicas,
        "spec.autoscaling.minReplicas",
        "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
    ))
    rules.append((
        spec.scheduling.gang_scheduler != "kueue" or spec.scheduling.queue_name is not None,
        "spec.scheduling.queueName",
        "scheduling.queueName is required when scheduling.gangScheduler is kueue",
    ))
    rules.append((
        spec.rollout.max_surge > 0 or spec.rollout.max_unavailable > 0,
        "spec.rollout.maxSurge",
        "rollout.maxSurge and rollout.maxUnavailable cannot both be 0",
    ))
    if spec.engine.env is not None:
        names = [e.name for e in spec.engine.env]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        rules.append((not duplicates, "spec.engine.env", f"duplicate names: {', '.join(duplicates)}"))
    for ok, field, message in rules:
        if not ok:
            raise SpecError(field, message)


def _path(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _spec_error(error: ValidationError) -> SpecError:
    """The first pydantic error as a SpecError whose message says what is allowed."""
    first = error.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    kind = first["type"]
    ctx = first.get("ctx") or {}
    given = first.get("input")
    if kind == "literal_error":
        message = f"must be one of {ctx.get('expected')} (got {given!r})"
    elif kind == "missing":
        message = "required"
    elif kind == "extra_forbidden":
        parent = _model_at(DeploymentSpec, loc[:-1])
        allowed = ", ".join(f.alias or n for n, f in parent.model_fields.items()) if parent else ""
        message = f"unknown field; allowed here: {allowed}" if allowed else "unknown field"
    elif kind == "string_pattern_mismatch":
        message = f"{given!r} does not match {ctx.get('pattern')}"
    else:
        message = f"{first['msg']} (got {given!r})"
    return SpecError(_path(loc), message)


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The nested model class a location points into, to list its fields in an error."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        current = _nested_model(field.annotation)
    return current


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None
