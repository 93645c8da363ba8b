"""Invoke the app's functions as the Functions worker does: the decorated function's user
function (a coroutine function), run on one long-lived event loop, called with the FastAPI
``Request`` the worker builds for an HTTP function (the streaming extension's types); no host
involved (tests/e2e goes through the dev host)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from requests.structures import CaseInsensitiveDict
from starlette.requests import Request
from starlette.responses import Response

import function_app
from shared.clock import Clock
from shared.config import registry
from support.worker_requests import completions_request, http_request

T = TypeVar("T")

# Every setting the app reads (the registry), and the identity platform's own, which tests unset
# before configuring the app through the environment.
SETTING_NAMES = (*registry.names(), "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
                 "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "IMDS_ENDPOINT")
SEED = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


class AppLoop:
    """One event loop for the whole test session, on its own thread: the worker runs every
    async invocation on one long-lived loop, and so do the tests (never ``asyncio.run`` per
    call). Any thread may submit work; concurrent submissions run concurrently on the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="app-loop", daemon=True).start()

    def run(self, awaitable: Awaitable[T], timeout: float | None = 120) -> T:
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result(timeout)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


LOOP = AppLoop()


class SkippingClock(Clock):
    """Real time, except that the app's sleeps (retry waits) are skipped: they move this
    clock forward at once and are recorded in ``slept``. ``advance`` skips time by hand
    (e.g. past a token's refresh margin). Network time stays real."""

    def __init__(self) -> None:
        self.skipped = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:  # type: ignore[override]
        return time.monotonic() + self.skipped

    def time(self) -> float:  # type: ignore[override]
        return time.time() + self.skipped

    async def sleep(self, seconds: float) -> None:  # type: ignore[override]
        self.slept.append(seconds)
        self.skipped += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.skipped += seconds


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes


def wait_for(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds, or ``timeout`` seconds (background work, such as a
    token refresh or a settings load, finishes a little after the call that started it)."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.02)
    return True


def _reply(response: Response) -> Reply:
    raw = bytes(response.body)
    assert response.media_type == "application/json"
    return Reply(response.status_code, json.loads(raw), CaseInsensitiveDict(response.headers), raw)


async def call_completions(request: Request, function: str = "completions") -> Reply:
    return _reply(await getattr(function_app, function).build().get_user_function()(request))


def post_completions(body: Any = None, *, raw: bytes | None = None,
                     headers: dict[str, str] | None = None) -> Reply:
    return LOOP.run(call_completions(completions_request(body, raw=raw, headers=headers)))


def post(function: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None,
         path_params: dict[str, str] | None = None) -> Reply:
    """POST to any of the app's HTTP functions (by name: chat_completions, azure_completions, ...)."""
    request = completions_request(body, raw=raw, headers=headers, path_params=path_params)
    return LOOP.run(call_completions(request, function))


@dataclass
class Streamed:
    status: int
    headers: dict[str, str]
    events: list[Any]  # each ``data:`` event decoded ("[DONE]" as the string); a JSON answer's body instead
    raw: bytes


def post_stream(function: str, body: Any, *, read: int | None = None, headers: dict[str, str] | None = None,
                path_params: dict[str, str] | None = None) -> Streamed:
    """POST a streaming request and read its events as the worker's uvicorn would; ``read``: the
    caller leaves (the response's iterator is closed) after that many events."""
    async def run() -> Streamed:
        request = completions_request(body, headers=headers, path_params=path_params)
        response = await getattr(function_app, function).build().get_user_function()(request)
        iterator = getattr(response, "body_iterator", None)
        if iterator is None:  # a JSON answer (an error before the first byte)
            return Streamed(response.status_code, CaseInsensitiveDict(response.headers),
                            [json.loads(bytes(response.body))], bytes(response.body))
        raw = b""
        events: list[Any] = []
        try:
            async for chunk in iterator:
                raw += chunk
                for line in chunk.decode().split("\n"):
                    if line.startswith("data: "):
                        data = line[len("data: "):]
                        events.append(data if data == "[DONE]" else json.loads(data))
                if read is not None and len(events) >= read:
                    break
        finally:
            await iterator.aclose()
        return Streamed(response.status_code, CaseInsensitiveDict(response.headers), events, raw)
    return LOOP.run(run())


def get(function: str, *, headers: dict[str, str] | None = None, path_params: dict[str, str] | None = None) -> Reply:
    return LOOP.run(call_completions(http_request("GET", "/", b"", headers, path_params), function))


def post_many(bodies: list[Any], function: str = "completions") -> list[Reply]:
    """Concurrent invocations on the one loop, as the worker runs a burst."""
    async def burst() -> list[Reply]:
        return list(await asyncio.gather(*(call_completions(completions_request(body), function)
                                           for body in bodies)))
    return LOOP.run(burst())


def get_health() -> Reply:
    return get("health")
