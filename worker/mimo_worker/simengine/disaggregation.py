"""Prefill/decode disaggregation for the simulated engine: the bootstrap rooms, the bootstrap server, the
decode side's wait for a room's KV.

What sglang-router 0.3.2 does in ``--pd-disaggregation`` mode (``sgl-router/src/routers/http/pd_router.rs``,
``execute_dual_dispatch_internal``; the wheel's ``PDRouter::inject_bootstrap_into_value``): it picks one
prefill and one decode worker, adds ``bootstrap_host`` (the prefill URL's host), ``bootstrap_port`` (the
port given with ``--prefill URL PORT``, or the prefill pod's ``sglang.ai/bootstrap-port`` annotation with
service discovery) and a random ``bootstrap_room`` to the JSON body, and POSTs the same body to both at
once. It answers with the decode server's response (streamed through as it comes); it waits for the
prefill's response only when the request asks for logprobs (to merge the prompt's), and otherwise drains it
in the background. It registers a worker after ``GET /health``, ``GET /server_info`` and ``GET /model_info``.

What SGLang 0.5.23 does with such a request (``sglang/srt/disaggregation/``):

* the **prefill** server keeps a *bootstrap server* on ``--host``:``--disaggregation-bootstrap-port``
  (``common/conn.py``, ``CommonKVBootstrapServer``: ``PUT``/``GET /route``, ``POST /register_dp_rank``,
  ``POST /query_dp_ranks``, ``GET /health``). A request waits in the *bootstrap queue* until the decode
  server, having reserved KV slots, hands it their addresses; is prefilled (``max_new_tokens`` forced
  to 1: the first output token); waits in the *inflight queue* while its KV moves; then answers the HTTP
  request like any other (one output token, ``finish_reason`` length). A request without
  ``bootstrap_room`` is refused with 400 ("Disaggregated request received without bootstrap room id").
* the **decode** server reserves the request's KV (*prealloc queue*), looks the prefill up on the bootstrap
  server (``GET /route?prefill_dp_rank=-1&...``: its layout), waits for the KV (*transfer queue*), then
  decodes from the prefill's first token. A transfer that never completes fails after
  ``SGLANG_DISAGGREGATION_WAITING_TIMEOUT`` (300 s) with 500 ("Decode transfer failed ... timed out after
  … in KVPoll.WaitingForInput"); a prefill that never gets the decode's handshake fails after
  ``SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT`` (300 s, "... in KVPoll.Bootstrapping").

The simulation keeps those routes and queues, and moves no bytes: SGLang's transfer engine (mooncake or
nixl over RDMA, with a ZMQ side channel per rank) is replaced by one extra route on the bootstrap server,
``GET /mimo/kv_transfer?room=R&wait=S``. The decode's first call (``wait=0``) is its handshake (the
prefill request leaves the bootstrap queue); a call answers the room's state once it is done or after
``wait`` wall seconds: ``{"state": "bootstrapping"|"prefilling"|"transferring"|"success"|"failed", ...}``. The prefill
holds a room in ``transferring`` for the plan's ``planner_pd.kv_transfer`` time of the request's prompt.
Both timeouts are read from SGLang's environment variables and count simulated seconds.

The decode reserves the request's KV slots before its handshake (so a full decode holds prefills in their
bootstrap queue, as in SGLang), and the prefill keeps the request's KV until the transfer ends
(``engine.py`` item 10). Not modelled: retries of a failed transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

__all__ = [
    "BOOTSTRAP_TIMEOUT_ENV",
    "KV_TRANSFER_ROUTE",
    "WAITING_TIMEOUT_ENV",
    "BootstrapRooms",
    "KvReceipt",
    "PdError",
    "PrefillLayout",
    "Room",
    "RoomState",
    "bootstrap_app",
    "pd_timeout",
    "receive_kv",
]

BOOTSTRAP_TIMEOUT_ENV = "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT"  # prefill: no handshake from the decode
WAITING_TIMEOUT_ENV = "SGLANG_DISAGGREGATION_WAITING_TIMEOUT"  # decode: no KV from the prefill
DEFAULT_PD_TIMEOUT = 300.0  # SGLang 0.5.23's default for both (sglang/srt/environ.py)
KV_TRANSFER_ROUTE = "/mimo/kv_transfer"  # the simulation's stand-in for the transfer engine
# How long one long poll of the decode waits at most (wall seconds): short enough to notice a timeout.
POLL_WAIT_SECONDS = 1.0
# How long a finished room stays readable (wall seconds).
ROOM_TOMBSTONE_SECONDS = 60.0
# How long the decode waits before it asks a bootstrap server it could not reach again (wall seconds).
RETRY_SECONDS = 0.05


class RoomState(enum.Enum):
    BOOTSTRAPPING = "bootstrapping"  # the prefill has the request; no handshake from the decode yet
    PREFILLING = "prefilling"  # handshake done; the prompt is being computed
    TRANSFERRING = "transferring"  # the KV is on its way
    SUCCESS = "success"
    FAILED = "failed"


@dataclass
class Room:
    """One request's hand-over, as the prefill server's bootstrap server knows it."""

    room: int
    state: RoomState = RoomState.BOOTSTRAPPING
    prompt_tokens: int = 0
    transfer_seconds: float = 0.0  # simulated
    total_bytes: int = 0
    reason: str = ""
    handshake: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def set_state(self, state: RoomState, reason: str = "") -> None:
        self.state = state
        self.reason = reason
        self.changed.set()
        self.changed = asyncio.Event()

    def to_dict(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "state": self.state.value,
            "prompt_tokens": self.prompt_tokens,
            "transfer_seconds": self.transfer_seconds,
            "total_bytes": self.total_bytes,
            "reason": self.reason,
        }


class BootstrapRooms:
    """The prefill server's rooms, by ``bootstrap_room``. A decode may ask for a room before the prefill
    has it (the router sends both requests at once): it is made then, and the prefill request takes it."""

    def __init__(self) -> None:
        self._rooms: dict[int, Room] = {}
        self._owned: set[int] = set()

    def open(self, room: int) -> Room | None:
        """The prefill request's room; None if another request already holds this room id."""
        if room in self._owned:
            return None
        self._owned.add(room)
        return self._rooms.setdefault(room, Room(room))

    def get(self, room: int) -> Room:
        return self._rooms.setdefault(room, Room(room))

    def close(self, room: int) -> None:
        """The prefill request is done with its room. The room stays readable for a while (a decode between
        two polls still finds its outcome), as SGLang keeps a bounded tombstone."""
        self._owned.discard(room)
        state = self._rooms.get(room)
        if state is not None:
            asyncio.get_running_loop().call_later(ROOM_TOMBSTONE_SECONDS, self._forget, room, state)

    def _forget(self, room: int, state: Room) -> None:
        if self._rooms.get(room) is state and room not in self._owned:
            del self._rooms[room]

    def count(self, state: RoomState) -> int:
        return sum(1 for number, r in self._rooms.items() if r.state is state and number in self._owned)


