"""Chat deployments, reasoning deployments included, behind the app's contracts (against the emulator).

The completions contract on a chat deployment (one conversation per prompt, merged
back), the chat contract (``/api/chat/completions``), which API a backend speaks (learned
once under ``auto``), and what a reasoning deployment refuses (learned once, adapted)."""

from __future__ import annotations

import json
import logging

import pytest

from support import spec
from support.app_client import SEED, post, post_completions, post_many
from support.triggers import from_queue, message

CHAT, REASONING, LEGACY = "gpt-4.1-mini", "gpt-5-mini", "gpt-35-turbo-instruct"
USER = {"role": "user", "content": "The food was delicious and the waiter"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather now.", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}


def stats(emulators) -> dict:
    return emulators.openai_control.stats()


def upstream_calls(emulators) -> int:
    found = stats(emulators)
    return found["completion_requests"] + found["chat_requests"]


def sent(emulators) -> list[dict]:
    """The bodies the deployment received, oldest first."""
    return [entry["body"] for entry in stats(emulators)["recent_requests"]]


@pytest.fixture
def on(configure_app):
    """``on(deployment, **settings)``: the app against that emulator deployment, its API ``auto``."""
    def configure(deployment: str, **settings):
        return configure_app(auth="key", AZURE_OPENAI_DEPLOYMENT=deployment, AZURE_OPENAI_API=None, **settings)
    return configure


# -- the completions contract on chat deployments ----------------------------------------------------
def test_the_seed_request_on_a_chat_deployment_keeps_the_completions_shape(on, emulators):
    on(CHAT)
    reply = post_completions(SEED)
    assert reply.status == 200, reply.body
    body = reply.body
    assert body["object"] == "text_completion" and body["deployment"] == CHAT and body["text"]
    assert body["choices"][0]["text"] == body["text"] and body["choices"][0]["finish_reason"] == "stop"
    assert "." not in body["text"] and body["prompt_filter_results"][0]["prompt_index"] == 0
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    [request] = sent(emulators)
    assert request["messages"][0]["role"] == "system" and "continuation" in request["messages"][0]["content"]
    assert request["messages"][1] == {"role": "user", "content": SEED["prompt"]}
    assert (request["temperature"], request["stop"]) == (0, ".") and "x-completions-adjusted" not in reply.headers


def test_the_seed_request_on_a_reasoning_deployment_is_adapted_once_and_stop_applied(on, emulators, caplog):
    on(REASONING)
    with caplog.at_level(logging.INFO, logger="shared.logs"):
        first = post_completions({**SEED, "max_tokens": 400})
    assert first.status == 200, first.body
    assert first.headers["x-completions-adjusted"] == "max_tokens,temperature,stop"
    assert first.body["choices"][0]["finish_reason"] == "stop" and "." not in first.body["text"]
    assert "adjusted=max_tokens,temperature,stop" in caplog.text
    learned = upstream_calls(emulators)
    assert learned == 4  # the call, then one per refusal: max_tokens, temperature, stop
    assert sent(emulators)[-1].keys() == {"messages", "max_completion_tokens"}
    for _ in range(9):
        reply = post_completions({**SEED, "max_tokens": 400})
        assert reply.status == 200 and reply.headers["x-completions-adjusted"] == "max_tokens,temperature,stop"
    assert upstream_calls(emulators) == learned + 9 <= 15  # each refusal cost one call, once per process


def test_ten_requests_to_a_completions_deployment_behind_auto_cost_eleven_calls(on, emulators, caplog):
    on(LEGACY)
    with caplog.at_level(logging.WARNING):
        replies = [post_completions(SEED) for _ in range(10)]
    assert [r.status for r in replies] == [200] * 10
    assert (stats(emulators)["chat_requests"], stats(emulators)["completion_requests"]) == (1, 10)
    assert [r for r in caplog.records if "completions from now on" in r.getMessage()]
    assert replies[0].body["text"] == " explained every dish on the menu with real enthusiasm"


def test_an_explicit_api_is_never_second_guessed(configure_app, emulators):
    configure_app(auth="key", AZURE_OPENAI_DEPLOYMENT=LEGACY, AZURE_OPENAI_API="chat")
    reply = post_completions(SEED)
    assert reply.status == 502 and reply.body["error"]["code"] == "upstream_misconfigured"
    assert "AZURE_OPENAI_API" in reply.body["error"]["message"] and upstream_calls(emulators) == 1
    backends = [{"name": "legacy", "endpoint": emulators.openai.endpoint, "deployment": CHAT, "api": "completions"}]
    configure_app(AZURE_OPENAI_BACKENDS=json.dumps(backends), AZURE_OPENAI_ENDPOINT=None)
    reply = post_completions(SEED)
    assert reply.status == 502 and "AZURE_OPENAI_BACKENDS entry 'legacy'" in reply.body["error"]["message"]


def test_a_list_of_prompts_is_concurrent_calls_merged_in_order(on, emulators):
    on(CHAT)
    reply = post_completions({"prompt": ["Once upon a time", "The food was", "Rain"], "n": 2, "max_tokens": 5})
    assert reply.status == 200
    choices = reply.body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3, 4, 5]
    assert stats(emulators)["chat_requests"] == 3
    assert [r["prompt_index"] for r in reply.body["prompt_filter_results"]] == [0, 1, 2]
    usage = reply.body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_one_failed_prompt_fails_the_request(on, emulators):
    on(CHAT, AZURE_OPENAI_MAX_RETRIES="0")
    reply = post_completions({"prompt": ["fine", "please trip the content filter"]})
    assert reply.status == 400 and reply.body["error"]["code"] == "content_filter"


