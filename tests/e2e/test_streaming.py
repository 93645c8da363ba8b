"""Streams through the dev host, read as raw server-sent events over real sockets: their shape,
the usage chunk, failures before and after the first byte, a stall, a caller who leaves, a stop
the app applies, several prompts merged into one stream. (The SDKs' view is test_sdk.py.)"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from support.devhost_process import DevHostProcess

CHAT, REASONING = "gpt-4.1-mini", "gpt-5-mini"
USER = [{"role": "user", "content": "The food was delicious and the waiter"}]
BETWEEN_CHUNKS = 1.5  # AZURE_OPENAI_TIMEOUT: the longest pause between two chunks


@pytest.fixture(scope="module")
def host(running_emulators):
    emulators = running_emulators
    entry = {"endpoint": emulators.openai.endpoint, "auth": "key", "api_key_setting": "EMULATOR_KEY"}
    backends = [{**entry, "name": "chat", "deployment": CHAT}, {**entry, "name": "reasoning", "deployment": REASONING}]
    host = DevHostProcess("--no-storage", env={
        "AZURE_OPENAI_BACKENDS": json.dumps(backends), "EMULATOR_KEY": emulators.openai.api_key,
        "AZURE_OPENAI_TIMEOUT": str(BETWEEN_CHUNKS), "AZURE_OPENAI_MAX_RETRIES": "1"})
    yield host
    assert host.stop() == 0


@pytest.fixture
def emulator(host, running_emulators):
    control = running_emulators.openai_control
    control.reset()
    control.config(latency_ms=0, stream_chunk_ms=5, rpm=None, tpm=None)
    yield control
    control.reset()
    control.config(stream_chunk_ms=0)


def sse(host, path: str, body: dict) -> tuple[requests.Response, list]:
    """POST ``body`` with ``stream: true``; the answer and its ``data:`` events, in order (``[DONE]`` as
    the string). A JSON answer (an error before the first byte) has no events."""
    reply = requests.post(host.url + path, json={**body, "stream": True}, stream=True, timeout=30)
    if not reply.headers["content-type"].startswith("text/event-stream"):
        return reply, []
    events, text = [], reply.content.decode()
    for block in text.split("\n\n"):
        if block:
            assert block.startswith("data: ") and "\n" not in block, block  # one data line per event
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return reply, events


def content(events: list) -> str:
    return "".join(choice["delta"].get("content") or "" for e in events if isinstance(e, dict)
                   for choice in e.get("choices", []))


# -- shape ---------------------------------------------------------------------------------------------
def test_a_chat_stream_is_the_services_chunks_ending_with_done(host, emulator):
    reply, events = sse(host, f"/api/openai/deployments/{CHAT}/chat/completions?api-version=2025-04-01-preview",
                        {"messages": USER})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["x-completions-backend"] == "chat" and reply.headers["x-request-id"]
    assert reply.headers.get("content-length") is None  # sent as it comes
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = events[:-1]
    assert chunks[0]["choices"] == [] and chunks[0]["prompt_filter_results"]  # Azure's prompt-filter chunk
    assert all(c["object"] == "chat.completion.chunk" for c in chunks[1:])
    assert content(chunks) and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any(c.get("usage") for c in chunks)  # not asked for: not passed on (the app asked for its own count)


def test_the_usage_chunk_comes_when_the_caller_asks(host, emulator):
    _, events = sse(host, "/api/v1/chat/completions", {"model": CHAT, "messages": USER,
                                                       "stream_options": {"include_usage": True}})
    usage = events[-2]
    assert events[-1] == "[DONE]" and usage["choices"] == []
    assert usage["usage"]["prompt_tokens"] > 0 and usage["usage"]["total_tokens"] == \
        usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    host.wait_for_log(rf"status=200 code=ok .*prompt_tokens={usage['usage']['prompt_tokens']} "
                      rf"completion_tokens={usage['usage']['completion_tokens']} ")


def test_several_prompts_on_a_chat_deployment_stream_as_one(host, emulator):
    body = {"model": CHAT, "prompt": ["The food was", "The waiter was"], "max_tokens": 12}
    _, events = sse(host, "/api/completions", {**body, "stream_options": {"include_usage": True}})
    chunks = [e for e in events[:-1] if e.get("choices")]
    assert events[-1] == "[DONE]" and {c["object"] for c in chunks} == {"text_completion"}
    assert {choice["index"] for c in chunks for choice in c["choices"]} == {0, 1}
    finished = {choice["index"]: choice["finish_reason"] for c in chunks for choice in c["choices"]
                if choice.get("finish_reason")}
    assert set(finished) == {0, 1}
    [usage] = [e["usage"] for e in events[:-1] if e.get("usage")]  # both prompts' usage, summed into one
    whole = requests.post(host.url + "/api/completions", json=body, timeout=30).json()
    assert usage["prompt_tokens"] == whole["usage"]["prompt_tokens"] and usage["completion_tokens"] > 0


def test_a_stop_the_reasoning_deployment_refuses_is_applied_mid_stream(host, emulator):
    reply, events = sse(host, "/api/chat/completions", {"model": REASONING, "messages": USER, "stop": ["."],
                                                        "max_tokens": 300})
    assert reply.status_code == 200 and reply.headers["x-completions-adjusted"] == "max_tokens,stop"
    text = content(events)
    assert text and "." not in text and events[-1] == "[DONE]"
    assert [c["choices"][0]["finish_reason"] for c in events[:-1] if c.get("choices")][-1] == "stop"
    # and the deployment was told to stop at once: the rest of its answer was never generated
    assert wait_for_cut(emulator)["chunks_sent"] < wait_for_cut(emulator)["chunks_total"]


# -- failures --------------------------------------------------------------------------------------------
def test_a_failure_before_the_first_byte_is_a_json_error_with_its_status(host, emulator):
    emulator.faults({"status": 429, "retry_after": 1}, {"status": 429, "retry_after": 1})
    reply, events = sse(host, "/api/v1/chat/completions", {"model": CHAT, "messages": USER})
    assert reply.status_code == 429 and reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]["code"] == "rate_limited" and events == []
    assert reply.headers["retry-after"] == "1" and 0 < int(reply.headers["retry-after-ms"]) <= 1000
    time.sleep(1.1)  # the backend's cooldown passes


def test_before_the_first_byte_a_failure_is_retried_as_today(host, emulator):
    emulator.faults({"status": 503, "retry_after": 1})
    reply, events = sse(host, "/api/v1/chat/completions", {"model": CHAT, "messages": USER})
    assert reply.status_code == 200 and events[-1] == "[DONE]" and content(events)
    assert emulator.stats()["requests_by_status"].get("503") == 1


@pytest.mark.parametrize("fault", ["error", "drop"])
def test_after_the_first_byte_a_failure_is_one_error_event_and_the_end(host, emulator, fault):
    emulator.faults({"stream": fault, "after_chunks": 3})
    reply, events = sse(host, "/api/v1/chat/completions", {"model": CHAT, "messages": USER, "max_tokens": 40})
    assert reply.status_code == 200
    *chunks, last = events
    assert "[DONE]" not in events and chunks and all("error" not in c for c in chunks)
    assert set(last) == {"error"} and last["error"]["code"] == "upstream_error" and last["error"]["message"]
    assert emulator.stats()["chat_requests"] == 1  # no retry after the first byte
    host.wait_for_log(r"status=200 code=upstream_error")


def test_a_stall_between_chunks_ends_the_stream_with_a_timeout_event(host, emulator):
    emulator.faults({"stream": "stall", "after_chunks": 3})
    started = time.monotonic()
    _, events = sse(host, "/api/v1/chat/completions", {"model": CHAT, "messages": USER, "max_tokens": 40})
    took = time.monotonic() - started
    assert events[-1]["error"]["code"] == "upstream_timeout" and "[DONE]" not in events
    assert BETWEEN_CHUNKS <= took < BETWEEN_CHUNKS + 5
    assert wait_for_cut(emulator)["operation"] == "chat"  # and the stalled upstream connection was closed


# -- a caller who leaves ------------------------------------------------------------------------------------
def test_a_caller_who_leaves_stops_the_upstream_stream_within_a_second(host, emulator):
    emulator.config(stream_chunk_ms=50)
    body = json.dumps({"model": CHAT, "messages": USER, "max_tokens": 400, "stream": True}).encode()
    host_part = host.url.removeprefix("http://")
    address = host_part.split(":")
    with socket.create_connection((address[0], int(address[1])), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: " + host_part.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        received = b""
        while received.count(b"data: ") < 4:  # the stream is flowing
            chunk = sock.recv(65536)
            assert chunk, received  # (the host closed the connection)
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        left_at = time.time()
    cut = wait_for_cut(emulator)
    assert cut["chunks_sent"] < cut["chunks_total"]  # the deployment stopped generating
    assert cut["closed_seen_at"] - left_at < 1.0, cut
    host.wait_for_log(r"status=200 code=client_closed")
    # and its concurrency slot is back: the next request is served at once
    emulator.config(stream_chunk_ms=0)
    assert sse(host, "/api/v1/chat/completions", {"model": CHAT, "messages": USER})[1][-1] == "[DONE]"


def wait_for_cut(emulator, timeout: float = 5.0) -> dict:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        cuts = emulator.stats()["streams_cut"]
        if cuts and cuts[-1]["stopped_at"]:
            return cuts[-1]
        time.sleep(0.05)
    raise AssertionError(f"the emulator saw no stream cut within {timeout} s: {emulator.stats()['streams']}")


def test_a_caller_who_hangs_up_before_the_answer_leaves_the_invocation_to_finish(host, emulator):
    """As with the Functions host: the invocation is not cancelled; it ends, logs its line, and
    nothing is left waiting in the worker's route (the dev host then stops at once)."""
    emulator.config(latency_ms=1000)  # (within AZURE_OPENAI_TIMEOUT)
    body = json.dumps({"model": CHAT, "messages": USER}).encode()
    host_part = host.url.removeprefix("http://")
    address = host_part.split(":")
    with socket.create_connection((address[0], int(address[1])), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: " + host_part.encode() +
                     b"\r\nContent-Type: application/json\r\nx-request-id: hung-up-1\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.3)  # the invocation is running; the caller hangs up
    [line] = host.wait_for_log(r"completion request_id=hung-up-1 ", timeout=10)
    assert "status=200 code=ok" in line
    assert "CancelledError" not in host.log
