"""The token session: one credential and token cache per process, refreshed ahead of
expiry, single-flight, attached to openai's per-thread sessions."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest
import requests

from app_client import SEED, post_completions
from shared import openai_session
from shared.credentials import TokenCache
from shared.errors import AppError
from shared.retry import Deadline


def emulator_stats(emulators) -> dict:
    return requests.get(emulators.openai.base_url + "/_emulator/stats", timeout=5).json()


def identity_config(emulators, **config) -> None:
    requests.post(emulators.identity.base_url + "/_emulator/config", json=config, timeout=5).raise_for_status()


def run_concurrently(count: int, threads: int, body=SEED) -> list[int]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: post_completions(body).status, range(count)))


def test_200_requests_over_16_threads_make_one_token_request(configure_app, emulators):
    configure_app()
    assert run_concurrently(200, 16) == [200] * 200
    stats = emulator_stats(emulators)
    assert stats["tokens_issued"] == 1
    assert stats["auth_modes"] == {"bearer": 200}


def wait_for(condition, timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (background refreshes finish a little later)."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.02)
    return True


def test_token_is_refreshed_on_the_first_request_past_the_margin(configure_app, emulators):
    identity_config(emulators, token_lifetime=302)  # 2 s of freshness before the 5-minute margin
    configure_app()
    assert post_completions(SEED).status == 200
    assert post_completions(SEED).status == 200
    assert emulator_stats(emulators)["tokens_issued"] == 1
    time.sleep(2.2)
    started = time.monotonic()
    assert post_completions(SEED).status == 200  # starts the refresh, served by the still-valid token
    assert time.monotonic() - started < 1.0
    assert wait_for(lambda: emulator_stats(emulators)["tokens_issued"] == 2)
    assert post_completions(SEED).status == 200
    assert emulator_stats(emulators)["distinct_bearer_tokens"] == 2


def test_a_refresh_under_32_concurrent_requests_is_single_flight(configure_app, emulators):
    identity_config(emulators, token_lifetime=302)
    configure_app()
    assert post_completions(SEED).status == 200
    time.sleep(2.2)
    assert run_concurrently(32, 32) == [200] * 32
    assert wait_for(lambda: emulator_stats(emulators)["tokens_issued"] == 2)
    assert run_concurrently(32, 32) == [200] * 32
    assert emulator_stats(emulators)["tokens_issued"] == 2


def test_failing_refresh_keeps_serving_the_valid_cached_token(configure_app, emulators, caplog):
    identity_config(emulators, token_lifetime=302)
    configure_app()
    assert post_completions(SEED).status == 200
    identity_config(emulators, outage="error")
    time.sleep(2.2)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "shared.credentials"]

    with caplog.at_level(logging.WARNING, logger="shared.credentials"):
        assert [post_completions(SEED).status for _ in range(5)] == [200] * 5
        assert wait_for(lambda: warnings())
    stats = emulator_stats(emulators)
    assert stats["tokens_issued"] == 1 and stats["distinct_bearer_tokens"] == 1
    assert "keeping the cached token" in warnings()[0]
    assert len(warnings()) == 1  # one failed refresh, then a pause before asking again


def test_openai_gets_a_session_factory_and_each_thread_its_own_session(configure_app, emulators):
    configure_app(auth="key")
    assert callable(openai.requestssession) and not isinstance(openai.requestssession, requests.Session)
    before = emulator_stats(emulators)["connections_accepted"]
    assert run_concurrently(400, 8) == [200] * 400
    opened = emulator_stats(emulators)["connections_accepted"] - before
    assert opened <= 8 + 1 + 1  # one per thread (+ this thread's, + the stats call)


def test_no_global_openai_configuration_and_no_interference(configure_app, emulators):
    """Key-auth and token-auth services used at once from many threads: each request
    carries exactly its own service's credentials, and openai's globals stay untouched."""
    import function_app

    globals_before = (openai.api_key, openai.api_base, openai.api_type, openai.api_version)
    key_service = configure_app(auth="key")
    token_service = configure_app(auth="managed_identity")

    def one(i: int) -> int:
        service = key_service if i % 2 else token_service
        return service.complete(b'{"prompt": "hello"}', f"r{i}").status

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(200))) == [200] * 200
    # Never "both": no key request carried a token, and no token request a key.
    assert emulator_stats(emulators)["auth_modes"] == {"api-key": 100, "bearer": 100}
    assert (openai.api_key, openai.api_base, openai.api_type, openai.api_version) == globals_before
    assert function_app.service is token_service


# -- the cache itself, with a stand-in credential (our code, not azure-identity's) --------
@dataclass
class Token:
    token: str
    expires_on: int


class FakeCredential:
    def __init__(self, lifetime: float = 3600, delay: float = 0.0, fail: bool = False):
        self.lifetime, self.delay, self.fail = lifetime, delay, fail
        self.calls = 0
        self._lock = threading.Lock()

    def get_token(self, *scopes, **kwargs):
        with self._lock:
            self.calls += 1
            number = self.calls
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("token endpoint down")
        return Token(f"token-{number}", int(time.time() + self.lifetime))


def test_cache_single_flight_under_concurrency():
    credential = FakeCredential(delay=0.2)
    cache = TokenCache(lambda: credential, "scope")
    with ThreadPoolExecutor(32) as pool:
        tokens = list(pool.map(lambda _: cache.get(Deadline(5)), range(64)))
    assert set(tokens) == {"token-1"} and credential.calls == 1


def test_cache_never_waits_past_the_deadline_when_the_endpoint_hangs():
    cache = TokenCache(lambda: FakeCredential(delay=3), "scope")
    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        cache.get(Deadline(0.3))
    assert caught.value.code == "credential_unavailable" and caught.value.retryable
    assert time.monotonic() - started < 1.5


def test_cache_serves_a_valid_token_at_once_while_a_slow_refresh_runs():
    credential = FakeCredential(lifetime=300)  # inside the 5-minute margin at once: always stale
    cache = TokenCache(lambda: credential, "scope")
    assert cache.get(Deadline(5)) == "token-1"
    credential.delay = 3
    started = time.monotonic()
    for _ in range(10):
        assert cache.get(Deadline(5)) == "token-1"  # the slow refresh runs in the background
    assert time.monotonic() - started < 0.5
    assert cache.refreshes == 2  # the first token, and one refresh for all ten


def test_cache_reports_unavailable_without_any_valid_token():
    cache = TokenCache(lambda: FakeCredential(fail=True), "scope")
    with pytest.raises(AppError):
        cache.get(Deadline(2))


def test_bearer_auth_replaces_the_placeholder_and_drops_api_key():
    request = requests.Request("POST", "http://127.0.0.1/", headers={
        "Authorization": "Bearer placeholder", "api-key": "k"}).prepare()
    with openai_session.call_auth(openai_session.BearerTokenAuth("token-1")):
        openai_session.new_session().auth(request)
    assert request.headers["Authorization"] == "Bearer token-1" and "api-key" not in request.headers
    untouched = requests.Request("POST", "http://127.0.0.1/", headers={"api-key": "k"}).prepare()
    openai_session.new_session().auth(untouched)  # outside a call: nothing changes
    assert untouched.headers["api-key"] == "k" and "Authorization" not in untouched.headers


def test_the_credential_is_made_once_by_the_first_refresh():
    made = []

    def make():
        made.append(1)
        return FakeCredential(lifetime=300)  # inside the margin at once: every get starts a refresh

    cache = TokenCache(make, "scope", retry_interval=0)
    assert made == []  # nothing at construction (nor at import)
    for _ in range(3):
        cache.get(Deadline(5))
        time.sleep(0.1)  # let the background refresh finish
    assert cache.refreshes >= 3 and len(made) == 1


def test_a_credential_that_cannot_be_made_is_credential_unavailable():
    def make():
        raise ValueError("bad identity configuration")

    with pytest.raises(AppError) as caught:
        TokenCache(make, "scope").get(Deadline(1))
    assert caught.value.code == "credential_unavailable"
    assert not caught.value.retryable  # a configuration problem: retrying cannot help


def test_azure_identity_does_not_retry_on_its_own(emulators, monkeypatch):
    """The app's retry policy and deadline decide: one token-endpoint failure is one request."""
    from azure.core.exceptions import ClientAuthenticationError

    from shared.credentials import build_credential
    from shared.settings import RetrySettings, UpstreamSettings

    monkeypatch.setenv("IDENTITY_ENDPOINT", emulators.identity.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", emulators.identity.header)
    requests.post(emulators.identity.base_url + "/_emulator/faults", json=[{"status": 500}],
                  timeout=5).raise_for_status()
    credential = build_credential(UpstreamSettings("http://127.0.0.1:9", "d", "2024-10-21", "managed_identity"),
                                  RetrySettings())
    with pytest.raises(ClientAuthenticationError):  # CredentialUnavailableError is one
        credential.get_token("https://cognitiveservices.azure.com/.default")
    stats = requests.get(emulators.identity.base_url + "/_emulator/stats", timeout=5).json()
    assert stats["token_requests"] == 1
