"""Event-driven completions (Storage queue, Event Grid): the same pipeline, answers as messages.

A request message is the HTTP body plus an optional correlation ``id``: a completion
(``prompt``, as ``/api/completions``) or a chat completion (``messages``, as
``/api/chat/completions``). Every
request gets exactly one result message:
``{"id", "status": "succeeded", "result": <the HTTP 200 body>}`` or
``{"id", "status": "failed", "error": {"code", "message"}}``.

- A bad request (not JSON, invalid fields, a content filter hit...) gets a
  ``failed`` result at once: retrying cannot help.
- A transient failure (throttling, an outage, a timeout, no token) raises
  ``RetryLater`` so the host redelivers the message (queue: after the visibility
  timeout, up to ``maxDequeueCount`` times, then to ``<queue>-poison``, whose
  trigger answers ``failed`` with code ``poisoned``; Event Grid: its own retry
  schedule, then the subscription's dead-letter destination).
- A redelivered request whose success this instance still remembers is answered
  from memory instead of paying for a second completion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .errors import AppError

if TYPE_CHECKING:
    from .service import CompletionService

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 256
# A queue message holds 64 KiB, and the output binding base64-encodes it (host.json
# messageEncoding): 48 KiB of JSON (ASCII: json.dumps escapes everything else).
MAX_RESULT_CHARS = 48 * 1024


class RetryLater(Exception):
    """A transient failure: let the host deliver the request again."""


class RecentResults:
    """Successful results by (correlation id, request), kept for a while in this process.

    A message is redelivered when its invocation failed after the completion was
    paid for (the output could not be written, the instance stopped) or its
    visibility timeout ran out. Remembering recent successes makes the common
    case free. Bounded by count, by size and by age (oldest out first), and per
    instance: a redelivery to another instance, or after ``ttl``, pays again
    (see README, "Idempotency").
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 32 * 1024 * 1024, ttl: float = 900.0) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ttl = ttl

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def put(self, key: tuple[str, str], result: str) -> None:
        now = time.monotonic()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._entries[key] = (now + self._ttl, result)
            self._bytes += len(result)
            while self._entries and (len(self._entries) > self._max_entries or self._bytes > self._max_bytes
                                     or next(iter(self._entries.values()))[0] <= now):
                self._bytes -= len(self._entries.popitem(last=False)[1][1])


def _failed(correlation_id: str, error: AppError) -> str:
    """The ``failed`` result; within a queue message's budget whatever the error carries: the
    details go first (a content filter's results, say), then the message is shortened."""
    payload: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.param is not None:
        payload["param"] = error.param
    result = json.dumps({"id": correlation_id, "status": "failed", "error": {**payload, **error.details}})
    if len(result) <= MAX_RESULT_CHARS:
        return result
    payload["details_omitted"] = "too large for a queue message"
    payload["message"] = error.message[:1000]
    return json.dumps({"id": correlation_id, "status": "failed", "error": payload})


def _too_large(size: int, usage: Any) -> AppError:
    return AppError(413, "result_too_large",
                    f"The completion succeeded, but its result ({size} bytes) is larger than a queue message can "
                    f"carry ({MAX_RESULT_CHARS} bytes): ask for fewer or shorter completions (prompts, n, max_tokens, "
                    "echo, logprobs), or use the HTTP endpoint. 'usage' says what it cost.", details={"usage": usage})


def _poisoned() -> AppError:
    return AppError(503, "poisoned", "The request kept failing with transient errors (throttling, outages or "
                                     "timeouts) and was given up (moved to the poison queue); send it again later.")


async def handle_request(service: CompletionService, recent: RecentResults, message: bytes | Any, *,
                         fallback_id: str, source: str, last_delivery: bool = False) -> str:
    """The result message (JSON) for one request message; RetryLater when it may succeed later.

    ``message`` is the raw body (queue) or the decoded document (Event Grid's ``data``);
    ``fallback_id`` (the queue message or event id) correlates requests sent without an id.
    ``last_delivery``: the host will not deliver this message again (its dequeue count has
    reached maxDequeueCount) but move it to the poison queue, where it gets a new message
    id; a request without its own id then answers ``poisoned`` here, with the id its sender
    knows.
    """
    try:
        document = service.decode(message) if isinstance(message, (bytes, bytearray)) else message
    except AppError as error:
        return _failed(fallback_id, error)
    if not isinstance(document, dict):
        return _failed(fallback_id, AppError(400, "invalid_request", "The message must be a JSON object."))
    request = dict(document)
    correlation_id = request.pop("id", None)
    if correlation_id is None:
        correlation_id = fallback_id
    elif not isinstance(correlation_id, str) or not 0 < len(correlation_id) <= MAX_ID_LENGTH:
        return _failed(fallback_id, AppError(400, "invalid_request",
                                             f"'id' must be a string of 1 to {MAX_ID_LENGTH} characters.",
                                             param="id"))
    key = (correlation_id, hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest())
    remembered = recent.get(key)
    if remembered is not None:
        log.info("%s request %r answered again from memory (a redelivery)", source, correlation_id)
        return remembered

    # A request with messages is a chat request; with a prompt, a completion (both: the chat
    # validator names 'prompt' as unknown).
    run = service.chat if "messages" in request else service.complete
    from .outcome import request_id_for  # (the core is imported on the first invocation)

    outcome = await run(request, request_id_for(correlation_id), source=source)
    if outcome.ok:
        # the answer's JSON as the service encoded it, not a second pass over it
        result = f'{{"id": {json.dumps(correlation_id)}, "status": "succeeded", "result": {outcome.json()}}}'
        if len(result) > MAX_RESULT_CHARS:
            log.warning("%s request %r: result of %d bytes is too large for a queue message; answered "
                        "result_too_large", source, correlation_id, len(result))
            result = _failed(correlation_id, _too_large(len(result), outcome.body.get("usage")))
        recent.put(key, result)
        return result
    assert outcome.error is not None
    if outcome.error.retryable:
        if last_delivery and correlation_id == fallback_id:
            log.warning("%s request %r failed on its last delivery (%s); answered poisoned with its message id",
                        source, correlation_id, outcome.error.code)
            return _failed(correlation_id, _poisoned())
        raise RetryLater(f"{outcome.error.code} (HTTP {outcome.status}); the host will deliver the request again")
    return _failed(correlation_id, outcome.error)


def poisoned_result(service: CompletionService, message: bytes, *, fallback_id: str) -> str:
    """The ``failed`` answer for a request the host gave up on (moved to the poison queue)."""
    correlation_id = fallback_id
    try:
        document = service.decode(message)
        if isinstance(document, dict) and isinstance(document.get("id"), str) and document["id"]:
            correlation_id = document["id"][:MAX_ID_LENGTH]
    except AppError:
        pass
    return _failed(correlation_id, _poisoned())
