"""Which scheduling.k8s.io version the local cluster turns on for Kubernetes' own gang scheduling: read from
the built kube-apiserver's --version, refused with the versions it knows for any other minor."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimo_operator.localcluster.controlplane import workload_api
from mimo_operator.localcluster.processes import ComponentFailed


def _apiserver(tmp_path: Path, version: str) -> str:
    path = tmp_path / "kube-apiserver"
    path.write_text(f"#!/bin/sh\necho 'Kubernetes {version}'\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(("version", "api"), [("v1.36.3", "scheduling.k8s.io/v1alpha2"),
                                              ("v1.37.2", "scheduling.k8s.io/v1alpha3")])
def test_the_podgroup_version_follows_the_apiservers_minor(tmp_path: Path, version: str, api: str) -> None:
    assert workload_api(_apiserver(tmp_path, version)) == api


@pytest.mark.parametrize("version", ["v1.34.7", "v1.38.0", "garbage"])
def test_a_minor_without_a_known_podgroup_api_is_refused_naming_the_ones_known(tmp_path: Path, version: str) -> None:
    with pytest.raises(ComponentFailed, match=r"1\.36–1\.37"):
        workload_api(_apiserver(tmp_path, version))
