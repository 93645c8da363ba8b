"""What the Azure OpenAI emulator's request checks share: Azure's error body, and numbers kept as
they were sent (Azure echoes them in some refusals: ``'temperature' does not support 0.2``)."""

from __future__ import annotations

import json
import math
from typing import Any


def error(code: str | None, message: str, param: str | None = None, type_: str | None = None,
          **extra: Any) -> dict:
    """``{"error": {"code", "message"[, "param"][, "type"], ...}}``, as Azure words its errors."""
    body: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        body["param"] = param
    if type_ is not None:
        body["type"] = type_
    body.update(extra)
    return {"error": body}


class RequestInvalid(Exception):
    """A 400 ``invalid_request_error``; ``body`` is the answer."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "BadRequest"):
        super().__init__(message)
        self.body = error(code, message, param, "invalid_request_error")


class SentFloat(float):
    """A JSON number with a fraction or exponent, remembering how it was written."""

    sent: str

    def __new__(cls, text: str) -> SentFloat:
        value = super().__new__(cls, text)
        value.sent = text
        return value


def loads(raw: bytes) -> Any:
    """The request body, its non-integer numbers as ``SentFloat``; ValueError when not JSON (nested
    too deep for the decoder included: the service answers that with a 400 too)."""
    try:
        return json.loads(raw, parse_float=SentFloat)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def as_sent(value: object) -> str:
    """A value as the client wrote it (numbers as sent, others as JSON)."""
    return value.sent if isinstance(value, SentFloat) else json.dumps(value)


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise RequestInvalid(f"{value} is less than the minimum of {low} - '{name}'", name)
    if high is not None and value > high:
        raise RequestInvalid(f"{value} is greater than the maximum of {high} - '{name}'", name)


def check_types(body: dict, ints: dict[str, tuple], numbers: dict[str, tuple], bools: tuple[str, ...],
                strings: tuple[str, ...]) -> None:
    """Integers, numbers (with their ranges), booleans and strings, as the spec types them;
    ``null`` is "not given"."""
    for name, (low, high) in ints.items():
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int:
            raise RequestInvalid(f"{json.dumps(value)} is not of type 'integer' - '{name}'", name)
        check_range(name, value, low, high)
    for name, (low, high) in numbers.items():
        value = body.get(name)
        if value is None:
            continue
        if not is_finite_number(value):
            raise RequestInvalid(f"{json.dumps(value)} is not of type 'number' - '{name}'", name)
        check_range(name, value, low, high)
    for name in bools:
        if body.get(name) is not None and type(body[name]) is not bool:
            raise RequestInvalid(f"{json.dumps(body[name])} is not of type 'boolean' - '{name}'", name)
    for name in strings:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise RequestInvalid(f"{json.dumps(body[name])} is not of type 'string' - '{name}'", name)


def stop_sequences(stop: Any) -> list[str]:
    """``stop``: a string, or 1 to 4 strings; empty ones dropped."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and 1 <= len(stop) <= 4:
        stops = list(stop)
    else:
        raise RequestInvalid(f"{json.dumps(stop)[:60]} is not valid under any of the given schemas - 'stop'", "stop")
    return [s for s in stops if s]


def check_logit_bias(logit_bias: Any) -> None:
    if logit_bias is None:
        return
    if not isinstance(logit_bias, dict):
        raise RequestInvalid(f"{json.dumps(logit_bias)[:60]} is not of type 'object' - 'logit_bias'", "logit_bias")
    for token, bias in logit_bias.items():
        if not token.isdigit():
            raise RequestInvalid(f"Invalid key in 'logit_bias': {token}.", "logit_bias")
        if type(bias) is not int or not -100 <= bias <= 100:
            raise RequestInvalid(f"Invalid value for 'logit_bias': {json.dumps(bias)}; "
                                 "expected an integer from -100 to 100.", "logit_bias")
