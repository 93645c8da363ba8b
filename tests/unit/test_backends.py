"""The backend pool: settings parsing and routing state, with an injected clock (no HTTP, no sleeps)."""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections import Counter
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.config.backends import BACKENDS_SETTING, MAX_BACKENDS, BackendSettings, Defaults, parse_backends
from shared.config.settings import load_settings, single_backend
from shared.upstream.headers import requested_wait
from shared.upstream.pool import (
    DEFAULT_COOLDOWN,
    HEADROOM_TTL,
    LONG_COOLDOWN,
    MAX_COOLDOWN,
    MISCONFIGURED_COOLDOWN,
    BackendPool,
    Recovery,
)

SCOPE = "https://cognitiveservices.azure.com/.default"
EXAMPLE = [
    {"name": "east-ptu", "endpoint": "https://east.openai.azure.com/", "priority": 1},
    {"name": "west-paygo", "endpoint": "https://west.openai.azure.com/", "priority": 2, "weight": 2,
     "auth": "key", "api_key_setting": "WEST_OPENAI_KEY"},
]
WEST_KEY = "0123456789abcdef0123456789abcdef"


def parse(backends, *, default_deployment: str | None = "gpt-35-turbo-instruct", default_auth="managed_identity",
          default_client_id: str | None = None, **environ: str):
    raw = backends if isinstance(backends, str) else json.dumps(backends)
    return parse_backends({BACKENDS_SETTING: raw, **environ}, Defaults(
        deployment=default_deployment, api_version="2024-10-21", auth=default_auth, client_id=default_client_id,
        token_scope=SCOPE))


def problem(backends, **environ) -> str:
    found, problems = parse(backends, **environ)
    assert found == () and set(problems) == {BACKENDS_SETTING}
    return problems[BACKENDS_SETTING]


# -- settings -------------------------------------------------------------------------
def test_the_issue_example_parses_with_defaults_and_the_key_from_its_named_setting():
    (east, west), problems = parse(EXAMPLE, default_client_id="cid", WEST_OPENAI_KEY=f"  {WEST_KEY}\n")
    assert problems == {}
    assert east == BackendSettings(name="east-ptu", endpoint="https://east.openai.azure.com",
                                   deployment="gpt-35-turbo-instruct", api_version="2024-10-21", priority=1,
                                   weight=1, auth="managed_identity", api_key=None, client_id="cid",
                                   token_scope=SCOPE, from_pool=True)
    assert (west.endpoint, west.priority, west.weight, west.auth, west.api_key) == (
        "https://west.openai.azure.com", 2, 2, "key", WEST_KEY)
    assert WEST_KEY not in repr(west) and WEST_KEY not in str((east, west))


def test_every_field_of_an_entry_is_read():
    (backend,), problems = parse([{"name": "b_1", "endpoint": "http://127.0.0.1:9/", "deployment": "dep.2",
                                   "api_version": "2023-05-15", "priority": 3, "weight": 7, "auth": "DEFAULT",
                                   "client_id": "11111111-2222-3333-4444-555555555555"}], default_auth="key")
    assert problems == {}
    assert (backend.name, backend.endpoint, backend.deployment, backend.api_version, backend.priority,
            backend.weight, backend.auth, backend.client_id) == (
        "b_1", "http://127.0.0.1:9", "dep.2", "2023-05-15", 3, 7, "default", "11111111-2222-3333-4444-555555555555")
    (backend,), _ = parse([{"name": "n", "endpoint": "https://n.example.com", "deployment": None, "priority": None,
                            "weight": None, "auth": None, "client_id": None}], default_client_id="cid")
    assert (backend.deployment, backend.priority, backend.weight, backend.auth, backend.client_id) == (
        "gpt-35-turbo-instruct", 1, 1, "managed_identity", "cid")  # null is the default


def test_absent_or_blank_means_the_single_endpoint_settings_apply():
    defaults = Defaults(deployment="d", api_version="2024-10-21", auth="key", client_id=None, token_scope=SCOPE)
    assert parse_backends({}, defaults) == ((), {})
    assert parse_backends({BACKENDS_SETTING: "  "}, defaults) == ((), {})


def test_the_single_backend_comes_from_the_existing_settings():
    loaded = load_settings({"AZURE_OPENAI_ENDPOINT": "https://a.openai.azure.com/",
                            "AZURE_OPENAI_DEPLOYMENT": "d", "AZURE_OPENAI_AUTH": "key",
                            "AZURE_OPENAI_API_KEY": "k"}, function_timeout=lambda: 180.0)
    backend = single_backend(loaded.upstream)
    assert backend == BackendSettings(name="default", endpoint="https://a.openai.azure.com", deployment="d",
                                      api_version="2025-04-01-preview", auth="key", api_key="k", token_scope=SCOPE)
    assert (backend.api, backend.model, backend.api_setting) == ("auto", "d", "AZURE_OPENAI_API")
    assert (backend.priority, backend.weight, backend.identity) == (1, 1, None)


