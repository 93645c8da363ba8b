"""Checks for one field of a request body, each raising 400 ``invalid_request`` naming the field."""

from __future__ import annotations

import math
from typing import Any

from ..errors import invalid_request

INT64 = 2 ** 63


def is_int(value: Any) -> bool:
    return type(value) is int


def is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def integer(params: dict, name: str, low: int, high: int, why: str = "") -> None:
    value = params.get(name)
    if value is None:
        return
    if not is_int(value) or not low <= value <= high:
        raise invalid_request(f"'{name}' must be an integer from {low} to {high}{why}.", name)


def number(params: dict, name: str, low: float, high: float) -> None:
    value = params.get(name)
    if value is not None and (not is_number(value) or not low <= value <= high):
        raise invalid_request(f"'{name}' must be a number from {low:g} to {high:g}.", name)


def string(params: dict, name: str) -> None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_request(f"'{name}' must be a string.", name)


def strings(value: Any, name: str, *, most: int, what: str) -> None:
    """A non-empty string, or a list of 1..most non-empty strings."""
    if isinstance(value, str):
        if value:
            return
    elif (isinstance(value, list) and 1 <= len(value) <= most
          and all(isinstance(item, str) and item for item in value)):
        return
    raise invalid_request(f"'{name}' must be {what}: a non-empty string or a list of 1 to {most} "
                          "non-empty strings.", name)
