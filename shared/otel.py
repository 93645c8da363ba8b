"""The OpenTelemetry implementation of the app's telemetry hooks, and its pipeline.

Imported only when a telemetry switch is set (``shared.telemetry``). What it emits
(README, "Observability", lists every name):

- Metrics, gen-AI semantic conventions: ``gen_ai.client.token.usage`` and
  ``gen_ai.client.operation.duration``; the app's own ``completions.*`` counters and
  histograms (an upstream attempt's status and duration are its span's).
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

import atexit
import collections
import contextvars
import json
import logging
import os
import threading
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Counter, Observation
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .telemetry import (CONNECTION_STRING, NULL_ATTEMPT, NULL_CONTEXT, WORKER_TELEMETRY, Attempt, Invocation,
                        Telemetry, TelemetrySettingError, switches)

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "azure-openai-completions"
DEFAULT_SERVICE_NAME = "azure-openai-completions"
OPERATION = "text_completion"
PROVIDER = "azure.ai.openai"  # gen_ai.provider.name's well-known value for Azure OpenAI
URL_TEMPLATE = "/openai/deployments/{deployment-id}/completions"
ATTEMPT_SPAN_NAME = f"POST {URL_TEMPLATE}"
# The gen-AI conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
SLOT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Resource detectors that read environment variables only: the distro's default adds
# azure_vm, which asks the instance metadata service (169.254.169.254) at start-up off
# Azure Functions (a network call, up to 0.2 s, beyond loopback).
DEFAULT_RESOURCE_DETECTORS = "azure_functions"
# Instrumentations the Azure Monitor distro would enable: none of them sees this app's
# upstream calls (aiohttp, which the attempt spans cover); each costs start-up time, and
# requests/urllib3 would trace the exporters' own calls.
DISTRO_INSTRUMENTATIONS = ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3",
                           "httpx", "httpx2")
EXPORTER_LOG_INTERVAL = 60.0  # seconds between exporter error lines (a broken collector fails every batch)
DEFERRED_INTERVAL = 0.05  # seconds between the metrics thread's passes
DEFERRED_CHUNK = 32  # measurements recorded between offers of the GIL to the event loop's thread (~0.8 ms)
DEFERRED_MAX = 100_000  # measurements waiting for it at most; more are dropped (and counted)

_CURRENT: contextvars.ContextVar["_Invocation | None"] = contextvars.ContextVar("completions_invocation",
                                                                                  default=None)


# -- the hooks --------------------------------------------------------------------
class OTelTelemetry(Telemetry):
    """The hooks, recording into ``tracer_provider`` and ``meter_provider`` (the global ones
    in production; in-memory ones in tests)."""

    enabled = True

    def __init__(self, tracer_provider: Any, meter_provider: Any, *, owned: tuple = ()) -> None:
        self._tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        # The SDK spends 15-30 us on each measurement (it cleans and hashes the attributes):
        # the request path only queues it, and a thread of its own records it (_Deferred).
        self._deferred = _Deferred(self)
        self._in_flight: dict[str, int] = {}
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
        self.dropped = meter.create_counter(
            "completions.telemetry.dropped", unit="{item}",
            description="Spans or measurements dropped by the pipeline (a full queue, or an export that failed).")

    # Functions' trace context ---------------------------------------------------
    def continue_trace(self, context: Any) -> Any:
        trace_context = getattr(context, "trace_context", None)
        parent = getattr(trace_context, "trace_parent", None)
        if not isinstance(parent, str) or not parent:
            return NULL_CONTEXT
        carrier = {"traceparent": parent}
        state = getattr(trace_context, "trace_state", None)
        if isinstance(state, str) and state:
            carrier["tracestate"] = state
        return _Attached(self._propagator.extract(carrier))

    # the service ------------------------------------------------------------------
    def invocation(self, source: str, settings: Any, request_id: str | None = None) -> Invocation:
        return _Invocation(self, source, settings, request_id)

    # the client -------------------------------------------------------------------
    def slot_wait(self, seconds: float, timed_out: bool = False) -> None:
        self._deferred.put(self.slot_wait_duration.record, seconds, _OVERLOADED if timed_out else None)

    def attempt(self, backend: Any, number: int, kind: str) -> Attempt:
        invocation = _CURRENT.get()
        if invocation is None:
            return NULL_ATTEMPT
        return _Attempt(self, invocation, backend, number, kind)

    def retry_wait(self, seconds: float) -> None:
        invocation = _CURRENT.get()
        if invocation is not None:
            invocation.waited = seconds

    # the token cache ----------------------------------------------------------------
    def token_refresh(self, error: BaseException | None = None) -> None:
        self.token_refreshes.add(1, _REFRESH_OK if error is None else
                                 {"completions.outcome": "failed", "error.type": type(error).__name__})

    def flush(self, timeout_millis: int = 10_000) -> None:
        """Record what is queued and export everything now (tests, benchmarks, shutdown)."""
        self._deferred.drain()
        for provider in self._owned:
            provider.force_flush(timeout_millis)

    def drain(self) -> None:
        """Record the queued measurements now (the metrics thread does it every 50 ms)."""
        self._deferred.drain()

    def shutdown(self) -> None:
        self._deferred.stop()
        for provider in self._owned:
            provider.shutdown()

    def _observe_in_flight(self, options: CallbackOptions) -> Any:
        with self._in_flight_lock:
            counts = list(self._in_flight.items())
        return [Observation(count, {"completions.source": source}) for source, count in counts]

    def _count_in_flight(self, source: str, change: int) -> None:
        with self._in_flight_lock:
            self._in_flight[source] = self._in_flight.get(source, 0) + change

    def backend_attributes(self, backend: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(span, metric) attributes of ``backend``, made once per backend."""
        cached = self._backends.get(backend)
        if cached is None:
            parts = urlsplit(backend.endpoint)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            metric = {"gen_ai.request.model": backend.deployment, "server.address": parts.hostname or "",
                      "server.port": port, "completions.backend": backend.name}
            span = {**metric, "http.request.method": "POST", "url.template": URL_TEMPLATE,
                    "url.full": f"{backend.endpoint}/openai/deployments/{backend.deployment}/completions"
                                f"?api-version={backend.api_version}"}
            cached = self._backends[backend] = (span, metric)
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
    __slots__ = ("_telemetry", "_source", "_settings", "_request_id", "_deployment", "_started", "_span",
                 "_context_token", "_current_token", "_finished", "attempt", "last_backend",
                 "last_error", "waited")

    def __init__(self, telemetry: OTelTelemetry, source: str, settings: Any, request_id: str | None) -> None:
        self._telemetry = telemetry
        self._source = source
        self._settings = settings
        self._request_id = request_id
        backends = getattr(settings, "backends", None)
        self._deployment = backends[0].deployment if backends else None
        self._finished = False
        self.attempt: _Attempt | None = None  # the attempt in progress
        self.last_backend: Any = None  # the backend of the latest attempt
        self.last_error: Any = None  # the latest attempt's failure (an AppError)
        self.waited = 0.0  # the wait before the next round, for its retry event

    def __enter__(self) -> "_Invocation":
        self._started = time.perf_counter()
        attributes = {"gen_ai.operation.name": OPERATION, "gen_ai.provider.name": PROVIDER,
                      "completions.source": self._source}
        if self._deployment:
            attributes["gen_ai.request.model"] = self._deployment
        if self._request_id:
            attributes["completions.request_id"] = self._request_id
        self._span = self._telemetry._tracer.start_span(
            f"{OPERATION} {self._deployment}" if self._deployment else OPERATION, kind=SpanKind.CLIENT,
            attributes=attributes)
        self._context_token = otel_context.attach(trace.set_span_in_context(self._span))
        self._current_token = _CURRENT.set(self)
        self._telemetry._count_in_flight(self._source, 1)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self._finished:  # cancelled (the host's timeout, shutdown) or a bug: still accounted for
                code = "cancelled" if exc_type is not None and exc_type.__name__ == "CancelledError" else \
                    getattr(exc_type, "__name__", "_OTHER")
                if self.attempt is not None:
                    self.attempt.end_with(code)
                self._telemetry._deferred.put(self._telemetry.requests.add, 1,
                                              {"completions.source": self._source, "completions.code": code})
                self._span.set_status(Status(StatusCode.ERROR, code))
                self._span.set_attribute("error.type", code)
            self._span.end()
        finally:
            _CURRENT.reset(self._current_token)
            otel_context.detach(self._context_token)
            self._telemetry._count_in_flight(self._source, -1)

    @property
    def trace_id(self) -> str:  # type: ignore[override]
        span_context = self._span.get_span_context()
        return format(span_context.trace_id, "032x") if span_context.is_valid else ""

    def finish(self, outcome: Any, result: Any, params: Mapping[str, Any]) -> None:
        self._finished = True
        telemetry, span = self._telemetry, self._span
        error = outcome.error
        code = error.code if error is not None else "ok"
        backend = result.backend if result is not None else self.last_backend
        deployment = backend.deployment if backend is not None else self._deployment
        common: dict[str, Any] = {"gen_ai.operation.name": OPERATION, "gen_ai.provider.name": PROVIDER}
        if backend is not None:
            common.update(telemetry.backend_attributes(backend)[1])
        elif deployment:
            common["gen_ai.request.model"] = deployment
        response = result.response if result is not None else None
        response_model = response.get("model") if isinstance(response, dict) else None
        if not isinstance(response_model, str):
            response_model = None

        defer = telemetry._deferred.put
        defer(telemetry.requests.add, 1, {"completions.source": self._source, "completions.code": code,
                                          "completions.status_code": outcome.status})
        attributes = {**common, "completions.source": self._source}  # of the operation and its tokens
        if response_model:
            attributes["gen_ai.response.model"] = response_model
        if params:  # a valid request: a gen-AI operation took place (not for 400s of our own)
            defer(telemetry.operation_duration.record, time.perf_counter() - self._started,
                  {**attributes, "error.type": code} if error is not None else attributes)
        usage = outcome.body.get("usage") if outcome.ok else None
        if isinstance(usage, dict):
            defer(telemetry.token_usage.record, usage.get("prompt_tokens", 0),
                  {**attributes, "gen_ai.token.type": "input"})
            defer(telemetry.token_usage.record, usage.get("completion_tokens", 0),
                  {**attributes, "gen_ai.token.type": "output"})

        if not span.is_recording():
            return
        if deployment and deployment != self._deployment:  # another backend's deployment answered
            span.update_name(f"{OPERATION} {deployment}")
        span_attributes: dict[str, Any] = {**common, "completions.status_code": outcome.status}
        if result is not None:
            span_attributes["completions.attempts"] = result.attempts
            span_attributes["completions.failovers"] = result.failovers
        elif error is not None and error.attempts:
            span_attributes["completions.attempts"] = error.attempts
        if response_model:
            span_attributes["gen_ai.response.model"] = response_model
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            span_attributes["gen_ai.response.id"] = response["id"]
        if isinstance(usage, dict):
            span_attributes["gen_ai.usage.input_tokens"] = usage.get("prompt_tokens", 0)
            span_attributes["gen_ai.usage.output_tokens"] = usage.get("completion_tokens", 0)
        choices = outcome.body.get("choices") if outcome.ok else None
        if isinstance(choices, list):
            span_attributes["gen_ai.response.finish_reasons"] = [str(c.get("finish_reason")) for c in choices]
        for name, attribute in _REQUEST_ATTRIBUTES:
            value = params.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                span_attributes[attribute] = value
        if getattr(self._settings, "log_text", False) and params:
            span_attributes.update(_content(params, choices))
        if error is not None:
            span_attributes["error.type"] = code
            span.set_status(Status(StatusCode.ERROR, code))
        span.set_attributes(span_attributes)


