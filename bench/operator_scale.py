"""Operator scale: several MiMoDeployments of 4-node gangs on thousands of fake 8-GPU nodes, against
upstream StatefulSets on the same cluster in the same run.

    .venv/bin/python bench/operator_scale.py                       (2,000 nodes, 5 deployments × 100 gangs)
    .venv/bin/python bench/operator_scale.py --nodes 64 --deployments 2 --replicas 8     (a quick check)

In order, on one local cluster:
1. apply every deployment at once → every gang pod Running (time, API writes, operator CPU);
2. a no-op resync: the operator re-reconciles everything it has and must write nothing;
3. a rolling update of every deployment (an engine env change: a new revision for every gang); with every
   node taken, the rollout goes maxSurge 0 / maxUnavailable 10 % of each deployment, and a drain lasts 5 s
   (kwok's pods run no engine that could report one finished);
4. the operator's own histogram: reconcile latency p50/p99; its CPU and peak RSS over the whole run;
5. the same pod topology through StatefulSets (one per gang, parallel pod management, one pod per node): first
   of the least pods (one 8-GPU container), then of a pod the operator made (the target's baseline); then,
   when its manager is built (hack/build-binaries.sh --only lws), the same through LeaderWorkerSets (one per
   deployment, a group per gang), its manager running in the local cluster for the whole run;
6. the API clients (bench/kube_clients.py) on the same cluster, with the gang pods of step 5 in place.

Pod phases are followed through one watch (not polling lists of thousands of pods, which would load the
apiserver being measured). Targets (issue #15): apply → all Running ≤ 1.0× StatefulSets (of the same pods);
0 writes on a no-op resync; reconcile p99 < 1 s; operator RSS ≤ 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tests.helpers.podwatch import PodWatch  # noqa: E402
from tests.helpers.specs import a_deployment  # noqa: E402
from tests.integration.operator_harness import RunningOperator, install_rbac, token_kubeconfig  # noqa: E402

from mimo_operator import labels as L  # noqa: E402
from mimo_operator.localcluster.binaries import WORKLOAD_CONTROLLERS, binaries_missing  # noqa: E402
from mimo_operator.localcluster.cluster import LocalCluster  # noqa: E402


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


def histogram_buckets(op: RunningOperator, name: str, **match: str) -> dict[float, float]:
    """Cumulative bucket counts of one of the operator's histograms, summed over labels (those whose labels
    include ``match``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in match.items()):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return buckets


def quantiles(buckets: dict[float, float], since: dict[float, float] | None,
              qs: tuple[float, ...]) -> tuple[list[float], int]:
    """Quantiles of the observations made after ``since``, interpolated inside buckets as Prometheus does."""
    counts = {le: n - (since or {}).get(le, 0.0) for le, n in buckets.items()}
    bounds = sorted(counts)
    total = counts[bounds[-1]] if bounds else 0.0
    out = []
    for q in qs:
        rank, lower, below = q * total, 0.0, 0.0
        value = float("nan")
        for le in bounds:
            if counts[le] >= rank:
                upper = le if le != float("inf") else lower
                in_bucket = counts[le] - below
                value = lower + (upper - lower) * ((rank - below) / in_bucket if in_bucket else 1.0)
                break
            lower, below = le, counts[le]
        out.append(value)
    return out, int(total)


RECONCILE = "mimo_operator_reconcile_duration_seconds"
GANG_CREATE = "mimo_operator_gang_create_duration_seconds"
API = "mimo_operator_api_request_duration_seconds"
API_VERBS = ("create", "patch", "deletecollection")  # gangs' pods and policies; status; gangs deleted


def snapshot(op: RunningOperator) -> dict[str, dict[float, float]]:
    """The operator's latency histograms now, to measure a phase from."""
    return {RECONCILE: histogram_buckets(op, RECONCILE), GANG_CREATE: histogram_buckets(op, GANG_CREATE),
            **{f"{API}:{verb}": histogram_buckets(op, API, verb=verb) for verb in API_VERBS}}


def latency(op: RunningOperator, since: dict[str, dict[float, float]] | None) -> str:
    (p50, p99), n = quantiles(histogram_buckets(op, RECONCILE), (since or {}).get(RECONCILE), (0.5, 0.99))
    text = f"{n} reconciles, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    # Gangs are created outside the reconcile: how long each took, from handed over (queueing included).
    (c50, c99), created = quantiles(histogram_buckets(op, GANG_CREATE), (since or {}).get(GANG_CREATE),
                                    (0.5, 0.99))
    if created:
        text += f"; {created} gangs created, handed over → created p50 {c50:.1f} s, p99 {c99:.1f} s"
    # What the reconciles and creations wait for: the API's answers, the wait for a pooled connection included.
    calls = []
    for verb in API_VERBS:
        (a50, a99), n = quantiles(histogram_buckets(op, API, verb=verb), (since or {}).get(f"{API}:{verb}"),
                                  (0.5, 0.99))
        if n:
            calls.append(f"{verb} ×{n} p50 {a50 * 1000:.0f} ms, p99 {a99 * 1000:.0f} ms")
    if calls:
        text += "; API " + ", ".join(calls)
    return text


