"""Chat requests: the caller's JSON becomes the exact parameters sent to a chat deployment.

Ranges follow the Azure OpenAI spec (``createChatCompletionRequest``, 2025-04-01-preview),
tightened by the app's limits; each problem is 400 ``invalid_request`` whose ``param`` is
the path of the offending value (``messages[2].role``). Anything accepted here has the
shape the service accepts, so an invalid body never costs an upstream call. On the app's
own route an unknown field is refused by name; on the OpenAI-compatible routes
(``passthrough``) unknown top-level fields and message keys go to the service, which
judges them (the SDKs add fields faster than any validator).
"""

from __future__ import annotations

import re
from typing import Any

from ..config.settings import Limits
from ..errors import invalid_request
from .fields import (
    INT64,
    boolean,
    integer,
    logit_bias,
    number,
    stop_sequences,
    stream_flag,
    string,
    top_level,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
TOOL_CHOICES = ("none", "auto", "required")
MAX_TOOLS = 128
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
_PART_TYPES = ("text", "image_url")

ALLOWED = frozenset({
    "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "seed", "user", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning_effort", "logprobs", "top_logprobs", "stream", "stream_options", "model",
})


def validate_chat_request(data: Any, limits: Limits, *, passthrough: bool = False,
                          streaming: bool = False) -> dict[str, Any]:
    """The parameters to send upstream (``model`` left out), or AppError 400 naming ``param``."""
    params = top_level(data, ALLOWED, passthrough)
    _messages(params.get("messages"), limits, passthrough)
    stop_sequences(params)
    for name in ("max_tokens", "max_completion_tokens"):
        integer(params, name, 1, limits.max_tokens)
    integer(params, "n", 1, limits.max_n)
    integer(params, "seed", -INT64, INT64 - 1)
    integer(params, "top_logprobs", 0, 20)
    number(params, "temperature", 0, 2)
    number(params, "top_p", 0, 1)
    number(params, "presence_penalty", -2, 2)
    number(params, "frequency_penalty", -2, 2)
    string(params, "user")
    for name in ("logprobs", "parallel_tool_calls"):
        boolean(params, name)
    if "top_logprobs" in params and params.get("logprobs") is not True:
        raise invalid_request("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")
    if "reasoning_effort" in params and params["reasoning_effort"] not in REASONING_EFFORTS:
        raise invalid_request(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}.", "reasoning_effort")
    logit_bias(params)
    _response_format(params.get("response_format"))
    _tools(params.get("tools"))
    _tool_choice(params.get("tool_choice"), params.get("tools"))
    if "parallel_tool_calls" in params and not params.get("tools"):
        raise invalid_request("'parallel_tool_calls' needs 'tools'.", "parallel_tool_calls")
    stream_flag(params, streaming)
    return params


def _messages(messages: Any, limits: Limits, passthrough: bool) -> None:
    if messages is None:
        raise invalid_request("'messages' is required.", "messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= limits.max_messages:
        raise invalid_request(f"'messages' must be a list of 1 to {limits.max_messages} messages.", "messages")
    for index, message in enumerate(messages):
        _message(message, f"messages[{index}]", passthrough)


def _message(message: Any, path: str, passthrough: bool) -> None:
    if not isinstance(message, dict):
        raise invalid_request(f"'{path}' must be an object with a role.", path)
    if not passthrough:  # (a null is as good as absent: an answer's message passed back may carry some)
        unknown = sorted(key for key, value in message.items() if key not in _MESSAGE_KEYS and value is not None)
        if unknown:
            raise invalid_request(f"Unknown field(s) in '{path}': {', '.join(unknown)}.", f"{path}.{unknown[0]}")
    role = message.get("role")
    if role not in ROLES:
        raise invalid_request(f"'{path}.role' must be one of {', '.join(ROLES)}.", f"{path}.role")
    if "name" in message and not (isinstance(message["name"], str) and message["name"]):
        raise invalid_request(f"'{path}.name' must be a non-empty string.", f"{path}.name")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise invalid_request(f"'{path}.tool_calls' is only for assistant messages.", f"{path}.tool_calls")
        _tool_calls(calls, f"{path}.tool_calls")
    if role == "tool" and not (isinstance(message.get("tool_call_id"), str) and message["tool_call_id"]):
        raise invalid_request(f"'{path}.tool_call_id' is required for a tool message.", f"{path}.tool_call_id")
    if role != "tool" and "tool_call_id" in message:
        raise invalid_request(f"'{path}.tool_call_id' is only for tool messages.", f"{path}.tool_call_id")
    content = message.get("content")
    if content is None and not (role == "assistant" and (calls or message.get("refusal"))):
        raise invalid_request(f"'{path}.content' is required.", f"{path}.content")
    if content is not None:
        _content(content, f"{path}.content", role, passthrough)


def _content(content: Any, path: str, role: str, passthrough: bool) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise invalid_request(f"'{path}' must be a string or a non-empty list of parts.", path)
    for index, part in enumerate(content):
        where = f"{path}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if passthrough and isinstance(kind, str) and kind not in _PART_TYPES:
            continue  # a newer part type (input_audio, file ...): the service judges it
        if kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            continue  # an assistant's refusal, passed back
        if kind not in _PART_TYPES or (kind == "image_url" and role != "user"):
            allowed = "text or image_url" if role == "user" else "text or refusal" if role == "assistant" \
                else "text"
            raise invalid_request(f"'{where}' must be a part of type {allowed}.", f"{where}.type")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise invalid_request(f"'{where}.text' must be a string.", f"{where}.text")
        image = part.get("image_url")
        if kind == "image_url" and not (isinstance(image, dict) and isinstance(image.get("url"), str)
                                        and image["url"]):
            raise invalid_request(f"'{where}.image_url' must be an object with a url.", f"{where}.image_url")


def _tool_calls(calls: Any, path: str) -> None:
    if not isinstance(calls, list) or not calls:
        raise invalid_request(f"'{path}' must be a non-empty list of tool calls.", path)
    for index, call in enumerate(calls):
        where = f"{path}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(call, dict) and isinstance(call.get("id"), str) and call["id"]
                and call.get("type") == "function" and isinstance(function, dict)
                and isinstance(function.get("name"), str) and isinstance(function.get("arguments"), str)):
            raise invalid_request(f"'{where}' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                                  "\"arguments\" (JSON text)}}}.", where)


def _function_name(name: Any, path: str) -> None:
    if not (isinstance(name, str) and _FUNCTION_NAME.fullmatch(name)):
        raise invalid_request(f"'{path}' must be 1 to 64 letters, digits, _ or -.", path)


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list) or not 1 <= len(tools) <= MAX_TOOLS:
        raise invalid_request(f"'tools' must be a list of 1 to {MAX_TOOLS} function tools.", "tools")
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise invalid_request(f"'{where}' must be {{\"type\": \"function\", \"function\": {{...}}}}.", where)
        function = tool["function"]
        _function_name(function.get("name"), f"{where}.function.name")
        if "description" in function and not isinstance(function["description"], str):
            raise invalid_request(f"'{where}.function.description' must be a string.", f"{where}.function.description")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise invalid_request(f"'{where}.function.parameters' must be a JSON schema object.",
                                  f"{where}.function.parameters")
        if "strict" in function and type(function["strict"]) is not bool:
            raise invalid_request(f"'{where}.function.strict' must be true or false.", f"{where}.function.strict")


