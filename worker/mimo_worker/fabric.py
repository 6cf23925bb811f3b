"""The fabric check: collective bandwidth and latency across the gang, measured before the engine starts.

One process per node joins a torch.distributed group (NCCL on GPUs, gloo on CPU) and times all-reduce and
all-to-all at a few message sizes. The head publishes the figures and refuses to start the engine when the
all-reduce bus bandwidth is below ``min_fraction`` × the plan's expectation. The failure this exists for:
NCCL quietly using TCP sockets (``NET/Socket``) instead of InfiniBand (``NET/IB``) because an RDMA device,
``IPC_LOCK`` or ``NCCL_IB_HCA`` is missing — the engine would load a terabyte of weights and then serve at a
fraction of its planned speed, or time out in DeepEP.

Bus bandwidth follows nccl-tests' definition, so figures compare with what people measure by hand:
all-reduce moves 2(n−1)/n of the buffer over each rank's link, all-to-all (n−1)/n.

torch is imported only inside :func:`measure_rank`: the head and the operator never need it, the worker
image's SGLang brings it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Literal

from mimo_worker.launchplan import FabricExpectation

__all__ = [
    "FabricReport",
    "FabricSample",
    "FabricVerdict",
    "Op",
    "bus_factor",
    "judge",
    "measure_rank",
    "summarize",
]

Op = Literal["all_reduce", "all_to_all"]
GB = 1e9  # decimal, as NCCL and InfiniBand vendors quote bandwidth

# Printed with every refusal: where a person should look first.
SOCKET_FALLBACK_HINT = (
    "NCCL may be using TCP sockets instead of InfiniBand: run with NCCL_DEBUG=INFO and look for "
    "'NET/Socket' instead of 'NET/IB'; check the pod's RDMA device resource, IPC_LOCK, NCCL_IB_HCA and "
    "NCCL_SOCKET_IFNAME"
)


def bus_factor(op: Op, world_size: int) -> float:
    """How much of the buffer crosses each rank's link, relative to the buffer (nccl-tests' busbw)."""
    if world_size < 2:
        return 0.0  # nothing crosses a link; a one-node gang has no fabric to measure
    if op == "all_reduce":
        return 2 * (world_size - 1) / world_size
    return (world_size - 1) / world_size


@dataclass(frozen=True)
class FabricSample:
    """One (op, size) timed on one rank: the median of the iterations."""

    op: Op
    size_bytes: int
    seconds: float
    alg_gbps: float
    bus_gbps: float

    @staticmethod
    def of(op: Op, size_bytes: int, seconds: float, world_size: int) -> FabricSample:
        alg = size_bytes / seconds / GB if seconds > 0 else 0.0
        return FabricSample(op, size_bytes, seconds, alg, alg * bus_factor(op, world_size))


@dataclass(frozen=True)
class FabricReport:
    """The gang's figures: per (op, size) the slowest rank's time, since a collective is as slow as that."""

    backend: str
    world_size: int
    samples: list[FabricSample]
    bus_gbps: float  # all-reduce at the largest size
    latency_seconds: float  # all-reduce at the smallest size
    all_to_all_bus_gbps: float | None
    seconds_total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FabricVerdict:
    ok: bool
    verdict: Literal["pass", "fail", "measured", "skipped"]
    message: str
    threshold_gbps: float | None = None


def summarize(backend: str, per_rank: list[list[FabricSample]], seconds_total: float = 0.0) -> FabricReport:
    """Combine every rank's samples: the slowest rank decides each (op, size)."""
    if not per_rank or not per_rank[0]:
        raise ValueError("no fabric samples to summarize")
    world_size = len(per_rank)
    slowest: dict[tuple[str, int], float] = {}
    for samples in per_rank:
        for s in samples:
            key = (s.op, s.size_bytes)
            slowest[key] = max(slowest.get(key, 0.0), s.seconds)
    combined = [
        FabricSample.of(op, size, seconds, world_size)  # type: ignore[arg-type]
        for (op, size), seconds in sorted(slowest.items())
    ]
    reduce = [s for s in combined if s.op == "all_reduce"]
    a2a = [s for s in combined if s.op == "all_to_all"]
    if not reduce:
        raise ValueError("the fabric check measured no all-reduce")
    largest = max(reduce, key=lambda s: s.size_bytes)
    smallest = min(reduce, key=lambda s: s.size_bytes)
    a2a_bus = max(a2a, key=lambda s: s.size_bytes).bus_gbps if a2a else None
    return FabricReport(backend, world_size, combined, largest.bus_gbps, smallest.seconds, a2a_bus, seconds_total)


