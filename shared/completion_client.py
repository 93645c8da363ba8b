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
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import openai
import openai.error

from .errors import AppError
from .retry import SYSTEM_CLOCK, Clock, Deadline, RetryPolicy, retry_after_seconds
from .settings import RetrySettings, UpstreamSettings
from .upstream_http import Exchange, UpstreamHttp, bad_response

if TYPE_CHECKING:
    from .credentials import TokenCache

log = logging.getLogger(__name__)


class UpstreamResult(NamedTuple):
    response: dict[str, Any]
    attempts: int
    upstream_ms: float  # time spent in upstream attempts, waits excluded
    headers: Mapping[str, str]  # of the answer that succeeded


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


class CompletionClient:
    def __init__(self, upstream: UpstreamSettings, retry: RetrySettings, tokens: TokenCache | None, *,
                 http: UpstreamHttp | None = None, policy: RetryPolicy | None = None,
                 clock: Clock = SYSTEM_CLOCK, rng: random.Random | None = None) -> None:
        if (upstream.auth == "key") != (tokens is None):
            raise ValueError("a token cache is needed exactly when auth is not 'key'")
        self._retry = retry
        self._tokens = tokens
        self._clock = clock
        self._rng = rng
        self._policy = policy or RetryPolicy(max_retries=retry.max_retries)
        self._http = http or UpstreamHttp([upstream.endpoint], max_connections=retry.max_connections,
                                          max_response_bytes=retry.max_response_bytes)
        self._slots = _PerLoop(retry.max_concurrency)
        self._per_call = {
            # openai sends "Authorization: Bearer <api_key>" for azure_ad, "api-key" for azure.
            "api_type": "azure" if tokens is None else "azure_ad",
            "api_base": upstream.endpoint,
            "api_version": upstream.api_version,
            "deployment_id": upstream.deployment,
        }
        self._api_key = upstream.api_key

    @property
    def http(self) -> UpstreamHttp:
        return self._http

    async def complete(self, params: dict[str, Any], deadline: Deadline, request_id: str) -> UpstreamResult:
        """The upstream's JSON response; AppError when it fails for good or time runs out."""
        slots = self._slots.get()
        if slots.locked():  # every slot taken: wait for one within the deadline
            try:
                async with asyncio.timeout(deadline.remaining()):
                    await slots.acquire()
            except TimeoutError:
                raise _overloaded() from None
        else:
            await slots.acquire()  # returns at once
        try:
            if deadline.remaining() < self._policy.min_attempt:  # a slot, but too late to use it
                raise _overloaded()
            return await self._complete_with_retries(params, deadline, request_id)
        finally:
            slots.release()

    async def _complete_with_retries(self, params: dict[str, Any], deadline: Deadline,
                                     request_id: str) -> UpstreamResult:
        attempt = 0
        upstream_seconds = 0.0
        reauthenticated = False
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                response, exchange = await self._attempt(params, deadline, request_id)
                upstream_seconds += time.perf_counter() - started
                return UpstreamResult(response, attempt, upstream_seconds * 1000, exchange.headers)
            except AppError as failure:
                upstream_seconds += time.perf_counter() - started
                failure.attempts, failure.upstream_ms = attempt, upstream_seconds * 1000
                error = failure
            if error.upstream_status == 401 and self._tokens is not None and not reauthenticated:
                # The token was refused (revoked, or the role assignment changed): the attempt
                # dropped it from the cache; one more attempt, at once, with a fresh token.
                reauthenticated = True
                wait: float | None = 0.0 if deadline.remaining() > self._policy.min_attempt else None
            else:
                wait = self._policy.wait_before_retry(error, attempt - 1, deadline.remaining(), self._rng)
            if wait is None:
                raise _final(error)
            log.warning("upstream attempt %d failed (%s, HTTP %d); retrying in %.2f s",
                        attempt, error.code, error.status, wait)
            if wait > 0:
                await self._clock.sleep(wait)

    async def _attempt(self, params: dict[str, Any], deadline: Deadline,
                       request_id: str) -> tuple[dict[str, Any], Exchange]:
        api_key = self._api_key if self._tokens is None else await self._tokens.get(deadline)
        remaining = deadline.remaining()  # after the token: its wait counts too
        if remaining < self._policy.min_attempt:
            raise AppError(504, "upstream_timeout", "No time was left to call Azure OpenAI within the deadline.",
                           retryable=True)
        total = min(self._retry.read_timeout, remaining)
        connect = min(self._retry.connect_timeout, total)
        with self._http.exchange() as exchange:
            try:
                async with asyncio.timeout(total):
                    response = await openai.Completion.acreate(
                        **self._per_call, api_key=api_key, **params, request_id=request_id,
                        request_timeout=(connect, total),
                        # openai retries HTTP 409 in a loop until `timeout` seconds have
                        # passed; 0 makes it raise TryAgain at once so our policy decides.
                        timeout=0,
                    )
            except Exception as exc:  # noqa: BLE001 - every failure is translated here, at one boundary
                error = upstream_failure(exc, exchange)
                if error.upstream_status == 401 and self._tokens is not None:
                    self._tokens.invalidate(api_key)
                raise error from None
        check_completion(response)
        return response, exchange


def check_completion(response: Any) -> None:
    """A 200 body the app can pass on: choices of objects with string text, integer usage,
    and nothing JSON cannot carry (an upstream ``NaN`` must not reach a caller's body)."""
    choices = response.get("choices") if isinstance(response, dict) else None
    usage = response.get("usage") if isinstance(response, dict) else None
    if not (isinstance(choices, list) and all(isinstance(c, dict) and isinstance(c.get("text", ""), str)
                                              for c in choices)
            and isinstance(usage, dict) and all(type(v) is int for v in usage.values())):
        raise bad_response("Azure OpenAI sent a response the app cannot read.")
    if not _json_safe(response):
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
    error.upstream_status = exchange.status
    return error


def error_for_status(status: int | None, headers: Mapping[str, str] | None, error: dict[str, Any]) -> AppError:
    """The error for an answer with HTTP ``status`` and the service's ``error`` object (may be empty)."""
    advised = retry_after_seconds(headers)
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
