"""The HTTP contract of POST /api/completions and GET /api/health, end to end against the emulators."""

from __future__ import annotations

import json

import pytest
import requests

from shared.service import CompletionService
from support import spec
from support.app_client import SEED, get_health, post_completions


def emulator_stats(emulators) -> dict:
    return emulators.openai_control.stats()


def inject(emulators, *faults) -> None:
    emulators.openai_control.faults(*faults)


def direct_completion(emulators, body: dict) -> dict:
    """What the emulator itself answers for ``body`` (to compare the app's answer with)."""
    response = requests.post(
        f"{emulators.openai.base_url}/openai/deployments/gpt-35-turbo-instruct/completions",
        params={"api-version": "2024-10-21"}, json=body, headers={"api-key": emulators.openai.api_key}, timeout=5)
    return response.json()


def assert_error(reply, status: int, code: str, param: str | None = None) -> dict:
    assert reply.status == status, reply.body
    error = reply.body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == reply.headers["x-request-id"]
    if param is not None:
        assert error["param"] == param
    assert b"Traceback" not in reply.raw
    return error


# -- the seed scenario ------------------------------------------------------------
@pytest.mark.parametrize("auth", ["managed_identity", "key"])
def test_seed_scenario(configure_app, emulators, auth):
    configure_app(auth=auth)
    reply = post_completions(SEED)
    assert reply.status == 200, reply.body
    # Managed identity sends only the bearer token (never an api-key), key auth only the key.
    modes = emulator_stats(emulators)["auth_modes"]
    assert modes == ({"bearer": 1} if auth == "managed_identity" else {"api-key": 1})
    expected = direct_completion(emulators, SEED)["choices"][0]["text"]
    body = reply.body
    assert body["text"] == expected and body["text"].startswith(" ") and "." not in body["text"]
    assert body["object"] == "text_completion" and body["deployment"] == "gpt-35-turbo-instruct"
    assert body["model"] == "gpt-35-turbo-instruct" and body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["index"] == 0
    assert body["choices"][0]["logprobs"] is None
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert body["prompt_filter_results"][0]["prompt_index"] == 0
    assert "content_filter_results" in body["choices"][0]
    assert reply.headers["x-request-id"]


def test_response_without_filter_annotations_on_older_api_version(configure_app):
    configure_app(AZURE_OPENAI_API_VERSION="2023-05-15")
    body = post_completions(SEED).body
    assert "prompt_filter_results" not in body and "content_filter_results" not in body["choices"][0]


def test_every_optional_field_reaches_upstream(configure_app, emulators):
    configure_app()
    body = {"prompt": ["One", "Two"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "n": 2,
            "stop": ["\n", "zz"], "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "logit_bias": {"50256": -100}, "user": "u-1", "logprobs": 2, "echo": True, "suffix": "!",
            "best_of": 3, "seed": 42, "stream": False}
    reply = post_completions(body)
    assert reply.status == 200, reply.body
    assert len(reply.body["choices"]) == 4
    assert reply.body["choices"][0]["text"].startswith("One")  # echo
    assert reply.body["choices"][0]["logprobs"]["tokens"]
    direct = direct_completion(emulators, {k: v for k, v in body.items() if k != "stream"})
    assert [c["text"] for c in reply.body["choices"]] == [c["text"] for c in direct["choices"]]
    assert reply.body["usage"] == direct["usage"]


def test_request_id_is_echoed_and_sent_upstream(configure_app, emulators):
    configure_app()
    reply = post_completions(SEED, headers={"x-request-id": "abc-123"})
    assert reply.headers["x-request-id"] == "abc-123"
    assert emulator_stats(emulators)["last_client_request_id"] == "abc-123"
    odd = post_completions(SEED, headers={"x-request-id": "bad id with spaces\r\n"})
    assert odd.headers["x-request-id"] != "bad id with spaces\r\n" and len(odd.headers["x-request-id"]) == 32


# -- bad input: clear, coded, never upstream ---------------------------------------
def test_body_not_json_is_400_invalid_json(configure_app, emulators):
    configure_app()
    for raw in (b"", b"{", b"\xff\xfe", b"NaN", b'{"prompt": NaN}', b"[" * 100_000):
        assert_error(post_completions(raw=raw), 400, "invalid_json")
    assert emulator_stats(emulators)["completion_requests"] == 0


INVALID = [
    ({}, "prompt"), ({"prompt": None}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": []}, "prompt"),
    ({"prompt": [""]}, "prompt"), ({"prompt": ["a"] * 17}, "prompt"), ({"prompt": 3}, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"), ({"prompt": "x", "max_tokens": 16385}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"), ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5.0}, "max_tokens"),
    ({"prompt": "x", "temperature": -0.1}, "temperature"), ({"prompt": "x", "temperature": 2.01}, "temperature"),
    ({"prompt": "x", "temperature": False}, "temperature"), ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "n": 11}, "n"),
    ({"prompt": "x", "stop": []}, "stop"), ({"prompt": "x", "stop": ["a"] * 5}, "stop"),
    ({"prompt": "x", "stop": 3}, "stop"), ({"prompt": "x", "stop": ""}, "stop"),
    ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
    ({"prompt": "x", "frequency_penalty": -3}, "frequency_penalty"),
    ({"prompt": "x", "logit_bias": {"x": 1}}, "logit_bias"), ({"prompt": "x", "logit_bias": {"1": 101}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"1": 1.5}}, "logit_bias"), ({"prompt": "x", "logit_bias": [1]}, "logit_bias"),
    ({"prompt": "x", "user": 5}, "user"), ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "echo": "true"}, "echo"), ({"prompt": "x", "suffix": 1}, "suffix"),
    ({"prompt": "x", "n": 3, "best_of": 2}, "best_of"), ({"prompt": "x", "best_of": 21}, "best_of"),
    ({"prompt": "x", "seed": 1.5}, "seed"), ({"prompt": "x", "seed": 2 ** 63}, "seed"),
    ({"prompt": "x", "stream": "true"}, "stream"), ({"prompt": "x", "stream": "no"}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "model": "gpt-4", "zeta": 1}, "zeta"),
    ([], None), ("prompt", None), (5, None), (None, None),
]