def judge(report: FabricReport, expectation: FabricExpectation) -> FabricVerdict:
    """Whether the engine may start on this fabric; the message says why not, with the numbers."""
    measured = (
        f"{report.backend} all-reduce bus bandwidth {report.bus_gbps:.2f} GB/s "
        f"({report.world_size} nodes, latency {report.latency_seconds * 1e6:.0f} µs)"
    )
    if report.world_size < 2:
        return FabricVerdict(True, "skipped", "one node: no inter-node fabric to check")
    if expectation.expected_bus_gbps is None:
        return FabricVerdict(True, "measured", f"{measured}; the plan sets no expectation")
    threshold = expectation.expected_bus_gbps * expectation.min_fraction
    if report.bus_gbps >= threshold:
        return FabricVerdict(
            True,
            "pass",
            f"{measured} ≥ {threshold:.2f} GB/s ({expectation.min_fraction:.0%} of the expected "
            f"{expectation.expected_bus_gbps:.2f} GB/s)",
            threshold,
        )
    return FabricVerdict(
        False,
        "fail",
        f"refusing to start the engine: {measured} is below {threshold:.2f} GB/s "
        f"({expectation.min_fraction:.0%} of the {expectation.expected_bus_gbps:.2f} GB/s the plan expects). "
        f"{SOCKET_FALLBACK_HINT}",
        threshold,
    )


def measure_rank(
    *,
    rank: int,
    world_size: int,
    rendezvous_host: str,
    rendezvous_port: int,
    node_ip: str,
    backend: Literal["nccl", "gloo"],
    sizes_bytes: list[int],
    iterations: int,
    warmup: int,
    timeout_seconds: float,
) -> list[FabricSample]:
    """Run on every node at once (rank 0 on the head): time the collectives; returns this rank's samples.

    The group is built directly on a TCPStore rather than through ``init_process_group`` so that gloo
    binds to this node's IP (``node_ip``) instead of whatever the host name resolves to, and so that the
    check leaves no global process group behind in a reused process.
    """
    import torch
    import torch.distributed

    # torch's private c10d names (TCPStore, ProcessGroupGloo._Options) are untyped in its stubs.
    c10d: Any = torch.distributed
    timeout = timedelta(seconds=timeout_seconds)
    store = c10d.TCPStore(
        rendezvous_host, rendezvous_port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=True
    )
    group: Any
    if backend == "gloo":
        options = c10d.ProcessGroupGloo._Options()
        options._devices = [c10d.ProcessGroupGloo.create_device(hostname=node_ip)]
        options._timeout = timeout
        group = c10d.ProcessGroupGloo(store, rank, world_size, options)
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        nccl_options = c10d.ProcessGroupNCCL.Options()
        nccl_options._timeout = timeout
        group = c10d.ProcessGroupNCCL(store, rank, world_size, nccl_options)

    def timed(op: Op, send: Any, recv: Any) -> float:
        times: list[float] = []
        for i in range(warmup + iterations):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            work = group.allreduce([send]) if op == "all_reduce" else group.alltoall_base(recv, send, [], [])
            work.wait()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    samples: list[FabricSample] = []
    try:
        for size in sorted(set(sizes_bytes)):
            # float32 elements; all-to-all needs a multiple of world_size of them
            elements = max(world_size, size // 4 // world_size * world_size)
            send = torch.ones(elements, dtype=torch.float32, device=device)
            recv = torch.empty_like(send)
            for op in ("all_reduce", "all_to_all"):
                samples.append(FabricSample.of(op, elements * 4, timed(op, send, recv), world_size))
    finally:
        # Ranks leave together so that no rank's store vanishes while another still reads it; best effort,
        # since a peer that failed has failed the check already.
        with contextlib.suppress(Exception):
            group.barrier().wait()
    return samples
