"""``mimoctl simulate engine -f MANIFEST --port P``: one simulated SGLang engine for a manifest's plan.

The same HTTP surface as SGLang (/health, /v1/chat/completions, /v1/completions, /metrics with SGLang's
names) with the plan's KV capacity and a roofline of its hardware: point a load generator, a router or
a dashboard at it to rehearse a deployment without GPUs. The engine is a worker program, so it runs
as its own process (the operator's package never imports the worker's).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mimo_operator.errors import SpecError
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("engine", help="serve one simulated SGLang engine for a manifest's plan")
    p.add_argument("-f", "--filename", type=Path, required=True, help="a MiMoDeployment manifest")
    p.add_argument("--port", type=int, default=30000, help="the port to serve on (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: %(default)s)")
    p.add_argument("--speedup", type=float, help="time compression (default: the manifest's simulation.speedup)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    try:
        manifest = yaml.safe_load(args.filename.read_text())
        plan = plan_deployment(parse_spec(manifest))
    except OSError as e:
        print(f"mimoctl simulate engine: cannot read {args.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"mimoctl simulate engine: {args.filename} is not YAML: {e}", file=sys.stderr)
        return 2
    except SpecError as e:
        print(f"mimoctl simulate engine: {e}", file=sys.stderr)
        return 1
    print(f"simulating {plan.variant} on {plan.nodes_per_replica} × {plan.gpus_per_node} {plan.gpu.name}: "
          f"{plan.kv.tokens:,} KV tokens, up to {plan.max_running_requests} running requests; "
          f"serving on http://{args.host}:{args.port}", file=sys.stderr)
    argv = [sys.executable, "-m", "mimo_worker.simengine", "--mimo-manifest", str(args.filename),
            "--host", args.host, "--port", str(args.port)]
    if args.speedup is not None:
        argv += ["--mimo-speedup", repr(args.speedup)]
    os.execv(sys.executable, argv)  # noqa: S606 - our own program, an argv list
    return 0  # not reached