@pytest.mark.parametrize(("body", "param"), INVALID)
def test_validation_errors_are_400_invalid_request_naming_the_param(configure_app, emulators, body, param):
    configure_app()
    error = assert_error(post_completions(body), 400, "invalid_request", param)
    if param == "zeta":
        assert "model" not in error["message"] and "zeta" in error["message"]  # model is known: the router's
    assert emulator_stats(emulators)["completion_requests"] == 0


def test_limits_are_settings(configure_app):
    configure_app(COMPLETIONS_MAX_TOKENS="10", COMPLETIONS_MAX_N="2", COMPLETIONS_MAX_PROMPTS="1",
                  COMPLETIONS_MAX_BEST_OF="3")
    assert_error(post_completions({"prompt": "x", "max_tokens": 11}), 400, "invalid_request", "max_tokens")
    assert_error(post_completions({"prompt": "x", "n": 3}), 400, "invalid_request", "n")
    assert_error(post_completions({"prompt": ["a", "b"]}), 400, "invalid_request", "prompt")
    assert_error(post_completions({"prompt": "x", "best_of": 4}), 400, "invalid_request", "best_of")
    assert post_completions({"prompt": "x", "max_tokens": 10, "n": 2, "best_of": 3}).status == 200


def test_body_over_the_size_limit_is_413(configure_app, emulators):
    configure_app(COMPLETIONS_MAX_BODY_BYTES="2048")
    assert_error(post_completions({"prompt": "x" * 3000}), 413, "payload_too_large")
    assert post_completions({"prompt": "x" * 1000}).status == 200


# -- upstream failures ----------------------------------------------------------
def test_content_filter_is_400_with_filter_details(configure_app, emulators):
    configure_app()
    error = assert_error(post_completions({"prompt": "please trip the content filter"}), 400, "content_filter",
                         "prompt")
    assert error["content_filter_result"]["violence"] == {"filtered": True, "severity": "high"}


def test_upstream_rejection_is_400_upstream_rejected(configure_app):
    configure_app()
    error = assert_error(post_completions({"prompt": "word " * 4090, "max_tokens": 100}), 400,
                         "upstream_rejected")
    assert "maximum context length" in error["message"]


def test_upstream_429_is_429_rate_limited_with_retry_after(configure_app, emulators):
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    inject(emulators, {"status": 429, "retry_after": 7})
    reply = post_completions(SEED)
    assert_error(reply, 429, "rate_limited")
    assert reply.headers["Retry-After"] == "7"


def test_upstream_timeout_is_504(configure_app, emulators):
    configure_app(AZURE_OPENAI_MAX_RETRIES="0", AZURE_OPENAI_TIMEOUT="0.3")
    inject(emulators, {"delay_ms": 1500})
    assert_error(post_completions(SEED), 504, "upstream_timeout")


@pytest.mark.parametrize(("case", "status", "code"), [
    ("wrong key", 502, "upstream_misconfigured"), ("unknown deployment", 502, "upstream_misconfigured"),
    ("403", 502, "upstream_misconfigured"), ("chat deployment", 502, "upstream_misconfigured"),
    ("500", 502, "upstream_error"), ("503", 503, "upstream_unavailable"), ("409", 502, "upstream_error"),
])
def test_other_upstream_failures_tell_misconfiguration_from_outage(configure_app, emulators, case, status, code):
    settings = {"AZURE_OPENAI_MAX_RETRIES": "0"}
    if case == "wrong key":
        settings["AZURE_OPENAI_API_KEY"] = "wrong"
    elif case == "unknown deployment":
        settings["AZURE_OPENAI_DEPLOYMENT"] = "missing"
    elif case == "chat deployment":
        settings["AZURE_OPENAI_DEPLOYMENT"] = "gpt-4o"
    else:
        inject(emulators, {"status": int(case)})
    configure_app(auth="key", **settings)
    error = assert_error(post_completions(SEED), status, code)
    assert emulators.openai.api_key not in error["message"]


