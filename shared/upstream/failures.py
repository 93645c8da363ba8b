"""The one boundary where third-party failures become ``AppError``s, and answers are checked.

openai 0.28 raises its own errors for most failures, but plain ``UnicodeDecodeError``,
``AttributeError``, ``RecursionError`` or ``ValueError`` for some malformed bodies;
those are classified by the HTTP status the transport saw (``transport.Exchange``),
and logged by type only (their messages can quote a body).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import openai.error

from ..errors import AppError
from .headers import retry_after
from .transport import Exchange, bad_response

log = logging.getLogger(__name__)

_MISCONFIGURED = {
    401: "Azure OpenAI rejected the app's credentials (401): check the key, or the managed identity and "
         "its 'Cognitive Services OpenAI User' role.",
    403: "Azure OpenAI refused access (403): check the identity's role assignment and network rules.",
    404: "Azure OpenAI has no such deployment or API version (404): check AZURE_OPENAI_DEPLOYMENT, "
         "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_VERSION.",
    415: "Azure OpenAI did not accept the request format (415).",
}


def upstream_failure(exc: BaseException, exchange: Exchange) -> AppError:
    """The caller-facing error (and whether to retry) for anything an attempt raised."""
    if isinstance(exc, AppError):
        error = exc
    elif isinstance(exc, (openai.error.Timeout, TimeoutError)):
        error = AppError(504, "upstream_timeout", "Azure OpenAI did not answer in time.", retryable=True)
    elif isinstance(exc, openai.error.APIConnectionError):
        error = AppError(502, "upstream_unreachable", "Could not reach Azure OpenAI.", retryable=True)
    elif isinstance(exc, openai.error.OpenAIError) and exc.http_status == 200 and _error_body(exc):
        # an error event in the middle of a stream: openai 0.28 raises it with the stream's status
        # (a 200 whose body openai cannot read is a bad response, below)
        message = _error_body(exc).get("message")
        text = f": {message[:300]}" if isinstance(message, str) and message else ""
        error = AppError(502, "upstream_error", f"Azure OpenAI failed in the middle of the stream{text}",
                         retryable=True)
    elif isinstance(exc, openai.error.OpenAIError):
        error = error_for_status(exc.http_status or exchange.status, exc.headers or exchange.headers,
                                 _error_body(exc))
    else:
        log.warning("upstream attempt raised %s (HTTP %s)", type(exc).__name__, exchange.status or "-")
        error = error_for_status(exchange.status, exchange.headers, {})
    return error.replace(upstream_status=exchange.status, upstream_headers=exchange.headers)


def error_for_status(status: int | None, headers: Mapping[str, str] | None, error: Mapping[str, Any]) -> AppError:
    """The error for an answer with HTTP ``status`` and the service's ``error`` object (may be empty)."""
    advised = retry_after(headers, now=time.time())
    if status is None:
        return AppError(502, "upstream_error", "Azure OpenAI failed (no status).", retryable=True)
    if 200 <= status < 300:
        return bad_response("Azure OpenAI sent a response the app cannot read.")
    if status == 429:
        return rate_limited(advised)
    if status == 503:
        return upstream_unavailable(advised)
    if status in (408, 504):
        return AppError(504, "upstream_timeout", f"Azure OpenAI timed out ({status}).", retryable=True)
    if status == 400:
        return _rejected(error)
    if status in _MISCONFIGURED:
        return AppError(502, "upstream_misconfigured", _MISCONFIGURED[status])
    return AppError(502, "upstream_error", f"Azure OpenAI failed ({status}).", retryable=status == 409 or status >= 500)


def rate_limited(retry_after: float | None = None) -> AppError:
    return AppError(429, "rate_limited", "Azure OpenAI is throttling requests; retry later.",
                    retry_after=retry_after, retryable=True)


def upstream_unavailable(retry_after: float | None = None) -> AppError:
    return AppError(503, "upstream_unavailable", "Azure OpenAI is temporarily unavailable.",
                    retry_after=retry_after, retryable=True)


def _rejected(error: Mapping[str, Any]) -> AppError:
    code = error.get("code") if isinstance(error.get("code"), str) else None
    if code == "content_filter":
        inner = error.get("innererror") or error.get("inner_error")
        inner = inner if isinstance(inner, dict) else {}
        results = inner.get("content_filter_result") or inner.get("content_filter_results")
        results = results if isinstance(results, dict) and json_safe(results) else {}
        param = error.get("param")
        return AppError(400, "content_filter", "The prompt was blocked by Azure OpenAI's content filter.",
                        param=param if isinstance(param, str) else "prompt",
                        details={"content_filter_result": results})
    if code == "OperationNotSupported":  # the client names the API setting to check
        return AppError(502, "upstream_misconfigured", "The deployment does not serve this API.",
                        upstream_code=code)
    message = error.get("message")
    text = f"Azure OpenAI rejected the request: {message[:500]}" if isinstance(message, str) and message \
        else "Azure OpenAI rejected the request."
    param = error.get("param")
    return AppError(400, "upstream_rejected", text, param=param if isinstance(param, str) else None,
                    upstream_code=code)


def json_safe(value: Any) -> bool:
    """Whether ``value`` is JSON without NaN or Infinity (what a caller's body can carry)."""
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return False
    return True


def _error_body(exc: openai.error.OpenAIError) -> Mapping[str, Any]:
    body = exc.json_body
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


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
    if scan and not json_safe(response):
        raise bad_response("Azure OpenAI sent a response with values JSON cannot carry.")


def check_chat(response: Any, scan: bool = True) -> None:
    """A chat 200 body the app can pass on: choices of objects whose message content is text
    or null, integer usage counts (with their details), nothing JSON cannot carry."""
    choices = response.get("choices") if isinstance(response, dict) else None
    usage = response.get("usage") if isinstance(response, dict) else None
    if not (isinstance(choices, list) and all(_readable_choice(choice) for choice in choices)
            and isinstance(usage, dict) and all(_count(value) for value in usage.values())):
        raise bad_response("Azure OpenAI sent a response the app cannot read.")
    if scan and not json_safe(response):
        raise bad_response("Azure OpenAI sent a response with values JSON cannot carry.")


def _readable_choice(choice: Any) -> bool:
    message = choice.get("message") if isinstance(choice, dict) else None
    return isinstance(message, dict) and isinstance(message.get("content"), (str, type(None))) \
        and isinstance(message.get("tool_calls"), (list, type(None))) and _index(choice)


def _index(choice: dict) -> bool:
    index = choice.get("index", 0)
    return type(index) is int and index >= 0


def _count(value: Any) -> bool:
    """A usage count (an integer), or its details (an object of counts or nulls)."""
    if isinstance(value, dict):
        return all(type(v) is int or v is None for v in value.values())
    return type(value) is int
