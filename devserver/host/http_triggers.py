"""HTTP triggers: each function's route, and a request through it as the host runs one.

Routes come from each function's ``route`` and ``methods`` (ASP.NET-style
templates: ``items/{id:int}/{name?}``, ``{*rest}``) under ``host.json``'s
``extensions.http.routePrefix``. The host's throttles apply: beyond
``maxConcurrentRequests`` requests wait, beyond ``maxOutstandingRequests`` in all
they get 429 at once. Then, as the app was written:

- Classic functions: the request becomes a ``func.HttpRequest``, the function's
  ``func.HttpResponse`` (or other return value) becomes the answer; a function that
  raises gets an empty 500, as from the Functions host.
- With the streaming extension (``http_v2``): the request is proxied, as the host's
  YARP forwarder does, to the worker's uvicorn server with ``x-ms-invocation-id``,
  while the invocation (carrying only the route values) runs the function with the
  FastAPI request; the answer streams back chunk by chunk. ``functionTimeout`` covers
  the whole exchange, streaming included; a client that leaves closes the proxied
  connection, and uvicorn stops the response's body (``StreamingResponse`` cancels
  its iterator), as in Azure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

import aiohttp
import azure.functions as func
from aiohttp import web
from multidict import CIMultiDict

from .functions import HOST_API_REASON, TRIGGER_HTTP, Function, Invoker
from .hostconfig import HttpOptions
from .http_v2 import INVOCATION_HEADER, WorkerServer
from .keys import FunctionKeys
from .server import read_body

log = logging.getLogger("devserver.http")
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


# Hop-by-hop headers: a proxy never forwards them (RFC 9110 7.6.1), nor Host (YARP sets the destination's).
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "content-length"}


class HttpTriggers:
    def __init__(self, functions: list[Function], options: HttpOptions, invoker: Invoker, keys: FunctionKeys,
                 body_timeout: float, worker: WorkerServer | None = None) -> None:
        self.routes = [route_for(f, options.route_prefix) for f in functions if f.trigger_type == TRIGGER_HTTP]
        self._invoker = invoker
        self._keys = keys
        self._body_timeout = body_timeout
        self._outstanding = 0
        self._max_outstanding = options.max_outstanding_requests
        self._slots = asyncio.Semaphore(options.max_concurrent_requests) if options.max_concurrent_requests else None
        self._worker = worker  # the worker's web server, when the app streams (http_v2)
        self._proxy: aiohttp.ClientSession | None = None

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
            async with self._slots if self._slots is not None else contextlib.nullcontext():
                if self._worker is not None:
                    return await self._proxied(request, route, route_params, body)
                return await self._classic(request, route, route_params, body)
        finally:
            self._outstanding -= 1

    async def _classic(self, request: web.Request, route: Route, route_params: dict[str, str],
                       body: bytes) -> web.StreamResponse:
        http_request = func.HttpRequest(
            method=request.method, url=f"{request.scheme}://{request.host}{request.raw_path}",
            headers={name: ", ".join(request.headers.getall(name)) for name in request.headers.keys()},
            params=dict(parse_qsl(request.query_string, keep_blank_values=True)),
            route_params=route_params, body=body)
        # (shielded: a client that hangs up does not cancel an invocation, as with the host)
        invocation = await asyncio.shield(self._invoker.invoke(route.function, http_request, HOST_API_REASON))
        if not invocation.succeeded:
            return web.Response(status=500)
        return to_response(invocation.returned)

    async def _proxied(self, request: web.Request, route: Route, route_params: dict[str, str],
                       body: bytes) -> web.StreamResponse:
        """The host's forwarding to the worker's web server (DefaultHttpProxyService), and the
        invocation that pairs with it by ``x-ms-invocation-id``."""
        assert self._worker is not None
        invocation_id = str(uuid.uuid4())
        invocation = asyncio.create_task(self._invoke_v2(route.function, route_params, invocation_id))
        # (as pairs: a header that comes several times, Set-Cookie or Cookie, keeps every value)
        headers = [(name, value) for name, value in request.headers.items()
                   if name.lower() not in _HOP_BY_HOP and name.lower() != INVOCATION_HEADER]
        headers += [(INVOCATION_HEADER, invocation_id), ("X-Forwarded-For", request.remote or ""),
                    ("X-Forwarded-Proto", request.scheme), ("X-Forwarded-Host", request.host)]
        response: web.StreamResponse | None = None
        left = False
        try:
            async with asyncio.timeout(self._invoker.function_timeout):  # the invocation and the streaming
                async with self._session().request(request.method, self._worker.url + request.raw_path,
                                                   headers=headers, data=body, allow_redirects=False) as upstream:
                    response = web.StreamResponse(status=upstream.status, headers=CIMultiDict(
                        (name, value) for name, value in upstream.headers.items() if name.lower() not in _HOP_BY_HOP))
                    if upstream.content_length is not None:
                        response.content_length = upstream.content_length
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
        except TimeoutError:
            log.error("Timeout value of %s seconds exceeded by function 'Functions.%s' (Id: '%s'): the response "
                      "is cut", self._invoker.function_timeout, route.function.name, invocation_id)
            if response is None:
                return web.Response(status=500)
            if request.transport is not None:
                request.transport.close()  # mid-stream: the caller sees the answer cut, as from Azure
            return response
        except aiohttp.ClientError as exc:  # the worker's web server failed: the host's proxy answers 502
            log.error("Functions.%s (Id: '%s'): the worker's HTTP server failed (%s)", route.function.name,
                      invocation_id, type(exc).__name__)
            if response is None:
                return web.json_response({"error": {"code": "bad_gateway", "message": "The worker did not answer."}},
                                         status=502)
            if request.transport is not None:
                request.transport.close()
            return response
        except asyncio.CancelledError:  # the caller hung up
            left = True
            raise
        finally:
            coordinator = self._worker.coordinator
            if invocation.done() or (left and coordinator.delivered(invocation_id)):
                # done, or the caller left once the worker had the request: as with the host, the
                # invocation runs to its end (its answer then goes nowhere)
                invocation.add_done_callback(lambda _: coordinator.forget(invocation_id))
            else:  # no request reached the worker, or the function's time ran out: it ends here
                invocation.cancel()
                coordinator.abandon(invocation_id)

    async def _invoke_v2(self, function: Function, route_params: dict[str, str], invocation_id: str) -> None:
        """The worker's side: wait for the proxied request, give it the host's route values
        (``sync_http_request``), run the function, hand its answer (or exception) to the route."""
        assert self._worker is not None
        coordinator = self._worker.coordinator
        fastapi_request = await coordinator.request(invocation_id)
        fastapi_request.path_params.clear()
        fastapi_request.path_params.update(route_params)
        invocation = await self._invoker.invoke(function, fastapi_request, HOST_API_REASON)
        coordinator.set_response(invocation_id, invocation.returned if invocation.succeeded else invocation.error)

    def _session(self) -> aiohttp.ClientSession:
        if self._proxy is None or self._proxy.closed:
            self._proxy = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._proxy

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()


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
