"""The control API both emulators serve on their own port (tests and benchmarks rely on it).

``POST /_emulator/faults`` (a JSON list, served to the next requests in order,
one each), ``POST /_emulator/config`` (``GET``: the configuration), ``GET /_emulator/stats``,
``POST /_emulator/reset``. Each emulator's state says what its config accepts
and what its stats hold.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from .faults import Fault, FaultQueue, Sleeper
from .httpserver import Handler


class EmulatorState(Protocol):
    faults: FaultQueue
    sleeper: Sleeper

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (all or nothing); the new config. ValueError when invalid."""

    def snapshot(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def count(self, what: str) -> None: ...


class ControlHandler(Handler):
    state: EmulatorState

    def take_fault(self, dropped: str = "dropped") -> tuple[Fault | None, bool]:
        """The next injected fault, with its ``drop`` and ``delay_ms`` applied (counted as
        ``dropped`` when it drops): ``(fault, True)`` when the request is over (the connection
        was dropped, or a reset interrupted the delay), else ``(fault or None, False)`` for the
        caller to answer, with the fault's status if it has one."""
        fault = self.state.faults.pop()
        if fault is None:
            return None, False
        if fault.drop:
            self.state.count(dropped)
            self.drop_connection()
            return fault, True
        if not self.state.sleeper.sleep(fault.delay_ms / 1000):
            self.drop_connection()
            return fault, True
        return fault, False

    def is_control(self) -> bool:
        return self.url().path.startswith("/_emulator/")

    def serve_control(self) -> None:
        path = self.url().path
        if self.command == "GET" and path == "/_emulator/stats":
            return self.send_json(200, {**self.state.snapshot(),
                                        "connections_accepted": self.server.connections_accepted})
        if self.command == "GET" and path == "/_emulator/config":
            return self.send_json(200, self.state.configure({}))  # no changes: the configuration as it is
        if self.command != "POST":
            return self.send_json(404, {"error": "unknown control endpoint"})
        try:
            body = json.loads(self.read_body() or b"null")
        except ValueError:
            return self.send_json(400, {"error": "body must be JSON"})
        try:
            if path == "/_emulator/faults":
                if not isinstance(body, list):
                    raise ValueError("expected a JSON list of faults")
                return self.send_json(200, {"pending": self.state.faults.extend(body)})
            if path == "/_emulator/config":
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                return self.send_json(200, self.state.configure(body))
        except ValueError as exc:
            return self.send_json(400, {"error": str(exc)})
        if path == "/_emulator/reset":
            self.state.reset()
            self.server.reset_connection_count()
            return self.send_json(200, {"reset": True})
        self.send_json(404, {"error": "unknown control endpoint"})
