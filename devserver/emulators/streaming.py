"""Streamed answers (``stream: true``): server-sent events, one HTTP chunk each, paced by
``stream_chunk_ms``, ending with ``data: [DONE]``; mid-stream faults; and what the tests of a
streaming caller need to know: streams started, finished, and cut by the client, with when the
emulator saw each cut.

The server is threaded, so a stream is a loop on its connection's thread. Before every event, and
all through the pause between events, it polls the socket: a client that closes the connection
is seen within one poll (``POLL_SECONDS``) and the loop stops generating at once.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

POLL_SECONDS = 0.02
STALL_LIMIT_SECONDS = 300.0  # a stalled stream is given up after this long, client or not
KEPT_CUTS = 100
MID_STREAM_ERROR = {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                              "type": "server_error", "param": None, "code": "server_error"}}


class StreamStats:
    """Counts of streams, and the last ``KEPT_CUTS`` cuts by a client. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.cuts: deque[dict] = deque(maxlen=KEPT_CUTS)

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def cut(self, record: dict) -> None:
        with self._lock:
            self.counts["cut_by_client"] += 1
            self.cuts.append(record)

    def snapshot(self) -> dict:
        with self._lock:
            counts = {name: self.counts[name] for name in ("started", "finished", "cut_by_client", "stalled",
                                                           "dropped", "errored")}
            return {"streams": counts, "streams_cut": list(self.cuts)}

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.cuts.clear()


class _Watch:
    """The connection's state as last polled: when it was last seen open, and whether it closed."""

    def __init__(self, sock: socket.socket, alive: Callable[[], bool]) -> None:
        self.sock, self.alive = sock, alive
        self.last_open = time.time()
        self.closed_at: float | None = None

    def poll(self, timeout: float) -> bool:
        """True while the client keeps the connection open (waiting up to ``timeout`` to see)."""
        try:
            readable = select.select([self.sock], [], [], timeout)[0]
            gone = bool(readable) and self.sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            gone = True
        now = time.time()
        if gone:
            self.closed_at = now
            return False
        if readable:  # the client sent more (a pipelined request): not a close; don't spin on it
            time.sleep(timeout)
        self.last_open = now
        return True

    def wait(self, seconds: float) -> bool:
        """Pause ``seconds``; False as soon as the client leaves or the emulator is reset."""
        deadline = time.monotonic() + seconds
        while True:
            if not self.alive():
                return False
            left = deadline - time.monotonic()
            if not self.poll(max(0.0, min(left, POLL_SECONDS))):
                return False
            if left <= POLL_SECONDS:
                return True


def sse(event: Any) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def reset_connection(handler: Any) -> None:
    """Close the connection with a TCP reset (SO_LINGER 0), nothing more sent."""
    handler.close_connection = True
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.rfile.close()
        handler.connection.close()
    except OSError:
        pass


def send_stream(handler: Any, events: list[Any], *, headers: dict[str, str], interval: float,
                stats: StreamStats, alive: Callable[[], bool], info: dict, fault: Any = None) -> None:
    """Stream ``events`` (then ``[DONE]``) as chunked server-sent events, applying ``fault``
    (a ``Fault`` with ``stream`` set) after ``fault.after_chunks`` events."""
    stats.count("started")
    watch = _Watch(handler.connection, alive)
    payloads = [sse(event) for event in events]
    fault_at = min(fault.after_chunks, len(payloads)) if fault is not None else None
    sent = 0
    try:
        handler.wfile.write(handler.head(200, "text/event-stream", headers, None))
        for index, payload in enumerate([*payloads, b"data: [DONE]\n\n"]):
            if index == fault_at:
                return _misbehave(handler, fault.stream, watch, stats, info, sent, len(payloads))
            if index and interval and not watch.wait(interval) or not watch.poll(0):
                return _cut(handler, watch, stats, info, sent, len(payloads))
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            sent += index < len(payloads)
        handler.wfile.write(b"0\r\n\r\n")
        stats.count("finished")
    except OSError:  # the client went away mid-write
        watch.closed_at = watch.closed_at or time.time()
        _cut(handler, watch, stats, info, sent, len(payloads))


def _cut(handler: Any, watch: _Watch, stats: StreamStats, info: dict, sent: int, total: int) -> None:
    handler.close_connection = True
    if watch.closed_at is None:  # not the client: a reset or the server stopping
        return
    stopped = time.time()
    stats.cut({**info, "chunks_sent": sent, "chunks_total": total, "last_open_at": watch.last_open,
               "closed_seen_at": watch.closed_at, "stopped_at": stopped,
               "noticed_within_ms": round((watch.closed_at - watch.last_open) * 1000, 3)})


def _misbehave(handler: Any, kind: str, watch: _Watch, stats: StreamStats, info: dict, sent: int,
               total: int) -> None:
    if kind == "drop":
        stats.count("dropped")
        return reset_connection(handler)
    if kind == "error":
        stats.count("errored")
        payload = sse(MID_STREAM_ERROR)
        handler.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
        return None
    stats.count("stalled")
    deadline = time.monotonic() + STALL_LIMIT_SECONDS
    while time.monotonic() < deadline and watch.wait(1.0):
        pass
    return _cut(handler, watch, stats, info, sent, total)
