"""The string formats the CRD's CEL rules and the typed spec check are the same patterns and messages, and the
longest child name the builders make from a deployment name at the limit fits 63 characters."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from mimo_operator import labels as L
from mimo_operator.spec import (
    FORMATS,
    LONGEST_CHILD_SUFFIX,
    MAX_NAME_LENGTH,
    MAX_REPLICAS,
    MAX_SURGE,
    NUL_MESSAGE,
    SpecError,
    parse_spec,
)
from tests.conftest import REPO
from tests.helpers.specs import a_deployment

CRD = yaml.safe_load((REPO / "crds" / "mimodeployment.yaml").read_text())
ROOT = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
_MATCHES = re.compile(r"matches\('([^']*)'\)")


def rules(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, rule
    for name, child in (schema.get("properties") or {}).items():
        yield from rules(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from rules(schema[key], f"{path}[]")


FORMAT_RULES = [(p, r) for p, r in rules(ROOT, "") if _MATCHES.search(r["rule"])]


def test_the_crd_checks_formats_in_many_places() -> None:
    assert len(FORMAT_RULES) >= 20


@pytest.mark.parametrize(("path", "rule"), FORMAT_RULES, ids=[p for p, _ in FORMAT_RULES])
def test_every_format_rule_of_the_crd_is_a_format_of_the_typed_spec(path: str, rule: dict[str, Any]) -> None:
    (pattern,) = _MATCHES.findall(rule["rule"])
    known = {f.pattern: f for f in FORMATS.values()}
    assert pattern in known, f"{path}: a pattern the typed spec does not check"
    assert known[pattern].allowed in rule["message"]
    limit = known[pattern].prefix_limit
    assert (limit is not None) == (".split('/')[0].size() <= " in rule["rule"])
    if limit is not None:
        assert f".split('/')[0].size() <= {limit}" in rule["rule"]


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("label-key", ["app", "nvidia.com/gpu.product", "a_b.C-1", "x" * 63],
         ["a b", "/x", "x/", "a/b/c", "x" * 64, "Example.com/x", "-a"]),
        ("extended-resource", ["nvidia.com/gpu", "rdma/rdma_shared_device_a", "amd.com/gpu", "nvidia.com/sriov_ib_vf"],
         ["gpu", "sriov_vf", "/gpu", "nvidia.com/", "a b/c", "nvidia.com/gpu/x"]),
        ("secret-key", ["token", ".env", "a..b", "-x_1.y"], [".", "..", "..data", "a/b", ""]),
        ("label-value", ["", "H200", "a.b_c-d", "x" * 63], ["a b", "a b c", "x" * 64, "-a", "a.", "$(id)"]),
        ("image", ["busybox", "ghcr.io/mimo-operator/mimo-worker:v0.1.0-sglang0.5.23", "localhost:5000/a/b:c",
                   "x@sha256:" + "a" * 64], ["img;rm -rf /", "img:$(x)", "a b", "img:`id`", "img:a:b", ""]),
        ("git-ref", ["main", "v1.0", "refs/pr/1", "0123456789abcdef" * 2 + "01234567", "release_2"],
         ["a b", "x;y", "$(id)", "-x", "a//b", "a/", ""]),
        ("dns-1035-label", ["mimo", "mimo-pro-v25", "a1"], ["mimo.pro.v25", "1mimo", "Mimo", "mimo-", "a_b"]),
        ("absolute-path", ["/", "/var/lib/mimo", "/a/.b/..c/", "/mnt/model é/v2"],
         ["relative", "/a/../b", "/a/./b", "//a", "/..", "/a\nb", "/a\tb", "/a\x00b", "/a\x7f", "/a/\x1b[2J"]),
        ("relative-path", ["experts.json", "eplb/2026-12/experts.pt", ".hidden/x.json", "..x/a"],
         ["/abs.json", "a/../b.json", "./a.json", "a//b.json", "a/", "a\nb.json", "a\x00.pt", ""]),
    ],
)
def test_formats_accept_and_refuse(fmt: str, good: list[str], bad: list[str]) -> None:
    form = FORMATS[fmt]
    assert [g for g in good if not form.accepts(g)] == []
    assert [b for b in bad if form.accepts(b)] == []


def test_a_label_key_s_prefix_is_a_dns_subdomain_of_at_most_253_characters() -> None:
    label_key = FORMATS["label-key"]
    prefix = ".".join(["a" * 63] * 4)[:253]  # 253 characters, each part a DNS label
    assert label_key.accepts(f"{prefix}/name")
    assert not label_key.accepts(f"{prefix}b/name")
    assert re.fullmatch(label_key.regex, f"{prefix}b/name"), "the pattern alone lets it through: the limit is its own"
    assert label_key.accepts("x" * 63)


def test_the_control_class_is_re2_s_in_the_crd_and_spelt_out_for_python() -> None:
    path = FORMATS["absolute-path"]
    assert "[:cntrl:]" in path.pattern
    assert "\\" not in path.pattern
    assert "[:cntrl:]" not in path.regex


def test_the_longest_child_name_of_a_name_at_the_limit_fits_63_characters() -> None:
    name = "m" * MAX_NAME_LENGTH
    parse_spec(a_deployment(name).build())
    gang = L.gang_name(name, MAX_REPLICAS + MAX_SURGE - 1, "revision", 999)
    longest = L.pod_name(gang, 63)  # a replica has at most 64 nodes
    assert len(longest) == len(name) + len(LONGEST_CHILD_SUFFIX) == 63
    assert re.match(FORMATS["dns-1035-label"].pattern, gang)
    assert len(f"{name}-router") <= 63


def test_the_crd_s_lists_of_system_directories_core_resources_and_official_ids_are_the_typed_spec_s() -> None:
    # The CRD's CEL rules spell these lists out; the typed spec keeps them as constants: one must follow the other.
    from mimo_operator.spec import CORE_RESOURCES, OFFICIAL_IDS, SYSTEM_DIRECTORIES, SYSTEM_PARENTS

    texts = [r["rule"] for _, r in rules(ROOT, "")]
    cache_rule = next(t for t in texts if "'/var/lib/kubelet'" in t)
    for directory in SYSTEM_DIRECTORIES:
        assert f"'{directory}'" in cache_rule
    for parent in SYSTEM_PARENTS:
        assert f"'{parent}'" in cache_rule
    assert any(all(f"'{i}'" in t for i in OFFICIAL_IDS) for t in texts)
    for mode in ("rdma", "sriov"):
        nic_rule = next(t for t in texts if f"self.network.{mode}.resourceName !=" in t)
        assert all(f"'{r}'" in nic_rule for r in CORE_RESOURCES)


def test_argv_elements_and_environment_values_refuse_a_nul_at_admission_as_the_typed_spec_does() -> None:
    nul_rules = {path: rule for path, rule in rules(ROOT, "") if "x00" in rule["rule"]}
    assert sorted(nul_rules) == [".spec.engine.env[].value", ".spec.engine.extraArgs[]"]
    for rule in nul_rules.values():
        assert rule["rule"] == "!self.contains('\\x00')"  # CEL reads '\x00' as the NUL character
        assert rule["message"] == NUL_MESSAGE
    for where, manifest in (
        ("spec.engine.extraArgs[1]", a_deployment().extra_args("--log-level", "info\x00debug").build()),
        ("spec.engine.env[0].value", a_deployment().engine(env=[{"name": "A", "value": "x\x00y"}]).build()),
    ):
        with pytest.raises(SpecError) as refused:
            parse_spec(manifest)
        assert refused.value.field == where
        assert NUL_MESSAGE in str(refused.value)
