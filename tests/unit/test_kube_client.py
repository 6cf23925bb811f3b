"""The operator's API client: paths of the kinds it writes, and a rotated service-account token is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from mimo_operator import kube
from mimo_operator.kube import Kube, KubeConfig, path_of


def test_paths_of_namespaced_cluster_scoped_and_sub_resources() -> None:
    assert path_of("v1", "Pod", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert path_of("v1", "Node", None, "n") == "/api/v1/nodes/n"
    assert path_of("serving.mimo-operator.io/v1alpha1", "MiMoDeployment", "ns", "d", "scale") == \
        "/apis/serving.mimo-operator.io/v1alpha1/namespaces/ns/mimodeployments/d/scale"


def test_a_label_selector_can_ask_for_a_label_to_be_absent() -> None:
    # The shared objects are listed without the gangs' own: deployment=d,!gang.
    assert kube._selector({"mimo/gang": None, "mimo/deployment": "d"}) == "mimo/deployment=d,!mimo/gang"


async def test_a_rotated_token_file_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    client = Kube(KubeConfig(server="https://127.0.0.1:1", token="first", token_path=str(token), insecure=True))
    try:
        assert client._current_token() == "first"
        token.write_text("second\n")
        assert client._current_token() == "first", "not re-read on every request"
        monkeypatch.setattr(kube, "_TOKEN_REREAD_SECONDS", 0.0)
        assert client._current_token() == "second"
    finally:
        await client.close()
