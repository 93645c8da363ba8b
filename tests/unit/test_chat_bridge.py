"""The completions contract on a chat deployment, the plan an attempt sends, and what the app learns."""

from __future__ import annotations

import pytest

from shared.config.backends import BackendSettings
from shared.contract.bridge import apply_stop, chat_requests, completions_from_chat, earliest_stop
from shared.errors import AppError
from shared.upstream.knowledge import Knowledge
from shared.upstream.plan import Request, plan_for
from shared.upstream.routing import Route

INSTRUCTIONS = "Continue the text."


def chat_answer(text: str, *, index: int = 0, tokens=(5, 3), finish="stop", filtered=True) -> dict:
    choice = {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
              "finish_reason": finish, "logprobs": None}
    if filtered:
        choice["content_filter_results"] = {"hate": {"filtered": False, "severity": "safe"}}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1-mini",
            "choices": [choice], "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1],
                                           "total_tokens": sum(tokens),
                                           "completion_tokens_details": {"reasoning_tokens": 0}},
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}


def backend(name="b", api="auto", model="") -> BackendSettings:
    return BackendSettings(name=name, endpoint=f"https://{name}.openai.azure.com", deployment="d", api_version="v",
                           token_scope="s", api=api, model=model)


# -- requests ---------------------------------------------------------------------------
def test_each_prompt_becomes_a_conversation_with_the_mapped_parameters():
    params = {"prompt": ["one", "two"], "max_tokens": 5, "temperature": 0, "top_p": 1, "n": 2, "stop": ".",
              "presence_penalty": 1, "frequency_penalty": 1, "seed": 3, "logit_bias": {"1": 2}, "user": "u",
              "echo": False, "best_of": 2}
    one, two = chat_requests(params, INSTRUCTIONS)
    assert one["messages"] == [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "one"}]
    assert two["messages"][-1] == {"role": "user", "content": "two"}
    assert {k: v for k, v in one.items() if k != "messages"} == {
        "max_tokens": 5, "temperature": 0, "top_p": 1, "n": 2, "stop": ".", "presence_penalty": 1,
        "frequency_penalty": 1, "seed": 3, "logit_bias": {"1": 2}, "user": "u"}


def test_empty_instructions_send_none():
    [only] = chat_requests({"prompt": "x"}, "")
    assert only["messages"] == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("extra, param", [({"logprobs": 0}, "logprobs"), ({"echo": True}, "echo"),
                                          ({"suffix": "end"}, "suffix"), ({"best_of": 3, "n": 2}, "best_of")])
def test_what_has_no_chat_equivalent_is_refused_by_name_and_why(extra, param):
    with pytest.raises(AppError) as caught:
        chat_requests({"prompt": "x", **extra}, INSTRUCTIONS)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_request", param)
    assert "no equivalent on a chat deployment" in caught.value.message


# -- answers ----------------------------------------------------------------------------
def test_answers_merge_in_prompt_order_with_usage_summed():
    first = chat_answer("A")
    second = chat_answer("B", tokens=(7, 2), finish="length")
    second["choices"].append({**chat_answer("C")["choices"][0], "index": 1})
    merged = completions_from_chat([first, second], n=2)
    assert [(c["index"], c["text"], c["finish_reason"]) for c in merged["choices"]] == [
        (0, "A", "stop"), (2, "B", "length"), (3, "C", "stop")]
    assert merged["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    assert [r["prompt_index"] for r in merged["prompt_filter_results"]] == [0, 1]
    assert merged["object"] == "text_completion" and merged["choices"][0]["content_filter_results"]


def test_a_tool_call_or_refusal_answer_has_empty_text():
    answer = chat_answer("x")
    answer["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "No."}
    assert completions_from_chat([answer], n=1)["choices"][0]["text"] == ""


def test_stop_is_cut_at_the_earliest_sequence():
    assert earliest_stop("abc. def\n", [".", "\n"]) == 3
    assert earliest_stop("abc", ["x", ""]) is None
    cut = apply_stop(chat_answer("Hello. World", finish="length"), ["."], chat=True)
    assert cut["choices"][0]["message"]["content"] == "Hello" and cut["choices"][0]["finish_reason"] == "stop"
    untouched = apply_stop(chat_answer("Hello"), ["."], chat=True)
    assert untouched["choices"][0]["message"]["content"] == "Hello"
    completion = {"choices": [{"text": " a; b", "finish_reason": "length"}]}
    assert apply_stop(completion, [";"], chat=False)["choices"][0] == {"text": " a", "finish_reason": "stop"}


# -- plans ------------------------------------------------------------------------------
def test_a_plan_adapts_what_the_backend_refuses():
    request = Request("completions", {"prompt": ["a", "b"], "max_tokens": 9, "temperature": 0, "stop": "."})
    plan = plan_for(request, "chat", frozenset({"max_tokens", "temperature", "stop"}), "")
    assert plan.api == "chat" and len(plan.calls) == 2
    assert plan.adjusted == ("max_tokens", "temperature", "stop") and plan.stops == (".",)
    assert all(call.keys() == {"messages", "max_completion_tokens"} and call["max_completion_tokens"] == 9
               for call in plan.calls)
    same = plan_for(request, "completions", frozenset({"temperature"}), "")
    assert same.calls == (request.params,) and same.adjusted == ()


def test_logprobs_refused_takes_top_logprobs_with_it():
    request = Request("chat", {"messages": [], "logprobs": True, "top_logprobs": 2})
    plan = plan_for(request, "chat", frozenset({"logprobs"}), "")
    assert plan.adjusted == ("logprobs", "top_logprobs") and plan.calls == ({"messages": []},)


def test_knowledge_switches_an_auto_backend_once_and_never_an_explicit_one():
    knowledge, auto, chat = Knowledge(), backend("a"), backend("c", api="chat")
    assert knowledge.api(auto) == "chat" and knowledge.api(chat) == "chat"
    assert knowledge.switch_api(auto, "chat") and knowledge.api(auto) == "completions"
    assert not knowledge.switch_api(auto, "chat")  # a concurrent request learned it already
    assert knowledge.refuse(auto, "stop") and not knowledge.refuse(auto, "stop")
    assert knowledge.refused(auto) == {"stop"} and knowledge.refused(chat) == set()


def test_a_route_serves_the_named_model_and_a_chat_request_only_where_chat_is_spoken():
    east, west, legacy = backend("east", model="m"), backend("west", model="m"), backend("old", api="completions")
    knowledge = Knowledge()
    route = Route.for_request(Request("chat", {"messages": []}), [east, west, legacy], knowledge, "m")
    assert route.names == {"east", "west"} and route.excluded == {"old"}
    first = Route.for_request(Request("completions", {"prompt": ["a", "b", "c"]}), [legacy, east], knowledge, None)
    assert first.names == {"old"} and first.calls == 1  # a completions deployment takes every prompt at once
    fanned = Route.for_request(Request("completions", {"prompt": ["a", "b", "c"]}), [east], knowledge, None)
    assert fanned.calls == 3
    with pytest.raises(AppError) as unknown:
        Route.for_request(Request("chat", {"messages": []}), [east], knowledge, "nope")
    assert (unknown.value.status, unknown.value.code, unknown.value.param) == (404, "model_not_found", "model")
    with pytest.raises(AppError) as no_chat:
        Route.for_request(Request("chat", {"messages": []}), [legacy], knowledge, None)
    assert (no_chat.value.status, no_chat.value.code) == (502, "upstream_misconfigured")
    assert "AZURE_OPENAI_API" in no_chat.value.message
