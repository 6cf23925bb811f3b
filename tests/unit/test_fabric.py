"""The fabric check: bus-bandwidth arithmetic, the verdict, and a real gloo measurement between processes."""

from __future__ import annotations

import importlib.util
import multiprocessing
from typing import Any

import pytest

from mimo_operator.localcluster.processes import free_port
from mimo_worker.fabric import FabricReport, FabricSample, bus_factor, judge, measure_rank, summarize
from mimo_worker.launchplan import FabricExpectation, example_plan, parse_plan
from mimo_worker.raycluster import NodeView, gang_progress


def report(bus_gbps: float, world_size: int = 3) -> FabricReport:
    return FabricReport("nccl", world_size, [], bus_gbps, 25e-6, None)


def test_bus_bandwidth_follows_nccl_tests() -> None:
    assert bus_factor("all_reduce", 2) == 1.0
    assert bus_factor("all_reduce", 4) == 1.5
    assert bus_factor("all_to_all", 4) == 0.75
    assert bus_factor("all_reduce", 1) == 0.0
    s = FabricSample.of("all_reduce", size_bytes=1_000_000_000, seconds=0.5, world_size=4)
    assert s.alg_gbps == pytest.approx(2.0)
    assert s.bus_gbps == pytest.approx(3.0)


def test_the_slowest_rank_decides_each_size() -> None:
    fast = [FabricSample.of("all_reduce", 1 << 20, 0.001, 2), FabricSample.of("all_reduce", 4096, 1e-5, 2)]
    slow = [FabricSample.of("all_reduce", 1 << 20, 0.004, 2), FabricSample.of("all_reduce", 4096, 3e-5, 2)]
    combined = summarize("gloo", [fast, slow])
    assert combined.world_size == 2
    assert combined.bus_gbps == pytest.approx((1 << 20) / 0.004 / 1e9)  # largest size, slowest rank
    assert combined.latency_seconds == pytest.approx(3e-5)  # smallest size, slowest rank
    assert combined.all_to_all_bus_gbps is None


@pytest.mark.parametrize(
    ("measured", "expected", "fraction", "verdict"),
    [
        (45.0, 50.0, 0.5, "pass"),
        (25.0, 50.0, 0.5, "pass"),  # exactly at the threshold
        (24.9, 50.0, 0.5, "fail"),
        (2.1, 50.0, 0.5, "fail"),  # NCCL over TCP sockets instead of InfiniBand
        (2.1, 2.0, 0.9, "pass"),
        (0.01, None, 0.5, "measured"),  # no expectation: publish, never refuse
    ],
)
def test_the_verdict_refuses_only_below_the_plans_fraction(
    measured: float, expected: float | None, fraction: float, verdict: str
) -> None:
    result = judge(report(measured), FabricExpectation(expected_bus_gbps=expected, min_fraction=fraction))
    assert result.verdict == verdict
    assert result.ok == (verdict != "fail")


def test_a_refusal_says_what_was_measured_what_was_expected_and_where_to_look() -> None:
    result = judge(report(2.1), FabricExpectation(expected_bus_gbps=50.0, min_fraction=0.5))
    assert not result.ok
    assert "refusing to start the engine" in result.message
    assert "2.10 GB/s" in result.message
    assert "25.00 GB/s" in result.message
    assert "50.00 GB/s" in result.message
    assert "NET/Socket" in result.message


def test_one_node_has_no_fabric_to_judge() -> None:
    assert judge(report(0.0, world_size=1), FabricExpectation(expected_bus_gbps=50.0)).verdict == "skipped"


# -- gang progress (the head's join messages) ---------------------------------------------------


def node(rank: int | None, gpus: float = 8, alive: bool = True) -> NodeView:
    return NodeView(f"id{rank}", f"10.0.0.{rank}", alive, gpus, rank)


def test_progress_names_the_missing_members_by_rank_and_pod() -> None:
    plan = parse_plan(example_plan())
    progress = gang_progress(plan, [node(0), node(1, alive=False), node(None)])
    assert not progress.complete
    assert progress.missing == [1, 2]
    assert progress.message == "1/3 nodes joined (8/24 GPUs): missing rank 1 (pro-r0-1), rank 2 (pro-r0-2)"


def test_progress_counts_a_member_short_of_gpus_as_not_joined_yet() -> None:
    plan = parse_plan(example_plan())
    progress = gang_progress(plan, [node(0), node(1), node(2, gpus=4)])
    assert not progress.complete
    assert progress.missing == []
    assert progress.short_of_gpus == {2: 4}
    assert "rank 2 (pro-r0-2) has 4 of 8 GPUs" in progress.message
    assert gang_progress(plan, [node(0), node(1), node(2)]).complete


# -- a real measurement ---------------------------------------------------------------------------

torch_missing = importlib.util.find_spec("torch") is None


def _rank(rank: int, port: int, queue: Any) -> None:
    samples = measure_rank(
        rank=rank,
        world_size=2,
        rendezvous_host="127.0.0.1",
        rendezvous_port=port,
        node_ip="127.0.0.1",
        backend="gloo",
        sizes_bytes=[4096, 1 << 20],
        iterations=2,
        warmup=1,
        timeout_seconds=60,
    )
    queue.put((rank, samples))


