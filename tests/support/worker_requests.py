"""The FastAPI ``Request`` the Functions worker hands an HTTP function of this app (no loop, no app import)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request


def http_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                 path_params: dict[str, str] | None = None) -> Request:
    """The FastAPI ``Request`` the worker hands an HTTP function (its catch-all route's, with the
    host's route values as ``path_params``), for a request that sent ``body`` whole."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "server": ("127.0.0.1", 7071), "client": ("127.0.0.1", 50000),
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
             "path_params": dict(path_params or {})}
    return Request(scope, receive)


def completions_request(body: Any = None, *, raw: bytes | None = None,
                        headers: dict[str, str] | None = None, path: str = "/api/completions",
                        path_params: dict[str, str] | None = None) -> Request:
    data = raw if raw is not None else json.dumps(body).encode()
    return http_request("POST", path, data, {"content-type": "application/json", **(headers or {})}, path_params)
