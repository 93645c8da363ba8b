"""Hardening (issue 22), through the app against the stand-ins: a writable App Configuration
store cannot redirect the identity token or the prompts; a long Retry-After rests a deployment
for AZURE_OPENAI_MAX_COOLDOWN at most, then one probe decides; callers waiting out a throttle
recover with one probe per backend, not a stampede; an upstream's model names cannot grow the
metric streams; a failed queue result fits a Storage message; identity failures are 503s that
cool no backend; a Key Vault reference says what went wrong with it.

Waits are skipped by the test clock (``clock.slept`` records them) except in the stampede test,
which runs on real time. Nothing here reaches beyond loopback: a host the app must refuse is
refused before any name lookup (conftest's guard fails a test that tries)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
import time
import tracemalloc
from collections import Counter

import pytest

from devserver.emulators.appconfig import AppConfigStandIns
from shared.clock import SYSTEM_CLOCK
from shared.service import CompletionService
from support.app_client import LOOP, SEED, call_completions, get_health, post_completions, post_many, wait_for
from support.triggers import Out, message
from support.worker_requests import completions_request

FAST = {"AZURE_OPENAI_TIMEOUT": "0.5", "AZURE_OPENAI_CONNECT_TIMEOUT": "0.5", "AZURE_OPENAI_DEADLINE": "6"}
SLACK = 1.5  # seconds of scheduling noise tolerated on top of a bound
HOSTILE = "https://evil.example.com"
AZURE_OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"
READER = "11111111-2222-4333-8444-555555555555"  # a user-assigned identity with the vault role


def upstream_attempts(emulators) -> int:
    return emulators.openai_control.stats()["completion_requests"]


def upstream_429s(emulators) -> int:
    return emulators.openai_control.stats()["requests_by_status"].get("429", 0)


def closed_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_backends(emulators) -> str:
    """AZURE_OPENAI_BACKENDS: two deployments of the one emulator."""
    endpoint = emulators.openai.endpoint
    return json.dumps([{"name": "a", "endpoint": endpoint, "deployment": "gpt-35-turbo-instruct"},
                       {"name": "b", "endpoint": endpoint, "deployment": "davinci-002",
                        "model": "gpt-35-turbo-instruct"}])


# -- 1. a writable store cannot redirect the identity token ------------------------------------
@pytest.fixture(scope="module")
def store(running_emulators):
    standins = AppConfigStandIns.start({"settings": [{"key": "completions:sentinel", "value": "1"}]},
                                       identity=running_emulators.identity)
    yield standins
    standins.stop()


def test_a_token_scope_in_the_store_is_ignored_and_the_token_stays_for_azure_openai(app_with_store, store,
                                                                                      emulators, caplog):
    store.set({"key": "completions:AZURE_OPENAI_TOKEN_SCOPE", "value": "https://management.azure.com/.default"},
              {"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "7"})
    with caplog.at_level(logging.WARNING, logger="shared.config.appconfig"):
        service = app_with_store()
        reply = post_completions(SEED)
    assert reply.status == 200, reply.body
    assert service.settings.limits.max_tokens == 7  # the store's other values apply
    assert {b.token_scope for b in service.settings.backends} == {AZURE_OPENAI_SCOPE}
    assert emulators.openai_control.stats()["auth_modes"] == {"bearer": 1}  # (it takes cognitiveservices tokens only)
    assert "AZURE_OPENAI_TOKEN_SCOPE" in caplog.text  # named as ignored: a bootstrap setting


@pytest.mark.parametrize("key, value", [
    ("AZURE_OPENAI_ENDPOINT", HOSTILE),
    ("AZURE_OPENAI_BACKENDS", json.dumps([{"name": "x", "endpoint": HOSTILE}])),
])
def test_a_store_endpoint_that_is_not_an_azure_openai_host_is_503_naming_the_store_key(app_with_store, store,
                                                                                         emulators, key, value):
    store.set({"key": f"completions:{key}", "value": value},
              {"key": "completions:AZURE_OPENAI_ALLOWED_HOSTS", "value": "evil.example.com"})  # the store's: ignored
    app_with_store()
    started = time.monotonic()
    reply = post_completions(SEED)
    assert time.monotonic() - started < 5
    assert reply.status == 503 and reply.body["error"]["code"] == "not_configured", reply.body
    assert reply.body["error"]["settings"] == [f"completions:{key}"]
    assert "evil" not in reply.raw.decode() + json.dumps(get_health().body)
    assert upstream_attempts(emulators) == 0  # (and conftest's guard saw no lookup of the host)


def test_a_refresh_to_a_foreign_endpoint_keeps_the_last_good_settings_and_sends_nothing_there(
        app_with_store, store, emulators, clock):
    store.set({"key": "completions:AZURE_OPENAI_ENDPOINT", "value": emulators.openai.endpoint})  # loopback: allowed
    service = app_with_store()
    assert post_completions(SEED).status == 200
    store.set({"key": "completions:AZURE_OPENAI_ENDPOINT", "value": HOSTILE},
              {"key": "completions:sentinel", "value": "2"})
    time.sleep(1.1)  # the provider's own refresh timer has a 1 s floor, on the real clock
    clock.advance(5)  # the refresh interval, on the app's clock
    assert post_completions(SEED).status == 200  # starts the check
    assert wait_for(lambda: "completions:AZURE_OPENAI_ENDPOINT" in
                    (get_health().body["configuration"]["last_refresh_error"] or ""))
    assert [post_completions(SEED).status for _ in range(3)] == [200] * 3  # still the emulator
    assert service.settings.backends[0].endpoint == emulators.openai.endpoint.rstrip("/")
    assert upstream_attempts(emulators) == 5


# -- 2. a long Retry-After rests a deployment for the cap, then one probe decides ---------------
LONG_WAITS = {
    "retry-after seconds": {"retry-after": "3600"},
    "retry-after HTTP date": {"Retry-After": "Wed, 01 Jan 2099 00:00:00 GMT"},
    "x-ratelimit-reset-requests": {"x-ratelimit-reset-requests": "2h"},
}


@pytest.mark.parametrize("case", list(LONG_WAITS))
def test_a_long_wait_asked_for_rests_the_backend_max_cooldown_then_one_probe_decides(configure_app, emulators,
                                                                                      clock, case):
    throttled = {"status": 429, "headers": LONG_WAITS[case]}
    configure_app(**{**FAST, "AZURE_OPENAI_DEADLINE": "1.5"}, AZURE_OPENAI_MAX_COOLDOWN="3")  # callers cannot wait
    emulators.openai_control.faults(throttled)
    first = post_completions(SEED)
    assert first.status == 429 and first.body["error"]["code"] == "rate_limited"
    assert first.headers["Retry-After"] == "3"  # the cooldown, not what upstream asked for
    clock.advance(1.2)
    resting = post_completions(SEED)  # answered without a call, with what is left of the cooldown
    assert resting.status == 429 and resting.headers["Retry-After"] == "2"
    assert upstream_attempts(emulators) == 1
    clock.advance(1.9)  # the cooldown is over: one probe goes first, and it is throttled again
    emulators.openai_control.faults(throttled)
    replies = post_many([SEED] * 5)
    assert [r.status for r in replies] == [429] * 5
    assert all(int(r.headers["Retry-After"]) <= 3 for r in replies)
    assert upstream_attempts(emulators) == 2  # the probe alone
    clock.advance(3.1)  # then a probe that succeeds puts the backend back in service
    assert [r.status for r in post_many([SEED] * 5)] == [200] * 5
    assert upstream_attempts(emulators) == 7 and clock.slept == []


# -- 3. recovery is not a stampede --------------------------------------------------------------
@pytest.fixture
def real_time_app(configure_app, monkeypatch):
    """``real_time_app(**settings)``: configure_app's settings, on the system clock (waits are real)."""
    import function_app

    made: list[CompletionService] = []

    def configure(**settings: str | None) -> CompletionService:
        configure_app(**settings)
        service = CompletionService.from_environ(clock=SYSTEM_CLOCK)
        monkeypatch.setattr(function_app, "service", service)
        made.append(service)
        return service

    yield configure
    for service in made:
        LOOP.run(service.aclose())


