"""The launch plan: what the operator writes into every pod of a gang and the worker reads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mimo_worker.__main__ import UsageError, member_rank
from mimo_worker.head import sglang_ray_launch
from mimo_worker.launchplan import (
    ENV_PLAN_PATH,
    LaunchPlanError,
    example_plan,
    load_plan,
    parse_plan,
    substitute,
)


def doc(**changes: Any) -> dict[str, Any]:
    """The example plan with dotted-path changes (``{"gang.nodes": 2}``); a value of ``...`` deletes."""
    data = copy.deepcopy(example_plan())
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for key in parents:
            node = node[key]
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    return data


def test_the_example_plan_parses_with_every_field() -> None:
    plan = parse_plan(example_plan())
    assert plan.deployment.name == "pro"
    assert plan.gang.nodes == 3
    assert plan.gang.pods == ["pro-r0-0", "pro-r0-1", "pro-r0-2"]
    assert plan.gang.head_address == "pro-r0-0.pro-r0.serving.svc.cluster.local"
    assert plan.ports.ray_gcs == 6379
    assert plan.ports.worker_http == 8000
    assert plan.engine.mode == "per-node"
    assert [r.rank for r in plan.engine.ranks] == [0, 1, 2]
    assert plan.fabric.expected_bus_gbps == 40.0
    assert plan.deadlines.drain_seconds == 600


def test_optional_sections_take_their_defaults() -> None:
    plan = parse_plan(doc(ports=..., fabric=..., deadlines=...))
    assert (plan.ports.ray_gcs, plan.ports.engine_http, plan.ports.dist_init) == (6379, 30000, 5000)
    assert plan.fabric.backend == "nccl"
    assert plan.fabric.expected_bus_gbps is None  # measure only
    assert plan.fabric.min_fraction == 0.5
    assert plan.deadlines.members_join_seconds == 600


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ({"kind": "Pod"}, "kind"),
        ({"gang__nodes": 4}, "gang.pods lists 3 pods but gang.nodes is 4"),
        ({"gang__pods": ["a", "a", "b"]}, "duplicate"),
        ({"gang__surprise": 1}, "gang.surprise"),
        ({"ports__fabric": 6379}, "ports must be distinct"),
        ({"ports__ray_gcs": 70000}, "ports.ray_gcs"),
        ({"engine__mode": "mpi"}, "engine.mode"),
        ({"engine__program": []}, "engine.program"),
        ({"fabric__min_fraction": 1.5}, "fabric.min_fraction"),
        ({"fabric__backend": "mpi"}, "fabric.backend"),
        ({"deadlines__drain_seconds": 0}, "deadlines.drain_seconds"),
        ({"deployment": ...}, "deployment"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_refuses_a_plan_it_cannot_run_and_names_the_field(changes: dict[str, Any], complaint: str) -> None:
    with pytest.raises(LaunchPlanError, match="invalid launch plan") as e:
        parse_plan(doc(**changes))
    assert complaint in str(e.value)


def test_per_node_mode_needs_one_rank_per_node_in_order() -> None:
    data = doc()
    data["engine"]["ranks"] = data["engine"]["ranks"][:2]
    with pytest.raises(LaunchPlanError, match=r"ranks 0\.\.2 in order"):
        parse_plan(data)
    data = doc()
    data["engine"]["ranks"].reverse()
    with pytest.raises(LaunchPlanError, match=r"ranks 0\.\.2 in order"):
        parse_plan(data)


def test_sglang_ray_mode_carries_only_the_drivers_argv() -> None:
    data = doc(engine__mode="sglang-ray")
    with pytest.raises(LaunchPlanError, match="exactly rank 0"):
        parse_plan(data)
    data["engine"]["ranks"] = data["engine"]["ranks"][:1]
    assert parse_plan(data).engine.mode == "sglang-ray"


def test_sglang_ray_mode_runs_sglangs_ray_launcher_on_the_head_against_the_gangs_ray() -> None:
    data = doc(engine__mode="sglang-ray")
    data["engine"]["ranks"] = data["engine"]["ranks"][:1]
    command, env = sglang_ray_launch(parse_plan(data), "10.0.0.5")
    assert command[:4] == ["sglang", "serve", "--model-type", "llm"]
    assert command.count("--use-ray") == 1
    assert command[command.index("--dist-init-addr") + 1] == "10.0.0.5:5000"
    assert env["RAY_ADDRESS"] == "10.0.0.5:6379"
    assert env["NCCL_IB_HCA"] == "mlx5"  # the plan's environment too


def test_the_head_fills_in_node_0s_ip_and_each_nodes_own() -> None:
    data = doc()
    data["engine"]["ranks"][1]["argv"] += ["--host", "{node_ip}"]
    data["engine"]["ranks"][1]["env"] = {"GLOO_SOCKET_IFNAME": "eth0", "MY_ADDR": "{node_ip}:1"}
    plan = parse_plan(data)
    command, env = plan.engine_command(1, head_ip="10.0.0.5", node_ip="10.0.0.6")
    assert command[:4] == ["sglang", "serve", "--model-type", "llm"]
    assert command[command.index("--dist-init-addr") + 1] == "10.0.0.5:5000"
    assert command[command.index("--node-rank") + 1] == "1"
    assert command[-2:] == ["--host", "10.0.0.6"]
    assert env == {"GLOO_SOCKET_IFNAME": "eth0", "MY_ADDR": "10.0.0.6:1"}


def test_substitution_leaves_json_braces_alone() -> None:
    # str.format would choke on (or rewrite) the braces of SGLang's JSON-valued flags.
    text = '{"enable_multithread_load": "true", "num_threads": 64} {head_ip} {node_ip} {other}'
    assert substitute(text, head_ip="1.2.3.4", node_ip="5.6.7.8") == (
        '{"enable_multithread_load": "true", "num_threads": 64} 1.2.3.4 5.6.7.8 {other}'
    )


def test_loads_from_the_environments_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(example_plan()))
    monkeypatch.setenv(ENV_PLAN_PATH, str(path))
    assert load_plan().gang.name == "pro-r0"


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchPlanError, match="cannot read the launch plan"):
        load_plan(tmp_path / "absent.json")
    broken = tmp_path / "plan.json"
    broken.write_text("{not json")
    with pytest.raises(LaunchPlanError, match="is not JSON"):
        load_plan(broken)


def test_a_member_finds_its_rank_from_its_pod_name_or_the_environment() -> None:
    plan = parse_plan(example_plan())
    assert member_rank(plan, None, "pro-r0-2") == 2
    assert member_rank(plan, "1", "whatever") == 1
    with pytest.raises(UsageError, match="cannot tell this member's rank"):
        member_rank(plan, None, "somebody-else")
    with pytest.raises(UsageError, match=r"within 1\.\.2"):
        member_rank(plan, None, "pro-r0-0")  # the head's pod is not a member
    with pytest.raises(UsageError, match=r"within 1\.\.2"):
        member_rank(plan, "3", "pro-r0-1")
