"""The Azure OpenAI emulator's chat completions (chat and reasoning deployments) and streams,
with the real openai 0.28.1 client and with raw HTTP, checked against the spec copies."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import openai
import openai.error
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from devserver.emulators.chat_request import validate_chat
from devserver.emulators.deployments import DEFAULT_DEPLOYMENTS
from devserver.emulators.validation import RequestInvalid
from support import spec

API_VERSION = "2025-04-01-preview"
CHAT, REASONING, LEGACY = "gpt-4.1-mini", "gpt-5-mini", "gpt-35-turbo-instruct"
PROMPT = "The food was delicious and the waiter"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["location", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}, "hour24": {"type": "boolean"}},
    "required": ["zone", "hour24"]}}}


def url(emulators, deployment: str = CHAT, operation: str = "chat/completions", api_version: str = API_VERSION) -> str:
    return f"{emulators.openai.endpoint}openai/deployments/{deployment}/{operation}?api-version={api_version}"


def chat(emulators, body: dict, deployment: str = CHAT, **kwargs) -> requests.Response:
    assert spec.chat_request_errors(body) == [] or kwargs.pop("invalid", False)
    return requests.post(url(emulators, deployment, **kwargs), json=body,
                         headers={"api-key": emulators.openai.api_key}, timeout=10)


def ok(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert spec.chat_response_errors(body) == []
    return body


def refused(response: requests.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def sdk(emulators) -> dict:
    return {"api_type": "azure", "api_base": emulators.openai.endpoint, "api_version": API_VERSION,
            "api_key": emulators.openai.api_key}


def events(response: requests.Response) -> list:
    """The stream's ``data:`` payloads, parsed ([DONE] as the string)."""
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Transfer-Encoding"] == "chunked"
    out = []
    for block in response.text.split("\n\n"):
        if block:
            assert block.startswith("data: ")
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stats(emulators) -> dict:
    return emulators.openai_control.stats()


