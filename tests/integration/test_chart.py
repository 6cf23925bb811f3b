"""The Helm chart: lint, schema validation of what it renders, its RBAC and Deployment, and a real install.

The non-cluster tests need only the built helm and kubeconform; the ``cluster`` tests install the chart
into the local cluster, where the operator's pod runs as a real local process under the chart's RBAC.
"""

from __future__ import annotations

import json
import os
import tarfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.localcluster.podrunner import PROCESS_LABEL
from tests.conftest import REPO, NodePool, wait_for
from tests.helpers.packaging import (
    CHART,
    CRD,
    EXAMPLES,
    helm,
    kubeconform,
    render,
    render_text,
    set_args,
    tool,
    write_schemas,
)
from tests.integration.operator_harness import get, wait_phase

RULES = yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text())
CLUSTER_RULES = yaml.safe_load((CHART / "files" / "cluster-rules.yaml").read_text())
LEASE_RULES = [r for r in RULES if "coordination.k8s.io" in r["apiGroups"]]

# Three ways to install: the defaults; cluster-wide with everything on; namespaced with two replicas.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cluster-wide, two replicas, ServiceMonitor": {
        "replicas": 2, "metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.labels": {"release": "kps"},
        "podLabels": {"team": "serving"}, "extraArgs": ["--restart-budget", "3"], "logLevel": "debug",
        "priorityClassName": "system-cluster-critical", "tolerations": [{"key": "ops", "operator": "Exists"}],
    },
    "namespaced, two namespaces, two replicas, ServiceMonitor": {
        "rbac.mode": "namespaced", "rbac.watchNamespaces": ["serving-a", "serving-b"], "replicas": 2,
        "metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.scrapeTimeout": "10s",
    },
}


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for name in ("helm", "kubeconform"):
        if not os.access(tool(name), os.X_OK):
            message = f"{name} is not built at {tool(name)}: run hack/build-binaries.sh"
            if os.environ.get("MIMO_REQUIRE_CLUSTER"):
                pytest.fail(message)
            pytest.skip(message)
    return tmp_path_factory.mktemp("helm")


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_schemas(tmp_path_factory.mktemp("schemas"))


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def the(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = of_kind(manifests, kind)
    return found


def container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = the(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(operator)


# --- lint and schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_lint_is_clean(helm_home: Path, variant: str) -> None:
    result = helm("lint", "--strict", str(CHART), *set_args(VARIANTS[variant]), home=helm_home)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_object_is_valid_for_kubeconform_against_the_kubernetes_and_crd_schemas(
        helm_home: Path, schemas: Path, variant: str) -> None:
    text = render_text(helm_home, VARIANTS[variant], "--include-crds")
    code, results = kubeconform(text, schemas)
    documents = [d for d in yaml.safe_load_all(text) if d]
    assert code == 0, json.dumps([r for r in results if r["status"] != "statusValid"], indent=2)
    assert len(results) == len(documents)
    assert all(r["status"] == "statusValid" for r in results)
    kinds = {r["kind"] for r in results}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole", "Service"} <= kinds
    if VARIANTS[variant].get("metrics.serviceMonitor.enabled"):
        assert "ServiceMonitor" in kinds


def test_kubeconform_refuses_what_the_schemas_forbid(helm_home: Path, schemas: Path) -> None:
    """The validation is not vacuous: a misspelt field or a bad value in any kind is reported."""
    manifests = render(helm_home, {"metrics.serviceMonitor.enabled": True})
    deployment = the(manifests, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/healthz"}}
    monitor = the(manifests, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "every minute"
    example = yaml.safe_load((EXAMPLES / "mimo-v25-fp8-h100.yaml").read_text())
    example["spec"]["replicas"] = "two"
    code, results = kubeconform(yaml.safe_dump_all([deployment, monitor, example]), schemas)
    assert code != 0
    assert [r["status"] for r in results] == ["statusInvalid"] * 3, results
    messages = " ".join(r["msg"] for r in results)
    assert "readinesProbe" in messages
    assert "every minute" in messages
    assert "replicas" in messages


# --- what the chart renders ----------------------------------------------------------------------------


def test_the_crd_is_the_one_in_crds_not_a_copy(helm_home: Path, tmp_path: Path) -> None:
    link = CHART / "crds" / "mimodeployment.yaml"
    assert link.is_symlink()
    assert link.resolve() == CRD.resolve()
    rendered = [d for d in render(helm_home, {}, "--include-crds") if d["kind"] == "CustomResourceDefinition"]
    assert rendered == [yaml.safe_load(CRD.read_text())]
    # A packaged chart carries the file's contents, not a dangling link.
    helm("package", str(CHART), "--destination", str(tmp_path), home=helm_home)
    (archive,) = tmp_path.glob("mimo-operator-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("mimo-operator/crds/mimodeployment.yaml")
        assert member is not None
        assert member.read() == CRD.read_bytes()


def test_the_images_default_tag_is_the_packages_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_cluster_wide_rbac_is_one_cluster_role_with_exactly_the_rules_of_files(helm_home: Path) -> None:
    manifests = render(helm_home)
    role = the(manifests, "ClusterRole")
    assert role["rules"] == RULES + CLUSTER_RULES
    binding = the(manifests, "ClusterRoleBinding")
    sa = the(manifests, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "mimo-system"}]
    assert not of_kind(manifests, "Role")
    assert not of_kind(manifests, "RoleBinding")
    assert "--all-namespaces" in container(manifests)["args"]


def test_namespaced_rbac_is_a_role_per_watched_namespace_and_only_crd_discovery_cluster_wide(
        helm_home: Path) -> None:
    manifests = render(helm_home, VARIANTS["namespaced, two namespaces, two replicas, ServiceMonitor"])
    assert the(manifests, "ClusterRole")["rules"] == CLUSTER_RULES
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r["rules"] for r in of_kind(manifests, "Role")}
    assert roles == {("serving-a", "mimo-mimo-operator"): RULES, ("serving-b", "mimo-mimo-operator"): RULES,
                     # The Lease lives in the release namespace, which is not watched: only the lease rules there.
                     ("mimo-system", "mimo-mimo-operator-leader-election"): LEASE_RULES}
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in of_kind(manifests, "RoleBinding")}
    assert bindings == set(roles)
    args = container(manifests)["args"]
    assert "--namespace=serving-a" in args
    assert "--namespace=serving-b" in args
    assert "--all-namespaces" not in args


def test_namespaced_mode_without_namespaces_watches_the_release_namespace(helm_home: Path) -> None:
    manifests = render(helm_home, {"rbac.mode": "namespaced"}, namespace="serving")
    assert {r["metadata"]["namespace"] for r in of_kind(manifests, "Role")} == {"serving"}
    assert "--namespace=serving" in container(manifests)["args"]


def test_the_operator_pod_is_hardened_and_probed_on_healthz(helm_home: Path) -> None:
    manifests = render(helm_home)
    pod = the(manifests, "Deployment")["spec"]["template"]["spec"]
    op = container(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert op["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert op[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in op["ports"]} == {"metrics": 9090, "health": 8081}
    assert "--health-address=0.0.0.0:8081" in op["args"]
    assert "--metrics-address=0.0.0.0:9090" in op["args"]
    assert op["command"] == ["mimo-operator"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in op["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert op["resources"]["requests"]
    assert op["resources"]["limits"]["memory"]


def test_one_replica_recreates_on_upgrade_and_two_elect_a_leader_on_a_lease_the_chart_owns(
        helm_home: Path) -> None:
    one = render(helm_home)
    assert the(one, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-election" not in container(one)["args"]
    assert not of_kind(one, "Lease")
    two = render(helm_home, {"replicas": 2})
    assert the(two, "Deployment")["spec"]["replicas"] == 2
    assert the(two, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "--leader-election" in container(two)["args"]
    # The operator's fixed lease name (OperatorConfig.lease_name), in the namespace its pods run in.
    assert the(two, "Lease")["metadata"] == {**the(two, "Lease")["metadata"], "name": "mimo-operator",
                                             "namespace": "mimo-system"}


def test_values_reach_the_pod(helm_home: Path) -> None:
    manifests = render(helm_home, VARIANTS["cluster-wide, two replicas, ServiceMonitor"])
    template = the(manifests, "Deployment")["spec"]["template"]
    op = container(manifests)
    assert template["metadata"]["labels"]["team"] == "serving"
    # podLabels cannot take over the labels the selector and the gangs' NetworkPolicies rely on.
    clash = render(helm_home, {"podLabels": {"app.kubernetes.io/name": "other"}})
    assert the(clash, "Deployment")["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] \
        == "mimo-operator"
    assert op["args"][-2:] == ["--restart-budget", "3"]
    assert "--verbose" in op["args"]
    assert template["spec"]["priorityClassName"] == "system-cluster-critical"
    assert template["spec"]["tolerations"] == [{"key": "ops", "operator": "Exists"}]
    monitor = the(manifests, "ServiceMonitor")
    service = the(manifests, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


@pytest.mark.parametrize(("values", "complaint"), [
    ({"rbac.mode": "everywhere"}, "rbac.mode must be clusterWide or namespaced"),
    ({"rbac.watchNamespaces": ["a"]}, "only used with rbac.mode namespaced"),
    ({"metrics.serviceMonitor.enabled": True, "metrics.service.enabled": False}, "needs metrics.service.enabled"),
    ({"logLevel": "trace"}, "logLevel must be info or debug"),
    ({"replicas": 0}, "replicas must be at least 1"),
])
def test_impossible_values_are_refused_with_the_reason(helm_home: Path, values: dict[str, Any],
                                                       complaint: str) -> None:
    result = helm("template", "mimo", str(CHART), "--kube-version", "1.36.3", *set_args(values), home=helm_home,
                  check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_every_value_is_documented() -> None:
    """Each key in values.yaml has a comment right above it, or opens a mapping whose keys all have one.

    Below ``resources`` the keys are Kubernetes' own (requests, limits), documented there.
    """
    pass_through = {("resources",)}
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while path and path[-1][0] >= indent:
            path.pop()
        key = stripped.split(":", 1)[0]
        parents = tuple(k for _, k in path)
        path.append((indent, key))
        if any(parents[:n] in pass_through for n in range(1, len(parents) + 1)):
            continue
        opens_mapping = stripped.endswith(":")
        if not lines[i - 1].strip().startswith("#") and not opens_mapping:
            undocumented.append(".".join((*parents, key)))
    assert not undocumented, f"values without a comment: {undocumented}"


@pytest.mark.cluster
def test_notes_tell_the_user_what_to_do_next(cluster: LocalCluster, helm_home: Path) -> None:
    # A client-side dry run renders NOTES.txt; it reads the server's version and kinds, and this cluster
    # has no Prometheus Operator, so no ServiceMonitor here.
    result = helm("install", "mimo", str(CHART), "--dry-run=client", "--namespace", "mimo-system",
                  home=helm_home, kubeconfig=cluster.kubeconfig)
    notes = result.stdout.split("NOTES:", 1)[1]
    for expected in ("kubectl get mimo", "kubectl apply", "examples/mimo-v25-fp8-h100.yaml", "mimoctl plan",
                     "mimo-mimo-operator-metrics:9090", "set metrics.serviceMonitor.enabled=true",
                     "registry.example.com/mimo/mimo-worker:0.1.0", "The image is a placeholder",
                     "kubectl delete crd mimodeployments.serving.mimo-operator.io"):
        assert expected in notes, expected
    real = helm("install", "mimo", str(CHART), "--dry-run=client", *set_args(
        {"image.repository": "ghcr.io/acme/mimo-operator", "rbac.mode": "namespaced"}),
        home=helm_home, kubeconfig=cluster.kubeconfig).stdout
    assert "placeholder" not in real
    assert "It watches MiMoDeployments in: default." in real


# --- a real install -------------------------------------------------------------------------------------


def install_values(watch: list[str] | None = None, replicas: int = 1) -> dict[str, Any]:
    """Values that make the operator's pod a real local process bound to its own pod IP."""
    values: dict[str, Any] = {"podLabels": {PROCESS_LABEL: "true"}, "bindAddress": "$(POD_IP)", "replicas": replicas,
                              "extraArgs": ["--resync-seconds", "5"]}
    if watch is not None:
        values |= {"rbac.mode": "namespaced", "rbac.watchNamespaces": watch}
    return values


def operator_pods(cluster: LocalCluster, namespace: str, release: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


def can_i(cluster: LocalCluster, sa: str, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
    return result.stdout.strip() == "yes"


def release_objects(cluster: LocalCluster, namespace: str, release: str) -> list[str]:
    """Every object the release labelled, namespaced (in ``namespace``) and cluster-scoped."""
    selector = f"app.kubernetes.io/instance={release}"
    namespaced = cluster.kubectl("get", "deployment,replicaset,pod,service,serviceaccount,role,rolebinding,lease",
                                 "-n", namespace, "-l", selector, "-o", "name").stdout.split()
    cluster_scoped = cluster.kubectl("get", "clusterrole,clusterrolebinding", "-l", selector,
                                     "-o", "name").stdout.split()
    return namespaced + cluster_scoped


def simulated_example_on(pool: NodePool) -> dict[str, Any]:
    """The simulated Pro rehearsal, pinned to a test's own nodes (kwok makes its gang pods Running + Ready)."""
    manifest: dict[str, Any] = yaml.safe_load((EXAMPLES / "mimo-v25-pro-simulated.yaml").read_text())
    manifest["spec"]["hardware"]["nodeSelector"] = pool.selector
    manifest["spec"]["hardware"]["tolerations"] = [pool.toleration]
    return manifest


@pytest.fixture
def release_namespace(cluster: LocalCluster, helm_home: Path) -> Iterator[str]:
    """A namespace for a test's release; whatever the test leaves installed is uninstalled afterwards,
    so that a failed test cannot leave an operator running into the next ones."""
    name = f"mimo-chart-{uuid.uuid4().hex[:5]}"
    yield name
    for release in helm("list", "-q", "--namespace", name, home=helm_home, kubeconfig=cluster.kubeconfig,
                        check=False).stdout.split():
        helm("uninstall", release, "--namespace", name, "--wait", "--timeout", "60s", home=helm_home,
             kubeconfig=cluster.kubeconfig, check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.cluster
def test_helm_install_runs_the_operator_under_the_chart_rbac_and_uninstall_leaves_no_orphans(
        cluster: LocalCluster, helm_home: Path, release_namespace: str, namespace: str, node_pool: NodePool) -> None:
    release = "mimo"
    helm("install", release, str(CHART), "--namespace", release_namespace, "--create-namespace",
         *set_args(install_values()), "--wait", "--timeout", "180s", home=helm_home, kubeconfig=cluster.kubeconfig)
    (pod,) = operator_pods(cluster, release_namespace, release)
    assert ready(pod)
    assert pod["spec"]["serviceAccountName"] == "mimo-mimo-operator"
    sa = f"system:serviceaccount:{release_namespace}:mimo-mimo-operator"
    assert can_i(cluster, sa, "create", "pods", "-n", namespace)
    assert can_i(cluster, sa, "patch", "mimodeployments.serving.mimo-operator.io", "--subresource=status",
                 "-n", namespace)
    assert not can_i(cluster, sa, "get", "secrets", "-n", namespace), "least privilege: no secrets"
    assert not can_i(cluster, sa, "delete", "mimodeployments.serving.mimo-operator.io", "-n", namespace)
    crd = cluster.kubectl_json("get", "crd", "mimodeployments.serving.mimo-operator.io")
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])

    node_pool.add(2)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(simulated_example_on(node_pool)))
    obj = wait_phase(cluster, namespace, "pro-simulated", "Ready", timeout=120)
    assert obj["status"]["readyReplicas"] == obj["spec"]["replicas"] == 1
    assert obj["status"]["plan"]["nodesPerReplica"] == 2

    helm("uninstall", release, "--namespace", release_namespace, "--wait", "--timeout", "120s", home=helm_home,
         kubeconfig=cluster.kubeconfig)
    wait_for(lambda: not release_objects(cluster, release_namespace, release), 60,
             what="every object of the release to be gone")
    # Documented: Helm never deletes what crds/ installed, and deployments keep serving, unmanaged.
    assert cluster.kubectl("get", "crd", "mimodeployments.serving.mimo-operator.io", check=False).returncode == 0
    assert get(cluster, "mimodeployment", namespace, "pro-simulated") is not None


@pytest.mark.cluster
def test_namespaced_install_with_two_replicas_elects_one_leader_and_serves_only_its_namespaces(
        cluster: LocalCluster, helm_home: Path, release_namespace: str, namespace: str, node_pool: NodePool) -> None:
    release = "mimo-ha"
    helm("install", release, str(CHART), "--namespace", release_namespace, "--create-namespace",
         *set_args(install_values(watch=[namespace], replicas=2)), "--wait", "--timeout", "180s",
         home=helm_home, kubeconfig=cluster.kubeconfig)
    pods = operator_pods(cluster, release_namespace, release)
    assert len(pods) == 2
    assert all(ready(p) for p in pods)

    def holder() -> str | None:
        lease = get(cluster, "lease", release_namespace, "mimo-operator")
        return ((lease or {}).get("spec") or {}).get("holderIdentity")

    leader = wait_for(holder, 60, what="a replica to take the lease")
    assert leader in {p["metadata"]["name"] for p in pods}
    sa = f"system:serviceaccount:{release_namespace}:mimo-ha-mimo-operator"
    assert can_i(cluster, sa, "create", "pods", "-n", namespace)
    assert not can_i(cluster, sa, "create", "pods", "-n", release_namespace), "the release namespace is not watched"
    assert not can_i(cluster, sa, "list", "pods", "--all-namespaces")

    node_pool.add(2)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(simulated_example_on(node_pool)))
    wait_phase(cluster, namespace, "pro-simulated", "Ready", timeout=120)

    helm("uninstall", release, "--namespace", release_namespace, "--wait", "--timeout", "120s", home=helm_home,
         kubeconfig=cluster.kubeconfig)
    wait_for(lambda: not release_objects(cluster, release_namespace, release), 60,
             what="every object of the release, the Lease included, to be gone")
