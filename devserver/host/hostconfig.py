"""What the dev host reads from ``host.json``, with the Functions host's defaults.

Only the values the dev host acts on: the HTTP route prefix and throttles, the
function timeout, and ``extensions.queues`` (the Storage queues extension's
``QueuesOptions``). Anything missing takes the host's default; a value the host
would reject at start is rejected here too (``HostConfigError``), so a
``host.json`` that works locally does not fail in Azure for that reason.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")
MAX_BATCH_SIZE = 32  # Azure Queue Storage returns at most 32 messages per request
MIN_POLLING_INTERVAL = 0.1  # QueuePollingIntervals.Minimum


class HostConfigError(ValueError):
    """host.json holds a value the Functions host would refuse."""


def timespan(value: object, name: str) -> float:
    """A .NET TimeSpan string (``[d.]hh:mm:ss[.fff]``) in seconds."""
    found = _TIMESPAN.match(str(value).strip())
    if found is None:
        raise HostConfigError(f"{name} must be a timespan like 00:00:30, not {value!r}")
    days = int(found["days"] or 0)
    return ((days * 24 + int(found["h"])) * 60 + int(found["m"])) * 60 + float(found["s"])


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues``, as the Storage queues extension (v5) applies it."""

    batch_size: int = 16
    new_batch_threshold: int = 8  # default: batch_size // 2 per processor, see from_json
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"


    @classmethod
    def from_json(cls, section: dict | None, processors: int | None = None) -> QueueOptions:
        section = {k.lower(): v for k, v in (section or {}).items()}
        batch_size = int(section.get("batchsize", cls.batch_size))
        if not 0 < batch_size <= MAX_BATCH_SIZE:
            raise HostConfigError(f"extensions.queues.batchSize must be 1 to {MAX_BATCH_SIZE}")
        threshold = section.get("newbatchthreshold")
        if threshold is None or int(threshold) == -1:
            threshold = (batch_size // 2) * (processors or os.cpu_count() or 1)
        threshold = int(threshold)
        if threshold < 0:
            raise HostConfigError("extensions.queues.newBatchThreshold must not be negative")
        polling = timespan(section["maxpollinginterval"], "extensions.queues.maxPollingInterval") \
            if "maxpollinginterval" in section else cls.max_polling_interval
        if polling < MIN_POLLING_INTERVAL:
            raise HostConfigError("extensions.queues.maxPollingInterval must be at least 00:00:00.100")
        visibility = timespan(section["visibilitytimeout"], "extensions.queues.visibilityTimeout") \
            if "visibilitytimeout" in section else cls.visibility_timeout
        max_dequeue = int(section.get("maxdequeuecount", cls.max_dequeue_count))
        if max_dequeue <= 0:
            raise HostConfigError("extensions.queues.maxDequeueCount must be greater than zero")
        encoding = str(section.get("messageencoding", cls.message_encoding)).lower()
        if encoding not in ("base64", "none"):
            raise HostConfigError("extensions.queues.messageEncoding must be base64 or none")
        return cls(batch_size, threshold, polling, visibility, max_dequeue, encoding)


@dataclass(frozen=True)
class HttpOptions:
    """``extensions.http``: the prefix of every HTTP route and the host's HTTP throttles."""

    route_prefix: str = "api"
    max_outstanding_requests: int | None = None  # None: unbounded (the host's default, -1)
    max_concurrent_requests: int | None = None

    @classmethod
    def from_json(cls, section: dict | None) -> HttpOptions:
        section = {k.lower(): v for k, v in (section or {}).items()}

        def bound(name: str) -> int | None:
            value = int(section.get(name.lower(), -1))
            return None if value <= 0 else value

        return cls(str(section.get("routeprefix", cls.route_prefix)).strip("/"),
                   bound("maxOutstandingRequests"), bound("maxConcurrentRequests"))


@dataclass(frozen=True)
class HostConfig:
    http: HttpOptions = field(default_factory=HttpOptions)
    queues: QueueOptions = field(default_factory=QueueOptions)
    function_timeout: float | None = 300.0  # the Consumption plan's default; None: unlimited

    @classmethod
    def load(cls, path: Path, processors: int | None = None) -> HostConfig:
        """host.json at ``path``; the host's defaults when the file is absent."""
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            return cls(queues=QueueOptions.from_json(None, processors))
        except ValueError as error:
            raise HostConfigError(f"{path.name} is not valid JSON: {error}") from None
        extensions = document.get("extensions") or {}
        timeout = document.get("functionTimeout")
        function_timeout = cls.function_timeout
        if timeout is not None:
            function_timeout = None if str(timeout).strip() == "-1" else timespan(timeout, "functionTimeout")
        return cls(HttpOptions.from_json(extensions.get("http")),
                   QueueOptions.from_json(extensions.get("queues"), processors), function_timeout)
