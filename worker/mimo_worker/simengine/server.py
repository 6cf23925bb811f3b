"""SGLang's HTTP surface over the simulated engine (aiohttp), and the real-time scheduler loop.

Endpoints (node rank 0), as SGLang 0.5 serves them (``reference/sglang-mimo-facts.md`` §4):

* ``GET /health``, ``GET /health_generate`` — 503 while starting (``--mimo-startup-seconds``) and while
  draining, else 200. ``/health`` answers from the server state; ``/health_generate`` also proves the
  scheduler moves: 200 at once if tokens came out in the last 20 simulated seconds (SGLang's health
  check timeout), otherwise it runs a one-token generation and answers 503 if that takes longer.
* ``GET /ping`` — liveness, always 200.
* ``GET /v1/models``, ``GET /model_info`` (and the older ``/get_model_info``).
* ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /generate`` — with ``"stream": true``
  an SSE stream of ``data: {json}`` chunks ending in ``data: [DONE]``; otherwise one JSON body. Both
  report ``usage``; the text is filler.
* ``GET /server_info`` (and the deprecated ``/get_server_info``): server arguments,
  ``max_total_num_tokens``, ``max_req_input_len`` and per-scheduler ``internal_states``.
* ``GET /metrics`` — SGLang's Prometheus metrics; only with ``--enable-metrics``, as in SGLang
  (without it the route does not exist). Node 0 shows the tokenizer's series and the schedulers of the
  attention-DP groups whose first GPU it hosts (with ``--mimo-metrics-per-node``, as the operator's gangs run
  it; a lone process standing for the whole replica shows every group); node ranks ≥ 1 run SGLang's dummy
  health server, whose ``/metrics`` shows that node's groups' schedulers, fetched from node 0's
  ``/mimo/metrics/node/<rank>`` (this process simulates every group of the gang).
* ``POST /pause_generation`` (``{"mode": "abort" | "retract" | "in_place"}``), ``POST
  /continue_generation``, ``POST /flush_cache`` (empties the prefix cache; refused while requests run).

Prefix cache (engine.py item 8). Each prompt is keyed for the cache by its content: the rendered chat
(roles, text, each image or audio clip by its content hash), a completions prompt's text or token ids,
``/generate``'s ``input_ids``; a trace replay that sends only ``mimo_prompt_tokens`` names its shared
segments in ``"mimo_prefix": [{"id": "system-3", "tokens": 2048}, …]``. With ``--enable-cache-report``
``usage.prompt_tokens_details.cached_tokens`` says how much of the prompt the cache supplied (otherwise
null, as in SGLang); ``/generate``'s ``meta_info.cached_tokens`` always does.

Media (media.py). Chat content parts ``image_url``, ``input_audio``, ``audio_url`` and ``video_url``
become prompt tokens and encoder time before the first prefill; a text-only checkpoint (MiMo-V2.5-Pro)
refuses them with 400.

Token counts. The simulated engine has no tokenizer. A prompt's length is estimated as one token per
4 characters of text (rounded up), plus 4 tokens per chat message and 3 for the assistant turn (the
chat template's markers). Clients that know the exact count — load generators replaying a trace — say
so: a completions ``prompt`` given as a list of token ids counts as its length, ``/generate`` takes
``input_ids``, and any generation body may carry the extension field ``"mimo_prompt_tokens": N``,
which wins. The output is always ``max_tokens`` tokens (``max_completion_tokens`` for chat;
``sampling_params.max_new_tokens`` for ``/generate``; 128 when absent, SGLang's default), with
``finish_reason`` ``"length"``.

Prefill/decode (``--disaggregation-mode prefill|decode``; ``disaggregation.py`` says what sglang-router
and SGLang do on the wire). A prefill server also runs the bootstrap server on ``--host``:
``--disaggregation-bootstrap-port``; a generation request must carry ``bootstrap_room`` (400 otherwise,
SGLang's message). It waits for the decode's handshake, computes the prompt (one output token, with
``max_new_tokens`` forced to 1 as SGLang does), holds the room "transferring" — and the prompt's KV in
its cache — for the plan's KV hand-over time of that prompt, and answers with that one token. A decode server takes
``bootstrap_host``, ``bootstrap_port`` (default: its own ``--disaggregation-bootstrap-port``) and
``bootstrap_room``; its scheduler admits the request by reserving the pages for its KV (the prealloc
queue; engine.py item 10), then it tells that bootstrap server and waits for the room's KV (the
transfer queue), then decodes from the prefill's token with no prefill compute, to ``max_tokens``. A
decode runs without prefix cache, as SGLang's does. Failures answer 500 with SGLang's messages.

Drain. SIGTERM (see ``__main__``) calls :meth:`SimulatedEngineServer.begin_drain`: ``/health`` answers
503 at once, new generation requests get 503 (SGLang itself keeps accepting them and relies on the
readiness probe and the router to stop traffic; refusing is the stricter reading), requests in flight
run to completion, then the server stops and the process exits 0. The worker's drain endpoint needs
nothing more: it watches ``sglang:num_running_reqs`` + ``sglang:num_queue_reqs`` fall to 0 on
``/metrics``, exactly as it would against SGLang, and sends SIGTERM when it wants the engine gone.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import math
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from mimo_operator.catalog import CHECKPOINTS, Checkpoint
from mimo_operator.planner_pd import KvTransfer
from mimo_worker import __version__
from mimo_worker.simengine.disaggregation import (
    BOOTSTRAP_TIMEOUT_ENV,
    WAITING_TIMEOUT_ENV,
    BootstrapRooms,
    PdError,
    PrefillLayout,
    RoomState,
    bootstrap_app,
    pd_timeout,
    receive_kv,
)
from mimo_worker.simengine.engine import (
    EngineLimits,
    PauseMode,
    Progress,
    ReplicaEngine,
    Request,
    RequestRejected,
    StepTimer,
    check_request,
)
from mimo_worker.simengine.media import ENCODER_PARAMS, MediaError, MediaItem, encoder_seconds, media_of
from mimo_worker.simengine.metrics import EngineMetrics, GroupTotals, PdQueues, empty_exposition
from mimo_worker.simengine.options import SimOptions
from mimo_worker.simengine.prefix import id_blocks, segment_blocks, text_blocks

__all__ = [
    "ModelClock",
    "ServerState",
    "SimulatedEngineServer",
    "chat_prompt_tokens",
    "dummy_health_app",
    "run_dummy_server",
    "run_server",
    "text_prompt_tokens",
]

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_FOR_REPLY = 3
DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's sampling default
HEALTH_CHECK_TIMEOUT = 20.0  # simulated seconds; SGLang's SGLANG_HEALTH_CHECK_TIMEOUT default
PROMPT_TOKENS_FIELD = "mimo_prompt_tokens"
# Extension: the prompt's shared leading segments for the prefix cache, [{"id": str, "tokens": int}, ...],
# for clients that send token counts instead of text (trace replays); the rest of the prompt is unique.
PREFIX_FIELD = "mimo_prefix"
# The scheduler may run ahead of the wall clock by this much (wall seconds) before it sleeps: sleeping
# for every sub-millisecond step at a high speedup would cost more than the steps.
MAX_LEAD_SECONDS = 0.002
# How far (wall seconds) the simulated timeline may trail the clock before it gives up and jumps.
MAX_LAG_SECONDS = 0.05
_FILLER = ("The", " simulated", " engine", " writes", " this", " text", " one", " token", " at", " a", " time.")


class ModelClock:
    """Simulated seconds since the clock was made: wall-clock time × ``speedup``."""

    def __init__(self, speedup: float = 1.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self.speedup = speedup
        self._monotonic = monotonic
        self._start = monotonic()

    def now(self) -> float:
        return (self._monotonic() - self._start) * self.speedup

    def wall(self, simulated_seconds: float) -> float:
        return simulated_seconds / self.speedup


class ServerState(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class BadRequest(ValueError):
    """A generation request the server refuses with 400 (OpenAI-style error body)."""


def text_prompt_tokens(text: str) -> int:
    """Estimated tokens of a text: one per :data:`CHARS_PER_TOKEN` characters, at least one."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def chat_prompt_tokens(messages: list[Any]) -> int:
    """Estimated prompt tokens of chat messages: their text, plus the chat template's markers."""
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object with 'role' and 'content'")
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
        elif content is not None:
            raise BadRequest("message content must be a string or a list of parts")
    return math.ceil(chars / CHARS_PER_TOKEN) + CHAT_TOKENS_PER_MESSAGE * len(messages) + CHAT_TOKENS_FOR_REPLY


