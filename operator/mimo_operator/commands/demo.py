"""``mimoctl demo``: the newcomer's first run, on the embedded local cluster.

It starts the local cluster with fake 8-GPU nodes, installs the operator with its Helm chart, applies
the simulated MiMo-V2.5-Pro rehearsal (examples/), sends traffic from the Azure code trace through the
real router, and says in plain words — with a live table — what happens: gangs scheduled, Ready, load
rising, a gang added, load falling, a gang drained. It ends with a summary and a PNG plot, and stops
everything it started (also on error and Ctrl-C). ``--short`` runs the same path with one replica and a
brief load (CI runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from mimo_operator.autoscaling.baselines import MimoPolicy, StaticPeak
from mimo_operator.autoscaling.simulator import Autoscaler, PolicyResult, simulate
from mimo_operator.autoscaling.trace import Request, Trace
from mimo_operator.commands.simulate_autoscaling import comparison_for
from mimo_operator.loadgen import LoadResult, Phase, RequestShape, read_trace, replay, schedule
from mimo_operator.localcluster.binaries import cache_dir
from mimo_operator.localcluster.cluster import ClusterError, LocalCluster

__all__ = ["register", "simulator_prediction"]

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "mimo-operator"
EXAMPLE = REPO / "examples" / "mimo-v25-pro-simulated.yaml"
TRACE = REPO / "examples" / "traces" / "azure-2023-code.csv"
NAMESPACE = "demo"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser("demo", help="run the demo on the embedded local cluster")
    demo.add_argument("--nodes", type=int, default=8, help="fake 8×H200 nodes (default: %(default)s)")
    demo.add_argument("--blocks", type=int, default=2, help="InfiniBand blocks (default: %(default)s)")
    demo.add_argument("--short", action="store_true", help="one replica and a brief load (CI)")
    demo.add_argument("--plot", type=Path, default=Path("mimo-demo.png"), help="where to write the plot")
    demo.add_argument("--trace", type=Path, default=TRACE, help="request trace (default: %(default)s)")
    demo.set_defaults(func=run)


def simulator_prediction(manifest: Mapping[str, Any], sent: Sequence[RequestShape], *, wall_seconds: float,
                         startup_seconds: float) -> PolicyResult:
    """What `mimoctl simulate autoscaling` predicts for exactly the requests the demo sent (arrival offsets,
    clipped sizes) against the manifest's deployment: its plan, its autoscaling (from its replicas), the
    gangs' measured start-up. Times in the result are the engine's model seconds (× its speedup)."""
    spec = manifest["spec"]
    speedup = float(((spec.get("engine") or {}).get("simulation") or {}).get("speedup", 1.0))
    trace = Trace("the demo's requests", tuple(Request(r.offset * speedup, r.context_tokens, r.generated_tokens)
                                               for r in sent), wall_seconds * speedup)
    _, parsed, comparison = comparison_for(manifest, trace, startup_seconds=startup_seconds * speedup)
    replicas = max(1, parsed.replicas)
    autoscaler: Autoscaler = MimoPolicy(comparison.policy) if parsed.autoscaling.enabled else StaticPeak(replicas)
    return simulate(trace, replace(comparison.fleet, initial_replicas=replicas), autoscaler)


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


class Demo:
    def __init__(self, args: argparse.Namespace, cluster: LocalCluster) -> None:
        self.args = args
        self.cluster = cluster
        self.helm = str(cache_dir() / "bin" / "helm")
        self.timeline: list[dict[str, Any]] = []
        self.load = LoadResult()
        self.events_seen: set[str] = set()
        self.started = time.monotonic()
        self.manifest: dict[str, Any] = {}
        self.phases: list[Phase] = []
        self.startup_seconds = 60.0  # replaced by the first gang's measured start-up

    def kubectl_json(self, *args: str) -> Any:
        return self.cluster.kubectl_json(*args)

    def deployment(self) -> dict[str, Any]:
        result = self.cluster.kubectl("get", "mimodeployment", "pro-simulated", "-n", NAMESPACE, "-o", "json",
                                      check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def install(self) -> None:
        say("Installing the operator with its Helm chart (CRD, least-privilege RBAC, Deployment)")
        # Imported here: the pod runner needs the local cluster's extra, which `mimoctl plan` does not.
        from mimo_operator.localcluster.podrunner import PROCESS_LABEL

        values = {
            "podLabels": {PROCESS_LABEL: "true"},  # the local cluster runs the operator as a real process
            "bindAddress": "$(POD_IP)",
            "extraArgs": ["--distinct-gang-ports", "--resync-seconds", "5", "--backoff-seconds", "2",
                          "--weights-pod-label", f"{PROCESS_LABEL}=true"],
        }
        values_file = self.cluster.state_dir / "demo-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        subprocess.run([self.helm, "install", "mimo", str(CHART), "--namespace", "mimo-system", "--create-namespace",
                        "--kubeconfig", str(self.cluster.kubeconfig), "-f", str(values_file), "--wait",
                        "--timeout", "180s"], check=True, capture_output=True, text=True)
        pods = self.kubectl_json("get", "pods", "-n", "mimo-system")["items"]
        print(f"    operator pod {pods[0]['metadata']['name']} is Ready under its chart RBAC")

    def apply(self) -> None:
        from mimo_operator.localcluster.podrunner import PROCESS_LABEL

        manifest = yaml.safe_load(EXAMPLE.read_text())
        spec = manifest["spec"]
        spec["podTemplate"] = {"labels": {PROCESS_LABEL: "true"}}
        if self.args.short:
            spec["autoscaling"] = {"enabled": False}
            spec["replicas"] = 1
        manifest["metadata"]["namespace"] = NAMESPACE
        self.manifest = manifest
        self.cluster.kubectl("create", "namespace", NAMESPACE)
        say(f"Applying {EXAMPLE.relative_to(REPO)}: MiMo-V2.5-Pro, simulated engines, the real plan")
        plan = json.loads(subprocess.run([sys.executable, "-m", "mimo_operator.cli", "plan", "-f", str(EXAMPLE),
                                          "-o", "json"], capture_output=True, text=True, check=True).stdout)
        print(f"    plan: {plan['nodesPerReplica']} nodes × 8 GPUs per replica, TP {plan['tensorParallel']}, "
              f"EP {plan['expertParallel']}, {plan['kvCacheTokens']:,} KV tokens per replica")
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def row(self, note: str = "") -> None:
        obj = self.deployment()
        status, spec = obj.get("status", {}), obj.get("spec", {})
        now = time.monotonic()
        ttfts = [t for sent, t in self.load.ttft if now - sent <= 20]
        point = {
            "t": round(now - self.started, 1), "desired": spec.get("replicas", 0),
            "ready": status.get("readyReplicas", 0), "gangs": len(status.get("gangs", [])),
            "rate": round(self.load.rate(now), 2), "kv": status.get("kvCacheUsage"), "queue": status.get("queue"),
            "ttft": round(statistics.quantiles(ttfts, n=20)[-1], 2) if len(ttfts) >= 20 else None,
            "phase": status.get("phase", "-"),
        }
        self.timeline.append(point)
        kv = f"{point['kv']:.0%}" if isinstance(point["kv"], float) else "-"
        ttft = f"{point['ttft']:.2f}s" if point["ttft"] is not None else "-"
        queue = "-" if point["queue"] is None else str(point["queue"])
        print(f"  {point['t']:>6.0f}s {point['phase']:<11} {point['desired']:>7} {point['ready']:>5} "
              f"{point['gangs']:>5} {point['rate']:>7.1f} {kv:>5} {queue:>5} {ttft:>8}  {note}", flush=True)
        for event in self.kubectl_json("get", "events", "-n", NAMESPACE)["items"]:
            key = event["metadata"]["uid"]
            if key not in self.events_seen and event["reason"] in (
                    "GangCreated", "GangDraining", "GangDeleted", "ScaledUp", "ScaledDown", "GangFailed"):
                self.events_seen.add(key)
                print(f"          event {event['reason']}: {event['message']}", flush=True)

    @staticmethod
    def header() -> None:
        print(f"  {'time':>7} {'phase':<11} {'desired':>7} {'ready':>5} {'gangs':>5} {'req/s':>7} {'KV':>5} "
              f"{'queue':>5} {'TTFT p95':>8}", flush=True)

    def watch_until(self, done: Any, timeout: float, interval: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.row()
            if done():
                return True
            time.sleep(interval)
        return False

    def router_url(self) -> str:
        pods = self.kubectl_json("get", "pods", "-n", NAMESPACE, "-l",
                                 "mimo-operator.io/deployment=pro-simulated,app.kubernetes.io/component=router")
        for pod in pods["items"]:
            if pod["status"].get("podIP"):
                return f"http://{pod['status']['podIP']}:8080/v1/completions"
        raise ClusterError("the router has no pod IP")

    def traffic(self) -> None:
        trace = read_trace(self.args.trace)
        if self.args.short:
            phases = [Phase("light load", 40, 40)]
        else:
            # Light load (half the trace's pace, ≈ 1.2 req/s: well within one Pro replica), then twice its
            # pace (≈ 5 req/s, two gangs' worth), then light again. A light load near one replica's
            # capacity would make the count flap between one and two gangs, as it would on GPUs.
            phases = [Phase("light load", 60, 30), Phase("heavy load", 180, 360), Phase("light load", 240, 120)]
        self.phases = phases
        steps = [f"{p.name} ({p.trace_seconds / p.wall_seconds:g}× the trace's rate, {p.wall_seconds:.0f} s)"
                 for p in phases]
        say("Sending traffic from the Azure code trace through the router: " + ", then ".join(steps))
        url = self.router_url()
        thread = threading.Thread(target=lambda: asyncio.run(
            replay(url, "XiaomiMiMo/MiMo-V2.5-Pro", trace, phases, self.load)), daemon=True)
        thread.start()
        self.header()
        while thread.is_alive():
            self.row()
            thread.join(timeout=5.0)
        self.row("traffic finished")

    def summary(self) -> None:
        ttfts = sorted(t for _, t in self.load.ttft)
        peak = max((p["desired"] for p in self.timeline), default=0)
        ups = sum(1 for e in self.kubectl_json("get", "events", "-n", NAMESPACE)["items"] if e["reason"] == "ScaledUp")
        downs = sum(1 for e in self.kubectl_json("get", "events", "-n", NAMESPACE)["items"]
                    if e["reason"] == "ScaledDown")
        say("Summary")
        print(f"    requests: {self.load.ok} served, {self.load.failed} failed")
        if ttfts:
            print(f"    time to first token: p50 {ttfts[len(ttfts) // 2]:.2f} s, "
                  f"p95 {ttfts[int(0.95 * (len(ttfts) - 1))]:.2f} s")
        print(f"    replicas: peak {peak}; the autoscaler scaled up {ups} and down {downs} time(s)")
        if ttfts and self.manifest:
            sent = schedule(read_trace(self.args.trace), self.phases)
            predicted = simulator_prediction(self.manifest, sent, wall_seconds=sum(p.wall_seconds for p in self.phases),
                                             startup_seconds=self.startup_seconds)
            measured = ttfts[int(0.95 * (len(ttfts) - 1))]
            print(f"    the simulator predicts for the same requests: p50 {predicted.ttft_p50_seconds:.2f} s, "
                  f"p95 {predicted.ttft_p95_seconds:.2f} s (measured / predicted p95: "
                  f"{measured / max(predicted.ttft_p95_seconds, 1e-9):.2f}), "
                  f"{predicted.scale_events} scale event(s)")
        for error in self.load.errors[:3]:
            print(f"    error: {error}")
        self.plot()
        print(f"    plot: {self.args.plot}")
        print(f"    took {time.monotonic() - self.started:.0f} s")

    def plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("    (matplotlib is not installed: no plot; pip install '.[plot]')")
            return
        t = [p["t"] for p in self.timeline]
        fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
        axes[0].plot(t, [p["rate"] for p in self.timeline], color="tab:blue")
        axes[0].set_ylabel("completed req/s")
        axes[1].step(t, [p["desired"] for p in self.timeline], where="post", label="desired")
        axes[1].step(t, [p["ready"] for p in self.timeline], where="post", label="ready")
        axes[1].set_ylabel("replicas (gangs)")
        axes[1].legend(loc="upper left")
        axes[2].plot(t, [p["ttft"] if p["ttft"] is not None else float("nan") for p in self.timeline],
                     color="tab:red")
        axes[2].set_ylabel("TTFT p95 (s)")
        axes[2].set_xlabel("seconds since the demo started")
        fig.suptitle("mimoctl demo: simulated MiMo-V2.5-Pro on the local cluster")
        fig.tight_layout()
        fig.savefig(self.args.plot, dpi=100)
        plt.close(fig)


def run(args: argparse.Namespace) -> int:
    for need in (CHART, EXAMPLE, args.trace):
        if not need.exists():
            print(f"mimoctl demo: {need} is missing: run the demo from a clone of the repository", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="mimo-demo-") as state:
        say(f"Starting a local Kubernetes cluster: real etcd, kube-apiserver, controller-manager and scheduler, "
            f"with {args.nodes} fake 8×H200 nodes (kwok) in {args.blocks} InfiniBand blocks")
        try:
            cluster = LocalCluster.up(Path(state) / "cluster", nodes=args.nodes, gpu_type="H200-141GB",
                                      blocks=args.blocks, exit_with_parent=True)
        except ClusterError as e:
            print(f"mimoctl demo: {e}", file=sys.stderr)
            return 1
        demo = Demo(args, cluster)
        try:
            print(f"    ready in {cluster.state.get('startSeconds')} s: {', '.join(cluster.state.get('nodes', []))}")
            demo.install()
            demo.apply()
            say("Waiting for the gang: pods scheduled onto GPU nodes, Ray joined, the engine serving")
            demo.header()
            applied = time.monotonic()
            if not demo.watch_until(lambda: demo.deployment().get("status", {}).get("phase") == "Ready", 300):
                print("mimoctl demo: the deployment did not become Ready in 300 s", file=sys.stderr)
                return 1
            demo.startup_seconds = time.monotonic() - applied
            demo.traffic()
            if not args.short:
                say("Load has fallen: the autoscaler drains surplus gangs after its stabilisation window")
                demo.header()
                demo.watch_until(lambda: demo.deployment().get("spec", {}).get("replicas") == 1
                                 and demo.deployment().get("status", {}).get("readyReplicas") == 1
                                 and len(demo.deployment().get("status", {}).get("gangs", [])) == 1, 300)
            demo.summary()
        except (ClusterError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or ""
            print(f"mimoctl demo: {e} {detail}", file=sys.stderr)
            return 1
        finally:
            say("Cleaning up: helm uninstall, then the cluster stops")
            subprocess.run([demo.helm, "uninstall", "mimo", "--namespace", "mimo-system", "--kubeconfig",
                            str(cluster.kubeconfig), "--wait", "--timeout", "60s"], capture_output=True, check=False)
            cluster.down()
    return 0
