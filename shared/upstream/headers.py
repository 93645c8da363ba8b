"""Reading what an Azure OpenAI answer says about waiting: Retry-After and the rate-limit headers.

The one reading of these headers: the caller's ``Retry-After``, the pool's
cooldowns and its headroom all come from here, so they cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

_NUMBER = re.compile(r"\d{1,15}(?:\.\d{1,9})?")
_DURATION_PART = re.compile(r"(\d{1,15}(?:\.\d{1,9})?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RESET_HEADERS = {
    "requests": ("x-ratelimit-reset-requests", "x-rate-limit-reset-requests"),
    "tokens": ("x-ratelimit-reset-tokens", "x-rate-limit-reset-tokens"),
}


def lowercase_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Header names lowercased (any mapping: dict, requests' or aiohttp's); non-text values dropped."""
    if not headers:
        return {}
    try:
        items = list(headers.items())
    except Exception:  # noqa: BLE001 - a header object we cannot read is treated as no headers
        return {}
    return {name.lower(): value.strip() for name, value in items if isinstance(name, str) and isinstance(value, str)}


def _number(text: str | None) -> float | None:
    """A non-negative decimal number (no signs, exponents, NaN or underscores)."""
    return float(text) if text is not None and _NUMBER.fullmatch(text) else None


def _duration(text: str | None) -> float | None:
    """Seconds from ``55`` (Azure) or ``1m30s`` / ``250ms`` (OpenAI-style durations)."""
    if text is None:
        return None
    seconds = _number(text)
    if seconds is not None:
        return seconds
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def remaining_count(text: str | None) -> int | None:
    """A remaining count; Azure's -1 ("unknown") and anything unreadable give None."""
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) <= 15 else None


def reset_seconds(headers: dict[str, str], which: str) -> float | None:
    found = [seconds for name in _RESET_HEADERS[which] if (seconds := _duration(headers.get(name))) is not None]
    return max(found) if found else None


def retry_after(headers: Mapping[str, str] | None, *, now: float) -> float | None:
    """The wait an answer asks for, in seconds: ``retry-after-ms`` (Azure OpenAI's precise
    form), else ``Retry-After`` (seconds or an HTTP date, against wall-clock ``now``). None
    when neither is usable. The one reading of these headers: the caller's Retry-After and
    the pool's cooldowns agree."""
    return _retry_after(lowercase_headers(headers), now)


def _retry_after(lowered: dict[str, str], now: float) -> float | None:
    millis = _number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    text = lowered.get("retry-after")
    seconds = _number(text)
    if seconds is not None or not text:
        return seconds
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def requested_wait(headers: Mapping[str, str] | None, *, now: float) -> float | None:
    """How long an answer asks the caller to stay away, in seconds: ``retry_after``, else the
    later of the ``x-ratelimit-reset-requests`` / ``-tokens`` times. None when no header is usable."""
    lowered = lowercase_headers(headers)
    asked = _retry_after(lowered, now)
    if asked is not None:
        return asked
    resets = [seconds for which in ("requests", "tokens") if (seconds := reset_seconds(lowered, which)) is not None]
    return max(resets) if resets else None