@pytest.mark.skipif(torch_missing, reason="torch is not installed (pip install -e '.[fabric]'); gloo needs it")
@pytest.mark.timeout(120)
def test_two_processes_measure_gloo_all_reduce_and_all_to_all() -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = free_port("127.0.0.1")
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=90) for _ in procs)
    finally:
        for p in procs:
            p.join(60)  # torch takes a while to exit on a loaded machine
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    combined = summarize("gloo", [results[0], results[1]])
    ops = {(s.op, s.size_bytes) for s in combined.samples}
    assert ops == {("all_reduce", 4096), ("all_reduce", 1 << 20), ("all_to_all", 4096), ("all_to_all", 1 << 20)}
    assert combined.bus_gbps > 0
    assert combined.all_to_all_bus_gbps is not None
    assert combined.all_to_all_bus_gbps > 0
    assert 0 < combined.latency_seconds < 5


def test_nccl_runs_one_rank_per_gpu_laid_out_as_the_engines_ranks() -> None:
    from mimo_worker.fabric import probe_ranks

    ranks = probe_ranks(2, 8, "nccl")
    assert [(p.node, p.local_rank, p.rank) for p in ranks[7:10]] == [(0, 7, 7), (1, 0, 8), (1, 1, 9)]
    assert {p.world_size for p in ranks} == {16}
    assert {p.num_gpus for p in ranks} == {1}  # each process holds one GPU of its node's bundle
    gloo = probe_ranks(3, 8, "gloo")
    assert [(p.node, p.rank, p.world_size, p.num_gpus) for p in gloo] == [(0, 0, 3, 0), (1, 1, 3, 0), (2, 2, 3, 0)]


def test_expectations_come_from_the_nodes_nics() -> None:
    from mimo_worker.fabric import expected_bus_gbps

    # 8 × 400 Gb/s NDR per node = 400 GB/s: all-reduce rings over every NIC reach it.
    assert expected_bus_gbps("all_reduce", node_nic_gbps=400, nodes=2, ranks_per_node=8) == 400
    # All-to-all between 16 GPUs: each GPU's 50 GB/s NIC carries the 8/16 that leave the node → 50 × 15/8.
    assert expected_bus_gbps("all_to_all", node_nic_gbps=400, nodes=2, ranks_per_node=8) == pytest.approx(93.75)
    assert expected_bus_gbps("all_to_all", node_nic_gbps=400, nodes=4, ranks_per_node=8) == pytest.approx(
        50 * 31 / 24)
    assert expected_bus_gbps("all_reduce", node_nic_gbps=400, nodes=1, ranks_per_node=8) == 0.0


def gpu_report(all_reduce: float, all_to_all: float | None) -> FabricReport:
    return FabricReport("nccl", 16, [], all_reduce, 30e-6, all_to_all, ranks_per_node=8)


@pytest.mark.parametrize(
    ("all_reduce", "all_to_all", "verdict", "named"),
    [
        (350.0, 80.0, "pass", None),
        (350.0, 40.0, "fail", "all-to-all 40.00 GB/s is below 46.88 GB/s"),  # DeepEP's traffic would crawl
        (150.0, 80.0, "fail", "all-reduce 150.00 GB/s is below 200.00 GB/s"),
        (3.0, 1.0, "fail", "all-reduce 3.00 GB/s"),  # NCCL over sockets: both named
    ],
)
def test_all_reduce_and_all_to_all_are_both_gated(all_reduce: float, all_to_all: float, verdict: str,
                                                  named: str | None) -> None:
    result = judge(gpu_report(all_reduce, all_to_all), FabricExpectation(expected_bus_gbps=400, min_fraction=0.5))
    assert result.verdict == verdict
    if named:
        assert named in result.message
        assert "2 nodes × 8 ranks" in result.message
        assert "NET/Socket" in result.message
    if all_reduce == 3.0:
        assert "all-to-all 1.00 GB/s is below" in result.message


@pytest.mark.skipif(torch_missing, reason="torch is not installed (pip install -e '.[fabric]')")
def test_the_nccl_branchs_group_options_build_without_a_gpu() -> None:
    """As far as the NCCL branch goes on a machine without a GPU: torch's NCCL process-group options exist and
    take the timeout the check sets (bench/gpu/fabric_nccl.py runs the branch itself on a GPU)."""
    from datetime import timedelta

    import torch.distributed as dist

    c10d: Any = dist
    assert c10d.is_nccl_available()
    options = c10d.ProcessGroupNCCL.Options()
    options._timeout = timedelta(seconds=5)
    assert options._timeout == timedelta(seconds=5)


def test_a_refused_fabric_reaches_the_gangs_status_through_the_termination_message(tmp_path: Any) -> None:
    """The head writes why it failed where Kubernetes reads a container's termination message; the operator's
    view of the pod carries it into the gang's failure line."""
    from mimo_operator import labels as L
    from mimo_operator.gangs import gangs_from_pods
    from mimo_worker.head import write_termination_message

    verdict = judge(gpu_report(3.0, 1.0), FabricExpectation(expected_bus_gbps=400, min_fraction=0.5))
    log = tmp_path / "termination-log"
    log.touch()  # the kubelet mounts it in a pod
    assert write_termination_message(verdict.message, str(log))
    assert not write_termination_message("x", str(tmp_path / "missing" / "log"))  # best effort
    pod = {"metadata": {"name": "g-0", "labels": {L.LABEL_GANG: "g", L.LABEL_RANK: "0"}},
           "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
               "exitCode": 1, "reason": "Error", "message": log.read_text()}}}]}}
    (gang,) = gangs_from_pods([pod])
    assert gang.pods[0].terminated is not None
    assert gang.pods[0].terminated.startswith("exit code 1 (Error): refusing to start the engine: all-reduce 3.00")
