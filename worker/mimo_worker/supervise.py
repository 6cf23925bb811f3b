"""The engine's keeper: ``python -m mimo_worker.supervise --parent-pid PID -- PROGRAM ARGV...``.

Sits between the process that launches an engine rank (a Ray actor, or the head itself) and the engine,
so that an engine never outlives its launcher. A Ray actor can be killed without running any code
(``ray.kill``, its worker SIGKILLed, its raylet gone); an engine left behind would keep eight GPUs and its
ports in a pod that the gang has already given up on. Prctl's parent-death signal cannot be set from the
actor: it fires when the forking *thread* exits, and an actor's threads come and go. So this keeper, a
single-threaded process, polls its parent, and gives the engine a parent-death signal of its own (safe
here: the keeper's only thread is the one that forks), so that even a SIGKILLed keeper takes the engine.

- the engine runs in a session of its own, so that the whole tree it forks (SGLang's scheduler and
  detokenizer processes) can be killed as one;
- SIGTERM and SIGINT are passed to the engine's main process only: SGLang's own handler drains (503 on
  ``/health``, waits for in-flight requests) and then stops its children;
- SIGUSR1 means "kill the engine now": its whole process group gets SIGKILL (a failed gang has no
  requests worth finishing);
- when the parent is gone, the engine's process group is killed at once;
- the keeper exits with the engine's exit code (128 + N when a signal N ended it), after killing
  anything of the engine's group still alive.

The argv is executed as a list; nothing passes through a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["keeper_argv", "main"]

POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


def keeper_argv(command: Sequence[str], *, parent_pid: int) -> list[str]:
    """The argv that runs ``command`` under a keeper watching ``parent_pid``."""
    return [sys.executable, "-m", "mimo_worker.supervise", "--parent-pid", str(parent_pid), "--", *command]


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_keeper() -> None:
    """preexec_fn of the engine: SIGKILL when the keeper dies (Linux; elsewhere the polling still works)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mimo_worker.supervise", description=__doc__.splitlines()[0])
    parser.add_argument("--parent-pid", type=int, required=True, help="exit and kill the engine when this dies")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGV...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no engine command after --")

    engine = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_keeper)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            engine.send_signal(signum)

    def kill_now(_signum: int, _frame: FrameType | None) -> None:
        _kill_group(engine.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR1, kill_now)

    while True:
        returncode = engine.poll()
        if returncode is not None:
            _kill_group(engine.pid, signal.SIGKILL)  # stragglers of the engine's tree
            return _exit_code(returncode)
        if os.getppid() != args.parent_pid:
            print(
                f"mimo-worker supervise: launcher {args.parent_pid} is gone; killing engine {engine.pid}",
                file=sys.stderr,
                flush=True,
            )
            _kill_group(engine.pid, signal.SIGKILL)
            engine.wait()
            return 137
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
