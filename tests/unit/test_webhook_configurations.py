"""Kueue's and LeaderWorkerSet's webhook configurations as the local cluster registers them: served on loopback
with the cluster's CA; Kueue's only for pods and its own objects (a webhook of an integration that is not
enabled would refuse every object of its kind), pods in the system namespaces left alone; LeaderWorkerSet's pod
webhooks only for a LeaderWorkerSet's pods, as its install patches them."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from mimo_operator.localcluster.controlplane import KUEUE_NAMESPACE, kueue_webhooks, lws_webhooks


def _hook(name: str, group: str, resource: str, path: str) -> dict[str, object]:
    return {"name": name, "admissionReviewVersions": ["v1"], "failurePolicy": "Fail", "sideEffects": "None",
            "clientConfig": {"service": {"name": "webhook-service", "namespace": "system", "path": path}},
            "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": [resource]}]}


def _manifests(tmp_path: Path, *, mutating: list[dict[str, object]], validating: list[dict[str, object]]) -> Path:
    """A controller's webhooks.yaml as its module ships it: one mutating and one validating configuration."""
    path = tmp_path / "webhooks.yaml"
    path.write_text(yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "mutating-webhook-configuration"}, "webhooks": mutating},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "validating-webhook-configuration"}, "webhooks": validating},
    ]))
    return path


def test_only_pod_and_kueue_webhooks_are_registered_at_the_loopback_url(tmp_path: Path) -> None:
    manifests = _manifests(
        tmp_path,
        mutating=[_hook("mpod.kb.io", "", "pods", "/mutate--v1-pod"),
                  _hook("mdeployment.kb.io", "apps", "deployments", "/mutate-apps-v1-deployment"),
                  _hook("mworkload.kb.io", "kueue.x-k8s.io", "workloads", "/mutate-workload")],
        validating=[_hook("vjob.kb.io", "batch", "jobs", "/validate-batch-v1-job")],
    )
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


def test_leaderworkerset_pod_webhooks_see_only_its_pods(tmp_path: Path) -> None:
    manifests = _manifests(
        tmp_path,
        mutating=[_hook("mleaderworkerset.kb.io", "leaderworkerset.x-k8s.io", "leaderworkersets",
                        "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset"),
                  _hook("mpod.kb.io", "", "pods", "/mutate--v1-pod")],
        validating=[_hook("vpod.kb.io", "", "pods", "/validate--v1-pod")],
    )
    configs = lws_webhooks(manifests, "https://127.0.0.1:9444", b"CA PEM")
    assert [c["metadata"]["name"] for c in configs] == ["lws-mutating-webhook-configuration",
                                                         "lws-validating-webhook-configuration"]
    (lws, mutate_pod), (validate_pod,) = configs[0]["webhooks"], configs[1]["webhooks"]
    assert lws["clientConfig"] == {"url": "https://127.0.0.1:9444/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
                                   "caBundle": base64.b64encode(b"CA PEM").decode()}
    assert "objectSelector" not in lws
    for pod in (mutate_pod, validate_pod):
        assert pod["objectSelector"] == {"matchExpressions": [
            {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}, "every other pod is left alone"
        assert pod["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert validate_pod["clientConfig"]["url"] == "https://127.0.0.1:9444/validate--v1-pod"
