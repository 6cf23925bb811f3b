"""The autoscaler's loop reads SGLang's /metrics the way the policy needs it (against the simulated
engine, which serves SGLang's names and labels), every DP group's pod of a multi-node gang, the router's
count of requests that found no gang, and maps gangs to the policy's phases."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import aiohttp
import pytest

from mimo_operator.autoscaler import HttpMetrics, gang_states, scrape_gang
from mimo_operator.autoscaling.config import policy_config
from mimo_operator.autoscaling.observation import (
    ScaleMemory,
    dp_leader_ranks,
    p95_between,
    parse_router_metrics,
    parse_sglang_metrics,
)
from mimo_operator.autoscaling.policy import GangPhase
from mimo_operator.gangs import GangHealth, Health, ObservedGang, ObservedPod
from mimo_operator.plan import Plan
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from tests.helpers.specs import a_deployment
from tests.unit.test_simengine_server import chat, serving

TEXT = """\
# HELP sglang:num_running_reqs running
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",dp_rank="0"} 3.0
sglang:num_running_reqs{model_name="m",dp_rank="1"} 4.0
# HELP sglang:num_queue_reqs queued
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m",dp_rank="0"} 2.0
sglang:num_queue_reqs{model_name="m",dp_rank="1"} 5.0
# HELP sglang:token_usage usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m",dp_rank="0"} 0.25
sglang:token_usage{model_name="m",dp_rank="1"} 0.75
# HELP sglang:num_requests_total finished
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="m"} 42.0
# HELP sglang:time_to_first_token_seconds ttft
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 50.0
sglang:time_to_first_token_seconds_bucket{le="0.5",model_name="m"} 90.0
sglang:time_to_first_token_seconds_bucket{le="1.0",model_name="m"} 100.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 100.0
sglang:time_to_first_token_seconds_count{model_name="m"} 100.0
sglang:time_to_first_token_seconds_sum{model_name="m"} 20.0
"""


def test_queues_and_running_requests_add_up_over_dp_ranks_and_usage_is_the_fullest() -> None:
    scraped = parse_sglang_metrics(TEXT, at=5.0)
    sample, buckets = scraped.sample, scraped.ttft_buckets
    assert (sample.queue_requests, sample.running_requests, sample.token_usage) == (7.0, 7.0, 0.75)
    assert sample.requests_total == 42.0
    assert buckets[-1] == (math.inf, 100.0)
    # The histogram's sum and count, for the mean TTFT between two scrapes (the queue-wait view).
    assert (sample.ttft_seconds_sum, sample.ttft_count) == (20.0, 100.0)


def test_ttft_p95_covers_only_the_requests_between_two_scrapes() -> None:
    before = ((0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0))
    # 100 new requests, all slow: the p95 of the interval is 1.0 s, whatever came before.
    after = ((0.1, 50.0), (0.5, 90.0), (1.0, 200.0), (math.inf, 200.0))
    assert p95_between(before, after) == 1.0
    assert p95_between(None, before) == 1.0
    assert p95_between(after, after) is None, "no request in between: no figure, not zero"


async def test_a_scrape_of_the_simulated_engine_sees_its_load() -> None:
    async with serving(speedup=5.0) as running:
        host, port = running.base.removeprefix("http://").split(":")
        requests = [asyncio.create_task(running.post("/v1/chat/completions", chat(400, prompt_tokens=200)))
                    for _ in range(6)]
        await asyncio.sleep(0.5)
        pod = ObservedPod(name="g-0", uid="u", rank=0, phase="Running", ready=True, deleting=False, node="n",
                          created=0.0, ip=host)
        spec = parse_spec(a_deployment().v25().h200().build())
        plan = plan_deployment(spec)
        plan = dataclasses.replace(plan, port=int(port))
        gang = ObservedGang("g", 0, "r", 0, 1, (pod,))
        async with aiohttp.ClientSession() as session:
            got = await scrape_gang(HttpMetrics(session), gang, plan, at=1.0)
            await asyncio.gather(*requests)
            done = await scrape_gang(HttpMetrics(session), gang, plan, at=2.0)
    assert got is not None
    sample = got.sample
    assert sample.running_requests + sample.queue_requests == 6
    assert sample.token_usage > 0
    assert done is not None
    assert done.sample.ttft_count == 6
    assert done.sample.ttft_seconds_sum is not None
    assert done.sample.ttft_seconds_sum > 0


def test_gangs_map_to_the_policys_phases_with_loading_ones_as_starting() -> None:
    def gang(name: str) -> ObservedGang:
        pod = ObservedPod(name=f"{name}-0", uid="u", rank=0, phase="Running", ready=True, deleting=False,
                          node="n", created=100.0)
        return ObservedGang(name, 0, "r", 1, 1, (pod,))

    health = {"a": Health(GangHealth.READY), "b": Health(GangHealth.STARTING), "c": Health(GangHealth.PENDING),
              "d": Health(GangHealth.FAILED)}
    phases = {g.name: g.phase for g in gang_states([gang(n) for n in "abcd"], health)}
    assert phases == {"a": GangPhase.READY, "b": GangPhase.STARTING, "c": GangPhase.STARTING}


def test_the_policy_gets_the_specs_targets_windows_and_ttft_objective() -> None:
    spec = parse_spec(a_deployment().pro().h200().autoscaling(
        enabled=True, minReplicas=2, maxReplicas=6, targetKVCacheUsage=0.7, scaleUpWindowSeconds=90,
        scaleDownWindowSeconds=400, ttftSloSeconds=1.5).build())
    config = policy_config(spec, plan_deployment(spec))
    assert (config.min_replicas, config.max_replicas, config.target_token_usage) == (2, 6, 0.7)
    assert (config.stable_window_seconds, config.scale_down_window_seconds) == (90, 400)
    assert config.ttft_slo_seconds == 1.5
    assert 0 < config.forecast_seconds <= 300
    unset = parse_spec(a_deployment().pro().h200().autoscaling(enabled=True).build())
    assert policy_config(unset, plan_deployment(unset)).ttft_slo_seconds is None


@pytest.mark.parametrize(("extra_args", "reads_queue_wait"), [
    ((), True),
    (("--schedule-policy", "fcfs"), True),
    (("--schedule-policy", "lpm"), False),
    (("--schedule-policy=lpm", "--schedule-policy=fcfs"), True),
    (("--schedule-policy", "fcfs", "--schedule-policy", "dfs-weight"), False),
])
def test_the_queue_wait_view_reads_only_a_first_come_first_served_queue(
        extra_args: tuple[str, ...], reads_queue_wait: bool) -> None:
    spec = parse_spec(a_deployment().pro().h200().autoscaling(enabled=True).extra_args(*extra_args).build())
    assert policy_config(spec, plan_deployment(spec)).queue_wait_view is reads_queue_wait


GROUP_1 = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",dp_rank="1",tp_rank="8"} 6.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m",dp_rank="1",tp_rank="8"} 9.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m",dp_rank="1",tp_rank="8"} 0.9
"""


