"""Calls the completion deployment with the legacy openai library, within a deadline.

Everything openai needs is passed per call (no ``openai.api_*`` globals), so
concurrent invocations cannot interfere. openai 0.28 retries nothing on POST
and loops forever on HTTP 409, so retries are ours: on 429, 500, 502, 503, 504,
timeouts, dropped connections, broken bodies and token-endpoint failures; never
on other 4xx. Waits use exponential backoff with full jitter unless upstream
says how long (``retry-after-ms`` / ``Retry-After``); a wait that does not fit
in the deadline is not slept: the error is returned at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import openai
import openai.error

from .errors import AppError
from .openai_session import BearerTokenAuth, call_auth
from .retry import Deadline, backoff_seconds, retry_after_seconds
from .settings import RetrySettings, UpstreamSettings

if TYPE_CHECKING:
    from .credentials import TokenCache

log = logging.getLogger(__name__)

# openai 0.28 requires a key even when the session's auth hook supplies the token.
TOKEN_MODE_PLACEHOLDER_KEY = "unused-token-auth"
# An attempt with less time than this is not worth starting.
MIN_ATTEMPT_SECONDS = 0.1


class UpstreamResult(NamedTuple):
    response: dict[str, Any]
    attempts: int
    upstream_ms: float  # time spent in upstream attempts, waits excluded


class CompletionClient:
    def __init__(self, upstream: UpstreamSettings, retry: RetrySettings, tokens: TokenCache | None, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if (upstream.auth == "key") != (tokens is None):
            raise ValueError("a token cache is needed exactly when auth is not 'key'")
        self._retry = retry
        self._tokens = tokens
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(retry.max_concurrency)
        self._per_call = {
            "api_type": "azure" if tokens is None else "azure_ad",
            "api_base": upstream.endpoint,
            "api_version": upstream.api_version,
            "api_key": upstream.api_key if tokens is None else TOKEN_MODE_PLACEHOLDER_KEY,
            "deployment_id": upstream.deployment,
        }

    def complete(self, params: dict[str, Any], deadline: Deadline, request_id: str) -> UpstreamResult:
        """The upstream's JSON response; AppError when it fails for good or time runs out."""
        if not self._slots.acquire(timeout=deadline.remaining()):
            raise _overloaded()
        try:
            if deadline.remaining() < MIN_ATTEMPT_SECONDS:  # a slot, but too late to use it
                raise _overloaded()
            return self._complete_with_retries(params, deadline, request_id)
        finally:
            self._slots.release()

    def _complete_with_retries(self, params: dict[str, Any], deadline: Deadline,
                               request_id: str) -> UpstreamResult:
        attempt = 0
        upstream_seconds = 0.0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                response = self._attempt(params, deadline, request_id)
                upstream_seconds += time.perf_counter() - started
                return UpstreamResult(response, attempt, upstream_seconds * 1000)
            except (AppError, openai.error.OpenAIError) as exc:
                upstream_seconds += time.perf_counter() - started
                failure = exc if isinstance(exc, AppError) else upstream_error(exc)
                failure.attempts, failure.upstream_ms = attempt, upstream_seconds * 1000
            if not failure.retryable or attempt > self._retry.max_retries:
                raise _final(failure)
            advised = failure.retry_after
            wait = advised if advised is not None else backoff_seconds(attempt)
            if wait + MIN_ATTEMPT_SECONDS >= deadline.remaining():
                raise _final(failure)  # no time left for another useful attempt: say why now
            log.warning("upstream attempt %d failed (%s, HTTP %d); retrying in %.2f s",
                        attempt, failure.code, failure.status, wait)
            self._sleep(wait)

    def _attempt(self, params: dict[str, Any], deadline: Deadline, request_id: str) -> dict[str, Any]:
        auth = None if self._tokens is None else BearerTokenAuth(self._tokens.get(deadline))
        remaining = deadline.remaining()  # after the token: its wait counts too
        if remaining < MIN_ATTEMPT_SECONDS:
            raise AppError(504, "upstream_timeout", "No time was left to call Azure OpenAI within the deadline.",
                           retryable=True)
        # This attempt's HTTP timeouts: connect and read together fit in what is left
        # (connecting takes milliseconds when all is well, so it gets the smaller share).
        connect = min(self._retry.connect_timeout, remaining / 4)
        read = min(self._retry.read_timeout, remaining - connect)
        with call_auth(auth):
            response = openai.Completion.create(
                **self._per_call, **params, request_id=request_id, request_timeout=(connect, read),
                # openai retries HTTP 409 in a tight loop until `timeout` seconds have
                # passed; 0 makes it raise TryAgain at once so our policy decides.
                timeout=0,
            )
        # An OpenAIObject: a dict subclass all the way down, used as it is.
        choices = response.get("choices") if isinstance(response, dict) else None
        if not (isinstance(choices, list) and all(isinstance(choice, dict) for choice in choices)
                and isinstance(response.get("usage"), dict)):
            raise AppError(502, "upstream_bad_response", "Azure OpenAI sent a response the app cannot read.",
                           retryable=True)
        return response


