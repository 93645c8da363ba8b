"""What the app learns about each deployment from its answers, once per process.

- **Its API.** A backend whose ``api`` is ``auto`` is called with chat completions;
  when it answers ``400 OperationNotSupported`` it speaks the other API, and from then
  on is called with that one. An explicit ``api`` is never second-guessed.
- **What it refuses.** Reasoning deployments refuse ``max_tokens``, ``temperature``,
  ``top_p``, ``stop``, the penalties, ``logprobs`` and ``logit_bias`` with a 400 naming
  the parameter (code ``unsupported_parameter`` or ``unsupported_value``). Each refusal
  is remembered per backend, so it costs one extra call per backend and process.

Backends are known by name; the knowledge survives a settings swap that keeps the
backends (the client is kept whole then), and is forgotten with them otherwise.
"""

from __future__ import annotations

import logging
import threading

from ..config.backends import BackendSettings

log = logging.getLogger(__name__)

# What a refusal of each parameter changes: dropped, or sent under another name.
ADAPTABLE: dict[str, str | None] = {
    "max_tokens": "max_completion_tokens", "temperature": None, "top_p": None, "stop": None,
    "presence_penalty": None, "frequency_penalty": None, "logprobs": None, "top_logprobs": None, "logit_bias": None,
}
REFUSAL_CODES = ("unsupported_parameter", "unsupported_value")
OTHER_API = {"chat": "completions", "completions": "chat"}


_API_NAMES = {"chat": "chat completions", "completions": "completions"}


class Knowledge:
    def __init__(self) -> None:
        self._api: dict[str, str] = {}
        self._refused: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def api(self, backend: BackendSettings) -> str:
        """``chat`` or ``completions``: what to call ``backend`` with now."""
        if backend.api != "auto":
            return backend.api
        return self._api.get(backend.name, "chat")

    def switch_api(self, backend: BackendSettings, tried: str) -> bool:
        """``backend`` (``auto``) said it does not serve ``tried``: call it with the other API from now
        on. False when it was switched already (by a concurrent request)."""
        other = OTHER_API[tried]
        with self._lock:
            if self._api.get(backend.name, "chat") == other:
                return False
            self._api[backend.name] = other
        log.warning("backend %s: the deployment does not serve %s; using %s from now on (set its api to skip "
                    "this first call)", backend.name, _API_NAMES[tried], _API_NAMES[other])
        return True

    def refused(self, backend: BackendSettings) -> frozenset[str]:
        return self._refused.get(backend.name, frozenset())

    def refuse(self, backend: BackendSettings, param: str) -> bool:
        """Remember that ``backend`` refuses ``param``; False when already known."""
        with self._lock:
            known = self._refused.get(backend.name, frozenset())
            if param in known:
                return False
            self._refused[backend.name] = known | {param}
        log.info("backend %s refuses '%s': requests to it are sent without it from now on", backend.name, param)
        return True
