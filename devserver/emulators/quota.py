"""Per-minute quotas, as Azure OpenAI enforces them on each deployment.

A request counts against the requests-per-minute limit (``rpm``) and its
*estimated* tokens against the tokens-per-minute limit (``tpm``) when it is
received, before any text is generated: Azure estimates from the prompt, the
number of prompts, ``max_tokens`` and ``best_of`` (``estimate_tokens``). Both
are counted over a sliding 60-second window; a request that does not fit is
not counted and gets 429 with how long until the window admits it.

Simplifications (documented in docs/stand-ins.md): Azure also checks the request rate
over 1 or 10 second sub-windows, and its token estimate is character based;
here the window is the whole minute and tokens are the emulator's words.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

WINDOW_SECONDS = 60.0


def estimate_tokens(prompt_tokens: list[int], max_tokens: int, best_of: int) -> int:
    """What Azure counts against TPM for a completion request: every prompt, plus
    ``max_tokens`` for each of the ``best_of`` candidates of each prompt."""
    return sum(max(1, n) for n in prompt_tokens) + len(prompt_tokens) * best_of * max_tokens


class Admission(NamedTuple):
    admitted: bool
    retry_after: float  # seconds until the window admits this request; 0 when admitted
    remaining_requests: int | None  # None: no such limit
    remaining_tokens: int | None
    exceeded: tuple[str, ...] = ()  # "rpm" and/or "tpm" when not admitted

    def headers(self) -> dict[str, str]:
        """The headers Azure sends with every answer, and with a 429 how long to wait."""
        headers = {}
        if self.remaining_requests is not None:
            headers["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
        if self.remaining_tokens is not None:
            headers["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
        if not self.admitted:
            headers["retry-after-ms"] = str(math.ceil(self.retry_after * 1000))
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


    def body(self, api_version: str, operation: str = "Completions_Create") -> dict:
        """The service's 429 body for a request over the deployment's RPM or TPM limit."""
        limit = "token rate limit" if "tpm" in self.exceeded else "call rate limit"
        return {"error": {"code": "429", "message": (
            f"Requests to the {operation} Operation under Azure OpenAI API version {api_version} have "
            f"exceeded {limit} of your current OpenAI S0 pricing tier. Please retry after "
            f"{max(1, math.ceil(self.retry_after))} seconds. Please go here: https://aka.ms/oai/quotaincrease "
            "if you would like to further increase the default rate limit.")}}


class _Window:
    __slots__ = ("admitted", "tokens")

    def __init__(self) -> None:
        self.admitted: deque[tuple[float, int]] = deque()  # (when, estimated tokens), oldest first
        self.tokens = 0

    def expire(self, now: float, length: float) -> None:
        while self.admitted and self.admitted[0][0] + length <= now:
            self.tokens -= self.admitted.popleft()[1]


class Quotas:
    """The limits (None: unlimited) and one sliding window per deployment. Thread-safe."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm, self.tpm = rpm, tpm
        # Azure's limits are per minute; a shorter window (the same limits per window) lets a
        # benchmark reach a sustained state in seconds rather than minutes.
        self.window = WINDOW_SECONDS
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self.throttled: Counter[str] = Counter()  # by the limit that was exceeded (both, when both were)
        self._throttled_total = 0  # 429s answered

    def set_limits(self, rpm: object, tpm: object, window: object = None) -> None:
        """New limits (None: unlimited), checked first; requests already in the window still count.
        ``window``: its length in seconds (None: unchanged; 60 as Azure's)."""
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, or null for no limit")
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, float))
                                   or not 1 <= window <= 3600):
            raise ValueError("quota_window_s must be a number of seconds from 1 to 3600")
        with self._lock:
            self.rpm, self.tpm = rpm, tpm  # type: ignore[assignment]
            if window is not None:
                self.window = float(window)

    def admit(self, deployment: str, tokens: int) -> Admission:
        """Count the request in if it fits both limits; otherwise say how long until it would."""
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(deployment, _Window())
            window.expire(now, self.window)
            waits: dict[str, float] = {}
            if self.rpm is not None and len(window.admitted) >= self.rpm:
                oldest_to_go = window.admitted[len(window.admitted) - self.rpm][0]
                waits["rpm"] = oldest_to_go + self.window - now
            if self.tpm is not None and window.tokens + tokens > self.tpm:
                waits["tpm"] = self._token_wait(window, tokens, now)
            if waits:
                self.throttled.update(waits.keys())
                self._throttled_total += 1
                return Admission(False, max(waits.values()), *self._remaining(window), tuple(sorted(waits)))
            window.admitted.append((now, tokens))
            window.tokens += tokens
            return Admission(True, 0.0, *self._remaining(window))

    def _token_wait(self, window: _Window, tokens: int, now: float) -> float:
        if tokens > self.tpm:  # never fits: a request larger than the quota waits a whole window, again
            return self.window
        to_free = window.tokens + tokens - self.tpm
        for when, counted in window.admitted:
            to_free -= counted
            if to_free <= 0:
                return when + self.window - now
        return self.window  # unreachable: the whole window frees enough

    def peek(self, deployment: str) -> Admission:
        """The remaining counts without counting a request (for answers that are not counted)."""
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(deployment, _Window())
            window.expire(now, self.window)
            return Admission(True, 0.0, *self._remaining(window))

    def _remaining(self, window: _Window) -> tuple[int | None, int | None]:
        return (None if self.rpm is None else max(0, self.rpm - len(window.admitted)),
                None if self.tpm is None else max(0, self.tpm - window.tokens))

    def reset(self) -> None:
        """Empty the windows and the counts; the limits stay."""
        with self._lock:
            self._windows.clear()
            self.throttled.clear()
            self._throttled_total = 0

    def snapshot(self) -> dict:
        with self._lock:
            return {"quota": {"rpm": self.rpm, "tpm": self.tpm}, "throttled": self._throttled_total,
                    "throttled_by": {"rpm": self.throttled["rpm"], "tpm": self.throttled["tpm"]}}
