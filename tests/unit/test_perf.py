"""The performance model: calibrated against the published MiMo serving figures, and shaped right."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mimo_operator import perf
from mimo_operator.perf import CALIBRATION, ReplicaPerformance, performance_of
from mimo_operator.planner import plan_deployment
from mimo_operator.spec import parse_spec
from tests.helpers.specs import DeploymentBuilder, a_deployment

TOLERANCE = 0.25


def model_of(builder: DeploymentBuilder) -> ReplicaPerformance:
    return performance_of(plan_deployment(parse_spec(builder.build())))


@pytest.mark.parametrize(("variant", "gpu", "concurrency", "published"), CALIBRATION,
                         ids=[f"{v}-{g}-c{c}" for v, g, c, _ in CALIBRATION])
def test_modelled_output_rate_is_within_25_percent_of_the_published_figure(
    variant: str, gpu: str, concurrency: int, published: float
) -> None:
    replica = model_of(a_deployment().variant(variant).gpu(gpu))
    assert replica.gpus == 8  # the published set-ups are one 8-GPU node; so are the planner's plans for them
    modelled = replica.decode_tokens_per_second(concurrency, perf.CALIBRATION_CONTEXT)
    print(f"{variant} on 8×{gpu} at concurrency {concurrency}: modelled {modelled:,.0f} tok/s, "
          f"published {published:,.0f} ({modelled / published - 1:+.0%})")
    assert abs(modelled / published - 1) <= TOLERANCE


def test_the_model_carries_the_plan_s_capacities() -> None:
    plan = plan_deployment(parse_spec(a_deployment().pro().h200().build()))
    replica = performance_of(plan)
    assert replica.model_name == "XiaomiMiMo/MiMo-V2.5-Pro"
    assert replica.gpus == 16
    assert replica.max_total_num_tokens == plan.kv.tokens
    assert replica.swa_max_tokens == plan.kv.swa_tokens
    assert (replica.swa_window, replica.page_size) == (128, 64)
    assert replica.max_running_requests == plan.max_running_requests
    assert replica.context_length == 1_048_576
    assert replica.chunked_prefill_size == 32768


def test_mtp_raises_the_decode_rate() -> None:
    on = model_of(a_deployment().v25().h200())
    off = model_of(a_deployment().v25().h200().mtp(False))
    for concurrency in (1, 32, 100):
        assert on.decode_tokens_per_second(concurrency, 4096) > 2 * off.decode_tokens_per_second(concurrency, 4096)
    assert on.decode_tokens_per_step == perf.MTP_ACCEPT_LENGTH
    assert off.decode_tokens_per_step == 1.0
    # The simulated engine emits one token per step: the step time is per output token.
    assert on.decode_step_seconds(8, 8 * 4096) == pytest.approx(on.forward_step_seconds(8, 8 * 4096) / 3.0)


def test_a_decode_step_grows_with_batch_and_context() -> None:
    replica = model_of(a_deployment().v25().h200())
    assert replica.decode_step_seconds(64, 64 * 4096) > replica.decode_step_seconds(8, 8 * 4096)
    assert replica.decode_step_seconds(8, 8 * 500_000) > replica.decode_step_seconds(8, 8 * 4096)
    # …but batching still pays: the replica's output rate rises with concurrency.
    rates = [replica.decode_tokens_per_second(c, 4096) for c in (1, 8, 64, 256)]
    assert rates == sorted(rates)


def test_long_contexts_make_decode_memory_bound_on_the_kv_cache() -> None:
    replica = model_of(a_deployment().pro().b200())
    short = replica.decode_step_seconds(2, 2 * 4096)
    long = replica.decode_step_seconds(2, 2 * 1_000_000)
    # Reading 2M tokens of KV (6.4 KB per token per GPU in the global layers) takes measurable time.
    kv_seconds = 2_000_000 * replica.kv_bytes_per_token_per_gpu / (replica.hbm_bytes_per_second * perf.ETA_BANDWIDTH)
    assert long - short == pytest.approx(kv_seconds / replica.decode_tokens_per_step, rel=0.2)


def test_prefill_is_compute_bound_and_pays_for_cached_context() -> None:
    replica = model_of(a_deployment().v25().h200())
    big = replica.prefill_seconds(32768)
    bigger = replica.prefill_seconds(65536)
    # Linear layers double; causal attention over the prompt grows faster (quadratic).
    assert 2 * big < bigger < 2.5 * big
    # 2 × 15B active params × 32K tokens at 23 % of 8 × 1,979 TFLOP/s, plus attention.
    linear = 2 * 15e9 * 32768 / (8 * 1979e12 * perf.PREFILL_MFU)
    assert linear < big < 1.5 * linear
    assert replica.prefill_seconds(4096, cached_context_tokens=500_000) > replica.prefill_seconds(4096)
    assert replica.prefill_seconds(0) == 0.0


def test_multi_node_replicas_pay_the_expert_all_to_all() -> None:
    replica = model_of(a_deployment().pro().h200())
    assert replica.nodes == 2
    one_node = dataclasses.replace(replica, nodes=1)
    extra = replica.forward_step_seconds(1, 4096) - one_node.forward_step_seconds(1, 4096)
    # At least a dispatch and a combine latency per MoE layer.
    assert extra >= 69 * 2 * perf.A2A_LATENCY


def test_concurrency_is_capped_by_running_requests_and_by_kv_capacity() -> None:
    replica = model_of(a_deployment().pro().h200())
    # At 1M tokens only one sequence fits per attention-DP group: 2 run, the rest would queue.
    assert replica.decode_tokens_per_second(100, 1_000_000) == replica.decode_tokens_per_second(2, 1_000_000)
    capped = replica.max_running_requests
    assert replica.decode_tokens_per_second(capped + 50, 1024) == replica.decode_tokens_per_second(capped, 1024)


def test_nothing_running_costs_nothing() -> None:
    replica = model_of(a_deployment())
    assert replica.decode_step_seconds(0, 0) == 0.0
    assert replica.decode_tokens_per_second(0, 4096) == 0.0


def test_a_calibration_file_changes_the_prediction_and_its_absence_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(perf.CALIBRATION_ENV, raising=False)
    plan = plan_deployment(parse_spec(a_deployment().pro().h200().build()))
    plain = performance_of(plan)
    assert plain == performance_of(plan, perf.Calibration())
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"factors": [
        {"kind": "moe", "phase": "decode", "precision": plan.precision, "factor": 2.0},
        {"kind": "attention", "phase": "prefill", "precision": "bf16", "factor": 3.0}]}))
    monkeypatch.setenv(perf.CALIBRATION_ENV, str(path))
    calibrated = performance_of(plan)
    assert calibrated.forward_step_seconds(64, 64 * 4096) > plain.forward_step_seconds(64, 64 * 4096)
    assert calibrated.prefill_seconds(32768) > plain.prefill_seconds(32768)
    # layer_timings' raw JSON works too: the median ratio of each kind, phase and precision
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"rows": [
        {"what": "moe-shard", "phase": "decode", "precision": "fp8", "ratio": r} for r in (1.0, 4.0, 10.0)]}))
    assert perf.load_calibration(raw).factor("moe", "decode", "fp8") == 4.0
    assert perf.load_calibration(raw).factor("attention", "decode", "fp8") == 1.0
