"""One request from its body to its answer: who calls, validation, the upstream call, the answer,
and its one log line and telemetry record; for a stream, those come when the stream ends.

A streamed answer is decided before its first byte: every retry and failover happens
while the first chunk is awaited, and a failure then is an ordinary JSON error with
its status. After the first byte there is no retry: a failure is one
``data: {"error": ...}`` event (what the SDKs raise on), and the stream ends. A caller
who leaves cancels the stream: the upstream connections close at once (the deployment
stops generating) and the concurrency slots are freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from .callers import HOST
from .clock import Deadline
from .config.settings import Settings
from .errors import AppError, internal_error
from .handler import Operation, bounded, shape, stream_headers, telemetry_end, validate
from .logs import log_invocation
from .outcome import Outcome, openai_error_body
from .telemetry.hooks import Invocation as TelemetryCall
from .upstream.client import CompletionClient, UpstreamResult

if TYPE_CHECKING:
    from .contract.stream import StreamShaper
    from .service import CompletionService

log = logging.getLogger(__name__)
EXPIRY_GRACE = 1.0  # seconds past a stream's time limit before a stalled reader's stream is cut


class Invocation:
    def __init__(self, service: CompletionService, operation: Operation, request: bytes | Any, request_id: str,
                 source: str, headers: Mapping[str, str] | None, call: TelemetryCall) -> None:
        self.service, self.operation, self.request, self.request_id = service, operation, request, request_id
        self.source, self.headers, self.call = source, headers, call
        self.started = time.perf_counter()
        self.params: dict[str, Any] = {}
        self.result: UpstreamResult | None = None
        self.caller = HOST
        self.settings: Settings | None = None
        self.streamed: StreamShaper | None = None  # a stream's, once it ended
        self.finished = False  # its log line and telemetry record went out

    async def run(self) -> Outcome:
        """The answer; never raises. A stream's outcome carries it, and ends the invocation itself."""
        try:
            outcome = await self._answer()
        except AppError as exc:
            outcome = Outcome.failed(exc, self.request_id, self.operation.dialect)
        except Exception:  # noqa: BLE001 - the caller gets a coded 500, the log gets the traceback
            log.exception("completion request_id=%s failed unexpectedly", self.request_id)
            outcome = Outcome.failed(internal_error(), self.request_id, self.operation.dialect)
        if outcome.stream is None:
            self.finish(outcome)
        return outcome

    async def _answer(self) -> Outcome:
        service = self.service
        began = service.clock.monotonic()
        pipeline = await service.current(began)
        settings, client = pipeline.settings, pipeline.client
        assert settings is not None and client is not None
        self.settings = settings
        if self.headers is not None:
            self.caller = service.caller_check(settings).caller(self.headers)
            self.call.identify(self.caller.name)
        # (a wait for the store's first load counts against the deadline)
        deadline = Deadline(settings.retry.deadline - (service.clock.monotonic() - began), service.clock)
        upstream, model = validate(self.operation, service.document(self.request, settings.limits), settings,
                                   streaming=self.source == "http")
        self.params = upstream.params
        if self.params.get("stream"):
            return await self._stream(client, upstream, deadline, model, settings)
        self.result = await client.complete(upstream, deadline, self.request_id, model=model, chat=settings.chat)
        return shape(self.operation, self.result, self.params)

    async def _stream(self, client: CompletionClient, upstream: Any, deadline: Deadline, model: str | None,
                      settings: Settings) -> Outcome:
        until = asyncio.get_running_loop().time() + settings.retry.stream_seconds - (time.perf_counter() - self.started)
        self.result = result = await client.stream(upstream, deadline, self.request_id, model=model,
                                                   chat=settings.chat, until=until)
        options = self.params.get("stream_options") or {}
        from .contract.stream import StreamShaper  # only streams need it

        shaper = StreamShaper(kind=self.operation.kind, api=result.plan.api, n=self.params.get("n", 1),
                              calls=len(result.plan.calls), stops=result.plan.stops,
                              wants_usage=options.get("include_usage") is True)
        events = self._events(result, shaper, until)
        # Started here, so that it is always closed: an async generator the event loop has seen
        # start is closed when dropped (asyncio's finalizer hook), even if the caller left before
        # the response began; one never started would hold its slots and upstream stream forever.
        first = await anext(events)
        self.call.keep_open()  # its span and metrics end with the stream
        return Outcome.streaming(stream_headers(self.operation, result), _replayed(first, events))

    async def _events(self, result: UpstreamResult, shaper: StreamShaper, until: float) -> AsyncGenerator[bytes]:
        from .contract.stream import DONE, event

        assert result.stream is not None and result.release is not None
        # A caller who stops reading parks this generator at a yield, where no time limit is checked:
        # once the stream's time is up, its upstream connections close and its slots are freed anyway.
        watchdog = asyncio.get_running_loop().call_at(until + EXPIRY_GRACE, _expire, result)
        failure: AppError | None = None
        first = True
        reported = True  # this stream's end is its invocation's outcome
        try:
            last = None
            async for call, chunk in result.stream.chunks():
                for shaped in shaper.shape(call, chunk):
                    if first:
                        self.call.first_chunk(time.perf_counter() - self.started)
                        first = False
                    last = shaped
                    yield event(shaped)
                if shaper.all_stopped:
                    break
            for shaped in shaper.closing(last):
                yield event(shaped)
            yield DONE
        except AppError as error:
            if first:  # nothing went to the caller yet: an ordinary JSON error with its status (``run``)
                reported = False
                raise
            failure = error
            yield event(openai_error_body(error))
        except Exception:  # noqa: BLE001 - a bug: the caller gets a coded error event, the log the traceback
            log.exception("stream request_id=%s failed unexpectedly", self.request_id)
            failure = internal_error()
            yield event(openai_error_body(failure))
        except BaseException:  # the caller left: the stream was cancelled (or closed)
            failure = AppError(499, "client_closed", "The caller left before the stream ended.")
            raise
        finally:
            watchdog.cancel()
            await result.stream.aclose()
            result.release()
            if reported:
                self.finish(self._streamed(shaper, failure))

    def _streamed(self, shaper: StreamShaper, failure: AppError | None) -> Outcome:
        """The outcome a stream's log line and telemetry record (its answer went as events)."""
        body: dict[str, Any] = {"choices": [{"finish_reason": reason} for _, reason in
                                            sorted(shaper.finish_reasons.items())]}
        if shaper.usage is not None:
            body["usage"] = shaper.usage
        self.streamed = shaper
        if failure is not None:
            return Outcome(200, body, error=failure)
        return Outcome(200, body)

    def finish(self, outcome: Outcome) -> None:
        if self.finished:
            return
        self.finished = True
        settings, result = self.settings, self.result
        if self.service.telemetry.enabled:
            end = telemetry_end(outcome, result, self.params, settings)
            if self.streamed is not None:
                end = end._replace(response_model=bounded(self.streamed.model),
                                   response_id=bounded(self.streamed.response_id))
            self.call.finish(end)
        log_invocation(outcome, result, self.params, self.request_id, self.source, self.started, settings,
                       self.call.trace_id, self.caller.name)


def _expire(result: UpstreamResult) -> None:
    """A stream whose caller stopped reading outlived its time: close upstream, free its slots."""
    assert result.stream is not None and result.release is not None
    result.stream.abort()
    result.release()


async def _replayed(first: bytes, rest: AsyncGenerator[bytes]) -> AsyncIterator[bytes]:
    """``first``, then the rest of the events; closing this closes them."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()
