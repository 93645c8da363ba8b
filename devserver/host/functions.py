"""The worker's side of the dev host: the app's functions, and invoking one.

The index comes from the app's own metadata (``app.get_functions()`` and each
function's function.json, exactly what the Python worker sends the Functions
host). An invocation does what the worker does with an ``InvocationRequest``:
it turns the trigger's data into the Python object (with the azure-functions
library's own converters, so a ``func.QueueMessage`` or ``func.EventGridEvent``
is built the same way), passes a ``func.Out`` for each output binding, awaits a
coroutine function on the running event loop or runs a plain function on a
thread, and hands back what the function returned and set. Writing the outputs
is the host's job (``devserver.host.bindings``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessageInConverter

log = logging.getLogger("devserver.functions")

TRIGGER_HTTP, TRIGGER_QUEUE, TRIGGER_EVENT_GRID = "httpTrigger", "queueTrigger", "eventGridTrigger"
SERVED_TRIGGERS = (TRIGGER_HTTP, TRIGGER_QUEUE, TRIGGER_EVENT_GRID)
SERVED_OUTPUTS = ("http", "queue")


@dataclass(frozen=True)
class Function:
    """One function as the host sees it: its bindings and the user's callable."""

    name: str
    trigger: dict  # the trigger binding from function.json
    outputs: tuple[dict, ...]  # output bindings (``$return`` included)
    bindings: tuple[dict, ...]  # every binding, as declared
    user_function: Callable = field(repr=False, compare=False)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger.get("type"))

    @property
    def auth_level(self) -> str:
        return str(self.trigger.get("authLevel") or "FUNCTION").upper()

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    def unserved_reason(self) -> str | None:
        """Why the dev host cannot run this function, or None."""
        if self.trigger_type not in SERVED_TRIGGERS:
            return f"{self.trigger_type} triggers are not served by the dev host (use `func start`)"
        for binding in self.outputs:
            if binding.get("type") not in SERVED_OUTPUTS:
                return f"{binding.get('type')} output bindings are not served by the dev host (use `func start`)"
        for binding in self.bindings:
            if binding is not self.trigger and str(binding.get("direction", "")).upper() == "IN":
                return f"{binding.get('type')} input bindings are not served by the dev host (use `func start`)"
            if binding.get("type") in ("queue", "queueTrigger") and (binding.get("connection") or
                                                                     "AzureWebJobsStorage") != "AzureWebJobsStorage":
                return (f"its queues use the connection {binding['connection']!r}; the dev host serves "
                        "AzureWebJobsStorage only (use `func start`)")
        # The worker passes an optional ``context`` (func.Context) when the function declares it.
        provided = {b["name"] for b in self.bindings if b.get("name") != "$return"} | {"context"}
        extra = [p for p in inspect.signature(self.user_function).parameters if p not in provided]
        if extra:
            return f"needs parameters the dev host does not provide: {', '.join(extra)}"
        return None

    def queue_names(self) -> set[str]:
        """Every queue this function reads or writes."""
        return {str(b["queueName"]) for b in self.bindings if b.get("type") in ("queue", "queueTrigger")}


def index(declared_functions) -> list[Function]:
    """The app's functions, from ``app.get_functions()`` (which may be called only once
    per app instance, so the caller makes that call)."""
    functions = []
    for declared in declared_functions:
        bindings = tuple(json.loads(declared.get_function_json())["bindings"])
        trigger = next(b for b in bindings if str(b.get("type", "")).endswith("Trigger"))
        outputs = tuple(b for b in bindings if str(b.get("direction", "")).upper() == "OUT")
        functions.append(Function(declared.get_function_name(), trigger, outputs, bindings,
                                  declared.get_user_function()))
    return functions


