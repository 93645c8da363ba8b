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