def render_chat(messages: list[Any]) -> tuple[str, tuple[MediaItem, ...]]:
    """The chat as the prefix cache sees it (roles, text, each media item as its content hash spread over
    its tokens), and the media items in order."""
    text: list[str] = []
    media: list[MediaItem] = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object with 'role' and 'content'")
        text.append(f"<|{message.get('role')}|>")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if not isinstance(part, dict):
                raise BadRequest("each content part must be an object with a 'type'")
            try:
                item = media_of(part)
            except MediaError as error:
                raise BadRequest(str(error)) from None
            if item is None:
                text.append(str(part.get("text", "")))
            else:
                media.append(item)
                text.append(f"<{item.kind}:{item.key}>".ljust(item.tokens * CHARS_PER_TOKEN, "~"))
    return "".join(text), tuple(media)


def _prefix_segments(body: dict[str, Any]) -> tuple[tuple[str, int], ...] | None:
    value = body.get(PREFIX_FIELD)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, dict) and isinstance(v.get("id"), str) and isinstance(v.get("tokens"), int) for v in value
    ):
        raise BadRequest(f'{PREFIX_FIELD} must be a list of {{"id": string, "tokens": integer}}')
    return tuple((v["id"], v["tokens"]) for v in value)


def _filler(start: int, count: int) -> str:
    return "".join(_FILLER[(start + i) % len(_FILLER)] for i in range(count))


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return web.json_response(body, status=status)


