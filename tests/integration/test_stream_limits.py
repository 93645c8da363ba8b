"""Streams in process (the function called as the worker calls it, the emulator over loopback):
what happens at the host's functionTimeout, and a response nobody ever reads.
(Streams over the dev host's sockets: tests/e2e/test_streaming.py.)"""

from __future__ import annotations

import gc
import os
import time

import function_app
from shared.config.settings import load_settings
from shared.service import CompletionService
from support.app_client import LOOP, completions_request, post_stream, wait_for

CHAT = "gpt-4.1-mini"
BODY = {"messages": [{"role": "user", "content": "The food was delicious and the waiter"}], "max_tokens": 400,
        "stream": True}


def test_a_stream_ends_with_an_event_before_the_hosts_function_timeout(configure_app, emulators, monkeypatch, clock):
    configure_app(auth="key", AZURE_OPENAI_DEPLOYMENT=CHAT, AZURE_OPENAI_API="chat", AZURE_OPENAI_DEADLINE="1",
                  AZURE_OPENAI_TIMEOUT="30")
    # host.json's functionTimeout 12 s: the stream must end 10 s before it, so at 2 s here
    service = CompletionService.from_settings(load_settings(dict(os.environ), function_timeout=lambda: 12.0),
                                              clock=clock)
    monkeypatch.setattr(function_app, "service", service)
    emulators.openai_control.faults({"stream": "stall", "after_chunks": 5})  # and then nothing, for ever
    started = time.monotonic()
    try:
        streamed = post_stream("chat_completions", BODY)
    finally:
        LOOP.run(service.aclose())
    took = time.monotonic() - started
    assert streamed.status == 200 and 1.9 < took < 6
    assert streamed.events[-1]["error"]["code"] == "stream_timeout" and "[DONE]" not in streamed.events
    assert "functionTimeout" in streamed.events[-1]["error"]["message"] and len(streamed.events) >= 5
    assert wait_for(lambda: emulators.openai_control.stats()["streams"]["cut_by_client"] == 1, 5)


def test_a_streamed_response_nobody_reads_still_frees_its_slot_and_closes_upstream(configure_app, emulators):
    """The worker may drop a response without sending it (the caller left before it began): its
    concurrency slot and upstream connection must not be held for ever."""
    configure_app(auth="key", AZURE_OPENAI_DEPLOYMENT=CHAT, AZURE_OPENAI_API="chat", AZURE_OPENAI_MAX_CONCURRENCY="1",
                  AZURE_OPENAI_DEADLINE="5")
    emulators.openai_control.config(stream_chunk_ms=50)

    async def dropped() -> int:
        response = await function_app.chat_completions.build().get_user_function()(completions_request(BODY))
        status = response.status_code
        del response  # never iterated
        gc.collect()
        return status

    assert LOOP.run(dropped()) == 200
    assert wait_for(lambda: emulators.openai_control.stats()["streams"]["cut_by_client"] == 1, 5)
    streamed = post_stream("chat_completions", {**BODY, "max_tokens": 10})  # the one slot is free again
    assert streamed.status == 200 and streamed.events[-1] == "[DONE]"


def test_a_caller_who_stops_reading_loses_its_slot_and_upstream_when_the_streams_time_is_up(
        configure_app, emulators, monkeypatch, clock):
    """One slot; the first caller reads one event and then nothing: once its stream's time (2 s here)
    and the grace have passed, the upstream connection is closed and the slot serves the next caller."""
    import asyncio

    configure_app(auth="key", AZURE_OPENAI_DEPLOYMENT=CHAT, AZURE_OPENAI_API="chat", AZURE_OPENAI_DEADLINE="1",
                  AZURE_OPENAI_MAX_CONCURRENCY="1", AZURE_OPENAI_TIMEOUT="30")
    service = CompletionService.from_settings(load_settings(dict(os.environ), function_timeout=lambda: 12.0),
                                              clock=clock)
    monkeypatch.setattr(function_app, "service", service)
    emulators.openai_control.faults({"stream": "stall", "after_chunks": 3})  # the connection stays open
    user_function = function_app.chat_completions.build().get_user_function()

    async def scenario() -> tuple[int, int]:
        stalled = await user_function(completions_request(BODY))
        await anext(stalled.body_iterator)  # one event, then the caller reads no more
        await asyncio.sleep(3.5)  # past the stream's 2 s and the 1 s grace
        after = await user_function(completions_request({**BODY, "stream": False, "max_tokens": 5}))
        await stalled.body_iterator.aclose()
        return stalled.status_code, after.status_code

    try:
        assert LOOP.run(scenario()) == (200, 200)  # (without the cut: 503 overloaded, the slot still held)
        assert wait_for(lambda: emulators.openai_control.stats()["streams"]["cut_by_client"] == 1, 5), \
            emulators.openai_control.stats()["streams"]
    finally:
        LOOP.run(service.aclose())


def test_an_unreadable_first_chunk_is_a_failed_attempt_retried_as_without_a_stream(configure_app, emulators):
    """Before the first byte reaches the caller, a stream fails as a plain request does: retried."""
    configure_app(auth="key", AZURE_OPENAI_DEPLOYMENT=CHAT, AZURE_OPENAI_API="chat")
    for first in ("[1]", '{"choices": [{"index": "0", "delta": {}}]}'):
        emulators.openai_control.reset()
        emulators.openai_control.faults({"status": 200, "raw": f"data: {first}\n\ndata: [DONE]\n\n",
                                         "headers": {"Content-Type": "text/event-stream"}})
        streamed = post_stream("chat_completions", {**BODY, "max_tokens": 5})
        assert streamed.status == 200 and streamed.events[-1] == "[DONE]", streamed.events[-1]
        assert emulators.openai_control.stats()["chat_requests"] == 2