class Out(func.Out):
    """An output binding's value holder, as the worker passes it."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


@dataclass
class Invocation:
    """What one invocation produced: the return value, the output values set, and its
    exception (None when it succeeded)."""

    function: Function
    id: str
    returned: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    duration_ms: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.error is None


class Invoker:
    """Runs invocations on the current event loop: coroutine functions as tasks on it,
    plain functions on a thread pool (the worker's ``PYTHON_THREADPOOL_THREAD_COUNT``)."""

    def __init__(self, function_timeout: float | None = None, threads: int | None = None) -> None:
        self.function_timeout = function_timeout
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="function")

    async def invoke(self, function: Function, trigger_value: Any, reason: str) -> Invocation:
        invocation = Invocation(function, str(uuid.uuid4()))
        arguments: dict[str, Any] = {function.trigger["name"]: trigger_value}
        outs = {b["name"]: Out() for b in function.outputs if b["name"] != "$return"}
        arguments.update(outs)
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", function.name, reason, invocation.id)
        started = time.monotonic()
        deadline = asyncio.timeout(self.function_timeout)
        try:
            async with deadline:
                if function.is_async:
                    invocation.returned = await function.user_function(**arguments)
                else:
                    call = functools.partial(contextvars.copy_context().run, function.user_function, **arguments)
                    invocation.returned = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except Exception as error:  # noqa: BLE001 - as the host: a failed invocation, logged with its traceback
            invocation.error = error
            if deadline.expired():
                log.error("Timeout value of %s exceeded by function 'Functions.%s' (Id: '%s')",
                          _format_timespan(self.function_timeout), function.name, invocation.id)
            else:
                log.error("Executed 'Functions.%s' (Failed, Id=%s)", function.name, invocation.id, exc_info=error)
        invocation.duration_ms = (time.monotonic() - started) * 1000
        invocation.outputs = {name: out.get() for name, out in outs.items()}
        if invocation.succeeded:
            log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", function.name, invocation.id,
                     invocation.duration_ms)
        return invocation

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _format_timespan(seconds: float | None) -> str:
    if seconds is None:
        return "-1"
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


# -- trigger data, as the worker converts it ---------------------------------------------------
def _timestamp(value) -> str | None:
    """A queue message time as the host sends it in trigger metadata."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def queue_message(body: bytes, *, id: str | None, dequeue_count: int | None, inserted_on=None,  # noqa: A002
                  expires_on=None, next_visible_on=None, pop_receipt: str | None = None) -> func.QueueMessage:
    """The ``func.QueueMessage`` the worker builds from the host's trigger data and metadata.
    The host sends the decoded body as text (UTF-8; undecodable bytes become U+FFFD)."""
    metadata = {"Id": Datum(id, "string"), "DequeueCount": Datum(dequeue_count, "int"),
                "InsertionTime": Datum(_timestamp(inserted_on), "string"),
                "ExpirationTime": Datum(_timestamp(expires_on), "string"),
                "NextVisibleTime": Datum(_timestamp(next_visible_on), "string"),
                "PopReceipt": Datum(pop_receipt, "string")}
    metadata = {k: v for k, v in metadata.items() if v.value is not None}
    text = body.decode("utf-8", errors="replace")
    return QueueMessageInConverter.decode(Datum(text, "string"), trigger_metadata=metadata)


# How the host logs an invocation it started from its own APIs (HTTP triggers, the admin API).
HOST_API_REASON = "This function was programmatically called via the host APIs."


class InvalidEvent(ValueError):
    """An event the worker's converter cannot build (e.g. an ``eventTime`` that is not a time)."""


def event_grid_event(event: Any) -> func.EventGridEvent | func.CloudEvent:
    """One event of a delivery, as the worker builds it: a ``func.CloudEvent`` when the
    event has ``specversion`` (CloudEvents 1.0), a ``func.EventGridEvent`` otherwise.
    InvalidEvent when the converter refuses it."""
    try:
        return EventGridEventInConverter.decode(Datum(json.dumps(event), "json"), trigger_metadata={})
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidEvent(f"The event cannot be read ({type(exc).__name__}: check eventTime/time).") from None
