"""HTTP triggers: each function's route, and a request through it as the host runs one.

Routes come from each function's ``route`` and ``methods`` (ASP.NET-style
templates: ``items/{id:int}/{name?}``, ``{*rest}``) under ``host.json``'s
``extensions.http.routePrefix``. A request becomes a ``func.HttpRequest``, the
function's ``func.HttpResponse`` (or other return value) becomes the answer; a
function that raises gets an empty 500, as from the Functions host. The host's
throttles apply: beyond ``maxConcurrentRequests`` requests wait, beyond
``maxOutstandingRequests`` in all they get 429 at once.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

import azure.functions as func
from aiohttp import web

from .functions import HOST_API_REASON, TRIGGER_HTTP, Function, Invoker
from .hostconfig import HttpOptions
from .keys import FunctionKeys
from .server import read_body

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
_CONSTRAINTS = {"int": r"-?\d+", "long": r"-?\d+", "alpha": r"[A-Za-z]+", "bool": r"(?:true|false)",
                "guid": r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}",
                "float": r"-?\d+(?:\.\d+)?", "double": r"-?\d+(?:\.\d+)?", "decimal": r"-?\d+(?:\.\d+)?"}
_PARAMETER = re.compile(r"^\{(?P<star>\*)?(?P<name>\w+)(?::(?P<constraint>\w+)(?:\([^)]*\))?)?(?P<optional>\?)?\}$")


def compile_template(template: str) -> re.Pattern:
    """An ASP.NET-style route template (``items/{id:int}/{name?}``, ``{*rest}``) as a regex."""
    regex = ""
    for segment in [s for s in template.split("/") if s]:
        parameter = _PARAMETER.match(segment)
        if parameter is None:
            regex += "/" + re.escape(segment)
            continue
        name = parameter["name"]
        if parameter["star"]:
            regex += f"(?:/(?P<{name}>.*))?"
            continue
        value = _CONSTRAINTS.get((parameter["constraint"] or "").lower(), r"[^/]+")
        piece = f"/(?P<{name}>{value})"
        regex += f"(?:{piece})?" if parameter["optional"] else piece
    return re.compile(regex or "/?", re.IGNORECASE)


@dataclass(frozen=True)
class Route:
    function: Function
    template: str  # the full path template, prefix included
    methods: tuple[str, ...]
    pattern: re.Pattern

    def match(self, path: str, *, encoded: bool = False) -> dict[str, str] | None:
        """Route values, when ``path`` matches; ``encoded``: the path is still percent-encoded
        (the raw path, tried for an encoded ``/``), so the values are decoded here, once."""
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {k: unquote(v) if encoded else v for k, v in found.groupdict().items() if v is not None}


def route_for(function: Function, prefix: str) -> Route:
    spec = function.trigger
    template = "/".join(part for part in (prefix, str(spec.get("route") or function.name).strip("/")) if part)
    methods = tuple(m.upper() for m in (spec.get("methods") or ALL_METHODS))
    return Route(function, template, methods, compile_template(template))


class HttpTriggers:
    def __init__(self, functions: list[Function], options: HttpOptions, invoker: Invoker, keys: FunctionKeys,
                 body_timeout: float) -> None:
        self.routes = [route_for(f, options.route_prefix) for f in functions if f.trigger_type == TRIGGER_HTTP]
        self._invoker = invoker
        self._keys = keys
        self._body_timeout = body_timeout
        self._outstanding = 0
        self._max_outstanding = options.max_outstanding_requests
        self._slots = asyncio.Semaphore(options.max_concurrent_requests) if options.max_concurrent_requests else None

    def find(self, path: str, method: str, *, encoded: bool = False) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            params = route.match(path, encoded=encoded)
            if params is not None and method in route.methods:
                return route, params
        return None

    async def handle(self, request: web.Request, route: Route, route_params: dict[str, str]) -> web.StreamResponse:
        self._keys.check(request, route.function.auth_level)
        if self._max_outstanding is not None and self._outstanding >= self._max_outstanding:
            return web.Response(status=429)  # the host's maxOutstandingRequests answer
        self._outstanding += 1
        try:
            body = await read_body(request, self._body_timeout)
            http_request = func.HttpRequest(
                method=request.method, url=f"{request.scheme}://{request.host}{request.raw_path}",
                headers={name: ", ".join(request.headers.getall(name)) for name in request.headers.keys()},
                params=dict(parse_qsl(request.query_string, keep_blank_values=True)),
                route_params=route_params, body=body)
            if self._slots is None:
                invocation = await self._invoker.invoke(route.function, http_request, HOST_API_REASON)
            else:
                async with self._slots:
                    invocation = await self._invoker.invoke(route.function, http_request, HOST_API_REASON)
        finally:
            self._outstanding -= 1
        if not invocation.succeeded:
            return web.Response(status=500)
        return to_response(invocation.returned)


def to_response(returned) -> web.Response:
    """What the host answers for an HTTP function's return value."""
    if returned is None:
        return web.Response(status=204)
    if not isinstance(returned, func.HttpResponse):
        return web.Response(status=200, body=str(returned).encode(),
                            headers={"Content-Type": "text/plain; charset=utf-8"})
    headers = {k: v for k, v in returned.headers.items() if k.lower() not in ("content-length", "content-type")}
    headers["Content-Type"] = returned.headers.get("Content-Type") or f"{returned.mimetype}; charset={returned.charset}"
    return web.Response(status=returned.status_code, body=returned.get_body(), headers=headers)
