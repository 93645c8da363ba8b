"""Checks for one field of a request body, each raising 400 ``invalid_request`` naming the field."""

from __future__ import annotations

import math
from typing import Any

from ..errors import invalid_request

INT64 = 2 ** 63
# Names openai 0.28's acreate(**params) takes as options of its own client, not as body fields:
# passed through from a caller they would pick another deployment (engine), add upstream headers
# (headers, organization), or clash with the app's own (api_key, api_base ...). Never passed on.
CLIENT_OPTIONS = frozenset({"api_key", "api_base", "api_type", "api_version", "organization", "deployment_id",
                            "engine", "headers", "timeout", "request_timeout", "request_id", "typed_api_type"})


def top_level(data: Any, allowed: frozenset[str], passthrough: bool) -> dict[str, Any]:
    """The body's fields to validate (nulls are absent; ``model`` chooses the backends and is not
    sent). Unknown fields are refused by name, or with ``passthrough`` (the routes that pass them to
    the service) only what the client library would take as its own option."""
    if not isinstance(data, dict):
        raise invalid_request("The body must be a JSON object.")
    refused = sorted(set(data) & CLIENT_OPTIONS) if passthrough else sorted(set(data) - allowed)
    if refused and passthrough:
        raise invalid_request(f"'{refused[0]}' is not a request field here: the route or 'model' chooses the "
                              "deployment, and the app alone talks to Azure OpenAI.", refused[0])
    if refused:
        raise invalid_request(f"Unknown field(s): {', '.join(refused)}.", refused[0])
    params = {name: value for name, value in data.items() if value is not None}
    params.pop("model", None)
    return params


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


MAX_STOP_CHARS = 1000  # a stop sequence the app applies holds back up to this much text, per choice


def strings(value: Any, name: str, *, most: int, what: str, longest: int | None = None) -> None:
    """A non-empty string, or a list of 1..most non-empty strings (each at most ``longest`` characters)."""
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and 1 <= len(items) <= most and all(isinstance(item, str) and item for item in items):
        if longest is None or all(len(item) <= longest for item in items):
            return
        raise invalid_request(f"'{name}': each of {what} must be at most {longest} characters.", name)
    raise invalid_request(f"'{name}' must be {what}: a non-empty string or a list of 1 to {most} "
                          "non-empty strings.", name)


def stop_sequences(params: dict[str, Any]) -> None:
    if "stop" in params:
        strings(params["stop"], "stop", most=4, what="stop sequences", longest=MAX_STOP_CHARS)


def boolean(params: dict[str, Any], name: str) -> None:
    if name in params and type(params[name]) is not bool:
        raise invalid_request(f"'{name}' must be true or false.", name)


def logit_bias(params: dict[str, Any]) -> None:
    if "logit_bias" in params:
        bias = params["logit_bias"]
        if not isinstance(bias, dict) or not all(
                token.isascii() and token.isdigit() and is_int(value) and -100 <= value <= 100
                for token, value in bias.items()):
            raise invalid_request("'logit_bias' must map token ids (digit strings) to integers from -100 "
                                  "to 100.", "logit_bias")


def stream_flag(params: dict[str, Any], streaming: bool) -> None:
    """``stream`` read: kept (as true) when the caller asked for a stream, which it may only where
    ``streaming`` is served; ``stream_options`` only with a stream."""
    stream = params.pop("stream", False)
    if type(stream) is not bool:
        raise invalid_request("'stream' must be true or false.", "stream")
    if stream and not streaming:
        raise invalid_request("Streaming is not supported here; omit 'stream'.", "stream")
    options = params.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid_request("'stream_options' is only allowed with 'stream': true.", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"} or \
                type(options.get("include_usage", False)) is not bool:
            raise invalid_request("'stream_options' must be {\"include_usage\": true or false}.", "stream_options")
    if stream:
        params["stream"] = True