def _int_field(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer")
    return value


@dataclass
class _Job:
    """One generation request between the scheduler loop and its HTTP handler."""

    rid: str
    streaming: bool
    counted: bool  # shows in the request metrics (health probes do not)
    queue: asyncio.Queue[Progress | None]  # None: aborted
    created: int
    request: Request | None = None

    @property
    def cached_tokens(self) -> int:
        return 0 if self.request is None else self.request.cached_tokens


@dataclass(frozen=True)
class _Generation:
    """A parsed generation request."""

    prompt_tokens: int
    max_new_tokens: int
    streaming: bool
    include_usage: bool
    # what the prefix cache keys the prompt by: named segments, else token ids, else the text
    segments: tuple[tuple[str, int], ...] | None = None
    ids: tuple[int, ...] | None = None
    text: str | None = None
    media: tuple[MediaItem, ...] = ()
    cache_report: bool = False  # --enable-cache-report: usage carries prompt_tokens_details


class SimulatedEngineServer:
    """One simulated SGLang server (node rank 0): the engine, its scheduler loop, its HTTP app."""

    def __init__(
        self,
        options: SimOptions,
        engine: ReplicaEngine,
        clock: ModelClock,
        *,
        extra_server_info: dict[str, Any] | None = None,
        kv_transfer: Callable[[int], KvTransfer] | None = None,
    ) -> None:
        self.options = options
        self.engine = engine
        self.clock = clock
        self.limits: EngineLimits = engine.limits
        self.mode = options.disaggregation_mode
        self.metrics = EngineMetrics(
            options.model_name,
            engine.group_limits,
            attention_dp=engine.attention_dp,
            tp_size=options.tp_size,
            ep_size=options.ep_size,
            disaggregation_mode=self.mode,
            nnodes=options.nnodes if options.mimo_metrics_per_node else 1,
        )
        if self.mode == "prefill" and kv_transfer is None:
            raise ValueError("a prefill server needs the plan's KV transfer arithmetic")
        self._kv_transfer = kv_transfer
        self.rooms = BootstrapRooms()
        self._decode_prealloc = 0
        self._decode_transfer = 0
        self._admissions: dict[str, asyncio.Event] = {}  # decode requests waiting for their KV slots
        self._session: aiohttp.ClientSession | None = None
        self.state = ServerState.STARTING
        self._extra_info = extra_server_info or {}
        self._jobs: dict[str, _Job] = {}
        self._in_flight = 0
        self._work = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopped = asyncio.Event()
        self._last_token_at = -math.inf
        self._timeline = clock.now()  # the simulated replica's time: the end of the step in flight
        self._idle = True
        self._tasks: list[asyncio.Task[None]] = []
        self.app = self._make_app()

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler loop and the simulated load (``/health`` 503 until it is done)."""
        self._tasks.append(asyncio.create_task(self._scheduler_loop(), name="simengine-scheduler"))
        self._tasks.append(asyncio.create_task(self._load(), name="simengine-startup"))

    async def _load(self) -> None:
        await asyncio.sleep(self.clock.wall(self.options.mimo_startup_seconds))
        if self.state is ServerState.STARTING:
            self.state = ServerState.SERVING
            log.info("simulated engine for %s is serving", self.options.model_name)

    def begin_drain(self) -> None:
        """SIGTERM: stop admitting, let what is in flight finish, then stop."""
        if self.state in (ServerState.DRAINING, ServerState.STOPPED):
            return
        log.info("draining: %d request(s) in flight", self._in_flight)
        self.state = ServerState.DRAINING
        self._check_drained()

    def stop_now(self) -> None:
        """Stop without waiting for requests in flight (SIGINT): they end as aborted."""
        self.state = ServerState.STOPPED
        for job in self._jobs.values():
            job.queue.put_nowait(None)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once drained (or stopped). Raises if the scheduler loop failed."""
        drained = asyncio.create_task(self._drained.wait())
        stopped = asyncio.create_task(self._stopped.wait())
        scheduler = self._tasks[0]
        await asyncio.wait({drained, stopped, scheduler}, return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        stopped.cancel()
        if scheduler.done() and not scheduler.cancelled() and scheduler.exception() is not None:
            raise RuntimeError("the simulated scheduler failed") from scheduler.exception()
        self.state = ServerState.STOPPED

    def bootstrap_app(self) -> web.Application:
        """A prefill server's bootstrap server."""
        attention_tp = max(self.options.tp_size // self.engine.attention_dp, 1)
        layout = PrefillLayout(
            attn_tp_size=attention_tp,
            dp_size=self.engine.attention_dp,
            page_size=self.limits.page_size,
            kv_cache_dtype=self.options.kv_cache_dtype or "auto",
            prefill_http_port=self.options.port,
            rank_ip=self.options.host,
        )
        return bootstrap_app(self.rooms, layout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _check_drained(self) -> None:
        if self.state is ServerState.DRAINING and self._in_flight == 0:
            log.info("drained: no request in flight")
            self._drained.set()

    # ---- the scheduler in real time ----------------------------------------------------------------

    async def _scheduler_loop(self) -> None:
        """Run the engine against the clock: plan a step, sleep until its end, apply it.

        Steps follow each other on the simulated timeline: the next starts where the last ended, even
        if the event loop woke a little late — otherwise every wake-up delay would be capacity lost. A
        request that arrives meanwhile is stamped no later than that timeline (see :meth:`_arrival`).
        Only when the loop falls more than :data:`MAX_LAG_SECONDS` behind (a machine too loaded for the
        speedup) does the timeline jump to the clock, and the replica serves less than the model says.
        """
        while True:
            now = self.clock.now()
            if now - self._timeline > self.clock.speedup * MAX_LAG_SECONDS:
                self._timeline = now
            batch = self.engine.next_batch(self._timeline)
            if self._admissions:
                self._note_admissions()
            if batch is None:
                self._work.clear()
                self._idle = True
                await self._work.wait()
                self._idle = False
                self._timeline = self.clock.now()
                continue
            self._timeline = batch.end
            lead = self.clock.wall(batch.end - self.clock.now())
            await asyncio.sleep(lead if lead > MAX_LEAD_SECONDS else 0)
            self._dispatch(self.engine.complete(batch), batch.end)

    def _note_admissions(self) -> None:
        """Wake the decode requests the scheduler has just admitted (their KV slots are reserved)."""
        for rid, event in list(self._admissions.items()):
            job = self._jobs.get(rid)
            if job is None or job.request is None or job.request.admitted_at is not None:
                event.set()
                del self._admissions[rid]

    def _arrival(self) -> float:
        """A new request's arrival time: now, but never after the end of the step in flight."""
        now = self.clock.now()
        return now if self._idle else min(now, self._timeline)

    def _dispatch(self, progress: list[Progress], now: float) -> None:
        if progress:
            self._last_token_at = now
        for item in progress:
            job = self._jobs.get(item.request.rid)
            if job is None:
                continue
            if job.counted:
                self.metrics.observe(item, job.streaming)
            job.queue.put_nowait(item)

    def _submit(
        self,
        prompt_tokens: int,
        max_new_tokens: int,
        streaming: bool,
        counted: bool = True,
        gen: _Generation | None = None,
        *,
        transferred: bool = False,
        hold_kv: bool = False,
        awaiting_kv: bool = False,
        group: int | None = None,
        arrival: float | None = None,
    ) -> _Job:
        rid = uuid.uuid4().hex
        blocks: tuple[int, ...] = ()
        encoder = 0.0
        if gen is not None:
            blocks = self._prompt_blocks(gen, rid)
            encoder = 0.0 if transferred or awaiting_kv else self._encoder_seconds(gen.media)
        now = self._arrival()
        request = self.engine.submit(
            rid,
            prompt_tokens,
            max_new_tokens,
            now if arrival is None else min(arrival, now),
            blocks=blocks,
            encoder_seconds=encoder,
            transferred=transferred,
            hold_kv=hold_kv,
            awaiting_kv=awaiting_kv,
            group=group,
        )
        job = _Job(rid, streaming, counted, asyncio.Queue(), int(time.time()), request)
        self._jobs[rid] = job
        self._work.set()
        return job

    def _prompt_blocks(self, gen: _Generation, rid: str) -> tuple[int, ...]:
        page = self.engine.group_limits.page_size
        if gen.segments is not None:
            return segment_blocks(gen.segments, gen.prompt_tokens, page, rid)
        if gen.ids is not None:
            return id_blocks(gen.ids, page)
        if gen.text is not None:
            return text_blocks(gen.text, page)
        return ()

    def _encoder_seconds(self, media: tuple[MediaItem, ...]) -> float:
        """The encoders' time for a request's media on this replica (media.py): spread over every GPU
        with ``--mm-enable-dp-encoder``, else over one attention-TP group."""
        if not media:
            return 0.0
        gpus = int(getattr(self.engine.timer, "gpus", 0) or self.options.tp_size)
        flops = float(getattr(self.engine.timer, "flops", 0.0) or 0.0)
        attention_tp = max(self.options.tp_size // self.engine.attention_dp, 1)
        encoder_gpus = gpus if self.options.mm_enable_dp_encoder else attention_tp
        entry = self._checkpoint()
        params: dict[str, int] = (
            {k: e.params for e in entry.encoders for k in e.modalities} if entry and entry.encoders else {}
        )
        return encoder_seconds(
            list(media), gpus=gpus, flops_per_gpu=flops, encoder_gpus=encoder_gpus, params=params or ENCODER_PARAMS
        )

    def _checkpoint(self) -> Checkpoint | None:
        """The catalog entry of the served model (by its Hugging Face id at the end of --model-path)."""
        path = (self.options.model_path or "").rstrip("/")
        return next((c for c in CHECKPOINTS.values() if path.endswith(c.hf_id)), None)

    def _refuse_media(self, gen: _Generation) -> web.Response | None:
        """A text-only checkpoint (MiMo-V2.5-Pro) refuses images, audio and video, as SGLang does for a
        model without a multimodal processor: 400 in the OpenAI error shape."""
        if not gen.media:
            return None
        entry = self._checkpoint()
        if entry is None or entry.multimodal:
            return None
        kinds = ", ".join(sorted({m.kind for m in gen.media}))
        return _error(
            400,
            f"{entry.hf_id} is a text-only model: it does not accept {kinds} input. "
            "Send text content only, or use a multimodal checkpoint (XiaomiMiMo/MiMo-V2.5).",
            "BadRequestError",
        )

    def _finish_job(self, job: _Job, completed: bool) -> None:
        self._jobs.pop(job.rid, None)
        if not completed and self.engine.abort(job.rid, self.clock.now()) is not None and job.counted:
            self.metrics.observe_abort(job.streaming)

    # ---- HTTP --------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health_generate)
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/model_info", self.model_info)
        app.router.add_get("/get_model_info", self.model_info)
        app.router.add_get("/server_info", self.server_info)
        app.router.add_get("/get_server_info", self.server_info)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/pause_generation", self.pause_generation)
        app.router.add_post("/continue_generation", self.continue_generation)
        app.router.add_post("/flush_cache", self.flush_cache)
        if self.options.enable_metrics:
            app.router.add_get("/metrics", self.metrics_endpoint)
            app.router.add_get(NODE_METRICS_PATH + "/{rank}", self.node_metrics_endpoint)
        return app

    def _unavailable(self) -> web.Response | None:
        if self.state is ServerState.SERVING:
            return None
        reason = {
            ServerState.STARTING: "The server is starting (loading weights).",
            ServerState.DRAINING: "The server is shutting down.",
            ServerState.STOPPED: "The server is shutting down.",
        }[self.state]
        return _error(503, reason, "ServiceUnavailableError")

    async def health(self, request: web.Request) -> web.Response:
        unavailable = self._unavailable()
        return unavailable if unavailable is not None else web.Response(status=200)

    async def health_generate(self, request: web.Request) -> web.Response:
        unavailable = self._unavailable()
        if unavailable is not None:
            return unavailable
        now = self.clock.now()
        if not self.engine.paused and now - self._last_token_at < HEALTH_CHECK_TIMEOUT:
            return web.Response(status=200)
        job = self._submit(1, 1, streaming=False, counted=False)
        self._in_flight += 1
        completed = False
        try:
            async with asyncio.timeout(self.clock.wall(HEALTH_CHECK_TIMEOUT)):
                while not completed:
                    item = await job.queue.get()
                    if item is None:
                        break
                    completed = item.finished
        except TimeoutError:
            pass
        finally:
            self._finish_job(job, completed)
            self._in_flight -= 1
            self._check_drained()
        return web.Response(status=200) if completed else web.Response(status=503)

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.options.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": self.options.model_path or self.options.model_name,
            "max_model_len": self.limits.context_length,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_path": self.options.model_path or self.options.model_name,
                "tokenizer_path": self.options.model_path or self.options.model_name,
                "is_generation": True,
                "served_model_name": self.options.model_name,
            }
        )

    async def server_info(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        group = self.engine.group_limits
        info: dict[str, Any] = dict(self.options.server_args())
        info.update(
            {
                # the replica-wide limits, as the command line gave them
                "context_length": self.limits.context_length,
                "max_running_requests": self.limits.max_running_requests,
                "chunked_prefill_size": self.limits.chunked_prefill_size,
                "page_size": self.limits.page_size,
                # SGLang reports the scheduler's (one attention-DP group's) pool here
                "max_total_num_tokens": group.max_total_num_tokens,
                "max_total_num_tokens_swa": group.swa_max_tokens,
                "sliding_window_size": group.swa_window,
                "max_req_input_len": group.max_request_tokens - 1,
                "internal_states": [
                    {
                        "dp_rank": rank,
                        "memory_usage": {"token_capacity": group.max_total_num_tokens},
                        "last_gen_throughput": stats.gen_throughput,
                        "num_running_reqs": stats.num_running_reqs,
                        "num_queue_reqs": stats.num_queue_reqs,
                        "token_usage": stats.token_usage,
                    }
                    for rank, stats in enumerate(self.engine.group_stats(now))
                ],
                "version": f"mimo-simulated-{__version__}",
                "simulated": {
                    "state": self.state.value,
                    "speedup": self.clock.speedup,
                    "attention_dp_groups": self.engine.attention_dp,
                    "replica_max_total_num_tokens": self.limits.max_total_num_tokens,
                    **self._extra_info,
                },
            }
        )
        return web.json_response(info)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics_of(0), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def node_metrics_endpoint(self, request: web.Request) -> web.Response:
        """What node rank ``{rank}`` ≥ 1 shows at its own /metrics (its dummy server asks here): the schedulers
        of the attention-DP groups it hosts, which this process simulates for the whole gang."""
        try:
            rank = int(request.match_info["rank"])
        except ValueError:
            return web.json_response({"error": "node rank must be a number"}, status=400)
        if not 0 <= rank < max(self.options.nnodes, 1):
            return web.json_response({"error": f"no node rank {rank} in --nnodes {self.options.nnodes}"}, status=404)
        return web.Response(body=self._metrics_of(rank), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _metrics_of(self, node: int) -> bytes:
        now = self.clock.now()
        if self.mode in ("prefill", "decode"):
            self.metrics.set_pd_queues(self._pd_queues())
        if self.state is ServerState.STARTING:
            self.metrics.update(None)
        else:
            self.metrics.update(
                [
                    (
                        group.stats(now),
                        GroupTotals(
                            retracted=group.counters.retracted_requests,
                            prefill=group.counters.prefill_tokens_computed,
                            decode=group.counters.generation_tokens,
                            cached=group.counters.prefill_tokens_cached,
                        ),
                    )
                    for group in self.engine.groups
                ]
            )
        return self.metrics.render(node)

    async def pause_generation(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, required=False)
        if isinstance(body, web.Response):
            return body
        try:
            mode = PauseMode(body.get("mode", PauseMode.ABORT.value))
        except ValueError:
            return _error(400, "mode must be one of abort, retract, in_place", "BadRequestError")
        for dropped in self.engine.pause(mode, self.clock.now()):
            job = self._jobs.get(dropped.rid)
            if job is not None:
                if job.counted:
                    self.metrics.observe_abort(job.streaming)
                job.queue.put_nowait(None)
        return web.json_response({"success": True, "message": f"generation paused ({mode.value})"})

    async def continue_generation(self, request: web.Request) -> web.Response:
        self.engine.resume()
        self._work.set()
        return web.json_response({"success": True, "message": "generation continued"})

    async def flush_cache(self, request: web.Request) -> web.Response:
        if self.engine.flush_cache():
            return web.Response(
                text="Cache flushed.\nPlease check backend logs for more details. (When there are "
                "running or waiting requests, the operation will not be performed.)\n"
            )
        return web.Response(status=400, text="Cache not flushed: requests are running or waiting.\n")

    # ---- generation --------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_generation(request, _ChatFormat(self.options.model_name))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_generation(request, _CompletionFormat(self.options.model_name))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_generation(request, _NativeFormat())

    async def _json_body(self, request: web.Request, required: bool = True) -> dict[str, Any] | web.Response:
        if not request.can_read_body:
            return {} if not required else _error(400, "a JSON body is required", "BadRequestError")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body is not valid JSON", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "BadRequestError")
        return body

    async def _serve_generation(self, request: web.Request, fmt: _Format) -> web.StreamResponse:
        unavailable = self._unavailable()
        if unavailable is not None:
            return unavailable
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            gen = fmt.parse(body)
            refused = self._refuse_media(gen)
            if refused is not None:
                return refused
            gen = dataclasses.replace(gen, cache_report=self.options.enable_cache_report)
            if self.mode == "prefill":
                return await self._serve_prefill(request, body, gen, fmt)
            if self.mode == "decode":
                return await self._serve_decode(request, body, gen, fmt)
            job = self._submit(gen.prompt_tokens, gen.max_new_tokens, gen.streaming, gen=gen)
        except (BadRequest, RequestRejected) as error:
            return _error(400, str(error), "BadRequestError")
        self._in_flight += 1
        completed = False
        try:
            if gen.streaming:
                response, completed = await self._stream(request, job, gen, fmt)
            else:
                response, completed = await self._respond(request, job, gen, fmt)
            return response
        finally:
            self._finish_job(job, completed)
            self._in_flight -= 1
            self._check_drained()

    # ---- prefill/decode ------------------------------------------------------------------------------

    def _pd_queues(self) -> PdQueues:
        return PdQueues(
            prefill_bootstrap=self.rooms.count(RoomState.BOOTSTRAPPING),
            prefill_inflight=self.rooms.count(RoomState.TRANSFERRING),
            decode_prealloc=self._decode_prealloc,
            decode_transfer=self._decode_transfer,
        )

    async def _serve_prefill(
        self, request: web.Request, body: dict[str, Any], gen: _Generation, fmt: _Format
    ) -> web.StreamResponse:
        """The prefill side: wait for the decode's handshake, compute the prompt, hand its KV over, answer
        with the one token it sampled."""
        number = _bootstrap_room(body)
        if number is None:
            return _missing_room()
        # refused on both sides before any hand-over, as SGLang's tokenizer refuses it on both servers
        check_request(self.engine.group_limits, gen.prompt_tokens, gen.max_new_tokens)
        room = self.rooms.open(number)
        if room is None:
            return _error(400, f"bootstrap_room {number} is already in use by another request", "BadRequestError")
        self._in_flight += 1
        start = self.clock.now()
        held: str | None = None  # the request whose KV the engine keeps while it transfers
        try:
            timeout = pd_timeout(BOOTSTRAP_TIMEOUT_ENV)
            try:
                async with asyncio.timeout(self.clock.wall(timeout)):
                    await room.handshake.wait()
            except TimeoutError:
                message = f"Request {number} timed out after {self.clock.now() - start:.1f}s in KVPoll.Bootstrapping"
                room.set_state(RoomState.FAILED, message)
                self.metrics.count_pd_failure("bootstrap")
                return _error(500, message, "InternalServerError")
            bootstrapped = self.clock.now()
            room.set_state(RoomState.PREFILLING)
            # SGLang's prefill server computes the first output token only (max_new_tokens = 1), and keeps
            # the prompt's KV until it has moved
            job = self._submit(gen.prompt_tokens, 1, False, gen=gen, group=number, hold_kv=True)
            held = job.rid
            completed = False
            try:
                while not completed:
                    item = await job.queue.get()
                    if item is None:
                        room.set_state(RoomState.FAILED, "the prefill request was aborted")
                        return _error(503, "The request was aborted (/pause_generation).", "AbortedError")
                    completed = item.finished
            finally:
                self._finish_job(job, completed)
            transfer = self._transfer(gen.prompt_tokens)
            room.prompt_tokens = gen.prompt_tokens
            room.transfer_seconds = transfer.seconds
            room.total_bytes = transfer.total_bytes
            room.set_state(RoomState.TRANSFERRING)
            await asyncio.sleep(self.clock.wall(transfer.seconds))
            room.set_state(RoomState.SUCCESS)
            group = job.request.group if job.request is not None else 0
            self.metrics.observe_kv_transfer(group, transfer.seconds, transfer.total_bytes)
            self.metrics.observe_kv_bootstrap(group, bootstrapped - start, 0.0)
            return await self._answer(request, job, gen, fmt, tokens=1)
        finally:
            if room.state not in (RoomState.SUCCESS, RoomState.FAILED):
                # the prefill request went away (its client disconnected): the decode must not wait for it
                room.set_state(RoomState.FAILED, f"the prefill request of room {number} was aborted")
            if held is not None:
                self.engine.release(held, self.clock.now())
                self._work.set()  # the freed KV may admit a waiting request
            self.rooms.close(number)
            self._in_flight -= 1
            self._check_drained()

    def _transfer(self, prompt_tokens: int) -> KvTransfer:
        assert self._kv_transfer is not None  # checked in __init__
        return self._kv_transfer(prompt_tokens)

    async def _serve_decode(
        self, request: web.Request, body: dict[str, Any], gen: _Generation, fmt: _Format
    ) -> web.StreamResponse:
        """The decode side: reserve the request's KV slots, then wait for the room's KV on the prefill's
        bootstrap server, then decode."""
        number = _bootstrap_room(body)
        host = body.get("bootstrap_host")
        if number is None or not isinstance(host, str) or not host:
            return _missing_room()
        port = body.get("bootstrap_port")
        if port is None:
            port = self.options.disaggregation_bootstrap_port  # SGLang's scheduler fills it in the same way
        if isinstance(port, bool) or not isinstance(port, int):
            return _error(400, "bootstrap_port must be an integer", "BadRequestError")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=2))
        arrival = self.clock.now()
        # the prealloc queue: the scheduler admits the request by reserving the pages its KV lands in
        job = self._submit(
            gen.prompt_tokens, gen.max_new_tokens, gen.streaming, gen=gen, awaiting_kv=True, arrival=arrival
        )
        admitted = self._admissions[job.rid] = asyncio.Event()
        self._work.set()
        self._in_flight += 1
        self._decode_prealloc += 1
        stage = "prealloc"
        completed = False
        timeout = pd_timeout(WAITING_TIMEOUT_ENV)
        try:
            try:
                try:
                    async with asyncio.timeout(self.clock.wall(timeout)):
                        await admitted.wait()
                except TimeoutError:
                    raise PdError(
                        "bootstrap",
                        f"Request {number} timed out after {self.clock.now() - arrival:.1f}s in KVPoll.Bootstrapping "
                        "(no KV slots free on the decode server)",
                    ) from None
                reserved = self.clock.now()
                self._decode_prealloc -= 1
                self._decode_transfer += 1
                stage = "transfer"
                receipt = await receive_kv(
                    self._session,
                    host,
                    port,
                    number,
                    now=self.clock.now,
                    wall=self.clock.wall,
                    give_up_after=max(timeout - (reserved - arrival), 0.0),
                )
            except PdError as error:
                self.metrics.count_pd_failure(error.stage)
                kind = "handshake" if error.stage == "bootstrap" else "transfer"
                message = (
                    f"Decode {kind} failed for request rank=0 decode_req.req.rid='{job.rid}' "
                    f"decode_req.req.bootstrap_room={number} with exception {error}"
                )
                log.warning("%s", message)
                return _error(500, message, "InternalServerError")
            finally:
                self._admissions.pop(job.rid, None)
                if stage == "prealloc":
                    self._decode_prealloc -= 1
                else:
                    self._decode_transfer -= 1
            group = job.request.group if job.request is not None else 0
            self.metrics.observe_kv_bootstrap(group, receipt.handshake_after, reserved - arrival)
            self.engine.kv_arrived(job.rid)
            self._work.set()
            if gen.streaming:
                response, completed = await self._stream(request, job, gen, fmt)
            else:
                response, completed = await self._respond(request, job, gen, fmt)
            return response
        finally:
            self._finish_job(job, completed)
            self._in_flight -= 1
            self._check_drained()

    async def _answer(
        self, request: web.Request, job: _Job, gen: _Generation, fmt: _Format, tokens: int
    ) -> web.StreamResponse:
        """A finished request's whole answer of ``tokens`` tokens, as one body or as a stream."""
        if not gen.streaming:
            return web.json_response(fmt.whole(job, gen, _filler(0, tokens), tokens))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for chunk in fmt.opening(job):
            await _send_event(response, chunk)
        await _send_event(response, fmt.delta(job, _filler(0, tokens), 0, tokens))
        for chunk in fmt.closing(job, gen, "length", tokens):
            await _send_event(response, chunk)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _respond(
        self, request: web.Request, job: _Job, gen: _Generation, fmt: _Format
    ) -> tuple[web.StreamResponse, bool]:
        tokens = 0
        while True:
            item = await job.queue.get()
            if item is None:
                return _error(503, "The request was aborted (/pause_generation).", "AbortedError"), False
            tokens += item.new_tokens
            if item.finished:
                break
        response = web.json_response(fmt.whole(job, gen, _filler(0, tokens), tokens))
        # send it before the request counts as done, so a drain never cuts a response short
        await response.prepare(request)
        await response.write_eof()
        return response, True

    async def _stream(
        self, request: web.Request, job: _Job, gen: _Generation, fmt: _Format
    ) -> tuple[web.StreamResponse, bool]:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for chunk in fmt.opening(job):
            await _send_event(response, chunk)
        sent = 0
        finish_reason = "length"
        while True:
            items = [await job.queue.get()]
            while not job.queue.empty():
                items.append(job.queue.get_nowait())
            new = sum(i.new_tokens for i in items if i is not None)
            if new:
                await _send_event(response, fmt.delta(job, _filler(sent, new), sent, new))
                sent += new
            if any(i is None for i in items):
                finish_reason = "abort"
                break
            if any(i.finished for i in items if i is not None):
                break
        for chunk in fmt.closing(job, gen, finish_reason, sent):
            await _send_event(response, chunk)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response, finish_reason != "abort"


def _bootstrap_room(body: dict[str, Any]) -> int | None:
    room = body.get("bootstrap_room")
    return room if isinstance(room, int) and not isinstance(room, bool) else None


def _missing_room() -> web.Response:
    # SGLang's scheduler refuses it in the same words (managers/scheduler.py)
    return _error(
        400,
        f"Invalid request: Disaggregated request received without bootstrap room id. req.rid='{uuid.uuid4().hex}'",
        "BadRequestError",
    )


async def _send_event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


# ---- wire formats ------------------------------------------------------------------------------------


class _Format(abc.ABC):
    """How one API spells a generation request and its answer."""

    @abc.abstractmethod
    def parse(self, body: dict[str, Any]) -> _Generation: ...

    @abc.abstractmethod
    def whole(self, job: _Job, gen: _Generation, text: str, tokens: int) -> dict[str, Any]: ...

    def opening(self, job: _Job) -> list[dict[str, Any]]:
        return []

    @abc.abstractmethod
    def delta(self, job: _Job, text: str, sent: int, new: int) -> dict[str, Any]: ...

    @abc.abstractmethod
    def closing(self, job: _Job, gen: _Generation, finish_reason: str, sent: int) -> list[dict[str, Any]]: ...


def _usage(gen: _Generation, job: _Job, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": gen.prompt_tokens + completion_tokens,
        # SGLang fills this only with --enable-cache-report
        "prompt_tokens_details": {"cached_tokens": job.cached_tokens} if gen.cache_report else None,
    }


def _openai_common(
    body: dict[str, Any],
    prompt_tokens: int,
    *,
    chat: bool,
    text: str | None = None,
    ids: tuple[int, ...] | None = None,
    media: tuple[MediaItem, ...] = (),
) -> _Generation:
    if (_int_field(body, "n") or 1) != 1:
        raise BadRequest("the simulated engine generates one choice per request (n must be 1)")
    max_tokens = _int_field(body, "max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_NEW_TOKENS
    explicit = _int_field(body, PROMPT_TOKENS_FIELD)
    stream_options = body.get("stream_options") or {}
    return _Generation(
        prompt_tokens=explicit if explicit is not None else prompt_tokens,
        max_new_tokens=max_tokens,
        streaming=bool(body.get("stream", False)),
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        segments=_prefix_segments(body),
        ids=ids,
        text=text,
        media=media,
    )


class _ChatFormat(_Format):
    def __init__(self, model: str) -> None:
        self.model = model

    def parse(self, body: dict[str, Any]) -> _Generation:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        text, media = render_chat(messages)
        tokens = chat_prompt_tokens(messages) + sum(m.tokens for m in media)
        return _openai_common(body, tokens, chat=True, text=text, media=media)

    def _chunk(self, job: _Job, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": job.rid,
            "object": "chat.completion.chunk",
            "created": job.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def whole(self, job: _Job, gen: _Generation, text: str, tokens: int) -> dict[str, Any]:
        return {
            "id": job.rid,
            "object": "chat.completion",
            "created": job.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": None},
                    "logprobs": None,
                    "finish_reason": "length",
                    "matched_stop": None,
                }
            ],
            "usage": _usage(gen, job, tokens),
        }

    def opening(self, job: _Job) -> list[dict[str, Any]]:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return [self._chunk(job, [choice])]

    def delta(self, job: _Job, text: str, sent: int, new: int) -> dict[str, Any]:
        return self._chunk(job, [{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])

    def closing(self, job: _Job, gen: _Generation, finish_reason: str, sent: int) -> list[dict[str, Any]]:
        last = self._chunk(job, [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}])
        chunks = [last]
        if gen.include_usage:
            chunks.append(self._chunk(job, [], usage=_usage(gen, job, sent)))
        return chunks


class _CompletionFormat(_Format):
    def __init__(self, model: str) -> None:
        self.model = model

    def parse(self, body: dict[str, Any]) -> _Generation:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return _openai_common(body, text_prompt_tokens(prompt), chat=False, text=prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            # token ids: the exact count
            return _openai_common(body, len(prompt), chat=False, ids=tuple(prompt))
        raise BadRequest("prompt must be a string or a list of token ids (one prompt per request)")

    def _body(self, job: _Job, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": job.rid,
            "object": "text_completion",
            "created": job.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def whole(self, job: _Job, gen: _Generation, text: str, tokens: int) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "matched_stop": None}
        return self._body(job, [choice], usage=_usage(gen, job, tokens))

    def delta(self, job: _Job, text: str, sent: int, new: int) -> dict[str, Any]:
        return self._body(job, [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}])

    def closing(self, job: _Job, gen: _Generation, finish_reason: str, sent: int) -> list[dict[str, Any]]:
        chunks = [self._body(job, [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}])]
        if gen.include_usage:
            chunks.append(self._body(job, [], usage=_usage(gen, job, sent)))
        return chunks


class _NativeFormat(_Format):
    """SGLang's own ``/generate``: ``text`` or ``input_ids``, ``sampling_params``, ``meta_info``."""

    def parse(self, body: dict[str, Any]) -> _Generation:
        text, ids = body.get("text"), body.get("input_ids")
        if isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids):
            tokens = len(ids)
        elif isinstance(text, str):
            tokens = text_prompt_tokens(text)
        else:
            raise BadRequest("give text (a string) or input_ids (a list of token ids), one prompt per request")
        params = body.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise BadRequest("sampling_params must be an object")
        max_new = _int_field(params, "max_new_tokens")
        explicit = _int_field(body, PROMPT_TOKENS_FIELD)
        return _Generation(
            prompt_tokens=explicit if explicit is not None else tokens,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new,
            streaming=bool(body.get("stream", False)),
            include_usage=False,
            segments=_prefix_segments(body),
            ids=tuple(ids) if isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids) else None,
            text=text if isinstance(text, str) else None,
        )

    def _meta(self, job: _Job, gen: _Generation, tokens: int, finish: str | None) -> dict[str, Any]:
        reason = None if finish is None else {"type": finish, "length": tokens}
        return {
            "id": job.rid,
            "finish_reason": reason,
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": tokens,
            "cached_tokens": job.cached_tokens,
        }

    def whole(self, job: _Job, gen: _Generation, text: str, tokens: int) -> dict[str, Any]:
        return {"text": text, "meta_info": self._meta(job, gen, tokens, "length")}

    def delta(self, job: _Job, text: str, sent: int, new: int) -> dict[str, Any]:
        # SGLang's native stream carries the text so far in every chunk
        return {"text": _filler(0, sent + new), "meta_info": {"id": job.rid, "completion_tokens": sent + new}}

    def closing(self, job: _Job, gen: _Generation, finish_reason: str, sent: int) -> list[dict[str, Any]]:
        return [{"text": _filler(0, sent), "meta_info": self._meta(job, gen, sent, finish_reason)}]


