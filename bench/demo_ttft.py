"""The demo's TTFT against the simulator's prediction for the same offered load.

    .venv/bin/python bench/demo_ttft.py [--url URL] [--seconds 60] [--rate 1] [-f MANIFEST]

Plays the shared Azure code trace at `--rate` times its own pace for `--seconds` through the demo's
load generator (streaming, as the demo does), against `--url` (the demo's router, say) or, without
one, against a simulated engine this script starts for the manifest's plan (default: the demo's
example, MiMo-V2.5-Pro simulated). Then the autoscaling simulator replays exactly the requests sent
(same arrival times, same clipped sizes) against one replica of the same plan, and the two TTFT p50/p95
are printed with their ratio: what the demo shows should be the model (target: within 25 %), not the
machine the demo runs on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from mimo_operator.commands.demo import simulator_prediction
from mimo_operator.loadgen import LoadResult, Phase, read_trace, replay, schedule
from mimo_operator.localcluster.processes import free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mimo-v25-pro-simulated.yaml"
TRACE = REPO / "examples" / "traces" / "azure-2023-code.csv"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))] if ordered else float("nan")


def start_engine(manifest: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mimo_worker.simengine", "--mimo-manifest", str(manifest), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return process, base
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the simulated engine did not become healthy in 120 s")


def start_router(worker: str) -> tuple[subprocess.Popen[bytes], str]:
    """The real sglang-router in front of one worker, as the demo's gangs sit behind it."""
    port, metrics = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics), "--worker-urls", worker],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 1}).encode()
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"{base}/v1/completions", data=body,  # noqa: S310 - loopback
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return process, base
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the router did not route to the engine in 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an OpenAI-compatible base URL (default: start a simulated engine)")
    parser.add_argument("-f", "--filename", type=Path, default=EXAMPLE)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1.0, help="times the trace's own pace (default 1)")
    parser.add_argument("--router", action="store_true", help="put the real sglang-router in front of the engine")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    manifest = yaml.safe_load(args.filename.read_text())
    # One replica, as the simulated engine this script starts (or the demo's short run) serves.
    manifest["spec"]["autoscaling"] = {"enabled": False}
    manifest["spec"]["replicas"] = 1
    trace = read_trace(TRACE)
    phases = [Phase("load", args.seconds, args.seconds * args.rate)]
    processes: list[subprocess.Popen[bytes]] = []
    base = args.url
    if base is None:
        engine, base = start_engine(args.filename)
        processes.append(engine)
        if args.router:
            router, base = start_router(base)
            processes.append(router)
    result = LoadResult()
    try:
        asyncio.run(replay(f"{base}/v1/completions", "XiaomiMiMo/MiMo-V2.5-Pro", trace, phases, result))
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)
    measured = [t for _, t in result.ttft]
    requests = schedule(trace, phases)
    speedup = float(((manifest["spec"].get("engine") or {}).get("simulation") or {}).get("speedup", 1.0))
    predicted = simulator_prediction(manifest, requests, wall_seconds=args.seconds, startup_seconds=0.0)
    figures = {
        "requests": len(requests), "served": result.ok, "failed": result.failed,
        "offeredPerSecond": round(len(requests) / args.seconds, 2),
        "demoTtftP50": round(percentile(measured, 0.5), 3), "demoTtftP95": round(percentile(measured, 0.95), 3),
        "simulatorTtftP50": round(predicted.ttft_p50_seconds / speedup, 3),
        "simulatorTtftP95": round(predicted.ttft_p95_seconds / speedup, 3),
    }
    figures["p95Ratio"] = round(figures["demoTtftP95"] / max(figures["simulatorTtftP95"], 1e-9), 3)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    for error in result.errors[:3]:
        print(f"error: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
