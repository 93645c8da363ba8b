"""The backend pool through the app: priority, weights, cooldowns, failover within the
deadline, headroom steering, per-backend keys. Several emulators share the identity
endpoint's signing secret, as regions share Entra ID."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pytest

from devserver.emulators import Emulators
from support.app_client import SEED, get_health, post_completions, post_many

NAMES = ("east", "west", "north")


@pytest.fixture(scope="module")
def regions(running_emulators):
    """Three more Azure OpenAI emulators whose bearer tokens come from the session's identity endpoint."""
    secret = running_emulators.identity.state.signer.secret
    started = {name: Emulators.start(only="openai", token_secret=secret) for name in NAMES}
    yield started
    for emulators in started.values():
        emulators.stop()


@pytest.fixture
def pool(regions, configure_app):
    """``pool(entries, **settings)``: configure the app with AZURE_OPENAI_BACKENDS over the regions."""
    for emulators in regions.values():
        emulators.openai_control.reset()
        emulators.openai_control.config(latency_ms=0, rpm=None, tpm=None)

    def configure(*entries: dict, **settings):
        backends = [{"endpoint": regions[entry["name"]].openai.endpoint, **entry} for entry in entries]
        return configure_app(AZURE_OPENAI_BACKENDS=json.dumps(backends), AZURE_OPENAI_ENDPOINT=None, **settings)

    return configure


def served(regions) -> dict[str, int]:
    return {name: emulators.openai_control.stats()["completion_requests"] for name, emulators in regions.items()}


def test_the_lowest_priority_serves_and_the_body_names_it(pool, regions):
    pool({"name": "east", "priority": 1, "deployment": "gpt-35-turbo-instruct"}, {"name": "west", "priority": 2})
    replies = post_many([SEED] * 10)
    assert {(r.status, r.body["backend"], r.body["deployment"]) for r in replies} == {
        (200, "east", "gpt-35-turbo-instruct")}
    assert served(regions) == {"east": 10, "west": 0, "north": 0}


def test_weights_split_the_traffic_within_a_priority(pool, regions):
    pool({"name": "east", "weight": 1}, {"name": "west", "weight": 3})
    for _ in range(10):
        assert [r.status for r in post_many([SEED] * 4)] == [200] * 4
    counts = served(regions)
    assert abs(counts["east"] - 10) <= 2 and abs(counts["west"] - 30) <= 2


def test_a_throttled_backend_fails_over_at_once_and_is_skipped_until_its_retry_after(pool, regions, clock):
    pool({"name": "east", "priority": 1}, {"name": "west", "priority": 2})
    regions["east"].openai_control.faults({"status": 429, "retry_after": 30})
    started = time.monotonic()
    reply = post_completions(SEED)
    assert reply.status == 200 and reply.body["backend"] == "west"
    assert clock.slept == [] and time.monotonic() - started < 1.0  # no sleep before failing over
    assert [r.body["backend"] for r in post_many([SEED] * 5)] == ["west"] * 5
    assert served(regions)["east"] == 1  # nothing more while it cools
    clock.advance(30)
    assert post_completions(SEED).body["backend"] == "east"  # recovered


@pytest.mark.parametrize("fault", [{"drop": True}, {"status": 500}, {"status": 503}, {"delay_ms": 3000}])
def test_an_outage_fails_over_within_the_deadline(pool, regions, clock, fault):
    pool({"name": "east", "priority": 1}, {"name": "west", "priority": 2}, AZURE_OPENAI_TIMEOUT="1")
    regions["east"].openai_control.faults(fault)
    reply = post_completions(SEED)
    assert reply.status == 200 and reply.body["backend"] == "west"
    assert clock.slept == []
    assert served(regions)["east"] == 1 and served(regions)["west"] == 1  # east first, once; then west


def test_every_backend_throttled_answers_429_with_the_earliest_recovery(pool, regions, clock):
    pool({"name": "east"}, {"name": "west"}, AZURE_OPENAI_DEADLINE="5")
    regions["east"].openai_control.faults({"status": 429, "retry_after": 40})
    regions["west"].openai_control.faults({"status": 429, "retry_after": 20})
    reply = post_completions(SEED)
    assert reply.status == 429 and reply.body["error"]["code"] == "rate_limited"
    assert reply.headers["Retry-After"] == "20"
    later = post_completions(SEED)  # nothing ready: answered at once, without a call
    assert later.status == 429 and later.headers["Retry-After"] in ("19", "20")
    assert served(regions) == {"east": 1, "west": 1, "north": 0}
    health = {entry["name"]: entry for entry in get_health().body["backends"]}
    assert health["west"]["state"] == "cooling" and 19 <= health["west"]["retry_in"] <= 20
    clock.advance(20)
    assert post_completions(SEED).body["backend"] == "west"


