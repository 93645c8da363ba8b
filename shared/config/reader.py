"""Reads settings from a mapping through their registry entries, collecting every problem.

A problem names the setting and says what is wrong, never its value: a value may
be a key. Defaults and bounds come from the entry (``config.registry``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .registry import Setting

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: dict[str, str] = {}

    def raw(self, setting: Setting) -> str | None:
        """The stripped value (the seed guide's name when this one is absent); None when blank."""
        value = self.environ.get(setting.name)
        if (value is None or not value.strip()) and setting.fallback:
            value = self.environ.get(setting.fallback)
        value = value.strip() if value else None
        return value or None

    def text(self, setting: Setting, default: str | None = None) -> str | None:
        value = self.raw(setting)
        if value is not None:
            return value
        return default if default is not None else setting.default

    def text_or_empty(self, setting: Setting) -> str:
        """Like ``text``, but a setting present and blank reads as "" (deliberately empty), not the default."""
        value = self.environ.get(setting.name)
        if value is not None and not value.strip():
            return ""
        return self.text(setting) or ""

    def choice(self, setting: Setting, default: str | None = None) -> str:
        value = self.raw(setting)
        fallback = default if default is not None else setting.default
        if value is None:
            return fallback
        if value.lower() not in setting.choices:
            self.problems[setting.name] = f"must be one of {', '.join(setting.choices)}"
            return fallback
        return value.lower()

    def integer(self, setting: Setting, default: int | None = None) -> int:
        return int(self.number(setting, default, integer=True))

    def number(self, setting: Setting, default: float | None = None, *, integer: bool = False) -> float:
        fallback = setting.default if default is None else default
        raw = self.raw(setting)
        if raw is None:
            return fallback
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            self.problems[setting.name] = f"must be {'an integer' if integer else 'a number'}"
            return fallback
        low, high = setting.low if setting.low is not None else -math.inf, setting.high
        # (math.isfinite overflows on a huge integer: integers need no finiteness check)
        if (not integer and not math.isfinite(value)) or value < low or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            self.problems[setting.name] = f"must be {bounds}"
            return fallback
        return value

    def flag(self, setting: Setting) -> bool:
        raw = (self.raw(setting) or str(bool(setting.default))).lower()
        if raw not in _TRUE + _FALSE:
            self.problems[setting.name] = "must be true or false"
        return raw in _TRUE