_REQUEST_ATTRIBUTES = (("max_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
                       ("top_p", "gen_ai.request.top_p"), ("n", "gen_ai.request.choice.count"),
                       ("seed", "gen_ai.request.seed"), ("presence_penalty", "gen_ai.request.presence_penalty"),
                       ("frequency_penalty", "gen_ai.request.frequency_penalty"))


def _content(params: Mapping[str, Any], choices: Any) -> dict[str, str]:
    """The prompt(s) and completions as the gen-AI conventions' opt-in content attributes
    (only with COMPLETIONS_LOG_TEXT)."""
    prompts = params.get("prompt")
    prompts = prompts if isinstance(prompts, list) else [prompts]
    content = {"gen_ai.input.messages": json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": prompt}]} for prompt in prompts])}
    if isinstance(choices, list):
        content["gen_ai.output.messages"] = json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": choice.get("text", "")}],
              "finish_reason": choice.get("finish_reason")} for choice in choices])
    return content


class _Attempt(Attempt):
    __slots__ = ("_telemetry", "_invocation", "_span", "_metric_attributes", "_started")

    def __init__(self, telemetry: OTelTelemetry, invocation: _Invocation, backend: Any, number: int,
                 kind: str) -> None:
        self._telemetry = telemetry
        self._invocation = invocation
        span_attributes, self._metric_attributes = telemetry.backend_attributes(backend)
        if kind != "first":
            previous = invocation.last_backend
            reason = invocation.last_error.code if invocation.last_error is not None else "_OTHER"
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
                ATTEMPT_SPAN_NAME, kind=SpanKind.CLIENT,
                attributes={**span_attributes, "completions.attempt": number, "completions.attempt.kind": kind})
        else:  # an unsampled invocation's children are unsampled too (parent-based): skip building them
            self._span = trace.INVALID_SPAN
        self._started = time.perf_counter()

    def end(self, error: Any = None, status: int | None = None) -> None:
        if error is None:
            self._ended(status, None)
            self._invocation.last_error = None
            return
        upstream = error.upstream_status
        self._ended(upstream, str(upstream) if upstream is not None and upstream >= 400 else error.code)
        self._invocation.last_error = error

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


