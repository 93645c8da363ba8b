"""Queue output bindings: what a function set (or returned) becomes messages on its queues.

As the Storage queues extension writes them: one message per value (a list is
several messages), encoded as ``host.json`` ``messageEncoding`` says, the queue
created when it is missing, and the listener of that queue (if this host runs
one) told at once instead of at its next poll. A failure to write fails the
invocation, as in Azure (a queue message that triggered it is then retried).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from .functions import Invocation
from .storage import encode_message

log = logging.getLogger("devserver.bindings")


def messages(value: Any) -> list[str | bytes]:
    """The messages one output value stands for (the worker's queue converter's rules)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    if isinstance(value, func.QueueMessage):
        return [value.get_body()]
    if isinstance(value, (list, tuple)):
        return [item for element in value for item in messages(element)]
    raise TypeError(f"a queue output takes str, bytes, func.QueueMessage or a list of them, not {type(value).__name__}")


class QueueOutputs:
    """Writes an invocation's queue outputs. ``notify(queue_name)`` wakes that queue's
    listener (the host's shared "message enqueued" watcher)."""

    def __init__(self, service, encoding: str, notify: Callable[[str], None] = lambda name: None) -> None:
        self._service = service
        self._encoding = encoding
        self._notify = notify

    async def write(self, invocation: Invocation) -> None:
        for binding in invocation.function.outputs:
            if binding.get("type") != "queue":
                continue
            name = binding["name"]
            value = invocation.returned if name == "$return" else invocation.outputs.get(name)
            for body in messages(value):
                await self.send(str(binding["queueName"]), encode_message(body, self._encoding))

    async def send(self, queue_name: str, text: str) -> None:
        """Put message text (already encoded) on a queue, creating the queue if it is missing."""
        queue = self._service.get_queue_client(queue_name)
        try:
            await queue.send_message(text)
        except ResourceNotFoundError:
            try:
                await queue.create_queue()
            except ResourceExistsError:
                pass
            await queue.send_message(text)
        self.notify_queue(queue_name)

    def notify_queue(self, queue_name: str) -> None:
        self._notify(queue_name)
