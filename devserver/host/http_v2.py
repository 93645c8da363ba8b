"""HTTP functions served as the Python worker serves them with the Functions streaming extension.

When the app imports ``azurefunctions.extensions.http.fastapi`` (and
``PYTHON_ENABLE_INIT_INDEXING`` is true) the worker does not take HTTP requests over
its gRPC channel: it runs the extension's FastAPI app on uvicorn at a loopback port,
with one catch-all route, and the host proxies each request to it with the header
``x-ms-invocation-id``; the worker pairs that request with the invocation (which
carries only the route values), calls the function with FastAPI's ``Request``, and
hands whatever it returns (a ``Response``, a ``StreamingResponse``) back to the
route, so uvicorn sends it, streaming. This module is that worker side, mirroring
``azure_functions_worker/http_v2.py`` (``initialize_http_server``, ``catch_all``,
``HttpCoordinator``, ``sync_http_request``); ``http_triggers`` is the host's side,
mirroring its proxy (``DefaultHttpProxyService``).

Differences from the worker, on purpose: the server's socket is bound before uvicorn
starts (no race for the port), uvicorn keeps the dev host's logging and signal
handlers, the coordinator forgets an invocation once paired, and a stop is graceful.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from .functions import TRIGGER_HTTP, Function

log = logging.getLogger("devserver.http_v2")
INVOCATION_HEADER = "x-ms-invocation-id"
SETTING = "PYTHON_ENABLE_INIT_INDEXING"
_TRUE = {"1", "true", "t", "yes", "y"}  # the worker's is_envvar_true


class HttpV2Error(Exception):
    """The app cannot be served in this mode (what the worker reports as a load error)."""


def enabled() -> bool:
    """Whether the app imported a Functions web extension (``HttpV2FeatureChecker``)."""
    try:
        from azurefunctions.extensions.base import HttpV2FeatureChecker
    except ImportError:
        return False
    return bool(HttpV2FeatureChecker.http_v2_enabled())


def check(functions: list[Function]) -> None:
    """What the worker checks at indexing: the app setting, and that every HTTP function's
    annotations are the extension's types (a ``func.HttpRequest`` function cannot load)."""
    if (os.environ.get(SETTING) or "").strip().lower() not in _TRUE:
        raise HttpV2Error(f"HTTP streaming is enabled (the app imports a Functions web extension) but {SETTING} "
                          "is not set to 1: set it in local.settings.json (and in the app's settings in Azure).")
    from azurefunctions.extensions.base import RequestTrackerMeta, ResponseTrackerMeta

    for function in functions:
        if function.trigger_type != TRIGGER_HTTP:
            continue
        signature = inspect.signature(function.user_function)
        trigger = signature.parameters.get(str(function.trigger["name"]))
        if trigger is not None and trigger.annotation is not inspect.Parameter.empty \
                and not RequestTrackerMeta.check_type(trigger.annotation):
            raise HttpV2Error(f"function {function.name}: the type of its HTTP trigger ({trigger.annotation!r}) "
                              "is not the web extension's Request")
        returned = signature.return_annotation
        if returned is not inspect.Signature.empty and not ResponseTrackerMeta.check_type(returned):
            raise HttpV2Error(f"function {function.name}: its return type ({returned!r}) is not one of the web "
                              "extension's responses")


class Coordinator:
    """Pairs each proxied request with its invocation by invocation id (either may come first)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[asyncio.Future, asyncio.Future]] = {}

    def _pair(self, invocation_id: str) -> tuple[asyncio.Future, asyncio.Future]:
        pair = self._pending.get(invocation_id)
        if pair is None:
            loop = asyncio.get_running_loop()
            pair = self._pending[invocation_id] = (loop.create_future(), loop.create_future())
        return pair

    def set_request(self, invocation_id: str, request: Any) -> None:
        self._pair(invocation_id)[0].set_result(request)

    async def request(self, invocation_id: str) -> Any:
        return await self._pair(invocation_id)[0]

    def set_response(self, invocation_id: str, response: Any) -> None:
        future = self._pair(invocation_id)[1]
        if not future.done():
            future.set_result(response)

    async def response(self, invocation_id: str) -> Any:
        try:
            return await self._pair(invocation_id)[1]
        finally:
            self._pending.pop(invocation_id, None)

    def forget(self, invocation_id: str) -> None:
        self._pending.pop(invocation_id, None)

    def delivered(self, invocation_id: str) -> bool:
        """Whether the worker's route has the request (so the invocation has started, or will)."""
        pair = self._pending.get(invocation_id)
        return pair is not None and pair[0].done()

    def abandon(self, invocation_id: str) -> None:
        """The host gave the invocation up: a route still waiting for its answer answers 504 (no
        traceback: the host has logged why), and the pair is forgotten."""
        pair = self._pending.pop(invocation_id, None)
        if pair is not None and not pair[1].done():
            from starlette.responses import Response

            pair[1].set_result(Response(status_code=504))


class WorkerServer:
    """The extension's web app with the worker's catch-all route, on uvicorn at 127.0.0.1:<port>."""

    def __init__(self) -> None:
        self.coordinator = Coordinator()
        self._server: Any = None
        self._task: asyncio.Task | None = None
        self.url = ""

    async def start(self) -> None:
        import uvicorn
        from azurefunctions.extensions.base import ModuleTrackerMeta, RequestTrackerMeta

        extension = importlib.import_module(ModuleTrackerMeta.get_module())
        web_app = extension.WebApp()
        coordinator = self.coordinator
        request_type = RequestTrackerMeta.get_request_type()

        async def catch_all(request):  # the worker's route, as it is
            invocation_id = request.headers.get(INVOCATION_HEADER)
            if invocation_id is None:
                raise HttpV2Error(f"Header {INVOCATION_HEADER} not found")
            coordinator.set_request(invocation_id, request)
            response = await coordinator.response(invocation_id)
            if isinstance(response, Exception):
                raise response
            if response is None:  # the worker's _pop_http_response: no response is an error (500)
                raise ValueError(f"No http response found for invocation {invocation_id}")
            return response

        catch_all.__annotations__ = {"request": request_type}  # (this module's annotations are strings)
        web_app.route(catch_all)
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        config = uvicorn.Config(web_app.get_app(), log_config=None, lifespan="off")
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # (its start and stop lines)

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:  # the dev host's own Ctrl-C handling stays
                yield

        self._server = Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[listening]), name="http-v2-worker-server")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                async with asyncio.timeout(5):
                    await self._task
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