def test_identity_backends_share_a_token_cache_per_identity_and_scope():
    (a, b, c, d), _ = parse([{"name": "a", "endpoint": "https://a.example.com"},
                             {"name": "b", "endpoint": "https://b.example.com"},
                             {"name": "c", "endpoint": "https://c.example.com", "client_id": "other"},
                             {"name": "d", "endpoint": "https://d.example.com", "auth": "key",
                              "api_key_setting": "D_KEY"}], D_KEY="k")
    assert a.identity == b.identity == ("managed_identity", None, SCOPE)
    assert c.identity != a.identity and d.identity is None


SECRET_URL = "https://secret-host.example.com/?sig=SECRETSIG"
ONE = {"name": "one", "endpoint": "https://one.example.com"}


@pytest.mark.parametrize(("backends", "environ", "expected"), [
    ("[{not json", {}, "must be valid JSON (line 1 column 3)"),
    ('{"name": "one"}', {}, "must be a JSON list"),
    ('"SECRETSTRING"', {}, "must be a JSON list"),
    ("[]", {}, "at least one backend"),
    ([ONE] * (MAX_BACKENDS + 1), {}, f"at most {MAX_BACKENDS} backends"),
    ("[" * 50_000 + "]" * 50_000, {}, "nested too deeply"),
    ("[1e999999999999999999]", {}, "entry at index 0 must be a JSON object"),
    (["SECRETSTRING"], {}, "entry at index 0 must be a JSON object"),
    ([{"endpoint": "https://x.example.com"}], {}, "entry at index 0: name is required"),
    ([{"name": "bad name!", "endpoint": "https://x.example.com"}], {}, "entry at index 0: name is required"),
    ([{"name": "n" * 33, "endpoint": "https://x.example.com"}], {}, "entry at index 0: name is required"),
    ([{"name": 7, "endpoint": "https://x.example.com"}], {}, "entry at index 0: name is required"),
    ([ONE, ONE], {}, "entry 'one': name is used by more than one entry"),
    ([{"name": "one"}], {}, "entry 'one': endpoint is required"),
    ([{"name": "one", "endpoint": SECRET_URL}], {}, "entry 'one': endpoint must not have a query"),
    ([{"name": "one", "endpoint": "http://secret-host.example.com"}], {}, "entry 'one': endpoint must be an https"),
    ([{"name": "one", "endpoint": 443}], {}, "entry 'one': endpoint must be a non-empty string"),
    ([{**ONE, "deployment": "SECRET/DEPLOYMENT"}], {}, "entry 'one': deployment must be a deployment name"),
    ([{**ONE, "api_version": "SECRETVERSION"}], {}, "entry 'one': api_version must look like"),
    ([{**ONE, "priority": 0}], {}, "entry 'one': priority must be an integer from 1"),
    ([{**ONE, "priority": True}], {}, "entry 'one': priority must be an integer"),
    ([{**ONE, "priority": 1.0}], {}, "entry 'one': priority must be an integer"),
    ([{**ONE, "priority": "1"}], {}, "entry 'one': priority must be an integer"),
    ('[{"name": "one", "endpoint": "https://one.example.com", "priority": NaN}]', {}, "priority must be an integer"),
    ([{**ONE, "weight": 10 ** 30}], {}, "entry 'one': weight must be an integer from 1 to 1000"),
    ([{**ONE, "weight": -1}], {}, "entry 'one': weight must be an integer"),
    ([{**ONE, "auth": "SECRETAUTH"}], {}, "entry 'one': auth must be one of managed_identity, default, key"),
    ([{**ONE, "auth": "key"}], {}, "entry 'one': api_key_setting is required"),
    ([{**ONE, "auth": "key", "api_key_setting": "SECRET_SETTING"}], {}, "named by api_key_setting is not set"),
    ([{**ONE, "auth": "key", "api_key_setting": "SECRET_SETTING"}], {"SECRET_SETTING": "  "}, "is not set"),
    ([{**ONE, "auth": "key", "api_key_setting": "SECRET-KEY-PASTED-HERE"}], {},
     "api_key_setting must be the name of an app setting"),
    ([{**ONE, "auth": "key", "api_key_setting": "SECRET_SETTING"}],
     {"SECRET_SETTING": "@Microsoft.KeyVault(SecretUri=https://SECRETVAULT.vault.azure.net/secrets/k/)"},
     "a Key Vault reference the platform could not resolve"),
    ([{**ONE, "api_key_setting": "SECRET_SETTING"}], {"SECRET_SETTING": "SECRETKEY"},
     "api_key_setting is only used with auth key"),
    ([{**ONE, "client_id": ["SECRETCLIENT"]}], {}, "entry 'one': client_id must be a non-empty string"),
    ([{**ONE, "region": "SECRETVALUE"}], {}, "entry 'one': unknown key 'region'"),
    ([{**ONE, "SECRET key with spaces": 1}], {}, "entry 'one': unknown key (not shown)"),
    ('[{"name": "one", "endpoint": "https://one.example.com", "weight": 1, "weight": "SECRETVALUE"}]', {},
     "entry 'one': key 'weight' appears more than once"),
])
def test_invalid_pool_settings_name_the_entry_never_a_value(backends, environ, expected):
    reason = problem(backends, **environ)
    assert expected in reason
    assert "SECRET" not in reason and "secret" not in reason  # no URL, key, setting name or raw JSON