def test_token_cannot_be_obtained_is_503_credential_unavailable(configure_app, emulators):
    emulators.identity_control.config(outage="error")
    configure_app(AZURE_OPENAI_DEADLINE="1.5")
    assert_error(post_completions(SEED), 503, "credential_unavailable")
    assert emulator_stats(emulators)["completion_requests"] == 0


class _ExplodingClient:
    async def complete(self, request, deadline, request_id, **options):
        raise RuntimeError("secret detail that must not leak")


def test_anything_unexpected_is_500_with_the_request_id_only(configure_app, monkeypatch, caplog):
    import function_app

    service = configure_app(auth="key")
    monkeypatch.setattr(function_app, "service", CompletionService(service.settings, _ExplodingClient()))
    reply = post_completions(SEED)
    error = assert_error(reply, 500, "internal_error")
    assert set(error) == {"code", "message", "request_id"}
    assert b"secret detail" not in reply.raw
    assert "secret detail" in caplog.text  # the log keeps the traceback for operators


# -- health -------------------------------------------------------------------------
def test_health_ok_without_endpoint_key_or_token(configure_app, emulators):
    configure_app(auth="managed_identity")
    reply = get_health()
    upstream = emulators.openai_control.stats()
    assert upstream["completion_requests"] + upstream["chat_requests"] == 0  # a liveness check: no upstream call
    assert emulators.identity_control.stats()["token_requests"] == 0  # and no token
    assert reply.status == 200 and reply.body["status"] == "ok"
    text = reply.raw.decode()
    assert emulators.openai.api_key not in text and emulators.openai.endpoint.rstrip("/") not in text
    assert reply.headers["x-request-id"]


def test_health_and_requests_503_when_not_configured(configure_app, emulators):
    configure_app(AZURE_OPENAI_ENDPOINT=None, AZURE_OPENAI_AUTH="key", AZURE_OPENAI_API_KEY=None,
                  AZURE_OPENAI_TIMEOUT="soon")
    health = get_health()
    assert health.status == 503 and health.body["status"] == "not_configured"
    assert set(health.body["settings"]) == {"AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_TIMEOUT"}
    error = assert_error(post_completions(SEED), 503, "not_configured")
    assert set(error["settings"]) == set(health.body["settings"])
    assert "soon" not in json.dumps(health.body) + json.dumps(error)
    assert emulator_stats(emulators)["completion_requests"] == 0


def test_responses_validate_against_the_spec_shapes(configure_app, emulators):
    """The app's 200 body keeps the spec's response fields (plus its own ``deployment`` and ``text``)."""
    configure_app()
    body = dict(post_completions({"prompt": ["a", "b"], "n": 2, "logprobs": 1}).body)
    body.pop("deployment"), body.pop("text")
    assert spec.response_errors("2024-10-21", body) == []


# -- issue 11: numbers of any size ------------------------------------------------------------------
NUMERIC_FIELDS = ["max_tokens", "temperature", "top_p", "n", "presence_penalty", "frequency_penalty", "logprobs",
                  "best_of", "seed"]


@pytest.mark.parametrize("digits", [400, 4300, 5000, 20000])
@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_a_huge_integer_in_any_number_field_is_400_naming_it(configure_app, emulators, field, digits):
    configure_app()
    for sign in (b"", b"-"):
        raw = b'{"prompt": "x", "' + field.encode() + b'": ' + sign + b"9" * digits + b"}"
        assert_error(post_completions(raw=raw), 400, "invalid_request", field)
    big_bias = b'{"prompt": "x", "logit_bias": {"50256": ' + b"9" * digits + b"}}"
    assert_error(post_completions(raw=big_bias), 400, "invalid_request", "logit_bias")
    assert emulator_stats(emulators)["completion_requests"] == 0


def test_an_answer_json_cannot_carry_is_a_coded_502_not_a_500():
    """What the client's scan lets through for large answers (nesting deeper than the encoder
    goes, or a NaN) is refused when the answer is encoded, as upstream_bad_response."""
    from shared.errors import AppError
    from shared.outcome import encode_answer as _encode_answer

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for body in ({"choices": [{"logprobs": deep}]}, {"choices": [{"logprobs": float("nan")}]}):
        with pytest.raises(AppError) as caught:
            _encode_answer(body)
        assert caught.value.status == 502 and caught.value.code == "upstream_bad_response"
    assert _encode_answer({"text": "é"}) == '{"text": "\\u00e9"}'  # ASCII: the queue's size limit counts it
