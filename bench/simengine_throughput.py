"""The simulated engine: modelled vs published throughput, and what one engine process sustains here.

    .venv/bin/python bench/simengine_throughput.py [--requests N] [--concurrency C]

1. Modelled vs published. MiMo-V2.5 on 8×H200 is planned from a manifest (spec → plan → performance
   model) and driven in virtual time the way the SGLang cookbook benchmarked it: random 1,024-token
   prompts and 1,024-token outputs, a closed loop of 1 and of 100 clients. Its output tokens/s, TTFT and
   TPOT are printed beside the cookbook's figures (``mimo-facts.md``; SGLang cookbook MiMo-V2.5 §5.3:
   190 tok/s, TTFT 144 ms, TPOT 4.9 ms at 1; 2,096 tok/s, TTFT 4.4 s, TPOT 21.8 ms at 100). Likewise
   MiMo-V2.5-Pro on 8×B200 (§5.2: 101 tok/s at 1, 1,736 tok/s at 100), when the planner can plan it.
2. Requests/s of one engine process on this machine. ``python -m mimo_worker.simengine`` is started as
   a process on 127.0.0.1 with time compressed 1000× (the simulated GPUs are never the limit, the
   process's CPU is), and a bounded closed-loop load goes through loopback: first ``/ping`` (the
   baseline: aiohttp alone, measured in the same run), then non-streaming and streaming chat
   completions of 8 output tokens. The load generator shares the machine's cores with the engine.
   Finally SIGTERM: the process drains and must exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import yaml

from mimo_operator.localcluster.processes import free_port
from mimo_worker.simengine.engine import ClosedLoop, ReplicaEngine, run_virtual
from mimo_worker.simengine.replica import planned_replica

V25_H200 = {
    "apiVersion": "serving.mimo-operator.io/v1alpha1",
    "kind": "MiMoDeployment",
    "metadata": {"name": "bench-v25"},
    "spec": {"model": {"variant": "MiMo-V2.5"}, "hardware": {"gpuType": "H200-141GB"}},
}
PRO_B200 = {
    "apiVersion": "serving.mimo-operator.io/v1alpha1",
    "kind": "MiMoDeployment",
    "metadata": {"name": "bench-pro"},
    "spec": {"model": {"variant": "MiMo-V2.5-Pro"}, "hardware": {"gpuType": "B200-180GB"}},
}
# (concurrency, output tok/s, mean TTFT s, TPOT s) from the SGLang cookbook's runs (random 1024/1024).
PUBLISHED = {
    "MiMo-V2.5 on 8×H200": (V25_H200, [(1, 190.0, 0.144, 0.0049), (100, 2096.0, 4.4, 0.0218)]),
    "MiMo-V2.5-Pro on 8×B200": (PRO_B200, [(1, 101.0, None, 0.0092), (100, 1736.0, 0.224, 0.0506)]),
}
PROMPT = OUTPUT = 1024


def modelled_vs_published() -> None:
    print("== modelled vs published (virtual time, random 1024/1024, closed loop) ==")
    for name, (manifest, rows) in PUBLISHED.items():
        try:
            replica = planned_replica(manifest)
        except Exception as error:  # a plan the planner refuses is a figure we cannot give, not a crash
            print(f"{name}: not planned ({error})")
            continue
        print(
            f"{name}: {replica.summary_line()}\n"
            f"  {'conc':>4} {'model tok/s':>11} {'published':>9} {'ratio':>6}"
            f" {'TTFT model':>10} {'published':>9} {'TPOT model':>10} {'published':>9}"
        )
        for concurrency, tok_s, ttft, tpot in rows:
            run = run_virtual(
                ReplicaEngine(replica.limits, replica.performance, attention_dp=replica.attention_dp),
                ClosedLoop(concurrency, PROMPT, OUTPUT, total_requests=max(3 * concurrency, 4)),
            )
            finished = run.finished
            produced = sum(r.output_tokens for r in finished)
            throughput = produced / run.end
            mean_ttft = statistics.mean(r.ttft or 0.0 for r in finished)
            mean_tpot = statistics.mean(
                ((r.e2e_seconds or 0.0) - (r.ttft or 0.0)) / max(r.output_tokens - 1, 1) for r in finished
            )
            print(
                f"  {concurrency:>4} {throughput:>11.0f} {tok_s:>9.0f} {throughput / tok_s:>6.2f}"
                f" {mean_ttft:>9.3f}s {_s(ttft):>9} {mean_tpot * 1000:>8.1f}ms {_ms(tpot):>9}"
            )
        print(
            f"  (performance model alone: decode_tokens_per_second(1, 2048) = "
            f"{replica.performance.decode_tokens_per_second(1, 2048):.0f}, (100, 2048) = "
            f"{replica.performance.decode_tokens_per_second(100, 2048):.0f})"
        )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


# ---- one process, real HTTP ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(
    n: int, concurrency: int, one: Callable[[aiohttp.ClientSession], Awaitable[None]], limit_s: float
) -> tuple[int, float]:
    """Send up to ``n`` requests from ``concurrency`` clients, for at most ``limit_s``; (done, seconds)."""
    started = done = 0
    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def client() -> None:
            nonlocal started, done
            while started < n and time.monotonic() - start < limit_s:
                started += 1
                await one(session)
                done += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, time.monotonic() - start


async def measure_process(base: str, pid: int, requests: int, concurrency: int) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "mimo_prompt_tokens": 128}

    async def ping(session: aiohttp.ClientSession) -> None:
        async with session.get(base + "/ping") as response:
            assert response.status == 200
            await response.read()

    async def chat(session: aiohttp.ClientSession) -> None:
        async with session.post(base + "/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
            await response.read()

    async def chat_stream(session: aiohttp.ClientSession) -> None:
        async with session.post(base + "/v1/chat/completions", json={**body, "stream": True}) as response:
            assert response.status == 200
            last = b""
            async for line in response.content:
                if line.strip():
                    last = line.strip()
            assert last == b"data: [DONE]"

    print(f"== one engine process on this machine ({os.cpu_count()} cores, load generator in the same machine) ==")
    print(f"  {'endpoint':<34} {'requests':>8} {'req/s':>8} {'engine CPU ms/req':>17} {'1-core ceiling':>14}")
    baseline = None
    for label, one in (
        ("GET /ping (aiohttp baseline)", ping),
        ("POST /v1/chat/completions", chat),
        ("POST /v1/chat/completions stream", chat_stream),
    ):
        cpu0 = cpu_seconds(pid)
        done, seconds = await closed_loop(requests, concurrency, one, limit_s=30.0)
        cpu = cpu_seconds(pid) - cpu0
        rate = done / seconds
        baseline = baseline or rate
        per_request = cpu / done
        print(
            f"  {label:<34} {done:>8} {rate:>8.0f} {per_request * 1000:>17.2f} {1 / per_request:>11.0f}/s"
            f"   ({rate / baseline:.2f}× /ping)"
        )
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
        text = await response.text()
    generated = [line for line in text.splitlines() if line.startswith("sglang:generation_tokens_total")]
    print("  metrics after the run:", "; ".join(generated))


def process_figures(requests: int, concurrency: int) -> int:
    with tempfile.TemporaryDirectory(prefix="mimo-simengine-bench-") as tmp:
        manifest = Path(tmp) / "v25.yaml"
        manifest.write_text(yaml.safe_dump(V25_H200))
        port = free_port()
        argv = [
            sys.executable, "-m", "mimo_worker.simengine", "--mimo-manifest", str(manifest),
            "--host", "127.0.0.1", "--port", str(port), "--mimo-speedup", "1000",
            "--mimo-startup-seconds", "0", "--enable-metrics", "--log-level", "warning",
        ]  # fmt: skip
        process = subprocess.Popen(argv)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, process)
            asyncio.run(measure_process(base, process.pid, requests, concurrency))
        finally:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        print(f"  SIGTERM: exited {code} after {time.monotonic() - started:.2f} s")
        return code


def wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the engine exited with {process.returncode} before serving")
        try:
            with urllib.request.urlopen(base + "/health", timeout=1) as response:  # noqa: S310 (loopback)
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise SystemExit("the engine did not turn healthy within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per endpoint (bounded by 30 s)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--skip-process", action="store_true", help="only the modelled figures")
    args = parser.parse_args()
    modelled_vs_published()
    if args.skip_process:
        return 0
    return process_figures(args.requests, args.concurrency)


if __name__ == "__main__":
    sys.exit(main())
