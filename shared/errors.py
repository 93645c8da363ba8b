"""The one error type the core raises: an HTTP status, a stable code and a safe message.

Messages are written for the caller and never carry keys, tokens or tracebacks.
``retryable`` says whether the same request may succeed later (throttling, an
outage); event-driven callers use it to decide between redelivery and a final
``failed`` result.

An ``AppError`` is built once and never changed: what a later step learns (the
attempts made, the wait to advise) makes a new one with ``replace()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# The longest Retry-After the app passes on: upstream (or a broken gateway) may ask
# for hours, but a caller told to wait longer than this is better off asking again.
MAX_RETRY_AFTER_SECONDS = 300
# The settings store's states (and what went wrong with a Key Vault reference in it).
_STORE_STATES = {"loading", "unreachable", "unauthorized", "invalid", "Key Vault secret not found",
                 "Key Vault access denied", "Key Vault unreachable"}
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class AppError(Exception):
    """``status``, ``code``, ``message``, ``param``, ``retry_after``, ``retryable`` and
    ``details`` are for the caller. The rest is for the invocation's log line and the
    client's decisions: ``attempts`` and ``upstream_ms``; ``upstream_status`` and
    ``upstream_headers`` (what upstream answered, when it did), ``upstream_code`` (the code in its
    error body); ``deadline_exhausted``
    (the caller's deadline ran out: that says nothing about the backend, which must not
    be cooled for it)."""

    _FIELDS = ("status", "code", "message", "param", "retry_after", "retryable", "details", "attempts",
               "upstream_ms", "upstream_status", "upstream_headers", "upstream_code", "deadline_exhausted")
    status: int
    code: str
    message: str
    param: str | None
    retry_after: float | None
    retryable: bool
    details: Mapping[str, Any]
    attempts: int
    upstream_ms: float | None
    upstream_status: int | None
    upstream_headers: Mapping[str, str] | None
    upstream_code: str | None
    deadline_exhausted: bool

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 retry_after: float | None = None, retryable: bool = False,
                 details: Mapping[str, Any] | None = None, attempts: int = 0, upstream_ms: float | None = None,
                 upstream_status: int | None = None, upstream_headers: Mapping[str, str] | None = None,
                 upstream_code: str | None = None, deadline_exhausted: bool = False) -> None:
        super().__init__(message)
        values = {"status": status, "code": code, "message": message, "param": param, "retry_after": retry_after,
                  "retryable": retryable, "details": MappingProxyType(dict(details or {})), "attempts": attempts,
                  "upstream_ms": upstream_ms, "upstream_status": upstream_status,
                  "upstream_headers": upstream_headers, "upstream_code": upstream_code,
                  "deadline_exhausted": deadline_exhausted}
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__"):  # what raising sets: __traceback__, __cause__, __context__
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"AppError is not changed after it is built; use replace(): {name}")

    def replace(self, **changes: Any) -> AppError:
        """A copy with ``changes`` (as dataclasses.replace)."""
        values = {name: getattr(self, name) for name in self._FIELDS}
        values.update(changes)
        status, code, message = values.pop("status"), values.pop("code"), values.pop("message")
        return AppError(status, code, message, **values)

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        error.update(self.details)
        error["request_id"] = request_id
        return {"error": error}

    def headers(self) -> Mapping[str, str]:
        if self.retry_after is None:
            return _NO_HEADERS
        return {"Retry-After": str(max(1, math.ceil(min(self.retry_after, MAX_RETRY_AFTER_SECONDS))))}

    def __repr__(self) -> str:
        return f"AppError({self.status}, {self.code!r})"


def invalid_request(message: str, param: str | None = None) -> AppError:
    return AppError(400, "invalid_request", message, param=param)


def not_configured(problems: Mapping[str, str]) -> AppError:
    """503 naming the settings that are missing or invalid, with why (never their values).
    While the settings store is loading or cannot be read, that is an outage the app retries
    in the background: retryable (a queue message is delivered again, not failed for good)."""
    names = sorted(problems)
    described = ", ".join(f"{name} ({problems[name]})" if problems[name] in _STORE_STATES else name for name in names)
    transient = any(problems[name] in _STORE_STATES for name in names)
    return AppError(503, "not_configured", "The app is not configured: missing or invalid settings: " + described,
                    details={"settings": names, "reasons": {name: problems[name] for name in names}},
                    retryable=transient, retry_after=5 if transient else None)


def credential_unavailable(retryable: bool = True, retry_after: float | None = None,
                           deadline_exhausted: bool = False) -> AppError:
    message = ("Could not obtain a managed-identity token for Azure OpenAI." if retryable else
               "Could not create the identity credential: check AZURE_OPENAI_AUTH and AZURE_CLIENT_ID.")
    return AppError(503, "credential_unavailable", message, retryable=retryable, retry_after=retry_after,
                    deadline_exhausted=deadline_exhausted)


def internal_error() -> AppError:
    return AppError(500, "internal_error", "An unexpected error occurred; quote the request id.", retryable=True)