def test_a_missing_deployment_is_named_only_when_there_is_no_default():
    assert "deployment is required when AZURE_OPENAI_DEPLOYMENT is not set" in problem(
        [ONE], default_deployment=None)
    assert "deployment is required" in problem([{**ONE, "deployment": None}], default_deployment=None)
    (backend,), _ = parse([{**ONE, "deployment": "mine"}], default_deployment=None)
    assert backend.deployment == "mine"


def test_every_problem_is_reported_at_once():
    reason = problem([{"name": "a", "endpoint": "ftp://a"}, "x", {"name": "b", "endpoint": "https://b.example.com",
                                                                  "weight": 0, "auth": "key"}])
    assert reason.split("; ") == [
        "entry 'a': endpoint must be an https:// URL (http:// only for localhost)",
        "entry at index 1 must be a JSON object",
        "entry 'b': weight must be an integer from 1 to 1000",
        "entry 'b': api_key_setting is required"]


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8).map(
    lambda s: f"MARK{s}")
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["name", "endpoint", "deployment", "api_version", "priority", "weight", "auth",
                     "api_key_setting", "client_id", "other"]), inner, max_size=4), max_leaves=12)
_entries = st.lists(st.fixed_dictionaries({"name": st.from_regex(r"[a-z]{1,8}", fullmatch=True)},
                                          optional=dict.fromkeys(("endpoint", "deployment", "priority", "weight",
                                                                  "auth", "api_key_setting"), _scalars)),
                    max_size=4)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.one_of(_json, _entries))
def test_any_json_gives_backends_or_named_problems_never_an_exception_or_a_value(data):
    found, problems = parse(json.dumps(data), MARKSETTING="MARKKEY")
    assert (found == ()) != (problems == {})
    for reason in problems.values():
        assert "MARK" not in re.sub(r"entry '[A-Za-z0-9_-]{1,32}'", "", reason)  # a valid name is how entries are named


# -- routing ----------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def backend(name: str, priority: int = 1, weight: int = 1) -> BackendSettings:
    return BackendSettings(name=name, endpoint=f"https://{name}.example.com", deployment="d",
                           api_version="2024-10-21", priority=priority, weight=weight, token_scope=SCOPE)


def pool_of(*backends: BackendSettings, clock: Clock | None = None, seed: int = 1,
            wall_clock=lambda: 1_700_000_000.0) -> BackendPool:
    return BackendPool(backends, clock=clock or Clock(), wall_clock=wall_clock, rng=random.Random(seed))


def picks(pool: BackendPool, n: int, **kwargs) -> Counter:
    return Counter(pool.choose(**kwargs).name for _ in range(n))


def test_the_lowest_priority_with_a_ready_backend_serves():
    clock = Clock()
    pool = pool_of(backend("paygo", 2), backend("ptu", 1), backend("spare", 3), clock=clock)
    assert picks(pool, 10) == {"ptu": 10}
    assert pool.choose(tried={"ptu"}).name == "paygo"
    assert pool.choose(tried={"ptu", "paygo"}).name == "spare"
    assert pool.choose(tried={"ptu", "paygo", "spare"}) is None
    pool.record_failure("ptu", "throttled", {"retry-after-ms": "1500"})
    assert picks(pool, 5) == {"paygo": 5}
    clock.advance(1.5)
    assert pool.choose().name == "ptu"  # back as soon as its Retry-After has passed


