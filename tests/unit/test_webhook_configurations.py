"""Kueue's webhook configurations as the local cluster registers them: served on loopback with the cluster's
CA, only for pods and Kueue's own objects (a webhook of an integration that is not enabled would refuse every
object of its kind), and pods in the system namespaces left alone."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from mimo_operator.localcluster.controlplane import KUEUE_NAMESPACE, kueue_webhooks


def _hook(name: str, group: str, resource: str, path: str) -> dict[str, object]:
    return {"name": name, "admissionReviewVersions": ["v1"], "failurePolicy": "Fail", "sideEffects": "None",
            "clientConfig": {"service": {"name": "webhook-service", "namespace": "system", "path": path}},
            "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": [resource]}]}


def test_only_pod_and_kueue_webhooks_are_registered_at_the_loopback_url(tmp_path: Path) -> None:
    manifests = tmp_path / "webhooks.yaml"
    manifests.write_text(yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "mutating-webhook-configuration"},
         "webhooks": [_hook("mpod.kb.io", "", "pods", "/mutate--v1-pod"),
                      _hook("mdeployment.kb.io", "apps", "deployments", "/mutate-apps-v1-deployment"),
                      _hook("mworkload.kb.io", "kueue.x-k8s.io", "workloads", "/mutate-workload")]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "validating-webhook-configuration"},
         "webhooks": [_hook("vjob.kb.io", "batch", "jobs", "/validate-batch-v1-job")]},
    ]))
    configs = kueue_webhooks(manifests, "https://127.0.0.1:9443", b"CA PEM")
    assert [c["metadata"]["name"] for c in configs] == ["kueue-mutating-webhook-configuration",
                                                         "kueue-validating-webhook-configuration"]
    mutating, validating = configs
    assert [h["name"] for h in mutating["webhooks"]] == ["mpod.kb.io", "mworkload.kb.io"]
    assert validating["webhooks"] == []
    pod, workload = mutating["webhooks"]
    assert pod["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate--v1-pod",
                                   "caBundle": base64.b64encode(b"CA PEM").decode()}
    assert pod["namespaceSelector"]["matchExpressions"][0]["values"] == ["kube-system", KUEUE_NAMESPACE]
    assert "namespaceSelector" not in workload
    assert workload["clientConfig"]["url"] == "https://127.0.0.1:9443/mutate-workload"
