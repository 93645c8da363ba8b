"""Streamed chunks in the caller's contract: stop sequences the app applies, merged prompts, usage."""

from __future__ import annotations

import pytest

from shared.contract.stream import StopFilter, StreamShaper


def chat_chunk(text=None, *, index=0, finish=None, role=False) -> dict:
    delta = {"role": "assistant"} if role else {}
    if text is not None:
        delta["content"] = text
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5-mini",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}], "usage": None}


USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5-mini", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}


@pytest.mark.parametrize("pieces, sent", [
    (["Hello", ". World"], "Hello"),
    (["Hel", "lo", ".", " World"], "Hello"),
    (["a<", "/e", "nd>b"], "a"),  # a stop sequence split across chunks
    (["a<", "/x"], "a</x"),  # held back, then let go when it turned out not to be one
])
def test_no_text_past_a_stop_sequence_is_ever_sent(pieces, sent):
    stops = StopFilter((".", "</end>"))
    out, stopped = "", False
    for piece in pieces:
        text, stopped = stops.feed(0, piece)
        out += text
        if stopped:
            break
    if not stopped:
        out += stops.flush(0)
    assert out == sent
    assert all(not stop or stop not in out for stop in (".", "</end>"))


def test_held_text_is_let_go_at_the_end_and_the_stream_stops_once_every_choice_has():
    shaper = StreamShaper(kind="chat", api="chat", n=1, calls=1, stops=("END",), wants_usage=False)
    assert shaper.shape(0, chat_chunk(role=True))[0]["choices"][0]["delta"] == {"role": "assistant"}
    [held] = shaper.shape(0, chat_chunk("one EN"))
    assert held["choices"][0]["delta"]["content"] == "one " and "usage" not in held
    [done] = shaper.shape(0, chat_chunk("D two"))
    assert done["choices"][0] == {"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}
    assert shaper.all_stopped and shaper.shape(0, chat_chunk(" more")) == []
    natural = StreamShaper(kind="chat", api="chat", n=1, calls=1, stops=("END",), wants_usage=False)
    natural.shape(0, chat_chunk("ab E"))
    [last] = natural.shape(0, chat_chunk(None, finish="length"))
    assert last["choices"][0]["delta"] == {"content": "E"} and natural.finish_reasons == {0: "length"}


def test_prompts_on_a_chat_deployment_merge_into_text_completion_chunks():
    shaper = StreamShaper(kind="completions", api="chat", n=2, calls=2, stops=(), wants_usage=True)
    [chunk] = shaper.shape(1, chat_chunk("hi", index=1))
    assert chunk["object"] == "text_completion"
    assert chunk["choices"] == [{"index": 3, "text": "hi", "finish_reason": None, "logprobs": None}]
    annotations = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    [filtered] = shaper.shape(1, annotations)
    assert filtered["prompt_filter_results"][0]["prompt_index"] == 1 and filtered["object"] == ""
    assert shaper.shape(0, USAGE) == [] and shaper.shape(1, USAGE) == []
    [summed] = shaper.closing(chunk)
    assert summed["usage"] == {"prompt_tokens": 14, "completion_tokens": 10, "total_tokens": 24}


def test_usage_is_passed_on_only_when_the_caller_asked():
    asked = StreamShaper(kind="chat", api="chat", n=1, calls=1, stops=(), wants_usage=True)
    assert asked.shape(0, USAGE) == [USAGE] and asked.usage["total_tokens"] == 12
    silent = StreamShaper(kind="chat", api="chat", n=1, calls=1, stops=(), wants_usage=False)
    assert silent.shape(0, USAGE) == [] and silent.usage["total_tokens"] == 12
    assert silent.closing(None) == []


def test_the_usage_chunk_of_one_prompt_on_a_chat_deployment_is_in_the_completions_contract():
    shaper = StreamShaper(kind="completions", api="chat", n=1, calls=1, stops=(), wants_usage=True)
    [usage] = shaper.shape(0, {**USAGE, "usage": {**USAGE["usage"], "completion_tokens_details": {"x": 1}}})
    assert usage["object"] == "text_completion" and usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


@pytest.mark.parametrize("index", ["1", -1, 1.0, None])
def test_a_chunk_whose_choice_index_is_not_a_count_is_unreadable(index):
    from shared.upstream.streaming import readable_chunk

    assert not readable_chunk(chat_chunk("x", index=index))
    assert readable_chunk(chat_chunk("x", index=3)) and readable_chunk(USAGE)