@dataclass(frozen=True)
class PrefillLayout:
    """What ``GET /route`` with all ranks -1 answers: the prefill server's layout (SGLang's
    ``PrefillServerInfo``)."""

    attn_tp_size: int
    dp_size: int
    page_size: int
    kv_cache_dtype: str
    prefill_http_port: int
    rank_ip: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "attn_tp_size": self.attn_tp_size,
            "attn_cp_size": 1,
            "dp_size": self.dp_size,
            "pp_size": 1,
            "page_size": self.page_size,
            "kv_cache_dtype": self.kv_cache_dtype,
            "follow_bootstrap_room": True,
            "enable_dsa_cache_layer_split": False,
            "enable_kv_cache_sharding": False,
            "prefill_http_port": self.prefill_http_port,
            "decode_allocation_policy": "early",
        }


def bootstrap_app(rooms: BootstrapRooms, layout: PrefillLayout) -> web.Application:
    """The prefill server's bootstrap server: SGLang's routes, and the simulated transfer's."""
    dp_ranks: dict[int, int] = {}

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def route(request: web.Request) -> web.Response:
        if request.method == "PUT":
            # the prefill's own ranks register here in SGLang; the simulated prefill is registered already
            return web.Response(text="OK")
        if request.method != "GET":
            return web.Response(text="Method not allowed", status=405, content_type="application/json")
        keys = ("prefill_dp_rank", "prefill_cp_rank", "target_tp_rank", "target_pp_rank")
        values = [request.query.get(k) for k in keys]
        if not all(values):
            return web.Response(text="Missing inputs for bootstrap server.", status=400)
        try:
            dp, cp, tp, pp = (int(v or "") for v in values)
        except ValueError:
            return web.Response(text="Missing inputs for bootstrap server.", status=400)
        if (dp, cp, tp, pp) == (-1, -1, -1, -1):
            return web.json_response(layout.to_dict())
        if not (0 <= dp < layout.dp_size and cp == 0 and 0 <= tp < layout.attn_tp_size and pp == 0):
            return web.Response(
                text=f"Bootstrap info not found for dp_rank={dp} cp_rank={cp} tp_rank={tp} pp_rank={pp}", status=404
            )
        # each rank's transfer side channel; nothing listens there in the simulation
        return web.json_response({"rank_ip": layout.rank_ip, "rank_port": 0})

    async def register_dp_rank(request: web.Request) -> web.Response:
        data = await request.json()
        dp_ranks[int(data["bootstrap_room"])] = int(data["dp_rank"])
        return web.Response(text="OK")

    async def query_dp_ranks(request: web.Request) -> web.Response:
        data = await request.json()
        found = {str(int(r)): dp_ranks[int(r)] for r in data.get("bootstrap_rooms", []) if int(r) in dp_ranks}
        return web.json_response(found)

    async def kv_transfer(request: web.Request) -> web.Response:
        try:
            number = int(request.query["room"])
            wait = min(float(request.query.get("wait", POLL_WAIT_SECONDS)), 30.0)
        except (KeyError, ValueError):
            return web.Response(text="give room (an integer) and wait (seconds)", status=400)
        room = rooms.get(number)
        room.handshake.set()
        if room.state not in (RoomState.SUCCESS, RoomState.FAILED):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while room.state not in (RoomState.SUCCESS, RoomState.FAILED):
                        await room.changed.wait()
        return web.json_response(room.to_dict())

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/route", route)
    app.router.add_post("/register_dp_rank", register_dp_rank)
    app.router.add_post("/query_dp_ranks", query_dp_ranks)
    app.router.add_get(KV_TRANSFER_ROUTE, kv_transfer)
    return app


