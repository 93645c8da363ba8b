"""The unit tier: no sockets and no real sleeping (a fake clock instead); each test runs in milliseconds."""

from __future__ import annotations

import socket
import time

import pytest


class FakeClock:
    """The app's ``Clock`` with time that moves only when told: ``sleep`` and ``advance`` skip ahead."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def no_sockets_no_sleeping(monkeypatch):
    def no_socket(*args, **kwargs):
        raise AssertionError("a unit test opened a connection: it belongs in tests/integration")

    def no_sleep(seconds):
        if seconds > 0:
            raise AssertionError("a unit test slept: use the fake clock")

    monkeypatch.setattr(socket.socket, "connect", no_socket)
    monkeypatch.setattr(socket.socket, "connect_ex", no_socket)
    monkeypatch.setattr(time, "sleep", no_sleep)
