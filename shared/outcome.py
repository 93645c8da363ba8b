"""What every request ends as: an ``Outcome`` (status, JSON body, headers), and its request id."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .errors import MAX_RETRY_AFTER_SECONDS, AppError
from .upstream.transport import bad_response

_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_for(given: str | None) -> str:
    """The caller's request id when it is a short, header-safe token, else a new one.
    It goes into logs and the upstream X-Request-Id header, so nothing else is taken."""
    return given if given and _CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class Outcome(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = MappingProxyType({})  # read-only: the default is shared
    error: AppError | None = None
    encoded: str | None = None  # the body as JSON, for answers: encoded once, where a failure is an error
    stream: AsyncIterator[bytes] | None = None  # an answer that streams: its server-sent events

    def json(self) -> str:
        return self.encoded if self.encoded is not None else json.dumps(self.body)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @classmethod
    def failed(cls, error: AppError, request_id: str, dialect: str = "app") -> Outcome:
        """The error in the app's shape, or (``dialect`` "openai") in the one the OpenAI SDKs read."""
        if dialect == "openai":
            return cls(error.status, openai_error_body(error), openai_error_headers(error), error)
        return cls(error.status, error.body(request_id), error.headers(), error)

    @classmethod
    def streaming(cls, headers: Mapping[str, str], events: AsyncIterator[bytes]) -> Outcome:
        return cls(200, {}, MappingProxyType(dict(headers)), stream=events)

    @classmethod
    def answer(cls, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Outcome:
        return cls(200, body, MappingProxyType(dict(headers)) if headers else MappingProxyType({}),
                   encoded=encode_answer(body))


# The SDKs raise one exception class per status; ``type`` is what OpenAI's own API says for it.
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
                 404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded"}
# Statuses whose retry cannot help: the SDKs are told not to (their own retries would multiply the app's).
_FINAL_STATUSES = (400, 401, 403, 404, 413)


def openai_error_body(error: AppError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, as the OpenAI SDKs read it (with Azure's
    ``innererror`` for a content filter hit)."""
    body: dict[str, Any] = {"message": error.message, "type": _OPENAI_TYPES.get(error.status, "server_error"),
                            "param": error.param, "code": error.code}
    if error.code == "content_filter":
        body["innererror"] = {"code": "ResponsibleAIPolicyViolation",
                              "content_filter_result": error.details.get("content_filter_result", {})}
    return {"error": body}


def openai_error_headers(error: AppError) -> dict[str, str]:
    """The app's headers, and what the SDKs read: ``retry-after-ms`` (the precise wait; they never read
    Azure's ``x-ms-retry-after-ms``), and ``x-should-retry: false`` where retrying cannot help."""
    headers = dict(error.headers())
    if error.retry_after is not None:
        headers["retry-after-ms"] = str(max(1, math.ceil(min(error.retry_after, MAX_RETRY_AFTER_SECONDS) * 1000)))
    if error.status in _FINAL_STATUSES or error.code == "upstream_misconfigured" or not error.retryable:
        headers["x-should-retry"] = "false"
    return headers


def encode_answer(body: dict[str, Any]) -> str:
    """The answer's JSON. The client re-encodes a large answer to look for what JSON cannot carry
    only when its bytes hold ``NaN`` or ``Infinity``; what that lets through (a number too large
    for a float, such as ``1e400``, which reads as inf; nesting deeper than the encoder goes) is
    refused here, as 502 at once: the attempt already counted as the backend's success, so there
    is no failover. Azure OpenAI sends neither."""
    try:
        return json.dumps(body, allow_nan=False)
    except (ValueError, RecursionError):
        raise bad_response("Azure OpenAI sent a response with values JSON cannot carry.") from None
