"""The OpenTelemetry implementation of the app's telemetry hooks.

Imported only when a telemetry switch is set (``telemetry.switches``; the providers
and exporters are ``telemetry.pipeline``'s). What it emits (docs/observability.md
lists every name):

- Metrics, gen-AI semantic conventions: ``gen_ai.client.token.usage`` and
  ``gen_ai.client.operation.duration``; the app's own ``completions.*`` counters and
  histograms (an upstream attempt's status and duration are its span's); for streamed
  answers ``gen_ai.client.operation.time_to_first_chunk`` and ``completions.streams.active``
  (a stream's span and metrics end when the stream does).
- Traces: one span per invocation, ``text_completion {deployment}`` (kind CLIENT,
  a child of the Functions invocation's trace context), one child span per upstream
  attempt (``POST /openai/deployments/{deployment-id}/completions``), events
  ``retry`` and ``failover`` on the invocation span.

Nothing here blocks the event loop: spans go to a BatchSpanProcessor (a bounded
queue, exported on its own thread; when full, spans are dropped and counted), metrics
are aggregated in memory and exported by a PeriodicExportingMetricReader on its own
thread. Prompts and completions are span attributes only with ``COMPLETIONS_LOG_TEXT``;
keys, tokens and connection strings never appear.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .attempts import PATHS, URL_TEMPLATES, OTelAttempt
from .deferred import Deferred
from .hooks import (
    NULL_ATTEMPT,
    NULL_CONTEXT,
    Attempt,
    Invocation,
    InvocationEnd,
    InvocationStart,
    Telemetry,
    TraceContext,
)

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "azure-openai-completions"
PROVIDER = "azure.ai.openai"  # gen_ai.provider.name's well-known value for Azure OpenAI
# The gen-AI conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
MAX_MODEL_NAMES = 64
SLOT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_CURRENT: contextvars.ContextVar[_Invocation | None] = contextvars.ContextVar("completions_invocation",
                                                                                  default=None)


# -- the hooks --------------------------------------------------------------------
class OTelTelemetry(Telemetry):
    """The hooks, recording into ``tracer_provider`` and ``meter_provider`` (the global ones
    in production; in-memory ones in tests)."""

    enabled = True

    def __init__(self, tracer_provider: Any, meter_provider: Any, *, owned: tuple = ()) -> None:
        self._tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        self._in_flight: dict[str, int] = {}
        self._streaming: dict[str, int] = {}  # by source (http only today)
        self._model_names: set[str] = set()  # the response models metrics have seen (model_name)
        self._in_flight_lock = threading.Lock()
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME)
        self._owned = owned  # providers this object shuts down
        self._propagator = TraceContextTextMapPropagator()
        self._backends: dict[Any, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.requests = meter.create_counter(
            "completions.requests", unit="{request}", description="Completions answered, by outcome code and source.")
        self.attempts = meter.create_counter(
            "completions.upstream.attempts", unit="{attempt}", description="Upstream attempts, by backend and result.")
        self.retries = meter.create_counter(
            "completions.upstream.retries", unit="{retry}",
            description="Attempts made after a failure by waiting for recovery or with a fresh token.")
        self.failovers = meter.create_counter(
            "completions.upstream.failovers", unit="{failover}",
            description="Attempts sent at once to another backend after a failure.")
        self.token_refreshes = meter.create_counter(
            "completions.token.refreshes", unit="{refresh}", description="Managed-identity token requests, by result.")
        self.active = meter.create_observable_up_down_counter(
            "completions.active", callbacks=[self._observe_in_flight], unit="{request}",
            description="Completions in progress on this instance.")
        self.slot_wait_duration = meter.create_histogram(
            "completions.slot.wait.duration", unit="s",
            description="Time a completion waited for one of the instance's concurrency slots.",
            explicit_bucket_boundaries_advisory=SLOT_BUCKETS)
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed answer.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.streams = meter.create_observable_up_down_counter(
            "completions.streams.active", callbacks=[self._observe_streams], unit="{stream}",
            description="Answers streaming to their callers on this instance.")
        self.dropped = meter.create_counter(
            "completions.telemetry.dropped", unit="{item}",
            description="Spans or measurements dropped by the pipeline (a full queue, or an export that failed).")
        # The request path only queues each measurement; a thread of its own records it.
        self._deferred = Deferred(self.dropped)

    # Functions' trace context ---------------------------------------------------
    def continue_trace(self, context: TraceContext | None) -> Any:
        if context is None:
            return NULL_CONTEXT
        carrier = {"traceparent": context.parent}
        if context.state:
            carrier["tracestate"] = context.state
        return _Attached(self._propagator.extract(carrier))

    # the service ------------------------------------------------------------------
    def invocation(self, start: InvocationStart) -> Invocation:
        return _Invocation(self, start)

    # the client -------------------------------------------------------------------
    def slot_wait(self, seconds: float, timed_out: bool = False) -> None:
        self._deferred.put(self.slot_wait_duration.record, seconds, _OVERLOADED if timed_out else None)

    def attempt(self, backend: Any, number: int, kind: str, api: str = "completions") -> Attempt:
        invocation = _CURRENT.get()
        if invocation is None:
            return NULL_ATTEMPT
        return OTelAttempt(self, invocation, backend, number, kind, api)

    def retry_wait(self, seconds: float) -> None:
        invocation = _CURRENT.get()
        if invocation is not None:
            invocation.waited = seconds

    # the token cache ----------------------------------------------------------------
    def token_refresh(self, failure: str | None = None) -> None:
        self.token_refreshes.add(1, _REFRESH_OK if failure is None else
                                 {"completions.outcome": "failed", "error.type": failure})

    def flush(self, timeout_millis: int = 10_000) -> None:
        """Record what is queued and export everything now (tests, benchmarks, shutdown)."""
        self._deferred.drain()
        for provider in self._owned:
            provider.force_flush(timeout_millis)

    def drain(self) -> None:
        """Record the queued measurements now (the metrics thread does it every 50 ms)."""
        self._deferred.drain()

    def shutdown(self, within: float | None = None) -> None:
        """Flush and stop the providers this object owns; with ``within``, give up after that many
        seconds (each provider shuts down on a daemon thread, so a hanging export cannot hold exit)."""
        self._deferred.stop()
        threads = [threading.Thread(target=provider.shutdown, name="telemetry-shutdown", daemon=True)
                   for provider in self._owned]
        for thread in threads:
            thread.start()
        give_up = time.monotonic() + (within if within is not None else 3600)
        for thread in threads:
            thread.join(max(0.0, give_up - time.monotonic()))

    def _observe_in_flight(self, options: CallbackOptions) -> Any:
        with self._in_flight_lock:
            counts = list(self._in_flight.items())
        return [Observation(count, {"completions.source": source}) for source, count in counts]

    def model_name(self, name: str) -> str:
        """``name`` as a metric attribute: the upstream names the model it answered with, so only
        the first MAX_MODEL_NAMES distinct names are kept apart; later ones are ``other`` (each
        distinct attribute value is a metric stream held for the process's life)."""
        if name in self._model_names or len(self._model_names) < MAX_MODEL_NAMES:
            self._model_names.add(name)
            return name
        return "other"

    def _observe_streams(self, options: CallbackOptions) -> Any:
        with self._in_flight_lock:
            counts = list(self._streaming.items())
        return [Observation(count, {"completions.source": source}) for source, count in counts]

    def _count_in_flight(self, source: str, change: int, streams: int = 0) -> None:
        with self._in_flight_lock:
            self._in_flight[source] = self._in_flight.get(source, 0) + change
            if streams:
                self._streaming[source] = self._streaming.get(source, 0) + streams

    def backend_attributes(self, backend: Any, api: str = "completions") -> tuple[dict[str, Any], dict[str, Any]]:
        """(span, metric) attributes of ``backend`` called with ``api``, made once per backend and API."""
        cached = self._backends.get((backend, api))
        if cached is None:
            parts = urlsplit(backend.endpoint)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            metric = {"gen_ai.request.model": backend.deployment, "server.address": parts.hostname or "",
                      "server.port": port, "completions.backend": backend.name}
            span = {**metric, "http.request.method": "POST", "url.template": URL_TEMPLATES[api],
                    "url.full": f"{backend.endpoint}/openai/deployments/{backend.deployment}/{PATHS[api]}"
                                f"?api-version={backend.api_version}"}
            cached = self._backends[(backend, api)] = (span, metric)
        return cached


_OVERLOADED = {"error.type": "overloaded"}
_REFRESH_OK = {"completions.outcome": "ok"}


class _Attached:
    """Makes a remote parent (the Functions invocation's) current for a block."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Any) -> None:
        self._context = context

    def __enter__(self) -> None:
        self._token = otel_context.attach(self._context)

    def __exit__(self, *exc: Any) -> None:
        otel_context.detach(self._token)


class _Invocation(Invocation):
    """One invocation's span and metrics. It ends with its ``with`` block, or, for an answer that
    streams (``keep_open``), with ``finish``, when the stream has ended."""

    __slots__ = ("_telemetry", "_start", "_started", "_span", "_context_token", "_current_token", "_finished",
                 "_open", "attempt", "last_backend", "last_error", "waited")

    def __init__(self, telemetry: OTelTelemetry, start: InvocationStart) -> None:
        self._telemetry = telemetry
        self._start = start
        self._finished = False
        self._open = False  # a stream holds the invocation open past its block
        self.attempt: OTelAttempt | None = None  # the attempt in progress
        self.last_backend: Any = None  # the backend of the latest attempt
        self.last_error: str | None = None  # the latest attempt's failure (its code)
        self.waited = 0.0  # the wait before the next round, for its retry event

    def __enter__(self) -> _Invocation:
        start = self._start
        self._started = time.perf_counter()
        attributes = {"gen_ai.operation.name": start.operation, "gen_ai.provider.name": PROVIDER,
                      "completions.source": start.source}
        if start.model:
            attributes["gen_ai.request.model"] = start.model
        if start.request_id:
            attributes["completions.request_id"] = start.request_id
        self._span = self._telemetry._tracer.start_span(
            f"{start.operation} {start.model}" if start.model else start.operation, kind=SpanKind.CLIENT,
            attributes=attributes)
        self._context_token = otel_context.attach(trace.set_span_in_context(self._span))
        self._current_token = _CURRENT.set(self)
        self._telemetry._count_in_flight(start.source, 1)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._open and exc_type is None:  # the stream ends it (finish)
            _CURRENT.reset(self._current_token)
            otel_context.detach(self._context_token)
            return
        self._open = False
        try:
            if not self._finished:  # cancelled (the host's timeout, shutdown) or a bug: still accounted for
                code = "cancelled" if exc_type is not None and exc_type.__name__ == "CancelledError" else \
                    getattr(exc_type, "__name__", "_OTHER")
                if self.attempt is not None:
                    self.attempt.end_with(code)
                self._telemetry._deferred.put(self._telemetry.requests.add, 1,
                                              {"completions.source": self._start.source, "completions.code": code})
                self._span.set_status(Status(StatusCode.ERROR, code))
                self._span.set_attribute("error.type", code)
            self._span.end()
        finally:
            _CURRENT.reset(self._current_token)
            otel_context.detach(self._context_token)
            self._telemetry._count_in_flight(self._start.source, -1)

    @property
    def trace_id(self) -> str:  # type: ignore[override]
        span_context = self._span.get_span_context()
        return format(span_context.trace_id, "032x") if span_context.is_valid else ""

    def identify(self, caller: str) -> None:
        self._span.set_attribute("completions.caller", caller)

    def keep_open(self) -> None:
        self._open = True
        self._telemetry._count_in_flight(self._start.source, 0, streams=1)

    def first_chunk(self, seconds: float) -> None:
        telemetry = self._telemetry
        attributes = {"gen_ai.operation.name": self._start.operation, "gen_ai.provider.name": PROVIDER}
        if self.last_backend is not None:
            attributes.update(telemetry.backend_attributes(self.last_backend)[1])
        telemetry._deferred.put(telemetry.first_chunk.record, seconds, attributes)
        self._span.set_attribute("gen_ai.response.time_to_first_chunk", seconds)

    def finish(self, end: InvocationEnd) -> None:
        try:
            self._finish(end)
        finally:
            if self._open:  # a stream ended: so does the invocation
                self._open = False
                self._span.end()
                self._telemetry._count_in_flight(self._start.source, -1, streams=-1)

    def _finish(self, end: InvocationEnd) -> None:
        self._finished = True
        telemetry = self._telemetry
        backend = end.backend if end.backend is not None else self.last_backend
        operation = end.operation or self._start.operation
        common: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER}
        if backend is not None:
            common.update(telemetry.backend_attributes(backend)[1])
        elif self._start.model:
            common["gen_ai.request.model"] = self._start.model
        defer = telemetry._deferred.put
        defer(telemetry.requests.add, 1, {"completions.source": self._start.source, "completions.code": end.code,
                                          "completions.status_code": end.status})
        attributes = {**common, "completions.source": self._start.source}  # of the operation and its tokens
        if end.response_model:
            attributes["gen_ai.response.model"] = telemetry.model_name(end.response_model)
        if end.valid:  # a gen-AI operation took place (not for 400s of our own)
            defer(telemetry.operation_duration.record, time.perf_counter() - self._started,
                  {**attributes, "error.type": end.code} if end.code != "ok" else attributes)
        if end.usage is not None:
            defer(telemetry.token_usage.record, end.usage.input_tokens, {**attributes, "gen_ai.token.type": "input"})
            defer(telemetry.token_usage.record, end.usage.output_tokens,
                  {**attributes, "gen_ai.token.type": "output"})
        if self._span.is_recording():
            self._describe(end, backend, common)

    def _describe(self, end: InvocationEnd, backend: Any, common: dict[str, Any]) -> None:
        """The invocation span's attributes (only for a sampled invocation)."""
        span = self._span
        deployment = backend.deployment if backend is not None else self._start.model
        operation = common["gen_ai.operation.name"]
        if deployment and (deployment, operation) != (self._start.model, self._start.operation):
            span.update_name(f"{operation} {deployment}")  # another deployment answered, or another API
        attributes: dict[str, Any] = {**common, "completions.status_code": end.status}
        if end.attempts:
            attributes["completions.attempts"] = end.attempts
        if end.failovers is not None:
            attributes["completions.failovers"] = end.failovers
        if end.response_model:
            attributes["gen_ai.response.model"] = end.response_model
        if end.response_id:
            attributes["gen_ai.response.id"] = end.response_id
        if end.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = end.usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = end.usage.output_tokens
        if end.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(end.finish_reasons)
        for name, attribute in _REQUEST_ATTRIBUTES:
            value = end.request.get(name)
            if value is not None:
                attributes[attribute] = value
        if end.input_messages is not None:
            attributes["gen_ai.input.messages"] = end.input_messages
        if end.output_messages is not None:
            attributes["gen_ai.output.messages"] = end.output_messages
        if end.code != "ok":
            attributes["error.type"] = end.code
            span.set_status(Status(StatusCode.ERROR, end.code))
        span.set_attributes(attributes)


_REQUEST_ATTRIBUTES = (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                       ("top_p", "gen_ai.request.top_p"), ("n", "gen_ai.request.choice.count"),
                       ("seed", "gen_ai.request.seed"), ("presence_penalty", "gen_ai.request.presence_penalty"),
                       ("frequency_penalty", "gen_ai.request.frequency_penalty"))
