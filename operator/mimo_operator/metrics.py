"""The operator's own Prometheus metrics (served on its metrics port)."""

from __future__ import annotations

import prometheus_client

__all__ = ["GANGS", "GANGS_CREATED", "GANG_CREATE_SECONDS", "GANG_FAILURES", "RECONCILES", "RECONCILE_ERRORS",
           "RECONCILE_SECONDS"]

RECONCILE_SECONDS = prometheus_client.Histogram(
    "mimo_operator_reconcile_duration_seconds", "Time one reconcile of a MiMoDeployment takes",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RECONCILES = prometheus_client.Counter(
    "mimo_operator_reconciles_total", "Reconciles of MiMoDeployments", ["namespace", "deployment"])
RECONCILE_ERRORS = prometheus_client.Counter(
    "mimo_operator_reconcile_errors_total", "Reconciles that raised an error (retried)", ["namespace", "deployment"])
GANGS = prometheus_client.Gauge(
    "mimo_operator_gangs", "Gangs by state", ["namespace", "deployment", "state"])
GANGS_CREATED = prometheus_client.Counter(
    "mimo_operator_gangs_created_total", "Gangs created", ["namespace", "deployment"])
GANG_CREATE_SECONDS = prometheus_client.Histogram(
    "mimo_operator_gang_create_duration_seconds",
    "Time from a reconcile handing a gang over for creation to all of its objects created (queueing included)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
GANG_FAILURES = prometheus_client.Counter(
    "mimo_operator_gang_failures_total", "Gangs that failed and were removed for recreation",
    ["namespace", "deployment"])
