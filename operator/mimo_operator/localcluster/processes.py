"""Starting, health-checking and stopping the local cluster's processes.

Every process is started from the supervisor's main thread with ``PR_SET_PDEATHSIG`` so that the
kernel kills it if the supervisor dies without cleaning up (``kill -9``, an OOM kill): nothing the
local cluster starts can outlive it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mimo_operator.errors import MimoError

__all__ = [
    "ComponentFailed",
    "Process",
    "free_port",
    "http_ok",
    "log_tail",
]

_PR_SET_PDEATHSIG = 1


class ComponentFailed(MimoError):
    """A component of the local cluster did not start or stopped; the message names it."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Above the ports other parts of the stack take on their own: Ray's worker ports (10002–19999 by default, on
# every node of every test gang) and the pairs the builders give gangs in host network (20000–29999).
_LOWEST_PORT = 30000
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _ports_to_pick_from() -> range:
    low, high = _ephemeral_range()
    if low - _LOWEST_PORT >= 1000:
        return range(_LOWEST_PORT, low)  # Linux's default: 30000–32767
    return range(max(high + 1, _LOWEST_PORT), 65536)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now and that no outgoing connection will take.

    The port is handed to another program, which binds it later. A port from the kernel's ephemeral range
    (its choice for port 0) is one it also gives to outgoing connections, and the programs started
    meanwhile (the API server, its clients) open many: one of them took a port picked for the scheduler
    before the scheduler bound it. So the port comes from outside that range, and above the ports Ray and the
    builders pick on their own, at random (several local clusters may pick at once), and never twice from one
    process.
    """
    choices = _ports_to_pick_from()
    for _ in range(200):
        port = secrets.choice(choices)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a range that is all taken: the kernel's choice
        s.bind((host, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def http_ok(url: str, context: ssl.SSLContext | None = None, expect: str | None = None,
            timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200 (and its body contains ``expect``, when given)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310 - loopback only
            body = resp.read().decode(errors="replace")
            return resp.status == 200 and (expect is None or expect in body)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Process:
    """One long-running program the local cluster owns, with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            try:
                self.popen = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=self.env, cwd=self.cwd, start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                raise ComponentFailed(f"{self.name} could not be started ({self.argv[0]}): {e}") from e

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_healthy(self, probe: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
        """Poll ``probe`` until it is true; returns the seconds it took.

        Fails with the component's name and the tail of its log when the process exits first or the
        deadline passes.
        """
        start = time.monotonic()
        deadline = start + timeout
        while True:
            if not self.running():
                code = self.popen.returncode if self.popen else None
                raise ComponentFailed(
                    f"{self.name} exited with code {code} before becoming healthy; last lines of {self.log}:\n"
                    f"{log_tail(self.log)}"
                )
            if probe():
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise ComponentFailed(
                    f"{self.name} did not become healthy within {timeout:.0f} s; last lines of {self.log}:\n"
                    f"{log_tail(self.log)}"
                )
            time.sleep(interval)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)


def kill_pid(pid: int, grace: float = 10.0) -> None:
    """Stop a process this program did not start (one recorded in a state file)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
