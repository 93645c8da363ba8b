"""The host's admin API, the parts Core Tools users reach for.

- ``GET /admin/functions``: every function with its bindings
  (``[{"name", "href", "invoke_url_template", "language", "isDisabled",
  "config": {"scriptFile", "language", "bindings": [...]}}]``);
  ``GET /admin/functions/{name}``: one of them.
- ``POST /admin/functions/{name}`` with ``{"input": "<text>"}``: invokes a
  non-HTTP function once with that input as its trigger data (a queue message's
  body; an Event Grid event's JSON), in the background, and answers 202. Its
  outputs are written as for any invocation; a failure is only logged (nothing
  is retried: there is no message to redeliver).
- ``GET /admin/host/status``: ``{"state": "Running", ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from aiohttp import web

from .bindings import QueueOutputs
from .functions import (
    HOST_API_REASON,
    TRIGGER_EVENT_GRID,
    TRIGGER_HTTP,
    TRIGGER_QUEUE,
    Function,
    InvalidEvent,
    Invoker,
    event_grid_event,
    queue_message,
)
from .keys import FunctionKeys
from .server import json_error, parse_json, read_body

log = logging.getLogger("devserver.admin")



def _binding(binding: dict) -> dict:
    """A binding as the host lists it (direction in lower case)."""
    shown = dict(binding)
    if "direction" in shown:
        shown["direction"] = str(shown["direction"]).lower()
    return shown


class AdminApi:
    def __init__(self, functions: list[Function], invoker: Invoker, outputs: QueueOutputs | None,
                 keys: FunctionKeys, unserved: dict[str, str], invoke_url: Callable[[Function], str | None],
                 body_timeout: float) -> None:
        self.functions = {f.name: f for f in functions}
        self._invoker = invoker
        self._outputs = outputs
        self._keys = keys
        self._unserved = unserved
        self._invoke_url = invoke_url
        self._body_timeout = body_timeout
        self._started = time.monotonic()
        self._background: set[asyncio.Task] = set()

    def describe(self, function: Function, base_url: str) -> dict:
        return {"name": function.name, "href": f"{base_url}/admin/functions/{function.name}",
                "invoke_url_template": self._invoke_url(function), "language": "python",
                "isDisabled": function.name in self._unserved,
                "config": {"name": function.name, "scriptFile": "function_app.py", "language": "python",
                           "bindings": [_binding(b) for b in function.bindings]}}

    async def handle(self, request: web.Request, base_url: str) -> web.StreamResponse:
        self._keys.check(request, "ADMIN")
        parts = [p for p in request.path.split("/") if p]  # admin, functions|host, ...
        if parts[1:] == ["host", "status"] and request.method == "GET":
            return web.json_response({"state": "Running", "processId": os.getpid(),
                                      "processUptime": int((time.monotonic() - self._started) * 1000)})
        if len(parts) < 2 or parts[1].lower() != "functions" or len(parts) > 3:
            return json_error(404, "not_found", "No such admin API.")
        if len(parts) == 2:
            if request.method != "GET":
                return json_error(405, "method_not_allowed", "GET /admin/functions")
            return web.json_response([self.describe(f, base_url) for f in self.functions.values()])
        function = self.functions.get(parts[2])
        if function is None:
            return json_error(404, "function_not_found", f"No function named '{parts[2]}'.")
        if request.method == "GET":
            return web.json_response(self.describe(function, base_url))
        if request.method != "POST":
            return json_error(405, "method_not_allowed", "GET or POST /admin/functions/{name}")
        return await self._invoke(request, function)

    async def _invoke(self, request: web.Request, function: Function) -> web.StreamResponse:
        try:
            document = parse_json(await read_body(request, self._body_timeout))
        except ValueError:
            return json_error(400, "invalid_json", 'The body must be JSON: {"input": "<text>"}.')
        if not isinstance(document, dict) or not isinstance(document.get("input", ""), str):
            return json_error(400, "invalid_request", 'The body must be {"input": "<text>"}.')
        if function.trigger_type == TRIGGER_HTTP:
            return json_error(400, "http_function", f"'{function.name}' is an HTTP function: call its route.")
        if function.name in self._unserved:
            return json_error(409, "not_served", f"'{function.name}' is not served here: "
                                                 f"{self._unserved[function.name]}")
        text = document.get("input") or ""
        if function.trigger_type == TRIGGER_QUEUE:
            trigger = queue_message(text.encode(), id=None, dequeue_count=0)
        elif function.trigger_type == TRIGGER_EVENT_GRID:
            try:
                event = parse_json(text)
            except ValueError:
                return json_error(400, "invalid_event", "An Event Grid function's input must be an event (JSON).")
            if not isinstance(event, dict):
                return json_error(400, "invalid_event", "An Event Grid function's input must be a JSON object.")
            try:
                trigger = event_grid_event(event)
            except InvalidEvent as error:
                return json_error(400, "invalid_event", str(error))
        else:  # pragma: no cover - other triggers are never served, so always in self._unserved
            return json_error(409, "not_served", f"'{function.name}' is not served here.")
        task = asyncio.create_task(self._run(function, trigger))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return web.Response(status=202)

    async def _run(self, function: Function, trigger) -> None:
        # (shielded: a caller that hangs up does not cancel an invocation, as with the host)
        invocation = await asyncio.shield(self._invoker.invoke(function, trigger, HOST_API_REASON))
        if invocation.succeeded and self._outputs is not None:
            try:
                await self._outputs.write(invocation)
            except Exception:  # noqa: BLE001 - logged: an admin invocation has no caller to tell
                log.exception("Executed 'Functions.%s' (Failed, Id=%s): its outputs could not be written",
                              function.name, invocation.id)

    async def drain(self, grace: float) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=grace)
        for task in list(self._background):
            task.cancel()
