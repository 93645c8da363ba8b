"""The telemetry hooks the app calls, the small records they take, and the no-op behind them.

With telemetry off (no switch set: ``telemetry.switches``) every component holds
``NOOP``, whose hooks are methods that do nothing: no OpenTelemetry module is
imported. ``telemetry.otel.OTelTelemetry`` implements them.

The components call the hooks at a few named points: the service around each
invocation (``invocation``, ending with ``finish``), the client at each upstream
attempt, slot wait and retry round (``attempt``, ``slot_wait``, ``retry_wait``),
the token cache at each refresh (``token_refresh``), and the triggers around each
invocation (``continue_trace``: the Functions host's trace context).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ..config.backends import BackendSettings


class TraceContext(NamedTuple):
    """The W3C trace context the Functions host passes with an invocation."""

    parent: str  # traceparent
    state: str | None = None  # tracestate

    @classmethod
    def of(cls, context: object) -> TraceContext | None:
        """From the worker's ``func.Context`` (its ``trace_context``); None when it has none."""
        trace_context = getattr(context, "trace_context", None)
        parent = getattr(trace_context, "trace_parent", None)
        if not isinstance(parent, str) or not parent:
            return None
        state = getattr(trace_context, "trace_state", None)
        return cls(parent, state if isinstance(state, str) and state else None)


class InvocationStart(NamedTuple):
    source: str  # http, queue, eventgrid
    operation: str  # the gen-AI operation name: text_completion, chat
    model: str | None  # the deployment first in line (None when the app is not configured)
    request_id: str | None


class Usage(NamedTuple):
    input_tokens: int
    output_tokens: int


class InvocationEnd(NamedTuple):
    status: int
    code: str  # "ok", or the error's code
    valid: bool  # the request passed validation: a gen-AI operation took place
    operation: str | None = None  # the gen-AI operation that answered (chat, text_completion); None: unknown
    backend: BackendSettings | None = None  # the one that answered (or was tried last)
    response_model: str | None = None
    response_id: str | None = None
    usage: Usage | None = None
    finish_reasons: tuple[str, ...] = ()
    attempts: int = 0
    failovers: int | None = None
    request: Mapping[str, float] = {}  # numeric request parameters (max_tokens, temperature, ...)
    input_messages: str | None = None  # the gen-AI content attributes (JSON), only with COMPLETIONS_LOG_TEXT
    output_messages: str | None = None


class Attempt:
    """One upstream attempt, as the client reports it (no-op)."""

    __slots__ = ()

    def end(self, status: int | None = None, error_code: str | None = None) -> None:
        """The attempt ended: with the HTTP ``status`` upstream answered (None: no answer) and,
        for a failure, the error's code."""


class Invocation:
    """One invocation of the completion pipeline, as the service reports it (no-op)."""

    __slots__ = ()
    trace_id = ""  # the W3C trace id (32 hex digits) for the log line; empty when telemetry is off

    def __enter__(self) -> Invocation:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def identify(self, caller: str) -> None:
        """The caller the app authenticated (a configured caller's name, or the platform's principal)."""

    def keep_open(self) -> None:
        """The answer streams: the invocation ends with ``finish``, when the stream does, not with its block."""

    def first_chunk(self, seconds: float) -> None:
        """A stream's first chunk reached the caller, ``seconds`` after the invocation began."""

    def finish(self, end: InvocationEnd) -> None:
        """The invocation's outcome."""


class _NullContext:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


NULL_ATTEMPT = Attempt()
NULL_INVOCATION = Invocation()
NULL_CONTEXT = _NullContext()


class Telemetry:
    """The hooks the app calls. This base class is the no-op used when telemetry is off:
    each hook costs one method call."""

    enabled = False

    def continue_trace(self, context: TraceContext | None) -> Any:
        """A context manager under which work continues the host's trace (None: no parent)."""
        return NULL_CONTEXT

    def invocation(self, start: InvocationStart) -> Invocation:
        """A context manager around one invocation."""
        return NULL_INVOCATION

    def slot_wait(self, seconds: float, timed_out: bool = False) -> None:
        """Time the invocation waited for one of the instance's concurrency slots (called only
        when every slot was taken)."""

    def attempt(self, backend: BackendSettings, number: int, kind: str, api: str = "completions") -> Attempt:
        """An upstream attempt starts: ``kind`` is ``first``, ``failover`` (another backend at
        once after a failure) or ``retry`` (after a wait for recovery, a refused token, or a lesson
        learned from the deployment's answer); ``api`` is ``chat`` or ``completions``."""
        return NULL_ATTEMPT

    def retry_wait(self, seconds: float) -> None:
        """No backend is ready: the invocation waits ``seconds`` for the next round."""

    def token_refresh(self, failure: str | None = None) -> None:
        """A token request ended (on the token cache's refresh thread); ``failure``: the
        exception's type name when it failed."""

    def flush(self, timeout_millis: int = 10_000) -> None:
        """Export what is pending now (tests, benchmarks; never on a request)."""

    def shutdown(self, within: float | None = None) -> None:
        """Flush and stop the exporters, in at most ``within`` seconds (process exit only, never on a
        request)."""


NOOP = Telemetry()
