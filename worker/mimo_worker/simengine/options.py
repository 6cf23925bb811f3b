"""The simulated engine's command line: ``sglang.launch_server``'s argv, plus a few ``--mimo-*`` options.

The worker swaps the program and keeps the argv the plan generated, so everything SGLang accepts is
accepted here. The flags that shape serving (ports, model name, node rank, the scheduler's limits) and
those the planner needs to plan the replica again from the argv (parallelism, KV cache dtype,
quantization, DeepEP, speculative decoding, prefill/decode and EPLB) are read; every other SGLang flag
(attention backend, parsers, loader options, …) is accepted and ignored, and logged at debug level.

Simulated-engine options:

``--mimo-manifest PATH``
    A MiMoDeployment manifest. The engine plans it (spec → plan → performance model) and takes its
    capacities and step times from the plan. Without SGLang flags on the command line, the plan's own
    argv is used, so ``python -m mimo_worker.simengine --mimo-manifest M --port P`` serves exactly what
    the planned replica would; flags given on the command line override the plan's.
``--mimo-startup-seconds S``
    How long the simulated weight loading takes (simulated seconds; ``/health`` answers 503 meanwhile).
``--mimo-speedup X``
    Time compression: the engine runs X simulated seconds per wall-clock second. Latencies in
    ``/metrics`` stay in simulated seconds; clients see them divided by X. Default: the manifest's
    ``spec.engine.simulation.speedup``, else 1.
``--mimo-gpu-type NAME``
    Without a manifest the replica is planned from the argv, and the argv has no GPU type: this is it
    (default H200-141GB).
``--mimo-link-speed-gbps N``
    Without a manifest: the line rate of one HCA (the manifest's ``spec.network.linkSpeedGbps``, which
    SGLang's argv does not carry; default 400). Only the KV hand-over of a prefill server reads it.
``--mimo-metrics-per-node``
    This process is node rank 0 of a gang whose other nodes run processes of their own (the operator's
    launches say so): its ``/metrics`` then shows only the attention-DP groups on node 0, and each other
    node's dummy server shows its own, as SGLang's nodes do. Without it one process stands for the whole
    replica and shows every group.

Prefill/decode disaggregation (``disaggregation.py``): ``--disaggregation-mode null|prefill|decode``
(SGLang's default ``null``: a colocated server), ``--disaggregation-bootstrap-port`` (8998; the
prefill server's bootstrap server listens there, on ``--host``), ``--disaggregation-transfer-backend``
(SGLang's choices; it does not change the simulated transfer) and ``--disaggregation-ib-device`` (a
comma-separated HCA list: how many HCAs carry the KV transfer). With a PD manifest
(``spec.disaggregation``), the side the mode names is planned by ``planner_pd.plan_disaggregated``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mimo_worker.simengine.engine import EngineLimits

__all__ = ["OptionsError", "SimOptions", "build_parser", "parse_options", "resolve_limits"]

log = logging.getLogger(__name__)

DEFAULT_STARTUP_SECONDS = 1.0
DEFAULT_GPU_TYPE = "H200-141GB"
# SGLang 0.5.23's --disaggregation-mode and --disaggregation-transfer-backend choices and defaults
# (sglang/srt/arg_groups/fields/disagg.py, arg_groups/choices.py).
DISAGGREGATION_MODES = ("null", "prefill", "decode")
TRANSFER_BACKENDS = ("mooncake", "nixl", "ascend", "fake", "mori", "mooncake_tcp")
DEFAULT_TRANSFER_BACKEND = "mooncake"
DEFAULT_BOOTSTRAP_PORT = 8998


class OptionsError(ValueError):
    """A command line the simulated engine cannot run with; the message says what to change."""


@dataclass(frozen=True)
class SimOptions:
    """What the simulated engine reads from its argv (SGLang's names, SGLang's defaults)."""

    model_path: str | None = None
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 30000
    tp_size: int = 1
    dp_size: int = 1
    attn_dp_size: int | None = None
    enable_dp_attention: bool = False
    ep_size: int = 1
    pp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    context_length: int | None = None
    max_running_requests: int | None = None
    chunked_prefill_size: int | None = None
    page_size: int | None = None
    max_total_tokens: int | None = None
    mem_fraction_static: float | None = None
    swa_full_tokens_ratio: float | None = None
    kv_cache_dtype: str | None = None
    quantization: str | None = None
    moe_a2a_backend: str | None = None
    deepep_mode: str | None = None
    speculative_algorithm: str | None = None
    enable_metrics: bool = False
    enable_cache_report: bool = False
    disable_radix_cache: bool = False
    mm_enable_dp_encoder: bool = False
    disaggregation_mode: str = "null"
    disaggregation_bootstrap_port: int = DEFAULT_BOOTSTRAP_PORT
    disaggregation_transfer_backend: str = DEFAULT_TRANSFER_BACKEND
    disaggregation_ib_device: str | None = None
    ep_num_redundant_experts: int | None = None
    eplb_algorithm: str | None = None
    enable_eplb: bool = False
    log_level: str = "info"
    mimo_manifest: Path | None = None
    mimo_startup_seconds: float = DEFAULT_STARTUP_SECONDS
    mimo_speedup: float = 1.0
    mimo_gpu_type: str = DEFAULT_GPU_TYPE
    mimo_link_speed_gbps: int | None = None
    mimo_metrics_per_node: bool = False
    ignored: tuple[str, ...] = field(default=())

    @property
    def attention_dp(self) -> int:
        """Attention-DP groups: ``--attn-dp-size`` (SGLang 0.5.23), else ``--dp-size`` with the older
        ``--enable-dp-attention``, else 1."""
        if self.attn_dp_size is not None:
            return self.attn_dp_size
        return self.dp_size if self.enable_dp_attention else 1

    @property
    def load_balance_method(self) -> str:
        """SGLang's resolved ``--load-balance-method auto``: a prefill server follows the bootstrap room
        to pick the attention-DP group, everything else takes groups in turn."""
        return "follow_bootstrap_room" if self.disaggregation_mode == "prefill" else "round_robin"

    @property
    def model_name(self) -> str:
        """The name clients and metrics see: ``--served-model-name``, else the model path."""
        return self.served_model_name or self.model_path or "default"

    def server_args(self) -> dict[str, Any]:
        """The server arguments as ``/server_info`` reports them."""
        return {
            "model_path": self.model_path,
            "served_model_name": self.model_name,
            "host": self.host,
            "port": self.port,
            "tp_size": self.tp_size,
            "dp_size": self.dp_size,
            "attn_dp_size": self.attention_dp,
            "enable_dp_attention": self.attention_dp > 1,
            "ep_size": self.ep_size,
            "pp_size": self.pp_size,
            "nnodes": self.nnodes,
            "node_rank": self.node_rank,
            "dist_init_addr": self.dist_init_addr,
            "context_length": self.context_length,
            "max_running_requests": self.max_running_requests,
            "chunked_prefill_size": self.chunked_prefill_size,
            "page_size": self.page_size,
            "max_total_tokens": self.max_total_tokens,
            "mem_fraction_static": self.mem_fraction_static,
            "swa_full_tokens_ratio": self.swa_full_tokens_ratio,
            "enable_metrics": self.enable_metrics,
            "enable_cache_report": self.enable_cache_report,
            "disable_radix_cache": self.disable_radix_cache,
            "mm_enable_dp_encoder": self.mm_enable_dp_encoder,
            "disaggregation_mode": self.disaggregation_mode,
            "disaggregation_bootstrap_port": self.disaggregation_bootstrap_port,
            "disaggregation_transfer_backend": self.disaggregation_transfer_backend,
            "disaggregation_ib_device": self.disaggregation_ib_device,
            "load_balance_method": self.load_balance_method,
            "log_level": self.log_level,
        }


def build_parser(*, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The parser; with ``suppress_defaults`` the namespace holds only the flags actually given."""
    default = argparse.SUPPRESS if suppress_defaults else None
    base = SimOptions()

    def d(value: Any) -> Any:
        return default if suppress_defaults else value

    parser = argparse.ArgumentParser(
        prog="python -m mimo_worker.simengine",
        description="A simulated SGLang server for one replica of a MiMoDeployment plan (no GPU needed).",
        allow_abbrev=False,  # an unknown SGLang flag must never be taken for a prefix of ours
        argument_default=default,
    )
    sg = parser.add_argument_group("SGLang server arguments (the ones the simulation reads)")
    sg.add_argument("--model-path", "--model", dest="model_path", default=d(base.model_path))
    sg.add_argument("--served-model-name", default=d(base.served_model_name))
    sg.add_argument("--host", default=d(base.host))
    sg.add_argument("--port", type=int, default=d(base.port))
    sg.add_argument("--tp-size", "--tensor-parallel-size", "--tp", dest="tp_size", type=int, default=d(1))
    sg.add_argument("--dp-size", "--data-parallel-size", "--dp", dest="dp_size", type=int, default=d(1))
    sg.add_argument("--attn-dp-size", type=int, default=d(None))
    sg.add_argument("--enable-dp-attention", action="store_true", default=d(False))
    sg.add_argument("--ep-size", "--expert-parallel-size", "--ep", dest="ep_size", type=int, default=d(1))
    sg.add_argument("--pp-size", "--pipeline-parallel-size", dest="pp_size", type=int, default=d(1))
    sg.add_argument("--nnodes", type=int, default=d(1))
    sg.add_argument("--node-rank", type=int, default=d(0))
    sg.add_argument("--dist-init-addr", "--nccl-init-addr", dest="dist_init_addr", default=d(None))
    sg.add_argument("--context-length", type=int, default=d(None))
    sg.add_argument("--max-running-requests", type=int, default=d(None))
    sg.add_argument("--chunked-prefill-size", type=int, default=d(None))
    sg.add_argument("--page-size", type=int, default=d(None))
    sg.add_argument("--max-total-tokens", type=int, default=d(None))
    sg.add_argument("--mem-fraction-static", type=float, default=d(None))
    sg.add_argument("--swa-full-tokens-ratio", type=float, default=d(None))
    sg.add_argument("--kv-cache-dtype", default=d(None))
    sg.add_argument("--quantization", default=d(None))
    sg.add_argument("--moe-a2a-backend", default=d(None))
    sg.add_argument("--deepep-mode", default=d(None))
    sg.add_argument("--speculative-algorithm", default=d(None))
    sg.add_argument("--enable-metrics", action="store_true", default=d(False))
    sg.add_argument("--enable-cache-report", action="store_true", default=d(False))
    sg.add_argument("--disable-radix-cache", action="store_true", default=d(False))
    sg.add_argument("--mm-enable-dp-encoder", action="store_true", default=d(False))
    sg.add_argument("--disaggregation-mode", choices=DISAGGREGATION_MODES, default=d("null"))
    sg.add_argument("--disaggregation-bootstrap-port", type=int, default=d(DEFAULT_BOOTSTRAP_PORT))
    sg.add_argument("--disaggregation-transfer-backend", choices=TRANSFER_BACKENDS, default=d(DEFAULT_TRANSFER_BACKEND))
    sg.add_argument("--disaggregation-ib-device", default=d(None))
    sg.add_argument("--ep-num-redundant-experts", type=int, default=d(None))
    sg.add_argument("--eplb-algorithm", default=d(None))
    sg.add_argument("--enable-eplb", action="store_true", default=d(False))
    sg.add_argument("--log-level", default=d("info"))
    sim = parser.add_argument_group("simulated engine")
    sim.add_argument("--mimo-manifest", type=Path, default=d(None), help="a MiMoDeployment manifest to plan")
    sim.add_argument(
        "--mimo-startup-seconds",
        type=float,
        default=d(DEFAULT_STARTUP_SECONDS),
        help="simulated load time before /health turns 200 (simulated seconds)",
    )
    sim.add_argument(
        "--mimo-speedup",
        type=float,
        default=d(1.0),
        help="simulated seconds per wall-clock second (time compression for tests and rehearsals)",
    )
    sim.add_argument(
        "--mimo-gpu-type",
        default=d(DEFAULT_GPU_TYPE),
        help="the GPU type to plan for when there is no --mimo-manifest (SGLang's argv does not say)",
    )
    sim.add_argument(
        "--mimo-link-speed-gbps",
        type=int,
        default=d(None),
        help="one HCA's line rate when there is no --mimo-manifest (spec.network.linkSpeedGbps; default 400)",
    )
    sim.add_argument(
        "--mimo-metrics-per-node",
        action="store_true",
        default=d(False),
        help="node 0 of a gang of processes: /metrics shows node 0's attention-DP groups only, as SGLang's node 0",
    )
    return parser


