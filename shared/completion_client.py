"""Calls the completion deployment with openai 0.28's async client, within a deadline.

Everything openai needs is passed per call (no ``openai.api_*`` globals), so
concurrent invocations cannot interfere; the only openai state set is the
session hook (``upstream_http.UpstreamHttp``). openai 0.28 retries nothing on
POST and loops forever on HTTP 409, so retries are ours, decided by the
``RetryPolicy``: on 408, 409, 429, 5xx, timeouts, dropped connections, broken
bodies and token-endpoint failures; never on other 4xx.

Each attempt is bounded twice over: aiohttp's total timeout is what is left of
the deadline (capped by ``AZURE_OPENAI_TIMEOUT``), and the attempt runs inside
``asyncio.timeout`` of the same length, so not even an upstream that sends one
byte a second keeps an invocation past its deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import openai
import openai.error

from .backends import DEFAULT_COOLDOWN, BackendPool, BackendSettings, FailureKind, Recovery, retry_after
from .errors import AppError
from .retry import SYSTEM_CLOCK, Clock, Deadline, RetryPolicy
from .settings import RetrySettings
from .telemetry import NOOP, Telemetry
from .upstream_http import Exchange, UpstreamHttp, bad_response

if TYPE_CHECKING:
    from .credentials import TokenCache

log = logging.getLogger(__name__)

# Above this size, an answer's JSON is re-encoded to look for NaN or Infinity only when its
# bytes contain those words: each pass of the C encoder or decoder holds the GIL (so moving it
# to a thread frees nothing) for about 25 ms per MiB, the event loop with it.
SCAN_ANSWERS_BELOW_BYTES = 256 * 1024


class UpstreamResult(NamedTuple):
    response: dict[str, Any]
    attempts: int
    upstream_ms: float  # time spent in upstream attempts, waits excluded
    headers: Mapping[str, str]  # of the answer that succeeded
    backend: BackendSettings  # the backend that answered
    failovers: int  # attempts that went to another backend at once after a failure


class PlainCompletion(openai.Completion):
    """openai's Completion answering with the JSON as parsed (dicts and lists), through the
    library's own ``plain_old_data`` switch, rather than as nested ``OpenAIObject``s: the app
    reads each response once, to check and reshape it, and the conversion (about 15 objects
    for an answer with content-filter annotations) was a fifth of the client's CPU per
    completion."""

    plain_old_data = True


class _PerLoop:
    """One concurrency semaphore per event loop (asyncio primitives belong to one loop;
    the Functions worker runs one, so this is one per process)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self._size)
        return semaphore


class _Target:
    """What openai needs to call one backend, prepared once."""

    def __init__(self, backend: BackendSettings, tokens: TokenCache | None) -> None:
        self.backend = backend
        self.tokens = tokens
        self.per_call = {
            # openai sends "Authorization: Bearer <api_key>" for azure_ad, "api-key" for azure.
            "api_type": "azure" if tokens is None else "azure_ad",
            "api_base": backend.endpoint,
            "api_version": backend.api_version,
            "deployment_id": backend.deployment,
        }


