"""Azure Functions entry points (Python v2 programming model).

Thin on purpose: each function maps its trigger onto the shared completion
pipeline (``shared.service``) and back. Indexing (the import) reads only the binding
metadata; the settings are loaded, and the core imported, on the first invocation.
Invalid settings never break indexing: requests then get 503 ``not_configured``.

Every function is a coroutine: the worker runs them on its event loop, so one
instance holds hundreds of completions waiting on Azure OpenAI at once, where
sync functions would each hold one of the worker's few threads.

The HTTP functions take FastAPI's ``Request`` and return its ``Response``: importing the
Functions streaming extension switches every HTTP function of the app to those types
(the worker serves them through uvicorn; the app setting PYTHON_ENABLE_INIT_INDEXING=1
turns that on), and it is what lets an answer stream (server-sent events).
"""

import gc
import logging
import os
import uuid
from typing import TYPE_CHECKING

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse

from shared import web
from shared.callers import routes_are_anonymous
from shared.config.host_json import max_dequeue_count
from shared.config.queues import QueueNames
from shared.service import CompletionService
from shared.telemetry.hooks import TraceContext
from shared.telemetry.switches import telemetry_from_environ

if TYPE_CHECKING:
    from types import ModuleType

    from shared.events import RecentResults

# Binding metadata, read when the host indexes the app: with caller keys or App Service
# Authentication the host lets requests through and the app checks the caller (shared.callers).
ANONYMOUS_ROUTES = routes_are_anonymous(os.environ)
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS if ANONYMOUS_ROUTES else func.AuthLevel.FUNCTION)
# Metrics and traces when APPLICATIONINSIGHTS_CONNECTION_STRING or OTEL_EXPORTER_OTLP_ENDPOINT is set
# (docs/observability.md); otherwise a no-op, and no OpenTelemetry module is imported.
service = CompletionService.from_environ(telemetry=telemetry_from_environ())
service.anonymous_routes = ANONYMOUS_ROUTES
service.after_load = gc.freeze  # the core, loaded on the first invocation, lives as long as the process too
queues = QueueNames.from_environ(os.environ)  # binding metadata: read when the host indexes the app
recent_results: "RecentResults | None" = None  # answered queue requests, remembered (_events)
MAX_DEQUEUE_COUNT = max_dequeue_count()  # host.json: the delivery after which the host gives a message up
# Identity-based connections use the same name as a prefix: AzureWebJobsStorage__queueServiceUri, ...
STORAGE = "AzureWebJobsStorage"
# A `context` parameter must be annotated exactly `func.Context` (the worker refuses to load a function
# whose annotation is not a type named Context), so its None default carries a type: ignore.


async def _call(req: Request) -> web.HttpCall:
    body = await web.read_body(req.stream(), service.max_body_bytes())
    return web.HttpCall(dict(req.headers), body, dict(req.path_params))


def _response(answer: web.HttpAnswer) -> Response:
    if answer.stream is not None:  # server-sent events, as they come (the streaming extension sends them)
        return StreamingResponse(answer.stream, status_code=answer.status, headers=dict(answer.headers),
                                 media_type=answer.media_type)
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers), media_type=answer.media_type)


async def _complete(route: str, req: Request, context: func.Context | None) -> Response:
    with service.telemetry.continue_trace(TraceContext.of(context)):  # the worker passes context: its trace_context
        return _response(await web.complete(service, route, await _call(req)))


# -- the app's own contract ---------------------------------------------------------------------------
@app.route(route="completions", methods=["POST"])
async def completions(req: Request,
                      context: func.Context = None) -> Response:  # type: ignore[assignment]
    """POST /api/completions: a completion (docs/api.md)."""
    return await _complete("completions", req, context)


@app.route(route="chat/completions", methods=["POST"])
async def chat_completions(req: Request,
                           context: func.Context = None) -> Response:  # type: ignore[assignment]
    """POST /api/chat/completions: a chat completion (docs/api.md)."""
    return await _complete("chat_completions", req, context)


# -- what the OpenAI SDKs call (docs/sdk.md) -------------------------------------------------------------
@app.route(route="openai/deployments/{deployment}/completions", methods=["POST"])
async def azure_completions(req: Request,
                            context: func.Context = None) -> Response:  # type: ignore[assignment]
    """AzureOpenAI(azure_endpoint=".../api").completions.create(model=<deployment>)"""
    return await _complete("azure_completions", req, context)


@app.route(route="openai/deployments/{deployment}/chat/completions", methods=["POST"])
async def azure_chat_completions(req: Request,
                                 context: func.Context = None) -> Response:  # type: ignore[assignment]
    """AzureOpenAI(azure_endpoint=".../api").chat.completions.create(model=<deployment>)"""
    return await _complete("azure_chat_completions", req, context)


