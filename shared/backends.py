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
  else 10 s, honoured up to an hour; connection failures, timeouts, 500, 502
  and 504 for 10 s; misconfigured (401, 403, 404) for 60 s.
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

import collections
import json
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Collection, Literal, Mapping, NamedTuple, Sequence

from .protected_settings import holds_other_credentials

log = logging.getLogger(__name__)

BACKENDS_SETTING = "AZURE_OPENAI_BACKENDS"
DEFAULT_BACKEND_NAME = "default"
# The same modes as settings.AUTH_MODES (a test keeps them equal): this module imports nothing
# from settings, so that settings can build the pool.
AUTH_MODES = ("managed_identity", "default", "key")

DEFAULT_COOLDOWN = 10.0  # throttled without a usable header; unavailable
MISCONFIGURED_COOLDOWN = 60.0
MAX_COOLDOWN = 3600.0  # longer waits asked for are honoured up to this
LONG_COOLDOWN = 60.0  # from here on a cooldown is logged (once per episode)
HEADROOM_TTL = 10.0  # how long a reported remaining count is believed
MAX_BACKENDS = 64
MAX_PRIORITY = MAX_WEIGHT = 1000

FailureKind = Literal["throttled", "unavailable", "misconfigured"]
FAILURE_KINDS = ("throttled", "unavailable", "misconfigured")

_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_PRINTABLE_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")  # unknown keys are named only when they look like keys
_FIELDS = ("name", "endpoint", "deployment", "api_version", "priority", "weight", "auth", "api_key_setting",
           "client_id")
_KEY_VAULT_REFERENCE = "@microsoft.keyvault("


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """One deployment the pool may send a request to (validated; never holds a bad value)."""

    name: str
    endpoint: str  # without trailing slash: openai appends "/openai/deployments/..."
    deployment: str
    api_version: str
    priority: int = 1  # lower is preferred
    weight: int = 1  # share within its priority
    auth: str = "managed_identity"
    api_key: str | None = field(default=None, repr=False)
    client_id: str | None = None
    token_scope: str

    @classmethod
    def single(cls, upstream: Any, name: str = DEFAULT_BACKEND_NAME) -> "BackendSettings":
        """The pool of one built from the single-endpoint settings (``settings.UpstreamSettings``)."""
        return cls(name=name, endpoint=upstream.endpoint, deployment=upstream.deployment,
                   api_version=upstream.api_version, auth=upstream.auth, api_key=upstream.api_key,
                   client_id=upstream.client_id, token_scope=upstream.token_scope)

    @property
    def identity(self) -> tuple[str, str | None, str] | None:
        """What its token cache is keyed by: backends with the same identity and scope share one
        cache. None for key auth."""
        return None if self.auth == "key" else (self.auth, self.client_id, self.token_scope)