def test_fifty_callers_waiting_out_a_throttle_recover_with_one_probe_per_backend(real_time_app, emulators):
    """Both backends throttled for 2.25 s though they say 1.5 s: at each recovery one probe per
    backend goes first; the callers follow the probes, all get 200, and upstream sees a handful
    of 429s (it once saw 400 in 4.7 s, and 24 of 50 callers got 429)."""
    real_time_app(AZURE_OPENAI_BACKENDS=two_backends(emulators), AZURE_OPENAI_ENDPOINT=None,
                  AZURE_OPENAI_DEADLINE="20")
    assert post_completions(SEED).status == 200  # the token is cached
    faults = emulators.openai.state.faults  # (in process: the control API cannot withdraw faults)
    faults.extend([{"status": 429, "retry_after_ms": 1500}] * 1000)
    before = upstream_429s(emulators)

    def call():
        return asyncio.run_coroutine_threadsafe(call_completions(completions_request(SEED)), LOOP.loop)

    first = call()  # meets both backends throttled: both cool for 1.5 s
    assert wait_for(lambda: [b["state"] for b in get_health().body["backends"]] == ["cooling"] * 2, timeout=5)
    lift = threading.Timer(2.25, faults.clear)  # the throttle outlasts the first recovery
    lift.start()
    started = time.monotonic()
    try:
        rest = [call() for _ in range(49)]
        replies = [first.result(30)] + [future.result(30) for future in rest]
    finally:
        lift.cancel()
        faults.clear()
    assert Counter(r.status for r in replies) == {200: 50}, Counter(r.status for r in replies)
    assert time.monotonic() - started < 10
    assert upstream_429s(emulators) - before <= 8  # 2 priming the cooldowns, 2 probes per recovery
    assert upstream_attempts(emulators) - (upstream_429s(emulators) - before) == 51


