"""The head's role: form the gang, check its fabric, start the engine on every node, supervise, drain.

A straight line, each step bounded by a deadline from the plan:

1. ``ray start --head`` on this pod's IP, and connect to it as the driver;
2. wait until every member has joined with its GPUs, logging who is still missing;
3. a STRICT_SPREAD placement group with one bundle per node, bundle ``r`` pinned on rank ``r``'s node;
4. the fabric check (with NCCL one process per GPU, as the engine's ranks) — refuse to go on when it is far too slow;
5. the engine: ``per-node``, one keeper + engine per bundle through a Ray actor; ``sglang-ray``, SGLang's
   own Ray launcher on this pod, after the group is released so SGLang can place its schedulers;
6. supervise: node 0's ``/health`` turns ready within the plan's deadline; any engine exit or Ray node
   loss stops everything and exits non-zero, so the operator replaces the whole gang (SGLang cannot
   survive losing a rank).

SIGTERM drains first (SGLang's SIGTERM on node 0: ``/health`` 503, in-flight requests finish), then
stops the engines and Ray and exits 0. A failure exits 1 with one line naming what failed.

Blocking Ray calls run in a thread (``asyncio.to_thread``), each bounded by a short timeout, so that the
HTTP endpoints stay live and SIGTERM is acted on promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mimo_worker.fabric import FabricSample, FabricVerdict, judge, probe_ranks, summarize
from mimo_worker.launchplan import LaunchPlan
from mimo_worker.ranks import EngineRank, fabric_probe
from mimo_worker.raycluster import (
    RayNodeProcess,
    become_subreaper,
    end_descendants,
    gang_progress,
    node_views,
    rank_resource,
    ray_auth_default,
)
from mimo_worker.server import serve
from mimo_worker.status import DrainProgress, GangStatus
from mimo_worker.supervise import keeper_argv

__all__ = ["GangFailure", "Head", "parse_load", "sglang_ray_launch", "write_termination_message"]

log = logging.getLogger("mimo_worker.head")

RAY_START_SECONDS = 120.0  # a head's Ray takes ~5 s here; minutes mean something is wrong
DRIVER_CONNECT_SECONDS = 60.0
PLACEMENT_SECONDS = 120.0  # the group is feasible by construction once every node joined with its GPUs
TICK_SECONDS = 1.0
PROGRESS_LOG_SECONDS = 10.0
ENGINE_PROBE_TIMEOUT = 5.0  # while starting, SGLang's /health answers 503 at once
ENGINE_STOP_SECONDS = 15.0
# SGLang's SIGTERM watchdog checks every 5 s whether requests remain; an engine idle for longer than this
# after SIGTERM that has not exited is not going to.
DRAIN_SETTLE_SECONDS = 12.0
_DRAINING_OR_DONE = frozenset({"draining", "drained", "stopping"})


# Kubernetes' default terminationMessagePath: what the container writes there becomes its terminated state's
# message, which the operator puts in the gang's status (a fabric verdict, a member that never joined).
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps


def write_termination_message(message: str, path: str | None = None) -> bool:
    """Best effort, and only into the file the kubelet mounts: outside a pod (tests, the local cluster's
    processes) there is none, and nothing is created."""
    target = path or os.environ.get("MIMO_TERMINATION_LOG", TERMINATION_LOG)
    data = message.encode()[:TERMINATION_MESSAGE_LIMIT]
    if not os.path.isfile(target):
        return False
    try:
        with open(target, "wb") as f:
            f.write(data)
    except OSError:
        return False
    return True


class GangFailure(Exception):
    """The gang cannot serve; the message is the one line a person reads in the head's log."""


def parse_load(metrics_text: str) -> tuple[int, int]:
    """Running and queued requests summed over every scheduler in SGLang's ``/metrics``."""
    running = queued = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "sglang:num_running_reqs":
                running += sample.value
            elif sample.name == "sglang:num_queue_reqs":
                queued += sample.value
    return int(running), int(queued)


