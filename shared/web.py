"""The HTTP routes: each maps a request onto the service and its Outcome back to an HTTP answer.

Independent of the Functions library's request and response types: ``function_app``
hands in an ``HttpCall`` (lowercased headers, route values, query, body) and turns
the ``HttpAnswer`` into its response. The routes, under ``routePrefix`` ``api``:

- ``POST completions``, ``POST chat/completions``: the app's own contract.
- ``POST openai/deployments/{deployment}/completions`` and ``.../chat/completions``,
  ``GET openai/models[/{model}]``: what ``AzureOpenAI(azure_endpoint=".../api")`` calls.
- ``POST v1/completions``, ``POST v1/chat/completions``, ``GET v1/models[/{model}]``: what
  ``OpenAI(base_url=".../api/v1")`` and the tools built on it call.
- ``GET health``.

The compatible routes answer with the service's own bodies and OpenAI's error shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # the core is imported on the first request (shared.service)
    from .outcome import Outcome
    from .service import CompletionService

JSON = "application/json"


class HttpCall(NamedTuple):
    headers: Mapping[str, str]  # names lowercased
    body: bytes = b""
    route_params: Mapping[str, str] = MappingProxyType({})


class HttpAnswer(NamedTuple):
    status: int
    body: str
    headers: Mapping[str, str]
    media_type: str = JSON
    stream: AsyncIterator[bytes] | None = None  # server-sent events (then ``body`` is empty)


OPERATIONS = {  # route -> (kind, dialect): handler.Operation's
    "completions": ("completions", "app"),
    "chat_completions": ("chat", "app"),
    "azure_completions": ("completions", "openai"),
    "azure_chat_completions": ("chat", "openai"),
    "v1_completions": ("completions", "openai"),
    "v1_chat_completions": ("chat", "openai"),
}


async def read_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, read no further than one byte past ``limit``: a larger body is refused
    (413, by the validation that follows) without holding all of it in memory."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit + 1])
    return bytes(body)


def _answer(outcome: Outcome, request_id: str) -> HttpAnswer:
    headers = {**outcome.headers, "x-request-id": request_id}
    if outcome.stream is not None:
        return HttpAnswer(outcome.status, "", headers, "text/event-stream", outcome.stream)
    return HttpAnswer(outcome.status, outcome.json(), headers)


async def complete(service: CompletionService, route: str, call: HttpCall) -> HttpAnswer:
    """One of the completion routes (``OPERATIONS``)."""
    from .handler import Operation
    from .outcome import request_id_for

    operation = Operation(*OPERATIONS[route])
    deployment = call.route_params.get("deployment")
    if deployment is not None:
        operation = operation._replace(model=deployment)
    request_id = request_id_for(call.headers.get("x-request-id"))
    outcome = await service.handle(operation, call.body, request_id, headers=call.headers)
    return _answer(outcome, request_id)


def models(service: CompletionService, call: HttpCall) -> HttpAnswer:
    """The models callers may name (``GET .../models``), or one of them (``.../models/{model}``)."""
    from .errors import AppError
    from .outcome import Outcome, request_id_for

    request_id = request_id_for(call.headers.get("x-request-id"))
    try:
        service.caller(call.headers)
        listed = service.models(call.route_params.get("model"))
    except AppError as error:
        return _answer(Outcome.failed(error, request_id, "openai"), request_id)
    return HttpAnswer(200, json.dumps(listed), {"x-request-id": request_id})


def health(service: CompletionService, call: HttpCall) -> HttpAnswer:
    from .outcome import request_id_for

    request_id = request_id_for(call.headers.get("x-request-id"))
    return _answer(service.health(), request_id)
