"""Request validation: the caller's JSON becomes the exact parameters sent upstream.

Ranges follow the Azure OpenAI spec (``createCompletionRequest``), tightened by
the app's limits so one caller cannot spend unbounded tokens. Booleans are not
numbers and ``1.0`` is not an integer. Anything accepted here is accepted by the
service, so an invalid request never costs an upstream call.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import AppError, invalid_request
from .settings import Limits

INT64 = 2 ** 63
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


def parse_json_body(body: bytes, limits: Limits) -> Any:
    """The decoded JSON document; 413 when too large, 400 ``invalid_json`` when not JSON."""
    if len(body) > limits.max_body_bytes:
        raise AppError(413, "payload_too_large",
                       f"The body is larger than the limit of {limits.max_body_bytes} bytes.")
    try:
        text = body.decode("utf-8")
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except ValueError:  # not JSON, or an integer Python will not convert: the second parse tells
            return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        raise AppError(400, "invalid_json", "The body must be a UTF-8 JSON object.") from None


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _integer(params: dict, name: str, low: int, high: int, why: str = "") -> None:
    value = params.get(name)
    if value is None:
        return
    if not _is_int(value) or not low <= value <= high:
        raise invalid_request(f"'{name}' must be an integer from {low} to {high}{why}.", name)


def _number(params: dict, name: str, low: float, high: float) -> None:
    value = params.get(name)
    if value is not None and (not _is_number(value) or not low <= value <= high):
        raise invalid_request(f"'{name}' must be a number from {low:g} to {high:g}.", name)


def _string(params: dict, name: str) -> None:
    value = params.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_request(f"'{name}' must be a string.", name)


def _strings(value: Any, name: str, *, most: int, what: str) -> None:
    """A non-empty string, or a list of 1..most non-empty strings."""
    if isinstance(value, str):
        if value:
            return
    elif (isinstance(value, list) and 1 <= len(value) <= most
          and all(isinstance(item, str) and item for item in value)):
        return
    raise invalid_request(f"'{name}' must be {what}: a non-empty string or a list of 1 to {most} "
                          "non-empty strings.", name)


ALLOWED = frozenset({
    "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
    "logit_bias", "user", "logprobs", "echo", "suffix", "best_of", "seed", "stream",
})


def validate_completion_request(data: Any, limits: Limits) -> dict[str, Any]:
    """The parameters to send upstream, or AppError 400 ``invalid_request`` naming ``param``."""
    if not isinstance(data, dict):
        raise invalid_request("The body must be a JSON object.")
    unknown = sorted(set(data) - ALLOWED)
    if unknown:
        raise invalid_request(f"Unknown field(s): {', '.join(unknown)}.", unknown[0])
    params = {name: value for name, value in data.items() if value is not None}
    if "prompt" not in params:
        raise invalid_request("'prompt' is required.", "prompt")
    _strings(params["prompt"], "prompt", most=limits.max_prompts, what="the text to complete")
    if "stop" in params:
        _strings(params["stop"], "stop", most=4, what="stop sequences")

    _integer(params, "max_tokens", 1, limits.max_tokens)
    _integer(params, "n", 1, limits.max_n)
    _integer(params, "best_of", 1, limits.max_best_of)
    _integer(params, "logprobs", 0, 5)
    _integer(params, "seed", -INT64, INT64 - 1)
    _number(params, "temperature", 0, 2)
    _number(params, "top_p", 0, 1)
    _number(params, "presence_penalty", -2, 2)
    _number(params, "frequency_penalty", -2, 2)
    _string(params, "user")
    _string(params, "suffix")
    if "best_of" in params and params["best_of"] < params.get("n", 1):
        raise invalid_request("'best_of' must be greater than or equal to 'n'.", "best_of")
    if "echo" in params and type(params["echo"]) is not bool:
        raise invalid_request("'echo' must be true or false.", "echo")
    if "stream" in params:
        if type(params["stream"]) is not bool:
            raise invalid_request("'stream' must be true or false.", "stream")
        if params.pop("stream"):
            raise invalid_request("Streaming is not supported by this endpoint yet; omit 'stream'.", "stream")
    if "logit_bias" in params:
        bias = params["logit_bias"]
        if not isinstance(bias, dict) or not all(
                token.isascii() and token.isdigit() and _is_int(value) and -100 <= value <= 100
                for token, value in bias.items()):
            raise invalid_request("'logit_bias' must map token ids (digit strings) to integers from -100 "
                                  "to 100.", "logit_bias")
    return params
