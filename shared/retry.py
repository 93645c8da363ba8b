"""Deadlines and backoff for upstream calls."""

from __future__ import annotations

import math
import random
import time
from email.utils import parsedate_to_datetime
from typing import Mapping


class Deadline:
    """A point in monotonic time by which an invocation must have answered."""

    __slots__ = ("expires_at",)

    def __init__(self, seconds: float) -> None:
        self.expires_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())


def backoff_seconds(retry_number: int, *, base: float = 0.5, cap: float = 8.0) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(n-1)))."""
    ceiling = min(cap, base * 2 ** max(0, retry_number - 1))
    return random.uniform(0, ceiling)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait an upstream asked for: ``retry-after-ms`` (Azure OpenAI's precise form)
    or ``Retry-After`` (seconds or an HTTP date). None when absent or unreadable."""
    if not headers:
        return None
    lowered = {str(name).lower(): value for name, value in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    seconds = lowered.get("retry-after")
    if seconds is None:
        return None
    try:
        value = float(seconds)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(seconds).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
