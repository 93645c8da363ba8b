"""Exponential backoff: the one helper behind every wait between failed attempts.

Three waits use it, each with its own shape: an upstream retry for a pool of one
(full jitter, 0.5 s doubling up to 8 s: ``upstream.retry.RetryPolicy``), a failed
token request (no jitter, 1 s doubling up to 15 s: ``upstream.tokens``), and a
failed App Configuration load (±20 %, 1 s doubling up to 60 s: ``config.appconfig``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay ``n`` (1-based) is ``min(cap, first * factor ** (n - 1))``, scaled by a uniform draw
    from ``jitter`` (``(0, 1)``: full jitter; ``(1, 1)``: none; ``(0.8, 1.2)``: ±20 %)."""

    first: float
    cap: float
    factor: float = 2.0
    jitter: tuple[float, float] = (1.0, 1.0)

    def ceiling(self, n: int) -> float:
        return min(self.cap, self.first * self.factor ** max(0, n - 1))

    def delay(self, n: int, rand: Callable[[], float] = random.random) -> float:
        low, high = self.jitter
        if low == high:
            return self.ceiling(n) * low
        return self.ceiling(n) * (low + (high - low) * rand())
