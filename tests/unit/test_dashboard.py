"""The chart's Grafana dashboard queries only metrics that something in the product exports.

The exported names are read from the real registries: the operator's (every module that defines a
metric imported), a simulated SGLang engine's, and a gang head worker's. The router is SGLang's own
binary, which no test runs; its names are the documented ones (smg_* since the router became SMG).
Kueue's are the ones its source defines, checked against the source of the Kueue the local cluster builds
where the Go module cache holds it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import mimo_operator.autoscaler
import mimo_operator.kube
import mimo_operator.metrics
import mimo_operator.weights  # noqa: F401  (each import registers its metrics)
from mimo_worker.launchplan import example_plan, parse_plan
from mimo_worker.simengine.engine import EngineLimits
from mimo_worker.simengine.metrics import EngineMetrics
from mimo_worker.status import GangStatus
from tests.helpers.packaging import CHART, VERSIONS_ENV, render, tool

DASHBOARD = CHART / "dashboards" / "mimo-operator.json"

# The router's histograms and counters as documented for SGLang's model gateway.
ROUTER_METRICS = {
    "smg_http_requests_total",
    *(f"smg_http_request_duration_seconds{s}" for s in ("_bucket", "_sum", "_count")),
    *(f"smg_router_ttft_seconds{s}" for s in ("_bucket", "_sum", "_count")),
}

# Kueue's, as sigs.k8s.io/kueue pkg/metrics/metrics.go defines them (Subsystem "kueue"; KUEUE_VERSION).
KUEUE_GAUGES = {"kueue_pending_workloads"}
KUEUE_HISTOGRAMS = {"kueue_admission_wait_time_seconds"}
KUEUE_METRICS = KUEUE_GAUGES | {f"{h}{s}" for h in KUEUE_HISTOGRAMS for s in ("_bucket", "_sum", "_count")}

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                 "bool", "offset", "inf", "nan"}


def _sample_names(registry: CollectorRegistry) -> set[str]:
    text = prometheus_client.generate_latest(registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples} | {
        family.name for family in text_string_to_metric_families(text)}


def _touch(registry: CollectorRegistry, prefix: str) -> None:
    """Labelled metrics export no sample until a child exists; make one of each."""
    for metric in list(registry._names_to_collectors.values()):
        names = getattr(metric, "_labelnames", ())
        if names and getattr(metric, "_name", "").startswith(prefix):
            metric.labels(*["x"] * len(names))


def exported() -> set[str]:
    _touch(prometheus_client.REGISTRY, "mimo_")
    names = _sample_names(prometheus_client.REGISTRY)
    limits = EngineLimits(max_total_num_tokens=100_000, swa_max_tokens=10_000, swa_window=128,
                          max_running_requests=8, context_length=32_768, chunked_prefill_size=8192, page_size=1)
    engine = EngineMetrics("MiMo-V2.5-Pro", limits)
    _touch(engine.registry, "sglang:")
    names |= _sample_names(engine.registry)
    status = GangStatus(parse_plan(example_plan()))
    _touch(status.registry, "mimo_worker_")
    names |= _sample_names(status.registry)
    return names | ROUTER_METRICS | KUEUE_METRICS


def _kueue_source() -> str | None:
    """Kueue's metrics.go at the version the local cluster builds, where the Go module cache holds it."""
    version = re.search(r"^KUEUE_VERSION=(\S+)", VERSIONS_ENV.read_text(), re.MULTILINE)
    cache = os.environ.get("GOMODCACHE") or str(Path.home() / "go" / "pkg" / "mod")
    module = Path(cache) / "sigs.k8s.io" / f"kueue@{version.group(1) if version else ''}"
    path = module / "pkg" / "metrics" / "metrics.go"
    return path.read_text() if path.is_file() else None


def test_the_kueue_metrics_the_dashboard_reads_are_the_ones_kueue_defines() -> None:
    source = _kueue_source()
    if source is None:
        pytest.skip("Kueue's source is not in the Go module cache (hack/build-binaries.sh puts it there)")
    defined = {(kind, f"kueue_{name}") for kind, name in re.findall(
        r"prometheus\.New(Gauge|Histogram|Counter)Vec\(\s*prometheus\.\w+Opts\{\s*Subsystem:\s*constants\.KueueName,"
        r"\s*Name:\s*\"(\w+)\"", source)}
    assert len(defined) > 10, "the pattern still finds Kueue's metrics"
    assert {("Gauge", g) for g in KUEUE_GAUGES} <= defined
    assert {("Histogram", h) for h in KUEUE_HISTOGRAMS} <= defined


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
            yield from walk(panel.get("panels", []))
    yield from walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict) and variable["type"] == "query":
            yield f"variable {variable['name']}", query["query"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label names, functions and groupings left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                     # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                    # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = m.group(0)
        following = expr[m.end():].lstrip()[:1]
        if following == "(" or word.lower() in _PROMQL_WORDS:
            continue  # a function or keyword
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a:b_bucket{x=~"$y"}[5m])))') == {"a:b_bucket"}
    assert metric_names('sum by (state) (m{deployment=~"$d", state="Ready"}) / on(ns) n') == {"m", "n"}
    assert metric_names("label_values(mimo_operator_gangs, namespace)") == {"mimo_operator_gangs", "namespace"}


def test_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported()
    checked = 0
    for where, expr in queries(dashboard):
        if where.startswith("variable "):
            # label_values(metric{…}, label): only the first argument is a metric.
            inner = re.sub(r"\{[^}]*\}", "", expr[expr.index("(") + 1:]).split(",")[0].strip()
            names = {inner}
        else:
            names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{where}: {sorted(unknown)} is exported by neither the operator, the engine, " \
                            f"the worker nor the router ({expr})"
        checked += 1
    assert checked >= 30


def test_dashboard_covers_what_an_operator_looks_at() -> None:
    text = DASHBOARD.read_text()
    for metric in ("mimo_operator_gangs", "mimo_autoscaler_decisions_total", "sglang:token_usage",
                   "sglang:num_queue_reqs", "sglang:time_to_first_token_seconds_bucket",
                   "sglang:inter_token_latency_seconds_bucket", "mimo_worker_engine_exits_total",
                   "mimo_operator_gang_failures_total", "smg_http_requests_total"):
        assert metric in text, metric


def test_chart_renders_the_dashboard_only_when_enabled(tmp_path: Path) -> None:
    if not os.access(tool("helm"), os.X_OK):
        message = f"helm is not built at {tool('helm')}: run hack/build-binaries.sh"
        if os.environ.get("MIMO_REQUIRE_CLUSTER"):
            pytest.fail(message)
        pytest.skip(message)
    assert not [m for m in render(tmp_path) if m["kind"] == "ConfigMap"]
    (configmap,) = [m for m in render(tmp_path, {"metrics.dashboard.enabled": True}) if m["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["mimo-operator.json"]) == json.loads(DASHBOARD.read_text())
