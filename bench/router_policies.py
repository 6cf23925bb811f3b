"""The router's policies on traffic with shared prefixes: the real sglang-router in front of simulated gangs.

    .venv/bin/python bench/router_policies.py [--family rag|chat|agent] [--gangs 4] [--requests 240]
        [--policies cache_aware,round_robin,power_of_two] [--json bench/results/router_policies.json]

For each policy, from cold: ``--gangs`` simulated engines (``python -m mimo_worker.simengine``, one
MiMo-V2.5 replica each, planned from a manifest, ``--enable-cache-report``, the KV pool capped with
``--max-total-tokens`` so a gang cannot hold the whole working set) on 127.0.0.1, the real router binary
(``python -m sglang_router.launch_router --worker-urls … --policy P``) in front, and a seeded
shared-prefix trace (``mimo_operator.autoscaling.prefix_traces``) replayed open-loop through the router
as chat completions with text prompts — the router's ``cache_aware`` tree matches prompt text, the
engines' prefix caches match the same text. Printed per policy:

* hit rate: cached / prompt tokens (each response's ``usage.prompt_tokens_details.cached_tokens``);
* TTFT mean, p50, p90 in simulated seconds from the engines' own ``sglang:time_to_first_token_seconds``
  histograms (percentiles interpolated inside SGLang's buckets), and throughput (output tokens per
  simulated second over the replay);
* the spread of requests over the gangs (max / min);
* the same figures *predicted* by the simulated engine in virtual time (no processes): the trace through
  the same number of ``ReplicaEngine`` s behind an emulation of the router's policy
  (``mimo_worker.simengine.fleet``).

Everything is bounded: a few hundred requests per policy, short answers (``--max-output``), one run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mimo_operator.autoscaling.prefix_traces import FAMILIES, PrefixTrace
from mimo_operator.localcluster.processes import free_port
from mimo_worker.simengine.engine import ReplicaEngine
from mimo_worker.simengine.fleet import FleetArrival, RouterEmulation, run_fleet
from mimo_worker.simengine.prefix import text_blocks
from mimo_worker.simengine.replica import PlannedReplica, planned_replica
from mimo_worker.simengine.server import chat_prompt_tokens, render_chat

MANIFEST = {
    "apiVersion": "serving.mimo-operator.io/v1alpha1",
    "kind": "MiMoDeployment",
    "metadata": {"name": "bench-router"},
    "spec": {"model": {"variant": "MiMo-V2.5"}, "hardware": {"gpuType": "H100-80GB"}},
}
POLICIES = ("cache_aware", "round_robin", "power_of_two")
JSON = {"Content-Type": "application/json"}


@dataclass
class Figures:
    policy: str
    source: str  # "measured" | "predicted"
    requests: int
    errors: int
    hit_rate: float
    ttft_mean: float
    ttft_p50: float
    ttft_p90: float
    throughput: float  # output tokens per simulated second
    spread: float  # requests on the busiest gang / on the idlest


# ---- the trace as requests ---------------------------------------------------------------------------


def build_trace(family: str, seed: int, requests: int, rate_scale: float) -> PrefixTrace:
    trace = FAMILIES[family](seed=seed)
    kept = trace.requests[:requests]
    if rate_scale != 1.0:
        kept = tuple(type(r)(r.arrival / rate_scale, r.segments, r.generated_tokens, r.session) for r in kept)
    return PrefixTrace(trace.name, kept)


# ---- prediction in virtual time ----------------------------------------------------------------------


def predict(trace: PrefixTrace, policy: str, replica: PlannedReplica, args: argparse.Namespace) -> Figures:
    limits = replica.limits
    if args.max_total_tokens:
        ratio = limits.swa_max_tokens / limits.max_total_num_tokens
        limits = dataclasses.replace(
            limits, max_total_num_tokens=args.max_total_tokens, swa_max_tokens=int(args.max_total_tokens * ratio)
        )
    engines = [
        ReplicaEngine(limits, replica.performance, attention_dp=replica.plan.attention_data_parallel)
        for _ in range(args.gangs)
    ]
    arrivals = []
    for item in trace.requests:
        messages = item.messages()
        text, _ = render_chat(messages)
        arrivals.append(
            FleetArrival(
                item.arrival,
                chat_prompt_tokens(messages),
                min(item.generated_tokens, args.max_output),
                text_blocks(text, limits.page_size),
            )
        )
    router = RouterEmulation(policy, args.gangs, seed=args.seed, page_size=limits.page_size)
    run = run_fleet(engines, arrivals, router)
    requests = run.requests
    ttfts = sorted(r.ttft for r in requests if r.ttft is not None)
    end = max(r.finished_at or 0.0 for r in requests)
    return Figures(
        policy=policy,
        source="predicted",
        requests=len(requests),
        errors=0,
        hit_rate=run.hit_rate,
        ttft_mean=statistics.fmean(ttfts),
        ttft_p50=ttfts[len(ttfts) // 2],
        ttft_p90=ttfts[int(len(ttfts) * 0.9)],
        throughput=sum(r.output_tokens for r in requests) / max(end - trace.requests[0].arrival, 1e-9),
        spread=run.spread,
    )


# ---- measurement through the real router -------------------------------------------------------------


async def _wait_ok(session: aiohttp.ClientSession, url: str, what: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {within:.0f} s ({url})")


@contextlib.contextmanager
def processes(commands: list[list[str]], logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        for i, command in enumerate(commands):
            log = (logs / f"proc-{i}.log").open("wb")
            started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile over cumulative (le, count) buckets."""
    total = buckets[-1][1]
    if total == 0:
        return 0.0
    rank = q * total
    index = bisect.bisect_left([c for _, c in buckets], rank)
    upper, count = buckets[index]
    lower, below = (0.0, 0.0) if index == 0 else buckets[index - 1]
    if upper == float("inf"):
        return lower
    return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)


