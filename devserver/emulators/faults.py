"""Injected faults: a queue served to the next requests in order, one each."""

from __future__ import annotations

import base64
import binascii
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_KEYS = {"status", "retry_after", "retry_after_ms", "delay_ms", "drop", "raw", "raw_base64", "headers",
         "drip_ms", "size", "chunked", "stream", "after_chunks"}
STREAM_FAULTS = ("stall", "drop", "error")
MAX_SIZE = 1024 ** 3


@dataclass(frozen=True)
class Fault:
    """One misbehaviour. ``status`` answers with that status (and a service-shaped
    error body, or ``raw`` / ``raw_base64`` as the body); ``delay_ms`` answers late
    (normally, unless ``status`` is set too); ``drop`` closes the connection without
    answering; ``headers`` adds response headers (a ``Location`` for a redirect, say);
    ``drip_ms`` sends the whole answer one byte every that many milliseconds;
    ``size`` answers 200 with a JSON body of that many bytes (``chunked``: without a
    Content-Length), for response-size limits. ``stream`` misbehaves in the middle of a streamed
    answer (``stream: true`` requests only), after ``after_chunks`` events: ``stall`` (sends nothing
    more, holding the connection until the client leaves), ``drop`` (resets the TCP connection) or
    ``error`` (one ``data: {"error": ...}`` event, then the end of the stream)."""

    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    delay_ms: int = 0
    drop: bool = False
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drip_ms: int = 0
    size: int | None = None
    chunked: bool = False
    stream: str | None = None
    after_chunks: int = 0

    @classmethod
    def parse(cls, spec: Any) -> Fault:
        if not isinstance(spec, dict):
            raise ValueError("each fault must be a JSON object")
        unknown = set(spec) - _KEYS
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        status = spec.get("status")
        if status is not None and (type(status) is not int or not 100 <= status <= 599):
            raise ValueError("status must be an integer HTTP status")
        retry_after = spec.get("retry_after")
        if retry_after is not None and (isinstance(retry_after, bool)
                                        or not isinstance(retry_after, (int, float)) or retry_after < 0):
            raise ValueError("retry_after must be a non-negative number of seconds")
        retry_after_ms = spec.get("retry_after_ms")
        if retry_after_ms is not None and (type(retry_after_ms) is not int or retry_after_ms < 0):
            raise ValueError("retry_after_ms must be a non-negative integer")
        delay_ms = spec.get("delay_ms", 0)
        if type(delay_ms) is not int or delay_ms < 0:
            raise ValueError("delay_ms must be a non-negative integer")
        drop = spec.get("drop", False)
        if type(drop) is not bool:
            raise ValueError("drop must be a boolean")
        raw = spec.get("raw")
        if raw is not None and not isinstance(raw, str):
            raise ValueError("raw must be a string")
        raw_bytes = raw.encode() if raw is not None else None
        if spec.get("raw_base64") is not None:
            try:
                raw_bytes = base64.b64decode(str(spec["raw_base64"]), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("raw_base64 must be base64") from None
        headers = spec.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    and "\n" not in k + v and "\r" not in k + v
                                                    for k, v in headers.items()):
            raise ValueError("headers must map names to single-line strings")
        drip_ms = spec.get("drip_ms", 0)
        if type(drip_ms) is not int or drip_ms < 0:
            raise ValueError("drip_ms must be a non-negative integer")
        size = spec.get("size")
        if size is not None and (type(size) is not int or not 0 < size <= MAX_SIZE):
            raise ValueError(f"size must be an integer from 1 to {MAX_SIZE}")
        chunked = spec.get("chunked", False)
        if type(chunked) is not bool:
            raise ValueError("chunked must be a boolean")
        stream = spec.get("stream")
        if stream is not None and stream not in STREAM_FAULTS:
            raise ValueError(f"stream must be one of {list(STREAM_FAULTS)}")
        after_chunks = spec.get("after_chunks", 0)
        if type(after_chunks) is not int or after_chunks < 0:
            raise ValueError("after_chunks must be a non-negative integer")
        if status is None and not (drop or delay_ms or drip_ms or size or stream) and raw_bytes is None:
            raise ValueError("a fault needs status, delay_ms, drop, raw, drip_ms, size or stream")
        return cls(status, retry_after, retry_after_ms, delay_ms, drop, raw_bytes, dict(headers), drip_ms, size,
                   chunked, stream, after_chunks)


class FaultQueue:
    """Thread-safe FIFO of faults; each request takes at most one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()

    def extend(self, specs: Iterable[Any]) -> int:
        faults = [Fault.parse(spec) for spec in specs]  # all or nothing
        with self._lock:
            self._faults.extend(faults)
            return len(self._faults)

    def pop(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)


class Sleeper:
    """Sleeps that a reset cuts short: a slow request left over from one test must
    not answer (and be counted) after the next test has reset the emulator."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._wake = threading.Event()

    def sleep(self, seconds: float) -> bool:
        """Sleep; False when a reset happened meanwhile (abandon the request)."""
        with self._lock:
            generation, wake = self._generation, self._wake
        if seconds > 0:
            wake.wait(seconds)
        return generation == self._generation

    @property
    def generation(self) -> int:
        """Changes at every interrupt: work started under one generation stops when it changes."""
        return self._generation

    def interrupt(self) -> None:
        with self._lock:
            self._generation += 1
            self._wake.set()
            self._wake = threading.Event()