def test_when_the_recovery_fits_the_deadline_the_request_waits_for_it(pool, regions, clock):
    pool({"name": "east"}, {"name": "west"})
    regions["east"].openai_control.faults({"status": 429, "retry_after": 3})
    regions["west"].openai_control.faults({"status": 503, "retry_after": 5})
    reply = post_completions(SEED)
    assert reply.status == 200 and reply.body["backend"] == "east"
    assert clock.slept == [pytest.approx(3, abs=0.1)]


def test_an_unavailable_and_a_throttled_backend_answer_503_when_nothing_fits(pool, regions):
    pool({"name": "east"}, {"name": "west"}, AZURE_OPENAI_DEADLINE="2")
    regions["east"].openai_control.faults({"status": 429, "retry_after": 40})
    regions["west"].openai_control.faults({"status": 500})
    post_completions(SEED)
    reply = post_completions(SEED)  # found nothing ready: the pool's state answers
    assert reply.status == 503 and reply.body["error"]["code"] == "upstream_unavailable"
    assert reply.headers["Retry-After"] == "10"  # west's 10 s cooldown ends first


def test_a_caller_finding_nothing_ready_hears_what_cooled_the_backends(pool, regions, clock):
    """Both backends cooled by a 500: a caller that finds neither ready gets that failure (502
    upstream_error), not a generic 503 (test_backends: a later failure does not replace the
    cause of a longer cooldown already running)."""
    pool({"name": "east"}, {"name": "west"}, AZURE_OPENAI_DEADLINE="2")
    regions["east"].openai_control.faults({"status": 500})
    regions["west"].openai_control.faults({"status": 500})
    post_completions(SEED)
    reply = post_completions(SEED)
    assert reply.status == 502 and reply.body["error"]["code"] == "upstream_error", reply.body
    assert served(regions) == {"east": 1, "west": 1, "north": 0}  # (nothing ready: no call made)


def test_headroom_moves_traffic_before_the_429s(pool, regions):
    pool({"name": "east", "priority": 1}, {"name": "west", "priority": 2})
    regions["east"].openai_control.config(rpm=3)
    backends = [post_completions(SEED).body["backend"] for _ in range(6)]
    assert backends == ["east"] * 3 + ["west"] * 3  # east said "0 requests left" on its third answer
    assert regions["east"].openai_control.stats()["throttled"] == 0  # never asked past its quota


@pytest.mark.parametrize("body", [{"prompt": "please trip the content filter"},
                                  {"prompt": "word " * 4090, "max_tokens": 100}])
def test_the_callers_own_errors_do_not_fail_over(pool, regions, body):
    pool({"name": "east", "priority": 1}, {"name": "west", "priority": 2})
    assert post_completions(body).status == 400
    assert served(regions) == {"east": 1, "west": 0, "north": 0}
    assert get_health().body["backends"][0]["state"] == "ready"


def test_a_misconfigured_backend_is_skipped_and_reported_once(pool, regions, caplog):
    pool({"name": "east", "priority": 1, "deployment": "no-such-deployment", "model": "gpt-35-turbo-instruct"},
         {"name": "west", "priority": 2})
    with caplog.at_level(logging.WARNING):
        assert [post_completions(SEED).body["backend"] for _ in range(5)] == ["west"] * 5
    assert served(regions)["east"] == 1  # (concurrent requests sent before its first 404 answered would try it too)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "east" in errors[0].getMessage() and "misconfigured" in errors[0].getMessage()
    assert {e["name"]: e["state"] for e in get_health().body["backends"]} == {"east": "misconfigured",
                                                                               "west": "ready"}


def test_every_backend_misconfigured_answers_502_at_once(pool, regions):
    pool({"name": "east", "deployment": "missing"}, {"name": "west", "deployment": "missing"})
    first = post_completions(SEED)
    assert first.status == 502 and first.body["error"]["code"] == "upstream_misconfigured"
    again = post_completions(SEED)
    assert again.status == 502 and again.body["error"]["code"] == "upstream_misconfigured"
    assert served(regions) == {"east": 1, "west": 1, "north": 0}


