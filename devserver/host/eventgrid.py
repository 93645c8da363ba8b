"""The Event Grid webhook, as the Functions host's Event Grid extension serves it.

``POST /runtime/webhooks/EventGrid?functionName={name}`` with header
``aeg-event-type``:

- ``SubscriptionValidation``: answers ``{"validationResponse": <data.validationCode>}``
  (the first event of an Event Grid schema array, or a CloudEvent whose ``data``
  may be JSON text);
- ``Notification``: invokes the named function once per event of the array (or
  for the one CloudEvent the body is), all at once, writes each invocation's
  outputs, and answers 202, or 500 if any invocation failed so that Event Grid
  delivers the whole payload again;
- ``Unsubscribe``: 202; anything else: 400.

``OPTIONS`` (CloudEvents abuse protection) answers 200 with
``WebHook-Allowed-Origin``. An unknown ``functionName`` gets 404.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .bindings import QueueOutputs
from .functions import TRIGGER_EVENT_GRID, Function, InvalidEvent, Invoker, event_grid_event
from .keys import FunctionKeys
from .server import json_error, parse_json, read_body

log = logging.getLogger("devserver.eventgrid")

WEBHOOK_PATH = "/runtime/webhooks/eventgrid"  # matched case-insensitively, as ASP.NET routes are
PUBLIC_ORIGIN = "eventgrid.azure.net"
KNOWN_ORIGINS = {PUBLIC_ORIGIN, "eventgrid.azure.us", "eventgrid.azure.eaglex.ic.gov",
                 "eventgrid.azure.microsoft.scloud", "eventgrid.azure.cn"}


def validation_code(document) -> str:
    """The handshake's code: ``[{"data": {"validationCode"}}]``, or a CloudEvent whose
    ``data`` is the object or its JSON text."""
    if isinstance(document, list) and document and isinstance(document[0], dict):
        data = document[0].get("data")
    elif isinstance(document, dict):
        data = document.get("data")
        if isinstance(data, str):
            data = parse_json(data)
    else:
        raise ValueError("the body must be a JSON array of events or one CloudEvent")
    if not isinstance(data, dict) or not isinstance(data.get("validationCode"), str):
        raise ValueError("the event has no data.validationCode")
    return data["validationCode"]


class EventGridWebhook:
    def __init__(self, functions: list[Function], invoker: Invoker, outputs: QueueOutputs | None,
                 keys: FunctionKeys, body_timeout: float) -> None:
        self.functions = {f.name: f for f in functions if f.trigger_type == TRIGGER_EVENT_GRID}
        self._invoker = invoker
        self._outputs = outputs
        self._keys = keys
        self._body_timeout = body_timeout

    @staticmethod
    def url(base_url: str, name: str) -> str:
        return f"{base_url}/runtime/webhooks/EventGrid?functionName={name}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self._keys.check(request)
        name = request.query.get("functionName", "")
        function = self.functions.get(name)
        if function is None:
            return json_error(404, "function_not_found", f"cannot find function: '{name}'")
        if request.method == "OPTIONS":
            origin = request.headers.get("WebHook-Request-Origin", "")
            return web.Response(headers={"WebHook-Allowed-Origin": origin if origin in KNOWN_ORIGINS
                                         else PUBLIC_ORIGIN})
        if request.method != "POST":
            return json_error(405, "method_not_allowed", "POST or OPTIONS")
        event_type = request.headers.get("aeg-event-type", "").lower()
        if event_type == "unsubscribe":
            return web.Response(status=202)
        if event_type not in ("subscriptionvalidation", "notification"):
            return json_error(400, "bad_event_type", "aeg-event-type must be SubscriptionValidation, Notification "
                                                     "or Unsubscribe")
        try:
            document = parse_json(await read_body(request, self._body_timeout))
        except ValueError:
            return json_error(400, "invalid_json", "The body is not JSON (or is nested too deeply).")
        if event_type == "subscriptionvalidation":
            try:
                code = validation_code(document)
            except ValueError as error:
                return json_error(400, "invalid_validation_event", str(error))
            log.info("perform handshake with eventGrid for function: %s", name)
            return web.json_response({"validationResponse": code})
        events = document if isinstance(document, list) else [document]
        if not all(isinstance(event, dict) for event in events):
            return json_error(400, "invalid_event", "Each event must be a JSON object.")
        try:  # every event readable before any runs: a bad one fails the delivery, not half of it
            triggers = [event_grid_event(event) for event in events]
        except InvalidEvent as error:
            return json_error(400, "invalid_event", str(error))
        results = await asyncio.gather(*(self._deliver(function, trigger) for trigger in triggers))
        if not all(results):
            return json_error(500, "function_failed", f"'{name}' failed for {results.count(False)} of "
                                                      f"{len(results)} events; Event Grid would deliver them again")
        return web.Response(status=202)

    async def _deliver(self, function: Function, trigger: Any) -> bool:
        # (shielded: a delivery that hangs up does not cancel an invocation, as with the host)
        invocation = await asyncio.shield(self._invoker.invoke(function, trigger, "EventGrid trigger fired"))
        if not invocation.succeeded:
            return False
        if self._outputs is not None:
            try:
                await self._outputs.write(invocation)
            except Exception:  # noqa: BLE001 - an output that cannot be written fails the delivery
                log.exception("Executed 'Functions.%s' (Failed, Id=%s): its outputs could not be written",
                              function.name, invocation.id)
                return False
        return True