# -- settings -------------------------------------------------------------------
class _JSONObject(dict):
    """A JSON object that remembers the keys it saw more than once (json keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _JSONObject:
    result = _JSONObject(pairs)
    if len(result) != len(pairs):
        counts = collections.Counter(key for key, _ in pairs)
        result.duplicates = tuple(sorted(key for key, count in counts.items() if count > 1))
    return result


def _key_label(key: str) -> str:
    return repr(key) if _PRINTABLE_KEY.fullmatch(key) else "(not shown)"


def parse_backends(environ: Mapping[str, str], *, default_deployment: str | None, default_api_version: str,
                   default_auth: str, default_client_id: str | None, token_scope: str,
                   validate_endpoint: Callable[[str], str | None],
                   validate_deployment: Callable[[str], str | None],
                   validate_api_version: Callable[[str], str | None],
                   ) -> tuple[tuple[BackendSettings, ...], dict[str, str]]:
    """The backends ``AZURE_OPENAI_BACKENDS`` lists, and the problems found.

    ``((), {})`` when the setting is absent or blank: the caller then builds the
    pool of one from the single-endpoint settings (``BackendSettings.single``).
    Any problem gives ``((), {"AZURE_OPENAI_BACKENDS": "entry 'x': ...; ..."})``:
    entries are named by their name (once it is valid) or their index, fields by
    their key; no value from the JSON or the environment is ever repeated. Keys
    come from the app setting each entry names in ``api_key_setting``. The
    ``validate_*`` rules are the single-endpoint settings' own (a reason, or None).
    """
    raw = environ.get(BACKENDS_SETTING)
    if raw is None or not raw.strip():
        return (), {}
    try:
        data = json.loads(raw, object_pairs_hook=_object)
    except RecursionError:
        return (), {BACKENDS_SETTING: "is nested too deeply to be a list of backends"}
    except ValueError as exc:  # JSONDecodeError's msg and position describe the syntax, not the content
        where = f" (line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        return (), {BACKENDS_SETTING: f"must be valid JSON{where}"}
    if not isinstance(data, list):
        return (), {BACKENDS_SETTING: "must be a JSON list of backend objects"}
    if not data:
        return (), {BACKENDS_SETTING: "must list at least one backend"}
    if len(data) > MAX_BACKENDS:
        return (), {BACKENDS_SETTING: f"must list at most {MAX_BACKENDS} backends"}

    problems: list[str] = []
    backends: list[BackendSettings] = []
    defaults = dict(deployment=default_deployment, api_version=default_api_version, auth=default_auth,
                    client_id=default_client_id, token_scope=token_scope)
    rules = dict(endpoint=validate_endpoint, deployment=validate_deployment, api_version=validate_api_version)
    for index, entry in enumerate(data):
        backend = _parse_entry(index, entry, environ, defaults, rules, problems)
        if backend is not None:
            backends.append(backend)
    names = [b.name for b in backends]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"entry '{name}': name is used by more than one entry")
    if problems:
        return (), {BACKENDS_SETTING: "; ".join(problems)}
    return tuple(backends), {}


def _parse_entry(index: int, entry: Any, environ: Mapping[str, str], defaults: dict[str, Any],
                 rules: dict[str, Callable[[str], str | None]], problems: list[str]) -> BackendSettings | None:
    label = f"entry at index {index}"
    if not isinstance(entry, dict):
        problems.append(f"{label} must be a JSON object")
        return None
    found: list[str] = []
    name = entry.get("name")
    if isinstance(name, str) and _NAME.fullmatch(name):
        label = f"entry '{name}'"
    else:
        found.append("name is required: 1 to 32 letters, digits, _ or -")
    for key in sorted(set(entry) - set(_FIELDS)):
        found.append(f"unknown key {_key_label(key)}")
    for key in getattr(entry, "duplicates", ()):
        found.append(f"key {_key_label(key)} appears more than once")

    def text(key: str, required: bool = False) -> str | None:
        value = entry.get(key)
        if value is None:
            if required:
                found.append(f"{key} is required")
            return None
        if not isinstance(value, str) or not value.strip():
            found.append(f"{key} must be a non-empty string")
            return None
        return value.strip()

    def checked(key: str, value: str | None) -> str | None:
        reason = rules[key](value) if value is not None else None
        if reason is not None:
            found.append(f"{key} {reason}")
        return value

    def whole_number(key: str, high: int) -> int:
        value = entry.get(key)
        if value is None:
            return 1
        if type(value) is not int or not 1 <= value <= high:  # true and 1.0 are not integers here
            found.append(f"{key} must be an integer from 1 to {high}")
            return 1
        return value

    endpoint = checked("endpoint", text("endpoint", required=True))
    deployment = checked("deployment", text("deployment") or defaults["deployment"])
    if deployment is None and entry.get("deployment") is None:
        found.append("deployment is required when AZURE_OPENAI_DEPLOYMENT is not set")
    api_version = checked("api_version", text("api_version") or defaults["api_version"])
    priority, weight = whole_number("priority", MAX_PRIORITY), whole_number("weight", MAX_WEIGHT)
    auth = (text("auth") or defaults["auth"]).lower()
    if auth not in AUTH_MODES:
        found.append(f"auth must be one of {', '.join(AUTH_MODES)}")
    client_id = text("client_id") or defaults["client_id"]
    api_key = None
    key_setting = text("api_key_setting", required=auth == "key")
    if key_setting is not None:
        if auth != "key":
            found.append("api_key_setting is only used with auth key")
        elif not _SETTING_NAME.fullmatch(key_setting):
            found.append("api_key_setting must be the name of an app setting (letters, digits, _ and .)")
        elif holds_other_credentials(key_setting):
            found.append("api_key_setting must not name a setting of the platform, the app's identity or another "
                         "service's credentials")
        else:
            api_key = (environ.get(key_setting) or "").strip() or None
            if api_key is None:
                found.append("the app setting named by api_key_setting is not set")
            elif api_key.lower().startswith(_KEY_VAULT_REFERENCE):
                found.append("the app setting named by api_key_setting is a Key Vault reference the platform "
                             "could not resolve (check the app's access to the vault)")
                api_key = None
    if found:
        problems.extend(f"{label}: {reason}" for reason in found)
        return None
    return BackendSettings(name=name, endpoint=(endpoint or "").rstrip("/"), deployment=deployment or "",
                           api_version=api_version or "", priority=priority, weight=weight, auth=auth,
                           api_key=api_key, client_id=client_id, token_scope=defaults["token_scope"])


# -- response headers ---------------------------------------------------------------
_NUMBER = re.compile(r"\d{1,15}(?:\.\d{1,9})?")
_DURATION_PART = re.compile(r"(\d{1,15}(?:\.\d{1,9})?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RESET_HEADERS = {
    "requests": ("x-ratelimit-reset-requests", "x-rate-limit-reset-requests"),
    "tokens": ("x-ratelimit-reset-tokens", "x-rate-limit-reset-tokens"),
}


def _lowered(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Header names lowercased (any mapping: dict, requests' or aiohttp's); non-text values dropped."""
    if not headers:
        return {}
    try:
        items = list(headers.items())
    except Exception:  # noqa: BLE001 - a header object we cannot read is treated as no headers
        return {}
    return {name.lower(): value.strip() for name, value in items if isinstance(name, str) and isinstance(value, str)}


