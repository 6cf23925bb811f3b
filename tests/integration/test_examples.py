"""Every manifest in examples/: the planner accepts it, `mimoctl plan` explains it, it is what its name says,
kubeconform finds it valid against the CRD's schema, and the real apiserver accepts it with the CRD's
defaults applied (the same defaults the typed spec has)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mimo_operator.localcluster.cluster import LocalCluster
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.planner_pd import plan_disaggregated
from mimo_operator.spec import parse_spec
from tests.conftest import REPO
from tests.helpers.packaging import CRD, EXAMPLES, kubeconform, tool, write_schemas
from tests.integration.operator_harness import get

EXPECTED = {
    "mimo-v25-fp8-h100.yaml",
    "mimo-v25-pro-h200-autoscaling.yaml",
    "mimo-v25-pro-h100-rdma-multus.yaml",
    "mimo-v25-pro-hostnetwork-ib.yaml",
    "mimo-v25-pro-simulated.yaml",
    "mimo-v25-pro-pd.yaml",
    "mimo-v25-pd-simulated.yaml",
    "mimo-v25-simulated-caching.yaml",
}
FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def load(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return manifest


def plan_of(name: str) -> Plan:
    return plan_deployment(parse_spec(load(name)))


def test_the_examples_are_the_documented_set() -> None:
    assert set(FILES) == EXPECTED


@pytest.mark.parametrize("name", FILES)
def test_an_example_opens_with_a_comment_saying_what_it_is(name: str) -> None:
    header = (EXAMPLES / name).read_text().splitlines()[:2]
    assert all(line.startswith("# ") for line in header), header
    assert f"mimoctl plan -f examples/{name}" in (EXAMPLES / name).read_text()


@pytest.mark.parametrize("name", FILES)
def test_the_planner_accepts_an_example(name: str) -> None:
    plan = plan_of(name)
    assert plan.nodes_per_replica >= 1
    assert plan.kv.tokens > 0


@pytest.mark.parametrize("name", FILES)
def test_mimoctl_plan_explains_an_example(name: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mimo_operator.cli", "plan", "-f", str(EXAMPLES / name)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "nodes per replica" in result.stdout
    assert "LAUNCH" in result.stdout


def test_each_example_is_what_its_name_says() -> None:
    v25 = plan_of("mimo-v25-fp8-h100.yaml")
    assert (v25.variant, v25.precision, v25.gpu.name, v25.nodes_per_replica) == ("MiMo-V2.5", "fp8", "H100-80GB", 1)

    autoscaled = load("mimo-v25-pro-h200-autoscaling.yaml")
    plan = plan_of("mimo-v25-pro-h200-autoscaling.yaml")
    assert (plan.variant, plan.precision, plan.gpu.name) == ("MiMo-V2.5-Pro", "fp8", "H200-141GB")
    assert plan.nodes_per_replica > 1
    assert autoscaled["spec"]["autoscaling"]["enabled"] is True

    rdma = parse_spec(load("mimo-v25-pro-h100-rdma-multus.yaml"))
    plan = plan_of("mimo-v25-pro-h100-rdma-multus.yaml")
    assert (plan.variant, plan.gpu.name) == ("MiMo-V2.5-Pro", "H100-80GB")
    assert rdma.network.mode == "rdma"
    assert rdma.network.rdma is not None
    assert rdma.network.rdma.networks
    assert plan.moe_a2a_backend == "deepep"

    ib = parse_spec(load("mimo-v25-pro-hostnetwork-ib.yaml"))
    plan = plan_of("mimo-v25-pro-hostnetwork-ib.yaml")
    assert plan.variant == "MiMo-V2.5-Pro"
    assert ib.network.mode == "hostNetwork"
    assert ib.network.ib_devices
    assert plan.moe_a2a_backend == "deepep"

    rehearsal = plan_of("mimo-v25-pro-simulated.yaml")
    production = plan_of("mimo-v25-pro-h200-autoscaling.yaml")
    assert rehearsal.engine == "simulated"
    assert rehearsal.variant == "MiMo-V2.5-Pro"
    assert rehearsal.nodes_per_replica == production.nodes_per_replica, "a rehearsal of the same gang shape"
    assert rehearsal.context_length <= 65536
    assert load("mimo-v25-pro-simulated.yaml")["spec"]["replicas"] == 1

    # The caching rehearsal: MiMo-V2.5 (media in) simulated, several gangs behind cache_aware, cache report on.
    caching = parse_spec(load("mimo-v25-simulated-caching.yaml"))
    plan = plan_of("mimo-v25-simulated-caching.yaml")
    assert (plan.engine, plan.variant) == ("simulated", "MiMo-V2.5")
    assert caching.router.policy == "cache_aware"
    assert caching.replicas >= 2
    assert caching.engine.extra_args == ["--enable-cache-report"]

    # The PD example plans on both sides as the public Pro PD recipe (2 + 2 nodes, tp16/ep16).
    pd_spec = parse_spec(load("mimo-v25-pro-pd.yaml"))
    pd = plan_disaggregated(pd_spec)
    assert (pd.prefill.plan.nodes_per_replica, pd.decode.plan.nodes_per_replica) == (2, 2)
    assert (pd.prefill.plan.tensor_parallel, pd.decode.plan.expert_parallel) == (16, 16)
    assert pd.decode.eplb is not None
    rehearsal_pd = plan_disaggregated(parse_spec(load("mimo-v25-pd-simulated.yaml")))
    assert (rehearsal_pd.prefill.plan.engine, rehearsal_pd.decode.plan.engine) == ("simulated", "simulated")
    assert rehearsal_pd.prefill.plan.deepep_mode == "normal"


def test_the_examples_are_valid_for_kubeconform_against_the_crd_schema(tmp_path: Path) -> None:
    if not os.access(tool("kubeconform"), os.X_OK):
        if os.environ.get("MIMO_REQUIRE_CLUSTER"):
            pytest.fail("kubeconform is not built: run hack/build-binaries.sh")
        pytest.skip("kubeconform is not built: run hack/build-binaries.sh")
    text = "\n---\n".join((EXAMPLES / name).read_text() for name in FILES)
    code, results = kubeconform(text, write_schemas(tmp_path / "schemas"))
    assert code == 0, results
    assert [r["status"] for r in results] == ["statusValid"] * len(FILES)


@pytest.mark.cluster
def test_the_apiserver_accepts_every_example_and_applies_the_crd_defaults(
        cluster: LocalCluster, namespace: str) -> None:
    cluster.apply_crd(CRD, server_side=True)
    for name in FILES:
        result = cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / name), check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"
    for name in FILES:
        manifest = load(name)
        stored = get(cluster, "mimodeployment", namespace, manifest["metadata"]["name"])
        assert stored is not None
        spec = stored["spec"]
        # Defaults the example left out are filled in by the apiserver…
        assert spec["engine"]["port"] == 30000
        assert "precision" in spec["model"]
        assert "rollout" in spec
        # …and they are the typed spec's defaults: the planner gives the same plan for both.
        assert parse_spec(stored) == parse_spec(manifest), name
        assert plan_deployment(parse_spec(stored)).to_dict() == plan_of(name).to_dict()
    # No operator runs in this test: nothing but the objects themselves was created.
    assert json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"] == []