# -- 4. metric cardinality ---------------------------------------------------------------------
def _answer_for(model: str) -> str:
    return json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model,
                       "choices": [{"text": " fine.", "index": 0, "finish_reason": "stop", "logprobs": None}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}})


def test_distinct_huge_response_models_share_one_metric_stream_and_memory_stays_flat(recorded, emulators):
    record = recorded()
    padding = "m" * 20_000

    def wave(start: int) -> None:
        emulators.openai_control.faults(*({"status": 200, "raw": _answer_for(f"{n}-{padding}")}
                                          for n in range(start, start + 50)))
        assert {r.status for r in post_many([SEED] * 50)} == {200}

    for start in range(0, 200, 50):  # warm up: connections, caches, the metric streams
        wave(start)
    record.telemetry.drain()
    record.exporter.clear()  # (spans leave the process when exported: the in-memory exporter keeps them)
    # what the process keeps (Python allocations, the emulator's in this process too): RSS is too
    # noisy in a long test session
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for start in range(200, 1000, 50):
            wave(start)
        record.telemetry.drain()
        record.exporter.clear()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    points = record.points("gen_ai.client.token.usage")
    assert {p.attributes.get("gen_ai.response.model") for p in points} == {"other"}
    assert len(points) == 2 and sum(p.count for p in points) == 2 * 1000  # input and output: two streams in all
    # 800 answers carried 16 MB of distinct names: kept as metric attributes, they would stay
    assert grown < 4 * 1024 * 1024, f"kept {grown / 2 ** 20:.1f} MiB more after 800 answers"


def test_distinct_short_response_models_are_kept_apart_only_up_to_a_bound(recorded, emulators):
    """Names of a model's shape pass the first check; the number of distinct ones is bounded too."""
    from shared.telemetry.otel import MAX_MODEL_NAMES

    record = recorded()
    for start in range(0, 150, 50):
        emulators.openai_control.faults(*({"status": 200, "raw": _answer_for(f"model-{n}")}
                                          for n in range(start, start + 50)))
        assert {r.status for r in post_many([SEED] * 50)} == {200}
    names = {p.attributes.get("gen_ai.response.model") for p in record.points("gen_ai.client.token.usage")}
    assert len(names) == MAX_MODEL_NAMES + 1 and "other" in names


