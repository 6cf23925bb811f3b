"""The worker with real Ray on this machine: a head and two members as processes, each with its own
``POD_IP`` in 127.0.0.0/8 and 8 logical GPUs, the simulated engine on every node.

Every test gets its own addresses, ports and Ray temp dir, so gangs never meet; processes are found for
cleanup by a tag in their environment (Ray's and the engines' processes inherit it), never by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.localcluster.processes import free_port

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (the worker extra)"),
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="torch is not installed (the fabric extra); the check needs it",
    ),
    pytest.mark.timeout(300),
]

TAG_ENV = "MIMO_TEST_GANG"
MANIFEST = """\
apiVersion: serving.mimo-operator.io/v1alpha1
kind: MiMoDeployment
metadata: {name: pro}
spec:
  model: {variant: MiMo-V2.5-Pro}
  hardware: {gpuType: H200-141GB}
  parallelism: {nodesPerReplica: 3}
  engine: {type: simulated, simulation: {speedup: 1}}
"""


def _http(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def _tagged_pids(tag: str) -> list[int]:
    """Every process whose environment carries the gang's tag: workers, Ray's processes, keepers, engines."""
    needle = f"{TAG_ENV}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Gang:
    """One gang's processes on this machine, with the plan they share."""

    root: Path
    tag: str
    ips: list[str]
    ports: dict[str, int]
    plan: dict[str, Any]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def head_url(self) -> str:
        return f"http://{self.ips[0]}:{self.ports['worker_http']}"

    @property
    def engine_url(self) -> str:
        return f"http://{self.ips[0]}:{self.ports['engine_http']}"

    def running_requests(self) -> float:
        """sglang:num_running_reqs over every node's /metrics: each node shows its own attention-DP groups."""
        total = 0.0
        for ip in self.ips:
            code, body = _http(f"http://{ip}:{self.ports['engine_http']}/metrics", timeout=5)
            if code == 200:
                total += _metric(body.decode(), "sglang:num_running_reqs")
        return total

    def start(self, rank: int) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "POD_IP": self.ips[rank],
            "MIMO_LAUNCH_PLAN": str(self.plan_path),
            "MIMO_RAY_TEMP_DIR": str(self.root / f"r{rank}"),
            TAG_ENV: self.tag,
        }
        if rank:
            env["MIMO_NODE_RANK"] = str(rank)
        role = "head" if rank == 0 else "member"
        with (self.root / f"rank{rank}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mimo_worker", "--role", role],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[rank] = proc
        return proc

    def log(self, rank: int) -> str:
        path = self.root / f"rank{rank}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"----- rank {r} -----\n{self.log(r)[-6000:]}" for r in sorted(self.procs))

    def status(self) -> dict[str, Any]:
        code, body = _http(f"{self.head_url}/status", timeout=10)
        assert code == 200, f"/status answered {code}"
        return dict(json.loads(body))

    def ready(self) -> bool:
        return _http(f"{self.head_url}/readyz", timeout=30)[0] == 200

    def serving(self) -> bool:
        """Ready; fails the test at once if the head has exited instead."""
        if self.procs[0].poll() is not None:
            pytest.fail(f"the head exited with {self.procs[0].returncode} before the gang was ready\n{self.logs()}")
        return self.ready()

    def wait_exit(self, rank: int, timeout: float) -> int:
        try:
            return self.procs[rank].wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank {rank} did not exit within {timeout:.0f} s\n{self.logs()}")

    def engines(self) -> list[int]:
        """The engine processes of this gang (not their keepers, whose argv names the engine too)."""
        return [
            p
            for p in _tagged_pids(self.tag)
            if "-m mimo_worker.simengine" in (c := _cmdline(p)) and "supervise" not in c
        ]

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        # Stragglers: anything still carrying the tag (a worker that ignored SIGTERM, an orphaned raylet).
        for _ in range(3):
            pids = _tagged_pids(self.tag)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