class Pages:
    """The loop's metrics port, answering from a table of URL → exposition (None: unreachable)."""

    def __init__(self, pages: dict[str, str | None]) -> None:
        self.pages = pages
        self.asked: list[str] = []

    async def get_text(self, url: str) -> str | None:
        self.asked.append(url)
        return self.pages.get(url)


def pro_two_node_gang() -> tuple[ObservedGang, Plan]:
    spec = parse_spec(a_deployment().pro().h200().build())
    plan = plan_deployment(spec)
    pods = tuple(ObservedPod(name=f"g-{r}", uid="u", rank=r, phase="Running", ready=True, deleting=False, node="n",
                             created=0.0, ip=f"10.0.0.{r + 1}") for r in range(plan.nodes_per_replica))
    return ObservedGang("g", 0, "r", 0, plan.nodes_per_replica, pods), plan


async def test_pro_with_two_dp_groups_on_two_nodes_is_scraped_on_both_nodes() -> None:
    gang, plan = pro_two_node_gang()
    assert (plan.nodes_per_replica, plan.attention_data_parallel) == (2, 2)
    assert dp_leader_ranks(attention_data_parallel=2, attention_tensor_parallel=8, gpus_per_node=8, nodes=2) == (0, 1)
    node0 = TEXT.replace('dp_rank="1"', 'dp_rank="0"')  # node 0 shows only its own group
    port = Pages({f"http://10.0.0.1:{plan.port}/metrics": node0,
                  f"http://10.0.0.2:{plan.port}/metrics": GROUP_1})
    got = await scrape_gang(port, gang, plan, at=3.0)
    assert got is not None
    # The second group's queue (9) and running requests (6) count; usage is the fuller group's.
    assert (got.sample.queue_requests, got.sample.running_requests) == (2 + 5 + 9, 3 + 4 + 6)
    assert got.sample.token_usage == 0.9
    assert got.sample.requests_total == 42.0
    assert (got.sample.ttft_seconds_sum, got.sample.ttft_count) == (20.0, 100.0)  # node 0's tokenizer
    assert len(port.asked) == 2


async def test_a_gang_with_one_dp_groups_pod_unreachable_gives_no_sample_rather_than_half_the_load() -> None:
    gang, plan = pro_two_node_gang()
    port = Pages({f"http://10.0.0.1:{plan.port}/metrics": TEXT})
    assert await scrape_gang(port, gang, plan, at=3.0) is None


ROUTER = """\
# TYPE smg_http_responses_total counter
smg_http_responses_total{status_code="503",error_code="no_available_workers"} 7
smg_http_responses_total{status_code="200",error_code=""} 100
# TYPE smg_http_connections_active gauge
smg_http_connections_active 2
"""


def test_the_routers_refusals_for_want_of_a_gang_become_pending_requests() -> None:
    memory = ScaleMemory(history_seconds=600)
    first = parse_router_metrics(ROUTER)
    assert first.refused_total == 7
    assert memory.pending([first]) is None, "the first read has no interval yet"
    assert memory.pending([parse_router_metrics(ROUTER)]) == 0
    later = parse_router_metrics(ROUTER.replace("} 7", "} 12"))
    assert memory.pending([later]) == 5
    assert memory.pending([parse_router_metrics(ROUTER.replace("} 7", "} 3"))]) == 3, "a restarted router"
    assert memory.pending(None) is None
