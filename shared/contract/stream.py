"""A streamed answer, chunk by chunk: in the caller's contract, with what the app adds to it.

- A completions request on a chat deployment: each chat chunk becomes a
  ``text_completion`` chunk (``text`` = the delta's content); with several prompts,
  their streams merge into one, each choice's ``index`` = prompt position × ``n`` +
  its own (and each prompt filter result under its ``prompt_index``).
- A ``stop`` the deployment refused is applied by the app, without ever sending text
  past the stop sequence: a choice holds back only the end of its text that could be
  the start of one; at a stop the choice ends (``finish_reason`` ``stop``), and once
  every choice has, so does the stream.
- The app always asks for the usage chunk (its log line and telemetry count the
  tokens) and passes it on only when the caller asked (``stream_options.include_usage``);
  several prompts' usage is summed into one.
"""

from __future__ import annotations

import json
from typing import Any

from .bridge import USAGE_COUNTS, earliest_stop

DONE = b"data: [DONE]\n\n"


def event(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, allow_nan=False).encode() + b"\n\n"


def _held_back(buffer: str, stop: str) -> int:
    """How much of the end of ``buffer`` could be the start of ``stop`` (the largest such size)."""
    for size in range(min(len(stop) - 1, len(buffer)), 0, -1):
        if buffer.endswith(stop[:size]):
            return size
    return 0


class StopFilter:
    """Stop sequences applied to streamed text, per choice."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._held: dict[int, str] = {}
        self.stopped: set[int] = set()

    def feed(self, choice: int, text: str) -> tuple[str, bool]:
        """What of ``text`` may be sent now, and whether the choice reached a stop sequence."""
        if not self._stops:
            return text, False
        buffer = self._held.pop(choice, "") + text
        cut = earliest_stop(buffer, self._stops)
        if cut is not None:
            self.stopped.add(choice)
            return buffer[:cut], True
        keep = max((_held_back(buffer, stop) for stop in self._stops), default=0)
        self._held[choice] = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], False

    def flush(self, choice: int) -> str:
        return self._held.pop(choice, "")


class StreamShaper:
    """Turns upstream chunks into the caller's, and keeps what the log line needs."""

    def __init__(self, *, kind: str, api: str, n: int, calls: int, stops: tuple[str, ...], wants_usage: bool) -> None:
        self._to_completions = kind == "completions" and api == "chat"
        self._chat = kind == "chat"
        self._n, self._calls = n, calls
        self._filter = StopFilter(stops)
        self._wants_usage = wants_usage
        self.usage: dict[str, int] | None = None
        self.finish_reasons: dict[int, str] = {}
        self.model: str | None = None
        self.response_id: str | None = None

    @property
    def all_stopped(self) -> bool:
        """Every choice reached a stop sequence the app applies: the stream may end."""
        return len(self._filter.stopped) >= self._n * self._calls

    def shape(self, call: int, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The caller's chunks for one upstream chunk (none, when it only carried usage)."""
        if isinstance(chunk.get("usage"), dict) and not chunk.get("choices"):
            self._count(chunk["usage"])
            if not (self._wants_usage and self._calls == 1):
                return []  # (several prompts: summed, in closing())
            if self._to_completions:  # in the completions contract, as closing() shapes it
                return [{**{k: chunk[k] for k in ("id", "created", "model") if k in chunk},
                         "object": "text_completion", "choices": [],
                         "usage": {k: v for k, v in chunk["usage"].items() if k in USAGE_COUNTS}}]
            return [chunk]
        if chunk.get("object") and isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model, self.response_id = chunk["model"], chunk.get("id")
        shaped = dict(chunk)
        if not self._wants_usage:
            shaped.pop("usage", None)
        if "prompt_filter_results" in shaped and self._calls > 1:
            shaped["prompt_filter_results"] = [{**r, "prompt_index": call} for r in chunk["prompt_filter_results"]
                                               if isinstance(r, dict)]
        choices = [c for c in (self._choice(call, choice) for choice in chunk.get("choices") or []) if c is not None]
        if chunk.get("choices") and not choices:
            return []  # only choices the app has ended
        shaped["choices"] = choices
        if self._to_completions:
            shaped["object"] = "text_completion" if chunk.get("object") else chunk.get("object")
        return [shaped]

    def _choice(self, call: int, choice: Any) -> dict[str, Any] | None:
        if not isinstance(choice, dict):
            return None
        index = call * self._n + (choice.get("index") or 0)
        if index in self._filter.stopped:
            return None
        delta: dict[str, Any] = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
        text = choice.get("text") if not self._chat and not self._to_completions else delta.get("content")
        finish = choice.get("finish_reason")
        stopped = False
        if isinstance(text, str):
            text, stopped = self._filter.feed(index, text)
        if stopped:
            finish = "stop"
        elif finish is not None and (held := self._filter.flush(index)):
            text = (text or "") + held  # what was held back for a stop sequence that never came
        if finish is not None:
            self.finish_reasons[index] = finish
        if self._to_completions:
            shaped = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
            if "content_filter_results" in choice:
                shaped["content_filter_results"] = choice["content_filter_results"]
            return shaped
        if isinstance(text, str):
            delta = {**delta, "content": text} if self._chat else delta
        out = {**choice, "index": index, "finish_reason": finish}
        if self._chat:
            out["delta"] = delta
        elif isinstance(text, str):
            out["text"] = text
        return out

    def _count(self, usage: dict[str, Any]) -> None:
        counted = self.usage or dict.fromkeys(USAGE_COUNTS, 0)
        for name in USAGE_COUNTS:
            value = usage.get(name)
            counted[name] += value if type(value) is int else 0
        self.usage = counted

    def closing(self, template: dict[str, Any] | None) -> list[dict[str, Any]]:
        """What ends the stream before ``[DONE]``: several prompts' summed usage, when asked for."""
        if not (self._wants_usage and self._calls > 1 and self.usage is not None):
            return []
        base: dict[str, Any] = {k: template[k] for k in ("id", "created", "model") if template and k in template}
        return [{**base, "object": "text_completion", "choices": [], "usage": self.usage}]
