"""``mimo-worker --role head|member [--plan PATH]``: the one entry point of every engine pod.

Set by the operator in the pod spec:

- ``MIMO_ROLE`` (or ``--role``): ``head`` on the gang's pod 0, ``member`` on the others;
- ``POD_IP`` (or ``--pod-ip``), from the downward API: Ray, the head's endpoints and the engine bind to it;
- ``MIMO_NODE_RANK`` (or ``--rank``), a member's node rank; without it the rank is this pod's position in
  the plan's ``gang.pods`` (matched against ``POD_NAME``, else the host name);
- ``MIMO_LAUNCH_PLAN`` (or ``--plan``): the launch plan, default ``/etc/mimo/launch/plan.json``.

Exit codes: 0 stopped on request (SIGTERM); 1 the gang failed (the log's last error line says why);
2 the command line, the environment or the launch plan is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence

from mimo_worker.launchplan import LaunchPlan, LaunchPlanError, example_plan, load_plan

__all__ = ["ENV_NODE_RANK", "ENV_POD_IP", "ENV_ROLE", "main", "member_rank"]

ENV_ROLE = "MIMO_ROLE"
ENV_POD_IP = "POD_IP"
ENV_NODE_RANK = "MIMO_NODE_RANK"
ENV_POD_NAME = "POD_NAME"

log = logging.getLogger("mimo_worker")


class UsageError(Exception):
    pass


def member_rank(plan: LaunchPlan, explicit: str | None, pod_name: str) -> int:
    """A member's node rank: given explicitly, else its pod's position in ``gang.pods``."""
    if explicit not in (None, ""):
        try:
            rank = int(explicit)
        except ValueError:
            raise UsageError(f"the node rank must be an integer, got {explicit!r}") from None
    elif pod_name in plan.gang.pods:
        rank = plan.gang.pods.index(pod_name)
    else:
        raise UsageError(
            f"cannot tell this member's rank: set {ENV_NODE_RANK}, or run it in a pod named one of {plan.gang.pods}"
        )
    if not 1 <= rank < plan.gang.nodes:
        raise UsageError(f"a member's rank must be within 1..{plan.gang.nodes - 1}, got {rank}")
    return rank


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimo-worker", description="The data plane of one gang (a serving replica).")
    p.add_argument("--role", choices=["head", "member"], default=os.environ.get(ENV_ROLE))
    p.add_argument("--plan", help="the launch plan (default $MIMO_LAUNCH_PLAN, else /etc/mimo/launch/plan.json)")
    p.add_argument("--pod-ip", default=os.environ.get(ENV_POD_IP), help="this pod's IP (default $POD_IP)")
    p.add_argument("--rank", default=os.environ.get(ENV_NODE_RANK), help="a member's node rank ($MIMO_NODE_RANK)")
    p.add_argument("--example-plan", action="store_true", help="print an example launch plan and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.example_plan:
        print(json.dumps(example_plan(), indent=2))
        return 0
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s mimo-worker[{args.role or '?'}] %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.role is None:
            raise UsageError(f"no role: pass --role head|member or set {ENV_ROLE}")
        if args.role not in ("head", "member"):
            raise UsageError(f"unknown role {args.role!r} (from {ENV_ROLE}): head or member")
        if not args.pod_ip:
            raise UsageError(f"no pod IP: set {ENV_POD_IP} from the downward API (status.podIP) or pass --pod-ip")
        plan = load_plan(args.plan)
        if args.role == "head":
            from mimo_worker.head import Head  # the head pulls in aiohttp and Ray

            log.info("head of gang %s (replica %d, revision %s) on %s", plan.gang.name, plan.gang.replica,
                     plan.gang.revision, args.pod_ip)  # fmt: skip
            return asyncio.run(Head(plan, args.pod_ip).run())
        pod_name = os.environ.get(ENV_POD_NAME) or socket.gethostname()
        rank = member_rank(plan, args.rank, pod_name)
        from mimo_worker.member import run_member

        return run_member(plan, args.pod_ip, rank)
    except (UsageError, LaunchPlanError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
