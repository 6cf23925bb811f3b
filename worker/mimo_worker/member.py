"""The member's role: join the head's Ray cluster with this node's GPUs and stay until the gang ends.

A member only hosts: the head places the fabric probe and this node's engine rank on it through Ray.
Joining is retried with backoff until the plan's join deadline, because members usually start before
the head's Ray is up and before its DNS name resolves. Once joined, the member exits non-zero when its
Ray node stops (``ray start --block`` exits when the raylet dies) or when the head's GCS stops answering
for ``HEAD_GONE_SECONDS`` — Ray alone would wait 60 s for the GCS to come back, and a gang whose head is
gone never comes back: the operator replaces it whole. SIGTERM stops Ray and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from mimo_worker.launchplan import LaunchPlan
from mimo_worker.raycluster import RayNodeProcess, become_subreaper, end_descendants, resolve, tcp_reachable

__all__ = ["HEAD_GONE_SECONDS", "run_member"]

log = logging.getLogger("mimo_worker.member")

HEAD_GONE_SECONDS = 10.0
WATCH_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 10.0
RAY_JOIN_SECONDS = 120.0  # one `ray start --address` attempt, once the GCS port answers


def run_member(plan: LaunchPlan, pod_ip: str, rank: int) -> int:
    become_subreaper()
    try:
        return _run_member(plan, pod_ip, rank)
    finally:
        end_descendants()


def _run_member(plan: LaunchPlan, pod_ip: str, rank: int) -> int:
    stop = threading.Event()

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)

    gang, head = plan.gang, plan.gang.head_address
    gcs = plan.ports.ray_gcs
    timeout = plan.deadlines.members_join_seconds
    deadline = time.monotonic() + timeout
    backoff = 1.0
    last_logged = 0.0
    log.info("rank %d (%s) of gang %s: joining the head %s:%d", rank, gang.pods[rank], gang.name, head, gcs)
    node: RayNodeProcess | None = None
    head_ip: str | None = None
    while node is None:
        head_ip = resolve(head)
        if head_ip is None:
            why = f"{head} does not resolve yet"
        elif not tcp_reachable(head_ip, gcs):
            why = f"the head's Ray ({head_ip}:{gcs}) does not answer yet"
        else:
            attempt = RayNodeProcess.member(plan, pod_ip, rank, head_ip)
            if attempt.wait_started(min(RAY_JOIN_SECONDS, max(1.0, deadline - time.monotonic())), abort=stop):
                node = attempt
                break
            code = attempt.stop()
            why = f"ray start --address={head_ip}:{gcs} ended before joining (exit code {code})"
        if stop.is_set():
            log.info("SIGTERM before joining; exiting")
            return 0
        now = time.monotonic()
        if now > deadline:
            log.error("rank %d could not join the head %s within %.0f s: %s", rank, head, timeout, why)
            return 1
        if now - last_logged >= 10.0:
            log.info("%s; retrying (%.0f s left)", why, deadline - now)
            last_logged = now
        stop.wait(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    assert head_ip is not None
    log.info("rank %d joined gang %s (head %s at %s)", rank, gang.name, head, head_ip)
    unreachable_since: float | None = None
    while not stop.wait(WATCH_SECONDS):
        code = node.poll()
        if code is not None:
            log.error("this node's Ray stopped (ray start exit code %s): the head is gone or the node failed", code)
            node.stop()
            return code or 1
        # The head's IP as resolved at join time: after a gang is replaced the name may point at a new head.
        if tcp_reachable(head_ip, gcs):
            unreachable_since = None
            continue
        unreachable_since = unreachable_since or time.monotonic()
        if time.monotonic() - unreachable_since >= HEAD_GONE_SECONDS:
            log.error("the head's Ray at %s:%d has not answered for %.0f s: the gang is gone", head_ip, gcs,
                      HEAD_GONE_SECONDS)  # fmt: skip
            node.stop()
            return 1
    log.info("SIGTERM: stopping this node's Ray")
    node.stop()
    return 0
