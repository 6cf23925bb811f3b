"""``python -m mimo_operator`` / ``mimo-operator``: run the operator."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

import kopf
import prometheus_client

from mimo_operator.build import OperatorIdentity
from mimo_operator.build.weights import WeightsOptions
from mimo_operator.handlers import OperatorConfig, register
from mimo_operator.reconciler import CONCURRENT_GANG_CREATES, MAX_GANG_CREATES, ReconcilerOptions

__all__ = ["main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="mimo-operator", description="Serve MiMo-V2.5 models on Kubernetes.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], type=_namespace,
                       help="watch only this namespace (repeatable); default: all namespaces")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--metrics-address", default=env("MIMO_METRICS_ADDRESS", "0.0.0.0:9090"),
                   help="host:port of the Prometheus metrics endpoint (default: %(default)s)")
    p.add_argument("--health-address", default=env("MIMO_HEALTH_ADDRESS", "0.0.0.0:8081"),
                   help="host:port of the liveness/readiness endpoint /healthz (default: %(default)s)")
    p.add_argument("--leader-election", action="store_true", default=env("MIMO_LEADER_ELECTION") == "true",
                   help="hold a Lease before acting, so several replicas never act at once")
    p.add_argument("--lease-namespace", default=env("POD_NAMESPACE", "default"))
    p.add_argument("--operator-namespace", default=env("POD_NAMESPACE", "mimo-system"),
                   help="where the operator's pods run (the gangs' NetworkPolicies admit them)")
    p.add_argument("--restart-budget", type=int, default=5, help="recreations of a failing replica before it is Failed")
    p.add_argument("--backoff-seconds", type=float, default=10.0, help="first back-off before recreating a gang")
    p.add_argument("--unschedulable-seconds", type=float, default=300.0,
                   help="how long a gang may stay unschedulable before it is replaced")
    p.add_argument("--distinct-gang-ports", action="store_true", default=env("MIMO_DISTINCT_GANG_PORTS") == "true",
                   help="give every gang its own Ray ports (pods sharing a network namespace, e.g. the local cluster)")
    p.add_argument("--weights-pod-label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label for the weights download and prefetch pods (repeatable)")
    p.add_argument("--hub-endpoint", default=env("MIMO_HUB_ENDPOINT"),
                   help="HF_ENDPOINT for the weights downloads (a Hugging Face mirror)")
    p.add_argument("--resync-seconds", type=float, default=30.0)
    p.add_argument("--batch-seconds", type=float, default=1.0,
                   help="the least time between two reconciles of one deployment; the events in between are "
                        "acted on together")
    p.add_argument("--max-gang-creates", type=int, default=MAX_GANG_CREATES,
                   help="gangs one reconcile creates at most; the next reconcile, at once, creates the rest")
    p.add_argument("--concurrent-gang-creates", type=int, default=CONCURRENT_GANG_CREATES,
                   help="gangs whose objects the operator creates at once, every deployment's together")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def _namespace(text: str) -> str:
    """A namespace's name (Kopf would also take a pattern; the operator's own pod watch needs names)."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text) or len(text) > 63:
        raise argparse.ArgumentTypeError(f"a namespace's name (lower-case letters, digits and '-'), got {text!r}")
    return text


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"mimo-operator: --weights-pod-label wants KEY=VALUE, got {text!r}")
    return key, value


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port)  # noqa: S104


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}')
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:
        # Kopf logs a line per handled watch event ("Handler 'deployment_event' succeeded"): one line per status
        # write of every deployment. Our own decisions are logged apart.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    host, port = _split(args.metrics_address)
    prometheus_client.start_http_server(port, addr=host)
    config = OperatorConfig(
        reconciler=ReconcilerOptions(
            operator=OperatorIdentity(namespace=args.operator_namespace),
            restart_budget=args.restart_budget, backoff_base=args.backoff_seconds,
            unschedulable_deadline=args.unschedulable_seconds, distinct_gang_ports=args.distinct_gang_ports,
            max_gang_creates=args.max_gang_creates, concurrent_gang_creates=max(1, args.concurrent_gang_creates),
            weights=WeightsOptions(pod_labels=tuple(_label(x) for x in args.weights_pod_label),
                                   hub_endpoint=args.hub_endpoint)),
        leader_election=args.leader_election, lease_namespace=args.lease_namespace,
        resync_seconds=args.resync_seconds, batch_seconds=args.batch_seconds, namespaces=tuple(args.namespace),
    )
    register(config)
    health_host, health_port = _split(args.health_address)
    kopf.run(
        standalone=True,  # leader election is ours (a Lease), not Kopf's peering
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://{health_host}:{health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