def sglang_ray_launch(plan: LaunchPlan, pod_ip: str) -> tuple[list[str], dict[str, str]]:
    """The ``sglang-ray`` mode's driver: SGLang's own launcher with ``--use-ray`` on the head, connected to
    the gang's Ray (``RAY_ADDRESS``); SGLang then creates its scheduler actors across the joined nodes."""
    command, env = plan.engine_command(0, head_ip=pod_ip, node_ip=pod_ip)
    if "--use-ray" not in command:
        command.append("--use-ray")  # what the mode means; a constant flag, not a user string
    return command, {**env, "RAY_ADDRESS": f"{pod_ip}:{plan.ports.ray_gcs}"}


class Head:
    def __init__(self, plan: LaunchPlan, pod_ip: str) -> None:
        self.plan = plan
        self.pod_ip = pod_ip
        self.status = GangStatus(plan)
        self.engine_url = f"http://{pod_ip}:{plan.ports.engine_http}"
        self.ray_node: RayNodeProcess | None = None
        self._ray: Any = None  # the ray module once connected (imported late: startup and tests stay light)
        self._pg: Any = None
        self._actors: dict[int, Any] = {}
        self._waits: dict[Any, int] = {}  # ObjectRef of EngineRank.wait → rank
        self._local_engine: subprocess.Popen[bytes] | None = None
        self._node_ids: dict[int, str] = {}
        self._check_lock = threading.Lock()  # _check_gang runs from the supervision loop and from stopping
        self._drain_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "the head's HTTP client exists only while run() runs"
        return self._http

    # -- the whole life ---------------------------------------------------------------------

    def _own_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)

    async def run(self) -> int:
        become_subreaper()
        self._own_signals()
        self._http = aiohttp.ClientSession()
        runner = await serve(self, self.pod_ip, self.plan.ports.worker_http)
        lifecycle = asyncio.create_task(self._lifecycle(), name="lifecycle")
        stopped = asyncio.create_task(self._stop.wait(), name="sigterm")
        code = 0
        try:
            await asyncio.wait({lifecycle, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if lifecycle.done():
                code = self._failed(lifecycle)
            else:
                log.info("SIGTERM: draining, then stopping the engines and Ray")
                if self.status.engine_started:
                    await self.drain()
                if lifecycle.done() and self.status.phase not in _DRAINING_OR_DONE:
                    code = self._failed(lifecycle)
        finally:
            for task in (lifecycle, stopped):
                task.cancel()
            await asyncio.gather(lifecycle, stopped, return_exceptions=True)
            if self.status.phase != "failed":
                self.status.set_phase("stopping", "stopping the engines and Ray")
            await asyncio.to_thread(self._shutdown)
            await runner.cleanup()
            await self.http.close()
            await asyncio.to_thread(end_descendants)
        log.info("head exits with code %d", code)
        return code

    def _failed(self, lifecycle: asyncio.Task[None]) -> int:
        error = lifecycle.exception() if not lifecycle.cancelled() else None
        if error is None:
            return 0
        message = str(error) if isinstance(error, GangFailure) else f"unexpected error: {error!r}"
        if not isinstance(error, GangFailure):
            log.error("head failed", exc_info=error)
        log.error("gang %s failed: %s", self.plan.gang.name, message)
        self.status.set_phase("failed", message)
        write_termination_message(message)
        return 1

    async def _lifecycle(self) -> None:
        self.status.set_phase("starting-ray", "starting the head's Ray node")
        self.ray_node = RayNodeProcess.head(self.plan, self.pod_ip)
        if not await asyncio.to_thread(self.ray_node.wait_started, RAY_START_SECONDS):
            raise GangFailure(f"ray start --head failed (exit code {self.ray_node.poll()}); see the [ray] lines above")
        await asyncio.to_thread(self._connect)
        self._own_signals()
        await self._wait_for_members()
        if not self._drain_requested():
            await asyncio.to_thread(self._create_placement_group)
            await self._fabric_check()
        if not self._drain_requested():
            await asyncio.to_thread(self._start_engine)
        await self._supervise()

    def _drain_requested(self) -> bool:
        """A drain before the engine runs: this gang is going away, so it is not worth starting."""
        if self._drain_task is None:
            return False
        log.info("drain requested before the engine started: not starting it")
        return True

    # -- 1. Ray ----------------------------------------------------------------------------------

    def _connect(self) -> None:
        # The driver would install absl's failure-signal handler over ours, which logs a SIGTERM as a crash
        # and aborts the process after it; the head's SIGTERM means "drain", so it stays ours (see also
        # _own_signals, which takes the handlers back should a Ray version ignore this variable).
        os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
        ray_auth_default()
        import ray  # heavy; only the head's lifecycle needs the driver API

        address = f"{self.pod_ip}:{self.plan.ports.ray_gcs}"
        deadline = time.monotonic() + DRIVER_CONNECT_SECONDS
        while True:
            try:
                ray.init(
                    address=address,
                    _node_ip_address=self.pod_ip,
                    namespace=f"mimo-{self.plan.gang.name}",
                    logging_level=logging.WARNING,
                    log_to_driver=True,  # engine output of every rank lands in the head pod's log
                )
                break
            except Exception as e:  # Ray raises several types while its node finishes starting
                if time.monotonic() > deadline:
                    raise GangFailure(f"cannot connect to the head's own Ray at {address}: {e}") from e
                time.sleep(1)
        self._ray = ray
        log.info("connected to Ray at %s", address)

    # -- 2. members --------------------------------------------------------------------------------

    async def _wait_for_members(self) -> None:
        plan = self.plan
        self.status.set_phase("joining", f"waiting for {plan.gang.nodes - 1} member(s) to join")
        timeout = plan.deadlines.members_join_seconds
        deadline = time.monotonic() + timeout
        last_message, last_logged = "", 0.0
        while True:
            nodes = await asyncio.to_thread(self._ray.nodes)
            progress = gang_progress(plan, node_views(nodes))
            for rank, view in progress.joined.items():
                r = self.status.ranks[rank]
                r.node_ip, r.ray_node_id, r.gpus = view.ip, view.node_id, view.gpus
            for rank in progress.missing:
                r = self.status.ranks[rank]
                r.node_ip = r.ray_node_id = r.gpus = None
            self.status.set_joined(len(progress.joined), sum(v.gpus for v in progress.joined.values()))
            self.status.message = progress.message
            if self._drain_task is not None:
                return  # nothing will be started on this gang: no reason to keep waiting for it
            if progress.complete:
                self._node_ids = {rank: v.node_id for rank, v in progress.joined.items()}
                log.info("gang complete: %s", progress.message)
                return
            now = time.monotonic()
            if progress.message != last_message or now - last_logged >= PROGRESS_LOG_SECONDS:
                log.info("%s, waiting (%.0f s left)", progress.message, max(0.0, deadline - now))
                last_message, last_logged = progress.message, now
            if now > deadline:
                raise GangFailure(f"members did not join within {timeout:.0f} s: {progress.message}")
            await asyncio.sleep(TICK_SECONDS)

    # -- 3. placement -------------------------------------------------------------------------------

    def _create_placement_group(self) -> None:
        from ray.util.placement_group import placement_group

        gpus = self.plan.gang.gpus_per_node
        bundles = []
        for rank in range(self.plan.gang.nodes):
            bundle: dict[str, float] = {rank_resource(rank): 1}
            if gpus:
                bundle["GPU"] = gpus
            bundles.append(bundle)
        self._pg = placement_group(bundles, strategy="STRICT_SPREAD", name=f"{self.plan.gang.name}-gang")
        try:
            self._ray.get(self._pg.ready(), timeout=PLACEMENT_SECONDS)
        except self._ray.exceptions.GetTimeoutError:
            raise GangFailure(
                f"the placement group ({len(bundles)} bundles, one per node, STRICT_SPREAD) was not placed within "
                f"{PLACEMENT_SECONDS:.0f} s; another job may hold the gang's GPUs"
            ) from None

    def _in_bundle(self, rank: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(placement_group=self._pg, placement_group_bundle_index=rank)

    # -- 4. fabric ---------------------------------------------------------------------------------------

    async def _fabric_check(self) -> None:
        plan, expectation = self.plan, self.plan.fabric
        if not expectation.enabled or plan.gang.nodes < 2:
            why = "disabled in the plan" if not expectation.enabled else "one node: no inter-node fabric to check"
            self.status.set_fabric_skipped(FabricVerdict(True, "skipped", why))
            log.info("fabric check skipped: %s", why)
            return
        self.status.set_phase("fabric-check", f"measuring {expectation.backend} collectives across the gang")
        started = time.monotonic()
        # max_calls=1: the process exits afterwards, so no NCCL context lingers on a GPU the engine needs.
        probe = self._ray.remote(max_calls=1, num_cpus=0)(fabric_probe)
        # NCCL: one process per GPU (Ray gives each its own GPU of the node's bundle), as the engine's ranks.
        layout = probe_ranks(plan.gang.nodes, plan.gang.gpus_per_node, expectation.backend)
        refs = [
            probe.options(
                num_gpus=p.num_gpus,
                scheduling_strategy=self._in_bundle(p.node),
            ).remote(
                rank=p.rank,
                world_size=p.world_size,
                rendezvous_host=self.pod_ip,
                rendezvous_port=plan.ports.fabric,
                backend=expectation.backend,
                sizes_bytes=list(expectation.sizes_bytes),
                iterations=expectation.iterations,
                warmup=expectation.warmup,
                timeout_seconds=plan.deadlines.fabric_seconds,
            )
            for p in layout
        ]
        deadline = started + plan.deadlines.fabric_seconds + 30  # the group's own timeout fires first
        per_rank: list[list[FabricSample]] = []
        for rank, ref in enumerate(refs):
            while True:
                ready, _ = await asyncio.to_thread(self._ray.wait, [ref], timeout=TICK_SECONDS)
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise GangFailure(f"the fabric check did not finish within {plan.deadlines.fabric_seconds:.0f} s")
            try:
                per_rank.append(await asyncio.to_thread(self._ray.get, ref))
            except Exception as e:
                node = layout[rank].node
                raise GangFailure(f"the fabric check failed on rank {rank} (node {node}, {plan.gang.pods[node]}): "
                                  f"{e}") from e
        report = summarize(expectation.backend, per_rank, time.monotonic() - started,
                           ranks_per_node=len(layout) // plan.gang.nodes)
        verdict = judge(report, expectation)
        self.status.set_fabric(report, verdict)
        for s in report.samples:
            log.info(
                "fabric %s %s %9d B: %8.3f ms, bus %.3f GB/s",
                expectation.backend,
                s.op,
                s.size_bytes,
                s.seconds * 1e3,
                s.bus_gbps,
            )
        if not verdict.ok:
            raise GangFailure(verdict.message)
        log.info("fabric check %s: %s", verdict.verdict, verdict.message)

    # -- 5. engine -------------------------------------------------------------------------------------

    def _start_engine(self) -> None:
        plan = self.plan
        self.status.set_phase("starting-engine", f"starting the engine ({plan.engine.mode})")
        if plan.engine.mode == "sglang-ray":
            self._start_sglang_ray()
            return
        ray = self._ray
        actor_class = ray.remote(EngineRank)
        for rank in range(plan.gang.nodes):
            self._actors[rank] = actor_class.options(
                num_cpus=0,
                num_gpus=plan.gang.gpus_per_node,
                max_concurrency=4,  # wait() blocks one thread; signal() and kill() need others
                scheduling_strategy=self._in_bundle(rank),
                name=f"{plan.gang.name}-rank-{rank}",
            ).remote(rank)
        node_ips: list[str] = ray.get([a.node_ip.remote() for a in self._actors.values()], timeout=PLACEMENT_SECONDS)
        if node_ips[0] != self.pod_ip:
            raise GangFailure(f"rank 0's engine was placed on {node_ips[0]}, not on the head ({self.pod_ip})")
        for rank, actor in self._actors.items():
            command, env = plan.engine_command(rank, head_ip=self.pod_ip, node_ip=node_ips[rank])
            started = ray.get(actor.start.remote(command, env), timeout=60)
            self.status.ranks[rank].node_ip = node_ips[rank]
            self.status.set_engine(rank, "starting", pid=int(started["pid"]))
            self._waits[actor.wait.remote()] = rank
            log.info("rank %d engine started on %s: %s", rank, node_ips[rank], " ".join(command))

    def _start_sglang_ray(self) -> None:
        from ray.util.placement_group import remove_placement_group

        # SGLang places its own schedulers; the GPUs our group reserved for the fabric check go back first.
        remove_placement_group(self._pg)
        self._pg = None
        command, env = sglang_ray_launch(self.plan, self.pod_ip)
        self._local_engine = subprocess.Popen(keeper_argv(command, parent_pid=os.getpid()), env={**os.environ, **env})
        self.status.set_engine(0, "starting", pid=self._local_engine.pid)
        log.info("SGLang Ray engine started on the head: %s", " ".join(command))

    # -- 6. supervision ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        timeout = self.plan.deadlines.engine_ready_seconds
        ready_deadline = time.monotonic() + timeout
        last_logged = time.monotonic()
        while True:
            failure = await asyncio.to_thread(self._check_gang)
            if failure and self.status.phase not in _DRAINING_OR_DONE:
                raise GangFailure(failure)
            if self.status.phase == "starting-engine":
                if await self._engine_healthy():
                    for rank in range(len(self.status.ranks)):
                        self.status.set_engine(rank, "ready")
                    self.status.set_phase("serving", f"node 0's engine is ready at {self.engine_url}")
                    log.info("gang %s is serving at %s", self.plan.gang.name, self.engine_url)
                elif time.monotonic() > ready_deadline:
                    raise GangFailure(f"node 0's engine did not turn healthy within {timeout:.0f} s")
                elif time.monotonic() - last_logged >= PROGRESS_LOG_SECONDS:
                    last_logged = time.monotonic()
                    log.info("waiting for node 0's engine at %s/health", self.engine_url)
            await asyncio.sleep(TICK_SECONDS)

    def _check_gang(self) -> str | None:
        """One look at the gang; the first failure found, or None. Records every engine that ended."""
        with self._check_lock:
            return self._check_gang_locked()

    def _check_gang_locked(self) -> str | None:
        ray = self._ray
        failure: str | None = None
        if self._waits:
            done, _ = ray.wait(list(self._waits), num_returns=len(self._waits), timeout=0)
            for ref in done:
                rank = self._waits.pop(ref)
                try:
                    code = int(ray.get(ref))
                    what = f"rank {rank}'s engine ({self.plan.gang.pods[rank]}) exited with code {code}"
                except Exception as e:
                    code = -1
                    what = f"rank {rank}'s engine actor ({self.plan.gang.pods[rank]}) died: {type(e).__name__}"
                self.status.set_engine_exited(rank, code)
                log.info("%s", what)
                failure = failure or what
        if self._local_engine is not None and self.status.ranks[0].exit_code is None:
            local_code = self._local_engine.poll()
            if local_code is not None:
                self.status.set_engine_exited(0, local_code)
                failure = failure or f"the SGLang Ray engine exited with code {local_code}"
        if self.status.phase in ("drained", "stopping"):
            return failure
        alive = {v.node_id: v.alive for v in node_views(ray.nodes())}
        for rank, node_id in self._node_ids.items():
            if not alive.get(node_id, False):
                r = self.status.ranks[rank]
                failure = failure or f"rank {rank} ({r.pod}, {r.node_ip}) left the gang: its Ray node is dead"
        return failure

    async def _engine_healthy(self) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=ENGINE_PROBE_TIMEOUT)
            async with self.http.get(f"{self.engine_url}/health", timeout=timeout) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    # -- drain ---------------------------------------------------------------------------------------------

    def start_drain(self, seconds: float | None = None) -> None:
        """``seconds``: the drain timeout the operator asks for; else the launch plan's default."""
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain(seconds or self.plan.deadlines.drain_seconds),
                                                   name="drain")

    async def drain(self, seconds: float | None = None) -> DrainProgress:
        self.start_drain(seconds)
        assert self._drain_task is not None
        await asyncio.shield(self._drain_task)
        return self.status.drain

    async def _drain(self, seconds: float) -> None:
        status = self.status
        timeout = seconds
        status.set_drain(timeout_seconds=timeout)
        if not status.engine_started or status.ranks[0].exit_code is not None:
            status.set_drain(state="drained", started_at=time.time(), finished_at=time.time(), message="no engine ran")
            status.set_phase("drained", "nothing to drain")
            return
        status.set_phase("draining", "node 0's engine stops taking requests and finishes the running ones")
        status.set_drain(state="draining", started_at=time.time(), message="SIGTERM sent to node 0's engine")
        status.set_engine(0, "draining")
        log.info("drain: SIGTERM to node 0's engine (timeout %.0f s)", timeout)
        await asyncio.to_thread(self._signal_rank0, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        state = "drained"
        while status.ranks[0].exit_code is None:
            load = await self._engine_load()
            if load is not None:
                status.set_drain(running_requests=load[0], queued_requests=load[1])
                if load == (0, 0):
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= DRAIN_SETTLE_SECONDS:
                        break
                else:
                    idle_since = None
            if time.monotonic() > deadline:
                state = "timed-out"
                break
            await asyncio.sleep(TICK_SECONDS)
            if not self._waits and self._local_engine is None:
                break  # no engine is tracked any more (its start failed half-way): nothing to wait for
        if status.ranks[0].exit_code is not None:
            status.set_drain(running_requests=0, queued_requests=0)
        message = (
            f"drained in {time.time() - (status.drain.started_at or time.time()):.1f} s"
            if state == "drained"
            else f"drain timed out after {timeout:.0f} s with {status.drain.running_requests} request(s) running"
        )
        log.info("drain: %s; stopping the other ranks", message)
        await asyncio.to_thread(self._stop_engines)
        status.set_drain(state=state, finished_at=time.time(), message=message)
        status.set_phase("drained", message)

    def _signal_rank0(self, signum: int) -> None:
        if self._local_engine is not None:
            with contextlib.suppress(ProcessLookupError):
                self._local_engine.send_signal(signum)
        elif 0 in self._actors:
            with contextlib.suppress(Exception):
                self._ray.get(self._actors[0].signal.remote(signum), timeout=10)

    async def _engine_load(self) -> tuple[int, int] | None:
        try:
            timeout = aiohttp.ClientTimeout(total=ENGINE_PROBE_TIMEOUT)
            async with self.http.get(f"{self.engine_url}/metrics", timeout=timeout) as r:
                if r.status != 200:
                    return None
                return parse_load(await r.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    # -- stopping --------------------------------------------------------------------------------------------

    def _stop_engines(self) -> None:
        if self._local_engine is not None and self._local_engine.poll() is None:
            self._local_engine.send_signal(signal.SIGUSR1)  # the keeper kills the engine's process group
            try:
                self._local_engine.wait(ENGINE_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self._local_engine.kill()
        if self._actors:
            refs = [a.kill.remote() for a in self._actors.values()]
            with contextlib.suppress(Exception):
                self._ray.wait(refs, num_returns=len(refs), timeout=ENGINE_STOP_SECONDS)
        # Record the exits that the kills caused, so /status shows them.
        with contextlib.suppress(Exception):
            self._check_gang()

    def _shutdown(self) -> None:
        """Everything this head started, in reverse: engines, the placement group, the driver, Ray."""
        if self._ray is not None:
            with contextlib.suppress(Exception):
                self._stop_engines()
            with contextlib.suppress(Exception):
                for actor in self._actors.values():
                    self._ray.kill(actor)
            if self._pg is not None:
                from ray.util.placement_group import remove_placement_group

                with contextlib.suppress(Exception):
                    remove_placement_group(self._pg)
            with contextlib.suppress(Exception):
                self._ray.shutdown()
        if self.ray_node is not None:
            code = self.ray_node.stop()
            log.info("Ray stopped (ray start exited with %s)", code)