def _number(text: str | None) -> float | None:
    """A non-negative decimal number (no signs, exponents, NaN or underscores)."""
    return float(text) if text is not None and _NUMBER.fullmatch(text) else None


def _duration(text: str | None) -> float | None:
    """Seconds from ``55`` (Azure) or ``1m30s`` / ``250ms`` (OpenAI-style durations)."""
    if text is None:
        return None
    seconds = _number(text)
    if seconds is not None:
        return seconds
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _count(text: str | None) -> int | None:
    """A remaining count; Azure's -1 ("unknown") and anything unreadable give None."""
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) <= 15 else None


def _reset(headers: dict[str, str], which: str) -> float | None:
    found = [_duration(headers.get(name)) for name in _RESET_HEADERS[which]]
    found = [seconds for seconds in found if seconds is not None]
    return max(found) if found else None


def retry_after(headers: Mapping[str, str] | None, *, now: float) -> float | None:
    """The wait an answer asks for, in seconds: ``retry-after-ms`` (Azure OpenAI's precise
    form), else ``Retry-After`` (seconds or an HTTP date, against wall-clock ``now``). None
    when neither is usable. The one reading of these headers: the caller's Retry-After and
    the pool's cooldowns agree."""
    return _retry_after(_lowered(headers), now)


def _retry_after(lowered: dict[str, str], now: float) -> float | None:
    millis = _number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    text = lowered.get("retry-after")
    seconds = _number(text)
    if seconds is not None or not text:
        return seconds
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def requested_wait(headers: Mapping[str, str] | None, *, now: float) -> float | None:
    """How long an answer asks the caller to stay away, in seconds: ``retry_after``, else the
    later of the ``x-ratelimit-reset-requests`` / ``-tokens`` times. None when no header is usable."""
    lowered = _lowered(headers)
    asked = _retry_after(lowered, now)
    if asked is not None:
        return asked
    resets = [seconds for seconds in (_reset(lowered, "requests"), _reset(lowered, "tokens")) if seconds is not None]
    return max(resets) if resets else None


# -- the pool ------------------------------------------------------------------------
class Recovery(NamedTuple):
    """When the pool can serve again, for a caller that found no backend to try."""

    seconds: float  # until the earliest cooling backend that is not misconfigured is ready
    all_throttled: bool  # every backend that is not misconfigured is cooling because of a 429
    misconfigured: bool = False  # every backend is misconfigured: nothing worth waiting for