class CompletionClient:
    """Completions from a pool of backends (one, unless AZURE_OPENAI_BACKENDS lists more).

    ``tokens`` maps each identity (``BackendSettings.identity``) to its token cache;
    backends with the same identity and scope share one."""

    def __init__(self, backends: Sequence[BackendSettings], retry: RetrySettings,
                 tokens: Mapping[tuple, TokenCache], *, http: UpstreamHttp | None = None,
                 pool: BackendPool | None = None, policy: RetryPolicy | None = None, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None, telemetry: Telemetry = NOOP,
                 previous: "CompletionClient | None" = None) -> None:
        """``previous``: the client these settings replace; its concurrency slots carry over when
        the limit is the same (invocations in flight on it still count against this one). (What
        cooled each backend lives in the pool, which carries over when the backends are the same.)"""
        self._targets = {}
        for backend in backends:
            if (backend.identity is None) == (backend.identity in tokens):
                raise ValueError(f"backend {backend.name}: a token cache is needed exactly when auth is not key")
            self._targets[backend.name] = _Target(backend, tokens.get(backend.identity))
        self._retry = retry
        self._clock = clock
        self._rng = rng
        self._policy = policy or RetryPolicy(max_retries=retry.max_retries)
        self.tokens = dict(tokens)
        self.pool = pool or BackendPool(backends, clock=clock.monotonic, wall_clock=clock.time, rng=rng)
        self._http = http or UpstreamHttp([b.endpoint for b in backends], max_connections=retry.max_connections,
                                          max_response_bytes=retry.max_response_bytes)
        same_limit = previous is not None and previous._retry.max_concurrency == retry.max_concurrency
        self._slots = previous._slots if same_limit else _PerLoop(retry.max_concurrency)
        self._telemetry = telemetry

    @property
    def http(self) -> UpstreamHttp:
        return self._http

    async def complete(self, params: dict[str, Any], deadline: Deadline, request_id: str) -> UpstreamResult:
        """The upstream's JSON response; AppError when it fails for good or time runs out."""
        if deadline.remaining() < self._policy.min_attempt:  # spent before it got here (e.g. waiting for settings)
            raise _no_time()
        slots = self._slots.get()
        if slots.locked():  # every slot taken: wait for one within the deadline
            waiting = time.perf_counter()
            try:
                async with asyncio.timeout(deadline.remaining()):
                    await slots.acquire()
            except TimeoutError:
                self._telemetry.slot_wait(time.perf_counter() - waiting, timed_out=True)
                raise _overloaded() from None
            self._telemetry.slot_wait(time.perf_counter() - waiting)
        else:
            await slots.acquire()  # returns at once
        try:
            if deadline.remaining() < self._policy.min_attempt:  # a slot, but too late to use it
                raise _overloaded()
            return await self._complete_with_failover(params, deadline, request_id)
        finally:
            slots.release()

    async def _complete_with_failover(self, params: dict[str, Any], deadline: Deadline,
                                      request_id: str) -> UpstreamResult:
        """Try the pool's choice; on a failure that is not the caller's, cool that backend and
        go at once to the next ready one (each backend at most once per round). When none is
        left to try, wait for the earliest recovery if it fits the deadline and the retry
        budget (a new round), else answer with the last failure."""
        tried: set[str] = set()
        reauthenticated: set[str] = set()
        attempts = rounds = failovers = 0
        upstream_seconds = 0.0
        last: AppError | None = None
        tokens_needed = _tokens_needed(params)
        while True:
            backend = self.pool.choose(max_tokens=tokens_needed, tried=tried)
            if backend is None:
                recovery = self.pool.next_recovery()
                wait = self._wait_for_recovery(recovery, last, rounds, deadline)
                if wait is None:
                    raise _given_up(last or self._pool_answer(recovery), recovery, attempts, upstream_seconds)
                rounds += 1
                tried.clear()
                self._telemetry.retry_wait(wait)
                if wait > 0:
                    log.info("request_id=%s: no Azure OpenAI backend ready (last: %s); retrying in %.2f s",
                             request_id, last.code if last else "-", wait)
                    await self._clock.sleep(wait)
                continue
            if deadline.remaining() < self._policy.min_attempt:
                raise _given_up(last or _no_time(), None, attempts, upstream_seconds)
            attempt = self._telemetry.attempt(backend, attempts + 1,
                                              "failover" if tried else "retry" if attempts else "first")
            if tried:
                failovers += 1
            tried.add(backend.name)
            attempts += 1
            started = time.perf_counter()
            try:
                response, exchange = await self._attempt(self._targets[backend.name], params, deadline,
                                                         request_id)
            except AppError as error:
                attempt.end(error)
                upstream_seconds += time.perf_counter() - started
                error.attempts, error.upstream_ms = attempts, upstream_seconds * 1000
                if error.deadline_exhausted:  # the caller's time ran out: nothing to hold against the backend
                    raise _final(error) from None
                kind = _pool_failure(error)
                if kind is None:  # the caller's own error: the backend answered, and no other would differ
                    if error.upstream_status is not None:
                        self.pool.record_success(backend, error.upstream_headers)
                    raise _final(error) from None
                if (error.upstream_status == 401 and self._targets[backend.name].tokens is not None
                        and backend.name not in reauthenticated):
                    # The token was refused (revoked, or the role assignment changed): the attempt
                    # dropped it from the cache; one more attempt, at once, with a fresh token.
                    reauthenticated.add(backend.name)
                    tried.discard(backend.name)
                    log.info("request_id=%s: backend %s refused the token (HTTP 401); retrying at once with a "
                             "new one", request_id, backend.name)
                    continue
                # Upstream's wait when it named one; else 10 s for a pool, or, for a pool of one,
                # none: each caller then waits its own jittered backoff (_wait_for_recovery), as
                # callers of a single endpoint always have, rather than all at the longest drawn.
                cooldown = error.retry_after if error.retry_after is not None else \
                    0.0 if len(self.pool) == 1 else DEFAULT_COOLDOWN
                self.pool.record_failure(backend, kind, error.upstream_headers if error.upstream_status in (429, 503)
                                         else None, default_cooldown=cooldown, cause=error,
                                         detail=f"{error.code}, HTTP {error.upstream_status or '-'}")
                # INFO, per attempt: an outage fails every caller's attempts at once, and the lines
                # an operator acts on are the pool's and the token cache's, once per episode.
                log.info("request_id=%s: attempt %d to backend %s failed (%s, HTTP %s)", request_id, attempts,
                         backend.name, error.code, error.upstream_status or "-")
                last = error
                continue
            attempt.end(None, exchange.status)
            upstream_seconds += time.perf_counter() - started
            self.pool.record_success(backend, exchange.headers)
            return UpstreamResult(response, attempts, upstream_seconds * 1000, exchange.headers, backend, failovers)

    def _pool_answer(self, recovery: Recovery | None) -> AppError | None:
        """For a request that found no backend ready: the failure that cooled them, when they
        all failed the same way (always, for a pool of one: its callers hear what upstream
        said, as they always have); else None, and the pool's state decides."""
        if recovery is None:
            return None
        cooling = self.pool.cooling_causes()
        failure = cooling[0] if cooling else None
        if failure is None or any(other is None or other.code != failure.code for other in cooling):
            return None
        return AppError(failure.status, failure.code, failure.message, param=failure.param,
                        retryable=failure.retryable, details=failure.details)

    def _wait_for_recovery(self, recovery: Recovery | None, last: AppError | None, rounds: int,
                           deadline: Deadline) -> float | None:
        """Seconds to wait before the next round, or None to give up now: nothing is worth
        waiting for, or the policy says the budget or the deadline does not allow it."""
        if recovery is not None and recovery.misconfigured:
            return None
        wait = 0.0 if recovery is None else recovery.seconds
        if len(self.pool) == 1 and last is not None and last.retry_after is None:
            wait = max(wait, self._policy.backoff(rounds + 1, self._rng))  # its own, jittered (see the cooldown)
        return self._policy.next_round(rounds, wait, deadline.remaining(), attempted=last is not None)

    async def _attempt(self, target: _Target, params: dict[str, Any], deadline: Deadline,
                       request_id: str) -> tuple[dict[str, Any], Exchange]:
        api_key = target.backend.api_key if target.tokens is None else await target.tokens.get(deadline)
        remaining = deadline.remaining()  # after the token: its wait counts too
        if remaining < self._policy.min_attempt:
            raise _no_time()
        total = min(self._retry.read_timeout, remaining)
        connect = min(self._retry.connect_timeout, total)
        cut_by_deadline = remaining < self._retry.read_timeout  # this attempt gets less than its full time
        with self._http.exchange() as exchange:
            try:
                async with asyncio.timeout(total):
                    response = await PlainCompletion.acreate(
                        **target.per_call, api_key=api_key, **params, request_id=request_id,
                        request_timeout=(connect, total),
                        # openai retries HTTP 409 in a loop until `timeout` seconds of the wall
                        # clock have passed; -1 has passed already, even if the clock steps back,
                        # so it raises TryAgain at once and our policy decides.
                        timeout=-1,
                    )
            except Exception as exc:  # noqa: BLE001 - every failure is translated here, at one boundary
                error = upstream_failure(exc, exchange)
                if error.upstream_status == 401 and target.tokens is not None:
                    target.tokens.invalidate(api_key)
                if cut_by_deadline and error.code == "upstream_timeout" and error.upstream_status is None:
                    error.deadline_exhausted = True  # no answer in the time the caller had left, not the full time
                raise error from None
        check_completion(response, scan=exchange.size < SCAN_ANSWERS_BELOW_BYTES or exchange.json_constants)
        return response, exchange