@pytest.mark.parametrize("weights", [(1, 1), (1, 2), (1, 2, 5), (3, 7, 11, 1)])
def test_the_split_within_a_priority_follows_the_weights(weights):
    pool = pool_of(*(backend(f"b{i}", 1, w) for i, w in enumerate(weights)), backend("later", 2, 50))
    total = sum(weights)
    for n in (total, 10 * total + 3, 997):
        counts = picks(pool, n)
        for i, weight in enumerate(weights):
            assert abs(counts[f"b{i}"] - n * weight / total) <= 2, (n, counts)
        assert "later" not in counts


def test_the_rotation_is_smooth_and_each_instance_starts_elsewhere():
    def sequence(seed: int) -> list[str]:
        pool = pool_of(backend("a", weight=1), backend("b", weight=1), backend("c", weight=1), seed=seed)
        return [pool.choose().name for _ in range(6)]

    assert sequence(3) == sequence(3)  # deterministic for a seed
    assert all(len(set(sequence(seed)[:3])) == 3 for seed in range(20))  # equal weights: strict rotation
    assert len({sequence(seed)[0] for seed in range(20)}) == 3  # instances do not all start on the same one
    weighted = pool_of(backend("a", weight=4), backend("b", weight=1))
    run = [weighted.choose().name for _ in range(50)]
    assert "bb" not in "".join(name[0] for name in run)  # b's picks are spread out, not bunched


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 20)), min_size=1, max_size=8), st.integers(0, 2 ** 32))
@hypothesis_settings(max_examples=100, deadline=None)
def test_any_pool_serves_from_its_lowest_priority_by_weight(specs, seed):
    pool = pool_of(*(backend(f"b{i}", p, w) for i, (p, w) in enumerate(specs)), seed=seed)
    best = min(p for p, _ in specs)
    group = {f"b{i}": w for i, (p, w) in enumerate(specs) if p == best}
    n = 300
    counts = picks(pool, n)
    assert set(counts) <= set(group)
    for name, weight in group.items():
        assert abs(counts[name] - n * weight / sum(group.values())) <= 2


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After-Ms": "1500", "Retry-After": "9"}, 1.5),  # the precise form wins
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "2.5"}, 2.5),
    ({"Retry-After": formatdate(1_700_000_000.0 + 30, usegmt=True)}, 30.0),  # an HTTP date
    ({"Retry-After": formatdate(1_700_000_000.0 - 30, usegmt=True)}, 0.0),  # a date already past
    ({"x-ratelimit-reset-requests": "4"}, 4.0),
    ({"x-ratelimit-reset-tokens": "55", "x-ratelimit-reset-requests": "4"}, 55.0),  # the later one
    ({"x-rate-limit-reset-tokens": "12"}, 12.0),  # the spelling Azure has used on 429s
    ({"x-ratelimit-reset-requests": "1m5s"}, MAX_COOLDOWN),  # OpenAI-style durations (65 s: over the cap)
    ({"x-ratelimit-reset-requests": "0m45s"}, 45.0),
    ({"x-ratelimit-reset-tokens": "250ms"}, 0.25),
    ({"retry-after-ms": "garbage", "Retry-After": "3"}, 3.0),  # an unreadable header is skipped
    ({}, DEFAULT_COOLDOWN),
    ({"retry-after-ms": "-5"}, DEFAULT_COOLDOWN),
    ({"retry-after-ms": "NaN"}, DEFAULT_COOLDOWN),
    ({"Retry-After": "inf"}, DEFAULT_COOLDOWN),
    ({"Retry-After": "1e3"}, DEFAULT_COOLDOWN),
    ({"Retry-After": "1_000"}, DEFAULT_COOLDOWN),
    ({"Retry-After": "Someday, 99 Foo 2024"}, DEFAULT_COOLDOWN),
    ({"x-ratelimit-reset-tokens": "5parsecs"}, DEFAULT_COOLDOWN),
    ({"Retry-After": "9" * 40}, DEFAULT_COOLDOWN),  # absurdly long: not a number we read
    ({"Retry-After": "3600"}, MAX_COOLDOWN),  # an hour: honoured up to AZURE_OPENAI_MAX_COOLDOWN
    ({"Retry-After": formatdate(4_070_908_800.0, usegmt=True)}, MAX_COOLDOWN),  # a date in 2099
    ({"x-ratelimit-reset-requests": "2h"}, MAX_COOLDOWN),
    ({"Retry-After": "86400"}, MAX_COOLDOWN),
    ({"retry-after-ms": "999999999999999"}, MAX_COOLDOWN),
])
def test_a_throttled_backend_cools_for_what_upstream_asked(headers, seconds):
    clock = Clock()
    pool = pool_of(backend("a"), backend("b"), clock=clock)
    assert pool.record_failure("a", "throttled", headers) == pytest.approx(seconds)
    if seconds > 0:
        clock.advance(seconds - 0.001)
        assert picks(pool, 4) == {"b": 4}  # the cooled backend gets no request until it expires
    clock.advance(0.001)
    pool.record_success("a", {})  # (its probe answered: below)
    assert picks(pool, 4) == {"a": 2, "b": 2}


