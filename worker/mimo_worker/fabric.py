"""The fabric check: collective bandwidth and latency across the gang, measured before the engine starts.

With NCCL, one process per GPU on every node joins a torch.distributed group, as the engine's ranks will
(DeepEP's all-to-all runs between every GPU of the gang); with gloo (no GPU: the local cluster) one process
per node. Each times all-reduce and all-to-all at a few message sizes. The head publishes the figures and
refuses to start the engine when either bus bandwidth is below ``min_fraction`` × its expectation, which
comes from the nodes' NICs (see :func:`expected_bus_gbps`). The failure this exists for:
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
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the model is pydantic, which a bare GPU machine running bench/gpu/ lacks
    from mimo_worker.launchplan import FabricExpectation

__all__ = [
    "FabricReport",
    "FabricSample",
    "FabricVerdict",
    "Op",
    "ProbeRank",
    "bus_factor",
    "expected_bus_gbps",
    "judge",
    "measure_rank",
    "probe_ranks",
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


@dataclass(frozen=True)
class ProbeRank:
    """One process of the check: on which node (its placement-group bundle), which rank, how many GPUs."""

    node: int
    local_rank: int
    rank: int
    world_size: int
    num_gpus: int


def probe_ranks(nodes: int, gpus_per_node: int, backend: Literal["nccl", "gloo"]) -> list[ProbeRank]:
    """The check's processes: with NCCL one per GPU (global rank = node × GPUs per node + local rank, each
    holding one GPU of its node's bundle, so the ranks are laid out as the engine's); with gloo one per node."""
    per_node = gpus_per_node if backend == "nccl" else 1
    world = nodes * per_node
    return [ProbeRank(node, local, node * per_node + local, world, 1 if backend == "nccl" else 0)
            for node in range(nodes) for local in range(per_node)]


def expected_bus_gbps(op: Op, *, node_nic_gbps: float, nodes: int, ranks_per_node: int) -> float:
    """The bus bandwidth the nodes' NICs allow, in GB/s, from a node's NIC total (HCAs × link speed).

    All-reduce: NCCL runs one ring per NIC, so between nodes its bus bandwidth reaches the node's NIC total.
    All-to-all: of the (n−1)/n of its buffer each rank sends, (n−g)/n leaves the node (g ranks per node)
    through the rank's 1/g share of the NICs, so the bus bandwidth is that share × (n−1)/(n−g).
    """
    world = nodes * ranks_per_node
    if nodes < 2:
        return 0.0
    if op == "all_reduce":
        return node_nic_gbps
    return node_nic_gbps / ranks_per_node * (world - 1) / (world - ranks_per_node)


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
    ranks_per_node: int = 1

    @property
    def nodes(self) -> int:
        return self.world_size // self.ranks_per_node

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FabricVerdict:
    ok: bool
    verdict: Literal["pass", "fail", "measured", "skipped"]
    message: str
    threshold_gbps: float | None = None


def summarize(backend: str, per_rank: list[list[FabricSample]], seconds_total: float = 0.0,
              ranks_per_node: int = 1) -> FabricReport:
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
    return FabricReport(backend, world_size, combined, largest.bus_gbps, smallest.seconds, a2a_bus, seconds_total,
                        ranks_per_node)


def judge(report: FabricReport, expectation: FabricExpectation) -> FabricVerdict:
    """Whether the engine may start on this fabric: all-reduce AND all-to-all (what DeepEP runs) each at
    least ``min_fraction`` of what the nodes' NICs allow; the message says why not, with the numbers.

    ``expectation.expected_bus_gbps`` is a node's NIC total in GB/s (HCAs × link speed); each collective's
    expected bus bandwidth follows from it (:func:`expected_bus_gbps`)."""
    where = f"{report.nodes} nodes × {report.ranks_per_node} rank{'s' if report.ranks_per_node > 1 else ''}"
    measured = (
        f"{report.backend} all-reduce bus bandwidth {report.bus_gbps:.2f} GB/s"
        + (f", all-to-all {report.all_to_all_bus_gbps:.2f} GB/s" if report.all_to_all_bus_gbps is not None else "")
        + f" ({where}, latency {report.latency_seconds * 1e6:.0f} µs)"
    )
    if report.nodes < 2:
        return FabricVerdict(True, "skipped", "one node: no inter-node fabric to check")
    if expectation.expected_bus_gbps is None:
        return FabricVerdict(True, "measured", f"{measured}; the plan sets no expectation")
    fraction = expectation.min_fraction
    checks: list[tuple[str, float, float]] = []
    measured_ops: tuple[tuple[Op, float | None], ...] = (
        ("all_reduce", report.bus_gbps), ("all_to_all", report.all_to_all_bus_gbps))
    for op, got in measured_ops:
        if got is None:
            continue
        want = expected_bus_gbps(op, node_nic_gbps=expectation.expected_bus_gbps, nodes=report.nodes,
                                 ranks_per_node=report.ranks_per_node)
        checks.append((op.replace("_", "-"), got, want))
    short = [(name, got, want) for name, got, want in checks if got < want * fraction]
    threshold = min(want * fraction for _, _, want in checks)
    expected = ", ".join(f"{name} {want * fraction:.2f} GB/s" for name, _, want in checks)
    if not short:
        return FabricVerdict(True, "pass", f"{measured} ≥ {expected} ({fraction:.0%} of what "
                             f"{expectation.expected_bus_gbps:.0f} GB/s of NICs per node allow)", threshold)
    below = "; ".join(f"{name} {got:.2f} GB/s is below {want * fraction:.2f} GB/s ({fraction:.0%} of the "
                      f"{want:.2f} GB/s expected)" for name, got, want in short)
    return FabricVerdict(
        False,
        "fail",
        f"refusing to start the engine: {below}, from {expectation.expected_bus_gbps:.0f} GB/s of NICs per node "
        f"({measured}). {SOCKET_FALLBACK_HINT}",
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
    device_index: int = 0,
) -> list[FabricSample]:
    """Run in every process of the check at once (rank 0 on the head): time the collectives; returns this
    rank's samples. With NCCL the process holds one GPU (Ray's CUDA_VISIBLE_DEVICES), ``device_index`` 0.

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
        device = torch.device("cuda", device_index)
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
        if backend == "nccl":
            # Free the communicators now: the GPU goes to the engine next, and an NCCL group dropped without
            # shutdown leaks them (torch warns at exit).
            with contextlib.suppress(Exception):
                group.shutdown()
    return samples
