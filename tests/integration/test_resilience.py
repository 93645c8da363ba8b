"""Resilience against the emulators' injected faults, over real sockets.

Each row of the fault matrix asserts the final status and code, the number of
upstream attempts (from the emulator's own counter) and the waits the retry
policy took. Waits are skipped by the test clock (``clock.slept`` records them);
network time is real, and its bounds are generous: these machines are shared.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time

import pytest

from shared.clock import Clock, Deadline
from shared.errors import AppError
from shared.upstream.client import CompletionClient
from shared.upstream.plan import Request
from support.app_client import LOOP, SEED, post_completions, post_many

FAST = {"AZURE_OPENAI_TIMEOUT": "0.5", "AZURE_OPENAI_CONNECT_TIMEOUT": "0.5", "AZURE_OPENAI_DEADLINE": "6"}
SLACK = 1.5  # seconds of scheduling noise tolerated on top of a bound


def inject(emulators, *faults) -> None:
    emulators.openai_control.faults(*faults)


def upstream_attempts(emulators) -> int:
    return emulators.openai_control.stats()["completion_requests"]


def timed(body=SEED):
    started = time.monotonic()
    reply = post_completions(body)
    return reply, time.monotonic() - started


def assert_outcome(reply, status: int, code: str | None = None) -> None:
    assert reply.status == status, reply.body
    if code is not None:
        assert reply.body["error"]["code"] == code


# -- 429 and Retry-After -----------------------------------------------------------
def test_429_with_retry_after_once_then_success(configure_app, emulators, clock):
    configure_app(**FAST)
    inject(emulators, {"status": 429, "retry_after": 1})
    reply, _ = timed()
    assert_outcome(reply, 200)
    assert upstream_attempts(emulators) == 2
    assert clock.slept == [pytest.approx(1.0, abs=0.05)]  # until the cooled backend recovers


def test_retry_after_ms_is_honoured_and_preferred(configure_app, emulators, clock):
    configure_app(**FAST)
    inject(emulators, {"status": 429, "retry_after": 5, "retry_after_ms": 1200})
    reply, _ = timed()
    assert_outcome(reply, 200)
    assert upstream_attempts(emulators) == 2
    assert clock.slept == [pytest.approx(1.2, abs=0.05)]  # not the 5 s of the coarser header


def test_429_every_time_gives_429_with_retry_after_after_max_retries(configure_app, emulators, clock):
    configure_app(**FAST, AZURE_OPENAI_MAX_RETRIES="2")
    inject(emulators, *[{"status": 429, "retry_after_ms": 100}] * 3)
    reply, _ = timed()
    assert_outcome(reply, 429, "rate_limited")
    assert reply.headers["Retry-After"] == "1"
    assert upstream_attempts(emulators) == 3  # MAX_RETRIES + 1
    assert clock.slept == [pytest.approx(0.1, abs=0.02)] * 2


def test_retry_after_beyond_the_deadline_returns_429_at_once(configure_app, emulators, clock):
    configure_app(**{**FAST, "AZURE_OPENAI_DEADLINE": "5"})
    inject(emulators, {"status": 429, "retry_after": 200})
    reply, elapsed = timed()
    assert_outcome(reply, 429, "rate_limited")
    assert reply.headers["Retry-After"] == "60"  # the cooldown the backend actually rests (AZURE_OPENAI_MAX_COOLDOWN)
    assert upstream_attempts(emulators) == 1
    assert clock.slept == [] and elapsed < SLACK


def test_retry_after_passed_to_callers_is_the_cooldown_actually_left(configure_app, emulators):
    """A gateway asking for hours is not passed on as such: the backend rests at most
    AZURE_OPENAI_MAX_COOLDOWN, and callers hear what is left of that."""
    configure_app(**FAST)
    inject(emulators, {"status": 429, "retry_after": 86400})
    reply, _ = timed()
    assert_outcome(reply, 429, "rate_limited")
    assert reply.headers["Retry-After"] == "60"
    configure_app(**FAST, AZURE_OPENAI_MAX_COOLDOWN="7")
    inject(emulators, {"status": 429, "retry_after": 3600})
    assert timed()[0].headers["Retry-After"] == "7"


def test_final_429_without_retry_after_still_tells_the_caller_when(configure_app, emulators):
    configure_app(**FAST, AZURE_OPENAI_MAX_RETRIES="0")
    inject(emulators, {"status": 429})
    reply, _ = timed()
    assert_outcome(reply, 429, "rate_limited")
    assert reply.headers["Retry-After"] == "1"


# -- transient failures once, then every time -----------------------------------------
TRANSIENT = {
    "500": ({"status": 500}, 502, "upstream_error"),
    "502": ({"status": 502}, 502, "upstream_error"),
    "503": ({"status": 503}, 503, "upstream_unavailable"),
    "504": ({"status": 504}, 504, "upstream_timeout"),
    "dropped connection": ({"drop": True}, 502, "upstream_unreachable"),
    "non-JSON body": ({"status": 200, "raw": "not json"}, 502, "upstream_bad_response"),
    "JSON of the wrong shape": ({"status": 200, "raw": "{\"choices\": 3}"}, 502, "upstream_bad_response"),
    "choices that are not objects": ({"status": 200, "raw": "{\"choices\": [3], \"usage\": {}}"}, 502,
                                     "upstream_bad_response"),
}


@pytest.mark.parametrize("case", list(TRANSIENT))
def test_transient_failure_once_then_success(configure_app, emulators, clock, case):
    configure_app(**FAST)
    inject(emulators, TRANSIENT[case][0])
    reply, _ = timed()
    assert_outcome(reply, 200)
    assert upstream_attempts(emulators) == 2
    assert len(clock.slept) == 1 and 0 <= clock.slept[0] <= 0.5  # first backoff: at most 0.5 s


@pytest.mark.parametrize("case", list(TRANSIENT))
def test_transient_failure_every_time(configure_app, emulators, clock, case):
    fault, status, code = TRANSIENT[case]
    configure_app(**FAST, AZURE_OPENAI_MAX_RETRIES="2")
    inject(emulators, *[fault] * 3)
    reply, _ = timed()
    assert_outcome(reply, status, code)
    assert upstream_attempts(emulators) == 3
    assert len(clock.slept) == 2 and clock.slept[0] <= 0.5 and clock.slept[1] <= 1.0  # full-jitter ceilings


def test_a_single_backend_s_failing_callers_each_retry_after_their_own_backoff(configure_app, emulators):
    """Full jitter spreads the retries of callers that failed together. (A cooldown shared by
    the pool of one, set to the longest backoff drawn so far, had them wait for running maxima:
    a handful of distinct waits among 20.) The clock stands still, so waits are exact."""
    settings = configure_app(auth="key", **FAST, AZURE_OPENAI_MAX_RETRIES="10").settings
    clock = _StillClock()
    client = CompletionClient(settings.backends, settings.retry, {}, clock=clock, rng=random.Random(7))
    inject(emulators, *[{"status": 500}] * 20)

    async def scenario():
        try:
            request = Request("completions", {"prompt": "x"})
            return await asyncio.gather(*(client.complete(request, Deadline(60, clock), "r") for _ in range(20)),
                                        return_exceptions=True)
        finally:
            await client.http.aclose()

    results = LOOP.run(scenario())
    assert len(results) == 20 and len(clock.slept) >= 20  # (retries are instant here: one may meet another's fault)
    assert len(set(clock.slept)) >= 0.9 * len(clock.slept), sorted(clock.slept)


class _StillClock(Clock):
    """Monotonic time that never moves; sleeps are recorded and skipped."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return 1000.0

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


