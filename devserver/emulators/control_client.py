"""A typed client for the emulators' control API (``devserver/emulators/control.py``), for tests,
benchmarks and scripts: ``EmulatorControl(base_url).faults({"status": 429, "retry_after": 1})``."""

from __future__ import annotations

from typing import Any

import requests


class EmulatorControl:
    def __init__(self, base_url: str, *, timeout: float = 10) -> None:
        self.url = base_url.rstrip("/") + "/_emulator"
        self._timeout = timeout

    def _post(self, path: str, payload: Any = None) -> Any:
        response = requests.post(f"{self.url}/{path}", json=payload, timeout=self._timeout)
        response.raise_for_status()
        return response.json()

    def faults(self, *faults: dict[str, Any]) -> int:
        """Queue faults for the next requests, one each, in order; the number now pending."""
        return self._post("faults", list(faults))["pending"]

    def config(self, **changes: Any) -> dict[str, Any]:
        """Change the emulator's configuration; the whole configuration after the change."""
        return self._post("config", changes)

    def stats(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/stats", timeout=self._timeout)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Clear faults and counters (configuration stays)."""
        self._post("reset")
