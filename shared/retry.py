"""Time, deadlines and the retry policy for upstream calls.

The policy says *whether* and *how long* to wait before another attempt; the
client (``completion_client.py``) does the waiting and the calling. Keeping
them apart (as urllib3's ``Retry`` and tenacity do) makes the policy testable
without sockets, and lets the client combine it with failover across backends.
Time is read through a ``Clock`` so tests can skip waits instead of sleeping.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Mapping

from .errors import AppError


class Clock:
    """Time as the app reads it: ``monotonic()`` for deadlines and waits, ``time()``
    (epoch seconds) for token expiry, ``sleep()`` to wait. Tests inject a clock
    whose ``sleep`` skips ahead instead of waiting."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)
    sleep = staticmethod(asyncio.sleep)


SYSTEM_CLOCK = Clock()


class Deadline:
    """A point in (the clock's) monotonic time by which an invocation must have answered."""

    __slots__ = ("expires_at", "_clock")

    def __init__(self, seconds: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.expires_at = clock.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self._clock.monotonic())


@dataclass(frozen=True)
class RetryPolicy:
    """When to try an upstream call again, and after how long.

    Retryable failures are retried up to ``max_retries`` times, after the wait
    upstream asked for (``retry_after``) or else exponential backoff with full
    jitter; a wait that would leave less than ``min_attempt`` seconds of the
    deadline is not taken: the failure is final at once, so the caller hears
    why without waiting for nothing.
    """

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    min_attempt: float = 0.1  # an attempt with less time than this is not worth starting

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**(n-1)))."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** max(0, retry_number - 1))
        return (rng or random).uniform(0, ceiling)

    def wait_before_retry(self, failure: AppError, retries_done: int, remaining: float,
                          rng: random.Random | None = None) -> float | None:
        """Seconds to wait before retry number ``retries_done + 1``, or None to stop now."""
        if not failure.retryable or retries_done >= self.max_retries:
            return None
        wait = failure.retry_after if failure.retry_after is not None else self.backoff(retries_done + 1, rng)
        if wait + self.min_attempt >= remaining:
            return None
        return wait


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """The wait an upstream asked for: ``retry-after-ms`` (Azure OpenAI's precise form)
    or ``Retry-After`` (seconds or an HTTP date). None when absent or unreadable."""
    if not headers:
        return None
    lowered = {str(name).lower(): value for name, value in headers.items()}
    millis = _seconds(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    raw = lowered.get("retry-after")
    seconds = _seconds(raw)
    if seconds is not None or raw is None:
        return seconds
    try:
        when = parsedate_to_datetime(str(raw)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _seconds(raw: object) -> float | None:
    """A non-negative finite number from a header value, else None."""
    if raw is None:
        return None
    try:
        value = float(str(raw).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