@pytest.fixture
def make_gang() -> Iterator[Callable[..., Gang]]:
    gangs: list[Gang] = []

    def make(*, join_seconds: float = 90, expected_bus_gbps: float | None = None, drain_seconds: float = 60) -> Gang:
        # Short: Ray keeps unix sockets under its temp dir and a socket path has at most 107 bytes.
        root = Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
        subnet = random.randint(1, 250)
        ips = [f"127.1.{subnet}.{5 + r}" for r in range(3)]
        # Ray's GCS and torch's TCPStore listen on every interface: the port must be free on all of them.
        ports = {k: free_port("") for k in ("ray_gcs", "engine_http", "dist_init", "fabric", "worker_http")}
        (root / "manifest.yaml").write_text(MANIFEST)
        name = f"pro-{uuid.uuid4().hex[:5]}"
        ranks = [
            {
                "rank": r,
                "argv": [
                    "--mimo-manifest", str(root / "manifest.yaml"),
                    "--nnodes", "3", "--node-rank", str(r),
                    "--dist-init-addr", f"{{head_ip}}:{ports['dist_init']}",
                    "--host", "{node_ip}", "--port", str(ports["engine_http"]),
                    "--enable-metrics", "--mimo-startup-seconds", "1",
                ],
                "env": {"MIMO_TEST_RANK": str(r)},
            }
            for r in range(3)
        ]  # fmt: skip
        plan = {
            "kind": "MiMoLaunchPlan",
            "version": 1,
            "deployment": {"name": "pro", "namespace": "test"},
            "gang": {
                "name": name,
                "replica": 0,
                "revision": "test",
                "nodes": 3,
                "gpus_per_node": 8,
                "head_address": f"{name}-0.{name}.test.svc.cluster.local",
                "pods": [f"{name}-{r}" for r in range(3)],
            },
            "ports": ports,
            "engine": {"mode": "per-node", "program": [sys.executable, "-m", "mimo_worker.simengine"], "ranks": ranks},
            "fabric": {
                "backend": "gloo",
                "expected_bus_gbps": expected_bus_gbps,
                "min_fraction": 0.5,
                "sizes_bytes": [4096, 1 << 20, 8 << 20],
                "iterations": 3,
                "warmup": 1,
            },
            "deadlines": {
                "members_join_seconds": join_seconds,
                "fabric_seconds": 60,
                "engine_ready_seconds": 120,
                "drain_seconds": drain_seconds,
            },
        }
        # The head's stable DNS name does not resolve here; its IP does, as /etc/hosts would make it.
        plan["gang"]["head_address"] = ips[0]
        gang = Gang(root, uuid.uuid4().hex, ips, ports, plan)
        gang.plan_path.write_text(json.dumps(plan))
        gangs.append(gang)
        return gang

    yield make
    for gang in gangs:
        gang.cleanup()
        leftovers = _tagged_pids(gang.tag)
        shutil.rmtree(gang.root, ignore_errors=True)
        assert not leftovers, f"processes of the gang survived cleanup: {[_cmdline(p) for p in leftovers]}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, gang: Gang | None = None) -> Any:
    """Poll ``predicate`` until truthy; on timeout fail with ``what`` and the gang's logs as they are then."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            left = "\n".join(_cmdline(p)[:200] for p in _tagged_pids(gang.tag)) if gang else ""
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}\n{gang.logs() if gang else ''}\n"
                f"processes of the gang:\n{left}"
            )
        time.sleep(0.5)


def _metric(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _complete(engine_url: str, max_tokens: int, results: list[tuple[int, float]]) -> None:
    body = json.dumps(
        {"model": "XiaomiMiMo/MiMo-V2.5-Pro", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    ).encode()
    code, _ = _http(f"{engine_url}/v1/chat/completions", "POST", body, timeout=120)
    results.append((code, time.monotonic()))


def test_a_gang_forms_checks_its_fabric_serves_and_drains(make_gang: Callable[..., Gang]) -> None:
    gang = make_gang()
    # Members first: they wait for a head that is not up yet, as pods starting together do.
    gang.start(1)
    gang.start(2)
    time.sleep(2)
    gang.start(0)
    wait_for(gang.serving, 150, "the gang's readiness", gang)
    # /readyz asks the engine itself; the status document follows within the head's next look (≈ 1 s).
    status = wait_for(lambda: (s := gang.status())["phase"] == "serving" and s, 10, "the status to say serving", gang)
    assert status["nodes"] == {"expected": 3, "joined": 3, "gpus_per_node": 8}
    assert [r["node_ip"] for r in status["ranks"]] == gang.ips
    assert [r["engine"] for r in status["ranks"]] == ["ready", "ready", "ready"]
    assert all(r["gpus"] == 8 for r in status["ranks"])
    fabric = status["fabric"]
    assert fabric["backend"] == "gloo"
    assert fabric["world_size"] == 3
    assert fabric["verdict"] == "measured"
    assert fabric["bus_gbps"] > 0
    assert {(s["op"], s["size_bytes"]) for s in fabric["samples"]} >= {("all_reduce", 4092), ("all_to_all", 4092)}
    assert "gang complete: 3/3 nodes joined (24/24 GPUs)" in gang.log(0)

    # Every node runs its engine rank, bound to its own IP (members run the dummy health server).
    for ip in gang.ips[1:]:
        assert _http(f"http://{ip}:{gang.ports['engine_http']}/health", timeout=5)[0] == 200
    assert len(gang.engines()) == 3

    code, body = _http(f"{gang.head_url}/metrics", timeout=10)
    assert code == 200
    metrics = body.decode()
    assert "sglang:num_running_reqs" in metrics  # the engine's own
    assert _metric(metrics, "mimo_worker_gang_nodes_joined") == 3
    assert _metric(metrics, "mimo_worker_fabric_bus_bandwidth_gbps") > 0
    assert _metric(metrics, "mimo_worker_engine_ready") == 1

    # Drain with requests in flight: it returns only after every one of them completed, none fails.
    results: list[tuple[int, float]] = []
    clients = [threading.Thread(target=_complete, args=(gang.engine_url, 400, results)) for _ in range(4)]
    for c in clients:
        c.start()

    wait_for(lambda: gang.running_requests() >= 4, 30, "4 requests running on the engine", gang)
    code, body = _http(f"{gang.head_url}/drain", "POST", timeout=90)
    drain_returned = time.monotonic()
    for c in clients:
        c.join(30)
    assert code == 200, f"POST /drain answered {code}: {body[:300]!r}\n{gang.logs()}"
    drain = json.loads(body)
    assert drain["state"] == "drained", drain
    assert [c for c, _ in results] == [200] * 4
    assert all(done <= drain_returned for _, done in results), "drain returned before its requests completed"
    assert not gang.ready()
    status = gang.status()
    assert status["phase"] == "drained"
    assert status["ranks"][0]["engine"] == "exited(0)"
    wait_for(lambda: not gang.engines(), 20, "every engine rank stopped after the drain", gang)

    # A drained gang waits to be deleted: a member's SIGTERM stops it cleanly, the head does not fail.
    gang.procs[2].send_signal(signal.SIGTERM)
    assert gang.wait_exit(2, 30) == 0, gang.log(2)[-3000:]
    gang.procs[0].send_signal(signal.SIGTERM)
    assert gang.wait_exit(0, 30) == 0, gang.log(0)[-5000:]
    # The remaining member notices that its head is gone and fails, so the pod is replaced.
    assert gang.wait_exit(1, 40) != 0
    assert "the gang is gone" in gang.log(1) or "this node's Ray stopped" in gang.log(1)
    wait_for(lambda: not _tagged_pids(gang.tag), 10, "every process of the gang to end", gang)


def test_killing_a_member_fails_the_gang_within_30_seconds(make_gang: Callable[..., Gang]) -> None:
    gang = make_gang()
    for rank in (0, 1, 2):
        gang.start(rank)
    wait_for(gang.serving, 150, "the gang's readiness", gang)

    gang.procs[2].kill()  # the pod is gone: its worker dies at once, its Ray node and engine with it
    killed = time.monotonic()
    code = gang.wait_exit(0, 30)
    took = time.monotonic() - killed
    print(f"the head exited with {code} {took:.1f} s after the member was killed")
    assert code != 0
    assert took < 30
    log = gang.log(0)
    assert "failed: rank 2" in log, log[-3000:]
    # Nothing of the failed gang serves on: every engine is gone once the head has exited.
    wait_for(lambda: not gang.engines(), 15, "the gang's engines to stop after the failure", gang)


def test_a_member_that_never_joins_fails_the_head_at_its_deadline(make_gang: Callable[..., Gang]) -> None:
    gang = make_gang(join_seconds=25)
    started = time.monotonic()
    gang.start(0)
    gang.start(1)  # rank 2 never starts
    code = gang.wait_exit(0, 90)
    took = time.monotonic() - started
    assert code == 1
    assert 25 <= took < 60
    log = gang.log(0)
    missing = gang.plan["gang"]["pods"][2]
    assert f"members did not join within 25 s: 2/3 nodes joined (16/24 GPUs): missing rank 2 ({missing})" in log
    assert "2/3 nodes joined" in log  # progress lines while waiting
    assert not gang.engines()


def test_a_fabric_far_below_the_plan_refuses_to_start_the_engine(make_gang: Callable[..., Gang]) -> None:
    gang = make_gang(expected_bus_gbps=10_000.0)  # gloo on loopback is nowhere near 10 TB/s
    for rank in (0, 1, 2):
        gang.start(rank)
    code = gang.wait_exit(0, 150)
    assert code == 1
    log = gang.log(0)
    # Both collectives are gated; with one gloo process per node each expectation is the NIC total.
    assert "refusing to start the engine: all-reduce" in log
    assert "is below 5000.00 GB/s (50% of the 10000.00 GB/s expected); all-to-all" in log
    assert "gloo all-reduce bus bandwidth" in log
    assert "engine started" not in log
    assert not gang.engines()


def test_sigterm_on_a_serving_head_drains_then_stops_everything(make_gang: Callable[..., Gang]) -> None:
    gang = make_gang()
    for rank in (0, 1, 2):
        gang.start(rank)
    wait_for(gang.serving, 150, "the gang's readiness", gang)

    results: list[tuple[int, float]] = []
    clients = [threading.Thread(target=_complete, args=(gang.engine_url, 300, results)) for _ in range(2)]
    for c in clients:
        c.start()

    wait_for(lambda: gang.running_requests() >= 2, 30, "2 requests running on the engine", gang)
    gang.procs[0].send_signal(signal.SIGTERM)  # the head's pod is deleted
    assert gang.wait_exit(0, 60) == 0, gang.log(0)[-5000:]
    head_exited = time.monotonic()
    for c in clients:
        c.join(30)
    assert [c for c, _ in results] == [200, 200]
    assert all(done <= head_exited for _, done in results), "the head stopped before its requests completed"
    log = gang.log(0)
    assert "SIGTERM: draining" in log
    assert "drain: drained" in log
    # Nothing of the head's node is left, and the members follow their head.
    for rank in (1, 2):
        assert gang.wait_exit(rank, 40) != 0
    wait_for(lambda: not _tagged_pids(gang.tag), 10, "every process of the gang to end", gang)
