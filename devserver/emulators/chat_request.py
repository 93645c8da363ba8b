"""Chat completions requests, checked as Azure checks them: the 2025-04-01-preview spec's
``createChatCompletionRequest`` (types, ranges, messages, tools, response formats), then what a
reasoning deployment refuses (one parameter per answer, in ``REASONING_REFUSALS`` order)."""

from __future__ import annotations

import json
import re
from typing import Any

from .deployments import Deployment
from .validation import RequestInvalid, as_sent, check_logit_bias, check_types, stop_sequences

_INTS = {"n": (1, 128), "top_logprobs": (0, 20), "max_tokens": (0, None), "max_completion_tokens": (0, None),
         "seed": (-(2 ** 63), 2 ** 63 - 1)}
_NUMBERS = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
_BOOLS = ("logprobs", "stream", "parallel_tool_calls", "store")
_STRINGS = ("user", "model")
KNOWN_FIELDS = {"messages", "stop", "logit_bias", "tools", "tool_choice", "response_format", "stream_options",
                "reasoning_effort", "functions", "function_call", "data_sources", "metadata", "modalities",
                "prediction", "audio", "user_security_context", *_INTS, *_NUMBERS, *_BOOLS, *_STRINGS}
ROLES = ("system", "user", "assistant", "tool", "function", "developer")
REASONING_EFFORTS = ("minimal", "low", "medium", "high")
REASONING_SINCE = "2024-12-01-preview"  # reasoning_effort and the developer role, by api-version
# What reasoning deployments refuse, checked in this order; the first one present (not null) is named.
REASONING_REFUSALS = ("max_tokens", "temperature", "top_p", "stop", "presence_penalty", "frequency_penalty",
                      "logprobs", "top_logprobs", "logit_bias")
_ONLY_DEFAULT = {"temperature", "top_p"}  # refused unless 1, the default
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _invalid(what: Any, param: str) -> RequestInvalid:
    return RequestInvalid(f"{json.dumps(what)[:60]} is not valid under any of the given schemas - '{param}'", param)


def _unsupported(param: str, message: str, code: str) -> RequestInvalid:
    return RequestInvalid(message, param, code)


def check_reasoning(body: dict) -> None:
    """A reasoning model's refusals: the first of ``REASONING_REFUSALS`` the request sets."""
    for name in REASONING_REFUSALS:
        value = body.get(name)
        if value is None:
            continue
        if name == "max_tokens":
            raise _unsupported(name, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                     "Use 'max_completion_tokens' instead.", "unsupported_parameter")
        if name in _ONLY_DEFAULT:
            if value == 1:
                continue
            raise _unsupported(name, f"Unsupported value: '{name}' does not support {as_sent(value)} with this "
                                     "model. Only the default (1) value is supported.", "unsupported_value")
        raise _unsupported(name, f"Unsupported parameter: '{name}' is not supported with this model.",
                           "unsupported_parameter")


