"""Time as the app reads it, and the deadline every invocation runs within.

Time is read through a ``Clock`` so that tests can skip waits instead of sleeping
(``tests/unit`` uses a fake one); a ``Deadline`` is a point on that clock's
monotonic time by which an invocation must have answered.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """``monotonic()`` for deadlines and waits, ``time()`` (epoch seconds) for token expiry,
    ``sleep()`` to wait. Tests inject a clock whose ``sleep`` skips ahead instead of waiting."""

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
