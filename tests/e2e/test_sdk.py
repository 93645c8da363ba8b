"""The official openai SDKs (newest, and the last 1.x), unchanged, through the dev host: the
OpenAI-compatible routes, caller keys, the errors each SDK raises, streams.

Each SDK version lives in its own virtual environment (``make test`` builds them from
requirements-sdk-*.txt; the app keeps openai 0.28): ``tests/support/sdk_calls.py`` runs
there, once per version, against one dev host, and reports what each scenario returned."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from support.devhost_process import DevHostProcess

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "sdk_calls.py"
VENVS = {"latest": ROOT / ".venv-sdk-latest", "1x": ROOT / ".venv-sdk-1x"}
CALLER_KEY = "sdk-caller-key-" + "k" * 24
CHAT, REASONING, LEGACY = "gpt-4.1-mini", "gpt-5-mini", "gpt-35-turbo-instruct"
API_VERSION = "2025-04-01-preview"
SCENARIOS = ["azure_chat", "azure_completions", "azure_completions_legacy", "azure_tools", "azure_reasoning",
             "azure_models", "v1_chat", "v1_completions", "v1_models", "v1_model", "v1_passthrough", "wrong_key",
             "wrong_key_v1", "bad_param", "unknown_model", "stream_chat", "stream_chat_v1", "stream_reasoning_stop",
             "stream_completions", "stream_error_event", "throttled", "azure_model", "azure_unknown_model",
             "models_wrong_key", "stream_azure_completions"]
VERSIONS = {"latest": "3.63.0", "1x": "1.109.1"}  # requirements-sdk-*.txt


def python_of(version: str) -> Path:
    python = VENVS[version] / "bin" / "python"
    if not python.exists():
        if os.environ.get("SDK_TESTS_REQUIRED"):
            pytest.fail(f"{python} is missing: make test builds it from requirements-sdk-{version}.txt")
        pytest.skip(f"no {VENVS[version].name} (make test builds it)")
    return python


def run_sdk(version: str, base: str, emulators, scenarios: list[str], **extra) -> dict:
    config = {"base": base, "key": CALLER_KEY, "api_version": API_VERSION, "chat": CHAT, "reasoning": REASONING,
              "legacy": LEGACY, "emulator": emulators.openai.base_url, "scenarios": scenarios, **extra}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    env.update(NO_PROXY="*", no_proxy="*")
    done = subprocess.run([str(python_of(version)), str(SCRIPT), json.dumps(config)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def backends(emulators) -> str:
    entry = {"endpoint": emulators.openai.endpoint, "auth": "key", "api_key_setting": "EMULATOR_KEY"}
    return json.dumps([{**entry, "name": "chat", "deployment": CHAT},
                       {**entry, "name": "reasoning", "deployment": REASONING},
                       {**entry, "name": "legacy", "deployment": LEGACY, "api": "completions"}])


@pytest.fixture(scope="module")
def sdk_host(running_emulators):
    emulators = running_emulators
    emulators.openai_control.reset()
    emulators.openai_control.config(latency_ms=0, stream_chunk_ms=2, rpm=None, tpm=None)
    host = DevHostProcess("--no-storage", env={
        "AZURE_OPENAI_BACKENDS": backends(emulators), "EMULATOR_KEY": emulators.openai.api_key,
        "AZURE_OPENAI_ENDPOINT": emulators.openai.endpoint, "AZURE_OPENAI_MAX_RETRIES": "0",
        "COMPLETIONS_CALLER_KEYS": json.dumps({"sdk": hashlib.sha256(CALLER_KEY.encode()).hexdigest()})})
    yield host
    assert host.stop() == 0


@pytest.fixture(scope="module", params=["latest", "1x"])
def sdk(request, sdk_host, running_emulators):
    """The scenarios' results with one SDK version."""
    running_emulators.openai_control.reset()
    result = run_sdk(request.param, sdk_host.url, running_emulators, SCENARIOS)
    assert result["version"] == VERSIONS[request.param]  # the SDK the README says is tested
    result["host"] = sdk_host
    return result


def ok(sdk: dict, name: str):
    result = sdk["results"][name]
    assert "ok" in result, (sdk["version"], name, result)
    return result["ok"]


def failed(sdk: dict, name: str) -> dict:
    result = sdk["results"][name]
    assert "error" in result, (sdk["version"], name, result)
    return result


# -- what both clients call --------------------------------------------------------------------------
def test_azure_openai_client_chat_and_completions(sdk):
    answer = ok(sdk, "azure_chat")
    assert answer["content"] and answer["object"] == "chat.completion" and answer["finish"] == "stop"
    assert answer["headers"]["x-completions-backend"] == "chat" and answer["request_id"]
    assert "deployment" not in answer["fields"] and "backend" not in answer["fields"]  # the service's body only
    assert ok(sdk, "azure_completions")["text"] == " explained every dish on the menu with real enthusiasm"
    legacy = ok(sdk, "azure_completions_legacy")
    assert legacy["object"] == "text_completion" and legacy["text"].startswith(" explained")


def test_tools_through_the_sdk(sdk):
    assert ok(sdk, "azure_tools")["tool_calls"][0][0] == "get_weather"


