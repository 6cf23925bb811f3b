"""docs/spec-reference.md is rendered from the CRD by hack/crd-reference.py and kept up to date."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType
from typing import Any

import yaml

from tests.conftest import REPO

SCRIPT = REPO / "hack" / "crd-reference.py"
CRD = REPO / "crds" / "mimodeployment.yaml"


def renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crd_reference", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def field_paths(schema: dict[str, Any], path: str) -> list[str]:
    out = []
    for name, child in (schema.get("properties") or {}).items():
        out.append(f"{path}.{name}")
        items = child.get("items") or {}
        out += field_paths(child, f"{path}.{name}")
        out += field_paths(items, f"{path}.{name}[]")
    return out


def test_the_committed_reference_is_what_the_crd_renders() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_field_of_the_crd_has_a_row_with_its_description_and_default() -> None:
    crd = yaml.safe_load(CRD.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = renderer().render(crd)
    for section in ("spec", "status"):
        for path in field_paths(root["properties"][section], section):
            assert f"| `{path}`" in text, path
    row = next(line for line in text.splitlines() if line.startswith("| `spec.model.precision`"))
    assert "`fp8`" in row
    assert "Weight precision." in row
    assert "one of `fp8`, `bf16`" in row
    assert "contextLength can be at most 262144 for the -Base checkpoints" in text, "CEL rules are listed"
    assert "| Phase | `.status.phase` |" in text, "printer columns are listed"
