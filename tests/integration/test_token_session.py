"""The token session: one credential and token cache per process, refreshed ahead of
expiry, single-flight, awaited without blocking the event loop; and the aiohttp
session openai's async client uses, one per loop."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass

import openai
import pytest

from shared.clock import Deadline
from shared.errors import AppError
from shared.upstream.tokens import TokenCache
from support.app_client import LOOP, SEED, post_completions, post_many, wait_for

JWT_LOOKALIKE = "eyJhbGciOiJIUzI1NiJ9.eyJzZWNyZXQiOiJ0b2tlbiJ9.c2lnbmF0dXJl"


def emulator_stats(emulators) -> dict:
    return emulators.openai_control.stats()


def identity_stats(emulators) -> dict:
    return emulators.identity_control.stats()


def past_the_refresh_margin() -> None:
    """Tokens issued for 302 s are within the 5-minute margin 2 s later. This waits for real:
    msal keeps its own cache of the token with the same 5-minute rule on the real clock, so
    skipping only the app's clock would refresh into msal's cached copy."""
    time.sleep(2.1)


def test_200_concurrent_requests_make_one_token_request(configure_app, emulators):
    configure_app()
    assert [r.status for r in post_many([SEED] * 200)] == [200] * 200
    stats = emulator_stats(emulators)
    assert stats["tokens_issued"] == 1
    assert stats["auth_modes"] == {"bearer": 200}


def test_token_is_refreshed_on_the_first_request_past_the_margin(configure_app, emulators):
    emulators.identity_control.config(token_lifetime=302)  # 2 s of freshness before the 5-minute margin
    configure_app()
    assert post_completions(SEED).status == 200
    assert post_completions(SEED).status == 200
    assert emulator_stats(emulators)["tokens_issued"] == 1
    past_the_refresh_margin()
    started = time.monotonic()
    assert post_completions(SEED).status == 200  # starts the refresh, served by the still-valid token
    assert time.monotonic() - started < 1.0
    assert wait_for(lambda: emulator_stats(emulators)["tokens_issued"] == 2)
    assert post_completions(SEED).status == 200
    assert emulator_stats(emulators)["distinct_bearer_tokens"] == 2


def test_a_refresh_under_64_concurrent_requests_is_single_flight(configure_app, emulators):
    emulators.identity_control.config(token_lifetime=302)
    configure_app()
    assert post_completions(SEED).status == 200
    past_the_refresh_margin()
    assert [r.status for r in post_many([SEED] * 64)] == [200] * 64
    assert wait_for(lambda: emulator_stats(emulators)["tokens_issued"] == 2)
    assert [r.status for r in post_many([SEED] * 64)] == [200] * 64
    assert emulator_stats(emulators)["tokens_issued"] == 2


def test_failing_refresh_keeps_serving_the_valid_cached_token(configure_app, emulators, clock, caplog):
    emulators.identity_control.config(token_lifetime=302)
    configure_app()
    assert post_completions(SEED).status == 200
    emulators.identity_control.config(outage="error")
    past_the_refresh_margin()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "shared.upstream.tokens"]

    with caplog.at_level(logging.WARNING, logger="shared.upstream.tokens"):
        assert [r.status for r in post_many([SEED] * 5)] == [200] * 5
        assert wait_for(lambda: warnings())
        assert [post_completions(SEED).status for _ in range(5)] == [200] * 5
    stats = emulator_stats(emulators)
    assert stats["tokens_issued"] == 1 and stats["distinct_bearer_tokens"] == 1
    assert "keeping the cached token" in warnings()[0]
    assert len(warnings()) == 1  # one failed refresh, then a pause (2 s) before asking again
    clock.advance(2.1)
    assert post_completions(SEED).status == 200  # ... and after the pause, it asks again
    assert wait_for(lambda: len(warnings()) == 2)


def test_one_session_per_loop_and_one_connection_per_concurrent_call(configure_app, emulators):
    configure_app(auth="key")
    before = emulator_stats(emulators)["connections_accepted"]
    for _ in range(50):
        assert [r.status for r in post_many([SEED] * 8)] == [200] * 8
    opened = emulator_stats(emulators)["connections_accepted"] - before
    assert opened <= 8 + 1  # kept alive and reused (+ the stats call)
    assert openai.aiosession.get() is None  # the hook is set around each call only, never left behind


def test_no_global_openai_configuration_and_no_interference(configure_app, emulators):
    """Key-auth and token-auth services used at once on one loop: each request carries
    exactly its own service's credentials, and openai's globals stay untouched."""
    import function_app

    globals_before = (openai.api_key, openai.api_base, openai.api_type, openai.api_version)
    key_service = configure_app(auth="key")
    token_service = configure_app(auth="managed_identity")

    async def burst() -> list[int]:
        calls = [(key_service if i % 2 else token_service).complete(b'{"prompt": "hello"}', f"r{i}")
                 for i in range(200)]
        return [outcome.status for outcome in await asyncio.gather(*calls)]

    assert LOOP.run(burst()) == [200] * 200
    # Never "both": no key request carried a token, and no token request a key.
    assert emulator_stats(emulators)["auth_modes"] == {"api-key": 100, "bearer": 100}
    assert (openai.api_key, openai.api_base, openai.api_type, openai.api_version) == globals_before
    assert function_app.service is token_service


# -- a hostile or broken identity endpoint (issue 11) ----------------------------------------
def test_a_retry_after_from_the_identity_endpoint_does_not_lock_tokens_out(configure_app, emulators, clock):
    """msal replays a throttled answer for min(3600, Retry-After) s on the same credential;
    the app builds a new one after a failure, so the promised retry happens."""
    emulators.identity_control.faults({"status": 503, "retry_after": 3600})
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    reply = post_completions(SEED)
    assert reply.status == 503 and reply.body["error"]["code"] == "credential_unavailable"
    assert reply.headers["Retry-After"] == "1"
    clock.advance(1.1)  # past the failure's backoff; the endpoint is healthy again
    assert post_completions(SEED).status == 200
    assert identity_stats(emulators)["requests_by_status"] == {"503": 1, "200": 1}


@pytest.mark.parametrize("answer", [
    {"status": 404},  # a mistyped AZURE_CLIENT_ID
    {"status": 200, "raw": json.dumps({"access_token": JWT_LOOKALIKE, "token_type": "Bearer"})},  # no expires_on
])
def test_token_failures_without_a_cached_token_fail_fast(configure_app, emulators, caplog, answer):
    """A failed token request fails its callers with 503 and Retry-After, without a new token
    request for each, and is logged once (the window itself: tests/unit/test_token_cache.py)."""
    emulators.identity_control.faults(*[answer] * 50)
    configure_app(AZURE_OPENAI_MAX_RETRIES="0", AZURE_OPENAI_DEADLINE="0.9")
    with caplog.at_level(logging.WARNING):
        replies = post_many([SEED] * 64)
    assert {(r.status, r.body["error"]["code"]) for r in replies} == {(503, "credential_unavailable")}
    assert {r.headers["Retry-After"] for r in replies} == {"1"}
    assert identity_stats(emulators)["token_requests"] == 1
    assert [r.name for r in caplog.records] == ["shared.upstream.tokens"]  # once per failure, not per caller
    assert emulator_stats(emulators)["completion_requests"] == 0
    assert JWT_LOOKALIKE not in caplog.text


def test_a_token_not_valid_in_a_header_is_a_failed_token_request(configure_app, emulators, caplog):
    bad = json.dumps({"access_token": "abc\r\nX-Injected: 1", "expires_on": str(int(time.time()) + 3600),
                      "token_type": "Bearer", "resource": "https://cognitiveservices.azure.com"})
    emulators.identity_control.faults({"status": 200, "raw": bad})
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    with caplog.at_level(logging.DEBUG):
        reply = post_completions(SEED)
    assert reply.status == 503 and reply.body["error"]["code"] == "credential_unavailable"
    assert emulator_stats(emulators)["completion_requests"] == 0
    assert "X-Injected" not in caplog.text and b"X-Injected" not in reply.raw


def test_a_truncated_identity_response_never_logs_the_token(configure_app, emulators, caplog, capfd):
    truncated = '{"access_token": "' + JWT_LOOKALIKE + '", "expires_on": "17'
    emulators.identity_control.faults(*[{"status": 200, "raw": truncated}] * 8)
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    with caplog.at_level(logging.DEBUG):
        reply = post_completions(SEED)
    assert reply.status == 503
    assert JWT_LOOKALIKE not in caplog.text + "".join(capfd.readouterr())
    assert any(r.name == "shared.upstream.tokens" for r in caplog.records)  # the failure itself is logged, by type


def test_a_401_drops_the_cached_token_and_the_next_attempt_gets_a_fresh_one(configure_app, emulators, clock):
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    assert post_completions(SEED).status == 200
    emulators.openai_control.faults({"status": 401})
    assert post_completions(SEED).status == 200  # at once, even with no retries: a token problem, not an outage
    assert clock.slept == []
    assert emulator_stats(emulators)["tokens_issued"] == 2
    emulators.openai_control.faults({"status": 401}, {"status": 401})
    reply = post_completions(SEED)  # refused twice: the identity really lacks access
    assert reply.status == 502 and reply.body["error"]["code"] == "upstream_misconfigured"


def test_an_expired_cached_token_is_never_sent(configure_app, emulators, clock):
    configure_app(AZURE_OPENAI_MAX_RETRIES="0", AZURE_OPENAI_DEADLINE="2")
    assert post_completions(SEED).status == 200
    emulators.identity_control.config(outage="error")
    clock.advance(3600)  # the cached token has expired by the app's clock
    reply = post_completions(SEED)
    assert reply.status == 503 and reply.body["error"]["code"] == "credential_unavailable"
    assert emulator_stats(emulators)["completion_requests"] == 1


def test_a_token_that_is_expired_when_issued_is_refused(configure_app, emulators):
    emulators.identity_control.config(token_lifetime=5)  # inside the app's 10 s expiry skew
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    reply = post_completions(SEED)
    assert reply.status == 503 and reply.body["error"]["code"] == "credential_unavailable"
    assert emulator_stats(emulators)["completion_requests"] == 0


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
        time.sleep(self.delay)  # on the refresh thread, never the loop
        if self.fail:
            raise RuntimeError("token endpoint down")
        return Token(f"token-{number}", int(time.time() + self.lifetime))


def get(cache: TokenCache, seconds: float) -> str:
    return LOOP.run(cache.get(Deadline(seconds)))


def test_cache_single_flight_under_concurrency():
    credential = FakeCredential(delay=0.2)
    cache = TokenCache(lambda: credential, "scope")

    async def many() -> set[str]:
        return set(await asyncio.gather(*(cache.get(Deadline(5)) for _ in range(64))))

    assert LOOP.run(many()) == {"token-1"} and credential.calls == 1


def test_cache_never_waits_past_the_deadline_when_the_endpoint_hangs():
    cache = TokenCache(lambda: FakeCredential(delay=3), "scope")
    started = time.monotonic()
    with pytest.raises(AppError) as caught:
        get(cache, 0.3)
    assert caught.value.code == "credential_unavailable" and caught.value.retryable
    assert time.monotonic() - started < 1.5


def test_cache_waiters_giving_up_do_not_cancel_the_refresh_for_others():
    credential = FakeCredential(delay=0.5)
    cache = TokenCache(lambda: credential, "scope")
    with pytest.raises(AppError):
        get(cache, 0.1)  # gives up; the refresh goes on
    assert get(cache, 5) == "token-1" and credential.calls == 1


def test_cache_serves_a_valid_token_at_once_while_a_slow_refresh_runs():
    credential = FakeCredential(lifetime=300)  # inside the 5-minute margin at once: always stale
    cache = TokenCache(lambda: credential, "scope")
    assert get(cache, 5) == "token-1"
    credential.delay = 3
    started = time.monotonic()
    for _ in range(10):
        assert get(cache, 5) == "token-1"  # the slow refresh runs in the background
    assert time.monotonic() - started < 0.5
    assert cache.refreshes == 2  # the first token, and one refresh for all ten


def test_cache_reports_unavailable_without_any_valid_token():
    cache = TokenCache(lambda: FakeCredential(fail=True), "scope")
    with pytest.raises(AppError) as caught:
        get(cache, 2)
    assert caught.value.code == "credential_unavailable" and caught.value.retry_after == pytest.approx(1, abs=0.1)


def test_the_credential_is_made_by_the_first_refresh_and_again_after_a_failure():
    made = []
    credential = FakeCredential(lifetime=300)  # inside the margin at once: every get starts a refresh

    def make():
        made.append(1)
        return credential

    cache = TokenCache(make, "scope", retry_interval=0)
    assert made == []  # nothing at construction (nor at import)
    for _ in range(3):
        get(cache, 5)
        assert wait_for(lambda: cache._refresh is None)
    assert cache.refreshes >= 3 and len(made) == 1
    credential.fail = True
    get(cache, 5)  # the valid token is served; the background refresh fails
    assert wait_for(lambda: cache._refresh is None)
    credential.fail = False
    get(cache, 5)
    assert wait_for(lambda: len(made) == 2)  # msal state from the failure is not kept


def test_a_credential_that_cannot_be_made_is_credential_unavailable():
    def make():
        raise ValueError("bad identity configuration")

    with pytest.raises(AppError) as caught:
        get(TokenCache(make, "scope"), 1)
    assert caught.value.code == "credential_unavailable"
    assert not caught.value.retryable  # a configuration problem: retrying cannot help


def test_azure_identity_does_not_retry_on_its_own(emulators, monkeypatch):
    """The app's retry policy and deadline decide: one token-endpoint failure is one request."""
    from azure.core.exceptions import ClientAuthenticationError

    from shared.config.settings import RetrySettings
    from shared.upstream.credentials import build_credential

    monkeypatch.setenv("IDENTITY_ENDPOINT", emulators.identity.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", emulators.identity.header)
    emulators.identity_control.faults({"status": 500})
    credential = build_credential("managed_identity", None, RetrySettings())
    with pytest.raises(ClientAuthenticationError):  # CredentialUnavailableError is one
        credential.get_token("https://cognitiveservices.azure.com/.default")
    assert identity_stats(emulators)["token_requests"] == 1