def _tool_choice(choice: Any, tools: Any) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise invalid_request(f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)}, or a named function.",
                                  "tool_choice")
        if not tools:  # (the service refuses any tool_choice without tools)
            raise invalid_request(f"'tool_choice' {choice} needs 'tools'.", "tool_choice")
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(function, dict)):
        raise invalid_request("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": "
                              "{\"name\"}}.", "tool_choice")
    _function_name(function.get("name"), "tool_choice.function.name")
    names = {t["function"]["name"] for t in tools or ()}
    if function["name"] not in names:
        raise invalid_request("'tool_choice' names a function that is not in 'tools'.", "tool_choice.function.name")


def _response_format(response_format: Any) -> None:
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid_request("'response_format.type' must be text, json_object or json_schema.",
                              "response_format.type")
    if kind == "json_schema":
        schema = response_format.get("json_schema")
        if not isinstance(schema, dict):
            raise invalid_request("'response_format.json_schema' is required for json_schema.",
                                  "response_format.json_schema")
        _function_name(schema.get("name"), "response_format.json_schema.name")
        if "schema" in schema and not isinstance(schema["schema"], dict):
            raise invalid_request("'response_format.json_schema.schema' must be a JSON schema object.",
                                  "response_format.json_schema.schema")
        if "strict" in schema and type(schema["strict"]) is not bool:
            raise invalid_request("'response_format.json_schema.strict' must be true or false.",
                                  "response_format.json_schema.strict")
