"""The OpenTelemetry pipeline: providers, exporters and sampling, installed once per process.

Imported only when a telemetry switch is set (``telemetry.switches``). Nothing here
blocks the event loop: spans go to a BatchSpanProcessor (a bounded queue, exported
on its own thread; when full, spans are dropped and counted), metrics are
aggregated in memory and exported by a PeriodicExportingMetricReader on its own
thread.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult

from ..config import registry as R
from .otel import OTelTelemetry

log = logging.getLogger(__name__)

CONNECTION_STRING = R.APPINSIGHTS_CONNECTION_STRING.name
WORKER_TELEMETRY = R.WORKER_TELEMETRY.name  # the worker configures Azure Monitor itself when this is true
DEFAULT_SERVICE_NAME = "azure-openai-completions"
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
EXPORT_TIMEOUT = 2  # seconds one export may take, unless OTEL_EXPORTER_OTLP_TIMEOUT says otherwise
EXIT_BUDGET = 4.0  # seconds the exit flush may take in all (an instance stops within 5 s)


class TelemetrySettingError(Exception):
    """A telemetry setting the SDK would refuse; the message names it, never its value."""


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


def configure(environ: Mapping[str, str], *, insights: bool, otlp: bool) -> OTelTelemetry:
    """Build the pipeline the switches ask for (Application Insights, OTLP) and install it as the
    global providers. The SDK and the exporters read their own ``OTEL_*`` settings from the environment."""
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
    # An export that hangs (a collector that accepts and never answers) must not hold an instance's
    # exit: each export gives up after 2 s unless the settings say otherwise, and the exit flush as
    # a whole has EXIT_BUDGET (the SDK's own exit hooks are off for the providers made here).
    os.environ.setdefault("OTEL_EXPORTER_OTLP_TIMEOUT", str(EXPORT_TIMEOUT))
    resource = _resource()
    processors, exporters = [], []
    readers = []
    if otlp:
        span_exporter = _CountingSpanExporter()
        processors.append(_CountingBatchSpanProcessor(span_exporter))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))  # its interval: OTEL_METRIC_EXPORT_INTERVAL
        exporters.append(span_exporter)
    if insights:
        tracer_provider, meter_provider = _azure_monitor(environ, resource, processors, readers)
        what = "Application Insights" + (" and OTLP" if otlp else "")
    else:
        tracer_provider = TracerProvider(resource=resource, sampler=_sampler(environ), shutdown_on_exit=False)
        for processor in processors:
            tracer_provider.add_span_processor(processor)
        meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        what = "OTLP"
    # (a provider the SDK did not install, a proxy, has nothing to flush or stop)
    owned = tuple(p for p in (tracer_provider, meter_provider) if hasattr(p, "shutdown"))
    telemetry = OTelTelemetry(tracer_provider, meter_provider, owned=owned)
    atexit.register(telemetry.shutdown, EXIT_BUDGET)
    counting: list[Any] = [*processors, *exporters]
    for component in counting:
        component.dropped = telemetry.dropped
    log.info("telemetry: metrics and traces go to %s (service.name %s)", what, resource.attributes.get(SERVICE_NAME))
    return telemetry


def _azure_monitor(environ: Mapping[str, str], resource: Resource, processors: list, readers: list) -> tuple[Any, Any]:
    """The Azure Monitor distro's pipeline, with ours (OTLP) beside it; its (tracer, meter) providers."""
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
    return trace.get_tracer_provider(), metrics.get_meter_provider()


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
