"""The engine's keeper (``python -m mimo_worker.supervise``): an engine never outlives its launcher."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mimo_worker.supervise import keeper_argv

pytestmark = pytest.mark.timeout(60)

# A stand-in engine: writes its pid, exits 0 on SIGTERM (as SGLang does after draining), else sleeps.
ENGINE = textwrap.dedent(
    """
    import os, signal, sys, time
    open(sys.argv[1], "w").write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(120)
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def engine_command(tmp_path: Path) -> tuple[list[str], Path]:
    pid_file = tmp_path / "engine.pid"
    return [sys.executable, "-c", ENGINE, str(pid_file)], pid_file


@pytest.fixture(autouse=True)
def no_stray_engine(tmp_path: Path) -> Iterator[None]:
    """Whatever a test asserts, its stand-in engine does not outlive it."""
    yield
    pid_file = tmp_path / "engine.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_passes_sigterm_to_the_engine_and_exits_with_its_code(tmp_path: Path) -> None:
    command, pid_file = engine_command(tmp_path)
    keeper = subprocess.Popen(keeper_argv(command, parent_pid=os.getpid()))
    assert wait_until(pid_file.exists)
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(10) == 0


def test_sigusr1_kills_the_engine_at_once(tmp_path: Path) -> None:
    command, pid_file = engine_command(tmp_path)
    keeper = subprocess.Popen(keeper_argv(command, parent_pid=os.getpid()))
    assert wait_until(pid_file.exists)
    engine = int(pid_file.read_text())
    keeper.send_signal(signal.SIGUSR1)
    assert keeper.wait(10) == 128 + signal.SIGKILL
    assert wait_until(lambda: not alive(engine))


def test_kills_the_engine_when_its_launcher_dies(tmp_path: Path) -> None:
    # launcher → keeper → engine; the launcher is SIGKILLed, as a Ray actor can be.
    command, pid_file = engine_command(tmp_path)
    launcher_code = (
        "import os, subprocess, time\n"
        "from mimo_worker.supervise import keeper_argv\n"
        f"subprocess.Popen(keeper_argv({command!r}, parent_pid=os.getpid()))\n"
        "time.sleep(120)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code])
    assert wait_until(pid_file.exists)
    engine = int(pid_file.read_text())
    launcher.kill()
    launcher.wait()
    assert wait_until(lambda: not alive(engine)), "the engine outlived its launcher"


def test_the_engine_dies_with_a_sigkilled_keeper(tmp_path: Path) -> None:
    command, pid_file = engine_command(tmp_path)
    keeper = subprocess.Popen(keeper_argv(command, parent_pid=os.getpid()))
    assert wait_until(pid_file.exists)
    engine = int(pid_file.read_text())
    keeper.kill()
    keeper.wait()
    assert wait_until(lambda: not alive(engine)), "the engine outlived its keeper"


def test_an_engine_that_fails_fails_the_keeper(tmp_path: Path) -> None:
    keeper = subprocess.Popen(keeper_argv([sys.executable, "-c", "raise SystemExit(3)"], parent_pid=os.getpid()))
    assert keeper.wait(10) == 3