class _Backend:
    """One backend's mutable state; only touched under the pool's lock."""

    __slots__ = ("settings", "current", "ready_at", "kind", "cause", "long_logged", "error_logged",
                 "requests_left", "requests_until", "tokens_left", "tokens_until")

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

    def lacks_headroom(self, now: float, tokens: int | None) -> bool:
        if self.requests_left is not None and now < self.requests_until and self.requests_left <= 0:
            return True
        return bool(tokens) and self.tokens_left is not None and now < self.tokens_until \
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
                 wall_clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
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
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.backends)

    def _state(self, backend: BackendSettings | str) -> _Backend:
        return self._by_name[backend if isinstance(backend, str) else backend.name]

    # -- routing ------------------------------------------------------------------
    def choose(self, *, max_tokens: int | None = None, tried: Collection[str] = ()) -> BackendSettings | None:
        """The backend for the next attempt, or None when every ready backend is in ``tried``
        (names) or none is ready: then ``next_recovery()`` says whether and how long to wait.

        ``max_tokens`` is what the request may use (its ``max_tokens``, or the caller's
        estimate of what Azure counts); None leaves tokens out of the headroom check."""
        now = self._clock()
        with self._lock:
            ready = [s for s in self._states if s.ready_at <= now and s.settings.name not in tried]
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
            return chosen.settings

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
        lowered = _lowered(headers)
        now = self._clock()
        reported = {}  # which -> (remaining, believed until)
        for which in ("requests", "tokens"):
            remaining = _count(lowered.get(f"x-ratelimit-remaining-{which}"))
            if remaining is not None:
                reset = _reset(lowered, which)
                reported[which] = (remaining, now + min(HEADROOM_TTL, HEADROOM_TTL if reset is None else reset))
        with self._lock:
            state = self._state(backend)
            state.error_logged = False
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
            seconds = min(default_cooldown if asked is None else asked, MAX_COOLDOWN)
        records: list[tuple[int, str, tuple]] = []
        with self._lock:
            state = self._state(backend)
            name = state.settings.name
            if state.ready_at <= now:  # a new episode
                state.long_logged = False
            if now + seconds >= state.ready_at:
                state.ready_at, state.kind, state.cause = now + seconds, kind, cause
            state.forget_headroom()  # the cooldown says more than any count it reported
            if kind == "misconfigured" and not state.error_logged:
                state.error_logged = True
                records.append((logging.ERROR, "backend %s looks misconfigured (%s): not used for %.0f s; check its "
                                "endpoint, deployment and credentials", (name, detail or kind, seconds)))
            elif kind != "misconfigured" and seconds >= LONG_COOLDOWN and not state.long_logged:
                state.long_logged = True
                capped = f", asked for {asked:.0f} s" if asked is not None and asked > MAX_COOLDOWN else ""
                records.append((logging.WARNING, "backend %s is %s (%s): not used for %.0f s%s",
                                (name, kind, detail or kind, seconds, capped)))
            remaining = max(0.0, state.ready_at - now)
        for level, message, args in records:
            log.log(level, message, *args)
        return remaining

    # -- what callers and operators see ----------------------------------------------------
    def next_recovery(self) -> Recovery | None:
        """None when some backend is ready now (a caller that tried them all may start a new
        round at once); else how long until one that is not misconfigured is (a misconfigured
        backend is not worth waiting for), and whether they are all throttled (answer 429
        ``rate_limited`` rather than 503 ``upstream_unavailable``)."""
        now = self._clock()
        with self._lock:
            if any(s.ready_at <= now for s in self._states):
                return None
            usable = [s for s in self._states if s.kind != "misconfigured"]
            if not usable:
                return Recovery(min(s.ready_at for s in self._states) - now, False, True)
            seconds = min(s.ready_at for s in usable) - now
            all_throttled = all(s.kind == "throttled" for s in usable)
        return Recovery(seconds, all_throttled)

    def cooling_causes(self) -> list[Any]:
        """The ``cause`` recorded with each backend's cooldown in progress (None where none was)."""
        now = self._clock()
        with self._lock:
            return [s.cause for s in self._states if s.ready_at > now]

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
        if state.ready_at <= now:
            return "ready"
        return "misconfigured" if state.kind == "misconfigured" else "cooling"
