"""Invoke the app's functions as Microsoft documents: the decorated function's user
function, called with a ``func.HttpRequest``; no host involved."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import azure.functions as func

import function_app

SETTING_NAMES = (
    "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_API_VERSION", "AZURE_OPENAI_AUTH",
    "AZURE_OPENAI_API_KEY", "AZURE_CLIENT_ID", "AZURE_OPENAI_TOKEN_SCOPE", "AZURE_OPENAI_TIMEOUT",
    "AZURE_OPENAI_CONNECT_TIMEOUT", "AZURE_OPENAI_MAX_RETRIES", "AZURE_OPENAI_DEADLINE",
    "AZURE_OPENAI_MAX_CONCURRENCY", "COMPLETIONS_MAX_BODY_BYTES", "COMPLETIONS_MAX_PROMPTS",
    "COMPLETIONS_MAX_TOKENS", "COMPLETIONS_MAX_N", "COMPLETIONS_MAX_BEST_OF", "COMPLETIONS_LOG_TEXT",
    "OPENAI_API_BASE", "OPENAI_API_KEY", "OPENAI_API_VERSION", "OPENAI_API_TYPE",
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "IMDS_ENDPOINT",
)
SEED = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes


def _reply(response: func.HttpResponse) -> Reply:
    raw = response.get_body()
    assert response.mimetype == "application/json"
    return Reply(response.status_code, json.loads(raw), dict(response.headers), raw)


def post_completions(body: Any = None, *, raw: bytes | None = None,
                     headers: dict[str, str] | None = None) -> Reply:
    data = raw if raw is not None else json.dumps(body).encode()
    request = func.HttpRequest(method="POST", url="http://localhost:7071/api/completions", body=data,
                               headers={"content-type": "application/json", **(headers or {})})
    return _reply(function_app.completions.build().get_user_function()(request))


def get_health() -> Reply:
    request = func.HttpRequest(method="GET", url="http://localhost:7071/api/health", body=b"")
    return _reply(function_app.health.build().get_user_function()(request))
