"""The real Kubernetes control plane on loopback: etcd → kube-apiserver → kube-controller-manager →
kube-scheduler → kwok, each waited on with a bounded timeout.

The recipe: shared/reference/test-cluster.md §9. Notes on the choices:
- no ``--advertise-address``: the apiserver refuses loopback; ``--endpoint-reconciler-type=none`` keeps it
  from fighting over the ``kubernetes`` Endpoints of an address it cannot advertise;
- pod IPs come from kwok's ``--cidr`` inside 127.0.0.0/8, so a local process can listen on its pod's IP;
- the node lifecycle controller must run, or new nodes keep their ``not-ready`` taint forever.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mimo_operator import labels as L
from mimo_operator.localcluster import binaries
from mimo_operator.localcluster.nodes import GPU_RESOURCE, IB_BLOCK_LABEL
from mimo_operator.localcluster.pki import Pki, issue_pki, issue_webhook_certs, write_kubeconfig
from mimo_operator.localcluster.processes import ComponentFailed, Process, free_port, http_ok, log_tail

__all__ = ["COSCHEDULING_SCHEDULER_NAME", "KUEUE_CLUSTER_QUEUE", "KUEUE_NAMESPACE", "KUEUE_TOPOLOGY", "ClusterConfig",
           "ControlPlane", "kueue_crds", "kueue_webhooks", "node_lease_seconds"]

_STAGES = Path(__file__).parent / "stages"
# kwok's own stages for nodes, chaos and deletion; pod start/complete/delete are ours (stages/).
_KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "node/chaos/node-not-ready.yaml",
    "pod/chaos/pod-container-running-failed.yaml",
)


@dataclass(frozen=True)
class ClusterConfig:
    state_dir: Path
    nodes: int = 4
    gpu_type: str = "H200-141GB"
    blocks: int = 1
    pod_cidr: str = "127.64.0.0/16"
    service_cidr: str = "10.96.0.0/16"
    # Each component's start is bounded by this; 2 loaded cores stretch the apiserver to ~30 s.
    component_timeout: float = 90.0
    # Ports to use instead of free ones, by component ("apiserver", "etcd", …).
    fixed_ports: tuple[tuple[str, int], ...] = ()
    # Gang schedulers to run (binaries.GANG_SCHEDULERS): "scheduler-plugins" (coscheduling next to
    # kube-scheduler, serving pods whose schedulerName is scheduler-plugins-scheduler, as the operator renders
    # them), "kubernetes" (kube-scheduler's own gang scheduling: its feature gates and API turned on) and
    # "kueue" (Kueue's manager with its pod integration, and a ClusterQueue of every GPU).
    gang_schedulers: tuple[str, ...] = ()
    # Other projects' workload controllers to run (binaries.WORKLOAD_CONTROLLERS): "lws" (LeaderWorkerSet).
    controllers: tuple[str, ...] = ()


# The scheduler name the operator's builders give gang pods under scheduling.gangScheduler: scheduler-plugins.
COSCHEDULING_SCHEDULER_NAME = "scheduler-plugins-scheduler"

# Kueue's namespace, and the ClusterQueue the local cluster gives every fake GPU (a namespace's LocalQueue
# points at it; scheduling.queueName names the LocalQueue).
KUEUE_NAMESPACE = "kueue-system"
# LeaderWorkerSet's namespace (its manager's default when it does not run in a pod).
LWS_NAMESPACE = "lws-system"
KUEUE_CLUSTER_QUEUE = "gpus"
# The Topology behind that queue's flavor: InfiniBand blocks, then nodes.
KUEUE_TOPOLOGY = "ib-blocks"

# Kubernetes' own gang scheduling (KEP-4671): the PodGroup API and the scheduler's GangScheduling plugin,
# both alpha, behind these gates, with a PodGroup's topology constraint (KEP-5732) behind the third; the
# API's version by Kubernetes minor is labels.NATIVE_PODGROUP_API_BY_MINOR.
_WORKLOAD_GATES = "GenericWorkload=true,GangScheduling=true,TopologyAwareWorkloadScheduling=true"


def workload_api(apiserver: str) -> str:
    """The scheduling.k8s.io version with PodGroups that this kube-apiserver binary serves when asked to."""
    out = subprocess.run([apiserver, "--version"], capture_output=True, text=True, timeout=30).stdout
    parts = out.split()[-1].lstrip("v").split(".") if out.strip() else []
    minor = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    known = L.NATIVE_PODGROUP_API_BY_MINOR
    if minor not in known:
        raise ComponentFailed(f"kube-apiserver {out.strip() or '(no version)'} has no PodGroup API this cluster "
                              f"knows (Kubernetes 1.{min(known)}–1.{max(known)})")
    return known[minor]


def kueue_webhooks(manifests: Path, url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations (as its module ships them, for a Service in its namespace) served at
    ``url`` instead: only the webhooks of pods and of Kueue's own objects (the others belong to integrations
    not enabled here, and a webhook nobody serves would refuse every Deployment), pods outside the system
    namespaces, as Kueue's own install does."""
    configs = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        hooks = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook["rules"] for g in rule["apiGroups"]}
            if not groups <= {"", "kueue.x-k8s.io"}:
                continue
            _served_at(hook, url, ca_bundle)
            if groups == {""}:
                hook["namespaceSelector"] = {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                    "values": ["kube-system", KUEUE_NAMESPACE]}]}
            hooks.append(hook)
        configs.append({**doc, "metadata": {"name": f"kueue-{doc['metadata']['name']}"}, "webhooks": hooks})
    return configs


