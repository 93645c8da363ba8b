"""Request bodies: the caller's bytes as a JSON document, within the size limit.

Booleans are not numbers and ``1.0`` is not an integer anywhere after this; a JSON
constant (``NaN``, ``Infinity``) is not JSON at all.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import AppError

# No field takes an integer this long (the widest, seed, has 19 digits). Python refuses to
# parse integers of more than 4,300 digits at all; a body that holds one is parsed again with
# longer ones read as infinity, which every numeric rule rejects by name, as it does any
# integer out of its range. (Only then: the hook is a Python call per integer, ~4x slower.)
_MAX_INTEGER_DIGITS = 100


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int | float:
    if len(text) - text.startswith("-") > _MAX_INTEGER_DIGITS:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def parse_json_body(body: bytes | bytearray, max_bytes: int) -> Any:
    """The decoded JSON document; 413 when too large, 400 ``invalid_json`` when not JSON."""
    if len(body) > max_bytes:
        raise AppError(413, "payload_too_large",
                       f"The body is larger than the limit of {max_bytes} bytes.")
    try:
        text = body.decode("utf-8")
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except ValueError:  # not JSON, or an integer Python will not convert: the second parse tells
            return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        raise AppError(400, "invalid_json", "The body must be a UTF-8 JSON object.") from None
