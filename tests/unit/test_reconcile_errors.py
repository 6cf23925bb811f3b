"""A reconcile that fails on what no rule foresaw (a bug, or input the planner let through) is told in the
deployment's status, is tried again with back-off, and leaves the other deployments served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mimo_operator import labels as L
from mimo_operator import reconciler as reconciler_module
from mimo_operator.build import pools_of
from mimo_operator.handlers import Loops
from tests.helpers.operator_world import CRD, NS, World
from tests.helpers.specs import a_deployment


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == kind)


async def _until(check: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time")


def test_an_unforeseen_error_is_told_in_status_and_the_other_deployments_are_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(a_deployment("bad").replicas(1))
    good = a_deployment("good").replicas(1).build()
    good["metadata"]["namespace"] = NS
    asyncio.run(w.kube.create(good))
    broken = {"on": True}

    def pools(ctx: Any) -> Any:
        if ctx.name == "bad" and broken["on"]:
            raise ValueError("1 validation error for Ports\n  ports must be distinct (input_value=...)")
        return pools_of(ctx)

    monkeypatch.setattr(reconciler_module, "pools_of", pools)
    def body(name: str) -> dict[str, Any]:
        return w.kube.objects[(CRD, L.KIND, NS, name)]

    asyncio.run(_scenario(w, body, broken))


async def _scenario(w: World, body: Any, broken: dict[str, bool]) -> None:
    loops = Loops(w.reconciler, None, 30.0, batch=0.0)
    try:
        for name in ("bad", "good"):
            loops.seen(body(name), deleted=False)
        await _until(lambda: "status" in body("bad") and "status" in body("good"))
        degraded = _condition(body("bad"), "Degraded")
        assert degraded["status"] == "True"
        assert degraded["reason"] == "ReconcileError"
        assert "ValueError: 1 validation error for Ports" in degraded["message"]
        assert "input_value" not in degraded["message"], "one line of the error, not what it quotes"
        assert "tries again in 10 s" in degraded["message"]
        assert body("good")["status"]["observedGeneration"] == 1  # served meanwhile
        assert _condition(body("good"), "Degraded")["status"] == "False"

        broken["on"] = False
        loops.poke(NS, "bad")
        await _until(lambda: _condition(body("bad"), "Degraded")["reason"] != "ReconcileError")
        assert _condition(body("bad"), "Degraded")["status"] == "False"
    finally:
        await loops.stop()
