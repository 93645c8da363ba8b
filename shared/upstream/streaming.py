"""An upstream answer that streams: opened within the deadline, then read chunk by chunk.

An attempt opens one stream per call of its plan (several: a completions request's
prompts on a chat deployment) and succeeds once every stream has sent its first
chunk: until then, a failure is an ordinary failed attempt (retries, failover).
After it, ``chunks()`` yields ``(call, chunk)`` as they arrive, merged; each must
come within ``between`` seconds (``AZURE_OPENAI_TIMEOUT``), the whole within the
stream's time limit, and all of them within the response size limit, or it raises
AppError (the caller then gets one error event). ``aclose()`` closes every
upstream connection at once: the deployment stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from ..errors import AppError
from .failures import upstream_failure
from .transport import Exchange, bad_response

_DONE = object()


class UpstreamStream:
    def __init__(self, streams: list[AsyncGenerator[Any, None]], firsts: list[Any], exchanges: list[Exchange], *,
                 between: float, until: float, max_bytes: int) -> None:
        """``until``: the event loop's time by which the whole stream must have ended."""
        self._streams = streams
        self._firsts = firsts
        self._exchanges = exchanges
        self.exchange = exchanges[-1]  # what the transport saw of the last opened
        self._between = between
        self._until = until
        self._max_bytes = max_bytes
        self._size = 0

    async def chunks(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        for call, first in enumerate(self._firsts):
            yield call, self._checked(first)
        if len(self._streams) == 1:
            async for chunk in self._read(self._streams[0]):
                yield 0, chunk
            return
        async for call, chunk in self._merged():
            yield call, chunk

    async def _read(self, stream: AsyncGenerator[Any, None]) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        while True:
            wait = min(self._between, self._until - loop.time())
            if wait <= 0:
                raise _stream_too_long()
            try:
                async with asyncio.timeout(wait):
                    chunk = await anext(stream, _DONE)
            except TimeoutError:
                raise (_stream_too_long() if self._until - loop.time() <= 0 else _stalled(self._between)) from None
            except AppError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken stream is translated, at the one boundary
                raise upstream_failure(exc, Exchange()) from None
            if chunk is _DONE:
                return
            yield self._checked(chunk)

    async def _merged(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=64)

        async def pump(call: int, stream: AsyncGenerator[Any, None]) -> None:
            try:
                async for chunk in self._read(stream):
                    await queue.put((call, chunk))
            except AppError as error:
                await queue.put((call, error))
                return
            await queue.put((call, _DONE))

        tasks = [asyncio.create_task(pump(call, stream)) for call, stream in enumerate(self._streams)]
        try:
            open_streams = len(tasks)
            while open_streams:
                call, item = await queue.get()
                if item is _DONE:
                    open_streams -= 1
                elif isinstance(item, AppError):
                    raise item
                else:
                    yield call, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _checked(self, chunk: Any) -> dict[str, Any]:
        if not readable_chunk(chunk):
            raise bad_response("Azure OpenAI sent a stream the app cannot read.")
        try:
            self._size += len(json.dumps(chunk, allow_nan=False))
        except (ValueError, TypeError, RecursionError):
            raise bad_response("Azure OpenAI sent a stream with values JSON cannot carry.") from None
        if self._size > self._max_bytes:
            raise bad_response(f"Azure OpenAI sent a stream larger than the app's limit of {self._max_bytes} bytes.")
        return chunk

    def abort(self) -> None:
        """Close every upstream connection now, from outside the stream's reading (idempotent)."""
        for exchange in self._exchanges:
            if exchange.response is not None:
                exchange.response.close()

    async def aclose(self) -> None:
        """Close every upstream stream now: their connections close, so the deployment stops (openai's
        generator would release its connection only when it is finalized)."""
        for stream, exchange in zip(self._streams, self._exchanges, strict=True):
            if exchange.response is not None:
                exchange.response.close()
            with contextlib.suppress(Exception):
                await stream.aclose()


def readable_chunk(chunk: Any) -> bool:
    """A chunk the app can shape: an object whose choices are objects with a non-negative integer index."""
    if not isinstance(chunk, dict):
        return False
    choices = chunk.get("choices", [])
    return isinstance(choices, list) and all(
        isinstance(choice, dict) and type(choice.get("index", 0)) is int and choice.get("index", 0) >= 0
        for choice in choices)


def _stalled(seconds: float) -> AppError:
    return AppError(504, "upstream_timeout", f"Azure OpenAI sent nothing for {seconds:g} s in the middle of the "
                                             "stream.", retryable=True)


def _stream_too_long() -> AppError:
    return AppError(504, "stream_timeout", "The stream reached the longest time a function may run (host.json "
                                           "functionTimeout): it ends here.", retryable=True)
