"""Telemetry switches: whether metrics and traces go anywhere, and the settings checked first.

The app emits OpenTelemetry metrics and traces only when one of the standard
switches is set:

- ``APPLICATIONINSIGHTS_CONNECTION_STRING`` → Azure Monitor's distro
  (``configure_azure_monitor``) sends them to Application Insights;
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` → the OTLP/HTTP exporter sends them to any
  OTLP backend (with both set, to both).

With neither, this module and ``telemetry.hooks`` are all that load: no
OpenTelemetry SDK, API or exporter is imported (cold start unchanged). With a
switch, ``telemetry.pipeline`` is imported once, at ``telemetry_from_environ()``.
A malformed setting is logged once, by name (never its value: headers and
connection strings hold keys), and telemetry stays off; nothing here raises into
indexing or a request.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from ..config import registry as R
from .hooks import NOOP, Telemetry

log = logging.getLogger(__name__)

CONNECTION_STRING = R.APPINSIGHTS_CONNECTION_STRING.name
OTLP_ENDPOINT = R.OTLP_ENDPOINT.name
SUPPORTED_OTLP_PROTOCOLS = ("http/protobuf",)

# OTEL_EXPORTER_OTLP_HEADERS: "name=value,name=value" (W3C baggage form; values URL-encoded
# or plain). The SDK logs a malformed entry *with its value* (which can be an API key), so
# the whole setting is checked here first and refused by name.
_HEADER_ENTRY = re.compile(r"[ \t]*[!#-'*+\-.0-9A-Z^-z|~]+[ \t]*=[ \t]*[ !#-+\--:<-\[\]-~]*[ \t]*")


def switches(environ: Mapping[str, str]) -> tuple[bool, bool]:
    """(Application Insights, OTLP): which exporters the settings ask for. Neither when
    ``OTEL_SDK_DISABLED`` is true (read as the SDK reads it), which would make them no-ops."""
    if (environ.get(R.OTEL_SDK_DISABLED.name) or "").strip().lower() == "true":
        return False, False
    return bool((environ.get(CONNECTION_STRING) or "").strip()), bool((environ.get(OTLP_ENDPOINT) or "").strip())


def settings_problems(environ: Mapping[str, str]) -> dict[str, str]:
    """Setting name -> what is wrong with it (never its value), for the settings this
    module reads before handing them to the SDK."""
    problems: dict[str, str] = {}
    _, otlp = switches(environ)
    if otlp:
        for name in (OTLP_ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
            value = (environ.get(name) or "").strip()
            if value and not _is_http_url(value):
                problems[name] = "must be an http:// or https:// URL"
        for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                     "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"):
            value = (environ.get(name) or "").strip()
            if value and value not in SUPPORTED_OTLP_PROTOCOLS:
                problems[name] = f"must be one of {', '.join(SUPPORTED_OTLP_PROTOCOLS)} (the exporter this app ships)"
        for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                     "OTEL_EXPORTER_OTLP_METRICS_HEADERS"):
            value = environ.get(name) or ""
            if value.strip() and not all(_HEADER_ENTRY.fullmatch(entry) for entry in re.split(r"[ \t]*,[ \t]*", value)
                                         if entry):
                problems[name] = "must be a comma-separated list of name=value"
        for name in ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                     "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"):
            if not _positive_number(environ.get(name)):
                problems[name] = "must be a positive number"
    for name in ("OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT", "OTEL_BSP_SCHEDULE_DELAY",
                 "OTEL_BSP_EXPORT_TIMEOUT"):
        if not _positive_number(environ.get(name)):
            problems[name] = "must be a positive number (milliseconds)"
    for name in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        if not _positive_number(environ.get(name), integer=True):
            problems[name] = "must be a positive integer"
    if not problems:  # the SDK raises when a batch is larger than the queue (defaults 512 and 2048)
        queue = int((environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or "").strip() or 2048)
        batch = int((environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or "").strip() or 512)
        if batch > queue:
            problems["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = "must not exceed OTEL_BSP_MAX_QUEUE_SIZE (default 512, 2048)"
    return problems


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _positive_number(raw: str | None, *, integer: bool = False) -> bool:
    if raw is None or not raw.strip():
        return True  # unset: the SDK's default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        return False
    return 0 < value < float("inf")


def telemetry_from_environ(environ: Mapping[str, str] | None = None) -> Telemetry:
    """The process's telemetry, configured from its settings: ``NOOP`` when no switch is
    set or a setting is malformed (logged once, by name), else the OpenTelemetry pipeline,
    installed as the global providers. Call once per process (function_app does, at import)."""
    environ = os.environ if environ is None else environ
    insights, otlp = switches(environ)
    if not (insights or otlp):
        return NOOP
    problems = settings_problems(environ)
    if problems:
        log.error("telemetry is off: %s", "; ".join(f"{name} {reason}" for name, reason in sorted(problems.items())))
        return NOOP
    try:
        from .pipeline import TelemetrySettingError, configure  # the SDK and the exporters load here

        try:
            return configure(environ, insights=insights, otlp=otlp)
        except TelemetrySettingError as exc:
            log.error("telemetry is off: %s", exc)
    except Exception as exc:  # noqa: BLE001 - telemetry never breaks indexing; the type says enough
        log.error("telemetry is off: configuring it failed (%s)", type(exc).__name__)
    return NOOP
