"""Where hack/build-binaries.sh puts the upstream binaries, and a clear error when one is missing."""

from __future__ import annotations

import os
from pathlib import Path

from mimo_operator.errors import MimoError

__all__ = ["GANG_SCHEDULERS", "REQUIRED", "WORKLOAD_CONTROLLERS", "BinariesMissing", "binaries_missing", "binary",
           "cache_dir", "kueue_file", "kwok_stages_dir", "lws_file", "podgroup_crd"]

REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")
# Gang schedulers the local cluster can run, and the binary each needs beyond the control plane's (built by
# hack/build-binaries.sh too): scheduler-plugins' coscheduling runs next to kube-scheduler; "kubernetes" is
# kube-scheduler's own gang scheduling (scheduling.k8s.io PodGroups, an alpha API turned on by feature gates).
# Kueue's manager admits a gang's pods together when its ClusterQueue's quota has room for all of them.
GANG_SCHEDULERS: dict[str, tuple[str, ...]] = {"scheduler-plugins": ("scheduler-plugins",), "kubernetes": (),
                                               "kueue": ("kueue",)}
# Other projects' workload controllers the local cluster can run beside the control plane, for the benchmarks
# that compare with them: LeaderWorkerSet (a leader pod and its workers' StatefulSet per group). Built only on
# request (hack/build-binaries.sh --only lws): nothing but the scale benchmark needs it.
WORKLOAD_CONTROLLERS: dict[str, tuple[str, ...]] = {"lws": ("lws",)}


class BinariesMissing(MimoError):
    """The local cluster's binaries have not been built yet."""


def cache_dir() -> Path:
    """``$MIMO_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/mimo-operator`` (as in the build script)."""
    if explicit := os.environ.get("MIMO_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mimo-operator"


def binary(name: str) -> Path:
    path = cache_dir() / "bin" / name
    if not os.access(path, os.X_OK):
        raise BinariesMissing(
            f"{name} is not built: expected an executable at {path}. "
            "Run hack/build-binaries.sh (it builds the pinned etcd, Kubernetes, kwok, kubectl and helm "
            "from the Go module proxy into that directory)."
        )
    return path


def kwok_stages_dir() -> Path:
    path = cache_dir() / "kwok-stages"
    if not path.is_dir():
        raise BinariesMissing(f"kwok's stage files are missing at {path}: run hack/build-binaries.sh")
    return path


def binaries_missing(extra: tuple[str, ...] = ()) -> list[str]:
    """The names of the required binaries (and of ``extra`` ones) not built yet (empty when all are there)."""
    bin_dir = cache_dir() / "bin"
    missing = [name for name in (*REQUIRED, *extra) if not os.access(bin_dir / name, os.X_OK)]
    if not (cache_dir() / "kwok-stages").is_dir():
        missing.append("kwok-stages")
    return missing


def podgroup_crd() -> Path:
    """scheduler-plugins' PodGroup CRD, copied from its module by the build script."""
    path = cache_dir() / "scheduler-plugins" / "podgroup-crd.yaml"
    if not path.is_file():
        raise BinariesMissing(f"scheduler-plugins' PodGroup CRD is missing at {path}: run hack/build-binaries.sh")
    return path


def lws_file(name: str) -> Path:
    """LeaderWorkerSet's CRD (``crd.yaml``) or its webhook configurations (``webhooks.yaml``, with the pod
    webhooks' object selector as its install patches them), copied from its module by the build script."""
    path = cache_dir() / "lws" / name
    if not path.exists():
        raise BinariesMissing(f"LeaderWorkerSet's {name} is missing at {path}: run hack/build-binaries.sh --only lws")
    return path


def kueue_file(name: str) -> Path:
    """Kueue's CRDs and their kustomization (``crd``) or its webhook configurations (``webhooks.yaml``), copied
    from its module by the build script."""
    path = cache_dir() / "kueue" / name
    if not path.exists():
        raise BinariesMissing(f"Kueue's {name} is missing at {path}: run hack/build-binaries.sh")
    return path
