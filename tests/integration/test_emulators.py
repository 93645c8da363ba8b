"""The Azure stand-ins, exercised with the real clients over real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import openai
import openai.error
import pytest
import requests
from azure.identity import ManagedIdentityCredential

from devserver.emulators import Emulators
from devserver.emulators.azure_openai import OpenAIServer
from devserver.emulators.identity import SYSTEM_ASSIGNED_CLIENT_ID
from devserver.emulators.runner import LEGACY_DEPLOYMENT as DEFAULT_DEPLOYMENT
from devserver.emulators.tokens import TokenSigner
from support import spec

SCOPE = "https://cognitiveservices.azure.com/.default"
SEED = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


def completions_url(emulators: Emulators, deployment: str = DEFAULT_DEPLOYMENT,
                    api_version: str | None = "2024-10-21") -> str:
    url = f"{emulators.openai.base_url}/openai/deployments/{deployment}/completions"
    return url + (f"?api-version={api_version}" if api_version else "")


def post(emulators: Emulators, body, *, headers=None, **url_args) -> requests.Response:
    headers = {"api-key": emulators.openai.api_key} if headers is None else headers
    return requests.post(completions_url(emulators, **url_args), json=body, headers=headers, timeout=10)


def stats(emulators: Emulators) -> dict:
    return requests.get(emulators.openai.base_url + "/_emulator/stats", timeout=5).json()


def inject(emulators: Emulators, *faults: dict) -> None:
    requests.post(emulators.openai.base_url + "/_emulator/faults", json=list(faults), timeout=5).raise_for_status()


def set_latency(emulators: Emulators, ms: int) -> None:
    requests.post(emulators.openai.base_url + "/_emulator/config", json={"latency_ms": ms},
                  timeout=5).raise_for_status()


@pytest.fixture
def identity_env(emulators, monkeypatch):
    monkeypatch.setenv("IDENTITY_ENDPOINT", emulators.identity.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", emulators.identity.header)
    return emulators


# -- the real clients ---------------------------------------------------------
@pytest.mark.parametrize("api_version", spec.VERSIONS)
def test_openai_028_with_key_gets_a_spec_valid_completion(emulators, api_version):
    response = openai.Completion.create(
        api_type="azure", api_base=emulators.openai.endpoint, api_version=api_version,
        api_key=emulators.openai.api_key, deployment_id=DEFAULT_DEPLOYMENT, **SEED)
    body = response.to_dict_recursive()
    assert spec.response_errors(api_version, body) == []
    assert body["object"] == "text_completion" and body["model"] == DEFAULT_DEPLOYMENT
    assert body["choices"][0]["text"].startswith(" ") and "." not in body["choices"][0]["text"]
    assert body["choices"][0]["finish_reason"] == "stop"
    annotated = "prompt_filter_results" in body
    assert annotated == (api_version == "2024-10-21")
    assert ("content_filter_results" in body["choices"][0]) == annotated
    assert stats(emulators)["auth_modes"] == {"api-key": 1}


@pytest.mark.parametrize("api_version", spec.VERSIONS)
def test_openai_028_with_a_managed_identity_token(identity_env, api_version):
    emulators = identity_env
    credential = ManagedIdentityCredential()
    token = credential.get_token(SCOPE)
    assert 3500 < token.expires_on - time.time() <= 3600
    response = openai.Completion.create(
        api_type="azure_ad", api_base=emulators.openai.endpoint, api_version=api_version,
        api_key=token.token, deployment_id=DEFAULT_DEPLOYMENT, **SEED)
    assert spec.response_errors(api_version, response.to_dict_recursive()) == []
    counters = stats(emulators)
    assert counters["auth_modes"] == {"bearer": 1}
    assert counters["tokens_issued"] == 1 and counters["distinct_bearer_tokens"] == 1


def test_user_assigned_identity_is_counted_by_client_id(identity_env):
    ManagedIdentityCredential(client_id="11111111-2222-3333-4444-555555555555").get_token(SCOPE)
    ManagedIdentityCredential().get_token(SCOPE)
    assert stats(identity_env)["tokens_by_client_id"] == {
        "11111111-2222-3333-4444-555555555555": 1, SYSTEM_ASSIGNED_CLIENT_ID: 1}


def test_success_headers_and_usage(emulators):
    response = post(emulators, {"prompt": ["one two", "three"], "max_tokens": 3})
    assert response.status_code == 200
    assert response.headers["apim-request-id"]
    body = response.json()
    assert body["usage"]["prompt_tokens"] == 3
    assert body["usage"]["completion_tokens"] == sum(len(c["text"].split()) for c in body["choices"])
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


# -- auth and routing errors, shaped as Azure shapes them ---------------------------
def _assert_error(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for version in spec.VERSIONS:
        assert spec.error_errors(version, body) == []
    return body["error"]


def test_wrong_key_is_401(emulators):
    _assert_error(post(emulators, SEED, headers={"api-key": "wrong"}), 401, "401")


def test_no_credentials_is_401(emulators):
    _assert_error(post(emulators, SEED, headers={}), 401, "401")


@pytest.mark.parametrize("token_kind", ["forged", "expired", "wrong audience", "garbage"])
def test_bad_bearer_tokens_are_401(emulators, token_kind):
    signer = emulators.openai.state.signer
    token = {
        "forged": TokenSigner("another secret").issue("https://cognitiveservices.azure.com", "x", 600)[0],
        "expired": signer.issue("https://cognitiveservices.azure.com", "x", -1)[0],
        "wrong audience": signer.issue("https://vault.azure.net", "x", 600)[0],
        "garbage": "not-a-jwt",
    }[token_kind]
    error = _assert_error(post(emulators, SEED, headers={"Authorization": f"Bearer {token}"}), 401, "401")
    assert "expired" in error["message"]


def test_missing_api_version_is_404_resource_not_found(emulators):
    assert _assert_error(post(emulators, SEED, api_version=None), 404, "404")["message"] == "Resource not found"


def test_unsupported_api_version_is_400(emulators):
    _assert_error(post(emulators, SEED, api_version="1999-01-01"), 400, "BadRequest")


def test_unknown_deployment_is_404_deployment_not_found(emulators):
    _assert_error(post(emulators, SEED, deployment="no-such-model"), 404, "DeploymentNotFound")


def test_chat_model_deployment_rejects_completions(emulators):
    _assert_error(post(emulators, SEED, deployment="gpt-4o"), 400, "OperationNotSupported")


INVALID_BODIES = [
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["ok", 1]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "x", "temperature": True}, "temperature"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": -0.1}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 129}, "n"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": "x", "n": 3, "best_of": 2}, "best_of"),
    ({"prompt": "x", "stream": True, "best_of": 2}, "stream"),
    ({"prompt": "x", "echo": "yes"}, "echo"),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "logit_bias": {"50256": 101}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"token": 1}}, "logit_bias"),
    ({"prompt": "x", "mystery": 1}, "mystery"),
]


@pytest.mark.parametrize(("body", "param"), INVALID_BODIES)
def test_invalid_bodies_are_400_with_azure_error_shape(emulators, body, param):
    error = _assert_error(post(emulators, body), 400, "BadRequest")
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"code", "message", "param", "type"}


@pytest.mark.parametrize("api_version", spec.VERSIONS)
def test_the_specs_own_example_is_accepted_by_the_emulator_and_the_app(emulators, api_version):
    from shared.config.settings import Limits
    from shared.contract.completions import validate_completion_request

    body = spec.example(api_version)["parameters"]["body"]
    assert spec.request_errors(api_version, body) == []
    assert validate_completion_request(body, Limits()) == body
    response = post(emulators, body, api_version=api_version)
    assert response.status_code == 200 and spec.response_errors(api_version, response.json()) == []


def test_the_spec_itself_rejects_what_the_emulator_rejects_on_schema_grounds():
    """Guard against the emulator drifting from the spec: pure schema violations above are
    violations of the 2024-10-21 request schema too (semantic rules like best_of >= n aside)."""
    semantic = {"best_of", "stream", "mystery", "logit_bias"}
    for body, param in INVALID_BODIES:
        if param not in semantic:
            assert spec.request_errors("2024-10-21", body), body


def test_body_that_is_not_json_is_400(emulators):
    response = requests.post(completions_url(emulators), data=b"{nope", timeout=5,
                             headers={"api-key": emulators.openai.api_key, "Content-Type": "application/json"})
    _assert_error(response, 400, "BadRequest")


def test_content_filter_is_the_services_400(emulators):
    error = _assert_error(post(emulators, {"prompt": "please trip the content filter now"}), 400, "content_filter")
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["violence"] == {"filtered": True, "severity": "high"}
    requests.post(emulators.openai.base_url + "/_emulator/config", json={"content_filter_phrase": "forbidden"},
                  timeout=5).raise_for_status()
    _assert_error(post(emulators, {"prompt": "a forbidden word"}), 400, "content_filter")
    assert post(emulators, {"prompt": "please trip the content filter now"}).status_code == 200


def test_context_length_is_enforced(emulators):
    error = _assert_error(post(emulators, {"prompt": "word " * 4000, "max_tokens": 200}), 400,
                          "context_length_exceeded")
    assert "4097" in error["message"]


# -- deterministic text ---------------------------------------------------------
def _text(emulators, **body) -> dict:
    response = post(emulators, body)
    assert response.status_code == 200, response.text
    return response.json()


def test_seed_prompt_reads_like_a_sentence_continuation(emulators):
    choice = _text(emulators, **SEED)["choices"][0]
    words = choice["text"].split()
    assert choice["finish_reason"] == "stop" and 3 <= len(words) <= 16
    assert choice["text"][0] == " " and choice["text"][1].islower() and not choice["text"].endswith(".")


def test_same_request_same_text_and_choices_differ(emulators):
    body = {"prompt": "Once upon a time", "n": 4, "temperature": 1, "max_tokens": 30}
    first, second = _text(emulators, **body), _text(emulators, **body)
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]
    assert len({c["text"] for c in first["choices"]}) > 1
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]


def test_max_tokens_caps_length(emulators):
    choice = _text(emulators, prompt="Once upon a time", max_tokens=2)["choices"][0]
    assert len(choice["text"].split()) == 2 and choice["finish_reason"] == "length"


def test_stop_sequences_truncate(emulators):
    full = _text(emulators, prompt="Tell me", max_tokens=50, temperature=0)["choices"][0]["text"]
    word = full.split()[2]
    cut = _text(emulators, prompt="Tell me", max_tokens=50, temperature=0, stop=["zzz", word])["choices"][0]
    assert cut["text"] == full[:full.index(word)] and cut["finish_reason"] == "stop"


def test_list_prompt_gives_n_choices_per_prompt(emulators):
    body = _text(emulators, prompt=["a b", "c d", "e f"], n=2, max_tokens=4)
    assert len(body["choices"]) == 6
    assert [r["prompt_index"] for r in body["prompt_filter_results"]] == [0, 1, 2]


def test_echo_suffix_and_logprobs_are_well_formed(emulators):
    body = _text(emulators, prompt="Hello there", echo=True, logprobs=3, max_tokens=5, suffix="!")
    choice = body["choices"][0]
    assert choice["text"].startswith("Hello there")
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"])
    assert all(1 <= len(top) <= 4 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0
    assert spec.response_errors("2024-10-21", body) == []


def test_best_of_returns_n_and_bills_best_of(emulators):
    body = _text(emulators, prompt="Hi", n=1, best_of=3, max_tokens=4)
    assert len(body["choices"]) == 1
    assert body["usage"]["completion_tokens"] > len(body["choices"][0]["text"].split())


def test_stream_is_server_sent_events_ending_with_done(emulators):
    response = post(emulators, {**SEED, "stream": True})
    assert response.headers["Content-Type"] == "text/event-stream"
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == _text(emulators, **SEED)["choices"][0]["text"]
    streamed = list(openai.Completion.create(
        api_type="azure", api_base=emulators.openai.endpoint, api_version="2024-10-21",
        api_key=emulators.openai.api_key, deployment_id=DEFAULT_DEPLOYMENT, stream=True, **SEED))
    assert "".join(c["choices"][0]["text"] for c in streamed if c["choices"]) == text


# -- fault injection and stats ------------------------------------------------------
def test_faults_are_served_in_order_one_per_request(emulators):
    inject(emulators, {"status": 429, "retry_after": 2, "retry_after_ms": 1500}, {"status": 500}, {"status": 502},
           {"status": 503}, {"status": 200, "raw": "not json"})
    throttled = post(emulators, SEED)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "2" and throttled.headers["retry-after-ms"] == "1500"
    _assert_error(throttled, 429, "429")
    _assert_error(post(emulators, SEED), 500, "InternalServerError")
    _assert_error(post(emulators, SEED), 502, "BadGateway")
    _assert_error(post(emulators, SEED), 503, "ServiceUnavailable")
    broken = post(emulators, SEED)
    assert broken.status_code == 200 and broken.text == "not json"
    assert post(emulators, SEED).status_code == 200
    counters = stats(emulators)
    assert counters["requests_by_status"] == {"429": 1, "500": 1, "502": 1, "503": 1, "200": 2}
    assert counters["completion_requests"] == 6 and counters["faults_pending"] == 0


def test_delay_fault_answers_late_and_latency_applies_to_all(emulators):
    inject(emulators, {"delay_ms": 300})
    started = time.monotonic()
    assert post(emulators, SEED).status_code == 200
    assert time.monotonic() - started >= 0.3
    set_latency(emulators, 150)
    started = time.monotonic()
    assert post(emulators, SEED).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_drop_fault_closes_the_connection(emulators):
    inject(emulators, {"drop": True})
    with pytest.raises(requests.ConnectionError):
        post(emulators, SEED)
    assert stats(emulators)["requests_by_status"] == {"dropped": 1}


def test_bad_fault_specs_are_rejected_whole(emulators):
    response = requests.post(emulators.openai.base_url + "/_emulator/faults",
                             json=[{"status": 500}, {"bogus": 1}], timeout=5)
    assert response.status_code == 400 and "bogus" in response.json()["error"]
    assert stats(emulators)["faults_pending"] == 0


def test_reset_clears_faults_and_counters(emulators):
    inject(emulators, {"status": 500})
    post(emulators, SEED, headers={"api-key": "wrong"})
    requests.post(emulators.openai.base_url + "/_emulator/reset", timeout=5).raise_for_status()
    counters = stats(emulators)
    assert counters["completion_requests"] == 0 and counters["faults_pending"] == 0
    assert counters["connections_accepted"] == 1  # the stats request's own


def test_connections_are_kept_alive_and_counted(emulators):
    before = stats(emulators)["connections_accepted"]
    with requests.Session() as session:
        for _ in range(5):
            session.post(completions_url(emulators), json=SEED, headers={"api-key": emulators.openai.api_key})
    assert stats(emulators)["connections_accepted"] - before == 2  # the session's one, and this stats call


def test_32_concurrent_clients_are_served_in_parallel(emulators):
    set_latency(emulators, 300)
    results: list[int] = []

    def one() -> None:
        results.append(post(emulators, SEED).status_code)

    threads = [threading.Thread(target=one) for _ in range(32)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert results == [200] * 32
    assert elapsed < 0.3 * 8, f"32 requests of 300 ms took {elapsed:.2f} s: not parallel"


# -- per-minute quotas --------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked():
    """An emulator of its own whose quota windows run on a clock the test moves."""
    clock = FakeClock()
    server = OpenAIServer(clock=clock).start()
    yield Emulators(server, None), clock
    server.stop()


def configure(emulators: Emulators, **config) -> requests.Response:
    return requests.post(emulators.openai.base_url + "/_emulator/config", json=config, timeout=5)


def remaining(response: requests.Response) -> tuple[int, int]:
    return (int(response.headers["x-ratelimit-remaining-requests"]),
            int(response.headers["x-ratelimit-remaining-tokens"]))


def test_without_quotas_no_ratelimit_headers_are_sent(emulators):
    response = post(emulators, SEED)
    assert response.status_code == 200
    assert not [name for name in response.headers if name.lower().startswith("x-ratelimit")]
    assert stats(emulators)["quota"] == {"rpm": None, "tpm": None}


def test_the_request_window_slides_and_retry_after_is_exact(clocked):
    emulators, clock = clocked
    assert configure(emulators, rpm=2).json()["rpm"] == 2
    first = post(emulators, SEED)
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert "x-ratelimit-remaining-tokens" not in first.headers  # no tpm limit
    clock.now += 10
    assert post(emulators, SEED).headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 10
    throttled = post(emulators, SEED)
    _assert_error(throttled, 429, "429")
    assert "call rate limit" in throttled.json()["error"]["message"]
    assert "Please retry after 40 seconds" in throttled.json()["error"]["message"]
    assert throttled.headers["retry-after-ms"] == "40000" and throttled.headers["Retry-After"] == "40"
    assert throttled.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now += 39.9995  # half a millisecond before the first request leaves the window
    almost = post(emulators, SEED)
    assert almost.status_code == 429
    assert almost.headers["retry-after-ms"] == "1" and almost.headers["Retry-After"] == "1"
    clock.now += 0.0005
    assert post(emulators, SEED).status_code == 200  # exactly when Retry-After said
    late = post(emulators, SEED)
    assert late.status_code == 429 and late.headers["retry-after-ms"] == "10000"  # the second one leaves at 70 s
    assert stats(emulators)["requests_by_status"] == {"200": 3, "429": 3}


def test_tokens_are_estimated_on_arrival_and_counted_over_the_minute(clocked):
    emulators, clock = clocked
    configure(emulators, tpm=100, rpm=1000)
    body = {"prompt": "one two", "max_tokens": 40}  # Azure counts prompt + max_tokens: 42
    assert remaining(post(emulators, body)) == (999, 58)
    clock.now += 30
    assert remaining(post(emulators, body)) == (998, 16)
    throttled = post(emulators, body)
    _assert_error(throttled, 429, "429")
    assert "token rate limit" in throttled.json()["error"]["message"]
    assert remaining(throttled) == (998, 16) and throttled.headers["retry-after-ms"] == "30000"
    small = post(emulators, {"prompt": "one two", "max_tokens": 14})  # 16 still fit
    assert small.status_code == 200 and remaining(small) == (997, 0)
    clock.now += 30  # the first 42 leave the window: 58 used, and this request's 42
    assert remaining(post(emulators, body)) == (997, 0)


@pytest.mark.parametrize(("body", "estimate"), [
    ({"prompt": "a b c"}, 3 + 16),  # max_tokens defaults to 16
    ({"prompt": ["a b", "c"], "max_tokens": 5}, 3 + 2 * 5),  # each prompt gets its completion
    ({"prompt": "a b", "max_tokens": 5, "best_of": 3}, 2 + 3 * 5),  # best_of candidates all count
    ({"prompt": "a b", "max_tokens": 5, "n": 2}, 2 + 2 * 5),  # best_of defaults to n
    ({"prompt": "", "max_tokens": 0}, 1),
])
def test_the_token_estimate_follows_the_request(emulators, body, estimate):
    configure(emulators, tpm=1000)
    assert post(emulators, body).headers["x-ratelimit-remaining-tokens"] == str(1000 - estimate)


def test_a_request_larger_than_the_token_quota_never_fits(clocked):
    emulators, clock = clocked
    configure(emulators, tpm=10)
    throttled = post(emulators, {"prompt": "x", "max_tokens": 10})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "60"
    assert throttled.headers["x-ratelimit-remaining-tokens"] == "10"
    clock.now += 120
    assert post(emulators, {"prompt": "x", "max_tokens": 10}).status_code == 429


def test_every_answer_about_a_deployment_carries_the_remaining_counts(emulators):
    configure(emulators, rpm=10, tpm=10_000)
    invalid = post(emulators, {"prompt": "x", "n": 0})  # rejected before it counts
    assert invalid.status_code == 400 and remaining(invalid) == (10, 10_000)
    filtered = post(emulators, {"prompt": "please trip the content filter", "max_tokens": 1})
    assert filtered.status_code == 400 and remaining(filtered) == (9, 10_000 - 6)  # the model saw it: counted
    streamed = post(emulators, {**SEED, "stream": True, "max_tokens": 4})
    assert streamed.status_code == 200 and remaining(streamed) == (8, 10_000 - 6 - 11)
    assert "x-ratelimit-remaining-requests" not in post(emulators, SEED, deployment="missing").headers


def test_the_429_is_the_services_and_the_openai_028_client_sees_it(emulators):
    configure(emulators, rpm=1)
    kwargs = dict(api_type="azure", api_base=emulators.openai.endpoint, api_version="2024-10-21",
                  api_key=emulators.openai.api_key, deployment_id=DEFAULT_DEPLOYMENT, **SEED)
    openai.Completion.create(**kwargs)
    with pytest.raises(openai.error.RateLimitError) as caught:
        openai.Completion.create(**kwargs)
    assert caught.value.http_status == 429
    headers = caught.value.headers
    assert 59_000 <= int(headers["retry-after-ms"]) <= 60_000 and headers["Retry-After"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "exceeded call rate limit" in str(caught.value)
    counters = stats(emulators)
    assert (counters["throttled"], counters["throttled_by"]) == (1, {"rpm": 1, "tpm": 0})
    assert counters["requests_by_status"] == {"200": 1, "429": 1}


def test_quotas_are_counted_per_deployment(emulators):
    configure(emulators, rpm=1)
    assert post(emulators, SEED).status_code == 200
    assert post(emulators, SEED, deployment="davinci-002").status_code == 200
    assert post(emulators, SEED).status_code == 429


def test_concurrent_requests_get_exactly_the_quota(emulators):
    configure(emulators, rpm=10)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post(emulators, SEED).status_code))
               for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 10 + [429] * 22
    assert stats(emulators)["throttled_by"] == {"rpm": 22, "tpm": 0}


def test_each_emulator_has_its_own_quota_and_accepts_the_shared_tokens():
    secret = "shared-secret-for-this-test"
    with Emulators.start(token_secret=secret) as first, Emulators.start(token_secret=secret, only="openai") as second:
        for emulators in (first, second):
            configure(emulators, rpm=1).raise_for_status()
        token = requests.get(first.identity.endpoint, timeout=5, params=TOKEN_QUERY,
                             headers={"X-IDENTITY-HEADER": first.identity.header}).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert post(first, SEED, headers=bearer).status_code == 200
        assert post(second, SEED, headers=bearer).status_code == 200  # its own window, the same identity
        assert post(first, SEED, headers=bearer).status_code == 429
        assert (stats(first)["throttled"], stats(second)["throttled"]) == (1, 0)


def test_reset_empties_the_window_but_keeps_the_limits(emulators):
    configure(emulators, rpm=1, tpm=500)
    post(emulators, SEED)
    assert post(emulators, SEED).status_code == 429
    requests.post(emulators.openai.base_url + "/_emulator/reset", timeout=5).raise_for_status()
    counters = stats(emulators)
    assert counters["quota"] == {"rpm": 1, "tpm": 500} and counters["throttled"] == 0
    assert post(emulators, SEED).status_code == 200
    assert configure(emulators, rpm=None, tpm=None).json()["rpm"] is None
    assert post(emulators, SEED).status_code == 200


@pytest.mark.parametrize("config", [{"rpm": 0}, {"rpm": -1}, {"rpm": "60"}, {"rpm": 1.5}, {"tpm": True},
                                    {"tpm": 0}, {"rpm": 5, "latency_ms": -1}, {"rps": 5}])
def test_bad_quota_config_is_rejected_whole(emulators, config):
    assert configure(emulators, **config).status_code == 400
    assert stats(emulators)["quota"] == {"rpm": None, "tpm": None} and stats(emulators)["latency_ms"] == 0


# -- the managed-identity endpoint ------------------------------------------------
TOKEN_QUERY = {"api-version": "2019-08-01", "resource": "https://cognitiveservices.azure.com"}


def _token_request(emulators, **params) -> requests.Response:
    return requests.get(emulators.identity.endpoint, params={**TOKEN_QUERY, **params}, timeout=5,
                        headers={"X-IDENTITY-HEADER": emulators.identity.header})


def test_token_endpoint_speaks_the_app_service_protocol(emulators):
    response = _token_request(emulators, client_id="abc")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert isinstance(body["expires_on"], str) and 3590 < int(body["expires_on"]) - time.time() <= 3600
    assert body["token_type"] == "Bearer" and body["client_id"] == "abc"
    assert body["resource"] == "https://cognitiveservices.azure.com"


@pytest.mark.parametrize(("case", "status"), [
    ("no header", 400), ("wrong header", 401), ("no resource", 400), ("old api-version", 400)])
def test_token_endpoint_rejects_bad_requests(emulators, case, status):
    params = dict(TOKEN_QUERY)
    headers = {"X-IDENTITY-HEADER": emulators.identity.header}
    if case == "no header":
        headers = {}
    elif case == "wrong header":
        headers = {"X-IDENTITY-HEADER": "wrong"}
    elif case == "no resource":
        params["resource"] = ""
    else:
        params["api-version"] = "2017-09-01"
    response = requests.get(emulators.identity.endpoint, params=params, headers=headers, timeout=5)
    assert response.status_code == status
    assert response.json()["statusCode"] == status


def test_token_lifetime_outages_and_faults(emulators):
    control = emulators.identity.base_url + "/_emulator"
    requests.post(control + "/config", json={"token_lifetime": 302}, timeout=5).raise_for_status()
    assert 300 < int(_token_request(emulators).json()["expires_on"]) - time.time() <= 302
    requests.post(control + "/config", json={"outage": "error"}, timeout=5).raise_for_status()
    assert _token_request(emulators).status_code == 500
    requests.post(control + "/config", json={"outage": "stall"}, timeout=5).raise_for_status()
    with pytest.raises(requests.Timeout):
        requests.get(emulators.identity.endpoint, timeout=0.3)
    requests.post(control + "/config", json={"outage": None}, timeout=5).raise_for_status()
    requests.post(control + "/faults", json=[{"status": 503}, {"drop": True}], timeout=5).raise_for_status()
    assert _token_request(emulators).status_code == 503
    with pytest.raises(requests.ConnectionError):
        _token_request(emulators)
    assert _token_request(emulators).status_code == 200
    counters = requests.get(control + "/stats", timeout=5).json()
    assert counters["tokens_issued"] == 2
    assert counters["requests_by_status"]["500"] == 1 and counters["requests_by_status"]["dropped"] == 1


def test_tokens_expire_on_the_openai_side_too(emulators):
    requests.post(emulators.identity.base_url + "/_emulator/config", json={"token_lifetime": 1},
                  timeout=5).raise_for_status()
    token = _token_request(emulators).json()["access_token"]
    assert post(emulators, SEED, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    time.sleep(1.1)
    _assert_error(post(emulators, SEED, headers={"Authorization": f"Bearer {token}"}), 401, "401")


# -- each alone, and the command line --------------------------------------------------
def test_each_emulator_starts_alone():
    with Emulators.start(only="identity") as identity_only:
        assert identity_only.openai is None
        assert set(identity_only.describe()) == {"identity_endpoint", "identity_header"}
    with Emulators.start(only="openai") as openai_only:
        assert openai_only.identity is None
        response = requests.post(completions_url(openai_only), json=SEED,
                                 headers={"api-key": openai_only.openai.api_key}, timeout=5)
        assert response.status_code == 200


def test_command_line_prints_one_json_line_then_serves():
    process = subprocess.Popen(
        [sys.executable, "-m", "devserver.emulators", "--port", "0", "--latency-ms", "5", "--token-lifetime", "400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(spec.SPECS.parents[2]))
    try:
        line = process.stdout.readline()
        info = json.loads(line)
        assert set(info) == {"endpoint", "api_key", "deployments", "identity_endpoint", "identity_header"}
        assert info["endpoint"].startswith("http://127.0.0.1:") and info["endpoint"].endswith("/")
        assert DEFAULT_DEPLOYMENT in info["deployments"]
        token = requests.get(info["identity_endpoint"], timeout=5,
                             params={"api-version": "2019-08-01", "resource": "https://cognitiveservices.azure.com"},
                             headers={"X-IDENTITY-HEADER": info["identity_header"]}).json()
        assert 390 < int(token["expires_on"]) - time.time() <= 400
        response = requests.post(f"{info['endpoint']}openai/deployments/{DEFAULT_DEPLOYMENT}/completions",
                                 params={"api-version": "2024-10-21"}, json=SEED, timeout=5,
                                 headers={"Authorization": f"Bearer {token['access_token']}"})
        assert response.status_code == 200
        assert requests.get(info["endpoint"] + "_emulator/stats", timeout=5).json()["latency_ms"] == 5
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


def test_the_quota_window_can_be_shortened_for_benchmarks(emulators):
    """Same limits per shorter window (make bench reaches a sustained state in seconds)."""
    control = emulators.openai_control
    assert control.config(rpm=2, quota_window_s=1)["quota_window_s"] == 1
    try:
        codes = [post(emulators, SEED).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        time.sleep(1.05)
        assert post(emulators, SEED).status_code == 200
        with pytest.raises(requests.HTTPError):
            control.config(quota_window_s=0)
    finally:
        control.config(rpm=None, quota_window_s=60)