class _Deferred:
    """Measurements queued by the request path and recorded into the SDK by a daemon thread
    every ``DEFERRED_INTERVAL`` (mostly while the event loop waits on the network). Bounded:
    past ``DEFERRED_MAX`` waiting, a measurement is dropped and counted."""

    def __init__(self, telemetry: OTelTelemetry) -> None:
        self._telemetry = telemetry
        self._queue: collections.deque = collections.deque()
        self._lost = self._reported_lost = 0
        self._lock = threading.Lock()  # one drain at a time (the thread, a flush)
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="completions-metrics", daemon=True).start()
        atexit.register(self.drain)  # before the providers' own exit hooks (registered earlier) export

    def put(self, record: Any, value: float, attributes: Any) -> None:
        if len(self._queue) >= DEFERRED_MAX:
            self._lost += 1
            return
        self._queue.append((record, value, attributes))

    def _run(self) -> None:
        while not self._stopped.wait(DEFERRED_INTERVAL):
            self.drain()

    def stop(self) -> None:
        self._stopped.set()
        self.drain()

    def drain(self) -> None:
        with self._lock:
            queue = self._queue
            done = 0
            # Counters are summed per attribute set first: one SDK call per set and pass, rather
            # than one per request (histograms need every value, so they go one by one).
            sums: dict[tuple, list] = {}
            while queue:
                record, value, attributes = queue.popleft()
                owner = getattr(record, "__self__", None)
                if isinstance(owner, Counter):
                    try:
                        key = (owner, frozenset(attributes.items()))
                    except TypeError:  # an unhashable attribute value: recorded as it is
                        key = None
                    if key is not None:
                        entry = sums.get(key)
                        if entry is None:
                            sums[key] = [value, attributes]
                        else:
                            entry[0] += value
                        continue
                self._record(record, value, attributes)
                done += 1
                if done % DEFERRED_CHUNK == 0:
                    time.sleep(0)  # let the event loop's thread take the GIL between chunks
            for (owner, _), (value, attributes) in sums.items():
                self._record(owner.add, value, attributes)
            lost = self._lost
            if lost > self._reported_lost:  # (a counter the drain itself feeds: recorded directly)
                self._telemetry.dropped.add(lost - self._reported_lost,
                                            {"otel.signal": "metrics", "error.type": "queue_full"})
                self._reported_lost = lost


    @staticmethod
    def _record(record: Any, value: float, attributes: Any) -> None:
        try:
            record(value, attributes)
        except Exception:  # noqa: BLE001 - a measurement must not stop the others
            log.debug("a measurement could not be recorded", exc_info=True)