def _tokens_needed(params: dict[str, Any]) -> int:
    """What the request may generate: ``max_tokens`` (16 by default) for each choice of each
    prompt, the part of Azure's token estimate the request controls."""
    prompts = params["prompt"] if isinstance(params.get("prompt"), list) else [params.get("prompt")]
    return (params.get("max_tokens") or 16) * (params.get("best_of") or params.get("n") or 1) * len(prompts)


def _pool_failure(error: AppError) -> FailureKind | None:
    """How a failed attempt counts against its backend; None for the caller's own errors
    (and other final answers), which no other backend would answer differently."""
    if error.code == "upstream_misconfigured":
        return "misconfigured"
    if error.code == "credential_unavailable":
        return "unavailable" if error.retryable else "misconfigured"
    if not error.retryable:
        return None
    return "throttled" if error.status == 429 else "unavailable"


def _no_time() -> AppError:
    error = AppError(504, "upstream_timeout", "No time was left to call Azure OpenAI within the deadline.",
                     retryable=True)
    error.deadline_exhausted = True
    return error


def _given_up(last: AppError | None, recovery: Recovery | None, attempts: int, upstream_seconds: float) -> AppError:
    """The answer once no backend can be tried within the deadline: this request's last
    failure (so a pool of one answers as it always has), or, when it made no attempt, what
    the pool's state says; ``Retry-After`` is the earliest recovery, when known."""
    if last is None:
        if recovery is not None and recovery.misconfigured:
            last = AppError(502, "upstream_misconfigured", "Every Azure OpenAI backend is misconfigured (it "
                            "refused the app's credentials or has no such deployment): check the app's settings "
                            "and role assignments.")
        elif recovery is not None and recovery.all_throttled:
            last = AppError(429, "rate_limited", "Azure OpenAI is throttling requests; retry later.", retryable=True)
        else:
            last = AppError(503, "upstream_unavailable", "Azure OpenAI is temporarily unavailable.", retryable=True)
    if recovery is not None and not recovery.misconfigured and last.retryable:
        last.retry_after = recovery.seconds  # when the pool can serve again, whichever backend it is
    last.attempts, last.upstream_ms = attempts, upstream_seconds * 1000
    return _final(last)


