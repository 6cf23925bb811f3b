"""The typed spec against the CRD it mirrors, and parse_spec's errors."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from mimo_operator.errors import PlanRefused, SpecError
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import DeploymentSpec, parse_quantity, parse_spec
from mimo_operator.versions import WORKER_IMAGE
from tests.helpers.specs import a_deployment

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "mimodeployment.yaml"
MANIFESTS = REPO / "tests" / "manifests"


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def expected_error(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            return line.removeprefix("# expect: ").strip()
    raise AssertionError(f"{path.name} has no '# expect:' line")


def nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def literal_values(annotation: Any) -> set[Any] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = literal_values(arg)
            if found is not None:
                return found
    return None


def pairs(model: type[BaseModel], schema: dict[str, Any], path: str = "spec") -> list[tuple[str, Any, Any]]:
    """(dotted path, pydantic field, CRD property) for every field, recursively."""
    out = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        out.append((f"{path}.{alias}", field, prop))
        child = nested_model(field.annotation)
        if child is not None and prop is not None:
            sub = prop["items"] if prop.get("type") == "array" else prop
            out += pairs(child, sub, f"{path}.{alias}")
    return out


SPEC_PAIRS = pairs(DeploymentSpec, crd_schema()["properties"]["spec"])


@pytest.mark.parametrize(("path", "field", "prop"), SPEC_PAIRS, ids=[p for p, _, _ in SPEC_PAIRS])
def test_every_model_field_is_a_crd_property_with_the_same_default(path: str, field: Any, prop: Any) -> None:
    assert prop is not None, f"{path} is in spec.py but not in the CRD"
    if field.default_factory is not None:
        # An object the model builds from its own defaults: the CRD must default it to {} too.
        assert prop.get("default") == {}, f"{path}: the CRD must default it to {{}} like the model"
    elif field.is_required():
        assert "default" not in prop
    elif field.default is None:
        assert "default" not in prop, f"{path}: the CRD has a default the model lacks"
    else:
        assert prop.get("default") == field.default, f"{path}: CRD {prop.get('default')!r} ≠ model {field.default!r}"


@pytest.mark.parametrize(("path", "field", "prop"), SPEC_PAIRS, ids=[p for p, _, _ in SPEC_PAIRS])
def test_enums_of_crd_and_model_are_the_same(path: str, field: Any, prop: Any) -> None:
    values = literal_values(field.annotation)
    assert (set(prop["enum"]) if "enum" in prop else None) == values


def walk_objects(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, prop in schema.get("properties", {}).items():
        out += walk_objects(prop, f"{path}.{name}")
    if "items" in schema:
        out += walk_objects(schema["items"], f"{path}[]")
    return out


def test_every_crd_spec_property_is_in_the_model() -> None:
    in_model = {p for p, _, _ in SPEC_PAIRS}
    in_crd = {
        path for path, node in walk_objects(crd_schema()["properties"]["spec"], "spec") if path != "spec"
        and not path.endswith("[]") and "additionalProperties" not in node
    }
    in_crd = {p.replace("[]", "") for p in in_crd}
    assert in_crd - in_model == set()


def test_every_crd_field_has_a_description_for_kubectl_explain() -> None:
    missing = [
        path for path, node in walk_objects(crd_schema(), "")
        if path not in ("", ".metadata") and not node.get("description")
    ]
    assert missing == []


def test_the_default_engine_image_is_the_pinned_sglang_image() -> None:
    engine = crd_schema()["properties"]["spec"]["properties"]["engine"]
    assert engine["properties"]["image"]["default"] == WORKER_IMAGE
    assert parse_spec(a_deployment().build()).engine.image == WORKER_IMAGE


def test_a_whole_manifest_a_live_object_and_a_bare_spec_parse_alike() -> None:
    manifest = a_deployment().pro().h200().replicas(2).build()
    live = {**manifest, "metadata": {**manifest["metadata"], "uid": "u", "generation": 3},
            "status": {"phase": "Ready", "readyReplicas": 2}}
    assert parse_spec(manifest) == parse_spec(live) == parse_spec(manifest["spec"])
    spec = parse_spec(manifest)
    assert (spec.model.variant, spec.hardware.gpu_type, spec.replicas) == ("MiMo-V2.5-Pro", "H200-141GB", 2)


def test_defaults_fill_every_section() -> None:
    spec = parse_spec(a_deployment().build())
    assert spec.model.precision == "fp8"
    assert spec.model.cache.mode == "none"
    assert spec.model.cache.gate_on_weights_ready
    assert spec.network.mode == "hostNetwork"
    assert spec.parallelism.moe_a2a_backend == "auto"
    assert spec.parallelism.mtp
    assert spec.engine.port == 30000
    assert spec.engine.page_size == 64
    assert spec.autoscaling.target_kv_cache_usage == 0.8
    assert spec.router.policy == "cache_aware"
    assert spec.rollout.max_surge == 1


@pytest.mark.parametrize("path", sorted((MANIFESTS / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_manifest_is_refused_naming_the_field(path: Path) -> None:
    expect = expected_error(path)
    manifest = yaml.safe_load(path.read_text())
    with pytest.raises(SpecError) as raised:
        plan_deployment(parse_spec(manifest))
    assert expect in str(raised.value)
    assert str(raised.value).startswith(raised.value.field)


@pytest.mark.parametrize("path", sorted((MANIFESTS / "valid").glob("*.yaml")), ids=lambda p: p.stem)
def test_valid_manifest_parses_and_plans(path: Path) -> None:
    plan = plan_deployment(parse_spec(yaml.safe_load(path.read_text())))
    assert plan.nodes_per_replica >= 1


def test_the_corpora_are_large_enough() -> None:
    valid = [yaml.safe_load(p.read_text()) for p in (MANIFESTS / "valid").glob("*.yaml")]
    assert len(list((MANIFESTS / "invalid").glob("*.yaml"))) >= 25
    specs = [m["spec"] for m in valid]
    assert {s["model"]["variant"] for s in specs} == {
        "MiMo-V2.5", "MiMo-V2.5-Base", "MiMo-V2.5-Pro", "MiMo-V2.5-Pro-Base"}
    assert {s["model"].get("precision", "fp8") for s in specs} == {"fp8", "bf16"}
    assert {s.get("network", {}).get("mode", "hostNetwork") for s in specs} == {
        "hostNetwork", "rdma", "sriov", "podNetwork"}


def test_an_unknown_enum_value_lists_what_is_allowed() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(a_deployment().gpu("A100-80GB").build())
    assert raised.value.field == "spec.hardware.gpuType"
    assert "'H100-80GB'" in raised.value.message
    assert "'A100-80GB'" in raised.value.message


@pytest.mark.parametrize("key", ["nvidia.com/gpu.count", "team", "example.com/x"])
def test_a_map_value_of_the_wrong_type_is_named_by_its_key_in_brackets(key: str) -> None:
    manifest = a_deployment("m").build()
    manifest["spec"]["hardware"]["nodeSelector"] = {key: 8}
    with pytest.raises(SpecError) as raised:
        parse_spec(manifest)
    assert raised.value.field == f"spec.hardware.nodeSelector[{key}]"


def test_an_unknown_field_lists_the_fields_allowed_there() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(a_deployment().set("router.polcy", "random").build())
    assert raised.value.field == "spec.router.polcy"
    assert "policy" in raised.value.message
    assert "enabled" in raised.value.message


def test_strings_are_not_coerced_to_numbers() -> None:
    with pytest.raises(SpecError, match=r"spec\.engine\.port"):
        parse_spec(a_deployment().engine(port="30000").build())


def test_list_items_are_named_by_index() -> None:
    spec = a_deployment().engine(env=[{"name": "OK", "value": "1"}, {"name": "bad-name"}]).build()
    with pytest.raises(SpecError) as raised:
        parse_spec(spec)
    assert raised.value.field == "spec.engine.env[1].name"


def test_duplicate_env_names_are_refused_as_the_apiserver_does_for_a_map_list() -> None:
    spec = a_deployment().engine(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]).build()
    with pytest.raises(SpecError, match="duplicate names: A"):
        parse_spec(spec)


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([1, 2], "spec"),
        ({"kind": "Deployment", "spec": {}}, "kind"),
        ({"apiVersion": "apps/v1", "kind": "MiMoDeployment", "spec": {}}, "apiVersion"),
        ({"kind": "MiMoDeployment", "metadata": {"name": "m"}}, "spec"),
        ({"kind": "MiMoDeployment", "spec": "model: x"}, "spec"),
        ({"apiVersion": "serving.mimo-operator.io/v2", "kind": "MiMoDeployment", "spec": {}}, "apiVersion"),
        ({"kind": "MiMoDeployment", "metadata": {"name": 7}, "spec": {}}, "metadata.name"),
    ],
    ids=["not-a-mapping", "wrong-kind", "wrong-group", "no-spec", "spec-not-a-mapping", "unserved-version",
         "name-not-a-string"],
)
def test_malformed_objects_raise_spec_error(obj: Any, field: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(obj)
    assert raised.value.field == field


@pytest.mark.parametrize("path", ["network", "engine.port", "model.cache", "autoscaling", "router.enabled"])
def test_a_null_field_is_pruned_and_takes_its_default_as_the_apiserver_stores_it(path: str) -> None:
    manifest = a_deployment("m").build()
    node = manifest["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = None
    assert parse_spec(manifest) == parse_spec(a_deployment("m").build())


def test_no_field_of_the_crd_is_nullable() -> None:
    # What the null pruning above mirrors: the apiserver keeps a null only where the schema says nullable.
    assert "nullable" not in CRD_PATH.read_text()


def test_plan_refused_is_a_spec_error() -> None:
    assert issubclass(PlanRefused, SpecError)


@pytest.mark.parametrize(
    ("text", "value"),
    [("141Gi", 141 * 2**30), ("96G", 96_000_000_000), ("80000000000", 80_000_000_000), ("1.5Ti", int(1.5 * 2**40))],
)
def test_quantities(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_a_custom_gpu_memory_is_read_as_a_quantity() -> None:
    spec = parse_spec(a_deployment().set("hardware", {"gpuMemory": "96Gi"}).build())
    assert spec.hardware.gpu_memory_bytes == 96 * 2**30


def test_pod_labels_in_the_operators_domain_are_refused_and_the_local_clusters_process_label_is_not() -> None:
    from mimo_operator.localcluster.podrunner import PROCESS_LABEL

    spec = {"model": {"variant": "MiMo-V2.5"}, "hardware": {"gpuType": "H200-141GB"}}
    parse_spec({**spec, "podTemplate": {"labels": {PROCESS_LABEL: "true"}}})  # the demo's and the e2e tests'
    with pytest.raises(SpecError) as refused:
        parse_spec({**spec, "podTemplate": {"labels": {"mimo-operator.io/serving": "true"}}})
    assert refused.value.field == "spec.podTemplate.labels"
