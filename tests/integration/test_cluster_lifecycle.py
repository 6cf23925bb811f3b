"""The local cluster leaves nothing behind — stopped, interrupted or failing — and names what failed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.controlplane import ClusterConfig, ControlPlane
from mimo_operator.localcluster.processes import ComponentFailed
from tests.conftest import REPO, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def footprint(state: dict[str, object]) -> tuple[list[int], list[int]]:
    pids = [int(p) for p in dict(state["pids"]).values()] + [int(state["pid"])]  # type: ignore[arg-type]
    ports = [int(p) for p in dict(state["ports"]).values()]  # type: ignore[arg-type]
    return pids, ports


def assert_nothing_left(pids: list[int], ports: list[int]) -> None:
    wait_for(lambda: not any(alive(p) for p in pids), 60, what=f"every process to exit: {pids}")
    wait_for(lambda: all(bindable(p) for p in ports), 30, what=f"every port to be free: {ports}")


def test_down_stops_every_process_and_frees_every_port(tmp_path: Path) -> None:
    cluster = LocalCluster.up(tmp_path / "c", nodes=1, exit_with_parent=True)
    pids, ports = footprint(cluster.state)
    assert all(alive(p) for p in pids)
    assert cluster.down()
    assert_nothing_left(pids, ports)
    assert cluster.state["status"] == "stopped"


TARGET = """
import sys, time
from pathlib import Path
from mimo_operator.localcluster.cluster import LocalCluster
cluster = LocalCluster.up(Path(sys.argv[1]), nodes=1, exit_with_parent=True)
print("READY", flush=True)
time.sleep(600)
"""


def test_an_interrupted_run_leaves_no_process_and_no_port_behind(tmp_path: Path) -> None:
    state_dir = tmp_path / "c"
    # The fixture's path: a test run interrupted with SIGINT that never reaches its teardown.
    proc = subprocess.Popen([sys.executable, "-c", TARGET, str(state_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    pids, ports = footprint(LocalCluster(state_dir).state)
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert_nothing_left(pids, ports)


def test_pytest_interrupted_with_sigint_stops_its_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "MIMO_INTERRUPT_TARGET": str(tmp_path / "marker.json")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "run"),
         "tests/integration/test_interrupt_target.py"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    marker = tmp_path / "marker.json"
    wait_for(marker.exists, 180, what="the inner test run's cluster to be ready")
    state_dir = Path(json.loads(marker.read_text())["stateDir"])
    pids, ports = footprint(LocalCluster(state_dir).state)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert "KeyboardInterrupt" in out or proc.returncode != 0, out
    assert_nothing_left(pids, ports)


def test_a_component_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plane = ControlPlane(ClusterConfig(state_dir=tmp_path / "c", fixed_ports=(("apiserver", port),),
                                           component_timeout=60))
        started = time.monotonic()
        try:
            with pytest.raises(ComponentFailed) as failure:
                plane.start()
        finally:
            plane.stop()
    message = str(failure.value)
    assert message.startswith("kube-apiserver "), message
    assert str(port) in message, "the log tail shows why (the port in use)"
    assert time.monotonic() - started < 90
