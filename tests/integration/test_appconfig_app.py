"""App Configuration through the app: the store's settings serve requests, change live
without a restart, and a store that is down or wrong answers 503 naming it, never a
crash. The real provider against the HTTPS stand-ins; Azure OpenAI from the emulator."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from devserver.emulators.appconfig import AppConfigStandIns
from support.app_client import SEED, get_health, post_completions, wait_for

STORE_KEY_SECRET = "store-held-key-value-91c2"
STORE = {
    "settings": [
        {"key": "completions:AZURE_OPENAI_DEPLOYMENT", "value": "davinci-002"},
        {"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "5"},
        {"key": "completions:sentinel", "value": "1"},
    ],
    "secrets": {"openai-key": "replaced-per-test"},
}


@pytest.fixture(scope="module")
def store(running_emulators):
    standins = AppConfigStandIns.start(STORE, identity=running_emulators.identity)
    yield standins
    standins.stop()


def test_the_stores_values_override_app_settings_and_serve_requests(app_with_store):
    app_with_store()
    reply = post_completions(SEED)  # the first request waits for the first load
    assert reply.status == 200 and reply.body["deployment"] == "davinci-002"  # the store's, not the app setting's
    too_many = post_completions({"prompt": "x", "max_tokens": 6})
    assert too_many.status == 400 and too_many.body["error"]["param"] == "max_tokens"  # the store's limit: 5
    health = get_health().body
    assert health["configuration"]["source"] == "app_configuration" and health["configuration"]["loaded_at"]
    assert health["configuration"]["last_refresh_error"] is None


def test_a_setting_changed_in_the_store_applies_without_a_restart(app_with_store, store, emulators, clock):
    service = app_with_store(refresh_seconds=5)
    assert post_completions(SEED).status == 200
    client = service._pipeline.client
    store.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "50"},
              {"key": "completions:sentinel", "value": "2"})
    time.sleep(1.1)  # the provider's own refresh timer has a 1 s floor, on the real clock
    clock.advance(5)  # the refresh interval, on the app's clock
    assert post_completions({"prompt": "x", "max_tokens": 50}).status == 400  # this invocation started the check
    assert wait_for(lambda: post_completions({"prompt": "x", "max_tokens": 50}).status == 200)
    assert service._pipeline.client is client  # same backends and limits: pool, tokens and connections carry on
    assert emulators.openai_control.stats()["distinct_bearer_tokens"] == 1  # (the store has its own token)


def test_a_bad_value_keeps_the_last_good_settings_and_names_it(app_with_store, store, clock):
    app_with_store(refresh_seconds=5)
    assert post_completions(SEED).status == 200
    store.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "lots"},
              {"key": "completions:sentinel", "value": "3"})
    time.sleep(1.1)
    clock.advance(5)
    post_completions(SEED)
    assert wait_for(lambda: get_health().body["configuration"]["last_refresh_error"] is not None)
    health = get_health()
    assert health.status == 200 and "COMPLETIONS_MAX_TOKENS" in health.body["configuration"]["last_refresh_error"]
    assert "lots" not in json.dumps(health.body)
    assert post_completions({"prompt": "x", "max_tokens": 5}).status == 200  # still the last good limit
    assert post_completions({"prompt": "x", "max_tokens": 6}).status == 400


def test_a_store_down_at_start_is_503_naming_it_then_recovers(app_with_store, store):
    store.take_down()
    app_with_store()
    reply = post_completions(SEED)  # waits for the first attempt (the provider makes a failure last 5 s)
    assert reply.status == 503 and reply.body["error"]["code"] == "not_configured"
    assert reply.body["error"]["reasons"] == {"AZURE_APPCONFIG_ENDPOINT": "unreachable"}
    started = time.monotonic()
    again = post_completions(SEED)
    assert again.status == 503 and time.monotonic() - started < 1  # at once, while the load is retried
    health = get_health()
    assert health.status == 503 and health.body["settings"] == {"AZURE_APPCONFIG_ENDPOINT": "unreachable"}
    assert store.endpoint not in json.dumps(health.body) + json.dumps(reply.body)
    store.bring_up()
    assert wait_for(lambda: post_completions(SEED).status == 200, timeout=20)


def test_backends_and_their_keys_can_come_from_the_store_and_key_vault(app_with_store, store, emulators):
    store.set_secrets(**{"openai-key": emulators.openai.api_key})
    backends = [{"name": "primary", "endpoint": emulators.openai.endpoint, "auth": "key",
                 "api_key_setting": "PRIMARY_OPENAI_KEY"}]
    store.set({"key": "completions:AZURE_OPENAI_BACKENDS", "value": json.dumps(backends)},
              {"key": "completions:PRIMARY_OPENAI_KEY", "secret": "openai-key"})
    app_with_store(AZURE_OPENAI_ENDPOINT=None)
    reply = post_completions(SEED)
    assert reply.status == 200 and reply.body["backend"] == "primary"
    assert emulators.openai_control.stats()["auth_modes"] == {"api-key": 1}
    assert emulators.openai.api_key not in json.dumps(get_health().body)


def test_bad_bootstrap_settings_are_503_naming_them(app_with_store):
    app_with_store(AZURE_APPCONFIG_REFRESH_SECONDS="often")
    reply = post_completions(SEED)
    assert reply.status == 503 and "AZURE_APPCONFIG_REFRESH_SECONDS" in reply.body["error"]["settings"]
    assert "often" not in reply.raw.decode()


def test_waiting_for_the_first_load_stays_within_the_deadline(app_with_store, store):
    """AZURE_OPENAI_DEADLINE (an app setting) bounds the wait for a slow store's first load;
    the answer says the settings are still loading, never 'overloaded'."""
    store.appconfig.state.faults.extend([{"delay_ms": 3000}])  # the store's first answer comes late
    app_with_store(AZURE_OPENAI_DEADLINE="1")
    started = time.monotonic()
    reply = post_completions(SEED)
    assert time.monotonic() - started < 2.0
    assert reply.status == 503 and reply.body["error"]["code"] == "not_configured"
    assert reply.body["error"]["reasons"] == {"AZURE_APPCONFIG_ENDPOINT": "loading"}


def test_queue_work_is_redelivered_not_failed_while_the_store_cannot_be_read(app_with_store, store):
    """A store that cannot be read at start is an outage the app retries: a queue message is
    left for redelivery (RetryLater), not answered 'failed' and deleted."""
    from shared.events import RetryLater
    from support.triggers import from_queue, message

    store.take_down()
    app_with_store()
    with pytest.raises(RetryLater):
        from_queue(message({"id": "job-1", **SEED}))
    reply = post_completions(SEED)
    assert reply.status == 503 and reply.headers["Retry-After"] == "5"


def _change(store, clock, *changes: dict, generation: str) -> None:
    """Change keys and the sentinel, then let the refresh interval pass (the provider's own
    timer has a 1 s floor on the real clock)."""
    store.set(*changes, {"key": "completions:sentinel", "value": generation})
    time.sleep(1.1)
    clock.advance(5)


def test_a_swap_keeps_what_did_not_change_and_invocations_in_flight_finish_on_the_old_settings(
        app_with_store, store, emulators, clock):
    from support.app_client import LOOP, call_completions, completions_request

    service = app_with_store(refresh_seconds=5)
    assert post_completions(SEED).status == 200
    old = service._pipeline.client
    emulators.openai_control.config(latency_ms=1500)
    in_flight = asyncio.run_coroutine_threadsafe(call_completions(completions_request(SEED)), LOOP.loop)
    time.sleep(0.3)  # it has its pipeline: the old deployment
    _change(store, clock, {"key": "completions:AZURE_OPENAI_DEPLOYMENT", "value": "gpt-35-turbo-instruct"},
            {"key": "completions:AZURE_OPENAI_TIMEOUT", "value": "20"}, generation="2")
    post_completions({"prompt": "x", "max_tokens": 6})  # starts the check
    assert wait_for(lambda: service._pipeline.settings.backends[0].deployment == "gpt-35-turbo-instruct")
    assert in_flight.result(30).body["deployment"] == "davinci-002"  # finished on the settings it started with
    emulators.openai_control.config(latency_ms=0)
    new = service._pipeline.client
    assert new is not old  # the backends and the timeout changed: a new client...
    assert new.tokens == old.tokens and new._slots is old._slots  # ...with the token cache and the slots kept
    assert post_completions(SEED).body["deployment"] == "gpt-35-turbo-instruct"


def test_a_replaced_transport_is_closed_once_its_invocations_have_drained(app_with_store, store, clock):
    service = app_with_store(refresh_seconds=5, AZURE_OPENAI_DEADLINE="10")
    assert post_completions(SEED).status == 200
    old_http = service._pipeline.client.http
    _change(store, clock, {"key": "completions:AZURE_OPENAI_MAX_CONNECTIONS", "value": "64"}, generation="3")
    post_completions(SEED)
    assert wait_for(lambda: service._pipeline.client.http is not old_http)
    assert post_completions(SEED).status == 200
    assert [http for _, http in service._retired] == [old_http]  # kept while invocations may still use it
    drained = max(service.settings.retry.deadline, service.settings.retry.stream_seconds) + 5
    clock.advance(drained - 1)  # a stream may still be using it: the old settings' longest stream
    assert post_completions(SEED).status == 200 and [http for _, http in service._retired] == [old_http]
    clock.advance(1.5)
    assert post_completions(SEED).status == 200
    assert service._retired == [] and not old_http._sessions  # closed
