"""A small threaded HTTP/1.1 server base for the emulators (the dev host serves with
aiohttp.web: see devserver/host/server.py).

Why not plain ``http.server``: its handler writes the status line and headers and
the body in separate ``send`` calls, which on a keep-alive connection meets
Nagle's algorithm and the client's delayed ACK and costs ~40 ms per response.
Here every response leaves in one write on a socket with TCP_NODELAY, connections
are counted (the emulator's stats report them) and ``stop()`` also closes
keep-alive connections that are still open, so a stopped server is really down.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import SplitResult, urlsplit

MAX_BODY_BYTES = 32 * 1024 * 1024


class Server(ThreadingHTTPServer):
    """Threaded server: one thread per connection, keep-alive, countable."""

    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        super().__init__(address, handler)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections_accepted = 0
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        host = self.server_address[0]
        return f"http://{host}:{self.port}"

    def process_request(self, request, client_address):
        with self._lock:
            self.connections_accepted += 1
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def reset_connection_count(self) -> None:
        with self._lock:
            self.connections_accepted = 0

    def handle_error(self, request, client_address):
        # A client that hangs up mid-response is normal here (timeouts, drops).
        pass

    def start(self) -> Server:
        """Serve in a daemon thread; returns once the socket accepts connections."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"{type(self).__name__}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the listener and every open connection."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
        with self._lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    """Request handler with single-write responses and body helpers."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300  # seconds a connection may sit idle, or a request body trickle in
    server: Server
    drip: tuple[float, Callable[[float], bool]] | None = None  # (interval, sleep): send the next answer slowly

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    # -- request -----------------------------------------------------------
    def url(self) -> SplitResult:
        """The request target, with runs of leading slashes collapsed as Azure does."""
        return urlsplit("/" + self.path.lstrip("/"))

    def read_body(self) -> bytes:
        """The request body (Content-Length or chunked); empty when there is none."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)

    # -- response ----------------------------------------------------------
    def head(self, status: int, content_type: str | None, headers: Mapping[str, str] | None,
              length: int | None) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {status} {reason}", f"Date: {formatdate(usegmt=True)}"]
        if length is None:
            lines.append("Transfer-Encoding: chunked")
        elif status >= 200 and status not in (204, 304):  # these carry no Content-Length (RFC 9110)
            lines.append(f"Content-Length: {length}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    def send(self, status: int, body: bytes = b"", content_type: str | None = None,
             headers: Mapping[str, str] | None = None) -> None:
        """Write status line, headers and body in a single send (a HEAD answer gets the
        headers of the body, not the body)."""
        if self.drip is not None:  # set by a fault for this one answer
            interval, sleep = self.drip
            self.drip = None
            return self.send_dripping(status, body, content_type, headers, interval, sleep)
        head = self.head(status, content_type, headers, len(body))
        self.wfile.write(head + (b"" if self.command == "HEAD" else body))

    def send_stream(self, status: int, pieces: Iterable[bytes], content_type: str | None = None,
                    headers: Mapping[str, str] | None = None, *, length: int | None = None) -> None:
        """Write a body as it is produced: with ``length``, as a Content-Length body; without,
        chunked (RFC 9112 7.1)."""
        self.wfile.write(self.head(status, content_type, headers, length))
        for piece in pieces:
            if piece:
                self.wfile.write(piece if length is not None else b"%x\r\n%s\r\n" % (len(piece), piece))
        if length is None:
            self.wfile.write(b"0\r\n\r\n")

    def send_dripping(self, status: int, body: bytes, content_type: str | None, headers: Mapping[str, str] | None,
                      interval: float, sleep: Callable[[float], bool]) -> None:
        """The whole answer, status line included, one byte every ``interval`` seconds
        (a slow-drip upstream); stops when ``sleep`` says so or the client leaves."""
        data = self.head(status, content_type, headers, len(body)) + body
        for index in range(len(data)):
            self.wfile.write(data[index:index + 1])
            self.wfile.flush()
            if not sleep(interval):
                self.close_connection = True
                return

    def send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send(status, body, "application/json", headers)

    def drop_connection(self) -> None:
        """Close the connection without answering (a network failure)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
