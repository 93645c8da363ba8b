"""Azure Functions entry points (Python v2 programming model).

Thin on purpose: each function maps its trigger onto the shared completion
pipeline (``shared.service``) and back. Settings are read once, here, at import;
invalid settings never break indexing: requests then get 503 ``not_configured``.
"""

import json
import re
import uuid

import azure.functions as func

from shared.service import CompletionService, Outcome

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
service = CompletionService.from_environ()

_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id(req: func.HttpRequest) -> str:
    """The caller's x-request-id when it is a sane token, else a new one."""
    given = req.headers.get("x-request-id", "")
    return given if _CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _http_response(outcome: Outcome, request_id: str) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(outcome.body), status_code=outcome.status, mimetype="application/json",
        headers={**outcome.headers, "x-request-id": request_id})


@app.route(route="completions", methods=["POST"])
def completions(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/completions: a completion from the configured deployment."""
    request_id = _request_id(req)
    return _http_response(service.complete(req.get_body(), request_id), request_id)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/health: whether the settings are valid (names only, never values)."""
    request_id = _request_id(req)
    return _http_response(service.health(), request_id)