def _overloaded() -> AppError:
    return AppError(503, "overloaded", "Too many completions are in progress on this instance.",
                    retry_after=1, retryable=True)


def _final(failure: AppError) -> AppError:
    """The error to give the caller once retrying stops."""
    if failure.status == 429 and failure.retry_after is None:
        failure.retry_after = 1.0
    return failure


_MISCONFIGURED = {
    401: "Azure OpenAI rejected the app's credentials (401): check the key, or the managed identity and "
         "its 'Cognitive Services OpenAI User' role.",
    403: "Azure OpenAI refused access (403): check the identity's role assignment and network rules.",
    404: "Azure OpenAI has no such deployment or API version (404): check AZURE_OPENAI_DEPLOYMENT, "
         "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_VERSION.",
    415: "Azure OpenAI did not accept the request format (415).",
}


def upstream_error(exc: openai.error.OpenAIError) -> AppError:
    """Map an openai 0.28 exception to the caller-facing error (and whether to retry)."""
    status = exc.http_status
    advised = retry_after_seconds(exc.headers)
    if isinstance(exc, openai.error.Timeout):
        return AppError(504, "upstream_timeout", "Azure OpenAI did not answer in time.", retryable=True)
    if isinstance(exc, openai.error.APIConnectionError):
        return AppError(502, "upstream_unreachable", "Could not reach Azure OpenAI.", retryable=True)
    if status == 429:
        return AppError(429, "rate_limited", "Azure OpenAI is throttling requests; retry later.",
                        retry_after=advised, retryable=True)
    if status == 503:
        return AppError(503, "upstream_unavailable", "Azure OpenAI is temporarily unavailable.",
                        retry_after=advised, retryable=True)
    if status in (500, 502):
        return AppError(502, "upstream_error", f"Azure OpenAI failed ({status}).", retryable=True)
    if status == 504:
        return AppError(504, "upstream_timeout", "Azure OpenAI timed out (504).", retryable=True)
    if status is not None and 200 <= status < 300:
        return AppError(502, "upstream_bad_response", "Azure OpenAI sent a response the app cannot read.",
                        retryable=True)
    error = _error_body(exc)
    if status == 400:
        if error.get("code") == "content_filter":
            inner = error.get("innererror") or error.get("inner_error")
            inner = inner if isinstance(inner, dict) else {}
            results = inner.get("content_filter_result") or inner.get("content_filter_results")
            results = results if isinstance(results, dict) else {}
            return AppError(400, "content_filter",
                            "The prompt was blocked by Azure OpenAI's content filter.",
                            param=error.get("param") or "prompt", details={"content_filter_result": results})
        if error.get("code") == "OperationNotSupported":
            return AppError(502, "upstream_misconfigured",
                            "The configured deployment does not support completions: check "
                            "AZURE_OPENAI_DEPLOYMENT.")
        message = error.get("message") if isinstance(error.get("message"), str) else "rejected"
        return AppError(400, "upstream_rejected", f"Azure OpenAI rejected the request: {message[:500]}",
                        param=error.get("param") if isinstance(error.get("param"), str) else None)
    if status in _MISCONFIGURED:
        return AppError(502, "upstream_misconfigured", _MISCONFIGURED[status])
    return AppError(502, "upstream_error", f"Azure OpenAI failed ({status or 'no status'}).")


def _error_body(exc: openai.error.OpenAIError) -> dict[str, Any]:
    body = exc.json_body
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}