def test_each_backend_gets_only_its_own_credentials(pool, regions, emulators, monkeypatch, caplog):
    monkeypatch.setenv("WEST_OPENAI_KEY", regions["west"].openai.api_key)
    pool({"name": "east"}, {"name": "west", "auth": "key", "api_key_setting": "WEST_OPENAI_KEY"},
         {"name": "north"})
    with caplog.at_level(logging.DEBUG):
        assert {r.status for r in post_many([SEED] * 30)} == {200}
    modes = {name: e.openai_control.stats()["auth_modes"] for name, e in regions.items()}
    assert set(modes["west"]) == {"api-key"} and set(modes["east"]) == set(modes["north"]) == {"bearer"}
    assert emulators.openai_control.stats()["tokens_issued"] == 1  # east and north share one identity's token
    assert regions["west"].openai.api_key not in caplog.text


@pytest.mark.parametrize(("value", "reason"), [
    ("not json", "valid JSON"),
    ('{"name": "east"}', "list"),
    ('[{"name": "east"}]', "endpoint"),
    ('[{"name": "a", "endpoint": "https://a.openai.azure.com"}, {"name": "a", "endpoint": "https://b.openai.azure.com"}]',
     "more than one"),
    ('[{"name": "a", "endpoint": "https://a.openai.azure.com", "auth": "key", "api_key_setting": "MISSING_KEY"}]',
     "not set"),
    ("[" * 100_000, "nested"),
])
def test_invalid_pool_settings_are_503_not_configured_naming_the_setting(configure_app, value, reason):
    configure_app(AZURE_OPENAI_BACKENDS=value, AZURE_OPENAI_ENDPOINT=None)
    health = get_health()
    assert health.status == 503 and reason in health.body["settings"]["AZURE_OPENAI_BACKENDS"]
    reply = post_completions(SEED)
    assert reply.status == 503 and "AZURE_OPENAI_BACKENDS" in reply.body["error"]["settings"]
    assert "openai.azure.com" not in json.dumps(health.body) + json.dumps(reply.body)


def test_health_lists_backends_by_name_only(pool, regions):
    pool({"name": "east", "priority": 1, "weight": 2}, {"name": "west", "priority": 2})
    body = get_health().body
    common = {"state": "ready", "retry_in": 0, "model": "gpt-35-turbo-instruct", "api": "completions"}
    assert body["backends"] == [{"name": "east", "priority": 1, "weight": 2, **common},
                                {"name": "west", "priority": 2, "weight": 1, **common}]
    assert "127.0.0.1" not in json.dumps(body)


def test_the_log_line_names_the_backend_and_the_failovers(pool, regions, caplog):
    pool({"name": "east", "priority": 1}, {"name": "west", "priority": 2})
    regions["east"].openai_control.faults({"status": 500})
    with caplog.at_level(logging.INFO, logger="shared.logs"):
        post_completions(SEED)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("completion request_id="))
    assert "backend=west" in line and "failovers=1" in line and "attempts=2" in line


def test_queue_and_event_grid_use_the_pool(pool, regions):
    from support.triggers import event, from_event_grid, from_queue, message

    pool({"name": "east", "priority": 1}, {"name": "west", "priority": 2})
    regions["east"].openai_control.faults({"status": 429, "retry_after": 30})
    assert from_queue(message({"id": "q", **SEED}))["result"]["backend"] == "west"
    assert from_event_grid(event({"id": "e", **SEED}))["result"]["backend"] == "west"
    assert Counter(served(regions)) == Counter({"east": 1, "west": 2, "north": 0})


def test_a_caller_out_of_time_does_not_cool_a_healthy_backend(pool, regions):
    """An attempt cut short by the caller's own deadline says nothing about the backend: it
    must not cool it (or every caller would then be turned away without a call)."""
    for name in ("east", "west"):
        regions[name].openai_control.config(latency_ms=1000)
    pool({"name": "east"}, {"name": "west"}, AZURE_OPENAI_MAX_CONCURRENCY="2", AZURE_OPENAI_DEADLINE="1.6")
    replies = post_many([SEED] * 4)  # two take the slots; two wait for one and get too little time
    assert sorted(r.status for r in replies) == [200, 200, 504, 504], [r.body for r in replies]
    assert {entry["state"] for entry in get_health().body["backends"]} == {"ready"}
    for name in ("east", "west"):
        regions[name].openai_control.config(latency_ms=0)
    assert post_completions(SEED).status == 200  # served at once, not "no backend ready"