@pytest.mark.parametrize("extra, param", [({"logprobs": 1}, "logprobs"), ({"echo": True}, "echo"),
                                          ({"suffix": "!"}, "suffix"), ({"best_of": 3}, "best_of")])
def test_what_chat_cannot_do_is_refused_by_name_before_any_call(on, emulators, extra, param):
    on(CHAT)
    reply = post_completions({**SEED, **extra})
    assert reply.status == 400 and reply.body["error"]["param"] == param
    assert "no equivalent on a chat deployment" in reply.body["error"]["message"]
    assert upstream_calls(emulators) == 0


def test_empty_instructions_send_none(on, emulators):
    on(CHAT, COMPLETIONS_CHAT_INSTRUCTIONS="")
    assert post_completions(SEED).status == 200
    assert sent(emulators)[0]["messages"] == [{"role": "user", "content": SEED["prompt"]}]


def test_adapting_off_passes_the_refusal_on_with_its_param(on, emulators):
    on(REASONING, COMPLETIONS_ADAPT_PARAMETERS="false")
    reply = post_completions(SEED)
    assert reply.status == 400 and reply.body["error"]["code"] == "upstream_rejected"
    assert reply.body["error"]["param"] == "temperature" and upstream_calls(emulators) == 1


# -- the chat contract --------------------------------------------------------------------------------
def test_a_chat_request_answers_the_services_body_with_deployment_and_backend(on, emulators):
    on(CHAT)
    body = {"messages": [{"role": "developer", "content": "Be brief."}, USER], "max_completion_tokens": 50,
            "seed": 3, "user": "u1", "response_format": {"type": "text"}, "logprobs": True, "top_logprobs": 2}
    reply = post("chat_completions", body)
    assert reply.status == 200, reply.body
    answer = reply.body
    assert answer["object"] == "chat.completion" and (answer["deployment"], answer["backend"]) == (CHAT, "default")
    assert answer["choices"][0]["message"]["role"] == "assistant" and answer["system_fingerprint"]
    assert "completion_tokens_details" in answer["usage"] and answer["prompt_filter_results"]
    assert spec.chat_response_errors({k: v for k, v in answer.items() if k not in ("deployment", "backend")}) == []
    [request] = sent(emulators)
    assert request == body  # exactly what the caller sent


