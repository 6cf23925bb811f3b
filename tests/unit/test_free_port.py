"""`free_port`: a port handed to a program that binds it later must not be one an outgoing connection can take."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from mimo_operator.localcluster import processes
from mimo_operator.localcluster.processes import free_port


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    low, high = processes._ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= p <= high for p in ports)
    assert all(p >= 30000 for p in ports), "above Ray's worker ports and the builders' host-network gang ports"
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out, so free now (nothing here took it)


@contextlib.contextmanager
def listening() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield int(busy.getsockname()[1])


def test_a_kernel_whose_ephemeral_range_starts_low_gets_ports_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "_ephemeral_range", lambda: (1024, 40000))
    assert processes._ports_to_pick_from() == range(40001, 65536)
    monkeypatch.setattr(processes, "_ephemeral_range", lambda: (32768, 60999))
    assert processes._ports_to_pick_from() == range(30000, 32768)


def test_a_busy_port_is_never_picked_and_a_full_range_falls_back_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    with listening() as taken:
        monkeypatch.setattr(processes, "_ports_to_pick_from", lambda: range(taken, taken + 1))
        assert free_port() != taken