def text_of(content: Any) -> str:
    """A message's text: the string, or its ``text`` parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text"
                        and isinstance(part.get("text"), str))
    return ""


def _check_part(part: Any, param: str, allowed: tuple[str, ...]) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in allowed:
        raise _invalid(part, param)
    if kind == "text" and not isinstance(part.get("text"), str):
        raise _invalid(part, param)
    if kind == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str) \
                or image.get("detail", "auto") not in ("auto", "low", "high"):
            raise _invalid(part, param)
    if kind == "refusal" and not isinstance(part.get("refusal"), str):
        raise _invalid(part, param)


_PARTS = {"system": ("text",), "developer": ("text",), "user": ("text", "image_url"),
          "assistant": ("text", "refusal"), "tool": ("text",), "function": ()}


def _check_message(index: int, message: Any, api_version: str) -> None:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _invalid(message, param)
    role = message.get("role")
    if role not in ROLES or (role == "developer" and api_version < REASONING_SINCE):
        raise RequestInvalid(f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                             "'function', 'tool', and 'developer'.", f"{param}.role", "invalid_value")
    content = message.get("content")
    optional = role == "assistant" and (message.get("tool_calls") or message.get("function_call"))
    if content is None and not optional:
        raise RequestInvalid(f"Missing required parameter: '{param}.content'.", f"{param}.content",
                             "missing_required_parameter")
    if isinstance(content, list):
        if not content:
            raise _invalid(content, f"{param}.content")
        for part in content:
            _check_part(part, f"{param}.content", _PARTS[role])
    elif content is not None and not isinstance(content, str):
        raise _invalid(content, f"{param}.content")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise RequestInvalid(f"Missing required parameter: '{param}.tool_call_id'.", f"{param}.tool_call_id",
                             "missing_required_parameter")
    if role == "function" and not isinstance(message.get("name"), str):
        raise RequestInvalid(f"Missing required parameter: '{param}.name'.", f"{param}.name",
                             "missing_required_parameter")


def _functions(tools: Any) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > 128:
        raise _invalid(tools, "tools")
    functions = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not _NAME.match(function["name"]) or not isinstance(function.get("parameters", {}), dict):
            raise _invalid(tool, "tools")
        functions.append(function)
    return functions


def _tool_choice(choice: Any, functions: list[dict]) -> Any:
    if choice is None:
        return "auto" if functions else "none"
    if not functions:
        raise RequestInvalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                             "specified.", "tool_choice", "invalid_value")
    if choice in ("none", "auto", "required"):
        return choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" \
        and isinstance(choice.get("function"), dict) else None
    if not isinstance(name, str):
        raise _invalid(choice, "tool_choice")
    if name not in {f["name"] for f in functions}:
        raise RequestInvalid(f"Invalid value for 'tool_choice': no function named '{name}' was specified in the "
                             "'tools' parameter.", "tool_choice", "invalid_value")
    return {"name": name}


def _response_format(value: Any) -> dict | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _invalid(value, "response_format")
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str) or not _NAME.match(schema["name"]) \
                or not isinstance(schema.get("schema", {}), dict):
            raise _invalid(value, "response_format")
    return None if kind == "text" else value


def _reasoning_effort(body: dict, deployment: Deployment, api_version: str) -> str | None:
    effort = body.get("reasoning_effort")
    if effort is None:
        return "medium" if deployment.kind == "reasoning" else None
    if deployment.kind != "reasoning" or api_version < REASONING_SINCE:
        raise RequestInvalid("Unknown parameter: 'reasoning_effort'.", "reasoning_effort", "unknown_parameter")
    if effort not in REASONING_EFFORTS:
        raise RequestInvalid(f"Invalid value: {as_sent(effort)}. Supported values are: 'minimal', 'low', "
                             "'medium', and 'high'.", "reasoning_effort", "invalid_value")
    return effort


def validate_chat(body: Any, deployment: Deployment, api_version: str) -> dict:
    """The request, normalised, or RequestInvalid as the service words it."""
    if not isinstance(body, dict):
        raise RequestInvalid("The request body must be a JSON object.")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise RequestInvalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    effort = _reasoning_effort(body, deployment, api_version)
    messages = body.get("messages")
    if messages is None:
        raise RequestInvalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise RequestInvalid(f"{json.dumps(messages)[:60]} is too short - 'messages'", "messages")
    for index, message in enumerate(messages):
        _check_message(index, message, api_version)
    check_types(body, _INTS, _NUMBERS, _BOOLS, _STRINGS)
    stops = stop_sequences(body.get("stop"))
    check_logit_bias(body.get("logit_bias"))
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise RequestInvalid("'logprobs' must be set to true if 'top_logprobs' is used.", "top_logprobs",
                             "invalid_value")
    options = body.get("stream_options")
    if options is not None:
        if not body.get("stream"):
            raise RequestInvalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                                 "stream_options", "invalid_value")
        if not isinstance(options, dict) or type(options.get("include_usage", False)) is not bool:
            raise _invalid(options, "stream_options")
    functions = _functions(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), functions)
    response_format = _response_format(body.get("response_format"))
    if deployment.kind == "reasoning":
        check_reasoning(body)
    limit = body.get("max_completion_tokens")
    users = [m for m in messages if m["role"] == "user"]
    return {
        "messages": messages, "last_role": messages[-1]["role"],
        "prompt": text_of(users[-1]["content"]) if users else "",
        "prompt_tokens": sum(max(1, len(text_of(m.get("content")).split())) for m in messages),
        "n": body.get("n") or 1, "stops": stops,
        "max_tokens": limit if limit is not None else body.get("max_tokens"),
        "temperature": 1 if body.get("temperature") is None else body["temperature"],
        "top_p": 1 if body.get("top_p") is None else body["top_p"],
        "logprobs": bool(body.get("logprobs")), "top_logprobs": body.get("top_logprobs") or 0,
        "functions": functions, "tool_choice": tool_choice,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "response_format": response_format, "reasoning_effort": effort,
        "stream": bool(body.get("stream")), "include_usage": bool((options or {}).get("include_usage")),
    }
