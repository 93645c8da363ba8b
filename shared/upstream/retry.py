"""The retry policy for upstream calls: whether and how long to wait before another round.

The client (``upstream.client``) does the waiting and the calling. Keeping them
apart (as urllib3's ``Retry`` and tenacity do) makes the policy testable without
sockets, and lets the client combine it with failover across backends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..backoff import Backoff


@dataclass(frozen=True)
class RetryPolicy:
    """When to try an upstream call again, and after how long.

    The client fails over at once across its backends; when none is ready it waits
    for the earliest to recover (the wait upstream asked for, or this policy's
    exponential backoff with full jitter for a pool of one) and starts a new
    round, at most ``max_retries`` times. A wait that would leave less than
    ``min_attempt`` seconds of the deadline is not taken: the failure is final at
    once, so the caller hears why without waiting for nothing.
    """

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    min_attempt: float = 0.1  # an attempt with less time than this is not worth starting

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**(n-1)))."""
        return Backoff(self.backoff_base, self.backoff_cap, jitter=(0.0, 1.0)).delay(
            retry_number, (rng or random).random)

    def next_round(self, rounds_done: int, wait: float, remaining: float, *, attempted: bool) -> float | None:
        """Seconds to wait before round ``rounds_done + 1`` (``wait``: until a backend is ready
        again), or None to stop now: the retry budget is spent (a request that has made no
        attempt yet, having found nothing ready, may wait once even with a budget of 0), or the
        wait would leave less than ``min_attempt`` of the deadline."""
        if rounds_done >= (self.max_retries if attempted else max(1, self.max_retries)):
            return None
        if wait + self.min_attempt >= remaining:
            return None
        return wait
