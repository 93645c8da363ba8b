"""What users' code does with the official ``openai`` SDK, against the app over loopback.

Runs in a virtual environment of its own with one SDK version (``make test`` makes
``.venv-sdk-latest`` and ``.venv-sdk-1x``); imports nothing of this project. Usage:
``python sdk_calls.py '<config JSON>'``; prints one JSON line: each scenario's result
(what came back, or which exception the SDK raised, with its status, code, param and
the response headers that drive its retries).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import openai
from openai import AzureOpenAI, OpenAI

CONFIG = json.loads(sys.argv[1])
BASE, KEY, API_VERSION = CONFIG["base"], CONFIG["key"], CONFIG["api_version"]
CHAT, REASONING, LEGACY = CONFIG["chat"], CONFIG["reasoning"], CONFIG["legacy"]
USER = [{"role": "user", "content": "The food was delicious and the waiter"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "x-request-id", "x-completions-backend",
           "x-completions-adjusted")


def azure(**options: Any) -> AzureOpenAI:
    return AzureOpenAI(azure_endpoint=BASE + "/api", api_version=API_VERSION, api_key=options.pop("api_key", KEY),
                       **options)


def v1(**options: Any) -> OpenAI:
    return OpenAI(base_url=BASE + "/api/v1", api_key=options.pop("api_key", KEY), **options)


def fault(*faults: dict) -> None:
    request = urllib.request.Request(CONFIG["emulator"] + "/_emulator/faults", data=json.dumps(list(faults)).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()


def headers_of(response: Any) -> dict[str, str | None]:
    return {name: response.headers.get(name) for name in HEADERS}


def chat(client: Any, model: str, **params: Any) -> dict:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=USER, **params)
    answer = raw.parse()
    message = answer.choices[0].message
    return {"content": message.content, "finish": answer.choices[0].finish_reason, "object": answer.object,
            "tool_calls": [[c.function.name, json.loads(c.function.arguments)] for c in message.tool_calls or []],
            "usage": answer.usage.model_dump() if answer.usage else None, "headers": headers_of(raw),
            "request_id": answer._request_id, "fields": sorted(answer.model_dump(exclude_unset=True))}


def completion(client: Any, model: str, **params: Any) -> dict:
    answer = client.completions.create(model=model, prompt=USER[0]["content"], stop=".", temperature=0, **params)
    return {"text": answer.choices[0].text, "object": answer.object, "total": answer.usage.total_tokens}


def streamed_chat(client: Any, model: str, **params: Any) -> dict:
    stream = client.chat.completions.create(model=model, messages=USER, stream=True, **params)
    texts, finishes, usage, empty = [], [], None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        if not chunk.choices:
            empty += 1
        for choice in chunk.choices:
            texts.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return {"text": "".join(texts), "finish": finishes, "usage": usage, "empty_chunks": empty}


def streamed_completion(client: Any, model: str, **params: Any) -> dict:
    stream = client.completions.create(model=model, prompt=USER[0]["content"], stream=True, **params)
    return {"text": "".join(c.choices[0].text for c in stream if c.choices)}


def langchain() -> dict:
    from langchain_openai import AzureChatOpenAI

    llm = AzureChatOpenAI(azure_endpoint=BASE + "/api", azure_deployment=CHAT, api_version=API_VERSION, api_key=KEY)
    return {"content": llm.invoke("The food was delicious and the waiter").content}


def langchain_v1() -> dict:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=BASE + "/api/v1", model=CHAT, api_key=KEY)
    return {"content": llm.invoke("The food was delicious and the waiter").content}


SCENARIOS: dict[str, Callable[[], Any]] = {
    "azure_chat": lambda: chat(azure(), CHAT, max_completion_tokens=50),
    "azure_completions": lambda: completion(azure(), CHAT),
    "azure_completions_legacy": lambda: completion(azure(), LEGACY),
    "azure_tools": lambda: chat(azure(), CHAT, tools=[WEATHER], tool_choice="required"),
    "azure_reasoning": lambda: chat(azure(), REASONING, max_tokens=300, temperature=0.3),
    "azure_models": lambda: sorted(m.id for m in azure().models.list()),
    "v1_chat": lambda: chat(v1(), CHAT),
    "v1_completions": lambda: completion(v1(), CHAT),
    "v1_models": lambda: sorted(m.id for m in v1().models.list()),
    "v1_model": lambda: v1().models.retrieve(REASONING).id,
    "azure_model": lambda: azure().models.retrieve(REASONING).id,
    "azure_unknown_model": lambda: azure().models.retrieve("no-such-model").id,
    "models_wrong_key": lambda: [m.id for m in v1(api_key="wrong").models.list()],
    "misconfigured": lambda: (fault({"status": 404}), chat(azure(max_retries=2), CHAT))[1],
    "stream_azure_completions": lambda: streamed_completion(azure(), CHAT, max_tokens=20),
    "v1_passthrough": lambda: chat(v1(), CHAT, extra_body={"store": False}),
    "wrong_key": lambda: chat(azure(api_key="wrong"), CHAT),
    "wrong_key_v1": lambda: chat(v1(api_key="wrong"), CHAT),
    "bad_param": lambda: chat(azure(max_retries=2), CHAT, temperature=5),
    "unknown_model": lambda: chat(v1(), "no-such-model"),
    "throttled": lambda: (fault({"status": 429, "retry_after_ms": 1500}), chat(azure(max_retries=0), CHAT))[1],
    "stream_chat": lambda: streamed_chat(azure(), CHAT, stream_options={"include_usage": True}),
    "stream_chat_v1": lambda: streamed_chat(v1(), CHAT),
    "stream_reasoning_stop": lambda: streamed_chat(v1(), REASONING, stop=["."], max_tokens=300),
    "stream_completions": lambda: streamed_completion(v1(), CHAT, max_tokens=20),
    "stream_error_event": lambda: (fault({"stream": "error", "after_chunks": 3}), streamed_chat(azure(), CHAT))[1],
    "function_key": lambda: chat(azure(default_headers={"x-functions-key": CONFIG.get("function_key", "")}), CHAT),
    "langchain": langchain,
    "langchain_v1": langchain_v1,
}


def run(name: str) -> dict:
    try:
        return {"ok": SCENARIOS[name]()}
    except openai.APIStatusError as error:
        return {"error": type(error).__name__, "status": error.status_code, "code": error.code, "param": error.param,
                "message": error.message[:300], "headers": headers_of(error.response)}
    except openai.APIError as error:  # e.g. an error event in the middle of a stream
        return {"error": type(error).__name__, "message": str(error.message)[:300],
                "code": getattr(error, "code", None)}
    except Exception as error:  # noqa: BLE001 - reported, for the test to read
        return {"exception": type(error).__name__, "message": str(error)[:300]}


if __name__ == "__main__":
    print(json.dumps({"version": openai.__version__, "results": {name: run(name) for name in CONFIG["scenarios"]}}))
