"""``COMPLETIONS_CALLER_KEYS``: callers and the SHA-256 digests of their keys, parsed and validated.

Only digests are stored: a leaked setting does not hand out keys (``make caller-key``
prints a new key once, and the entry to add). Problems name the setting, never a value.
"""

from __future__ import annotations

import json
import re

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_CALLERS = 1000


def parse_caller_keys(raw: str | None) -> tuple[dict[str, bytes], str | None]:
    """Caller name → digest (bytes), and what is wrong with the setting (None when nothing)."""
    if raw is None or not raw.strip():
        return {}, None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}, "must be a JSON object of caller name to SHA-256 hex digest"
    if not isinstance(data, dict) or not 1 <= len(data) <= MAX_CALLERS:
        return {}, f"must be a JSON object of 1 to {MAX_CALLERS} callers"
    keys = {}
    for name, digest in data.items():
        if not NAME.fullmatch(name):
            return {}, "has a caller name that is not 1 to 64 letters, digits, . _ or -"
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest.lower()):
            return {}, f"caller '{name}': the value must be the key's SHA-256 digest, 64 hex digits"
        keys[name] = bytes.fromhex(digest)
    return keys, None
