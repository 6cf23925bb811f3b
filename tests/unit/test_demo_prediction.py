"""The demo's load and the simulator's prediction for it are built from the same list of requests."""

from __future__ import annotations

from pathlib import Path

import yaml

from mimo_operator.commands.demo import EXAMPLE, TRACE, simulator_prediction
from mimo_operator.loadgen import Phase, RequestShape, read_trace, schedule


def test_the_schedule_squeezes_each_phase_of_the_trace_and_clips_request_sizes() -> None:
    trace = [RequestShape(0.0, 100_000, 5), RequestShape(10.0, 10, 5000), RequestShape(20.0, 500, 50),
             RequestShape(30.0, 500, 50)]
    sent = schedule(trace, [Phase("slow", 20, 10), Phase("fast", 10, 20)], max_context=8192, max_output=512)
    # Phase one plays trace [0, 10) over 20 s; phase two trace [10, 30) over 10 s, starting at 20 s.
    assert [r.offset for r in sent] == [0.0, 20.0, 25.0]
    assert (sent[0].context_tokens, sent[1].context_tokens, sent[1].generated_tokens) == (8192, 16, 512)


def test_the_prediction_for_the_short_demos_light_load_is_the_models_subsecond_ttft() -> None:
    manifest = yaml.safe_load(Path(EXAMPLE).read_text())
    manifest["spec"]["autoscaling"] = {"enabled": False}
    manifest["spec"]["replicas"] = 1
    sent = schedule(read_trace(TRACE), [Phase("light load", 40, 40)])
    predicted = simulator_prediction(manifest, sent, wall_seconds=40, startup_seconds=0)
    assert predicted.requests == len(sent) > 20
    assert predicted.failed_requests == 0
    assert 0 < predicted.ttft_p50_seconds <= predicted.ttft_p95_seconds < 2.0
    assert predicted.scale_events == 0
