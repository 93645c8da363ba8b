"""The one error type the core raises: an HTTP status, a stable code and a safe message.

Messages are written for the caller and never carry keys, tokens or tracebacks.
``retryable`` says whether the same request may succeed later (throttling, an
outage); event-driven callers use it to decide between redelivery and a final
``failed`` result.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

# The longest Retry-After the app passes on: upstream (or a broken gateway) may ask
# for hours, but a caller told to wait longer than this is better off asking again.
MAX_RETRY_AFTER_SECONDS = 300


class AppError(Exception):
    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 retry_after: float | None = None, retryable: bool = False,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.retryable = retryable
        self.details = details or {}
        # For the invocation's log line, not the caller.
        self.attempts = 0
        self.upstream_ms: float | None = None
        self.upstream_status: int | None = None  # the HTTP status upstream answered, when it did
        self.upstream_headers: Mapping[str, str] | None = None  # and its headers
        # The caller's deadline ran out (an attempt cut short, no time for one, a token wait
        # given up): it says nothing about the backend, which must not be cooled for it.
        self.deadline_exhausted = False

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        error.update(self.details)
        error["request_id"] = request_id
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
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


_STORE_STATES = {"loading", "unreachable", "unauthorized", "invalid"}  # the settings store's states


def credential_unavailable(retryable: bool = True, retry_after: float | None = None) -> AppError:
    message = ("Could not obtain a managed-identity token for Azure OpenAI." if retryable else
               "Could not create the identity credential: check AZURE_OPENAI_AUTH and AZURE_CLIENT_ID.")
    return AppError(503, "credential_unavailable", message, retryable=retryable, retry_after=retry_after)


def internal_error() -> AppError:
    return AppError(500, "internal_error", "An unexpected error occurred; quote the request id.", retryable=True)