@app.route(route="v1/completions", methods=["POST"])
async def v1_completions(req: Request,
                         context: func.Context = None) -> Response:  # type: ignore[assignment]
    """OpenAI(base_url=".../api/v1").completions.create(model=...)"""
    return await _complete("v1_completions", req, context)


@app.route(route="v1/chat/completions", methods=["POST"])
async def v1_chat_completions(req: Request,
                              context: func.Context = None) -> Response:  # type: ignore[assignment]
    """OpenAI(base_url=".../api/v1").chat.completions.create(model=...)"""
    return await _complete("v1_chat_completions", req, context)


@app.route(route="v1/models", methods=["GET"])
async def v1_models(req: Request) -> Response:
    """OpenAI(base_url=".../api/v1").models.list()"""
    return _response(web.models(service, await _call(req)))


@app.route(route="v1/models/{model}", methods=["GET"])
async def v1_model(req: Request) -> Response:
    """OpenAI(base_url=".../api/v1").models.retrieve(model)"""
    return _response(web.models(service, await _call(req)))


@app.route(route="openai/models", methods=["GET"])
async def azure_models(req: Request) -> Response:
    """AzureOpenAI(azure_endpoint=".../api").models.list()"""
    return _response(web.models(service, await _call(req)))


@app.route(route="openai/models/{model}", methods=["GET"])
async def azure_model(req: Request) -> Response:
    """AzureOpenAI(azure_endpoint=".../api").models.retrieve(model)"""
    return _response(web.models(service, await _call(req)))


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: Request) -> Response:
    """GET /api/health: whether the settings are valid (names only, never values)."""
    return _response(web.health(service, await _call(req)))


# -- event-driven -----------------------------------------------------------------------------------
def _events() -> "ModuleType":
    """shared.events, and this instance's memory of answered requests, made with the first message
    (an instance that only serves HTTP never imports them: cold start is measured)."""
    global recent_results
    from shared import events

    if recent_results is None:
        recent_results = events.RecentResults()
    return events


@app.queue_trigger(arg_name="msg", queue_name=queues.requests, connection=STORAGE)
@app.queue_output(arg_name="result", queue_name=queues.results, connection=STORAGE)
async def completion_from_queue(msg: func.QueueMessage, result: func.Out[str],
                                context: func.Context = None) -> None:  # type: ignore[assignment]
    """A request message on the request queue; its answer goes to the results queue.
    Raises on transient failures so the host redelivers the message."""
    logging.info("queue message id=%r dequeue_count=%s", msg.id, msg.dequeue_count)
    with service.telemetry.continue_trace(TraceContext.of(context)):
        events = _events()
        result.set(await events.handle_request(service, recent_results, msg.get_body(),
                                               fallback_id=msg.id or uuid.uuid4().hex, source="queue",
                                               last_delivery=(msg.dequeue_count or 0) >= MAX_DEQUEUE_COUNT))


@app.queue_trigger(arg_name="msg", queue_name=queues.poison, connection=STORAGE)
@app.queue_output(arg_name="result", queue_name=queues.results, connection=STORAGE)
async def completion_poisoned(msg: func.QueueMessage, result: func.Out[str]) -> None:
    """A request the host gave up on: answer it with a ``failed`` result (code ``poisoned``)."""
    logging.warning("poisoned queue message id=%r dequeue_count=%s", msg.id, msg.dequeue_count)
    result.set(_events().poisoned_result(service, msg.get_body(), fallback_id=msg.id or uuid.uuid4().hex))


@app.event_grid_trigger(arg_name="event")
@app.queue_output(arg_name="result", queue_name=queues.results, connection=STORAGE)
async def completion_from_event_grid(event: func.EventGridEvent, result: func.Out[str],
                                     context: func.Context = None) -> None:  # type: ignore[assignment]
    """A custom Event Grid event whose ``data`` is a request; its answer goes to the results queue.
    (The worker passes a ``func.CloudEvent`` instead when the subscription delivers CloudEvents 1.0:
    its type is ``type``, not ``event_type``.)"""
    event_type = event.type if isinstance(event, func.CloudEvent) else event.event_type
    logging.info("event grid event id=%r type=%r subject=%r", event.id, event_type, event.subject)
    with service.telemetry.continue_trace(TraceContext.of(context)):
        events = _events()
        result.set(await events.handle_request(service, recent_results, event.get_json(), fallback_id=event.id,
                                               source="eventgrid"))


# Everything imported so far lives as long as the process: move it out of the garbage
# collector's sight, so that a full collection (which stops every invocation on the event
# loop) scans only what requests create: with 256 completions in flight, about 20 ms a full
# collection instead of 50 (make bench, row 13).
gc.freeze()