# ---- node ranks >= 1 ---------------------------------------------------------------------------------


# Where node 0's simulated engine serves another node's scheduler metrics (not an SGLang endpoint).
NODE_METRICS_PATH = "/mimo/metrics/node"


def dummy_health_app(enable_metrics: bool, node_metrics: str | None = None) -> web.Application:
    """What SGLang runs on node ranks ≥ 1: a health server that always answers 200, and no API; with metrics,
    the schedulers of this node's attention-DP groups. Node 0's process simulates every group, so this node's
    series come from it (``node_metrics``: its URL for this node); 503 while it cannot be asked."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(request: web.Request) -> web.Response:
        if node_metrics is None:
            return web.Response(body=empty_exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
        try:
            async with aiohttp.ClientSession() as session, session.get(
                node_metrics, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                if response.status == 200:
                    return web.Response(body=await response.read(), headers={"Content-Type": CONTENT_TYPE_LATEST})
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        return web.json_response({"error": "node rank 0 cannot be asked for this node's metrics"}, status=503)

    app = web.Application()
    for path in ("/health", "/health_generate", "/ping"):
        app.router.add_get(path, ok)
    if enable_metrics:
        app.router.add_get("/metrics", metrics)
    return app


# ---- running it --------------------------------------------------------------------------------------

# How long SIGINT waits for open connections before it cuts them (wall seconds).
SHUTDOWN_TIMEOUT_SECONDS = 5.0


async def run_server(
    options: SimOptions,
    limits: EngineLimits,
    timer: StepTimer,
    *,
    attention_dp: int = 1,
    extra_server_info: dict[str, Any] | None = None,
    ready: Callable[[str], None] | None = None,
    kv_transfer: Callable[[int], KvTransfer] | None = None,
) -> int:
    """Serve until drained (SIGTERM) or stopped (SIGINT); the process's exit code. A prefill server also
    serves its bootstrap server (``kv_transfer``: the plan's hand-over time of a prompt)."""
    clock = ModelClock(options.mimo_speedup)
    # SGLang turns the radix cache off on a decode server
    prefix_cache = not options.disable_radix_cache and options.disaggregation_mode != "decode"
    engine = ReplicaEngine(limits, timer, attention_dp=attention_dp, prefix_cache=prefix_cache)
    server = SimulatedEngineServer(options, engine, clock, extra_server_info=extra_server_info, kv_transfer=kv_transfer)
    runner = web.AppRunner(
        server.app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS
    )
    await runner.setup()
    bootstrap: web.AppRunner | None = None
    try:
        site = web.TCPSite(runner, options.host, options.port, reuse_address=True)
        await site.start()
        if options.disaggregation_mode == "prefill":
            bootstrap = web.AppRunner(server.bootstrap_app(), access_log=None)
            await bootstrap.setup()
            port = options.disaggregation_bootstrap_port
            await web.TCPSite(bootstrap, options.host, port, reuse_address=True).start()
            log.info("bootstrap server on http://%s", _address(bootstrap))
        await server.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, server.begin_drain)
        loop.add_signal_handler(signal.SIGINT, server.stop_now)
        address = _address(runner)
        log.info(
            "simulated SGLang engine for %s on http://%s (KV %d tokens, max %d running, speedup %g)",
            options.model_name,
            address,
            limits.max_total_num_tokens,
            limits.max_running_requests,
            options.mimo_speedup,
        )
        if ready is not None:
            ready(address)
        await server.wait_stopped()
    finally:
        await server.close()
        if bootstrap is not None:
            await bootstrap.cleanup()
        await runner.cleanup()
    return 0


async def run_dummy_server(options: SimOptions, ready: Callable[[str], None] | None = None) -> int:
    """Node ranks ≥ 1: the health server SGLang runs there, until SIGTERM or SIGINT."""
    node_metrics = None
    if options.dist_init_addr:
        head = options.dist_init_addr.rsplit(":", 1)[0].strip("[]")
        host = f"[{head}]" if ":" in head else head
        node_metrics = f"http://{host}:{options.port}{NODE_METRICS_PATH}/{options.node_rank}"
    runner = web.AppRunner(dummy_health_app(options.enable_metrics, node_metrics), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    try:
        await web.TCPSite(runner, options.host, options.port, reuse_address=True).start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        address = _address(runner)
        log.info("node rank %d: dummy health server on http://%s", options.node_rank, address)
        if ready is not None:
            ready(address)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def _address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"{host}:{port}"
