"""``mimoctl simulate engine -f MANIFEST --port P``: one simulated SGLang engine for a manifest's plan.

The same HTTP surface as SGLang (/health, /v1/chat/completions, /v1/completions, /metrics with SGLang's
names) with the plan's KV capacity and a roofline of its hardware: point a load generator, a router or
a dashboard at it to rehearse a deployment without GPUs. The engine is a worker program, so it runs
as its own process (the operator's package never imports the worker's).

For a manifest with ``spec.disaggregation``, ``--role prefill|decode`` serves one side of the PD plan (a
prefill engine also serves SGLang's bootstrap server on ``--bootstrap-port``); put the real sglang-router
in ``--pd-disaggregation`` mode in front of one of each to rehearse the pair.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mimo_operator.errors import SpecError
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import DEFAULT_BOOTSTRAP_PORT, plan_disaggregated
from mimo_operator.spec import parse_spec

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("engine", help="serve one simulated SGLang engine for a manifest's plan")
    p.add_argument("-f", "--filename", type=Path, required=True, help="a MiMoDeployment manifest")
    p.add_argument("--port", type=int, default=30000, help="the port to serve on (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: %(default)s)")
    p.add_argument("--speedup", type=float, help="time compression (default: the manifest's simulation.speedup)")
    p.add_argument("--role", choices=("prefill", "decode"),
                   help="with spec.disaggregation: the side to serve (SGLang's --disaggregation-mode)")
    p.add_argument("--bootstrap-port", type=int,
                   help=f"a prefill engine's bootstrap server port (default: the plan's, {DEFAULT_BOOTSTRAP_PORT})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    try:
        manifest = yaml.safe_load(args.filename.read_text())
        spec = parse_spec(manifest)
        if spec.disaggregation is not None and args.role is None:
            print("mimoctl simulate engine: the manifest disaggregates prefill and decode (spec.disaggregation): "
                  "give --role prefill or --role decode", file=sys.stderr)
            return 2
        if spec.disaggregation is not None:
            pd = plan_disaggregated(spec)
            plan = pd.prefill.plan if args.role == "prefill" else pd.decode.plan
            bootstrap = args.bootstrap_port or pd.bootstrap_port
        else:
            plan = plan_deployment(spec)
    except OSError as e:
        print(f"mimoctl simulate engine: cannot read {args.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"mimoctl simulate engine: {args.filename} is not YAML: {e}", file=sys.stderr)
        return 2
    except SpecError as e:
        print(f"mimoctl simulate engine: {e}", file=sys.stderr)
        return 1
    role = f"the {args.role} side of " if spec.disaggregation is not None else ""
    print(f"simulating {role}{plan.variant} on {plan.nodes_per_replica} × {plan.gpus_per_node} {plan.gpu.name}: "
          f"{plan.kv.tokens:,} KV tokens, up to {plan.max_running_requests} running requests; "
          f"serving on http://{args.host}:{args.port}", file=sys.stderr)
    argv = [sys.executable, "-m", "mimo_worker.simengine", "--mimo-manifest", str(args.filename),
            "--host", args.host, "--port", str(args.port)]
    if args.speedup is not None:
        argv += ["--mimo-speedup", repr(args.speedup)]
    if spec.disaggregation is not None:
        argv += ["--disaggregation-mode", args.role, "--disaggregation-bootstrap-port", str(bootstrap)]
    os.execv(sys.executable, argv)  # noqa: S606 - our own program, an argv list
    return 0  # not reached
