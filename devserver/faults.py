"""Injected faults: a queue served to the next requests in order, one each."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

_KEYS = {"status", "retry_after", "retry_after_ms", "delay_ms", "drop", "raw"}


@dataclass(frozen=True)
class Fault:
    """One misbehaviour. ``status`` answers with that status (and a service-shaped
    error body, or ``raw`` as the body); ``delay_ms`` answers late (normally, unless
    ``status`` is set too); ``drop`` closes the connection without answering."""

    status: int | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    delay_ms: int = 0
    drop: bool = False
    raw: str | None = None

    @classmethod
    def parse(cls, spec: Any) -> "Fault":
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
        if status is None and not (drop or delay_ms) and raw is None:
            raise ValueError("a fault needs status, delay_ms, drop or raw")
        return cls(status, retry_after, retry_after_ms, delay_ms, drop, raw)


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

    def interrupt(self) -> None:
        with self._lock:
            self._generation += 1
            self._wake.set()
            self._wake = threading.Event()
