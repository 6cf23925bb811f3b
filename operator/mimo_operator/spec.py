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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from mimo_operator.catalog import CHECKPOINTS
from mimo_operator.errors import SpecError
from mimo_operator.sglang_flags import check_extra_args
from mimo_operator.versions import WORKER_IMAGE

__all__ = [
    "FORMATS",
    "MAX_NAME_LENGTH",
    "MIN_GPU_MEMORY",
    "AutoscalingSpec",
    "CacheSpec",
    "ConfigMapKeyRef",
    "DeploymentSpec",
    "DisaggregationSpec",
    "EngineSpec",
    "EnvVar",
    "EplbSpec",
    "ExpertLocationSpec",
    "Format",
    "HardwareSpec",
    "ModelSource",
    "ModelSpec",
    "NetworkSpec",
    "ParallelismSpec",
    "PoolSpec",
    "RdmaSpec",
    "RolloutSpec",
    "RouterSpec",
    "SchedulingSpec",
    "SecretKeyRef",
    "SimulationSpec",
    "Toleration",
    "parse_quantity",
    "parse_spec",
    "quantised_copy_hint",
]

Variant = Literal["MiMo-V2.5", "MiMo-V2.5-Base", "MiMo-V2.5-Pro", "MiMo-V2.5-Pro-Base"]
GpuTypeName = Literal["H100-80GB", "H200-141GB", "H20-96GB", "B200-180GB", "B300-288GB"]

# metadata.name prefixes every child's name. The longest child is a gang pod, "<name>-<replica>-<5 hex>-<rank>"
# (labels.gang_name, labels.pod_name): replica indexes stay below MAX_REPLICAS + MAX_SURGE (3 digits) and node
# ranks below the 64 nodes a replica may have (2 digits). Pod names double as DNS labels of the gang's headless
# Service (<pod>.<gang>), so they must fit 63 characters; Services (<gang>, <name>-router) are shorter.
MAX_REPLICAS = 256
MAX_SURGE = 256
LONGEST_CHILD_SUFFIX = "-511-abcde-63"
MAX_NAME_LENGTH = 63 - len(LONGEST_CHILD_SUFFIX)  # 50
# A pool's gangs are named "<name>-<pool>-…" (BuildContext.gang_prefix): prefill is the longer.
LONGEST_POOL_INFIX = "-prefill"
MAX_PD_NAME_LENGTH = MAX_NAME_LENGTH - len(LONGEST_POOL_INFIX)  # 42
# The smallest GPU the CRD accepts by memory (its gpuMemory rule says the same).
MIN_GPU_MEMORY = 16 * 10**9
# No GPU has more; a larger figure is a typo (1410G for 141G) that would plan a checkpoint onto one GPU.
MAX_GPU_MEMORY = 2**40
# /dev/shm holds NCCL's buffers and Ray's object store: a size without a unit (bytes) would break both.
MIN_SHM_SIZE = 2**30
# The -Base checkpoints' card context (256K); the CRD's contextLength rule uses the same number.
BASE_MAX_CONTEXT = 262_144
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
_QUANTITY_FACTORS = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}




# RE2's class of the ASCII control characters (NUL to US, and DEL). Python's re has no POSIX classes:
# `Format.regex` spells it out for Python.
_CONTROL = "[:cntrl:]"


@dataclass(frozen=True)
class Format:
    """A string format the apiserver checks with a CEL rule ``self.matches('<pattern>')`` and the typed spec
    with the same pattern (RE2 and Python read it alike: no backslashes, so it needs no escaping in CEL; the one
    POSIX class RE2 knows and Python does not, ``[:cntrl:]``, `regex` spells out).

    With `prefix_limit`, the part before a '/' has at most that many characters: a second condition of the same
    CEL rule, ``self.split('/')[0].size() <= N`` (a regular expression cannot bound a DNS subdomain's length).
    """

    pattern: str
    allowed: str  # what is allowed, in words: the end of both refusals' messages
    prefix_limit: int | None = None

    @property
    def regex(self) -> str:
        """The pattern as Python's re reads it."""
        return self.pattern.replace(_CONTROL, r"\x00-\x1f\x7f")

    def accepts(self, value: str) -> bool:
        # fullmatch: Python's '$' also matches before a final newline, the apiserver's (RE2) does not.
        if not re.fullmatch(self.regex, value):
            return False
        return self.prefix_limit is None or len(value.split("/")[0]) <= self.prefix_limit

    def message(self) -> str:
        return f"must be {self.allowed}"