# -- slow upstream and the deadline ----------------------------------------------------
def test_a_response_slower_than_the_attempt_timeout_is_retried(configure_app, emulators):
    configure_app(**FAST)
    inject(emulators, {"delay_ms": 2000})
    reply, elapsed = timed()
    assert_outcome(reply, 200)
    assert upstream_attempts(emulators) == 2
    assert 0.5 <= elapsed < 1.0 + SLACK


def test_every_attempt_slow_is_504_within_the_deadline(configure_app, emulators):
    configure_app(**{**FAST, "AZURE_OPENAI_DEADLINE": "2.5", "AZURE_OPENAI_MAX_RETRIES": "10"})
    inject(emulators, *[{"delay_ms": 3000}] * 12)
    reply, elapsed = timed()
    assert_outcome(reply, 504, "upstream_timeout")
    assert upstream_attempts(emulators) >= 2
    assert elapsed < 2.5 + SLACK


def test_each_attempt_timeout_shrinks_to_the_deadline(configure_app, emulators):
    configure_app(AZURE_OPENAI_TIMEOUT="30", AZURE_OPENAI_DEADLINE="1", AZURE_OPENAI_MAX_RETRIES="0")
    inject(emulators, {"delay_ms": 5000})
    reply, elapsed = timed()
    assert_outcome(reply, 504, "upstream_timeout")
    assert elapsed < 1 + SLACK  # not the 30 s per-attempt timeout