def test_the_cooldown_cap_is_a_setting():
    clock = Clock()
    pool = BackendPool([backend("a")], clock=clock, wall_clock=lambda: 0.0, max_cooldown=5)
    assert pool.record_failure("a", "throttled", {"Retry-After": "3600"}) == 5
    assert pool.next_recovery() == Recovery(5, True)  # what callers are told: the cooldown actually left


def test_when_a_cooldown_ends_one_probe_goes_first_and_decides_for_the_others():
    clock = Clock()
    pool = pool_of(backend("a"), clock=clock)
    pool.record_failure("a", "throttled", {"retry-after-ms": "1500"})
    clock.advance(1.5)
    first, second = object(), object()
    assert pool.choose(owner=first).name == "a"  # the probe
    assert pool.choose(owner=second) is None  # the others wait for its answer, not a timer
    recovery = pool.next_recovery()
    assert recovery.seconds == 0 and recovery.all_throttled and not recovery.probe.done()
    assert pool.snapshot()[0]["state"] == "probing"
    pool.record_failure("a", "throttled", {"retry-after-ms": "1500"})  # still throttled: cooled again
    assert recovery.probe.result() is False and pool.choose(owner=second) is None
    clock.advance(1.5)
    assert pool.choose(owner=second).name == "a"  # the next probe
    pool.record_success("a", {})
    assert pool.next_recovery() is None and picks(pool, 3) == {"a": 3}  # open to everyone


def test_a_probe_that_ends_without_an_answer_hands_the_probe_to_the_next_caller():
    clock = Clock()
    pool = pool_of(backend("a"), clock=clock)
    pool.record_failure("a", "unavailable")
    clock.advance(DEFAULT_COOLDOWN)
    prober, other = object(), object()
    assert pool.choose(owner=prober).name == "a"
    waiting = pool.next_recovery().probe
    pool.release("a", other)  # not the probe's owner: nothing changes
    assert pool.choose(owner=other) is None
    pool.release("a", prober)  # its caller ran out of time
    assert waiting.result() is None and pool.choose(owner=other).name == "a"  # the next probe
    assert pool.choose(owner=prober) is None


def test_requested_wait_reads_any_header_mapping():
    from requests.structures import CaseInsensitiveDict

    assert requested_wait(CaseInsensitiveDict({"RETRY-AFTER": "5"}), now=0) == 5
    assert requested_wait({"retry-after": 5, b"x": b"y"}, now=0) is None  # non-text values are ignored
    assert requested_wait(None, now=0) is None
    assert requested_wait({"Retry-After": "Tue, 15 Nov 1994 08:12:31"}, now=784_887_141.0) == 10.0  # no zone: UTC


def test_the_cause_kept_is_the_one_that_set_the_cooldown_in_progress():
    clock = Clock()
    pool = pool_of(backend("a"), backend("b"), clock=clock)
    pool.record_failure("a", "throttled", {"Retry-After": "40"}, cause="429 for 40 s")
    pool.record_failure("a", "unavailable", cause="a late 500")  # 10 s: shorter, so not what cools it
    assert pool.cooling_causes() == ["429 for 40 s"]
    clock.advance(40)
    assert pool.cooling_causes() == []


def test_unavailable_cools_for_ten_seconds_unless_a_503_says_otherwise():
    clock = Clock()
    pool = pool_of(backend("a"), backend("b"), clock=clock)
    assert pool.record_failure("a", "unavailable") == DEFAULT_COOLDOWN
    assert pool.record_failure("b", "unavailable", {"Retry-After": "3"}) == 3
    assert pool.choose() is None
    clock.advance(3)
    assert pool.choose().name == "b"


def test_a_pool_of_one_may_use_its_own_backoff_when_upstream_names_no_wait():
    clock = Clock()
    pool = pool_of(backend("default"), clock=clock)
    assert pool.record_failure("default", "unavailable", default_cooldown=0.5) == 0.5
    assert pool.next_recovery() == Recovery(0.5, False)
    clock.advance(0.5)
    assert pool.record_failure("default", "throttled", {"Retry-After": "3"}, default_cooldown=0.5) == 3
    clock.advance(3)
    assert pool.record_failure("default", "misconfigured", default_cooldown=0.5) == MISCONFIGURED_COOLDOWN