def pd_timeout(name: str) -> float:
    """One of SGLang's PD timeouts from its environment variable (simulated seconds)."""
    value = os.environ.get(name, "")
    try:
        return float(value) if value else DEFAULT_PD_TIMEOUT
    except ValueError:
        return DEFAULT_PD_TIMEOUT


class PdError(Exception):
    """A PD request that failed in ``stage`` (``"bootstrap"`` or ``"transfer"``), with SGLang's message."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class KvReceipt:
    """What the decode side learned when a room's KV arrived (simulated seconds since its arrival)."""

    room: dict[str, Any]
    handshake_after: float  # the bootstrap server answered the first time
    arrived_after: float  # the KV was there


async def receive_kv(
    session: aiohttp.ClientSession,
    host: str,
    port: int,
    room: int,
    *,
    now: Callable[[], float],
    wall: Callable[[float], float],
    give_up_after: float,
) -> KvReceipt:
    """Wait, as a decode server, for a room's KV from the prefill's bootstrap server at ``host:port``.

    ``now`` is the simulated clock, ``wall`` turns simulated into wall seconds, ``give_up_after``
    (simulated seconds) is SGLang's waiting timeout. Raises :class:`PdError` when the prefill never
    answers or the transfer fails.
    """
    start = now()
    url = f"http://{host}:{port}{KV_TRANSFER_ROUTE}"
    handshake_after: float | None = None
    last_state = "unreachable"
    while True:
        left = give_up_after - (now() - start)
        if left <= 0:
            break
        # the first call is the handshake and answers at once; later ones wait for the outcome
        wait = 0.0 if handshake_after is None else min(POLL_WAIT_SECONDS, wall(left))
        try:
            async with session.get(url, params={"room": str(room), "wait": f"{wait:.3f}"}) as response:
                if response.status != 200:
                    raise PdError("bootstrap", f"the bootstrap server answered {response.status}")
                state = await response.json()
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(min(RETRY_SECONDS, wall(max(left, 0.0))))
            continue
        if handshake_after is None:
            handshake_after = now() - start
        last_state = str(state.get("state"))
        if last_state == RoomState.SUCCESS.value:
            return KvReceipt(state, handshake_after, now() - start)
        if last_state == RoomState.FAILED.value:
            raise PdError("transfer", str(state.get("reason") or "the prefill server failed the transfer"))
    elapsed = now() - start
    if handshake_after is None:
        raise PdError("bootstrap", f"Request {room} timed out after {elapsed:.1f}s in KVPoll.Bootstrapping")
    raise PdError(
        "transfer",
        f"Request {room} timed out after {elapsed:.1f}s in KVPoll.WaitingForInput (prefill: {last_state})",
    )
