"""A small OTLP/HTTP receiver on loopback: what an OpenTelemetry collector would get.

For tests and benchmarks: it accepts ``POST /v1/traces`` and ``POST /v1/metrics``
(``application/x-protobuf``, gzip or not), decodes them with ``opentelemetry-proto``
and keeps them, or misbehaves on request (``mode``):

- ``ok``: 200 with an empty export response, as a collector answers;
- ``error``: 500 to every export;
- ``stall``: reads the request, then holds the connection without answering until
  ``release()`` (or ``stall_seconds`` pass);
- a refusing collector is simply a port nothing listens on (``refused_endpoint()``).

From the command line, ``python -m devserver.emulators.otlp_receiver [--port 4318]`` prints each
span and metric point it receives (point the app at it with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``).
"""

from __future__ import annotations

import argparse
import gzip
import socket
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind == "array_value":
        return [_value(item) for item in value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.values}
    return value


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list -> dict."""
    return {item.key: _value(item.value) for item in key_values}


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    status_message: str
    resource: dict[str, Any]
    duration_s: float


@dataclass
class Point:
    """One metric data point: a histogram's (count, sum) or a sum's value."""

    metric: str
    unit: str
    attributes: dict[str, Any]
    value: float = 0.0
    count: int = 0
    sum: float = 0.0
    kind: str = ""
    resource: dict[str, Any] = field(default_factory=dict)


class Received:
    """Everything a receiver decoded, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[Span] = []
        self.points: list[Point] = []  # every export's points, in arrival order
        self.requests: list[tuple[str, dict[str, str], bytes]] = []  # (path, headers, raw body)

    def add(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if path.endswith("/v1/traces"):
            request = ExportTraceServiceRequest.FromString(body)
            spans = [_span(span, attributes(rs.resource.attributes)) for rs in request.resource_spans
                     for ss in rs.scope_spans for span in ss.spans]
            with self._lock:
                self.requests.append((path, headers, body))
                self.spans += spans
            return ExportTraceServiceResponse().SerializeToString()
        request = ExportMetricsServiceRequest.FromString(body)
        points = [point for rm in request.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
                  for point in _points(metric, attributes(rm.resource.attributes))]
        with self._lock:
            self.requests.append((path, headers, body))
            self.points += points
        return ExportMetricsServiceResponse().SerializeToString()

    def latest(self, metric: str) -> list[Point]:
        """The points of ``metric`` from the latest export that had it (cumulative
        temporality: the latest export holds the totals)."""
        with self._lock:
            points = [p for p in self.points if p.metric == metric]
        if not points:
            return []
        # each export lists every series once: keep the last point of each attribute set
        series: dict[tuple, Point] = {}
        for point in points:
            series[tuple(sorted((k, str(v)) for k, v in point.attributes.items()))] = point
        return list(series.values())


def _span(span: Any, resource: dict[str, Any]) -> Span:
    return Span(span.name, span.kind, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                attributes(span.attributes), [(e.name, attributes(e.attributes)) for e in span.events],
                span.status.code, span.status.message, resource,
                (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9)


def _points(metric: Any, resource: dict[str, Any]) -> list[Point]:
    kind = metric.WhichOneof("data")
    data = getattr(metric, kind)
    points = []
    for point in data.data_points:
        if kind in ("histogram", "exponential_histogram"):
            points.append(Point(metric.name, metric.unit, attributes(point.attributes), count=point.count,
                                sum=point.sum, kind=kind, resource=resource))
        else:
            value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
            points.append(Point(metric.name, metric.unit, attributes(point.attributes), value=value, kind=kind,
                                resource=resource))
    return points


class OTLPReceiver:
    """``with OTLPReceiver() as receiver:`` ... ``receiver.endpoint`` (for OTEL_EXPORTER_OTLP_ENDPOINT)."""

    def __init__(self, mode: str = "ok", host: str = "127.0.0.1", port: int = 0, *,
                 stall_seconds: float = 60.0, echo: bool = False) -> None:
        self.mode = mode
        self.received = Received()
        self.stall_seconds = stall_seconds
        self.released = threading.Event()
        self.echo = echo
        self.stalled = 0  # exports held without an answer
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver.mode == "stall":
                    receiver.stalled += 1
                    receiver.released.wait(receiver.stall_seconds)
                    self.close_connection = True
                    return
                if receiver.mode == "error":
                    self._answer(500, b"collector failure", "text/plain")
                    return
                answer = receiver.received.add(self.path, headers, body)
                if receiver.echo:
                    receiver.print_latest(self.path)
                self._answer(200, answer, "application/x-protobuf")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    def start(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def release(self) -> None:
        """Let stalled exports go (unanswered)."""
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def print_latest(self, path: str) -> None:
        if path.endswith("/v1/traces"):
            for span in self.received.spans[-20:]:
                print(f"span {span.name} trace={span.trace_id} {span.attributes}", flush=True)
        else:
            for point in self.received.points[-40:]:
                print(f"metric {point.metric} {point.attributes} value={point.value} count={point.count} "
                      f"sum={point.sum}", flush=True)


def refused_endpoint(host: str = "127.0.0.1") -> str:
    """An http:// endpoint on a loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.emulators.otlp_receiver",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args(argv)
    receiver = OTLPReceiver(host=args.host, port=args.port, echo=True).start()
    print(f"OTLP/HTTP receiver on {receiver.endpoint} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    receiver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