_FIELDS = {f for f in SimOptions.__dataclass_fields__ if f != "ignored"}


def parse_options(argv: Sequence[str], plan_argv: Sequence[str] = (), *, check: bool = True) -> SimOptions:
    """Parse a command line over a base argv (the plan's ``sglang.launch_server`` argv, if any).

    Flags given in ``argv`` win over ``plan_argv``; flags in neither take SGLang's defaults. ``check``
    refuses impossible combinations (OptionsError); a first look for ``--mimo-manifest`` skips it,
    since the plan's argv may complete the command line.
    """
    given, unknown = build_parser(suppress_defaults=True).parse_known_args(list(argv))
    base, base_unknown = build_parser().parse_known_args(list(plan_argv))
    values = {k: v for k, v in vars(base).items() if k in _FIELDS}
    values.update({k: v for k, v in vars(given).items() if k in _FIELDS})
    ignored = tuple(base_unknown) + tuple(unknown)
    if ignored and check:
        log.debug("ignoring SGLang arguments the simulation does not model: %s", " ".join(ignored))
    options = SimOptions(**values, ignored=ignored)
    if check:
        _check(options)
    return options


def _check(options: SimOptions) -> None:
    if options.mimo_speedup <= 0:
        raise OptionsError(f"--mimo-speedup must be > 0, got {options.mimo_speedup}")
    if options.mimo_startup_seconds < 0:
        raise OptionsError(f"--mimo-startup-seconds must be >= 0, got {options.mimo_startup_seconds}")
    if not 0 <= options.node_rank < max(options.nnodes, 1):
        raise OptionsError(f"--node-rank {options.node_rank} is outside 0..{options.nnodes - 1} (--nnodes)")
    if not 0 <= options.port < 65536:
        raise OptionsError(f"--port {options.port} is not a TCP port")
    if options.disaggregation_mode == "prefill":
        bootstrap = options.disaggregation_bootstrap_port
        if not 0 <= bootstrap < 65536:
            raise OptionsError(f"--disaggregation-bootstrap-port {bootstrap} is not a TCP port")
        if bootstrap == options.port and bootstrap != 0:
            raise OptionsError(
                f"--disaggregation-bootstrap-port {bootstrap} is the HTTP --port: the prefill server's "
                "bootstrap server needs a port of its own"
            )
    if options.attention_dp < 1 or options.tp_size % options.attention_dp:
        raise OptionsError(f"attention DP size {options.attention_dp} must divide --tp-size {options.tp_size}")
    for name in ("context_length", "max_running_requests", "page_size", "max_total_tokens", "mimo_link_speed_gbps"):
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise OptionsError(f"--{name.replace('_', '-')} must be positive, got {value}")


def resolve_limits(planned: EngineLimits, options: SimOptions) -> EngineLimits:
    """The scheduler's limits: the plan's, with the command line's scheduler flags on top (as SGLang
    obeys its argv). ``--chunked-prefill-size`` ≤ 0 turns chunking off, as in SGLang."""
    limits = planned
    if options.context_length is not None:
        limits = replace(limits, context_length=options.context_length)
    if options.max_running_requests is not None:
        limits = replace(limits, max_running_requests=options.max_running_requests)
    if options.page_size is not None:
        limits = replace(limits, page_size=options.page_size)
    if options.chunked_prefill_size is not None:
        size = options.chunked_prefill_size if options.chunked_prefill_size > 0 else limits.context_length
        limits = replace(limits, chunked_prefill_size=size)
    if options.max_total_tokens is not None and options.max_total_tokens < limits.max_total_num_tokens:
        # SGLang caps the full pool; the SWA pool keeps its ratio to it
        ratio = limits.swa_max_tokens / limits.max_total_num_tokens
        limits = replace(
            limits,
            max_total_num_tokens=options.max_total_tokens,
            swa_max_tokens=max(int(options.max_total_tokens * ratio), limits.swa_window + limits.page_size),
        )
    return limits
