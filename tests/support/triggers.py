"""The queue and Event Grid functions invoked as the worker does: the user function with a
``QueueMessage`` / ``EventGridEvent`` and a ``func.Out`` stand-in, on the app's loop."""

from __future__ import annotations

import json

import azure.functions as func
from azure.functions.queue import QueueMessage

import function_app
from support.app_client import LOOP


class Out(func.Out):
    """The output binding stand-in: what the function set, if anything."""

    def __init__(self) -> None:
        self.value = None

    def set(self, value) -> None:
        self.value = value

    def get(self):
        return self.value


def message(body, *, id_="msg-1", dequeue_count=1) -> QueueMessage:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return QueueMessage(id=id_, body=data, dequeue_count=dequeue_count, pop_receipt="r")


def from_queue(msg: QueueMessage) -> dict:
    out = Out()
    LOOP.run(function_app.completion_from_queue.build().get_user_function()(msg, out))
    return json.loads(out.value)


def from_poison_queue(msg: QueueMessage) -> dict:
    out = Out()
    LOOP.run(function_app.completion_poisoned.build().get_user_function()(msg, out))
    return json.loads(out.value)


def event(data, *, id_="evt-1") -> func.EventGridEvent:
    return func.EventGridEvent(id=id_, data=data, topic="/subscriptions/x/resourceGroups/y/providers/"
                               "Microsoft.EventGrid/topics/completions", subject="requests/1",
                               event_type="Contoso.Completions.Requested", event_time=None, data_version="1.0")


def from_event_grid(evt: func.EventGridEvent) -> dict:
    out = Out()
    LOOP.run(function_app.completion_from_event_grid.build().get_user_function()(evt, out))
    return json.loads(out.value)