_DNS_LABEL = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN = f"{_DNS_LABEL}([.]{_DNS_LABEL})*"
_LABEL_NAME = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DOMAIN_PART = "[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PATH_PART = "[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*"
_REF_PART = "[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?"
# A path segment other than '.' and '..', without control characters (a newline in a path breaks the argv and
# volume paths it is written into; a NUL cannot pass execve at all).
_SEGMENT = (f"([^/.{_CONTROL}][^/{_CONTROL}]*|[.][^/.{_CONTROL}][^/{_CONTROL}]*|[.][.][^/{_CONTROL}]+)")

# Field formats the apiserver cannot refuse by type alone: each becomes a child object's name, label, argv
# element or environment value, where a bad value would be refused late (a 422 on a gang pod) or never work.
FORMATS: dict[str, Format] = {
    "dns-1035-label": Format(
        "^[a-z]([-a-z0-9]*[a-z0-9])?$",
        "a DNS-1035 label: lower-case letters, digits and '-', starting with a letter and ending with a letter "
        "or digit (it prefixes the names of Services and pods)"),
    "dns-label": Format(
        f"^{_DNS_LABEL}$",
        "a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit"),
    "dns-subdomain": Format(
        f"^{_SUBDOMAIN}$",
        "a Kubernetes object name: lower-case letters, digits, '-' and '.', each part starting and ending with "
        "a letter or digit"),
    "label-key": Format(
        f"^({_SUBDOMAIN}/)?{_LABEL_NAME}$",
        "a label key: an optional DNS subdomain prefix of at most 253 characters and '/', then a name of at most 63 "
        "letters, digits, '-', '_' or '.', starting and ending with a letter or digit", prefix_limit=253),
    "extended-resource": Format(
        f"^{_SUBDOMAIN}/{_LABEL_NAME}$",
        "an extended resource name: the device plugin's DNS subdomain and '/', then a name of at most 63 letters, "
        "digits, '-', '_' or '.' (for example nvidia.com/gpu or rdma/rdma_shared_device_a)"),
    "label-value": Format(
        f"^({_LABEL_NAME})?$",
        "a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
    "image": Format(
        f"^({_DOMAIN_PART}([.]{_DOMAIN_PART})*(:[0-9]+)?/)?{_PATH_PART}(/{_PATH_PART})*"
        "(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
        "an OCI image reference such as registry.example.com:5000/team/image:tag or image@sha256:<hex> "
        "(lower-case path; no spaces or shell characters)"),
    "git-ref": Format(
        f"^{_REF_PART}(/{_REF_PART})*$",
        "a branch, tag or commit: letters, digits, '-', '_', '.' and '/' between parts (for example main, v1.0, "
        "refs/pr/1 or a commit hash)"),
    "secret-key": Format(
        "^([-_a-zA-Z0-9]|[.][-_a-zA-Z0-9])[-._a-zA-Z0-9]*$",
        "a Secret or ConfigMap key: letters, digits, '-', '_' and '.', neither '.' nor '..' nor starting with '..'"),
    "network-attachment": Format(
        f"^({_DNS_LABEL}/)?{_SUBDOMAIN}$",
        "a NetworkAttachmentDefinition as name or namespace/name (lower-case letters, digits, '-' and '.')"),
    "hca": Format(
        "^[A-Za-z0-9_.-]+(:[0-9]+)?$",
        "an HCA name, optionally with a port (for example mlx5_0 or mlx5_0:1); no commas or spaces"),
    "interface": Format(
        "^[=^]?[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*$",
        "an interface name or NCCL's comma-separated prefix list (for example eth0, ib, ^docker,lo or =eth1)"),
    "absolute-path": Format(
        f"^/$|^(/{_SEGMENT})+/?$",
        "an absolute path without '.' or '..' segments, repeated '/' or control characters"),
    "relative-path": Format(
        f"^{_SEGMENT}(/{_SEGMENT})*$",
        "a relative path without '.' or '..' segments, repeated or trailing '/' or control characters"),
}


def _no_bool(value: Any) -> Any:
    """A whole-number choice is not a boolean (YAML's yes/on), which Python's ``True == 1`` would let through."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, not a boolean ({value})")
    return value


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
    key: str | None = Field(None, max_length=317)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class HardwareSpec(_Spec):
    gpu_type: GpuTypeName | None = None
    gpu_memory: str | None = Field(None, max_length=32, pattern=_QUANTITY.pattern)
    architecture: Literal["hopper", "blackwell"] | None = None
    gpus_per_node: Annotated[Literal[1, 2, 4, 8], BeforeValidator(_no_bool)] = 8
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253)
    node_selector: dict[str, str] | None = Field(None, max_length=32)
    tolerations: list[Toleration] | None = Field(None, max_length=32)

    @property
    def gpu_memory_bytes(self) -> int | None:
        return None if self.gpu_memory is None else parse_quantity(self.gpu_memory)


class RdmaSpec(_Spec):
    resource_name: str = Field("rdma/rdma_shared_device_a", max_length=253)
    resource_count: int = Field(1, ge=1)
    networks: list[str] | None = Field(None, max_length=16)


class SriovSpec(_Spec):
    resource_name: str = Field(max_length=253)
    networks: list[str] = Field(min_length=1, max_length=16)


class NetworkSpec(_Spec):
    mode: Literal["hostNetwork", "rdma", "sriov", "podNetwork"] = "hostNetwork"
    rdma: RdmaSpec | None = None
    sriov: SriovSpec | None = None
    # New pod fields default here, not in the CRD (a CRD default would change every stored revision).
    privileged: bool | None = None  # None: privileged with hostNetwork
    link_speed_gbps: int | None = Field(None, ge=1, le=3200)  # None: 400 (NDR)
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
    launcher: Literal["per-node", "sglang-ray"] | None = None  # None: per-node
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
    gang_scheduler: Literal["none", "scheduler-plugins", "volcano", "kueue", "kubernetes"] = "none"
    topology_key: str | None = Field(None, max_length=253)
    priority_class_name: str | None = Field(None, max_length=253)
    queue_name: str | None = Field(None, max_length=253)


class RolloutSpec(_Spec):
    max_surge: int = Field(1, ge=0, le=MAX_SURGE)
    max_unavailable: int = Field(0, ge=0, le=MAX_REPLICAS)
    # Manual: gangs an older operator rendered keep running (status says so); Automatic: they are rolled.
    operator_upgrades: Literal["Manual", "Automatic"] = "Manual"


class PodTemplateSpec(_Spec):
    labels: dict[str, str] | None = Field(None, max_length=32)
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(None, max_length=32)


class ConfigMapKeyRef(_Spec):
    name: str = Field(max_length=253)
    key: str = Field(max_length=253)


class ExpertLocationSpec(_Spec):
    # Exactly one (a CRD rule): a ConfigMap key, or a file inside the weights cache (relative to its root).
    config_map: ConfigMapKeyRef | None = None
    cache_file: str | None = Field(None, max_length=1024, pattern=r"^[^/].*\.(pt|json)$")


class EplbSpec(_Spec):
    # New fields default here, not in the CRD (a CRD default would change every stored revision).
    redundant_experts: int | None = Field(None, ge=0, le=1024)  # None: from spare memory
    algorithm: Literal["auto", "deepseek", "deepseek_hierarchical", "deepseek_vec",
                       "deepseek_vec_hierarchical"] | None = None  # None: SGLang's auto
    rebalance: bool | None = None  # None: off (a static placement from expertLocation, as the PD recipe runs)
    expert_location: ExpertLocationSpec | None = None


class PoolSpec(_Spec):
    nodes_per_gang: int | None = Field(None, ge=1, le=64)  # None: the planner's fewest nodes
    replicas: int | None = Field(None, ge=0, le=256)  # None: 1
    min_replicas: int | None = Field(None, ge=0, le=256)
    max_replicas: int | None = Field(None, ge=1, le=256)
    eplb: EplbSpec | None = None


class DisaggregationSpec(_Spec):
    transfer_backend: Literal["mooncake", "nixl"] | None = None  # None: mooncake (SGLang's default)
    bootstrap_port: int | None = Field(None, ge=1024, le=65535)  # None: SGLang's 8998
    typical_prompt_tokens: int | None = Field(None, ge=1, le=1_048_576)  # None: planner_pd's estimate
    prefill: PoolSpec
    decode: PoolSpec


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
    # Absent: one colocated pool, as before. No CRD default: the revision hashes stored values.
    disaggregation: DisaggregationSpec | None = None


_QUANTISED_NAME = re.compile(r"(?i)(?:^|[-_.])(awq|gptq|gguf|exl2|bnb|mlx|int4|int8|w4a16|w8a8|[2-8]-?bit)(?=$|[-_.])")


def quantised_copy_hint(spec: DeploymentSpec) -> str | None:
    """A warning when ``model.source.huggingFaceId`` is named like a quantised copy (…-AWQ, …-GGUF): only a
    hint, since names prove nothing; the weights download reads config.json and refuses a real mismatch."""
    source = spec.model.source
    if source is None or source.hugging_face_id is None:
        return None
    match = _QUANTISED_NAME.search(source.hugging_face_id.split("/")[-1])
    if match is None:
        return None
    return (f"model.source.huggingFaceId {source.hugging_face_id} looks like a {match.group(1).upper()} copy; "
            f"this plan sizes {spec.model.precision.upper()} weights, and the weights download refuses a checkpoint "
            "in another precision (the FP8 release, or a BF16 copy with precision bf16, works)")


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
        spec = DeploymentSpec.model_validate(_without_nulls(raw))
    except ValidationError as error:
        raise _spec_error(error) from None
    _check_formats(spec)
    _check_rules(spec)
    # SGLang's own flags: the apiserver cannot know them, so the typed spec (mimoctl plan, the operator's status)
    # refuses what SGLang's argparse would refuse at gang start.
    check_extra_args(spec.engine.extra_args or [])
    return spec


def _without_nulls(value: Any) -> Any:
    """The spec as the apiserver stores it: a null field of an object is pruned (no field of the CRD is nullable),
    so that its default applies, as ``kubectl apply`` of the same manifest would have it."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


_KIND = "MiMoDeployment"
_GROUP = "serving.mimo-operator.io"
_API_VERSION = f"{_GROUP}/v1alpha1"


def _check_object(obj: Mapping[str, Any]) -> None:
    kind = obj.get("kind")
    if kind is not None and kind != _KIND:
        raise SpecError("kind", f"must be {_KIND} (got {kind!r})")
    api_version = obj.get("apiVersion")
    if api_version is not None and api_version != _API_VERSION:
        raise SpecError("apiVersion", f"must be {_API_VERSION} (got {api_version!r})")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if name is not None and not isinstance(name, str):
        raise SpecError("metadata.name", f"must be a string (got {type(name).__name__})")
    if isinstance(name, str):
        if len(name) > MAX_NAME_LENGTH:
            raise SpecError("metadata.name", NAME_LENGTH_MESSAGE)
        spec = obj.get("spec")
        if isinstance(spec, Mapping) and spec.get("disaggregation") is not None and len(name) > MAX_PD_NAME_LENGTH:
            raise SpecError("metadata.name", PD_NAME_LENGTH_MESSAGE)
        if not FORMATS["dns-1035-label"].accepts(name):
            raise SpecError("metadata.name", f"{name!r} {FORMATS['dns-1035-label'].message()}")


NAME_LENGTH_MESSAGE = (
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters (it prefixes the names of gang pods, "
    f"\"<name>{LONGEST_CHILD_SUFFIX}\", which must fit 63)"
)
PD_NAME_LENGTH_MESSAGE = (
    f"metadata.name must be at most {MAX_PD_NAME_LENGTH} characters with spec.disaggregation (it prefixes the "
    f"names of the prefill gangs' pods, \"<name>{LONGEST_POOL_INFIX}{LONGEST_CHILD_SUFFIX}\", which must fit 63)"
)


def _formatted_fields(spec: DeploymentSpec) -> Iterator[tuple[str, str, str]]:
    """(field, value, format) of every string with a format, in the CRD's order; map keys name their map."""
    m, hw, net, e = spec.model, spec.hardware, spec.network, spec.engine
    if m.source is not None and m.source.path is not None:
        yield "spec.model.source.path", m.source.path, "absolute-path"
    if m.revision is not None:
        yield "spec.model.revision", m.revision, "git-ref"
    if m.token_secret_ref is not None:
        yield "spec.model.tokenSecretRef.name", m.token_secret_ref.name, "dns-subdomain"
        yield "spec.model.tokenSecretRef.key", m.token_secret_ref.key, "secret-key"
    if m.cache.claim_name is not None:
        yield "spec.model.cache.claimName", m.cache.claim_name, "dns-subdomain"
    yield "spec.model.cache.nodeLocalPath", m.cache.node_local_path, "absolute-path"
    yield "spec.hardware.gpuResourceName", hw.gpu_resource_name, "extended-resource"
    for key, value in (hw.node_selector or {}).items():
        yield "spec.hardware.nodeSelector", key, "label-key"
        yield f"spec.hardware.nodeSelector[{key}]", value, "label-value"
    for i, toleration in enumerate(hw.tolerations or []):
        if toleration.key:
            yield f"spec.hardware.tolerations[{i}].key", toleration.key, "label-key"
        if toleration.value:
            yield f"spec.hardware.tolerations[{i}].value", toleration.value, "label-value"
    if net.rdma is not None:
        yield "spec.network.rdma.resourceName", net.rdma.resource_name, "extended-resource"
        for i, network in enumerate(net.rdma.networks or []):
            yield f"spec.network.rdma.networks[{i}]", network, "network-attachment"
    if net.sriov is not None:
        yield "spec.network.sriov.resourceName", net.sriov.resource_name, "extended-resource"
        for i, network in enumerate(net.sriov.networks):
            yield f"spec.network.sriov.networks[{i}]", network, "network-attachment"
    for i, device in enumerate(net.ib_devices or []):
        yield f"spec.network.ibDevices[{i}]", device, "hca"
    if net.socket_interface is not None:
        yield "spec.network.socketInterface", net.socket_interface, "interface"
    yield "spec.engine.image", e.image, "image"
    if spec.router.image is not None:
        yield "spec.router.image", spec.router.image, "image"
    if spec.scheduling.topology_key is not None:
        yield "spec.scheduling.topologyKey", spec.scheduling.topology_key, "label-key"
    if spec.scheduling.priority_class_name is not None:
        yield "spec.scheduling.priorityClassName", spec.scheduling.priority_class_name, "dns-subdomain"
    if spec.scheduling.queue_name is not None:
        yield "spec.scheduling.queueName", spec.scheduling.queue_name, "dns-label"
    for key, value in (spec.pod_template.labels or {}).items():
        yield "spec.podTemplate.labels", key, "label-key"
        yield f"spec.podTemplate.labels[{key}]", value, "label-value"
    for key in spec.pod_template.annotations or {}:
        yield "spec.podTemplate.annotations", key, "label-key"
    for side in ("prefill", "decode") if spec.disaggregation is not None else ():
        pool: PoolSpec = getattr(spec.disaggregation, side)
        location = pool.eplb.expert_location if pool.eplb else None
        if location is not None and location.config_map is not None:
            at = f"spec.disaggregation.{side}.eplb.expertLocation.configMap"
            yield f"{at}.name", location.config_map.name, "dns-subdomain"
            yield f"{at}.key", location.config_map.key, "secret-key"
        if location is not None and location.cache_file is not None:
            yield f"spec.disaggregation.{side}.eplb.expertLocation.cacheFile", location.cache_file, "relative-path"


def _check_formats(spec: DeploymentSpec) -> None:
    for field, value, name in _formatted_fields(spec):
        form = FORMATS[name]
        if not form.accepts(value):
            raise SpecError(field, f"{_short(value)!r} {form.message()}")


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
    official = m.source.hugging_face_id.lower() if m.source is not None and m.source.hugging_face_id else None
    rules.append((
        official not in OFFICIAL_IDS or official == CHECKPOINTS[m.variant].hf_id.lower(),
        "spec.model.source.huggingFaceId",
        "model.source.huggingFaceId names another MiMo-V2.5 checkpoint than model.variant: the planner sizes the "
        "variant, so an official repository must be the variant's own (XiaomiMiMo/<variant>)",
    ))
    rules.append((
        m.revision is None or ".." not in m.revision,
        "spec.model.revision",
        "model.revision cannot contain '..' (no branch, tag or commit has it)",
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
        not _system_directory(m.cache.node_local_path),
        "spec.model.cache.nodeLocalPath",
        "cache.nodeLocalPath must not be / or a system directory (" + ", ".join(SYSTEM_DIRECTORIES) + ", or "
        "anything under them), nor " + ", ".join(SYSTEM_PARENTS[1:]) + " themselves: every engine pod mounts it "
        "read-write",
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
        hw.gpu_memory is None or parse_quantity(hw.gpu_memory) <= MAX_GPU_MEMORY,
        "spec.hardware.gpuMemory",
        "hardware.gpuMemory must be at most 1Ti (no GPU has more: a larger figure is a typo, and the planner "
        "would put a whole checkpoint on too few GPUs)",
    ))
    rules.append((
        hw.gpu_resource_name not in CORE_RESOURCES and not hw.gpu_resource_name.startswith("hugepages-"),
        "spec.hardware.gpuResourceName",
        "hardware.gpuResourceName must be a device plugin's resource such as nvidia.com/gpu, not cpu, memory, "
        "ephemeral-storage, pods or hugepages-*",
    ))
    for i, t in enumerate(hw.tolerations or []):
        rules.append((
            t.operator != "Exists" or not t.value,
            f"spec.hardware.tolerations[{i}].value",
            "a toleration with operator Exists has no value",
        ))
        rules.append((
            bool(t.key) or t.operator == "Exists",
            f"spec.hardware.tolerations[{i}].operator",
            "a toleration without a key must have operator Exists (it matches every taint)",
        ))
        rules.append((
            t.toleration_seconds is None or t.effect == "NoExecute",
            f"spec.hardware.tolerations[{i}].tolerationSeconds",
            "tolerationSeconds applies to effect NoExecute only",
        ))
    rules.append((
        spec.network.rdma is None or spec.network.mode == "rdma"
        or (spec.network.mode == "hostNetwork" and spec.network.privileged is False),
        "spec.network.rdma",
        "network.rdma is only used with network.mode rdma, or hostNetwork with network.privileged false",
    ))
    rules.append((
        (spec.network.sriov is None) == (spec.network.mode != "sriov"),
        "spec.network.sriov",
        "network.sriov (the VF resource and one network per GPU) is required with network.mode sriov and "
        "used only there",
    ))
    for mode, nic in (("rdma", spec.network.rdma), ("sriov", spec.network.sriov)):
        rules.append((
            nic is None or (nic.resource_name != hw.gpu_resource_name and nic.resource_name not in CORE_RESOURCES),
            f"spec.network.{mode}.resourceName",
            f"network.{mode}.resourceName must be the NIC's device plugin resource: not hardware.gpuResourceName "
            "(both would be one limit of the pod) and not cpu, memory, ephemeral-storage or pods",
        ))
    devices = spec.network.ib_devices or []
    twice = next((i for i, d in enumerate(devices) if d in devices[:i]), None)
    rules.append((
        twice is None,
        f"spec.network.ibDevices[{twice}]",
        "network.ibDevices names an HCA twice (NCCL would count its bandwidth twice)",
    ))
    rules.append((
        spec.autoscaling.min_replicas <= spec.autoscaling.max_replicas,
        "spec.autoscaling.minReplicas",
        "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
    ))
    rules.append((
        not spec.autoscaling.enabled or spec.autoscaling.min_replicas > 0 or spec.router.enabled,
        "spec.autoscaling.minReplicas",
        "autoscaling.minReplicas 0 needs router.enabled: the router's count of requests that found no replica is "
        "what scales a deployment up from zero",
    ))
    rules.append((
        spec.disaggregation is None or spec.router.enabled,
        "spec.router.enabled",
        "a disaggregated deployment needs router.enabled: only the router pairs a prefill gang with a decode gang",
    ))
    rules.append((
        parse_quantity(spec.engine.shm_size) >= MIN_SHM_SIZE,
        "spec.engine.shmSize",
        "engine.shmSize must be at least 1Gi (/dev/shm holds NCCL's buffers and Ray's object store; a number "
        "without a unit is bytes)",
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
    rules.append((
        not spec.engine.dist_init_port <= spec.engine.port <= spec.engine.dist_init_port + 5,
        "spec.engine.port",
        "engine.port must not be engine.distInitPort or one of the five ports after it (SGLang's ZMQ channels)",
    ))
    if spec.disaggregation is not None:
        for side in ("prefill", "decode"):
            pool: PoolSpec = getattr(spec.disaggregation, side)
            rules.append((
                pool.min_replicas is None or pool.max_replicas is None or pool.min_replicas <= pool.max_replicas,
                f"spec.disaggregation.{side}.minReplicas",
                "minReplicas must be <= maxReplicas",
            ))
            location = pool.eplb.expert_location if pool.eplb else None
            if location is not None:
                rules.append((
                    (location.config_map is None) != (location.cache_file is None),
                    f"spec.disaggregation.{side}.eplb.expertLocation",
                    "expertLocation needs exactly one of configMap or cacheFile",
                ))
                rules.append((
                    location.cache_file is None or ".." not in location.cache_file.split("/"),
                    f"spec.disaggregation.{side}.eplb.expertLocation.cacheFile",
                    "expertLocation.cacheFile must stay inside the weights cache: no '..' segments",
                ))
                rules.append((
                    location.cache_file is None or spec.model.cache.mode != "none",
                    f"spec.disaggregation.{side}.eplb.expertLocation.cacheFile",
                    "expertLocation.cacheFile is a file in the weights cache: model.cache.mode must not be none",
                ))
    for which, keys in (("labels", spec.pod_template.labels), ("annotations", spec.pod_template.annotations)):
        rules.append((
            not any(_reserved_key(k) for k in keys or {}),
            f"spec.podTemplate.{which}",
            f"podTemplate.{which} must not use keys under mimo-operator.io/: they are the operator's own (it selects, "
            "drains and discovers gangs by them)",
        ))
    for i, arg in enumerate(spec.engine.extra_args or []):
        rules.append(("\0" not in arg, f"spec.engine.extraArgs[{i}]", NUL_MESSAGE))
    if spec.engine.env is not None:
        names = [e.name for e in spec.engine.env]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        rules.append((not duplicates, "spec.engine.env", f"duplicate names: {', '.join(duplicates)}"))
        for i, variable in enumerate(spec.engine.env):
            rules.append(("\0" not in variable.value, f"spec.engine.env[{i}].value", NUL_MESSAGE))
    for ok, field, message in rules:
        if not ok:
            raise SpecError(field, message)


# An argv element or environment value reaches the engine through execve, which ends a string at a NUL: the
# container would fail to start (the CRD's rule: ``!self.contains('\x00')``, CEL's escape for NUL).
NUL_MESSAGE = "must not contain a NUL character (it cannot pass to a process's arguments or environment)"


# The node's own directories, which a hostPath cache must not be nor be inside, and parents of many of them,
# which it must not be (a directory of its own inside one is fine).
SYSTEM_DIRECTORIES = ("/etc", "/proc", "/sys", "/dev", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr",
                      "/run", "/var/run", "/var/log", "/var/lib/kubelet", "/var/lib/containerd", "/var/lib/docker",
                      "/var/lib/containers", "/var/lib/rancher", "/var/lib/etcd", "/opt/cni")
SYSTEM_PARENTS = ("/", "/var", "/var/lib", "/root", "/home")
# Resources of the node itself: a NIC's or GPU's resource name is a device plugin's.
CORE_RESOURCES = ("cpu", "memory", "ephemeral-storage", "pods")
OFFICIAL_IDS = frozenset(c.hf_id.lower() for c in CHECKPOINTS.values())


def _reserved_key(key: str) -> bool:
    """A label or annotation key the operator writes and reads on its pods (``labels``: ``mimo-operator.io/…``).
    The local cluster's own (``localcluster.mimo-operator.io/process``: run this pod as a local process) is the
    user's to set."""
    return key.startswith("mimo-operator.io/")


def _system_directory(path: str) -> bool:
    bare = path.rstrip("/") or "/"
    return bare in SYSTEM_PARENTS or any(bare == d or bare.startswith(d + "/") for d in SYSTEM_DIRECTORIES)


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a field path: list indexes and map keys in brackets (``nodeSelector[team]``), as
    ``_formatted_fields`` names them (a label key such as nvidia.com/gpu.count is no field name)."""
    out = "spec"
    current: type[BaseModel] | None = DeploymentSpec
    keyed = False
    for part in loc:
        if isinstance(part, int) or keyed:
            out += f"[{part}]"
            keyed = False
            continue
        out += f".{part}"
        field = None if current is None else next(
            (f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        keyed = field is not None and _is_map(field.annotation)
        current = _nested_model(field.annotation) if field is not None else None
    return out


def _is_map(annotation: Any) -> bool:
    return get_origin(annotation) in (dict, Mapping) or any(_is_map(a) for a in get_args(annotation))


def _spec_error(error: ValidationError) -> SpecError:
    """The first pydantic error as a SpecError whose message says what is allowed."""
    first = error.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    kind = first["type"]
    ctx = first.get("ctx") or {}
    given = _short(first.get("input"))
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


class _Shown(str):
    """A long input as its start and length, so that a refusal stays one readable line."""

    def __repr__(self) -> str:
        return str(self)


def _short(value: Any, limit: int = 80) -> Any:
    text = repr(value)
    return value if len(text) <= limit else _Shown(f"{text[:limit]}… ({len(text)} characters)")


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