# -- 5. a failed queue result fits a Storage message -----------------------------------------------
def test_a_content_filter_failure_with_huge_details_fits_a_queue_message_and_keeps_its_code(configure_app,
                                                                                              emulators):
    import function_app

    configure_app(**FAST)
    details = {f"category_{n}": {"filtered": True, "severity": "high", "detail": "x" * 1000} for n in range(100)}
    emulators.openai_control.faults({"status": 400, "raw": json.dumps({"error": {
        "code": "content_filter", "message": "The response was filtered.", "param": "prompt", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": details}}})})
    out = Out()
    LOOP.run(function_app.completion_from_queue.build().get_user_function()(message({"id": "job-7", **SEED}), out))
    assert len(out.value) <= 48 * 1024, len(out.value)  # base64 in the message: within its 64 KiB
    result = json.loads(out.value)
    assert result["id"] == "job-7" and result["status"] == "failed"
    assert result["error"]["code"] == "content_filter" and result["error"]["param"] == "prompt"
    assert upstream_attempts(emulators) == 1


# -- 6. identity failures do not cool healthy backends ---------------------------------------------
def test_an_identity_outage_is_503_and_leaves_the_backends_ready_for_when_it_ends(configure_app, emulators, clock):
    emulators.identity_control.config(outage="error")
    configure_app(**FAST, AZURE_OPENAI_BACKENDS=two_backends(emulators), AZURE_OPENAI_ENDPOINT=None)
    reply = post_completions(SEED)
    assert reply.status == 503 and reply.body["error"]["code"] == "credential_unavailable", reply.body
    assert upstream_attempts(emulators) == 0
    assert [(b["state"], b["retry_in"]) for b in get_health().body["backends"]] == [("ready", 0)] * 2
    emulators.identity_control.config(outage=None)
    clock.advance(15)  # past the token cache's own fail-fast window (at most 15 s)
    waited = len(clock.slept)
    reply = post_completions(SEED)
    assert reply.status == 200 and clock.slept[waited:] == []  # at once: no cooldown to wait out
    assert upstream_attempts(emulators) == 1


@pytest.mark.parametrize("identity", ["stall", "late"])
def test_an_identity_endpoint_that_stalls_or_answers_too_late_is_503_never_504(configure_app, emulators, identity):
    if identity == "stall":
        emulators.identity_control.config(outage="stall")
    else:  # the token comes with less than an attempt's time left
        emulators.identity_control.faults({"delay_ms": 1950})
    configure_app(AZURE_OPENAI_TIMEOUT="5", AZURE_OPENAI_DEADLINE="2")  # (the token request may take 5 s)
    started = time.monotonic()
    reply = post_completions(SEED)
    assert reply.status == 503 and reply.body["error"]["code"] == "credential_unavailable", reply.body
    assert time.monotonic() - started < 2 + SLACK
    assert upstream_attempts(emulators) == 0
    emulators.identity_control.config(outage=None)


# -- 7. a Key Vault reference says what went wrong -------------------------------------------------
def test_a_key_vault_reference_names_a_missing_secret_access_denied_or_an_unreachable_vault(
        app_with_store, store, clock, caplog):
    store.set_secrets(**{"openai-key": "a-key-value"})
    store.keyvault.state.configure({"readers": [READER]})  # the system identity lacks the vault role
    vault_down = f"https://127.0.0.1:{closed_port()}/secrets/openai-key"
    store.set({"key": "missing:AZURE_OPENAI_API_KEY", "secret": "no-such-secret"},
              {"key": "denied:AZURE_OPENAI_API_KEY", "secret": "openai-key"},
              {"key": "down:AZURE_OPENAI_API_KEY", "reference": vault_down})
    app_with_store()  # the process's settings (the identity endpoint, the CA bundle)
    expected = {"missing": "Key Vault secret not found", "denied": "Key Vault access denied",
                "down": "Key Vault unreachable"}
    services = {case: CompletionService.from_environ(
        {**os.environ, "AZURE_APPCONFIG_KEY_PREFIX": f"{case}:", "AZURE_APPCONFIG_SENTINEL": f"{case}:sentinel",
         **({} if case == "denied" else {"AZURE_CLIENT_ID": READER})}, clock=clock) for case in expected}

    async def first_requests():
        return await asyncio.gather(*(service.complete(json.dumps(SEED).encode(), f"kv-{case}")
                                      for case, service in services.items()))

    try:
        with caplog.at_level(logging.WARNING, logger="shared.config.appconfig"):
            outcomes = dict(zip(services, LOOP.run(first_requests(), timeout=60), strict=True))
    finally:
        for service in services.values():
            LOOP.run(service.aclose())
    for case, reason in expected.items():
        error = outcomes[case].body["error"]
        assert (outcomes[case].status, error["code"]) == (503, "not_configured"), (case, error)
        assert error["reasons"] == {"AZURE_APPCONFIG_ENDPOINT": reason}
        assert f"AZURE_APPCONFIG_ENDPOINT ({reason})" in error["message"]
        assert f"not resolved: {reason}" in caplog.text
    assert "a-key-value" not in caplog.text
