"""The backend pool: which Azure OpenAI deployment serves the next attempt.

Pure bookkeeping, no HTTP: the client asks ``choose()`` for a backend, makes
the call, and reports back with ``record_success()`` or ``record_failure()``.
The pool answers with decisions; only a programming error raises (an unknown
backend name or failure kind).

Routing, per process and in memory:

- The lowest ``priority`` with a ready backend wins; within it, smooth weighted
  round-robin (nginx's algorithm: deterministic, and after n picks each
  backend has had its weighted share within about one pick). Each instance
  starts the rotation at a random point so instances do not move in lockstep.
- A failure cools a backend: throttled (429) and unavailable (503) for as long
  as ``retry-after-ms`` / ``Retry-After`` say, else ``x-ratelimit-reset-*``,
  else 10 s, honoured up to ``AZURE_OPENAI_MAX_COOLDOWN`` (60 s); connection
  failures, timeouts, 500, 502 and 504 for 10 s; misconfigured (401, 403, 404)
  for 60 s.
- When a cooldown ends, one request goes first, a probe: the others do not see the
  backend until it answers (``next_recovery`` hands them the probe to wait on). A
  success opens the backend to everyone; a failure cools it again. So a recovery
  costs one upstream call per backend, not one per waiting caller.
- Headroom: a backend whose last answer said it has no requests left, or fewer
  tokens left than this request needs, is passed over until that information
  is 10 s old or its reset time passes. When every ready backend of a priority
  lacks headroom, the next priority with headroom serves; when none has any,
  the lowest ready priority serves anyway (the information may be stale, and
  a 429 then cools the backend properly).

The lock is held only for O(backends) bookkeeping, never across I/O (log
records are emitted after it is released), so the pool is safe to call from
threads and from an asyncio event loop alike.

State is per instance, in memory. Instances need not share it: a cooldown
comes from the backend's own Retry-After, the same for every caller, and the
remaining counts on every answer describe the deployment's shared quota, so
each instance learns what the others would tell it from its next answer, at
the cost of at most one 429 per backend and cooldown. Sharing would take a
store every instance reads on every request and writes on every answer
(Redis, or Table Storage with ETags), on the request path, with its own
outage to survive (falling back to local state) and its own latency; it pays
only when instances are many and each sees too few answers to learn in time.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Literal, NamedTuple

from ..config.backends import BackendSettings
from .headers import lowercase_headers, remaining_count, requested_wait, reset_seconds

log = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 10.0  # throttled without a usable header; unavailable
MISCONFIGURED_COOLDOWN = 60.0
MAX_COOLDOWN = 60.0  # longer waits asked for are honoured up to this (AZURE_OPENAI_MAX_COOLDOWN)
LONG_COOLDOWN = 30.0  # from here on a cooldown is logged (once per episode)
HEADROOM_TTL = 10.0  # how long a reported remaining count is believed

FailureKind = Literal["throttled", "unavailable", "misconfigured"]
FAILURE_KINDS = ("throttled", "unavailable", "misconfigured")


# -- the pool ------------------------------------------------------------------------
class Recovery(NamedTuple):
    """When the pool can serve again, for a caller that found no backend to try."""

    seconds: float  # until the earliest cooling backend that is not misconfigured is ready
    all_throttled: bool  # every backend that is not misconfigured is cooling because of a 429
    misconfigured: bool = False  # every backend is misconfigured: nothing worth waiting for
    probe: Future | None = None  # a probe is in flight: it resolves when its answer decides (wait on it)


class _Backend:
    """One backend's mutable state; only touched under the pool's lock."""

    __slots__ = ("settings", "current", "ready_at", "kind", "cause", "long_logged", "error_logged",
                 "requests_left", "requests_until", "tokens_left", "tokens_until", "needs_probe", "probe",
                 "probe_owner")

    def __init__(self, settings: BackendSettings, current: float) -> None:
        self.settings = settings
        self.current = current  # smooth weighted round-robin
        self.ready_at = -math.inf  # monotonic time its cooldown ends
        self.kind: str | None = None  # why it is (or last was) cooling
        self.cause: Any = None  # and the failure that set that cooldown, as the caller recorded it
        self.long_logged = False  # this long cooldown has been logged
        self.error_logged = False  # this misconfiguration has been logged (until a success)
        self.requests_left: int | None = None
        self.requests_until = -math.inf  # requests_left is believed until then
        self.tokens_left: int | None = None
        self.tokens_until = -math.inf
        self.needs_probe = False  # it cooled: once the cooldown ends, one probe goes before the others
        self.probe: Future | None = None  # the probe in flight
        self.probe_owner: object = None

    def usable(self, now: float) -> bool:
        """Ready for a request: its cooldown ended and no probe is deciding for it."""
        return self.ready_at <= now and self.probe is None

    def end_probe(self, outcome: bool | None) -> None:
        if self.probe is not None:
            probe, self.probe, self.probe_owner = self.probe, None, None
            probe.set_result(outcome)

    def lacks_headroom(self, now: float, tokens: int | None) -> bool:
        if self.requests_left is not None and now < self.requests_until and self.requests_left <= 0:
            return True
        return tokens is not None and tokens > 0 and self.tokens_left is not None and now < self.tokens_until \
            and self.tokens_left < tokens

    def reserve(self, now: float, tokens: int | None) -> None:
        """Count a request sent, so concurrent requests see the headroom it uses before its answer."""
        if self.requests_left is not None and now < self.requests_until:
            self.requests_left = max(0, self.requests_left - 1)
        if tokens and self.tokens_left is not None and now < self.tokens_until:
            self.tokens_left = max(0, self.tokens_left - tokens)

    def forget_headroom(self) -> None:
        self.requests_left = self.tokens_left = None
        self.requests_until = self.tokens_until = -math.inf


class BackendPool:
    """Per-process routing state over a fixed list of backends (see the module docstring)."""

    def __init__(self, backends: Sequence[BackendSettings], *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 max_cooldown: float = MAX_COOLDOWN) -> None:
        if not backends:
            raise ValueError("a pool needs at least one backend")
        if len({b.name for b in backends}) != len(backends):
            raise ValueError("backend names must be unique")
        rng = rng or random.Random()
        self.backends: tuple[BackendSettings, ...] = tuple(backends)
        self._states = [_Backend(b, rng.random() * b.weight) for b in self.backends]
        self._by_name = {state.settings.name: state for state in self._states}
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_cooldown = max_cooldown
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.backends)

    def _state(self, backend: BackendSettings | str) -> _Backend:
        return self._by_name[backend if isinstance(backend, str) else backend.name]

    # -- routing ------------------------------------------------------------------
    def choose(self, *, max_tokens: int | None = None, tried: Collection[str] = (),
               owner: object = None) -> BackendSettings | None:
        """The backend for the next attempt, or None when every ready backend is in ``tried``
        (names) or none is ready: then ``next_recovery()`` says whether and how long to wait.

        ``max_tokens`` is what the request may use (its ``max_tokens``, or the caller's
        estimate of what Azure counts); None leaves tokens out of the headroom check. When the
        choice is a backend whose cooldown just ended, this attempt is its probe, held by
        ``owner`` until its answer is recorded or ``release(backend, owner)``."""
        now = self._clock()
        with self._lock:
            ready = [s for s in self._states if s.usable(now) and s.settings.name not in tried]
            if not ready:
                return None
            priorities = sorted({s.settings.priority for s in ready})
            group = None
            for priority in priorities:
                roomy = [s for s in ready if s.settings.priority == priority
                         and not s.lacks_headroom(now, max_tokens)]
                if roomy:
                    group = roomy
                    break
            if group is None:  # nobody has headroom: the preferred ready backends anyway
                group = [s for s in ready if s.settings.priority == priorities[0]]
            chosen = self._round_robin(group)
            chosen.reserve(now, max_tokens)
            if chosen.needs_probe:
                chosen.probe, chosen.probe_owner = Future(), owner
                chosen.probe.set_running_or_notify_cancel()  # a waiter giving up must not cancel it for others
            return chosen.settings

    def release(self, backend: BackendSettings | str, owner: object) -> None:
        """An attempt by ``owner`` ended without an answer that says anything of the backend (the
        caller's time ran out, it was cancelled): if it was the probe, the next request probes."""
        with self._lock:
            state = self._state(backend)
            if state.probe is not None and state.probe_owner is owner:
                state.end_probe(None)

    @staticmethod
    def _round_robin(group: list[_Backend]) -> _Backend:
        total = 0
        for state in group:
            state.current += state.settings.weight
            total += state.settings.weight
        chosen = max(group, key=lambda s: s.current)  # the first of equals: stable
        chosen.current -= total
        return chosen

    # -- what upstream said ---------------------------------------------------------
    def record_success(self, backend: BackendSettings | str, headers: Mapping[str, str] | None = None) -> None:
        """An answer from ``backend`` that was not a failure (a 200, or the caller's own 400):
        remember the headroom its ``x-ratelimit-remaining-*`` headers report."""
        lowered = lowercase_headers(headers)
        now = self._clock()
        reported = {}  # which -> (remaining, believed until)
        for which in ("requests", "tokens"):
            remaining = remaining_count(lowered.get(f"x-ratelimit-remaining-{which}"))
            if remaining is not None:
                reset = reset_seconds(lowered, which)
                reported[which] = (remaining, now + min(HEADROOM_TTL, HEADROOM_TTL if reset is None else reset))
        with self._lock:
            state = self._state(backend)
            state.error_logged = False
            state.needs_probe = False
            state.end_probe(True)
            if "requests" in reported:
                state.requests_left, state.requests_until = reported["requests"]
            if "tokens" in reported:
                state.tokens_left, state.tokens_until = reported["tokens"]

    def record_failure(self, backend: BackendSettings | str, kind: FailureKind,
                       headers: Mapping[str, str] | None = None, *, detail: str | None = None,
                       default_cooldown: float = DEFAULT_COOLDOWN, cause: Any = None) -> float:
        """Cool ``backend`` after a failure; returns the seconds until it is ready again.

        ``throttled``: a 429. ``unavailable``: a 503 (pass its headers), or 500, 502, 504, a
        timeout or a connection failure (no headers). Both cool for the wait the headers name,
        else ``default_cooldown`` (10 s; a client with a pool of one may pass its own backoff
        instead, so a lone backend is retried as soon as before). ``misconfigured``: 401, 403,
        404: 60 s, headers ignored. ``detail`` (e.g. "HTTP 404 DeploymentNotFound") goes into
        the log lines; never put a URL or a key in it. ``cause`` is kept with the cooldown it set
        (``cooling_causes``). A cooldown never shortens one in progress."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"kind must be one of {FAILURE_KINDS}")
        now = self._clock()
        asked = None
        if kind == "misconfigured":
            seconds = MISCONFIGURED_COOLDOWN
        else:
            asked = requested_wait(headers, now=self._wall_clock()) if headers else None
            seconds = min(default_cooldown if asked is None else asked, self._max_cooldown)
        records: list[tuple[int, str, tuple]] = []
        with self._lock:
            state = self._state(backend)
            name = state.settings.name
            if state.ready_at <= now:  # a new episode
                state.long_logged = False
            if now + seconds >= state.ready_at:
                state.ready_at, state.kind, state.cause = now + seconds, kind, cause
            state.forget_headroom()  # the cooldown says more than any count it reported
            if seconds > 0:
                state.needs_probe = True
            state.end_probe(False)
            if kind == "misconfigured" and not state.error_logged:
                state.error_logged = True
                records.append((logging.ERROR, "backend %s looks misconfigured (%s): not used for %.0f s; check its "
                                "endpoint, deployment and credentials", (name, detail or kind, seconds)))
            elif kind != "misconfigured" and seconds >= LONG_COOLDOWN and not state.long_logged:
                state.long_logged = True
                capped = f", asked for {asked:.0f} s" if asked is not None and asked > self._max_cooldown else ""
                records.append((logging.WARNING, "backend %s is %s (%s): not used for %.0f s%s",
                                (name, kind, detail or kind, seconds, capped)))
            remaining = max(0.0, state.ready_at - now)
        for level, message, args in records:
            log.log(level, message, *args)
        return remaining

    # -- what callers and operators see ----------------------------------------------------
    def next_recovery(self, among: Collection[str] | None = None) -> Recovery | None:
        """None when some backend is ready now (a caller that tried them all may start a new
        round at once); else how long until one that is not misconfigured is (a misconfigured
        backend is not worth waiting for), and whether they are all throttled (answer 429
        ``rate_limited`` rather than 503 ``upstream_unavailable``). ``among``: only these backends
        (names) count, those that can serve the caller's request."""
        now = self._clock()
        with self._lock:
            states = self._among(among)
            if not states or any(s.usable(now) for s in states):
                return None
            usable = [s for s in states if s.kind != "misconfigured" or s.probe is not None]
            if not usable:
                return Recovery(min(s.ready_at for s in states) - now, False, True)
            all_throttled = all(s.kind == "throttled" for s in usable)
            probing = next((s.probe for s in usable if s.probe is not None), None)
            if probing is not None:
                return Recovery(0.0, all_throttled, probe=probing)
            seconds = min(s.ready_at for s in usable) - now
        return Recovery(seconds, all_throttled)

    def cooling_causes(self, among: Collection[str] | None = None) -> list[Any]:
        """The ``cause`` recorded with each backend's cooldown in progress (None where none was)."""
        now = self._clock()
        with self._lock:
            return [s.cause for s in self._among(among) if s.ready_at > now]

    def _among(self, names: Collection[str] | None) -> list[_Backend]:
        return self._states if names is None else [s for s in self._states if s.settings.name in names]

    def snapshot(self) -> list[dict[str, Any]]:
        """Each backend by name, for the health endpoint: never an endpoint URL or a key."""
        now = self._clock()
        with self._lock:
            return [{"name": s.settings.name, "priority": s.settings.priority, "weight": s.settings.weight,
                     "state": self._state_name(s, now),
                     "retry_in": 0 if s.ready_at <= now else math.ceil(s.ready_at - now)}
                    for s in self._states]

    @staticmethod
    def _state_name(state: _Backend, now: float) -> str:
        if state.probe is not None:
            return "probing"
        if state.ready_at <= now:
            return "ready"
        return "misconfigured" if state.kind == "misconfigured" else "cooling"
