"""One request's way through the core: validate, call upstream, shape the answer.

Two contracts over the same pipeline: the app's own (``/api/completions``,
``/api/chat/completions``, the queues: bodies with ``deployment`` and ``backend``,
the app's error shape) and the service's (the OpenAI-compatible routes: the
service's bodies as they are, OpenAI's error shape, the backend in a header).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from .config.settings import Settings
from .contract.bridge import apply_stop, completions_from_chat
from .contract.chat import validate_chat_request
from .contract.completions import shape_response, validate_completion_request
from .errors import invalid_request
from .outcome import Outcome
from .telemetry.hooks import InvocationEnd, Usage
from .upstream.client import UpstreamResult
from .upstream.plan import Request

OPERATION_NAMES = {"completions": "text_completion", "chat": "chat"}  # gen_ai.operation.name
_REQUEST_NUMBERS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "presence_penalty",
                    "frequency_penalty")


class Operation(NamedTuple):
    kind: str  # "completions" or "chat": the contract the caller used
    dialect: str = "app"  # "app": the app's own contract; "openai": the service's bodies and errors
    model: str | None = None  # named by the route (the compatible Azure route's deployment); else the body's


def validate(operation: Operation, document: Any, settings: Settings, *,
             streaming: bool = False) -> tuple[Request, str | None]:
    """The upstream request, and the model the caller named (None: the first backend's).
    ``streaming``: a stream may be asked for (HTTP; a queue message may not)."""
    passthrough = operation.dialect == "openai"
    if operation.kind == "chat":
        params = validate_chat_request(document, settings.limits, passthrough=passthrough, streaming=streaming)
    else:
        params = validate_completion_request(document, settings.limits, passthrough=passthrough,
                                             streaming=streaming)
    model = operation.model
    if model is None and isinstance(document, dict) and document.get("model") is not None:
        model = document["model"]
        if not isinstance(model, str) or not model or len(model) > 256:
            raise invalid_request("'model' must be the name of a model this app serves.", "model")
    return Request(operation.kind, params), model


def shape(operation: Operation, result: UpstreamResult, params: dict[str, Any]) -> Outcome:
    """The 200 answer for ``result``, in the operation's contract."""
    plan, backend = result.plan, result.backend
    chat_answer = plan.api == "chat"
    if operation.kind == "chat":
        body = result.responses[0]
    elif chat_answer:
        body = completions_from_chat(result.responses, params.get("n", 1))
        chat_answer = False  # (now in the completions shape)
    else:
        body = result.responses[0]
    if plan.stops:
        body = apply_stop(body, list(plan.stops), chat=chat_answer)
    headers: dict[str, str] = {}
    if plan.adjusted:
        headers["x-completions-adjusted"] = ",".join(plan.adjusted)
    if operation.dialect == "openai":
        headers["x-completions-backend"] = backend.name
    elif operation.kind == "chat":
        body = {**body, "deployment": backend.deployment, "backend": backend.name}
    else:
        body = shape_response(body, backend.deployment, backend.name)
    return Outcome.answer(body, headers)


def stream_headers(operation: Operation, result: UpstreamResult) -> dict[str, str]:
    """A stream's response headers (its chunks are the service's, as they come)."""
    headers = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no",
               "x-completions-backend": result.backend.name}
    if result.plan.adjusted:
        headers["x-completions-adjusted"] = ",".join(result.plan.adjusted)
    return headers


def telemetry_end(outcome: Outcome, result: UpstreamResult | None, params: dict[str, Any],
                  settings: Settings | None) -> InvocationEnd:
    """The invocation's telemetry record (built only when telemetry is on)."""
    error = outcome.error
    response = result.responses[0] if result is not None and result.responses else None  # (a stream has none)
    model = response.get("model") if isinstance(response, dict) else None
    response_id = response.get("id") if isinstance(response, dict) else None
    usage = outcome.body.get("usage") if outcome.ok else None
    choices = outcome.body.get("choices") if outcome.ok else None
    end = InvocationEnd(
        outcome.status, error.code if error is not None else "ok", bool(params),
        operation=OPERATION_NAMES[result.plan.api] if result is not None else None,
        backend=result.backend if result is not None else None,
        response_model=bounded(model), response_id=bounded(response_id),
        usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)) if isinstance(usage, dict)
        else None,
        finish_reasons=tuple(str(c.get("finish_reason")) for c in choices) if isinstance(choices, list) else (),
        attempts=result.attempts if result is not None else (error.attempts if error is not None else 0),
        failovers=result.failovers if result is not None else None,
        request={name: value for name in _REQUEST_NUMBERS if isinstance(value := params.get(name), (int, float))
                 and not isinstance(value, bool)})
    if settings is not None and settings.log_text and params:
        end = end._replace(input_messages=json.dumps(input_messages(params)),
                           output_messages=json.dumps(output_messages(choices)) if isinstance(choices, list) else None)
    return end


_BOUNDED = re.compile(r"[A-Za-z0-9._:/-]{1,64}")


def bounded(value: Any) -> str | None:
    """An upstream-controlled name for telemetry: itself when it has a model name's shape and
    length, else ``other`` (a metric attribute per distinct value would grow without bound)."""
    if value is None:
        return None
    return value if isinstance(value, str) and _BOUNDED.fullmatch(value) else "other"


def input_messages(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's text as the gen-AI conventions' content (only with COMPLETIONS_LOG_TEXT)."""
    if "messages" in params:
        return [{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]}
                for m in params["messages"]]
    prompts = params.get("prompt")
    prompts = prompts if isinstance(prompts, list) else [prompts]
    return [{"role": "user", "parts": [{"type": "text", "content": prompt}]} for prompt in prompts]


def output_messages(choices: list[Any]) -> list[dict[str, Any]]:
    return [{"role": "assistant", "parts": [{"type": "text", "content": answer_text(choice)}],
             "finish_reason": choice.get("finish_reason")} for choice in choices if isinstance(choice, dict)]


def answer_text(choice: Mapping[str, Any]) -> Any:
    """A choice's text: a completion's ``text``, or a chat message's ``content``."""
    message = choice.get("message")
    return message.get("content") if isinstance(message, dict) else choice.get("text", "")
