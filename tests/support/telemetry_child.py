"""A fresh process for the telemetry tests: ``python tests/telemetry_child.py CONFIG_JSON``.

Telemetry is configured once per process, from the environment, at ``import
function_app`` (global providers can be set once), so each end-to-end case runs
here: it refuses any connection beyond loopback (as the test suite's guard does),
imports the app, runs seed completions through the HTTP function on one event
loop (as the worker does), flushes, and prints one JSON line of what it saw.

CONFIG: ``requests`` (how many), ``traceparent`` (passed as the invocation's
``func.Context``), ``flush`` (force_flush the global providers), ``log_text``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

violations: list[str] = []
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


def _loopback(host) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in ("localhost", "127.0.0.1", "::1", "None"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if isinstance(address, tuple) and not _loopback(address[0]):
        violations.append(f"connect {address[0]}")
        raise OSError("test isolation: not loopback")
    return _connect(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host):
        violations.append(f"lookup {host}")
        raise socket.gaierror("test isolation: not loopback")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.getaddrinfo = _guarded_getaddrinfo


class _TraceContext:
    def __init__(self, trace_parent: str) -> None:
        self.trace_parent, self.trace_state, self.attributes = trace_parent, "", {}


class _Context:
    def __init__(self, trace_parent: str) -> None:
        self.trace_context = _TraceContext(trace_parent)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def main() -> int:
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    lines = _Lines()
    logging.getLogger().addHandler(lines)
    logging.getLogger().setLevel(logging.INFO)
    started = time.perf_counter()
    import function_app  # telemetry is configured here, from the environment

    imported = time.perf_counter() - started
    from support.worker_requests import completions_request

    user_function = function_app.completions.build().get_user_function()
    body = json.dumps({"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0,
                       **config.get("extra", {})}).encode()
    context = _Context(config["traceparent"]) if config.get("traceparent") else None
    loop = asyncio.new_event_loop()
    statuses, durations = [], []
    for _ in range(config.get("requests", 0)):
        request = completions_request(raw=body)
        began = time.perf_counter()
        response = loop.run_until_complete(user_function(request, context))
        durations.append(time.perf_counter() - began)
        statuses.append(response.status_code)
    flushed = None
    if config.get("flush"):
        began = time.perf_counter()
        function_app.service.telemetry.flush()
        flushed = time.perf_counter() - began
    loop.run_until_complete(function_app.service.aclose())
    loop.close()
    print(json.dumps({
        "import_s": imported, "statuses": statuses, "durations": durations, "flush_s": flushed,
        "telemetry": type(function_app.service.telemetry).__name__,
        "otel_modules": sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor"))),
        "violations": violations, "logs": lines.lines, "finished_at": time.time(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
