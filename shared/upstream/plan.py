"""What one attempt sends: the request as the backend's API takes it, adapted to what it refuses.

A chat request goes as it is. A completions request goes as it is to a completions
deployment, and as one chat request per prompt to a chat deployment
(``contract.bridge``). Parameters the backend is known to refuse are dropped
(``max_tokens`` is sent as ``max_completion_tokens``), each named in ``adjusted``; a
dropped ``stop`` is applied by the app to the answer (``stops``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..contract.bridge import chat_requests
from .knowledge import ADAPTABLE


class Request(NamedTuple):
    operation: str  # "completions" or "chat": the contract the caller used
    params: dict[str, Any]  # validated


class Plan(NamedTuple):
    api: str  # "completions" or "chat": what the backend is called with
    calls: tuple[dict[str, Any], ...]  # one per upstream call
    adjusted: tuple[str, ...] = ()  # parameters dropped or renamed, for x-completions-adjusted
    stops: tuple[str, ...] = ()  # stop sequences the app applies itself


def plan_for(request: Request, api: str, refused: frozenset[str], instructions: str) -> Plan:
    """The attempt's calls for a backend speaking ``api`` that refuses ``refused``."""
    if request.operation == "chat" or api == "completions":
        calls = [request.params]
    else:
        calls = chat_requests(request.params, instructions)
    if api != "chat" or not refused:
        return Plan(api, tuple(calls))
    adjusted = tuple(name for name in ADAPTABLE if name in calls[0] and (
        name in refused or (name == "top_logprobs" and "logprobs" in refused)))  # (only with logprobs)
    if not adjusted:
        return Plan(api, tuple(calls))
    stop = calls[0].get("stop") if "stop" in adjusted else None
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return Plan(api, tuple(_adapted(call, adjusted) for call in calls), adjusted, stops)


def _adapted(call: dict[str, Any], adjusted: tuple[str, ...]) -> dict[str, Any]:
    adapted = dict(call)
    for name in adjusted:
        value = adapted.pop(name, None)
        renamed = ADAPTABLE[name]
        if renamed is not None and value is not None:
            adapted.setdefault(renamed, value)
    return adapted
