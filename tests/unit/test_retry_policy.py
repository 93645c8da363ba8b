"""The retry policy on its own: no sockets, no clock, no client (``shared/upstream/retry.py``)."""

from __future__ import annotations

import random

import pytest

from shared.upstream.failures import error_for_status
from shared.upstream.headers import retry_after
from shared.upstream.retry import RetryPolicy

POLICY = RetryPolicy(max_retries=3, backoff_base=0.5, backoff_cap=8.0, min_attempt=0.1)


@pytest.mark.parametrize("retry_number, ceiling", [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (40, 8.0)])
def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling(retry_number, ceiling):
    rng = random.Random(7)
    waits = [POLICY.backoff(retry_number, rng) for _ in range(2000)]
    assert 0 <= min(waits) and max(waits) <= ceiling
    assert max(waits) > ceiling * 0.95 and min(waits) < ceiling * 0.05  # the whole range, not a fixed wait


def test_rounds_stop_when_the_budget_is_spent():
    assert [POLICY.next_round(done, 1.0, 60, attempted=True) for done in range(5)] == [1.0, 1.0, 1.0, None, None]


def test_a_request_that_found_nothing_ready_may_wait_once_whatever_the_budget():
    """It has made no attempt: its wait is for the pool's recovery, not a retry."""
    assert RetryPolicy(max_retries=0).next_round(0, 2.0, 60, attempted=False) == 2.0
    assert RetryPolicy(max_retries=0).next_round(1, 2.0, 60, attempted=False) is None  # once
    assert RetryPolicy(max_retries=0).next_round(0, 2.0, 60, attempted=True) is None
    assert POLICY.next_round(3, 2.0, 60, attempted=False) is None  # else the budget bounds it too


@pytest.mark.parametrize("params, tokens", [
    ({"prompt": "x"}, 16),  # max_tokens defaults to 16
    ({"prompt": "x", "max_tokens": 100, "n": 3}, 300),
    ({"prompt": ["a", "b"], "max_tokens": 10, "n": 2, "best_of": 5}, 100),  # best_of choices are generated
])
def test_a_request_reserves_max_tokens_for_each_choice_of_each_prompt(params, tokens):
    from shared.config.backends import BackendSettings
    from shared.upstream.knowledge import Knowledge
    from shared.upstream.plan import Request
    from shared.upstream.routing import Route

    backend = BackendSettings(name="b", endpoint="https://b.openai.azure.com", deployment="d", api_version="v",
                              token_scope="s", api="completions")
    assert Route.for_request(Request("completions", params), [backend], Knowledge(), None).tokens_needed == tokens


@pytest.mark.parametrize("wait, remaining, expected", [
    (0.0, 5.0, 0.0),     # a backend is ready now
    (4.8, 5.0, 4.8),     # leaves 0.2 s, more than min_attempt
    (4.9, 5.0, None),    # would leave exactly min_attempt: not worth an attempt
    (30.0, 5.0, None),   # recovery after the deadline: answer now, not at the deadline
    (0.0, 0.05, None),   # no time left for any attempt
])
def test_a_wait_is_taken_only_if_an_attempt_fits_after_it(wait, remaining, expected):
    assert POLICY.next_round(0, wait, remaining, attempted=True) == expected


@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # the precise form first
    ({"Retry-After": "7"}, 7.0),
    ({"RETRY-AFTER": "0.25"}, 0.25),
    ({"Retry-After": "Tue, 15 Nov 1994 08:12:31 GMT"}, 10.0),
    ({"Retry-After": "Tue, 15 Nov 1994 08:12:11 GMT"}, 0.0),  # already past
    ({"Retry-After": "+5"}, None),
    ({"Retry-After": "-5"}, None),
    ({"Retry-After": "1e3"}, None),
    ({"Retry-After": "nan"}, None),
    ({"Retry-After": " 5 "}, 5.0),  # surrounding whitespace is not part of a field value
    ({"Retry-After": ""}, None),
    ({"x-ratelimit-reset-requests": "4"}, None),  # a quota reset is not a request to wait (see requested_wait)
    ({}, None),
])
def test_retry_after_has_one_grammar(headers, seconds):
    """The caller's Retry-After and the pool's cooldowns read the same headers the same way."""
    assert retry_after(headers, now=784_887_141.0) == seconds


@pytest.mark.parametrize("status", [429, 503])
def test_the_callers_retry_after_uses_the_same_reading(status):
    assert error_for_status(status, {"Retry-After": "7"}, {}).retry_after == 7
    assert error_for_status(status, {"retry-after-ms": "250", "Retry-After": "7"}, {}).retry_after == 0.25
    assert error_for_status(status, {"Retry-After": "1e3"}, {}).retry_after is None  # as the pool reads it
