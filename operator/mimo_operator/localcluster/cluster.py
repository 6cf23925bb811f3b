"""A handle on a local cluster: start it, wait for it, run kubectl against it, stop it.

The cluster itself lives in a supervisor process (``supervisor.py``) so that ``mimoctl cluster up`` can
return and leave it running; the tests and the demo use the same handle and stop it when they finish.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimo_operator.errors import MimoError
from mimo_operator.localcluster.binaries import GANG_SCHEDULERS, WORKLOAD_CONTROLLERS, binaries_missing, cache_dir
from mimo_operator.localcluster.processes import kill_pid, log_tail

__all__ = ["RUN_STATE", "ClusterError", "LocalCluster", "default_state_dir"]


class ClusterError(MimoError):
    """The local cluster could not be started, or is not running."""


# What one run of a cluster leaves in its state directory, all of which the next `up` starts without: etcd's
# data (the nodes, namespaces and objects of the last run: kept, the new run's nodes clash with them), the
# certificates and kubeconfig it was issued, kwok's and the scheduler's configuration, the local pod
# processes' directories and volumes. Logs stay (appended to). Only these names are removed, never the
# directory itself: --state-dir may point anywhere.
RUN_STATE = ("state.json", "etcd", "pki", "kubeconfig", "kwok-home", "kwok.yaml", "scheduler.yaml", "pods", "hosts",
             "volumes")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mimo-operator" / "local-cluster"


@dataclass
class LocalCluster:
    state_dir: Path

    # -- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        path = self.state_dir / "state.json"
        try:
            return dict(json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return cache_dir() / "bin" / "kubectl"

    @property
    def supervisor_log(self) -> Path:
        return self.state_dir / "logs" / "supervisor.log"

    def supervisor_pid(self) -> int | None:
        pid = self.state.get("pid")
        if not isinstance(pid, int):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def is_running(self) -> bool:
        return self.state.get("status") == "ready" and self.supervisor_pid() is not None

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "KUBECTL": str(self.kubectl_path)}

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def up(cls, state_dir: Path, nodes: int = 4, gpu_type: str = "H200-141GB", blocks: int = 1,
           timeout: float = 180.0, exit_with_parent: bool = False,
           gang_schedulers: tuple[str, ...] = (), controllers: tuple[str, ...] = ()) -> LocalCluster:
        """Start a cluster in ``state_dir`` and return once its nodes are schedulable.

        With ``exit_with_parent`` the cluster stops by itself when this process exits (tests);
        without it the cluster keeps running until :meth:`down` (``mimoctl cluster up``).
        """
        unknown = sorted(set(gang_schedulers) - set(GANG_SCHEDULERS))
        if unknown:
            raise ClusterError(f"no gang scheduler {', '.join(unknown)} here; one of {', '.join(GANG_SCHEDULERS)}")
        if unknown := sorted(set(controllers) - set(WORKLOAD_CONTROLLERS)):
            raise ClusterError(f"no workload controller {', '.join(unknown)} here; "
                               f"one of {', '.join(WORKLOAD_CONTROLLERS)}")
        if missing := binaries_missing((*(b for s in gang_schedulers for b in GANG_SCHEDULERS[s]),
                                        *(b for c in controllers for b in WORKLOAD_CONTROLLERS[c]))):
            raise ClusterError(
                f"the local cluster's binaries are not built ({', '.join(missing)} missing in "
                f"{cache_dir() / 'bin'}): run hack/build-binaries.sh first"
            )
        cluster = cls(state_dir)
        if cluster.is_running():
            raise ClusterError(f"a local cluster is already running from {state_dir}; `mimoctl cluster down` first")
        state_dir.mkdir(parents=True, exist_ok=True)
        cluster._forget_last_run()
        argv = [sys.executable, "-m", "mimo_operator.localcluster.supervisor", "--state-dir", str(state_dir),
                "--nodes", str(nodes), "--gpu-type", gpu_type, "--blocks", str(blocks),
                *(a for s in gang_schedulers for a in ("--gang-scheduler", s)),
                *(a for c in controllers for a in ("--controller", c))]
        if exit_with_parent:
            argv.append("--exit-with-parent")
        (state_dir / "logs").mkdir(exist_ok=True)
        with (state_dir / "logs" / "supervisor.out").open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=not exit_with_parent)
        try:
            cluster._wait_ready(proc, timeout)
        except BaseException:
            # Ctrl-C or a failure while starting: nothing may be left behind.
            cluster._stop_supervisor(proc.pid)
            raise
        return cluster

    def _forget_last_run(self) -> None:
        """Remove what a stopped (or crashed) run left, so that every `up` starts a new cluster."""
        for name in RUN_STATE:
            path = self.state_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state
            if state.get("status") == "ready":
                return
            if state.get("status") == "failed" or proc.poll() is not None:
                proc.wait(30)
                error = self.state.get("error") or f"the supervisor exited with {proc.returncode}"
                raise ClusterError(f"the local cluster failed to start: {error}\n"
                                   f"(supervisor log: {self.supervisor_log})")
            if time.monotonic() > deadline:
                raise ClusterError(f"the local cluster was not ready within {timeout:.0f} s; "
                                   f"last lines of {self.supervisor_log}:\n{log_tail(self.supervisor_log)}")
            time.sleep(0.2)

    def down(self, timeout: float = 60.0) -> bool:
        """Stop the cluster; False when none was running."""
        pid = self.supervisor_pid()
        if pid is None:
            return False
        self._stop_supervisor(pid, timeout)
        return True

    def _stop_supervisor(self, pid: int, timeout: float = 60.0) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
                if waited == pid:
                    return
            except ChildProcessError:
                pass  # not our child (started by another mimoctl): poll its existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        kill_pid(pid, grace=0)

    # -- using it ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster."""
        result = subprocess.run(
            [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply_crd(self, path: Path, *, server_side: bool = False, timeout: float = 60.0) -> str:
        """Apply a CustomResourceDefinition and wait until the apiserver serves it; returns its name.

        Polls the CRD's `Established` condition rather than `kubectl wait`, which fails outright
        when it reads the object before the apiserver has written any condition at all."""
        applied = self.kubectl("apply", *(["--server-side"] if server_side else []), "-f", str(path),
                               "-o", "jsonpath={.metadata.name}")
        name = applied.stdout.strip()
        deadline = time.monotonic() + timeout
        while True:
            crd = self.kubectl_json("get", f"crd/{name}")
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                return name
            if time.monotonic() > deadline:
                raise ClusterError(f"CRD {name} not Established after {timeout:.0f} s: {conditions}")
            time.sleep(0.2)