def test_tools_are_called_and_answered(on, emulators):
    on(CHAT)
    ask = {"messages": [{"role": "user", "content": "What is the weather in Oslo?"}], "tools": [WEATHER],
           "tool_choice": "required"}
    first = post("chat_completions", ask).body
    [call] = first["choices"][0]["message"]["tool_calls"]
    assert first["choices"][0]["finish_reason"] == "tool_calls" and call["function"]["name"] == "get_weather"
    follow = {"messages": [*ask["messages"], first["choices"][0]["message"],
                           {"role": "tool", "tool_call_id": call["id"], "content": "12 C, rain"}], "tools": [WEATHER]}
    assert {k for k, v in follow["messages"][1].items() if v is not None} <= {"role", "content", "tool_calls",
                                                                              "refusal"}  # passed back as it came
    second = post("chat_completions", follow)
    assert second.status == 200 and second.body["choices"][0]["message"]["content"]
    passed_back = sent(emulators)[-1]["messages"]  # what the deployment received
    assert passed_back[1]["tool_calls"][0]["id"] == call["id"] and passed_back[2]["tool_call_id"] == call["id"]


def test_a_reasoning_deployment_takes_reasoning_effort_and_reports_reasoning_tokens(on, emulators):
    on(REASONING)
    reply = post("chat_completions", {"messages": [USER], "reasoning_effort": "low", "max_completion_tokens": 500})
    assert reply.status == 200 and reply.body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    adapted = post("chat_completions", {"messages": [USER], "max_tokens": 500, "temperature": 0.2, "stop": ["."]})
    assert adapted.status == 200 and adapted.headers["x-completions-adjusted"] == "max_tokens,temperature,stop"
    assert "." not in (adapted.body["choices"][0]["message"]["content"] or "")


def test_an_invalid_chat_body_never_reaches_the_deployment(on, emulators):
    on(CHAT)
    bodies = [{"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": [USER], "n": 99},
              {"messages": [USER], "tools": [{"type": "function", "function": {"name": "bad name"}}]},
              {"messages": [USER], "temperature": 9}, {"messages": [USER], "whatever": 1}]
    for body in bodies:
        reply = post("chat_completions", body)
        assert reply.status == 400 and reply.body["error"]["code"] == "invalid_request", body
    reply = post("chat_completions", {"messages": [USER, {"role": "user", "content": 5}]})
    assert reply.body["error"]["param"] == "messages[1].content"
    assert upstream_calls(emulators) == 0


def test_a_body_cannot_pick_another_deployment_or_add_upstream_headers(on, emulators):
    """The compatible routes pass unknown fields on; never the client library's own options."""
    on(CHAT)
    for smuggled in ({"engine": "gpt-4o"}, {"headers": {"api-key": "x"}}, {"organization": "o"}):
        reply = post("v1_chat_completions", {"model": CHAT, "messages": [USER], **smuggled})
        assert reply.status == 400 and reply.body["error"]["param"] == next(iter(smuggled)), reply.body
    assert upstream_calls(emulators) == 0
    assert post("v1_chat_completions", {"model": CHAT, "messages": [USER], "store": False}).status == 200
    assert sent(emulators)[-1]["store"] is False  # a field the app does not know reached the service


def test_a_chat_request_to_a_completions_only_deployment_is_named(on, emulators):
    on(LEGACY)
    reply = post("chat_completions", {"messages": [USER]})
    assert reply.status == 502 and reply.body["error"]["code"] == "upstream_misconfigured"
    again = post("chat_completions", {"messages": [USER]})  # learned: no second call to find out
    assert again.status == 502 and stats(emulators)["chat_requests"] == 1


def test_concurrent_chat_requests(on, emulators):
    on(CHAT)
    replies = post_many([{"messages": [USER]}] * 20, function="chat_completions")
    assert [r.status for r in replies] == [200] * 20


# -- event-driven ----------------------------------------------------------------------------------
def test_a_queue_message_with_messages_is_a_chat_request(on, emulators):
    on(CHAT)
    result = from_queue(message({"id": "chat-1", "messages": [USER], "max_completion_tokens": 20}))
    assert result["status"] == "succeeded" and result["id"] == "chat-1"
    assert result["result"]["object"] == "chat.completion" and result["result"]["deployment"] == CHAT
    both = from_queue(message({"id": "both", "messages": [USER], "prompt": "x"}))
    assert both["status"] == "failed" and both["error"]["param"] == "prompt"
    streamed = from_queue(message({"id": "s", "messages": [USER], "stream": True}))
    assert streamed["status"] == "failed" and streamed["error"]["param"] == "stream"  # streaming is for HTTP