def test_a_cooldown_never_shortens_one_in_progress():
    clock = Clock()
    pool = pool_of(backend("a"), clock=clock)
    pool.record_failure("a", "throttled", {"Retry-After": "30"})
    clock.advance(5)
    assert pool.record_failure("a", "unavailable") == 25  # a late 500 from an earlier request
    assert pool.record_failure("a", "throttled", {"Retry-After": "40"}) == 40
    assert pool.next_recovery() == Recovery(40, True)


def test_a_long_cooldown_is_capped_and_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="shared.upstream.pool")
    clock = Clock()
    pool = pool_of(backend("east"), backend("west"), clock=clock)
    assert pool.record_failure("east", "throttled", {"Retry-After": "86400"}, detail="HTTP 429") == MAX_COOLDOWN
    for _ in range(5):  # more 429s from requests already in flight
        pool.record_failure("east", "throttled", {"Retry-After": "86400"})
    assert pool.record_failure("east", "throttled", {"Retry-After": str(int(LONG_COOLDOWN))}) == MAX_COOLDOWN
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "east" in record.getMessage() and "60 s" in record.getMessage() and "86400" in record.getMessage()
    assert "example.com" not in record.getMessage()
    clock.advance(MAX_COOLDOWN)
    pool.record_failure("east", "throttled", {"Retry-After": "120"})  # a new episode
    assert len(caplog.records) == 2


def test_a_misconfigured_backend_is_skipped_for_a_minute_and_logged_once_as_an_error(caplog):
    caplog.set_level(logging.INFO, logger="shared.upstream.pool")
    clock = Clock()
    pool = pool_of(backend("broken"), backend("fine", 2), clock=clock)
    headers = {"Retry-After": "1"}  # ignored: a 404 does not fix itself in a second
    assert pool.record_failure("broken", "misconfigured", headers, detail="HTTP 404 DeploymentNotFound") == 60
    assert picks(pool, 3) == {"fine": 3}
    assert pool.snapshot()[0] == {"name": "broken", "priority": 1, "weight": 1, "state": "misconfigured",
                                  "retry_in": 60}
    clock.advance(MISCONFIGURED_COOLDOWN)
    assert pool.choose(tried={"fine"}).name == "broken"  # its probe
    pool.record_failure("broken", "misconfigured", detail="HTTP 404 DeploymentNotFound")  # still broken
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "broken" in record.getMessage() and "HTTP 404 DeploymentNotFound" in record.getMessage()
    assert "example.com" not in record.getMessage()
    clock.advance(MISCONFIGURED_COOLDOWN)
    pool.record_success("broken", {})  # fixed; a later misconfiguration is news again
    pool.record_failure("broken", "misconfigured", detail="HTTP 401")
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]


def test_an_unknown_failure_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        pool_of(backend("a")).record_failure("a", "teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BackendPool([])
    with pytest.raises(ValueError):
        BackendPool([backend("a"), backend("a")])


# -- headroom -------------------------------------------------------------------------------
def test_no_requests_left_steers_traffic_away_before_a_429():
    clock = Clock()
    pool = pool_of(backend("a"), backend("b"), clock=clock)
    pool.record_success("a", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "5000"})
    assert picks(pool, 6) == {"b": 6}
    clock.advance(HEADROOM_TTL)  # the information is too old to act on
    assert picks(pool, 6) == {"a": 3, "b": 3}