def lws_webhooks(manifests: Path, url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """LeaderWorkerSet's webhook configurations (as its module ships them, for a Service in its namespace) served
    at ``url`` instead, its pod webhooks only for the pods of a LeaderWorkerSet on creation and update, as its
    install's patches make them."""
    configs = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        for hook in doc["webhooks"]:
            _served_at(hook, url, ca_bundle)
            if {g for rule in hook["rules"] for g in rule["apiGroups"]} == {""}:
                hook["objectSelector"] = {"matchExpressions": [
                    {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}
                for rule in hook["rules"]:
                    rule["operations"] = ["CREATE", "UPDATE"]
        configs.append({**doc, "metadata": {"name": f"lws-{doc['metadata']['name']}"}})
    return configs


def _served_at(hook: dict[str, Any], url: str, ca_bundle: bytes) -> None:
    """A webhook's Service reference replaced by ``url`` and the path the Service was called at."""
    path = hook["clientConfig"]["service"]["path"]
    hook["clientConfig"] = {"url": url + path, "caBundle": base64.b64encode(ca_bundle).decode()}


def kueue_crds(crd_dir: Path, url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's CRDs as its kustomization lists them, those it patches for conversion converting through its
    webhook at ``url``."""
    kustomization = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())
    converting = {yaml.safe_load((crd_dir / patch["path"]).read_text())["metadata"]["name"]
                  for patch in kustomization.get("patches") or []}
    crds = [yaml.safe_load((crd_dir / resource).read_text()) for resource in kustomization["resources"]]
    for crd in crds:
        if crd["metadata"]["name"] in converting:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1"],
                "clientConfig": {"url": f"{url}/convert", "caBundle": base64.b64encode(ca_bundle).decode()}}}
    return crds


def node_lease_seconds(nodes: int) -> int:
    """How long a node's lease lasts; kwok renews it at a quarter of that, the controller-manager's grace is
    half. 40 s (a node is seen lost within 20 s, which the chaos tests rely on) up to 250 nodes; beyond, it
    grows with the count so that renewals stay near 25 a second instead of taking a core at 2,000 nodes."""
    return 40 * max(1, -(-nodes // 250))


class ControlPlane:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.dir = config.state_dir
        self.logs = self.dir / "logs"
        self.processes: list[Process] = []
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.pki: Pki | None = None
        self.kubeconfig = self.dir / "kubeconfig"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def _tls(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _start(self, name: str, argv: list[str], probe_url: str | None, ctx: ssl.SSLContext | None = None,
               expect: str | None = None, env: dict[str, str] | None = None) -> Process:
        proc = Process(name, argv, self.logs / f"{name}.log", env=env)
        proc.start()
        self.processes.append(proc)
        if probe_url is not None:
            self.timings[name] = proc.wait_healthy(
                lambda: http_ok(probe_url, context=ctx, expect=expect), timeout=self.config.component_timeout
            )
        return proc

    def start(self) -> None:
        """Start every component in order; raises ComponentFailed naming the first one that fails."""
        self.dir.mkdir(parents=True, exist_ok=True)
        bins = {name: str(binaries.binary(name)) for name in binaries.REQUIRED}
        stages = binaries.kwok_stages_dir()
        self.pki = issue_pki(self.dir / "pki")
        for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "gang-scheduler"):
            self.ports[name] = free_port()
        self.ports.update(dict(self.config.fixed_ports))
        write_kubeconfig(self.kubeconfig, self.pki, self.api_url)
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        etcd_url = f"http://127.0.0.1:{self.ports['etcd']}"
        self._start("etcd", [
            bins["etcd"], "--name=default", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
            f"--initial-cluster=default=http://127.0.0.1:{self.ports['etcd-peer']}",
            "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=2147483648",
        ], f"{etcd_url}/health", expect='"health":"true"')

        pki = self.pki
        native = "kubernetes" in self.config.gang_schedulers
        gates = [f"--feature-gates={_WORKLOAD_GATES}"] if native else []
        runtime = [f"--runtime-config={workload_api(bins['kube-apiserver'])}=true"] if native else []
        self._start("kube-apiserver", [
            bins["kube-apiserver"], f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={pki.apiserver_cert}", f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-issuer={self.api_url}",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={self.config.service_cidr}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--default-not-ready-toleration-seconds=30", "--default-unreachable-toleration-seconds=30",
            "--profiling=false", "--v=1", *gates, *runtime,
        ], f"{self.api_url}/readyz", ctx=self._tls())

        self._start("kube-controller-manager", [
            bins["kube-controller-manager"], f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['controller-manager']}",
            # Not the endpoint controllers: the pods' IPs are loopback addresses, which the API refuses in
            # Endpoints and EndpointSlices, so every headless Service's controller sync failed, was retried and
            # posted a Warning event each time, a load no real cluster has. Nothing here reads endpoints:
            # pods find each other through the hosts file (``podrunner``), the router through its pod watch.
            "--leader-elect=false",
            "--controllers=*,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller",
            f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
            f"--service-cluster-ip-range={self.config.service_cidr}",
            f"--cluster-signing-cert-file={pki.ca_cert}", f"--cluster-signing-key-file={pki.ca_key}",
            # Client-go's default of 20 requests/s would take the node lifecycle controller 100 s to
            # untaint 2,000 new nodes, and StatefulSets as long to create their pods.
            "--kube-api-qps=400", "--kube-api-burst=800",
            "--node-monitor-period=2s", f"--node-monitor-grace-period={node_lease_seconds(self.config.nodes) // 2}s",
            "--concurrent-gc-syncs=10", "--profiling=false", "--v=1", *gates,
        ], f"https://127.0.0.1:{self.ports['controller-manager']}/healthz", ctx=insecure)

        scheduler_config = self.dir / "scheduler.yaml"
        scheduler_config.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
        }))
        self._start("kube-scheduler", [
            bins["kube-scheduler"], f"--config={scheduler_config}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['scheduler']}", "--v=1", *gates,
        ], f"https://127.0.0.1:{self.ports['scheduler']}/healthz", ctx=insecure)

        if "scheduler-plugins" in self.config.gang_schedulers:
            self._start_coscheduling(insecure)
        if "kueue" in self.config.gang_schedulers:
            self._start_kueue()
        if "lws" in self.config.controllers:
            self._start_lws()

        kwok_home = self.dir / "kwok-home"
        kwok_home.mkdir(exist_ok=True)
        stage_args = [f"--config={stages / s}" for s in _KWOK_STAGES]
        stage_args += [f"--config={p}" for p in sorted(_STAGES.glob("*.yaml"))]
        kwok_config = self.dir / "kwok.yaml"
        kwok_config.write_text(yaml.safe_dump({
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
            # kwok's default of 4 of each keeps 2,000 nodes waiting on their first status for a minute.
            "options": {"nodePlayStageParallelism": 16, "podPlayStageParallelism": 16, "nodeLeaseParallelism": 16},
        }))
        stage_args.append(f"--config={kwok_config}")
        # kwok has no health port without its kubelet server (which would listen beyond loopback by
        # default); its readiness is the nodes turning Ready, which the caller waits for.
        self._start("kwok", [
            bins["kwok"], f"--kubeconfig={self.kubeconfig}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={self.config.pod_cidr}", "--node-ip=127.0.0.1",
            f"--node-lease-duration-seconds={node_lease_seconds(self.config.nodes)}", *stage_args,
        ], None, env={**os.environ, "HOME": str(kwok_home), "KWOK_WORKDIR": str(kwok_home)})

    def _kubectl(self, what: str, *args: str, stdin: str | None = None) -> str:
        """kubectl against this cluster as its admin; ComponentFailed naming ``what`` when it fails."""
        done = subprocess.run([str(binaries.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=90, input=stdin)
        if done.returncode != 0:
            raise ComponentFailed(f"{what}: {done.stderr.strip()[-2000:]}")
        return done.stdout.strip()

    def _install_crds(self, what: str, crds: Path | list[dict[str, Any]], names: tuple[str, ...]) -> None:
        """Apply ``crds`` (a file, or the objects) and wait until ``names`` are Established: a controller's
        informer waits for the API it watches. Server-side, as some CRDs outgrow the last-applied annotation."""
        if isinstance(crds, Path):
            self._kubectl(f"installing {what}", "apply", "--server-side", "-f", str(crds))
        else:
            self._apply(f"installing {what}", crds)
        # Polled, not `kubectl wait`: that fails when it reads the CRD before any condition is written.
        deadline = time.monotonic() + 60
        for name in names:
            while not any(c.get("type") == "Established" and c.get("status") == "True" for c in json.loads(
                    self._kubectl(f"reading {what}", "get", f"crd/{name}", "-o", "json")
            ).get("status", {}).get("conditions") or []):
                if time.monotonic() > deadline:
                    raise ComponentFailed(f"{what}: {name} not Established after 60 s")
                time.sleep(0.2)

    def _start_coscheduling(self, insecure: ssl.SSLContext) -> None:
        """scheduler-plugins' scheduler as a second scheduler, with only its coscheduling profile."""
        self._install_crds("scheduler-plugins' PodGroup CRD", binaries.podgroup_crd(),
                           ("podgroups.scheduling.x-k8s.io",))
        config = self.dir / "gang-scheduler.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": 200, "burst": 400},
            "leaderElection": {"leaderElect": False},
            "profiles": [{
                "schedulerName": COSCHEDULING_SCHEDULER_NAME,
                "plugins": {"multiPoint": {"enabled": [{"name": "Coscheduling"}]},
                            "queueSort": {"enabled": [{"name": "Coscheduling"}], "disabled": [{"name": "*"}]}},
                "pluginConfig": [{"name": "Coscheduling", "args": {"permitWaitingTimeSeconds": 10}}],
            }],
        }))
        port = self.ports["gang-scheduler"]
        self._start("scheduler-plugins", [
            str(binaries.binary("scheduler-plugins")), f"--config={config}",
            f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={port}", "--v=1",
        ], f"https://127.0.0.1:{port}/healthz", ctx=insecure)

    def _start_kueue(self) -> None:
        """Kueue's manager with only its pod integration: a pod labelled with a queue is gated at creation,
        a pod group (a gang) becomes one Workload once all its pods exist, and its pods are ungated together
        when the ClusterQueue's quota has room for all of them. The ClusterQueue ``KUEUE_CLUSTER_QUEUE`` holds
        every fake GPU, in a topology-aware flavor (blocks, then nodes: ``KUEUE_TOPOLOGY``).

        Installed as Kueue installs itself, with its webhooks (admission and CRD conversion) at a loopback URL
        instead of a Service: its certificates are ours, seeded into the Secret its cert rotator keeps, which
        then finds them valid and only injects their CA into the webhooks."""
        ports = {name: free_port() for name in ("webhook", "health", "metrics")}
        url = f"https://127.0.0.1:{ports['webhook']}"
        service = "kueue-webhook-service"
        certs_dir = self.dir / "kueue-certs"
        certs = issue_webhook_certs(certs_dir, "kueue-ca", f"{service}.{KUEUE_NAMESPACE}.svc")
        self._install_crds("Kueue's CRDs", kueue_crds(binaries.kueue_file("crd"), url, certs["ca.crt"]), tuple(
            f"{kind}.kueue.x-k8s.io" for kind in ("workloads", "clusterqueues", "localqueues", "resourceflavors",
                                                  "topologies")))
        self._apply("installing Kueue", [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}},
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "kueue-webhook-server-cert", "namespace": KUEUE_NAMESPACE},
             "data": {name: base64.b64encode(data).decode() for name, data in certs.items()}},
            *kueue_webhooks(binaries.kueue_file("webhooks.yaml"), url, certs["ca.crt"]),
        ])
        config = self.dir / "kueue.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": KUEUE_NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{ports['metrics']}"},
            "webhook": {"host": "127.0.0.1", "port": ports["webhook"], "certDir": str(certs_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": True, "webhookServiceName": service,
                                       "webhookSecretName": "kueue-webhook-server-cert"},
            "clientConnection": {"qps": 100, "burst": 200},
            "integrations": {"frameworks": ["pod"]},
        }))
        # The visibility API server would listen on every interface; nothing here reads it.
        self._start("kueue", [str(binaries.binary("kueue")), f"--config={config}",
                              "--feature-gates=VisibilityOnDemand=false"],
                    f"http://127.0.0.1:{ports['health']}/readyz",
                    env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        # The flavor is topology-aware (Kueue's TAS, beta and on by default): Kueue admits a group only where
        # the nodes have room for it, each pod pinned to a node, and inside one InfiniBand block when the
        # pods ask for one (kueue.x-k8s.io/podset-required-topology).
        self._apply("creating Kueue's queue", [
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Topology", "metadata": {"name": KUEUE_TOPOLOGY},
             "spec": {"levels": [{"nodeLabel": IB_BLOCK_LABEL}, {"nodeLabel": "kubernetes.io/hostname"}]}},
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "gpu-nodes"},
             "spec": {"nodeLabels": {"nvidia.com/gpu.present": "true"}, "topologyName": KUEUE_TOPOLOGY}},
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": KUEUE_CLUSTER_QUEUE},
             "spec": {"namespaceSelector": {}, "resourceGroups": [{
                 "coveredResources": [GPU_RESOURCE],
                 "flavors": [{"name": "gpu-nodes",
                              "resources": [{"name": GPU_RESOURCE, "nominalQuota": 8 * self.config.nodes}]}]}]}},
        ])

    def _start_lws(self) -> None:
        """LeaderWorkerSet's manager, installed as its manifests install it, with two changes for a cluster on
        loopback: its webhooks (defaulting and validating LeaderWorkerSets; labelling the pods of one) are
        called at ``https://127.0.0.1:<port>`` instead of through a Service, and it serves our certificate from
        a directory instead of rotating its own (its internal certificate management off)."""
        ports = {name: free_port() for name in ("webhook", "health")}
        certs_dir = self.dir / "lws-certs"
        certs = issue_webhook_certs(certs_dir, "lws-ca", f"lws-webhook-service.{LWS_NAMESPACE}.svc")
        self._install_crds("LeaderWorkerSet's CRD", binaries.lws_file("crd.yaml"),
                           ("leaderworkersets.leaderworkerset.x-k8s.io",))
        self._apply("installing LeaderWorkerSet", [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LWS_NAMESPACE}},
            *lws_webhooks(binaries.lws_file("webhooks.yaml"), f"https://127.0.0.1:{ports['webhook']}",
                          certs["ca.crt"]),
        ])
        config = self.dir / "lws.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.lws.x-k8s.io/v1alpha1", "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['health']}"},
            "metrics": {"bindAddress": "0"},  # its metrics server would listen on every interface
            "webhook": {"host": "127.0.0.1", "port": ports["webhook"], "certDir": str(certs_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            # As the controller-manager's StatefulSet controller here (--kube-api-qps), for a fair comparison.
            "clientConnection": {"qps": 400, "burst": 800},
        }))
        self._start("lws", [str(binaries.binary("lws")), f"--config={config}"],
                    f"http://127.0.0.1:{ports['health']}/readyz",
                    env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})

    def _apply(self, what: str, items: list[dict[str, Any]]) -> None:
        """Server-side apply of ``items`` (passed on stdin: a Secret's data never reaches a command line)."""
        self._kubectl(what, "apply", "--server-side", "-f", "-",
                      stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def stop(self) -> None:
        """Stop every component, last started first."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def check_running(self) -> None:
        """Raise when a component has died since it started."""
        for proc in self.processes:
            if not proc.running():
                code = proc.popen.returncode if proc.popen else None
                raise ComponentFailed(
                    f"{proc.name} stopped (exit code {code}); last lines of {proc.log}:\n{log_tail(proc.log)}"
                )
