"""`mimoctl cluster up`, `down`, `up` again in the default state directory: the second cluster starts fresh
(etcd's data of the first run once made it fail with "nodes gpu-node-0 already exists")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimo_operator.localcluster.cluster import RUN_STATE, LocalCluster, default_state_dir
from tests.conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def mimoctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from mimo_operator.cli import main; raise SystemExit(main())",
                           *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False)


def test_up_down_up_works_in_the_default_state_directory(tmp_path: Path) -> None:
    # The default flow: no --state-dir, so the directory is under XDG_STATE_HOME, as on a person's machine.
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    state_dir = Path(subprocess.run(
        [sys.executable, "-c", "from mimo_operator.localcluster.cluster import default_state_dir as d; print(d())"],
        capture_output=True, text=True, env=env, check=True).stdout.strip())
    assert state_dir.is_relative_to(tmp_path)
    assert default_state_dir() != state_dir  # the test never touches the real default directory
    cluster = LocalCluster(state_dir)
    try:
        first = mimoctl(env, "cluster", "up", "--nodes", "1")
        assert first.returncode == 0, first.stderr[-3000:]
        nodes = cluster.kubectl_json("get", "nodes")["items"]
        assert [n["metadata"]["name"] for n in nodes] == ["gpu-node-0"]
        cluster.kubectl("create", "namespace", "left-from-the-first-run")
        assert (state_dir / "etcd").is_dir()

        assert mimoctl(env, "cluster", "down").returncode == 0
        assert not cluster.is_running()
        assert (state_dir / "etcd").is_dir()  # what `down` leaves is what broke the next `up`

        second = mimoctl(env, "cluster", "up", "--nodes", "1")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "already exists" not in second.stderr
        assert [n["metadata"]["name"] for n in cluster.kubectl_json("get", "nodes")["items"]] == ["gpu-node-0"]
        namespaces = {n["metadata"]["name"] for n in cluster.kubectl_json("get", "namespaces")["items"]}
        assert "left-from-the-first-run" not in namespaces  # a new cluster, not the old one's data
        assert json.loads((state_dir / "state.json").read_text())["status"] == "ready"
        assert (state_dir / "logs").is_dir()
    finally:
        mimoctl(env, "cluster", "down")


def test_up_removes_only_the_last_run_s_own_files(tmp_path: Path) -> None:
    (tmp_path / "etcd" / "member").mkdir(parents=True)
    (tmp_path / "kubeconfig").write_text("old")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "supervisor.log").write_text("kept")
    (tmp_path / "notes.txt").write_text("someone else's file")
    LocalCluster(tmp_path)._forget_last_run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "notes.txt"]
    assert "etcd" in RUN_STATE