def test_a_reasoning_deployment_adapts_and_says_so_in_a_header(sdk):
    answer = ok(sdk, "azure_reasoning")
    assert answer["headers"]["x-completions-adjusted"] == "max_tokens,temperature"
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_openai_client_with_a_base_url(sdk):
    assert ok(sdk, "v1_chat")["content"] and ok(sdk, "v1_completions")["object"] == "text_completion"
    assert ok(sdk, "v1_models") == ok(sdk, "azure_models") == sorted([CHAT, REASONING, LEGACY])
    assert ok(sdk, "v1_model") == ok(sdk, "azure_model") == REASONING  # /v1/models/{m}, /openai/models/{m}
    error = failed(sdk, "azure_unknown_model")
    assert (error["error"], error["code"], error["headers"]["x-should-retry"]) == ("NotFoundError", "model_not_found",
                                                                                   "false")
    assert failed(sdk, "models_wrong_key")["error"] == "AuthenticationError"  # the models routes check keys too
    assert ok(sdk, "v1_passthrough")["content"]  # a field the app does not know goes to the service


# -- the errors each SDK raises --------------------------------------------------------------------
def test_a_wrong_key_is_an_authentication_error(sdk):
    for name in ("wrong_key", "wrong_key_v1"):
        error = failed(sdk, name)
        assert (error["error"], error["status"], error["code"]) == ("AuthenticationError", 401, "invalid_api_key")
        assert error["headers"]["x-should-retry"] == "false"


def test_a_bad_parameter_is_a_bad_request_error_naming_it(sdk):
    error = failed(sdk, "bad_param")
    assert (error["error"], error["status"], error["param"]) == ("BadRequestError", 400, "temperature")
    assert error["headers"]["x-should-retry"] == "false"


def test_an_unknown_model_is_a_not_found_error(sdk):
    error = failed(sdk, "unknown_model")
    assert (error["error"], error["status"], error["code"]) == ("NotFoundError", 404, "model_not_found")


def test_throttled_is_a_rate_limit_error_with_the_retry_headers(sdk):
    error = failed(sdk, "throttled")
    assert (error["error"], error["status"], error["code"]) == ("RateLimitError", 429, "rate_limited")
    assert error["headers"]["retry-after"] == "2" and 0 < int(error["headers"]["retry-after-ms"]) <= 1500


# -- streams ----------------------------------------------------------------------------------------
def test_streams_through_both_clients(sdk):
    chat = ok(sdk, "stream_chat")
    assert chat["text"] and chat["finish"] == ["stop"] and chat["usage"]["total_tokens"] > 0
    assert chat["empty_chunks"] >= 2  # Azure's prompt filter chunk, and the usage chunk asked for
    plain = ok(sdk, "stream_chat_v1")
    assert plain["text"] and plain["usage"] is None and plain["empty_chunks"] == 1  # usage not asked for: not sent
    assert ok(sdk, "stream_completions")["text"] and ok(sdk, "stream_azure_completions")["text"]


def test_a_stop_the_reasoning_deployment_refuses_is_applied_to_the_stream(sdk):
    streamed = ok(sdk, "stream_reasoning_stop")
    assert streamed["finish"] == ["stop"] and "." not in streamed["text"] and streamed["text"]


def test_an_error_after_the_first_byte_is_an_error_event_the_sdk_raises(sdk):
    error = failed(sdk, "stream_error_event")
    assert (error["error"], error["code"]) == ("APIError", "upstream_error")
    assert "in the middle of the stream" in error["message"]


# -- other ways in -----------------------------------------------------------------------------------
def test_with_the_hosts_function_keys_the_sdk_sends_x_functions_key(running_emulators):
    """Without caller keys or App Service Authentication the routes keep auth level FUNCTION:
    the SDK passes the host's key in default_headers."""
    host = DevHostProcess("--no-storage", "--function-key", "host-key-123", env=running_emulators.app_settings())
    try:
        result = run_sdk("latest", host.url, running_emulators, ["function_key", "wrong_key"],
                         function_key="host-key-123")
    finally:
        assert host.stop() == 0
    assert ok(result, "function_key")["content"]
    assert failed(result, "wrong_key")["status"] == 401  # no x-functions-key: the host refuses


def test_langchain_azure_chat_openai_and_chat_openai(sdk_host, running_emulators):
    result = run_sdk("latest", sdk_host.url, running_emulators, ["langchain", "langchain_v1"])
    assert ok(result, "langchain")["content"] and ok(result, "langchain_v1")["content"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_misconfigured_backend_is_not_retried_by_the_sdk(sdk_host, running_emulators, version):
    """x-should-retry: false stops the SDK's own retries (max_retries=2) where retrying cannot help:
    the app answers once (one log line), however many retries the SDK was allowed."""
    def answered() -> int:
        return len(re.findall(r"completion request_id=\S+ .*code=upstream_misconfigured", sdk_host.log))

    running_emulators.openai_control.reset()
    before = answered()
    result = run_sdk(version, sdk_host.url, running_emulators, ["misconfigured"])
    error = failed(result, "misconfigured")
    assert (error["status"], error["code"], error["headers"]["x-should-retry"]) == (502, "upstream_misconfigured",
                                                                                    "false")
    time.sleep(0.2)  # (the host's log is read on a thread)
    assert answered() - before == 1