def test_a_slow_token_and_a_slow_upstream_together_stay_within_the_deadline(configure_app, emulators):
    """The time spent getting a token counts: the attempt's HTTP timeouts shrink to what is left."""
    identity(emulators, token_lifetime=3600)
    emulators.identity_control.faults({"delay_ms": 1500})
    inject(emulators, {"delay_ms": 10000})
    configure_app(AZURE_OPENAI_TIMEOUT="30", AZURE_OPENAI_CONNECT_TIMEOUT="5", AZURE_OPENAI_DEADLINE="3",
                  AZURE_OPENAI_MAX_RETRIES="0")
    reply, elapsed = timed()
    assert_outcome(reply, 504, "upstream_timeout")
    assert 1.5 <= elapsed < 3 + SLACK


def test_content_filter_error_of_an_unexpected_shape_is_still_a_400(configure_app, emulators):
    configure_app(**FAST)
    inject(emulators, {"status": 400, "raw": json.dumps({"error": {"code": "content_filter", "message": "x",
                                                                   "innererror": "not an object"}})})
    reply, _ = timed()
    assert_outcome(reply, 400, "content_filter")
    assert reply.body["error"]["content_filter_result"] == {}


@pytest.mark.parametrize("status", [409, 408])
def test_409_and_408_are_retried_without_openais_endless_loop(configure_app, emulators, clock, status):
    configure_app(**FAST, AZURE_OPENAI_MAX_RETRIES="2")
    inject(emulators, *[{"status": status}] * 3)
    reply, elapsed = timed()
    assert_outcome(reply, 502 if status == 409 else 504, "upstream_error" if status == 409 else "upstream_timeout")
    assert upstream_attempts(emulators) == 3  # retried by the app's policy, not openai's 409 loop
    assert len(clock.slept) == 2 and elapsed < SLACK
    inject(emulators, {"status": status})
    assert_outcome(timed()[0], 200)


# -- final 4xx are never retried ---------------------------------------------------------
def test_content_filter_is_not_retried(configure_app, emulators):
    configure_app(**FAST)
    reply, _ = timed({"prompt": "trip the content filter"})
    assert_outcome(reply, 400, "content_filter")
    assert upstream_attempts(emulators) == 1


def test_upstream_validation_400_is_not_retried(configure_app, emulators):
    configure_app(**FAST)
    reply, _ = timed({"prompt": "word " * 4090, "max_tokens": 100})
    assert_outcome(reply, 400, "upstream_rejected")
    assert upstream_attempts(emulators) == 1


# -- the identity endpoint ---------------------------------------------------------------
def identity(emulators, **config) -> None:
    emulators.identity_control.config(**config)


@pytest.mark.parametrize("outage", ["error", "stall"])
def test_identity_endpoint_down_is_503_within_the_deadline(configure_app, emulators, outage):
    identity(emulators, outage=outage)
    configure_app(**{**FAST, "AZURE_OPENAI_DEADLINE": "2"})
    reply, elapsed = timed()
    assert_outcome(reply, 503, "credential_unavailable")
    assert elapsed < 2 + SLACK
    assert upstream_attempts(emulators) == 0


def test_identity_endpoint_refusing_connections_is_503(configure_app, emulators):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    configure_app(**{**FAST, "AZURE_OPENAI_DEADLINE": "2"},
                  IDENTITY_ENDPOINT=f"http://127.0.0.1:{closed_port}/msi/token")
    reply, elapsed = timed()
    assert_outcome(reply, 503, "credential_unavailable")
    assert elapsed < 2 + SLACK