def test_a_reset_time_ends_the_steering_early():
    clock = Clock()
    pool = pool_of(backend("a"), backend("b"), clock=clock)
    pool.record_success("a", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2"})
    assert picks(pool, 4) == {"b": 4}
    clock.advance(2)
    assert picks(pool, 4) == {"a": 2, "b": 2}


def test_too_few_tokens_left_for_this_request_steers_it_away():
    pool = pool_of(backend("a"), backend("b"))
    pool.record_success("a", {"x-ratelimit-remaining-tokens": "100"})
    assert picks(pool, 4, max_tokens=200) == {"b": 4}
    assert picks(pool, 2, max_tokens=None) == {"a": 1, "b": 1}  # tokens unknown: not considered
    pool.record_success("a", {"x-ratelimit-remaining-tokens": "100"})
    assert picks(pool, 2, max_tokens=100) == {"a": 1, "b": 1}


def test_requests_in_flight_use_up_the_reported_headroom():
    pool = pool_of(backend("a", weight=10), backend("b"))
    pool.record_success("a", {"x-ratelimit-remaining-requests": "2", "x-ratelimit-remaining-tokens": "250"})
    assert [pool.choose(max_tokens=100).name for _ in range(4)] == ["a", "a", "b", "b"]
    pool.record_success("a", {"x-ratelimit-remaining-requests": "40", "x-ratelimit-remaining-tokens": "5000"})
    assert pool.choose(max_tokens=100).name == "a"  # the latest answer is what counts


def test_when_a_priority_has_no_headroom_the_next_one_serves_else_the_preferred_one_anyway():
    pool = pool_of(backend("ptu1"), backend("ptu2"), backend("paygo", 2), backend("spare", 3))
    for name in ("ptu1", "ptu2"):
        pool.record_success(name, {"x-ratelimit-remaining-requests": "0"})
    assert picks(pool, 3) == {"paygo": 3}
    pool.record_success("paygo", {"x-ratelimit-remaining-tokens": "10"})
    assert picks(pool, 3, max_tokens=16) == {"spare": 3}
    pool.record_success("spare", {"x-ratelimit-remaining-requests": "0"})
    assert picks(pool, 4, max_tokens=16) == {"ptu1": 2, "ptu2": 2}  # nobody has room: the preferred tier


def test_unreadable_headroom_headers_are_ignored():
    pool = pool_of(backend("a"), backend("b"))
    pool.record_success("a", {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-remaining-tokens": "lots"})
    pool.record_success("a", None)
    pool.record_success("a", {"x-ratelimit-remaining-requests": "0.5", "x-ratelimit-remaining-tokens": "NaN"})
    assert picks(pool, 4, max_tokens=100) == {"a": 2, "b": 2}


def test_a_failure_replaces_what_the_backend_reported():
    clock = Clock()
    pool = pool_of(backend("a"), backend("b"), clock=clock)
    pool.record_success("a", {"x-ratelimit-remaining-requests": "0"})
    pool.record_failure("a", "throttled", {"retry-after-ms": "500"})
    clock.advance(0.5)
    assert picks(pool, 2) == {"a": 1, "b": 1}  # its 429 said half a second; the old count is not kept


# -- recovery and the health view ------------------------------------------------------------
def test_next_recovery_says_how_long_and_whether_everything_is_throttled():
    clock = Clock()
    pool = pool_of(backend("a"), backend("b"), backend("c", 2), clock=clock)
    assert pool.next_recovery() is None
    pool.record_failure("a", "throttled", {"Retry-After": "20"})
    pool.record_failure("b", "throttled", {"retry-after-ms": "7250"})
    assert pool.next_recovery() is None  # c is ready
    pool.record_failure("c", "throttled", {"Retry-After": "30"})
    assert pool.next_recovery() == Recovery(7.25, True)
    assert pool.choose() is None
    clock.advance(7.25)
    assert pool.choose().name == "b"  # its probe: the others wait for it
    assert pool.next_recovery().probe is not None
    pool.record_success("b", {})
    assert pool.next_recovery() is None


def test_everything_throttled_or_broken_still_counts_as_throttled():
    pool = pool_of(backend("a"), backend("b"), backend("c"))
    pool.record_failure("a", "throttled", {"Retry-After": "20"})
    pool.record_failure("b", "misconfigured")
    pool.record_failure("c", "throttled", {"Retry-After": "50"})
    assert pool.next_recovery() == Recovery(20, True)
    pool.record_failure("c", "unavailable", {"Retry-After": "55"})
    assert pool.next_recovery() == Recovery(20, False)  # an outage, not only throttling: 503
    only_broken = pool_of(backend("a"))
    only_broken.record_failure("a", "misconfigured")
    assert only_broken.next_recovery() == Recovery(60, False, misconfigured=True)
    pool.record_failure("a", "misconfigured")
    assert pool.next_recovery() == Recovery(55, False)  # not the misconfigured ones': nothing to wait for


def test_tried_backends_that_are_ready_allow_a_new_round_at_once():
    pool = pool_of(backend("a"), backend("b"))
    pool.record_failure("a", "throttled", {"Retry-After": "0"})  # "try again now"
    pool.record_failure("b", "unavailable")
    assert pool.choose(tried={"a"}) is None
    assert pool.next_recovery() is None  # a is ready: start again without waiting
    assert pool.choose().name == "a"


def test_the_snapshot_has_names_states_and_seconds_never_endpoints_or_keys():
    clock = Clock()
    (east, west), _ = parse(EXAMPLE, WEST_OPENAI_KEY=WEST_KEY)
    pool = BackendPool([east, west], clock=clock, rng=random.Random(1))
    pool.record_failure("west-paygo", "throttled", {"retry-after-ms": "2100"})
    assert pool.snapshot() == [
        {"name": "east-ptu", "priority": 1, "weight": 1, "state": "ready", "retry_in": 0},
        {"name": "west-paygo", "priority": 2, "weight": 2, "state": "cooling", "retry_in": 3}]
    dumped = json.dumps(pool.snapshot())
    assert "openai.azure.com" not in dumped and WEST_KEY not in dumped
    clock.advance(2.1)
    assert pool.snapshot()[1]["state"] == "ready"


# -- concurrency ----------------------------------------------------------------------------
def test_many_threads_choosing_and_recording_at_once():
    weights = {"a": 1, "b": 2, "c": 3}
    pool = BackendPool([backend(name, 1, w) for name, w in weights.items()] + [backend("d", 2)])
    results: list[Counter] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def work(index: int) -> None:
        try:
            start.wait()
            local: Counter = Counter()
            for i in range(1500):
                chosen = pool.choose(max_tokens=16, tried=())
                local[chosen.name] += 1
                pool.record_success(chosen, {"x-ratelimit-remaining-requests": "1000000",
                                             "x-ratelimit-remaining-tokens": "100000000"})
                if index == 0 and i % 100 == 0:
                    pool.snapshot()
                    pool.next_recovery()
            results.append(local)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counts = sum(results, Counter())
    total = sum(counts.values())
    assert total == 16 * 1500 and "d" not in counts
    for name, weight in weights.items():  # every pick happened under the lock: one rotation, exact shares
        assert abs(counts[name] - total * weight / 6) <= 2


def test_failures_from_many_threads_leave_a_consistent_pool():
    clock = Clock()
    pool = pool_of(*(backend(f"b{i}") for i in range(8)), clock=clock)
    kinds = ["throttled", "unavailable", "misconfigured"]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for i in range(300):
                chosen = pool.choose(tried={f"b{index % 8}"})
                if chosen is not None:
                    pool.record_failure(chosen, kinds[(index + i) % 3], {"Retry-After": str(i % 5)})
        except BaseException as exc:  # noqa: BLE001 - reported below (a thread's exception only warns)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    states = pool.snapshot()
    assert {s["state"] for s in states} <= {"ready", "cooling", "misconfigured"}
    clock.advance(MAX_COOLDOWN)
    assert all(s["state"] == "ready" for s in pool.snapshot()) and pool.next_recovery() is None


@pytest.mark.parametrize("setting", ["AzureWebJobsStorage", "IDENTITY_HEADER", "AZURE_APPCONFIG_CONNECTION_STRING",
                                     "APPLICATIONINSIGHTS_CONNECTION_STRING", "AZURE_CLIENT_SECRET",
                                     "MY_DB_CONNECTION_STRING", "OTEL_EXPORTER_OTLP_HEADERS"])
def test_a_key_setting_may_not_name_another_services_credentials(setting):
    """Whoever writes AZURE_OPENAI_BACKENDS (in App Configuration, say) must not be able to have
    the app send a storage connection string or the identity header as api-key to their endpoint."""
    reason = problem([{"name": "evil", "endpoint": "https://attacker.example.com", "auth": "key",
                       "api_key_setting": setting}],
                     **{setting: "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=SECRETKEY=="})
    assert "must not name" in reason and "SECRETKEY" not in reason


def test_a_new_max_cooldown_applies_when_only_it_changes():
    """App Configuration may change AZURE_OPENAI_MAX_COOLDOWN alone: the rebuilt client's pool uses it."""
    from shared.clock import SYSTEM_CLOCK
    from shared.telemetry.hooks import NOOP
    from shared.upstream.build import client_for

    base = {"AZURE_OPENAI_ENDPOINT": "https://a.openai.azure.com/", "AZURE_OPENAI_DEPLOYMENT": "d",
            "AZURE_OPENAI_AUTH": "key", "AZURE_OPENAI_API_KEY": "k"}
    before = load_settings(base, function_timeout=lambda: 180.0)
    after = load_settings({**base, "AZURE_OPENAI_MAX_COOLDOWN": "7"}, function_timeout=lambda: 180.0)
    old = client_for(before, SYSTEM_CLOCK, NOOP)
    new = client_for(after, SYSTEM_CLOCK, NOOP, old, before)
    assert new.pool is not old.pool and new.pool._max_cooldown == 7
    assert client_for(after, SYSTEM_CLOCK, NOOP, new, after) is new  # nothing changed: the same client
