"""The app's completions function as it was served before the move to the streaming extension
(benchmarks/streaming.py, "before"): ``func.HttpRequest`` in, ``func.HttpResponse`` out, and the
extension not imported, so that the host hands the function the request with its body (over
the worker's gRPC channel in Azure; the dev host's classic path, ``http_triggers._classic``,
here) instead of proxying it to uvicorn. Everything behind it is today's: the same service,
settings and contract (``shared``), so the two differ only in how HTTP reaches the function.

``python -m devserver --app-dir benchmarks/classic_app --host-json host.json`` serves it.
"""

import gc
import os

import azure.functions as func

from shared import web
from shared.callers import routes_are_anonymous
from shared.service import CompletionService
from shared.telemetry.hooks import TraceContext
from shared.telemetry.switches import telemetry_from_environ

ANONYMOUS_ROUTES = routes_are_anonymous(os.environ)
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS if ANONYMOUS_ROUTES else func.AuthLevel.FUNCTION)
service = CompletionService.from_environ(telemetry=telemetry_from_environ())
service.anonymous_routes = ANONYMOUS_ROUTES
service.after_load = gc.freeze  # as function_app: the core, loaded on the first invocation, is frozen too


@app.route(route="completions", methods=["POST"])
async def completions(req: func.HttpRequest,
                      context: func.Context = None) -> func.HttpResponse:  # type: ignore[assignment]
    """POST /api/completions, as function_app's, through the classic HTTP types."""
    call = web.HttpCall({name.lower(): value for name, value in req.headers.items()}, req.get_body(),
                        dict(req.route_params))
    with service.telemetry.continue_trace(TraceContext.of(context)):
        answer = await web.complete(service, "completions", call)
    return func.HttpResponse(answer.body, status_code=answer.status, headers=dict(answer.headers),
                             mimetype=answer.media_type)


gc.freeze()  # as function_app, at the end of its import