def test_identity_blip_is_retried_within_the_deadline(configure_app, emulators, clock):
    emulators.identity_control.faults({"drop": True})
    configure_app(**FAST)
    reply, _ = timed()
    assert_outcome(reply, 200)
    assert clock.slept == [pytest.approx(1.0, abs=0.05)]  # the failure is remembered for 1 s, then asked again
    identity_stats = emulators.identity_control.stats()
    assert identity_stats["requests_by_status"] == {"dropped": 1, "200": 1}  # the app asked again
    assert upstream_attempts(emulators) == 1  # and called upstream only with a token


def test_identity_endpoint_down_while_a_valid_token_is_cached(configure_app, emulators):
    configure_app(**FAST)
    assert post_completions(SEED).status == 200
    identity(emulators, outage="error")
    reply, _ = timed()
    assert_outcome(reply, 200)


# -- concurrency cap ---------------------------------------------------------------------
def _latency(emulators, ms: int) -> None:
    emulators.openai_control.config(latency_ms=ms)


def test_concurrency_cap_queues_calls_beyond_it(configure_app, emulators):
    _latency(emulators, 400)
    configure_app(AZURE_OPENAI_TIMEOUT="5", AZURE_OPENAI_MAX_CONCURRENCY="2")
    started = time.monotonic()
    assert [r.status for r in post_many([SEED] * 4)] == [200] * 4
    assert time.monotonic() - started >= 0.8  # two waves of two


def test_concurrency_cap_sheds_with_503_when_no_slot_frees_in_time(configure_app, emulators):
    """Two long calls hold both slots; calls whose deadline ends first never reach upstream."""
    _latency(emulators, 1500)
    settings = configure_app(auth="key", AZURE_OPENAI_MAX_CONCURRENCY="2", AZURE_OPENAI_TIMEOUT="5").settings
    client = CompletionClient(settings.backends, settings.retry, {})

    async def call(deadline: float):
        try:
            return (await client.complete(Request("completions", {"prompt": "x"}), Deadline(deadline), "r")).attempts
        except AppError as error:
            return error

    async def scenario():
        holders = [asyncio.create_task(call(5)) for _ in range(2)]
        await asyncio.sleep(0.3)
        late = [asyncio.create_task(call(0.5)) for _ in range(2)]
        results = await asyncio.gather(*holders, *late)
        await client.http.aclose()
        return results

    results = LOOP.run(scenario())
    assert results[:2] == [1, 1]
    assert all(isinstance(r, AppError) and r.code == "overloaded" and r.status == 503 and r.retry_after == 1
               for r in results[2:])
    assert upstream_attempts(emulators) == 2


# -- soak ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_soak_2000_requests_32_threads_expiring_tokens_and_10_percent_faults(configure_app, emulators):
    lifetime = 303  # 3 s fresh, then refreshed: many refreshes during the run
    identity(emulators, token_lifetime=lifetime)
    pattern = [{"status": 429, "retry_after_ms": 20}] + [{"delay_ms": 1}] * 4 + [{"status": 503}] + \
        [{"delay_ms": 1}] * 14  # 2 in 20 fail: 10 %
    inject(emulators, *(pattern * 130))
    configure_app(AZURE_OPENAI_TIMEOUT="5", AZURE_OPENAI_DEADLINE="20")
    started = time.monotonic()
    replies = []
    for _ in range(2000 // 32 + 1):  # waves of 32 concurrent invocations on the one loop
        replies += post_many([SEED] * min(32, 2000 - len(replies)))
    duration = time.monotonic() - started
    assert len(replies) == 2000
    statuses = [r.status for r in replies]
    assert 500 not in statuses
    for reply in replies:  # nothing lost: an answer, or a coded error
        assert reply.status == 200 or reply.body["error"]["code"] in ("rate_limited", "upstream_unavailable")
    assert statuses.count(200) >= 1990
    tokens = emulators.openai_control.stats()["tokens_issued"]
    expected = duration / (lifetime - 300)
    assert tokens <= expected + 3, (tokens, duration)
    assert tokens >= max(1, expected - 3), (tokens, duration)
