"""An aiohttp.web application served with bounded connections and idle time-outs.

aiohttp parses HTTP/1.1 strictly (llhttp): a ``Transfer-Encoding`` other than
``chunked``, a ``Content-Length`` that is not digits (``+82``, ``-1``), a chunk
size that is not hex (``-5``, ``0x5``) or overflows, both framings at once, or
a duplicated ``Content-Length`` get 400 before any handler runs. On top of that:

- at most ``max_connections`` connections are open (fewer when the process's
  open-file limit could not hold them: ``connection_limit``); a new one beyond that
  closes the oldest *idle* connection (no request in progress, as nginx reuses
  keep-alive connections), or, when every connection is busy, gets 503 and is
  closed. Idle clients cannot starve a real one, and the process never runs out
  of file descriptors;
- a connection that has not sent a complete request head ``idle_timeout``
  seconds after it opened or after its last response is closed (aiohttp's
  keep-alive timer, which also covers a head dribbled byte by byte);
- handlers read bodies through ``read_body``, which times out (408) and caps
  the size (413).

Every connection is served by the one event loop; an idle one costs a socket
and a few objects, not a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

MAX_BODY_BYTES = 32 * 1024 * 1024
JSON = "application/json"
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT = 120.0  # Kestrel (the Functions host's server) keeps idle connections 130 s
# asyncio accepts up to `backlog` connections per loop pass before the first of them is seen
# (and counted) here: the open-file limit must leave room for two such bursts and for the
# process's other files (the emulators, upstream and storage connections).
ACCEPT_BACKLOG = 128
FILE_RESERVE = 256
LINGERING_TIME = 2.0  # after answering early (413, 408), the rest of a body is read and dropped this long
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
         b"Retry-After: 1\r\n\r\n")


class _QuietClientErrors(logging.Filter):
    """aiohttp logs a traceback for every malformed request and every client that hangs
    up mid-body: the client's doing, answered with 400 or nothing, not the host's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (HttpProcessingError, ConnectionResetError))


class _Busy(asyncio.Protocol):
    """The answer to a connection beyond the limit when no connection is idle."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_BUSY)  # type: ignore[attr-defined]
        transport.close()


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard maximum; returns the limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    try:
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_limit(requested: int, file_limit: int) -> int:
    """``requested``, or less when the open-file limit could not hold that many connections."""
    return max(1, min(requested, file_limit - FILE_RESERVE - 2 * ACCEPT_BACKLOG))


class BoundedServer:
    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 shutdown_timeout: float = 10.0) -> None:
        self.host = host
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        # handler_cancellation: a client that hangs up cancels its handler at once (the host's
        # proxy sees the abort, as Kestrel does); invocations themselves are shielded from it.
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout,
                                     shutdown_timeout=shutdown_timeout, lingering_time=LINGERING_TIME,
                                     handler_cancellation=True)
        self._port = port
        self._listener: asyncio.AbstractServer | None = None
        logging.getLogger("aiohttp.server").addFilter(_QuietClientErrors())

    @property
    def port(self) -> int:
        assert self._listener is not None
        return self._listener.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> BoundedServer:
        await self._runner.setup()
        self._listener = await asyncio.get_running_loop().create_server(
            self._accept, self.host, self._port, reuse_address=True, backlog=ACCEPT_BACKLOG,
            family=socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        return self

    def _accept(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        # Oldest first. A closed connection can stay listed while aiohttp lingers over the
        # rest of a refused body: only open ones count.
        handlers = [h for h in server.connections if h.transport is not None]
        if len(handlers) >= self.max_connections:
            idle = next((h for h in handlers if _is_idle(h)), None)
            if idle is None:
                return _Busy()
            idle.force_close()
        return server()

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (up to the shutdown timeout),
        close every connection."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await self._runner.cleanup()


def _is_idle(handler) -> bool:
    """No request in progress and none waiting (aiohttp's RequestHandler state)."""
    return not getattr(handler, "_request_in_progress", True) and not getattr(handler, "_messages", None)


async def read_body(request: web.BaseRequest, timeout: float, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole request body within ``timeout`` seconds and ``limit`` bytes; raises
    ``HTTPRequestTimeout`` (408) or ``HTTPRequestEntityTooLarge`` (413), both closing
    the connection (the rest of the body is not read)."""
    if request.content_length is not None and request.content_length > limit:
        raise _closing(_too_large(limit))
    parts, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise _closing(_too_large(limit))
                parts.append(chunk)
    except TimeoutError:
        raise _closing(web.HTTPRequestTimeout(text=_error_text("request_timeout", "The request body did not "
                                                               "arrive in time."), content_type=JSON)) from None
    return b"".join(parts)


def parse_json(body: bytes | str) -> Any:
    """A JSON document; ValueError for anything else, nesting too deep for Python included
    (200,000 ``[`` is a client's error, not a RecursionError in the host's log)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _too_large(limit: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1, content_type=JSON, text=_error_text(
        "payload_too_large", f"The body is larger than the dev host's limit of {limit} bytes."))


def _error_text(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def json_error(status: int, code: str, message: str) -> web.Response:
    """A host-level error answer: ``{"error": {"code", "message"}}``."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _closing(error: web.HTTPException) -> web.HTTPException:
    error.force_close()
    return error
