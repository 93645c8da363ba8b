"""One upstream attempt's span and metric (``telemetry.otel`` starts it through its ``attempt`` hook).

A child span of the invocation's (``POST /openai/deployments/{deployment-id}/...``), and one
``completions.upstream.attempts`` count with its status or error; an attempt other than the
first adds a ``retry`` or ``failover`` event to the invocation span.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .hooks import Attempt

if TYPE_CHECKING:
    from .otel import OTelTelemetry, _Invocation

URL_TEMPLATES = {"completions": "/openai/deployments/{deployment-id}/completions",
                 "chat": "/openai/deployments/{deployment-id}/chat/completions"}
PATHS = {"completions": "completions", "chat": "chat/completions"}


class OTelAttempt(Attempt):
    __slots__ = ("_telemetry", "_invocation", "_span", "_metric_attributes", "_started")

    def __init__(self, telemetry: OTelTelemetry, invocation: _Invocation, backend: Any, number: int,
                 kind: str, api: str) -> None:
        self._telemetry = telemetry
        self._invocation = invocation
        span_attributes, self._metric_attributes = telemetry.backend_attributes(backend, api)
        if kind != "first":
            previous = invocation.last_backend
            reason = invocation.last_error if invocation.last_error is not None else "_OTHER"
            event = {"completions.attempt": number, "completions.backend": backend.name, "error.type": reason}
            if kind == "failover":
                event["completions.failover.from"] = previous.name if previous is not None else ""
                telemetry._deferred.put(telemetry.failovers.add, 1,
                                        {"completions.backend": backend.name, "error.type": reason})
            else:
                event["completions.retry.wait"] = invocation.waited
                telemetry._deferred.put(telemetry.retries.add, 1,
                                        {"completions.backend": backend.name, "error.type": reason})
            invocation._span.add_event(kind, event)
        invocation.waited = 0.0
        invocation.last_backend = backend
        invocation.attempt = self
        if invocation._span.is_recording():
            self._span = telemetry._tracer.start_span(
                f"POST {URL_TEMPLATES[api]}", kind=SpanKind.CLIENT,
                attributes={**span_attributes, "completions.attempt": number, "completions.attempt.kind": kind})
        else:  # an unsampled invocation's children are unsampled too (parent-based): skip building them
            self._span = trace.INVALID_SPAN
        self._started = time.perf_counter()

    def end(self, status: int | None = None, error_code: str | None = None) -> None:
        if error_code is None:
            self._ended(status, None)
            self._invocation.last_error = None
            return
        self._ended(status, str(status) if status is not None and status >= 400 else error_code)
        self._invocation.last_error = error_code

    def end_with(self, error_type: str) -> None:
        self._ended(None, error_type)

    def _ended(self, status: int | None, error_type: str | None) -> None:
        elapsed = time.perf_counter() - self._started
        attributes = {**self._metric_attributes, "http.request.method": "POST"}
        if status is not None:
            attributes["http.response.status_code"] = status
        if error_type is not None:
            attributes["error.type"] = error_type
            self._span.set_status(Status(StatusCode.ERROR, error_type))
        self._span.set_attributes({**attributes, "completions.attempt.duration": elapsed})
        self._span.end()
        self._telemetry._deferred.put(self._telemetry.attempts.add, 1, attributes)
        self._invocation.attempt = None
