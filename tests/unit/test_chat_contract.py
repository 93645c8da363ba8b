"""The chat contract's validation: the service's ranges, each problem named by its path."""

from __future__ import annotations

import pytest

from shared.config.settings import Limits
from shared.contract.chat import validate_chat_request
from shared.errors import AppError

LIMITS = Limits()
USER = {"role": "user", "content": "Hello"}


def problem(body, **options) -> tuple[str, str | None]:
    with pytest.raises(AppError) as caught:
        validate_chat_request(body, LIMITS, **options)
    assert caught.value.status == 400 and caught.value.code == "invalid_request"
    return caught.value.param, caught.value.message


def test_a_full_request_passes_unchanged():
    body = {"messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                                      {"type": "image_url", "image_url": {"url": "https://x/i.png"}}],
                          "name": "ada"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                         {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}],
            "max_completion_tokens": 500, "temperature": 0.2, "top_p": 0.9, "n": 2, "stop": ["\n\n"],
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"50256": -100}, "seed": 7,
            "user": "u1", "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": {"type": "object"}, "strict": True}},
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                                                        "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False, "reasoning_effort": "low", "logprobs": True, "top_logprobs": 3,
            "stream": False}
    params = validate_chat_request(body, LIMITS)
    assert params == {k: v for k, v in body.items() if k != "stream"}


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [USER] * 257}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [USER, {"role": "robot", "content": "x"}]}, "messages[1].role"),
    ({"messages": [USER, {"role": "function", "content": "x", "name": "f"}]}, "messages[1].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
     "messages[0].tool_calls[0]"),
    ({"messages": [{"role": "user", "content": "x", "colour": "red"}]}, "messages[0].colour"),
    ({"messages": [USER], "max_tokens": 0}, "max_tokens"),
    ({"messages": [USER], "max_completion_tokens": 16385}, "max_completion_tokens"),
    ({"messages": [USER], "temperature": 2.5}, "temperature"),
    ({"messages": [USER], "temperature": True}, "temperature"),
    ({"messages": [USER], "top_p": -0.1}, "top_p"),
    ({"messages": [USER], "n": 11}, "n"),
    ({"messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [USER], "logit_bias": {"x": 1}}, "logit_bias"),
    ({"messages": [USER], "seed": 2 ** 63}, "seed"),
    ({"messages": [USER], "top_logprobs": 3}, "top_logprobs"),
    ({"messages": [USER], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": [USER], "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"messages": [USER], "response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": [USER], "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
     "response_format.json_schema.name"),
    ({"messages": [USER], "tools": []}, "tools"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "x" * 65}}]},
     "tools[0].function.name"),
    ({"messages": [USER], "tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools[0].function.parameters"),
    ({"messages": [USER], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [USER], "tool_choice": "maybe"}, "tool_choice"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice.function.name"),
    ({"messages": [USER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [USER], "stream": True}, "stream"),
    ({"messages": [USER], "stream": "true"}, "stream"),
    ({"messages": [USER], "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [USER], "functions": []}, "functions"),
    ({"messages": [USER], "prompt": "x"}, "prompt"),
])
def test_each_problem_is_named_by_its_path(body, param):
    assert problem(body)[0] == param


def test_the_compatible_routes_pass_unknown_fields_and_message_keys_to_the_service():
    body = {"messages": [{**USER, "audio": None}], "store": True, "metadata": {"k": "v"}}
    assert validate_chat_request(body, LIMITS, passthrough=True) == body
    assert problem({"messages": [USER], "temperature": 3}, passthrough=True)[0] == "temperature"  # known: checked


def test_model_is_read_by_the_router_not_sent_and_null_means_absent():
    assert validate_chat_request({"messages": [USER], "model": "gpt-4.1-mini", "seed": None}, LIMITS) == {
        "messages": [USER]}


def test_an_assistant_message_may_carry_only_tool_calls_or_a_refusal():
    assert validate_chat_request({"messages": [{"role": "assistant", "refusal": "No."}, USER]}, LIMITS)


def test_streaming_is_accepted_where_it_is_served():
    params = validate_chat_request({"messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
                                   LIMITS, streaming=True)
    assert params["stream"] is True and params["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("name", sorted(__import__("shared.contract.fields", fromlist=["x"]).CLIENT_OPTIONS))
def test_passed_through_fields_never_include_the_client_librarys_own_options(name):
    """openai 0.28's acreate(**params) would take these as its own: another deployment ('engine'),
    headers upstream, the app's key or endpoint. On the compatible routes they are refused by name."""
    from shared.contract.completions import validate_completion_request

    assert problem({"messages": [USER], name: "x"}, passthrough=True)[0] == name
    with pytest.raises(AppError) as caught:
        validate_completion_request({"prompt": "hi", name: "x"}, LIMITS, passthrough=True)
    assert caught.value.param == name
    assert validate_chat_request({"messages": [USER], "store": False}, LIMITS, passthrough=True)["store"] is False


def test_a_stop_sequence_is_at_most_1000_characters():
    """The app applies a reasoning deployment's stop itself, holding back what could be its start."""
    assert problem({"messages": [USER], "stop": ["x" * 1001]})[0] == "stop"
    assert validate_chat_request({"messages": [USER], "stop": "x" * 1000}, LIMITS)["stop"] == "x" * 1000


def test_tool_choice_and_parallel_tool_calls_need_tools():
    """The service refuses them without tools: refused here, before any upstream call."""
    for choice in ("none", "auto", "required"):
        assert problem({"messages": [USER], "tool_choice": choice})[0] == "tool_choice"
    assert problem({"messages": [USER], "parallel_tool_calls": True})[0] == "parallel_tool_calls"


def test_an_assistants_refusal_part_is_accepted_and_newer_parts_pass_through_on_the_compatible_routes():
    refused = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    assert validate_chat_request({"messages": [USER, refused, USER]}, LIMITS)["messages"][1] == refused
    audio = {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}
    assert validate_chat_request({"messages": [audio]}, LIMITS, passthrough=True)["messages"] == [audio]
    assert problem({"messages": [audio]})[0] == "messages[0].content[0].type"  # the app's own contract: by name
