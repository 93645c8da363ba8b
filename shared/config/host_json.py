"""What the app reads from host.json: the function timeout and the queues' dequeue count."""

from __future__ import annotations

import json
import re
from pathlib import Path

HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"


def function_timeout_seconds(host_json: Path = HOST_JSON) -> float | None:
    """host.json's ``functionTimeout`` in seconds; None when unset, unlimited or unreadable."""
    try:
        value = json.loads(host_json.read_text()).get("functionTimeout")
    except (OSError, ValueError, AttributeError):
        return None
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})", str(value or ""))
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def max_dequeue_count(host_json: Path = HOST_JSON) -> int:
    """host.json's ``extensions.queues.maxDequeueCount`` (the Functions default, 5, when unset)."""
    try:
        value = json.loads(host_json.read_text())["extensions"]["queues"]["maxDequeueCount"]
    except (OSError, ValueError, KeyError, TypeError):
        return 5
    return value if type(value) is int and value >= 1 else 5
