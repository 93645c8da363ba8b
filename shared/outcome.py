"""What every request ends as: an ``Outcome`` (status, JSON body, headers), and its request id."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .errors import AppError
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

    def json(self) -> str:
        return self.encoded if self.encoded is not None else json.dumps(self.body)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @classmethod
    def failed(cls, error: AppError, request_id: str) -> Outcome:
        return cls(error.status, error.body(request_id), error.headers(), error)

    @classmethod
    def answer(cls, body: dict[str, Any]) -> Outcome:
        return cls(200, body, encoded=encode_answer(body))


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