def check_completion(response: Any, scan: bool = True) -> None:
    """A 200 body the app can pass on: choices of objects with string text, integer usage,
    and nothing JSON cannot carry (an upstream ``NaN`` must not reach a caller's body).
    ``scan=False`` skips the last, a full re-encode, when the raw bytes showed it cannot fail."""
    choices = response.get("choices") if isinstance(response, dict) else None
    usage = response.get("usage") if isinstance(response, dict) else None
    if not (isinstance(choices, list) and all(isinstance(c, dict) and isinstance(c.get("text", ""), str)
                                              for c in choices)
            and isinstance(usage, dict) and all(type(v) is int for v in usage.values())):
        raise bad_response("Azure OpenAI sent a response the app cannot read.")
    if scan and not _json_safe(response):
        raise bad_response("Azure OpenAI sent a response with values JSON cannot carry.")


def _overloaded() -> AppError:
    return AppError(503, "overloaded", "Too many completions are in progress on this instance.",
                    retry_after=1, retryable=True)


def _final(failure: AppError) -> AppError:
    """The error to give the caller once retrying stops."""
    if failure.status == 429 and failure.retry_after is None:
        failure.retry_after = 1.0
    return failure


# -- translating failures: the one boundary where third-party errors become AppErrors ----------
_MISCONFIGURED = {
    401: "Azure OpenAI rejected the app's credentials (401): check the key, or the managed identity and "
         "its 'Cognitive Services OpenAI User' role.",
    403: "Azure OpenAI refused access (403): check the identity's role assignment and network rules.",
    404: "Azure OpenAI has no such deployment or API version (404): check AZURE_OPENAI_DEPLOYMENT, "
         "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_VERSION.",
    415: "Azure OpenAI did not accept the request format (415).",
}