# -- chat deployments, with the real client -----------------------------------------
def test_openai_028_chat_completion_is_spec_valid_and_reports_the_model(emulators):
    response = openai.ChatCompletion.create(deployment_id=CHAT, messages=MESSAGES, **sdk(emulators)).to_dict_recursive()
    assert spec.chat_response_errors(response) == []
    assert response["object"] == "chat.completion" and response["id"].startswith("chatcmpl-")
    assert response["model"] == "gpt-4.1-mini-2025-04-14" and response["system_fingerprint"].startswith("fp_")
    choice = response["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": choice["message"]["content"], "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert set(choice["content_filter_results"]) >= {"hate", "violence", "protected_material_text"}
    assert response["prompt_filter_results"][0]["prompt_index"] == 0
    usage = response["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["prompt_tokens"] == 3 + 7 and usage["completion_tokens"] == len(choice["message"]["content"].split())
    counted = stats(emulators)
    assert counted["chat_requests"] == 1 and counted["completion_requests"] == 0
    assert counted["requests_by_deployment"] == {CHAT: {"chat": 1}}


def test_the_text_continues_the_last_user_message_as_completions_do(emulators):
    content = ok(chat(emulators, {"messages": MESSAGES}))["choices"][0]["message"]["content"]
    completion = requests.post(url(emulators, LEGACY, "completions"), json={"prompt": PROMPT, "max_tokens": 100},
                               headers={"api-key": emulators.openai.api_key}, timeout=10).json()
    assert content == completion["choices"][0]["text"]
    parts = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    assert ok(chat(emulators, {"messages": [{"role": "user", "content": parts}]}))["choices"][0]["message"][
        "content"] == content


def test_openai_028_acreate_and_a_managed_identity_token(emulators):
    async def call():
        return await openai.ChatCompletion.acreate(deployment_id=CHAT, messages=MESSAGES, **sdk(emulators))

    response = asyncio.run(call()).to_dict_recursive()
    assert spec.chat_response_errors(response) == [] and response["choices"][0]["message"]["content"]


def test_n_stop_and_max_tokens_on_a_chat_deployment(emulators):
    body = ok(chat(emulators, {"messages": MESSAGES, "n": 3, "temperature": 0.7}))
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) > 1
    assert "." not in ok(chat(emulators, {"messages": MESSAGES, "stop": ["."]}))["choices"][0]["message"]["content"]
    cut = ok(chat(emulators, {"messages": MESSAGES, "max_tokens": 2}))["choices"][0]
    assert cut["finish_reason"] == "length" and len(cut["message"]["content"].split()) == 2
    assert ok(chat(emulators, {"messages": MESSAGES, "max_completion_tokens": 2, "seed": 7}))["choices"][0][
        "message"]["content"] == cut["message"]["content"]


def test_logprobs_on_a_chat_deployment(emulators):
    choice = ok(chat(emulators, {"messages": MESSAGES, "logprobs": True, "top_logprobs": 2}))["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == choice["message"]["content"]
    assert all(len(t["top_logprobs"]) == 2 and t["top_logprobs"][0]["token"] == t["token"] for t in tokens)


def test_json_response_formats(emulators):
    content = ok(chat(emulators, {"messages": MESSAGES, "response_format": {"type": "json_object"}}))
    assert isinstance(json.loads(content["choices"][0]["message"]["content"]), dict)
    schema = {"type": "object", "required": ["city", "rating", "tags", "open"], "properties": {
        "city": {"type": "string"}, "rating": {"type": "integer", "minimum": 1}, "tags": {"type": "array",
                                                                                         "items": {"type": "string"}},
        "open": {"type": "boolean"}, "unused": {"type": "string"}}}
    body = ok(chat(emulators, {"messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"name": "review", "strict": True, "schema": schema}}}))
    answer = json.loads(body["choices"][0]["message"]["content"])
    assert set(answer) == {"city", "rating", "tags", "open"}
    assert isinstance(answer["city"], str) and isinstance(answer["rating"], int) and answer["open"] is True
    assert isinstance(answer["tags"], list) and all(isinstance(t, str) for t in answer["tags"])


# -- tools -------------------------------------------------------------------
def _calls(body: dict) -> list[dict]:
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    return choice["message"]["tool_calls"]


def test_a_weather_question_calls_the_function_with_its_required_arguments(emulators):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    calls = _calls(ok(chat(emulators, {"messages": ask, "tools": [WEATHER, TIME]})))
    assert len(calls) == 1 and calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert set(json.loads(calls[0]["function"]["arguments"])) == {"location", "unit"}
    answered = ask + [{"role": "assistant", "content": None, "tool_calls": calls},
                      {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"celsius": 21}'}]
    follow_up = ok(chat(emulators, {"messages": answered, "tools": [WEATHER, TIME]}))["choices"][0]
    assert follow_up["finish_reason"] == "stop" and follow_up["message"]["content"]


@pytest.mark.parametrize("tool_choice, prompt, parallel, called", [
    ("required", PROMPT, None, ["get_weather"]),
    ({"type": "function", "function": {"name": "get_time"}}, PROMPT, None, ["get_time"]),
    ("auto", "Use get_time and get_weather for Oslo", None, ["get_weather", "get_time"]),
    (None, "Use get_time and get_weather for Oslo", False, ["get_weather"]),
])
def test_which_functions_are_called(emulators, tool_choice, prompt, parallel, called):
    body = {"messages": [{"role": "user", "content": prompt}], "tools": [WEATHER, TIME]}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert [c["function"]["name"] for c in _calls(ok(chat(emulators, body)))] == called


def test_no_tool_call_without_a_reason(emulators):
    for body in ({"messages": MESSAGES, "tools": [WEATHER]},
                 {"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER], "tool_choice": "none"}):
        assert ok(chat(emulators, body))["choices"][0]["finish_reason"] == "stop"
    error = refused(chat(emulators, {"messages": MESSAGES, "tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}))
    assert error["param"] == "tool_choice"


# -- reasoning deployments ---------------------------------------------------------
def test_a_reasoning_deployment_spends_reasoning_tokens_within_max_completion_tokens(emulators):
    body = openai.ChatCompletion.create(deployment_id=REASONING, messages=MESSAGES, max_completion_tokens=500,
                                        reasoning_effort="low", **sdk(emulators)).to_dict_recursive()
    assert spec.chat_response_errors(body) == [] and body["model"] == "gpt-5-mini-2025-08-07"
    reasoning = body["usage"]["completion_tokens_details"]["reasoning_tokens"]
    content = body["choices"][0]["message"]["content"]
    assert reasoning > 0 and body["usage"]["completion_tokens"] == reasoning + len(content.split())
    assert ok(chat(emulators, {"messages": MESSAGES, "reasoning_effort": "low", "max_completion_tokens": 500},
                   REASONING))["usage"]["completion_tokens_details"]["reasoning_tokens"] == reasoning  # deterministic
    high = ok(chat(emulators, {"messages": MESSAGES, "reasoning_effort": "high"}, REASONING))
    assert high["usage"]["completion_tokens_details"]["reasoning_tokens"] > reasoning
    starved = ok(chat(emulators, {"messages": MESSAGES, "max_completion_tokens": reasoning}, REASONING))
    assert starved["choices"][0]["finish_reason"] == "length" and starved["choices"][0]["message"]["content"] == ""
    assert ok(chat(emulators, {"messages": MESSAGES, "temperature": 1, "top_p": 1.0}, REASONING))


@pytest.mark.parametrize("param, value, code, message", [
    ("max_tokens", 5, "unsupported_parameter",
     "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."),
    ("temperature", 0.2, "unsupported_value",
     "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is "
     "supported."),
    ("top_p", 0, "unsupported_value",
     "Unsupported value: 'top_p' does not support 0 with this model. Only the default (1) value is supported."),
    *[(name, value, "unsupported_parameter", f"Unsupported parameter: '{name}' is not supported with this model.")
      for name, value in (("stop", "."), ("presence_penalty", 0.5), ("frequency_penalty", 0.5), ("logprobs", True),
                          ("logit_bias", {"50256": -100}))],
])
def test_a_reasoning_deployment_refuses_parameters_as_azure_does(emulators, param, value, code, message):
    error = refused(chat(emulators, {"messages": MESSAGES, param: value}, REASONING))
    assert error == {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    assert spec.error_errors(spec.CHAT_VERSION, {"error": error}) == []


def test_refusals_name_one_parameter_in_a_fixed_order_and_echo_numbers_as_sent(emulators):
    body = {"messages": MESSAGES, "logit_bias": {"1": 1}, "stop": ".", "top_p": 0.5, "max_tokens": 3,
            "top_logprobs": 2, "logprobs": True}
    assert refused(chat(emulators, body, REASONING))["param"] == "max_tokens"
    del body["max_tokens"]
    assert refused(chat(emulators, body, REASONING))["param"] == "top_p"
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1E-8}'
    response = requests.post(url(emulators, REASONING), data=raw, timeout=10,
                             headers={"api-key": emulators.openai.api_key, "Content-Type": "application/json"})
    assert "does not support 1E-8 with this model" in refused(response)["message"]


def test_reasoning_effort_is_for_reasoning_deployments_and_recent_api_versions(emulators):
    body = {"messages": MESSAGES, "reasoning_effort": "low"}
    for deployment, version in ((CHAT, API_VERSION), (REASONING, "2024-10-21")):
        error = refused(chat(emulators, body, deployment, api_version=version))
        assert (error["code"], error["param"]) == ("unknown_parameter", "reasoning_effort")
    error = refused(chat(emulators, {"messages": MESSAGES, "reasoning_effort": "extreme"}, REASONING, invalid=True))
    assert error["code"] == "invalid_value"
    assert ok(chat(emulators, {"messages": [{"role": "developer", "content": "Be brief."}, MESSAGES[1]],
                               "reasoning_effort": "minimal"}, REASONING))


# -- wrong operation, filter, quota, faults, config -------------------------------------
def test_operation_not_supported_both_ways(emulators):
    assert chat(emulators, {"messages": MESSAGES}, LEGACY).json() == {"error": {
        "code": "OperationNotSupported",
        "message": "The chatCompletion operation does not work with the specified model, gpt-35-turbo-instruct. "
                   "Please choose different model and try again. You can learn more about which models can be used "
                   "with each operation here: https://go.microsoft.com/fwlink/?linkid=2197993."}}
    for deployment, model in ((CHAT, "gpt-4.1-mini"), (REASONING, "gpt-5-mini")):
        response = requests.post(url(emulators, deployment, "completions"), json={"prompt": PROMPT}, timeout=10,
                                 headers={"api-key": emulators.openai.api_key})
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith(
            f"The completion operation does not work with the specified model, {model}. Please choose")
    with pytest.raises(openai.error.InvalidRequestError, match="chatCompletion operation"):
        openai.ChatCompletion.create(deployment_id=LEGACY, messages=MESSAGES, **sdk(emulators))


def test_content_filter_quota_and_faults_apply_to_chat(emulators):
    emulators.openai_control.config(tpm=30)
    first = chat(emulators, {"messages": MESSAGES, "max_tokens": 10})  # 10 prompt tokens + 10
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "10"
    throttled = refused(chat(emulators, {"messages": MESSAGES, "max_tokens": 10}), 429)
    assert "ChatCompletions_Create Operation" in throttled["message"]
    emulators.openai_control.config(tpm=None)
    filtered = refused(chat(emulators, {"messages": [{"role": "user", "content": "please trip the content filter"}]}))
    assert filtered["code"] == "content_filter" and filtered["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert filtered["innererror"]["content_filter_result"]["violence"]["filtered"] is True
    emulators.openai_control.faults({"status": 503})
    assert chat(emulators, {"messages": MESSAGES}).status_code == 503
    emulators.openai_control.config(latency_ms=150)
    started = time.monotonic()
    ok(chat(emulators, {"messages": MESSAGES}))
    assert time.monotonic() - started >= 0.15
    assert stats(emulators)["requests_by_status"] == {"400": 1, "200": 2, "429": 1, "503": 1}


def test_deployments_are_configurable_and_reported(emulators):
    control = emulators.openai_control
    config = requests.get(emulators.openai.base_url + "/_emulator/config", timeout=5).json()
    assert {name: d["kind"] for name, d in config["deployments"].items()} == {
        LEGACY: "completions", "davinci-002": "completions", "gpt-4o": "chat", CHAT: "chat", REASONING: "reasoning"}
    assert config["deployments"][REASONING]["reports"] == "gpt-5-mini-2025-08-07" and config["stream_chunk_ms"] == 0
    changed = control.config(deployments={"o4-mini": {"kind": "reasoning", "model": "o4-mini", "version": "2025-04-16"},
                                          "davinci-002": None})
    assert "davinci-002" not in changed["deployments"]
    assert ok(chat(emulators, {"messages": MESSAGES}, "o4-mini"))["model"] == "o4-mini-2025-04-16"
    with pytest.raises(requests.HTTPError):
        control.config(deployments={"x": {"kind": "embeddings"}}, latency_ms=5)
    assert control.config()["latency_ms"] == 0  # all or nothing
    assert "davinci-002" in control.config(deployments=None)["deployments"]  # null: the defaults again


# -- streams ----------------------------------------------------------------
def _stream(emulators, body: dict, deployment: str = CHAT, **kwargs) -> requests.Response:
    return chat(emulators, {**body, "stream": True}, deployment, **kwargs)


def test_a_chat_stream_is_shaped_as_azure_sends_it(emulators):
    whole = ok(chat(emulators, {"messages": MESSAGES}))
    got = events(_stream(emulators, {"messages": MESSAGES, "stream_options": {"include_usage": True}}))
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert all(spec.chat_chunk_errors(c) == [] for c in chunks), [spec.chat_chunk_errors(c) for c in chunks]
    annotation, role, *content, last, usage = chunks
    assert (annotation["object"], annotation["choices"], annotation["usage"]) == ("", [], None)
    assert annotation["prompt_filter_results"][0]["content_filter_results"]["jailbreak"]["detected"] is False
    assert role["choices"][0]["delta"]["role"] == "assistant" and role["object"] == "chat.completion.chunk"
    assert all(len(c["choices"][0]["delta"]["content"].split()) == 1 for c in content)
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == whole["choices"][0]["message"]["content"]
    assert last["choices"][0]["finish_reason"] == "stop" and last["choices"][0]["delta"] == {}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(content)
    assert len({c["id"] for c in chunks[1:]}) == 1
    plain = events(_stream(emulators, {"messages": MESSAGES}))
    assert all("usage" not in c for c in plain[:-1]) and len(plain) == len(got) - 1
    assert stats(emulators)["streams"] == {"started": 2, "finished": 2, "cut_by_client": 0, "stalled": 0,
                                           "dropped": 0, "errored": 0}


def test_a_reasoning_stream_reports_reasoning_tokens_in_its_usage_chunk(emulators):
    got = events(_stream(emulators, {"messages": MESSAGES, "stream_options": {"include_usage": True}}, REASONING))
    assert got[-2]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    error = refused(chat(emulators, {"messages": MESSAGES, "stream_options": {"include_usage": True}}))
    assert error["param"] == "stream_options"


def test_tool_calls_stream_as_openai_streams_them(emulators):
    body = {"messages": [{"role": "user", "content": "get_time and get_weather please"}], "tools": [WEATHER, TIME]}
    calls = _calls(ok(chat(emulators, body)))
    chunks = events(_stream(emulators, body))[1:-1]
    assert all(spec.chat_chunk_errors(c) == [] for c in chunks)
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks]
    streamed: dict[int, dict] = {}
    for delta in filter(None, deltas):
        (part,) = delta
        call = streamed.setdefault(part["index"], {"id": part.get("id"), "name": "", "arguments": ""})
        call["name"] += part.get("function", {}).get("name", "")
        call["arguments"] += part["function"]["arguments"]
    assert [(c["id"], c["name"], c["arguments"]) for c in streamed.values()] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_028_streams_chat_and_completions(emulators):
    whole = ok(chat(emulators, {"messages": MESSAGES}))["choices"][0]["message"]["content"]
    streamed = list(openai.ChatCompletion.create(deployment_id=CHAT, messages=MESSAGES, stream=True, **sdk(emulators)))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed if c["choices"]) == whole

    async def collect():
        stream = await openai.ChatCompletion.acreate(deployment_id=CHAT, messages=MESSAGES, stream=True,
                                                     **sdk(emulators))
        return [chunk async for chunk in stream]

    chunks = asyncio.run(collect())
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == whole
    completion = events(requests.post(url(emulators, LEGACY, "completions"), json={"prompt": PROMPT, "stream": True},
                                      headers={"api-key": emulators.openai.api_key}, timeout=10))
    assert (completion[0]["object"], completion[0]["id"], completion[0]["choices"]) == ("", "", [])
    assert all(c["object"] == "text_completion" for c in completion[1:-1])
    assert completion[-2]["choices"][0]["finish_reason"] is not None


def test_stream_chunk_ms_paces_the_events(emulators):
    emulators.openai_control.config(stream_chunk_ms=20)
    with requests.post(url(emulators), json={"messages": MESSAGES, "stream": True}, stream=True, timeout=10,
                       headers={"api-key": emulators.openai.api_key}) as response:
        arrivals = [time.monotonic() for line in response.iter_lines() if line]
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) * 0.02 * 0.8


# -- mid-stream faults and clients that leave -------------------------------------------
def _open_stream(emulators, deployment: str = CHAT) -> socket.socket:
    """A raw connection with a streaming chat request sent."""
    body = json.dumps({"messages": MESSAGES, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", emulators.openai.port), timeout=5)
    path = url(emulators, deployment).split(str(emulators.openai.port), 1)[1]
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\napi-key: {emulators.openai.api_key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _read_events(sock: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(b"data: ") < count:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    return data


def _wait_for(predicate, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_an_error_fault_sends_one_error_event_and_ends_the_stream(emulators):
    emulators.openai_control.faults({"stream": "error", "after_chunks": 3})
    got = events(_stream(emulators, {"messages": MESSAGES}))
    assert len(got) == 4 and got[-1]["error"]["code"] == "server_error" and "[DONE]" not in got
    assert set(got[-1]["error"]) >= {"message", "type", "code"}
    emulators.openai_control.faults({"stream": "error", "after_chunks": 2})
    with pytest.raises(openai.error.APIError, match="Error occurred while streaming"):
        list(openai.ChatCompletion.create(deployment_id=CHAT, messages=MESSAGES, stream=True, **sdk(emulators)))
    assert stats(emulators)["streams"]["errored"] == 2


def test_a_drop_fault_resets_the_connection_mid_stream(emulators):
    emulators.openai_control.faults({"stream": "drop", "after_chunks": 3})
    sock = _open_stream(emulators)
    with pytest.raises(ConnectionResetError):
        while sock.recv(65536):
            pass
    sock.close()
    emulators.openai_control.faults({"stream": "drop", "after_chunks": 1})
    with pytest.raises(requests.exceptions.RequestException):
        _stream(emulators, {"messages": MESSAGES})
    assert stats(emulators)["streams"]["dropped"] == 2


def test_a_fault_before_the_stream_answers_instead_of_it(emulators):
    emulators.openai_control.faults({"status": 429, "retry_after": 1})
    response = _stream(emulators, {"messages": MESSAGES})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert stats(emulators)["streams"]["started"] == 0


@pytest.mark.parametrize("fault", [{"stream": "stall", "after_chunks": 2}, None])
def test_a_client_leaving_mid_stream_stops_the_generator_within_a_second(emulators, fault):
    """A stalled stream, or a slow one (stream_chunk_ms), cut by the client: the emulator sees
    the close, stops, and says when."""
    emulators.openai_control.config(stream_chunk_ms=200)
    if fault:
        emulators.openai_control.faults(fault)
    sock = _open_stream(emulators)
    _read_events(sock, 2)
    sock.close()
    left = time.time()
    cut = _wait_for(lambda: stats(emulators)["streams_cut"])[0]
    counted = stats(emulators)["streams"]
    assert counted["cut_by_client"] == 1 and counted["finished"] == 0 and counted["stalled"] == (1 if fault else 0)
    assert cut["operation"] == "chat" and cut["deployment"] == CHAT and cut["chunks_sent"] < cut["chunks_total"]
    assert 0 <= cut["closed_seen_at"] - left < 1.0 and cut["stopped_at"] - left < 1.0
    assert cut["noticed_within_ms"] < 1000



def test_openai_028_acreate_abandoned_mid_stream_is_seen_as_cut(emulators):
    emulators.openai_control.config(stream_chunk_ms=100)

    async def read_three() -> float:
        stream = await openai.ChatCompletion.acreate(deployment_id=CHAT, messages=MESSAGES, stream=True,
                                                     **sdk(emulators))
        async for chunk in stream:
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                break
        await stream.aclose()  # the SDK's session (and its connection) closes with the generator
        return time.time()

    left = asyncio.run(read_three())
    cut = _wait_for(lambda: stats(emulators)["streams_cut"])[0]
    assert cut["closed_seen_at"] - left < 1.0 and cut["chunks_sent"] < cut["chunks_total"]

# -- the emulator's checks agree with the spec -------------------------------------------
_CHAT_FIELDS = {
    "n": st.integers(1, 4), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2), "max_tokens": st.integers(1, 64),
    "max_completion_tokens": st.integers(1, 64), "seed": st.integers(-2 ** 63, 2 ** 63 - 1),
    "stop": st.text(min_size=1, max_size=3) | st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=4),
    "logit_bias": st.dictionaries(st.integers(0, 50256).map(str), st.integers(-100, 100), max_size=3),
    "user": st.text(max_size=10), "logprobs": st.booleans(), "stream": st.just(False),
    "tools": st.just([WEATHER]), "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
}
# No null: the emulator takes null as "not given", as the service does, where the GA spec marks some
# fields (frequency_penalty, presence_penalty, max_tokens) not nullable.
_EDGES = st.one_of(st.sampled_from([-3, -2.5, -1, 0, 0.5, 1, 2, 2.5, 129, 2 ** 63, True, "x", [], {}]),
                   st.lists(st.text(max_size=3), max_size=6))


@st.composite
def _chat_bodies(draw, off: bool) -> dict:
    role = draw(st.sampled_from(["user", "system", "developer"]))
    body: dict = {"messages": [{"role": role, "content": draw(st.text(min_size=1, max_size=20))},
                               {"role": "user", "content": draw(st.text(min_size=1, max_size=20))}]}
    for name in draw(st.lists(st.sampled_from(sorted(_CHAT_FIELDS)), unique=True)):
        body[name] = draw(_CHAT_FIELDS[name])
    if off:
        body[draw(st.sampled_from(sorted(_CHAT_FIELDS)))] = draw(_EDGES)
    return body


@settings(max_examples=150, deadline=None)
@given(_chat_bodies(off=False))
def test_valid_chat_requests_are_valid_for_the_spec_and_the_emulator(body):
    assert spec.chat_request_errors(body) == []
    validate_chat(body, DEFAULT_DEPLOYMENTS[CHAT], API_VERSION)


@settings(max_examples=300, deadline=None)
@given(_chat_bodies(off=True))
def test_what_the_emulator_accepts_the_spec_accepts(body):
    try:
        validate_chat(body, DEFAULT_DEPLOYMENTS[CHAT], API_VERSION)
    except RequestInvalid:
        return
    assert spec.chat_request_errors(body) == []


@pytest.mark.parametrize("operation", ["chat/completions", "completions"])
def test_deeply_nested_json_is_a_400_not_a_dropped_connection(emulators, operation):
    deployment = CHAT if operation.startswith("chat") else "gpt-35-turbo-instruct"
    response = requests.post(url(emulators, deployment, operation), data=b"[" * 200_000 + b"]" * 200_000,
                             headers={"api-key": emulators.openai.api_key, "content-type": "application/json"},
                             timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "BadRequest"