async def _scrape(session: aiohttp.ClientSession, bases: list[str]) -> dict[str, Any]:
    ttft_sum = ttft_count = 0.0
    buckets: dict[float, float] = {}
    for base in bases:
        async with session.get(base + "/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            if family.name != "sglang:time_to_first_token_seconds":
                continue
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    ttft_sum += sample.value
                elif sample.name.endswith("_count"):
                    ttft_count += sample.value
                elif sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    ordered = sorted(buckets.items())
    return {
        "mean": ttft_sum / max(ttft_count, 1),
        "p50": _histogram_quantile(ordered, 0.5),
        "p90": _histogram_quantile(ordered, 0.9),
    }


async def measure(trace: PrefixTrace, policy: str, manifest: Path, args: argparse.Namespace, logs: Path) -> Figures:
    ports = [free_port() for _ in range(args.gangs)]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    engine = [sys.executable, "-m", "mimo_worker.simengine", "--mimo-manifest", str(manifest)]
    engine += ["--host", "127.0.0.1", "--enable-metrics", "--enable-cache-report", "--mimo-startup-seconds", "0"]
    engine += ["--mimo-speedup", str(args.speedup), "--log-level", "warning"]
    if args.max_total_tokens:
        engine += ["--max-total-tokens", str(args.max_total_tokens)]
    router_port = free_port()
    router = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1"]
    router += ["--port", str(router_port), "--policy", policy, "--log-level", "warn"]
    router += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())]
    router += ["--worker-urls", *bases]
    commands = [[*engine, "--port", str(p)] for p in ports]
    # no connection limit: a pool (aiohttp: 100) would queue requests in the client, out of the TTFT
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600), connector=connector) as session:
        with processes(commands, logs) as engines:
            for base in bases:
                await _wait_ok(session, base + "/health", "a simulated engine")
            (logs / "router").mkdir(exist_ok=True)
            with processes([router], logs / "router") as _:
                url = f"http://127.0.0.1:{router_port}"
                await _wait_ok(session, url + "/health", "the router")
                results: list[tuple[int, int, int, int]] = []  # (status, prompt, cached, completion)
                # bodies are encoded before the clock starts: the client's CPU must not delay arrivals
                bodies = [
                    json.dumps(
                        {
                            "model": "XiaomiMiMo/MiMo-V2.5",
                            "messages": item.messages(),
                            "max_tokens": min(item.generated_tokens, args.max_output),
                        }
                    ).encode()
                    for item in trace.requests
                ]
                t0 = time.monotonic()
                first = trace.requests[0].arrival

                lags: list[float] = []

                async def send(item: Any, body: bytes) -> None:
                    due = (item.arrival - first) / args.speedup
                    await asyncio.sleep(max(0.0, due - (time.monotonic() - t0)))
                    lags.append(time.monotonic() - t0 - due)
                    try:
                        async with session.post(url + "/v1/chat/completions", data=body, headers=JSON) as response:
                            payload = await response.json(content_type=None)
                            if response.status != 200:
                                results.append((response.status, 0, 0, 0))
                                return
                            usage = payload["usage"]
                            details = usage.get("prompt_tokens_details") or {}
                            results.append(
                                (
                                    200,
                                    usage["prompt_tokens"],
                                    details.get("cached_tokens", 0),
                                    usage["completion_tokens"],
                                )
                            )
                    except (TimeoutError, aiohttp.ClientError):
                        results.append((0, 0, 0, 0))

                await asyncio.gather(*(send(item, body) for item, body in zip(trace.requests, bodies, strict=True)))
                wall = time.monotonic() - t0
                print(
                    f"  {policy}: sent {statistics.fmean(lags) * 1e3:.1f} ms late on average "
                    f"(max {max(lags) * 1e3:.0f} ms wall, × {args.speedup} simulated)"
                )
                ttft = await _scrape(session, bases)
                counts = []
                for base in bases:
                    async with session.get(base + "/metrics") as response:
                        text = await response.text()
                    counts.append(
                        sum(
                            s.value
                            for f in text_string_to_metric_families(text)
                            for s in f.samples
                            if s.name == "sglang:num_requests_total"
                        )
                    )
            if any(p.poll() is not None for p in engines):
                raise RuntimeError(f"a simulated engine exited early; logs in {logs}")
    ok = [r for r in results if r[0] == 200]
    return Figures(
        policy=policy,
        source="measured",
        requests=len(ok),
        errors=len(results) - len(ok),
        hit_rate=sum(r[2] for r in ok) / max(sum(r[1] for r in ok), 1),
        ttft_mean=ttft["mean"],
        ttft_p50=ttft["p50"],
        ttft_p90=ttft["p90"],
        throughput=sum(r[3] for r in ok) / max(wall * args.speedup, 1e-9),
        spread=max(counts) / max(min(counts), 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="rag")
    parser.add_argument("--gangs", type=int, default=4)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--rate-scale", type=float, default=3.0, help="arrivals this many times faster")
    parser.add_argument("--speedup", type=float, default=2.0, help="simulated seconds per wall second")
    parser.add_argument("--max-output", type=int, default=32, help="cap on answer tokens (bounds the CPU)")
    parser.add_argument("--max-total-tokens", type=int, default=160_000, help="each gang's KV pool (0: plan's)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--predict-only", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    args = parser.parse_args()

    trace = build_trace(args.family, args.seed, args.requests, args.rate_scale)
    replica = planned_replica(MANIFEST)
    prompt = sum(r.prompt_tokens for r in trace.requests)
    pool = args.max_total_tokens or replica.limits.max_total_num_tokens
    print(
        f"{trace.name}: {len(trace.requests)} requests over {trace.span_seconds:.0f} simulated s, "
        f"{prompt:,} prompt tokens, {trace.shareable_tokens() / prompt:.0%} shareable; "
        f"{args.gangs} gangs of MiMo-V2.5 on 8×H100, KV pool {pool:,} "
        f"tokens each ({replica.plan.attention_data_parallel} attention-DP groups)"
    )
    figures: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        manifest = Path(tmp) / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(MANIFEST))
        for policy in args.policies.split(","):
            figures.append(predict(trace, policy, replica, args))
            if not args.predict_only:
                logs = Path(tmp) / policy
                logs.mkdir()
                figures.append(asyncio.run(measure(trace, policy, manifest, args, logs)))
    header = (
        f"{'policy':<14}{'source':<11}{'ok':>5}{'err':>5}{'hit rate':>10}"
        f"{'TTFT mean':>11}{'p50':>8}{'p90':>8}{'tok/s':>9}{'spread':>8}"
    )
    print(header)
    for f in figures:
        print(
            f"{f.policy:<14}{f.source:<11}{f.requests:>5}{f.errors:>5}{f.hit_rate:>10.1%}{f.ttft_mean:>10.3f}s"
            f"{f.ttft_p50:>7.3f}s{f.ttft_p90:>7.3f}s{f.throughput:>9.0f}{f.spread:>8.2f}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "figures": [asdict(f) for f in figures]}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
