"""The token cache's failure window, on a fake clock with a stand-in credential (no sockets, no sleeping)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from shared.clock import Deadline
from shared.errors import AppError
from shared.upstream.tokens import TokenCache


class FailingCredential:
    """A credential whose token endpoint always fails (a mistyped client id, a broken endpoint)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def get_token(self, *scopes, **kwargs):
        with self._lock:
            self.calls += 1
        raise RuntimeError("token endpoint said 404")


async def _callers(cache: TokenCache, clock, count: int, seconds: float = 0.9) -> list[AppError]:
    async def one() -> AppError:
        with pytest.raises(AppError) as caught:
            await cache.get(Deadline(seconds, clock))
        return caught.value

    return await asyncio.gather(*(one() for _ in range(count)))


def test_failures_without_a_cached_token_are_backed_off(fake_clock, caplog):
    """Callers in a failure's window fail at once with Retry-After, without a new token request,
    until the window (1 s, then 2 s, 4 s ... 15 s) ends; one log line per failure, not per caller."""
    credential = FailingCredential()
    cache = TokenCache(lambda: credential, "scope", clock=fake_clock)
    with caplog.at_level(logging.WARNING, logger="shared.upstream.tokens"):
        errors = asyncio.run(_callers(cache, fake_clock, 1))  # the first caller waits for the failed request
        errors += asyncio.run(_callers(cache, fake_clock, 192))  # the rest, inside its 1 s window
        assert credential.calls == 1
        assert {(e.status, e.code) for e in errors} == {(503, "credential_unavailable")}
        assert {e.headers()["Retry-After"] for e in errors} == {"1"}
        fake_clock.advance(1.1)
        asyncio.run(_callers(cache, fake_clock, 64))
        assert credential.calls == 2
        fake_clock.advance(1.1)  # the second failure's window is 2 s: still inside it
        asyncio.run(_callers(cache, fake_clock, 64))
        assert credential.calls == 2
        fake_clock.advance(1.0)
        asyncio.run(_callers(cache, fake_clock, 1))
        assert credential.calls == 3
    assert [r.name for r in caplog.records] == ["shared.upstream.tokens"] * 3


def test_the_window_grows_to_fifteen_seconds(fake_clock):
    credential = FailingCredential()
    cache = TokenCache(lambda: credential, "scope", clock=fake_clock)
    windows = []
    for _ in range(7):
        [error] = asyncio.run(_callers(cache, fake_clock, 1))
        [inside] = asyncio.run(_callers(cache, fake_clock, 1))
        windows.append(inside.retry_after)
        fake_clock.advance(inside.retry_after + 0.01)
    assert windows == [1, 2, 4, 8, 15, 15, 15]