def upstream_failure(exc: BaseException, exchange: Exchange) -> AppError:
    """The caller-facing error (and whether to retry) for anything an attempt raised.

    openai 0.28 raises its own errors for most failures, but plain ``UnicodeDecodeError``,
    ``AttributeError``, ``RecursionError`` or ``ValueError`` for some malformed bodies; those
    are classified by the HTTP status the transport saw, and logged by type only (their
    messages can quote a body).
    """
    if isinstance(exc, AppError):
        error = exc
    elif isinstance(exc, (openai.error.Timeout, TimeoutError)):
        error = AppError(504, "upstream_timeout", "Azure OpenAI did not answer in time.", retryable=True)
    elif isinstance(exc, openai.error.APIConnectionError):
        error = AppError(502, "upstream_unreachable", "Could not reach Azure OpenAI.", retryable=True)
    elif isinstance(exc, openai.error.OpenAIError):
        error = error_for_status(exc.http_status or exchange.status, exc.headers or exchange.headers,
                                 _error_body(exc))
    else:
        log.warning("upstream attempt raised %s (HTTP %s)", type(exc).__name__, exchange.status or "-")
        error = error_for_status(exchange.status, exchange.headers, {})
    error.upstream_status, error.upstream_headers = exchange.status, exchange.headers
    return error


def error_for_status(status: int | None, headers: Mapping[str, str] | None, error: dict[str, Any]) -> AppError:
    """The error for an answer with HTTP ``status`` and the service's ``error`` object (may be empty)."""
    advised = retry_after(headers, now=time.time())
    if status is None:
        return AppError(502, "upstream_error", "Azure OpenAI failed (no status).", retryable=True)
    if 200 <= status < 300:
        return bad_response("Azure OpenAI sent a response the app cannot read.")
    if status == 429:
        return AppError(429, "rate_limited", "Azure OpenAI is throttling requests; retry later.",
                        retry_after=advised, retryable=True)
    if status == 503:
        return AppError(503, "upstream_unavailable", "Azure OpenAI is temporarily unavailable.",
                        retry_after=advised, retryable=True)
    if status in (408, 504):
        return AppError(504, "upstream_timeout", f"Azure OpenAI timed out ({status}).", retryable=True)
    if status == 400:
        return _rejected(error)
    if status in _MISCONFIGURED:
        return AppError(502, "upstream_misconfigured", _MISCONFIGURED[status])
    return AppError(502, "upstream_error", f"Azure OpenAI failed ({status}).", retryable=status == 409 or status >= 500)


def _rejected(error: dict[str, Any]) -> AppError:
    if error.get("code") == "content_filter":
        inner = error.get("innererror") or error.get("inner_error")
        inner = inner if isinstance(inner, dict) else {}
        results = inner.get("content_filter_result") or inner.get("content_filter_results")
        results = results if isinstance(results, dict) and _json_safe(results) else {}
        param = error.get("param")
        return AppError(400, "content_filter", "The prompt was blocked by Azure OpenAI's content filter.",
                        param=param if isinstance(param, str) else "prompt",
                        details={"content_filter_result": results})
    if error.get("code") == "OperationNotSupported":
        return AppError(502, "upstream_misconfigured",
                        "The configured deployment does not support completions: check AZURE_OPENAI_DEPLOYMENT.")
    message = error.get("message")
    text = f"Azure OpenAI rejected the request: {message[:500]}" if isinstance(message, str) and message \
        else "Azure OpenAI rejected the request."
    param = error.get("param")
    return AppError(400, "upstream_rejected", text, param=param if isinstance(param, str) else None)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def _error_body(exc: openai.error.OpenAIError) -> dict[str, Any]:
    body = exc.json_body
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}
