"""The simulated engine driven with the shared Azure trace, in virtual time (issue 5's acceptance).

The trace (``examples/traces/azure-2023-code.csv``: one hour of a code-completion service, prompts of
about 2,000 tokens and outputs of about 30) is replayed at increasing compression against one replica.
Below capacity the replica keeps up with the offered load; past it the throughput flattens at the
modelled capacity while the queue and the time to first token keep growing with the load.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mimo_operator.autoscaling.trace import Trace, load_trace, reshape
from mimo_worker.simengine.engine import Arrival, EngineLimits, OpenLoop, ReplicaEngine, StepTimer, run_virtual
from mimo_worker.simengine.replica import planned_replica
from tests.unit.simengine_support import SmallReplica

REPO = Path(__file__).resolve().parents[2]
TRACES = Path(os.environ.get("MIMO_TRACES", REPO / "examples" / "traces"))
TRACE_FILE = TRACES / "azure-2023-code.csv"

# A replica small enough that the trace saturates it within a few compressions, with round numbers.
SMALL = SmallReplica(
    max_total_num_tokens=200_000,
    swa_max_tokens=60_000,
    context_length=16_384,
    max_running_requests=64,
    chunked_prefill_size=8192,
)
PRO_ON_H200 = {"spec": {"model": {"variant": "MiMo-V2.5-Pro"}, "hardware": {"gpuType": "H200-141GB"}}}


@dataclass(frozen=True)
class Subject:
    """A replica to replay the trace against: its limits, its step times, its attention-DP groups."""

    limits: EngineLimits
    performance: StepTimer
    attention_dp: int

    def engine(self) -> ReplicaEngine:
        return ReplicaEngine(self.limits, self.performance, attention_dp=self.attention_dp)


def small_subject() -> Subject:
    return Subject(SMALL.limits, SMALL, 1)


def planned_pro_subject() -> Subject:
    replica = planned_replica(PRO_ON_H200)
    return Subject(replica.limits, replica.performance, replica.attention_dp)


@pytest.fixture(scope="module")
def trace() -> Trace:
    if not TRACE_FILE.exists():
        pytest.skip(f"the shared trace is not at {TRACE_FILE} (set MIMO_TRACES to its directory)")
    return load_trace(TRACE_FILE)


@dataclass(frozen=True)
class Replay:
    offered: float  # requests/s
    served: float  # requests/s over the whole run (arrivals, then the backlog)
    mean_ttft: float
    mean_queue: float
    usage_vs_in_flight: float  # correlation of KV usage with the tokens of admitted requests


def replay(subject: Subject, trace: Trace, compression: float) -> Replay:
    shaped = reshape(trace, speedup=compression)
    arrivals = [Arrival(r.arrival, max(r.context_tokens, 1), max(r.generated_tokens, 1)) for r in shaped.requests]
    run = run_virtual(subject.engine(), OpenLoop(arrivals), sample_every=1.0)
    assert not run.rejected
    assert len(run.finished) == len(arrivals)
    used = [s.full_used_tokens for _, s in run.samples]
    in_flight = [s.tokens_in_flight for _, s in run.samples]
    return Replay(
        offered=len(arrivals) / shaped.span_seconds,
        served=len(run.finished) / run.end,
        mean_ttft=statistics.mean(r.ttft or 0.0 for r in run.finished),
        mean_queue=statistics.mean(s.num_queue_reqs for _, s in run.samples),
        usage_vs_in_flight=statistics.correlation(used, in_flight),
    )


def modelled_capacity(subject: Subject, trace: Trace) -> float:
    """Requests/s the performance model allows at best: every prompt token prefilled in full passes of
    chunked_prefill_size, every output token decoded in full batches of max_running_requests. No
    schedule can beat it. One scheduler runs prefill and decode one after the other; attention-DP groups
    in lockstep can overlap them (one group prefills while another decodes), so there the bound is the
    larger of the two."""
    perf, limits = subject.performance, subject.limits
    chunk = limits.chunked_prefill_size
    prompt = sum(max(r.context_tokens, 1) for r in trace.requests)
    prefill = prompt / chunk * perf.prefill_seconds(chunk, 0)
    batch = limits.max_running_requests
    output = sum(max(r.generated_tokens - 1, 0) for r in trace.requests)
    decode = output * perf.decode_step_seconds(batch, 0) / batch
    busy = prefill + decode if subject.attention_dp == 1 else max(prefill, decode)
    return len(trace.requests) / busy


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_subject", "compressions"),
    [
        pytest.param(small_subject, (1.0, 2.0, 6.0, 12.0), id="a small stand-in replica"),
        pytest.param(planned_pro_subject, (2.0, 5.0, 20.0, 40.0), id="the planned MiMo-V2.5-Pro on 2x8 H200"),
    ],
)
def test_the_trace_saturates_the_replica_at_its_modelled_capacity_while_queue_and_ttft_grow(
    trace: Trace, make_subject: Callable[[], Subject], compressions: tuple[float, ...]
) -> None:
    subject = make_subject()
    capacity = modelled_capacity(subject, trace)
    runs = [replay(subject, trace, k) for k in compressions]
    light, moderate, heavy, heavier = runs

    assert light.offered < 0.5 * capacity
    assert moderate.offered < capacity < heavy.offered < heavier.offered
    # below capacity the replica serves what is offered
    assert light.served == pytest.approx(light.offered, rel=0.05)
    assert moderate.served == pytest.approx(moderate.offered, rel=0.06)
    # past it, throughput flattens just under the modelled capacity ...
    assert heavy.served == pytest.approx(heavier.served, rel=0.05)
    assert 0.75 * capacity < heavier.served <= capacity
    assert heavier.served < 0.5 * heavier.offered
    # ... while the queue and the time to first token keep growing with the load
    ttfts = [r.mean_ttft for r in runs]
    queues = [r.mean_queue for r in runs]
    assert ttfts == sorted(ttfts)
    assert queues == sorted(queues)
    assert heavier.mean_ttft > 20 * light.mean_ttft
    assert heavier.mean_queue > 20 * light.mean_queue
    # and KV usage tracks the tokens of the requests in the replica at every load
    assert all(r.usage_vs_in_flight > 0.95 for r in runs)


# ---- the same, over HTTP, in real time -----------------------------------------------------------------

HTTP_REPLICA = SmallReplica(max_running_requests=8, context_length=16_384, chunked_prefill_size=8192)
HTTP_REQUESTS = 120
HTTP_SPEEDUP = 5.0
MAX_OUTPUT = 48  # keeps the wall time short; the prompts are the trace's


async def test_over_http_the_trace_queues_past_capacity_and_is_served_at_the_modelled_rate(trace: Trace) -> None:
    import asyncio

    import aiohttp
    from aiohttp import web
    from prometheus_client.parser import text_string_to_metric_families

    from mimo_operator.localcluster.processes import free_port
    from mimo_worker.simengine.options import SimOptions
    from mimo_worker.simengine.server import ModelClock, SimulatedEngineServer

    mix = [
        (max(r.context_tokens, 1), min(max(r.generated_tokens, 1), MAX_OUTPUT)) for r in trace.requests[:HTTP_REQUESTS]
    ]
    # what the same replica does with the same requests in virtual time, all queued at once
    batch = run_virtual(
        ReplicaEngine(HTTP_REPLICA.limits, HTTP_REPLICA), OpenLoop([Arrival(0.0, p, g) for p, g in mix])
    )
    capacity = len(batch.finished) / batch.end  # requests per simulated second
    interval = 1.0 / (2.5 * capacity)  # offer 2.5× what the replica can serve

    options = SimOptions(
        model_path="XiaomiMiMo/MiMo-V2.5-Pro",
        port=free_port(),
        enable_metrics=True,
        mimo_speedup=HTTP_SPEEDUP,
        mimo_startup_seconds=0.0,
    )
    clock = ModelClock(HTTP_SPEEDUP)
    server = SimulatedEngineServer(options, ReplicaEngine(HTTP_REPLICA.limits, HTTP_REPLICA), clock)
    runner = web.AppRunner(server.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", options.port).start()
    await server.start()
    base = f"http://127.0.0.1:{options.port}"
    queue_seen: list[float] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def send(delay: float, prompt: int, output: int) -> int:
                await asyncio.sleep(delay)
                body = {
                    "messages": [{"role": "user", "content": "def f():"}],
                    "max_tokens": output,
                    "mimo_prompt_tokens": prompt,
                }
                async with session.post(base + "/v1/chat/completions", json=body) as response:
                    answer = await response.json()
                    assert answer["usage"]["completion_tokens"] == output
                    return response.status

            async def watch_queue() -> None:
                while True:
                    async with session.get(base + "/metrics") as response:
                        text = await response.text()
                    for family in text_string_to_metric_families(text):
                        if family.name == "sglang:num_queue_reqs":
                            queue_seen.append(family.samples[0].value)
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch_queue())
            started = clock.now()
            statuses = await asyncio.gather(*(send(clock.wall(i * interval), p, g) for i, (p, g) in enumerate(mix)))
            makespan = clock.now() - started
            watcher.cancel()
            async with session.get(base + "/metrics") as response:
                families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    finally:
        await server.close()
        await runner.cleanup()

    assert statuses == [200] * HTTP_REQUESTS
    served = HTTP_REQUESTS / makespan
    # the real-time engine serves at the rate the model allows (a loaded machine only slows it a little)
    assert 0.8 * capacity < served < 1.1 * capacity
    assert max(queue_seen) >= 10  # over capacity the requests wait ...
    queue_time = {s.name: s.value for s in families["sglang:queue_time_seconds"].samples}
    assert queue_time["sglang:queue_time_seconds_sum"] / queue_time["sglang:queue_time_seconds_count"] > 1.0
    done = sum(s.value for s in families["sglang:num_requests"].samples if s.name == "sglang:num_requests_total")
    assert done == HTTP_REQUESTS