# -- the pipeline -------------------------------------------------------------------
class _CountingSpanExporter(OTLPSpanExporter):
    """OTLP/HTTP span exporter that counts the spans a failed export lost."""

    dropped: Any = None

    def export(self, spans: Any) -> SpanExportResult:
        result = super().export(spans)
        if result is not SpanExportResult.SUCCESS and self.dropped is not None:
            self.dropped.add(len(spans), {"otel.signal": "traces", "error.type": "export_failed"})
        return result


class _CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor (a bounded queue, exported on its own thread), counting
    the spans it drops when the queue is full (a slow or unreachable collector)."""

    dropped: Any = None

    def on_end(self, span: Any) -> None:
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if (queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen
                and self.dropped is not None and span.context is not None and span.context.trace_flags.sampled):
            self.dropped.add(1, {"otel.signal": "traces", "error.type": "queue_full"})
        super().on_end(span)


RATE_LIMITED = "microsoft.rate_limited"  # Azure Monitor's name for it; the distro implements its own
DEFAULT_TRACES_PER_SECOND = 5.0  # as Azure Monitor's rate-limited sampler


class RateLimitedSampler(Sampler):
    """At most ``per_second`` new traces a second (a token bucket holding one second's worth).

    Recording and exporting a span costs the process about 0.14 ms of CPU twice over (the
    SDK's span, then its pure-Python OTLP encoding): at hundreds of completions a second
    that is a large share of an instance's CPU, spent describing requests that all look
    alike. Metrics count every request whatever is sampled."""

    def __init__(self, per_second: float) -> None:
        self._rate = per_second
        self._capacity = max(1.0, per_second)  # a trace takes one token: a rate under 1 a second still gets them
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()  # held for a few arithmetic operations

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None, attributes: Any = None,
                      links: Any = None, trace_state: Any = None) -> SamplingResult:
        now = time.monotonic()
        with self._lock:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            self._last = now
            sampled = self._tokens >= 1
            if sampled:
                self._tokens -= 1
        if not sampled:
            return SamplingResult(Decision.DROP, None, trace_state)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)

    def get_description(self) -> str:
        return f"RateLimitedSampler{{{self._rate:g}/s}}"


def _sampler(environ: Mapping[str, str]) -> Sampler | None:
    """Parent-based, at most 5 new traces a second, unless ``OTEL_TRACES_SAMPLER`` says
    otherwise (None: the SDK reads the standard names itself). ``microsoft.rate_limited``
    with ``OTEL_TRACES_SAMPLER_ARG`` (traces a second) works for OTLP as for Azure Monitor."""
    name = (environ.get("OTEL_TRACES_SAMPLER") or "").strip()
    if name and name != RATE_LIMITED:
        return None
    per_second = DEFAULT_TRACES_PER_SECOND
    if name == RATE_LIMITED and (environ.get("OTEL_TRACES_SAMPLER_ARG") or "").strip():
        try:
            per_second = float(environ["OTEL_TRACES_SAMPLER_ARG"])
            if not (per_second >= 0 and per_second == per_second):
                raise ValueError
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG must be a number of traces a second; using %g",
                        DEFAULT_TRACES_PER_SECOND)
            per_second = DEFAULT_TRACES_PER_SECOND
    return ParentBased(root=RateLimitedSampler(per_second))


def configure(environ: Mapping[str, str]) -> OTelTelemetry:
    """Build the pipeline the switches ask for and install it as the global providers.
    The SDK and the exporters read their own ``OTEL_*`` settings from the environment."""
    insights, otlp = switches(environ)
    _quiet_exporter_logs()
    if insights and _true(environ.get(WORKER_TELEMETRY)):
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):  # the worker configured Azure Monitor before importing us
            if otlp:
                log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is ignored: %s is true, so the Functions worker "
                            "configured the telemetry pipeline", WORKER_TELEMETRY)
            log.info("telemetry: using the pipeline the Functions worker configured (%s)", WORKER_TELEMETRY)
            return OTelTelemetry(provider, metrics.get_meter_provider())
    if insights:
        _check_connection_string(environ.get(CONNECTION_STRING, ""))
    os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", DEFAULT_RESOURCE_DETECTORS)
    # Exemplars (a trace id kept with some measurements) cost a third of each measurement's time,
    # and with traces rate-limited they would seldom point at a recorded trace: off unless asked for.
    os.environ.setdefault("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")
    resource = _resource()
    processors, exporters = [], []
    readers = []
    if otlp:
        span_exporter = _CountingSpanExporter()
        processors.append(_CountingBatchSpanProcessor(span_exporter))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))  # its interval: OTEL_METRIC_EXPORT_INTERVAL
        exporters.append(span_exporter)
    if insights:
        from azure.monitor.opentelemetry import configure_azure_monitor

        # The host already sends the worker's log records to Application Insights: the
        # distro's log pipeline would send each one twice. (It reads this setting only.)
        os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
        # The same default sampling as for OTLP (the distro's own: every trace), in its own terms.
        os.environ.setdefault("OTEL_TRACES_SAMPLER", RATE_LIMITED)
        configure_azure_monitor(
            connection_string=environ.get(CONNECTION_STRING, "").strip(), resource=resource,
            span_processors=processors, metric_readers=readers,
            enable_live_metrics=False, enable_performance_counters=False,
            instrumentation_options={name: {"enabled": False} for name in DISTRO_INSTRUMENTATIONS})
        tracer_provider, meter_provider = trace.get_tracer_provider(), metrics.get_meter_provider()
        what = "Application Insights" + (" and OTLP" if otlp else "")
    else:
        tracer_provider = TracerProvider(resource=resource, sampler=_sampler(environ))
        for processor in processors:
            tracer_provider.add_span_processor(processor)
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        what = "OTLP"
    telemetry = OTelTelemetry(tracer_provider, meter_provider, owned=(tracer_provider, meter_provider))
    for component in (*processors, *exporters):
        component.dropped = telemetry.dropped
    log.info("telemetry: metrics and traces go to %s (service.name %s)", what, resource.attributes.get(SERVICE_NAME))
    return telemetry


def _true(value: str | None) -> bool:
    """True as the Functions worker reads its own switches (``is_true_like``)."""
    return (value or "").strip().lower() in {"1", "true", "t", "yes", "y"}


def _resource() -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, the detectors), with the
    app's name when nothing names the service."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _check_connection_string(value: str) -> None:
    """Refuse, by name, a connection string the Azure Monitor exporter would refuse (its
    parser's errors quote no part of the value)."""
    from azure.monitor.opentelemetry.exporter._connection_string_parser import ConnectionStringParser

    try:
        ConnectionStringParser(value.strip())
    except ValueError:
        raise TelemetrySettingError(f"{CONNECTION_STRING} is malformed (it needs InstrumentationKey=<a GUID> "
                                    "and optionally IngestionEndpoint=...)") from None


class _Throttle(logging.Filter):
    """At most one record per interval: an unreachable collector fails every batch."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


def _quiet_exporter_logs() -> None:
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("opentelemetry.exporter"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _Throttle) for f in logger.filters):
                logger.addFilter(_Throttle(EXPORTER_LOG_INTERVAL))