def pod_timeline(watch: PodWatch, namespace: str, since: float) -> str:
    """Where the time to all Running went: the last pod created, bound by the scheduler, Running; and how long
    pods waited for the scheduler."""
    t = watch.timeline(namespace, since)

    def at(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return (f"pods created by {at(t['created'], 1.0):.1f} s, bound by {at(t['bound'], 1.0):.1f} s, Running by "
            f"{at(t['running'], 1.0):.1f} s; created → bound p50 {at(t['created→bound'], 0.5):.1f} s, "
            f"p99 {at(t['created→bound'], 0.99):.1f} s")


# What a pod of ours carries that is its own (the node it was bound to, its name in DNS), and its restart
# policy: a gang pod is never restarted in place (the operator replaces the gang), which a StatefulSet cannot
# say (it allows only Always).
_NOT_IN_A_STATEFULSET = ("nodeName", "hostname", "subdomain", "restartPolicy")


def minimal_pod(labels: dict[str, str]) -> dict[str, Any]:
    """The least pod of the same topology: one 8-GPU container, one pod per node."""
    return {"metadata": {"labels": labels}, "spec": {
        "containers": [{"name": "engine", "image": "example.invalid/engine:1",
                        "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}]}},
    }}


def operator_pod(pod: dict[str, Any]) -> Callable[[dict[str, str]], dict[str, Any]]:
    """A template of the pod the operator made (its containers, volumes, labels, affinity, launch-plan
    annotation: what the cluster's components decode, store, schedule and play for each pod), its gang's
    name (in its labels and its affinity's selectors) replaced by the StatefulSet's."""
    gang = pod["metadata"]["labels"][L.LABEL_GANG]
    spec = json.dumps({k: v for k, v in pod["spec"].items() if k not in _NOT_IN_A_STATEFULSET})
    labels = {k: v for k, v in pod["metadata"]["labels"].items() if k != L.LABEL_RANK}
    annotations = dict(pod["metadata"].get("annotations") or {})

    def template(own: dict[str, str]) -> dict[str, Any]:
        name = own["app"]
        return {"metadata": {"labels": {**labels, L.LABEL_GANG: name, **own}, "annotations": annotations},
                "spec": json.loads(spec.replace(json.dumps(gang), json.dumps(name)))}
    return template


def statefulsets(namespace: str, replicas: int, size: int,
                 template: Callable[[dict[str, str]], dict[str, Any]] = minimal_pod) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for r in range(replicas):
        name = f"gang-{r}"
        labels = {"app": name}
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": name, "namespace": namespace},
                        "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 6379}]}})
        objects.append({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "serviceName": name, "replicas": size, "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": template(labels),
            },
        })
    return objects


def leaderworkersets(count: int, replicas: int, size: int,
                     template: Callable[[dict[str, str]], dict[str, Any]]) -> list[dict[str, Any]]:
    """A LeaderWorkerSet per deployment, a group of ``size`` pods (the leader and its workers' StatefulSet) per
    gang. The pods are the operator's without its one-pod-per-node rule: its selector names a gang, and a
    group's pods carry no label of their own before LWS's webhook adds one; the 8-GPU request already keeps one
    pod per node, and the rule dropped makes the pods lighter to schedule, not heavier."""
    out = []
    for d in range(count):
        pod = template({"app": f"lws-{d}"})
        affinity = pod["spec"].get("affinity") or {}
        affinity.get("podAntiAffinity", {}).pop("requiredDuringSchedulingIgnoredDuringExecution", None)
        pod["spec"]["affinity"] = {k: v for k, v in affinity.items() if v}
        out.append({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
                    "metadata": {"name": f"lws-{d}"},
                    "spec": {"replicas": replicas, "startupPolicy": "LeaderCreated",
                             "leaderWorkerTemplate": {"size": size, "workerTemplate": pod}}})
    return out


def deployments(count: int, replicas: int, nodes_per_replica: int,
                env_value: str | None = None) -> list[dict[str, Any]]:
    out = []
    for d in range(count):
        builder = (a_deployment(f"bench-{d}").pro().h100().replicas(replicas)
                   .set("parallelism.nodesPerReplica", nodes_per_replica)
                   # Every node is taken: a rollout replaces gangs in place, a tenth at a time.
                   .set("rollout", {"maxSurge": 0, "maxUnavailable": max(1, replicas // 10)})
                   # kwok's pods run no engine to report a finished drain: a gang goes after the router's
                   # grace period instead of waiting the default 600 s for requests that do not exist.
                   .set("autoscaling.drainTimeoutSeconds", 5))
        if env_value is not None:
            builder = builder.engine(env=[{"name": "BENCH_ROLLOUT", "value": env_value}])
        out.append(builder.build())
    return out


def apply(cluster: LocalCluster, namespace: str, objects: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", timeout=600,
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--deployments", type=int, default=5)
    p.add_argument("--replicas", type=int, default=100, help="gangs per deployment")
    p.add_argument("--nodes-per-replica", type=int, default=4)
    p.add_argument("--resync-seconds", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=900.0, help="limit on each wait")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-clients", action="store_true")
    p.add_argument("--keep-log", help="copy the operator's log here")
    p.add_argument("--max-gang-creates", type=int, help="the operator's bound on gangs created per reconcile")
    args = p.parse_args()
    gangs = args.deployments * args.replicas
    pods = gangs * args.nodes_per_replica
    if pods > args.nodes:
        raise SystemExit(f"{pods} pods need as many nodes; --nodes is {args.nodes}")
    results: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        results.append(line)

    with tempfile.TemporaryDirectory(prefix="mimo-bench-") as tmp:
        t0 = time.monotonic()
        lws = not args.skip_baseline and not binaries_missing(WORKLOAD_CONTROLLERS["lws"])
        cluster = LocalCluster.up(Path(tmp) / "c", nodes=args.nodes, gpu_type="H100-80GB", exit_with_parent=True,
                                  timeout=max(180.0, args.nodes / 5), controllers=("lws",) if lws else ())
        print(f"  (cluster of {args.nodes} nodes ready in {time.monotonic() - t0:.1f} s: "
              f"{cluster.state.get('componentSeconds')})", flush=True)
        op: RunningOperator | None = None
        try:
            watch = PodWatch(cluster)
            token = install_rbac(cluster)
            bound = ["--max-gang-creates", str(args.max_gang_creates)] if args.max_gang_creates else []
            op = RunningOperator(cluster, token_kubeconfig(cluster, token, Path(tmp) / "op.kubeconfig"),
                                 Path(tmp) / "operator.log", ["--resync-seconds", str(args.resync_seconds), *bound])
            op.start()
            assert op.proc is not None
            pid = op.proc.pid
            cluster.kubectl("create", "namespace", "ours")

            # 1. apply → all Running
            cpu0, _ = proc_stats(pid)
            writes0 = op.writes()
            hist0 = snapshot(op)
            start = time.monotonic()
            apply(cluster, "ours", deployments(args.deployments, args.replicas, args.nodes_per_replica))
            applied = time.monotonic() - start
            watch.wait("our gang pods Running", lambda: watch.count("ours", "Running") >= pods, args.timeout)
            ours = time.monotonic() - start
            cpu1, _ = proc_stats(pid)
            time.sleep(5)  # status writes that follow the last pod
            writes = op.writes() - writes0
            say(f"nodes={args.nodes} deployments={args.deployments} gangs={gangs} pods={pods}")
            say(f"mimo-operator: all {pods} gang pods Running {ours:.1f} s after apply "
                f"(kubectl apply of {args.deployments} objects: {applied:.1f} s)")
            say(f"  API writes: {writes:.0f} in all, {writes / gangs:.1f} per gang (incl. shared objects and status)")
            say(f"  operator CPU during the rollout: {cpu1 - cpu0:.1f} s; reconcile latency: {latency(op, hist0)}")
            say(f"  {pod_timeline(watch, 'ours', start)}")
            ours_pod = json.loads(cluster.kubectl(
                "get", "pods", "-n", "ours", "-l", f"{L.LABEL_DEPLOYMENT}=bench-0", "-o", "json").stdout)["items"][0]

            # 2. a no-op resync: everything reconciled again, nothing written
            time.sleep(3)
            writes0, reconciles0 = op.writes(), op.reconciles()
            hist0 = snapshot(op)
            watch.wait("a resync of every deployment",
                       lambda: op.reconciles() - reconciles0 >= 2 * args.deployments, args.resync_seconds * 3 + 60)
            say(f"no-op resync: {op.reconciles() - reconciles0:.0f} reconciles, "
                f"{op.writes() - writes0:.0f} API writes (target 0); reconcile latency: {latency(op, hist0)}")

            # 3. a rolling update of every deployment
            old = watch.revisions("ours")
            cpu0, _ = proc_stats(pid)
            hist0 = snapshot(op)
            start = time.monotonic()
            apply(cluster, "ours", deployments(args.deployments, args.replicas, args.nodes_per_replica, "2"))
            rolled = watch.wait(
                "the rolling update",
                lambda: watch.count("ours", "Running", revision_not=old, alive_only=True) >= pods
                and watch.count("ours") == pods, args.timeout * 2)
            cpu1, _ = proc_stats(pid)
            say(f"rolling update of all {args.deployments} deployments: every gang replaced and Running in "
                f"{rolled:.1f} s (operator CPU {cpu1 - cpu0:.1f} s); reconcile latency: {latency(op, hist0)}")

            # 4. the operator's own figures
            cpu, peak = proc_stats(pid)
            say(f"reconcile latency over the whole run: {latency(op, None)} (target p99 < 1 s)")
            say(f"operator: {cpu:.1f} s CPU over the run, peak RSS {peak / 2**20:.0f} MB (target ≤ 300)")
            if args.keep_log:
                Path(args.keep_log).write_bytes(op.log.read_bytes())
            cluster.kubectl("delete", "mimodeployments", "--all", "-n", "ours", "--wait=true", "--timeout=600s",
                            timeout=700)
            op.stop()
            watch.wait("our pods gone", lambda: watch.count("ours", gangs_only=False) == 0, args.timeout)

            # 5. StatefulSets: the least pods of the topology, then the operator's own pods; LeaderWorkerSets
            if not args.skip_baseline:
                account = ours_pod["spec"].get("serviceAccountName", "default")

                def measure(what: str, namespace: str, objects: list[dict[str, Any]]) -> float:
                    """Apply ``objects`` → all ``pods`` Running in ``namespace``, said with ours / that."""
                    cluster.kubectl("create", "namespace", namespace)
                    if account != "default":
                        cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
                    start = time.monotonic()
                    apply(cluster, namespace, objects)
                    applied = time.monotonic() - start
                    watch.wait(f"{what}: pods Running", lambda: watch.count(namespace, "Running") >= pods,
                               args.timeout)
                    took = time.monotonic() - start
                    # kubectl applies a List one object at a time: with StatefulSets, most of this is the
                    # client, before the StatefulSet controller has all of its StatefulSets.
                    say(f"{what}: all {pods} pods Running {took:.1f} s after apply "
                        f"(kubectl apply of {len(objects)} objects: {applied:.1f} s)")
                    say(f"  {pod_timeline(watch, namespace, start)}")
                    return took

                def remove(namespace: str) -> None:
                    cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=600s", timeout=700)
                    watch.wait(f"the pods of {namespace} gone", lambda: watch.count(namespace) == 0, args.timeout)

                least = measure("StatefulSets of the least pods", "baseline-least",
                                statefulsets("baseline-least", gangs, args.nodes_per_replica))
                say(f"  ratio ours / StatefulSets of the least pods: {ours / least:.2f}")
                remove("baseline-least")
                same = measure("StatefulSets of the operator's pods", "baseline",
                               statefulsets("baseline", gangs, args.nodes_per_replica, operator_pod(ours_pod)))
                say(f"  ratio ours / StatefulSets of the operator's pods: {ours / same:.2f} (target ≤ 1.0)")
                if lws:
                    remove("baseline")
                    # One LeaderWorkerSet per deployment, a group per gang, as the operator's deployments.
                    took = measure("LeaderWorkerSets of the operator's pods", "lws", leaderworkersets(
                        args.deployments, args.replicas, args.nodes_per_replica, operator_pod(ours_pod)))
                    say(f"  ratio ours / LeaderWorkerSets: {ours / took:.2f}")
                else:
                    say("LeaderWorkerSet: not measured (hack/build-binaries.sh --only lws builds it)")

            # 6. the API clients, on the same cluster
            if not args.skip_clients:
                cluster.kubectl("create", "namespace", "clients")
                out = subprocess.run(
                    [sys.executable, str(REPO / "bench" / "kube_clients.py"), "--kubeconfig",
                     str(cluster.kubeconfig), "--namespace", "clients",
                     "--list-namespace", "lws" if lws else "baseline",
                     "--operator-peak-rss", str(peak)],
                    capture_output=True, text=True, timeout=900)
                print(out.stderr[-3000:] if out.returncode else "", end="")
                for line in out.stdout.splitlines():
                    say(line)
            watch.stop()
        finally:
            if op is not None:
                op.stop()
            cluster.down()
    print("\n== summary ==")
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
