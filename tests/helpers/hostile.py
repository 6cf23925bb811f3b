"""A hostile corpus of MiMoDeployments, generated: every field of the CRD, every kind of wrong.

Each :class:`Case` is one manifest that must be refused, and where: ``admission`` (the apiserver refuses it,
naming ``field``; ``parse_spec`` refuses it too, so ``mimoctl plan`` says the same) or ``status`` (the
apiserver cannot know, e.g. SGLang's flags or the planner's arithmetic: it stores the object and the operator
refuses it in status, naming ``field``, creating nothing).

The generated part walks ``crds/mimodeployment.yaml``: for every leaf a value of the wrong type, one past each
bound (minimum, maximum, maxLength, maxItems, maxProperties) and one outside each enum. The written part adds
formats (names, labels, images, revisions, paths: the strings that break child names or argv), cross-field
rules, deployment names that break child names, extraArgs SGLang would refuse, and plans that cannot work.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "mimodeployment.yaml"

# Valid, with every optional section present, so that each leaf has a place to go wrong in.
BASE: dict[str, Any] = {
    "apiVersion": "serving.mimo-operator.io/v1alpha1",
    "kind": "MiMoDeployment",
    "metadata": {"name": "base"},
    "spec": {
        "model": {"variant": "MiMo-V2.5", "source": {"huggingFaceId": "XiaomiMiMo/MiMo-V2.5"}, "revision": "main",
                  "tokenSecretRef": {"name": "hf-token", "key": "token"},
                  "cache": {"mode": "shared-volume", "claimName": "weights"}},
        "hardware": {"gpuType": "H200-141GB", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "network": {"mode": "rdma", "rdma": {"networks": ["ib-net"]}, "ibDevices": ["mlx5_0"],
                    "socketInterface": "eth0", "ibGidIndex": 3},
        "engine": {"extraArgs": ["--enable-cache-report"], "env": [{"name": "NCCL_DEBUG", "value": "WARN"}]},
        "scheduling": {"topologyKey": "network.example.com/ib-block", "priorityClassName": "high",
                       "gangScheduler": "kueue", "queueName": "gpus"},
        "podTemplate": {"labels": {"team": "inference"}, "annotations": {"example.com/owner": "me"}},
        "router": {"image": "ghcr.io/example/router:v1"},
        "autoscaling": {"ttftSloSeconds": 2.0},
    },
}


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    field: str  # the field the refusal must name (a prefix of it for map values)
    where: str  # "admission" or "status"


def _set(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``manifest`` with ``path`` (``spec.a.b[0].c``; ``metadata.name``) set; ``...`` removes it."""
    out = copy.deepcopy(manifest)
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    node: Any = out
    for part in parts[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    if value is ...:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return out


def _case(id: str, path: str, value: Any, field: str | None = None, where: str = "admission",
          base: dict[str, Any] | None = None, name: str | None = None) -> Case:
    manifest = _set(base or BASE, path, value)
    manifest["metadata"]["name"] = name or _name(id)
    return Case(id, manifest, field or path, where)


def _name(id: str) -> str:
    name = ("h-" + re.sub(r"[^a-z0-9]+", "-", id.lower())).strip("-")
    # 42 characters at most: a name that a disaggregated base allows too.
    if len(name) <= 42:
        return name
    # Long field paths (the two PD pools share their tails) would collide once cut: keep them apart by a hash.
    return name[:35].rstrip("-") + "-" + hashlib.sha256(id.encode()).hexdigest()[:6]


# ------------------------------------------------------------------------------------------- generated


def _leaves(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, schema) of every property below ``schema``; array items as ``[0]``."""
    for name, child in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        yield here, child
        if child.get("type") == "object":
            yield from _leaves(child, here)
        if child.get("type") == "array" and (child.get("items") or {}).get("type") == "object":
            yield from _leaves(child["items"], f"{here}[0]")


def _pd(location: dict[str, Any]) -> dict[str, Any]:
    pool = {"nodesPerGang": 2, "replicas": 1, "minReplicas": 1, "maxReplicas": 2,
            "eplb": {"redundantExperts": 16, "algorithm": "auto", "rebalance": True, "expertLocation": location}}
    return {"transferBackend": "mooncake", "bootstrapPort": 8998, "typicalPromptTokens": 8192,
            "prefill": pool, "decode": copy.deepcopy(pool)}  # two objects: a copy of the base keeps aliases


# Sections BASE cannot hold at once (they need another mode), each with its own valid base.
_SECTION_BASES: dict[str, dict[str, Any]] = {
    "spec.network.sriov": _set(BASE, "spec.network", {
        "mode": "sriov", "sriov": {"resourceName": "nvidia.com/sriov_ib_vf", "networks": ["ib-0"]}}),
    # An expert placement is a ConfigMap key or a weights-cache file, never both: one base for each.
    **{f"spec.disaggregation.{side}.eplb.expertLocation.cacheFile": _set(BASE, "spec.disaggregation", _pd(
        {"cacheFile": "eplb/placement.json"})) for side in ("prefill", "decode")},
    "spec.disaggregation": _set(BASE, "spec.disaggregation", _pd(
        {"configMap": {"name": "experts", "key": "placement.json"}})),
}


def _base_for(path: str) -> dict[str, Any]:
    return next((b for prefix, b in _SECTION_BASES.items() if path.startswith(prefix)), BASE)


_WRONG_TYPE = {"string": 12345, "integer": "8", "number": "fast", "boolean": "yes", "array": "a", "object": "a"}


def generated() -> list[Case]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    cases: list[Case] = []
    for path, schema in _leaves(spec, "spec"):
        kind = schema.get("type")
        short = path.removeprefix("spec.")
        base = _base_for(path)
        if kind in _WRONG_TYPE:
            cases.append(_case(f"type {short}", path, _WRONG_TYPE[kind], base=base))
        if "enum" in schema:
            cases.append(_case(f"enum {short}", path, 3 if kind == "integer" else "bogus", base=base))
        if "minimum" in schema:
            low = schema["minimum"] if schema.get("exclusiveMinimum") else schema["minimum"] - 1
            cases.append(_case(f"below minimum {short}", path, low if kind == "integer" else float(low), base=base))
        if "maximum" in schema:
            high = schema["maximum"] + 1
            cases.append(_case(f"above maximum {short}", path, high if kind == "integer" else float(high), base=base))
        if "maxLength" in schema:
            cases.append(_case(f"too long {short}", path, "a" * (schema["maxLength"] + 1), base=base))
        if "maxItems" in schema:
            item = {"name": "X"} if (schema.get("items") or {}).get("type") == "object" else "mlx5_0"
            items = [dict(item, name=f"X{i}") if isinstance(item, dict) else item
                     for i in range(schema["maxItems"] + 1)]
            if short == "engine.extraArgs":
                items = ["--enable-cache-report"] * (schema["maxItems"] + 1)
            if short == "hardware.tolerations":
                items = [{"operator": "Exists"}] * (schema["maxItems"] + 1)
            cases.append(_case(f"too many {short}", path, items, base=base))
        if "maxProperties" in schema:
            many = {f"k{i}": "v" for i in range(schema["maxProperties"] + 1)}
            cases.append(_case(f"too many {short}", path, many, base=base))
    return cases


# ------------------------------------------------------------------------------------------- written

# Strings that break a Kubernetes name, a label, an image reference or an argv element.
_BAD_STRINGS = {
    "space": "a b", "shell": "x;rm -rf /", "subst": "$(id)", "backtick": "`id`", "newline": "a\nb",
    "upper": "UPPER", "leading-dash": "-x", "trailing-dot": "x.", "slash-only": "/", "empty": "",
}
_LONG_PREFIX = ".".join(["a" * 63] * 4)[:253] + "b"
# field → which of _BAD_STRINGS are wrong there (the format decides: "UPPER" is a fine revision).
_FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "spec.model.revision": ("space", "shell", "subst", "backtick", "newline", "leading-dash", "trailing-dot",
                            "slash-only", "empty"),
    "spec.model.tokenSecretRef.name": tuple(_BAD_STRINGS),
    "spec.model.tokenSecretRef.key": ("space", "shell", "subst", "backtick", "newline", "slash-only", "empty"),
    "spec.model.cache.claimName": tuple(_BAD_STRINGS),
    "spec.model.cache.nodeLocalPath": ("newline", "empty", "space-dots"),
    "spec.hardware.gpuResourceName": tuple(k for k in _BAD_STRINGS if k != "upper"),  # a label key may be upper
    "spec.hardware.tolerations[0].key": ("space", "shell", "subst", "backtick", "newline", "leading-dash",
                                         "trailing-dot", "slash-only"),
    "spec.network.rdma.resourceName": tuple(k for k in _BAD_STRINGS if k != "upper"),
    "spec.network.rdma.networks[0]": tuple(_BAD_STRINGS),
    "spec.network.sriov.resourceName": tuple(k for k in _BAD_STRINGS if k != "upper"),
    "spec.network.sriov.networks[0]": tuple(_BAD_STRINGS),
    "spec.network.ibDevices[0]": ("space", "shell", "subst", "backtick", "newline", "slash-only", "empty"),
    "spec.network.socketInterface": ("space", "shell", "subst", "backtick", "newline", "slash-only", "empty"),
    "spec.engine.image": tuple(_BAD_STRINGS),
    "spec.router.image": tuple(_BAD_STRINGS),
    "spec.scheduling.topologyKey": ("space", "shell", "subst", "backtick", "newline", "leading-dash",
                                    "trailing-dot", "slash-only", "empty"),
    "spec.scheduling.priorityClassName": tuple(_BAD_STRINGS),
    "spec.scheduling.queueName": tuple(_BAD_STRINGS),
}


def formats() -> list[Case]:
    cases = []
    for path, kinds in _FORMAT_FIELDS.items():
        for kind in kinds:
            value = {"space-dots": "/var/lib/../etc"}.get(kind) or _BAD_STRINGS[kind]
            if path.endswith("nodeLocalPath") and kind == "newline":
                value = "/var/lib/mimo\nweights"  # absolute, so that the newline is what is wrong
            cases.append(_case(f"format {path.removeprefix('spec.')} {kind}", path, value, base=_base_for(path)))
    cases += [
        _case("source path with dotdot", "spec.model.source", {"path": "/models/../etc"}, "spec.model.source.path",
              base=_set(BASE, "spec.model.revision", ...)),
        # Maps: keys and values of labels, annotations and the node selector.
        _case("label value with space", "spec.podTemplate.labels", {"team": "a b"}, "spec.podTemplate.labels"),
        _case("label value too long", "spec.podTemplate.labels", {"team": "a" * 64}, "spec.podTemplate.labels"),
        _case("label value shell", "spec.podTemplate.labels", {"team": "$(id)"}, "spec.podTemplate.labels"),
        _case("label key with space", "spec.podTemplate.labels", {"my team": "a"}, "spec.podTemplate.labels"),
        _case("label key two slashes", "spec.podTemplate.labels", {"a/b/c": "a"}, "spec.podTemplate.labels"),
        _case("label key name too long", "spec.podTemplate.labels", {"a" * 64: "a"}, "spec.podTemplate.labels"),
        _case("label key upper prefix", "spec.podTemplate.labels", {"Example.com/x": "a"},
              "spec.podTemplate.labels"),
        # A prefix of 254 characters, each part a DNS label: the pattern takes it, the apiserver's pod validation not.
        _case("label key prefix too long", "spec.podTemplate.labels", {f"{_LONG_PREFIX}/team": "a"},
              "spec.podTemplate.labels"),
        _case("annotation key prefix too long", "spec.podTemplate.annotations", {f"{_LONG_PREFIX}/owner": "a"},
              "spec.podTemplate.annotations"),
        _case("node selector key prefix too long", "spec.hardware.nodeSelector", {f"{_LONG_PREFIX}/pool": "gpu"},
              "spec.hardware.nodeSelector"),
        _case("toleration key prefix too long", "spec.hardware.tolerations",
              [{"key": f"{_LONG_PREFIX}/gpu", "operator": "Exists", "effect": "NoSchedule"}],
              "spec.hardware.tolerations[0].key"),
        # Control characters: a path breaks the volume and argv it is written into, a NUL ends an execve string.
        _case("source path with tab", "spec.model.source", {"path": "/models/mimo\tv2"}, "spec.model.source.path",
              base=_set(BASE, "spec.model.revision", ...)),
        _case("source path with escape", "spec.model.source", {"path": "/models/\x1b[2J"}, "spec.model.source.path",
              base=_set(BASE, "spec.model.revision", ...)),
        _case("env value with nul", "spec.engine.env", [{"name": "NCCL_DEBUG", "value": "WARN\x00INFO"}],
              "spec.engine.env[0].value"),
        _case("extraArgs value with nul", "spec.engine.extraArgs", ["--log-level", "info\x00debug"],
              "spec.engine.extraArgs[1]"),
        *(_case(f"{side} cache file with newline", f"spec.disaggregation.{side}.eplb.expertLocation.cacheFile",
                "eplb/a\nb.json", base=_base_for(f"spec.disaggregation.{side}.eplb.expertLocation.cacheFile"))
          for side in ("prefill", "decode")),
        _case("annotation key with space", "spec.podTemplate.annotations", {"my owner": "a"},
              "spec.podTemplate.annotations"),
        _case("annotation value too long", "spec.podTemplate.annotations", {"owner": "a" * 4097},
              "spec.podTemplate.annotations"),
        _case("node selector value a b c", "spec.hardware.nodeSelector", {"pool": "a b c"},
              "spec.hardware.nodeSelector"),
        _case("node selector key slash", "spec.hardware.nodeSelector", {"/pool": "gpu"}, "spec.hardware.nodeSelector"),
        _case("node selector value too long", "spec.hardware.nodeSelector", {"pool": "g" * 64},
              "spec.hardware.nodeSelector"),
        _case("toleration value with space", "spec.hardware.tolerations",
              [{"key": "gpu", "operator": "Equal", "value": "a b", "effect": "NoSchedule"}],
              "spec.hardware.tolerations[0].value"),
        _case("env name with dash", "spec.engine.env", [{"name": "MY-VAR", "value": "1"}], "spec.engine.env[0].name"),
        _case("env name starting with digit", "spec.engine.env", [{"name": "1VAR"}], "spec.engine.env[0].name"),
        _case("huggingface id with shell", "spec.model.source.huggingFaceId", "a/b;rm"),
        _case("huggingface id without owner", "spec.model.source.huggingFaceId", "MiMo-V2.5"),
        _case("gpu memory not a quantity", "spec.hardware", {"gpuMemory": "lots"}, "spec.hardware.gpuMemory"),
        _case("shm size with shell", "spec.engine.shmSize", "64Gi;reboot"),
        _case("unknown field", "spec.engine.imagePullSecret", "x"),
    ]
    return cases


def names() -> list[Case]:
    """Deployment names that cannot prefix the names of Services and pods."""
    bad = {"dots": "mimo.pro.v25", "underscore": "mimo_pro", "starts with digit": "1mimo",
           "ends with dash": "mimo-", "51 characters": "m" * 51}
    pd = _SECTION_BASES["spec.disaggregation"]
    return [*[_case(f"name {k}", "metadata.name", v, "metadata.name", name=v) for k, v in bad.items()],
            # A pool's gangs are named "<name>-prefill-…": 42 characters at most.
            _case("name of 43 characters with disaggregation", "metadata.name", "p" * 43, base=pd, name="p" * 43)]


def cross_field() -> list[Case]:
    b = BASE
    return [
        _case("tp not nodes times gpus", "spec.parallelism", {"nodesPerReplica": 2, "tensorParallel": 8},
              "spec.parallelism.tensorParallel"),
        _case("base context above 256k", "spec.model", {"variant": "MiMo-V2.5-Base", "contextLength": 524288},
              "spec.model.contextLength"),
        _case("bf16 without source", "spec.model", {"variant": "MiMo-V2.5", "precision": "bf16"}, "spec.model.source"),
        _case("revision with path", "spec.model.source", {"path": "/models/x"}, "spec.model.revision"),
        _case("source both", "spec.model.source", {"path": "/models/x", "huggingFaceId": "a/b"}, "spec.model.source",
              base=_set(b, "spec.model.revision", ...)),
        _case("shared cache without claim", "spec.model.cache", {"mode": "shared-volume"},
              "spec.model.cache.claimName"),
        _case("gpu type and memory", "spec.hardware.gpuMemory", "96G", "spec.hardware"),
        _case("architecture with gpu type", "spec.hardware.architecture", "blackwell"),
        _case("gpu memory below 16G", "spec.hardware", {"gpuMemory": "8Gi"}, "spec.hardware.gpuMemory"),
        _case("rdma with host network", "spec.network.mode", "hostNetwork", "spec.network.rdma"),
        _case("min above max replicas", "spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2},
              "spec.autoscaling.minReplicas"),
        _case("kueue without queue", "spec.scheduling.queueName", ..., "spec.scheduling.queueName"),
        _case("rollout zero zero", "spec.rollout", {"maxSurge": 0, "maxUnavailable": 0}, "spec.rollout.maxSurge"),
        _case("duplicate env names", "spec.engine.env", [{"name": "A"}, {"name": "A"}], "spec.engine.env"),
        _case("toleration exists with value", "spec.hardware.tolerations",
              [{"key": "k", "operator": "Exists", "value": "v"}], "spec.hardware.tolerations[0].value"),
        _case("toleration without key not exists", "spec.hardware.tolerations",
              [{"operator": "Equal", "value": "v"}], "spec.hardware.tolerations[0].operator"),
        _case("toleration seconds without noexecute", "spec.hardware.tolerations",
              [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}],
              "spec.hardware.tolerations[0].tolerationSeconds"),
        _case("port inside dist init ports", "spec.engine", {"port": 20003, "distInitPort": 20000},
              "spec.engine.port"),
        _case("port equals dist init port", "spec.engine", {"port": 25000, "distInitPort": 25000},
              "spec.engine.port"),
        _case("no model", "spec.model", ..., "spec.model"),
        _case("no hardware", "spec.hardware", ..., "spec.hardware"),
        _case("no gpu at all", "spec.hardware", {"nodeSelector": {"a": "b"}}, "spec.hardware"),
    ]


def spec_rules() -> list[Case]:
    """Values of the right type and format that still cannot work: another checkpoint than the variant, a
    figure off by a unit, the node's own directories, one resource named twice, a router a mode needs."""
    pd = _SECTION_BASES["spec.disaggregation"]
    pd_file = _SECTION_BASES["spec.disaggregation.prefill.eplb.expertLocation.cacheFile"]
    sriov = _SECTION_BASES["spec.network.sriov"]
    hf = "spec.model.source.huggingFaceId"
    cache_path = "spec.model.cache.nodeLocalPath"
    location = "spec.disaggregation.prefill.eplb.expertLocation"
    return [
        _case("hf id of the pro checkpoint for the flash variant", hf, "XiaomiMiMo/MiMo-V2.5-Pro"),
        _case("hf id of the base checkpoint in lower case", hf, "xiaomimimo/mimo-v2.5-base"),
        _case("gpu memory off by a digit", "spec.hardware", {"gpuMemory": "1410G"}, "spec.hardware.gpuMemory"),
        _case("gpu memory in petabytes", "spec.hardware", {"gpuMemory": "2P"}, "spec.hardware.gpuMemory"),
        *[_case(f"shm size {v!r}", "spec.engine.shmSize", v) for v in ("64", "0", "512Mi")],
        *[_case(f"node local path {v}", cache_path, v) for v in ("/", "/etc", "/boot/", "/var/lib/kubelet/pods",
                                                                   "/proc/1", "/var", "/home/", "/usr/local/w")],
        *[_case(f"gpu resource {v}", "spec.hardware.gpuResourceName", v) for v in ("memory", "cpu", "hugepages-2Mi")],
        _case("gpu resource without the device plugin's domain", "spec.hardware.gpuResourceName", "gpu"),
        _case("rdma resource without the device plugin's domain", "spec.network.rdma.resourceName", "rdma"),
        _case("sriov resource without the device plugin's domain", "spec.network.sriov.resourceName", "sriov_vf",
              base=sriov),
        _case("rdma resource is the gpu resource", "spec.network.rdma.resourceName", "nvidia.com/gpu"),
        _case("rdma resource is memory", "spec.network.rdma.resourceName", "memory"),
        _case("sriov resource is the gpu resource", "spec.network.sriov.resourceName", "nvidia.com/gpu", base=sriov),
        _case("disaggregated without router", "spec.router.enabled", False, base=pd),
        _case("scale from zero without router", "spec.autoscaling",
              {"enabled": True, "minReplicas": 0, "maxReplicas": 4}, "spec.autoscaling.minReplicas",
              base=_set(BASE, "spec.router.enabled", False)),
        _case("expert location escaping the cache", f"{location}.cacheFile", "../../etc/placement.json",
              base=pd_file),
        _case("expert location with a dot dot inside", f"{location}.cacheFile", "eplb/../../x.pt", base=pd_file),
        _case("expert location config map name", f"{location}.configMap.name", "My Placement!", base=pd),
        _case("expert location config map key", f"{location}.configMap.key", "../p", base=pd),
        _case("revision with dot dot", "spec.model.revision", "main..v2"),
        *[_case(f"token secret key {what}", "spec.model.tokenSecretRef.key", v)
          for what, v in (("dot", "."), ("dot dot", ".."), ("dot dot data", "..data"))],
        _case("expert location config map key dot dot data", f"{location}.configMap.key", "..data", base=pd),
        *[_case(f"node local path {v}", cache_path, v) for v in ("/var/lib/containers", "/opt/cni/bin",
                                                               "/var/lib/rancher/rke2")],
        *[_case(f"pod {which} key {key}", f"spec.podTemplate.{which}", {key: "x"})
          for which, key in (("labels", "mimo-operator.io/pool"), ("labels", "mimo-operator.io/serving"),
                             ("annotations", "mimo-operator.io/drain-started"))],
        _case("an hca twice", "spec.network.ibDevices", ["mlx5_0", "mlx5_1", "mlx5_0"], "spec.network.ibDevices[2]"),
        # Python's '$' matches before a final newline; the apiserver's (RE2) does not.
        _case("revision with a trailing newline", "spec.model.revision", "main\n"),
        _case("image with a trailing newline", "spec.engine.image", "busybox\n"),
        _case("label value with a trailing newline", "spec.podTemplate.labels", {"team": "inference\n"},
              "spec.podTemplate.labels[team]"),
    ]


def flags() -> list[Case]:
    """spec.engine.extraArgs: a flag SGLang does not have is refused at admission (the CRD carries the pinned
    SGLang's flag names); values of the wrong kind only the typed spec can check (status)."""
    def args(id: str, argv: list[str], index: int = 0, where: str = "admission") -> Case:
        return _case(f"extraArgs {id}", "spec.engine.extraArgs", argv, f"spec.engine.extraArgs[{index}]", where)
    return [
        args("unknown flag", ["--no-such-flag"]),
        args("misspelt flag", ["--enable-metrcs"]),
        args("unknown flag after a valid one", ["--log-level", "debug", "--no-such-flag"], 2),
        args("unknown flag with value", ["--no-such-flag=1"]),
        args("ambiguous abbreviation", ["--enable"]),
        args("unique abbreviation", ["--enable-cache-rep"]),
        args("abbreviation of a flag the plan owns", ["--mem-frac=0.5"]),
        args("int flag given a word", ["--max-total-tokens", "lots"], where="status"),
        args("float flag given a word", ["--schedule-conservativeness", "high"], where="status"),
        args("choice flag outside choices", ["--schedule-policy", "fifo"], where="status"),
        args("switch given a value", ["--enable-torch-compile=yes"], where="status"),
        args("value without a flag", ["--log-level", "info", "stray"], 2, where="status"),
        args("flag missing its value", ["--api-key"], where="status"),
        args("single dash", ["-x"], where="status"),
        args("json flag given bad json", ["--radix-eviction-policy-config", "{"], where="status"),
        args("list flag without values", ["--allowed-media-domains"], where="status"),
    ]


def status_only() -> list[Case]:
    """Accepted by the apiserver, refused by the operator in status (the planner's rules and arithmetic)."""
    return [
        _case("extraArgs flag the plan owns", "spec.engine.extraArgs", ["--tp-size", "4"], "spec.engine.extraArgs",
              "status"),
        _case("extraArgs another flag the plan owns", "spec.engine.extraArgs", ["--watchdog-timeout", "5"],
              "spec.engine.extraArgs", "status"),
        _case("attention dp not a split of tp", "spec.parallelism", {"attentionDataParallel": 3},
              "spec.parallelism.attentionDataParallel", "status"),
        _case("pro on one h100 node", "spec.hardware", {"gpuType": "H100-80GB"}, "spec.parallelism.nodesPerReplica",
              "status", base=_set(_set(BASE, "spec.model", {"variant": "MiMo-V2.5-Pro"}),
                                  "spec.parallelism", {"nodesPerReplica": 1})),
        _case("ep not dividing experts", "spec.parallelism", {"expertParallel": 7}, "spec.parallelism.expertParallel",
              "status"),
    ]


def planner_rules() -> list[Case]:
    """Fields valid one by one that the planner refuses together (status): a port another port of the gang's pods
    already takes, environment the operator owns, extraArgs that undo or outgrow the plan, annotations past
    Kubernetes' limit, a prefill chunk the sliding-window pool cannot hold."""
    from mimo_operator.launchplan import Ports

    ports = Ports()
    pro = _set(BASE, "spec.model", {"variant": "MiMo-V2.5-Pro"})  # two nodes: SGLang's ports between them
    h100 = _set(_set(BASE, "spec.hardware", {"gpuType": "H100-80GB"}), "spec.parallelism", {"nodesPerReplica": 1})
    env = "spec.engine.env"
    mine = {"name": "NCCL_DEBUG", "value": "WARN"}  # BASE's own entry stays first: the refusal names the second

    def args(id: str, argv: list[str]) -> Case:
        return _case(f"extraArgs {id}", "spec.engine.extraArgs", ["--enable-cache-report", *argv],
                     "spec.engine.extraArgs[1]", "status")

    return [
        *[_case(f"port of the gang's {name}", "spec.engine.port", getattr(ports, name), where="status")
          for name in ("worker_http", "ray_gcs", "fabric")],
        _case("port whose zmq ports reach the worker's", "spec.engine.port", ports.worker_http - 233 - 1,
              where="status"),
        _case("dist init port on the worker's", "spec.engine.distInitPort", ports.worker_http, where="status"),
        *[_case(f"dist init port {k} below the worker's on two nodes", "spec.engine.distInitPort",
                ports.worker_http - k, where="status", base=pro) for k in (6, 13)],
        *[_case(f"env {name} the operator sets", env, [mine, {"name": name, "value": "1"}], f"{env}[1].name",
                "status") for name in ("MIMO_LAUNCH_PLAN", "MIMO_NODE_RANK", "POD_IP", "CUDA_VISIBLE_DEVICES",
                                       "HF_TOKEN")],
        _case("env deepep dispatch below a graph batch", env,
              [mine, {"name": "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK", "value": "64"}], f"{env}[1].value",
              "status"),
        args("prefill decode mode in a colocated deployment", ["--disaggregation-mode", "prefill"]),
        args("eplb in a colocated deployment", ["--enable-eplb"]),
        args("negation of a flag the plan owns", ["--no-mm-enable-dp-encoder"]),
        args("hybrid swa memory off", ["--disable-hybrid-swa-memory"]),
        args("config file", ["--config", "/mimo-cache/args.yaml"]),
        args("base gpu id", ["--base-gpu-id", "4"]),
        args("max total tokens below the context", ["--max-total-tokens", "4096"]),
        args("value starting with a dash", ["--api-key", "-abc"]),
        _case("annotations past the pod limit", "spec.podTemplate.annotations",
              {f"example.com/a{i}": "x" * 4000 for i in range(32)}, where="status",
              base=_set(BASE, env, [{"name": f"V{i}", "value": "y" * 4000} for i in range(40)])),
        _case("chunk the sliding window pool cannot hold", "spec.engine.chunkedPrefillSize", 1_048_576,
              where="status", base=_set(h100, "spec.model.contextLength", 65536)),
        _case("env past the pod limit in characters of six escaped bytes", env,
              [mine, *({"name": f"V{i}", "value": "€" * 4000} for i in range(30))], where="status"),
        *[_case(f"{field} on the node's {what} in host network", f"spec.engine.{field}", port, where="status",
                base=_set(pro, "spec.network", {"mode": "hostNetwork"}))
          for field, port, what in (("port", 10250, "kubelet"), ("port", 10256, "kube-proxy"),
                                    ("distInitPort", 10250, "kubelet"))],
        _case("node selector on one host for a gang of two nodes", "spec.hardware.nodeSelector",
              {"kubernetes.io/hostname": "gpu-1"}, "spec.hardware.nodeSelector[kubernetes.io/hostname]",
              where="status", base=pro),
        _case("gang topology of one host for a gang of two nodes", "spec.scheduling.topologyKey",
              "kubernetes.io/hostname", where="status", base=pro),
    ]


def corpus() -> list[Case]:
    return (generated() + formats() + names() + cross_field() + spec_rules() + flags() + status_only()
            + planner_rules())
