"""Who is calling: caller keys checked by digest, the platform's validated caller, the host's keys."""

from __future__ import annotations

import hashlib
import json

import pytest

from devserver.tools.caller_key import main as caller_key
from shared.callers import CallerCheck, routes_are_anonymous
from shared.config.caller_keys import parse_caller_keys
from shared.errors import AppError

KEY = "k-" + "x" * 40
KEYS = {"team-a": hashlib.sha256(KEY.encode()).digest(), "team-b": hashlib.sha256(b"other").digest()}


def refused(check: CallerCheck, headers: dict) -> AppError:
    with pytest.raises(AppError) as caught:
        check.caller(headers)
    return caught.value


def test_a_key_is_accepted_from_api_key_or_bearer_and_names_its_caller():
    check = CallerCheck(KEYS, platform_auth=False, anonymous_routes=True)
    assert check.caller({"api-key": KEY}) == ("team-a", "key")
    assert check.caller({"authorization": f"Bearer {KEY}"}).name == "team-a"
    assert check.caller({"api-key": KEY, "authorization": "Bearer something-else"}).name == "team-a"  # 1.x sends both


@pytest.mark.parametrize("headers", [{}, {"api-key": "wrong"}, {"authorization": KEY}, {"authorization": "Bearer "},
                                     {"authorization": f"Basic {KEY}"}, {"api-key": KEY[:-1]},
                                     {"x-functions-key": KEY}, {"x-ms-client-principal-id": "forged"}])
def test_anything_else_is_401_invalid_api_key(headers):
    error = refused(CallerCheck(KEYS, platform_auth=False, anonymous_routes=True), headers)
    assert (error.status, error.code) == (401, "invalid_api_key") and KEY not in error.message


def test_the_platforms_caller_is_trusted_only_when_app_service_authentication_is_on():
    platform = CallerCheck({}, platform_auth=True, anonymous_routes=True)
    caller = platform.caller({"x-ms-client-principal-id": "oid-1", "x-ms-client-principal-name": "ada@contoso"})
    assert caller == ("ada@contoso", "platform")
    assert refused(platform, {}).code == "invalid_api_key"  # "allow anonymous" in the platform: the app refuses
    both = CallerCheck(KEYS, platform_auth=True, anonymous_routes=True)
    assert both.caller({"api-key": KEY}).name == "team-a"


def test_routes_at_the_hosts_auth_level_are_checked_by_the_host():
    assert CallerCheck({}, platform_auth=False, anonymous_routes=False).caller({}).how == "host"


def test_routes_are_anonymous_with_keys_or_platform_authentication():
    assert not routes_are_anonymous({})
    assert routes_are_anonymous({"COMPLETIONS_CALLER_KEYS": "{}"})
    assert routes_are_anonymous({"WEBSITE_AUTH_ENABLED": "True"})
    assert not routes_are_anonymous({"WEBSITE_AUTH_ENABLED": "false", "COMPLETIONS_CALLER_KEYS": " "})


@pytest.mark.parametrize("raw", ["[]", "{", "{}", '{"a b": "00"}', '{"a": "xyz"}', '{"a": 7}',
                                 json.dumps({"a": "0" * 63})])
def test_malformed_caller_keys_are_named_never_echoed(raw):
    keys, problem = parse_caller_keys(raw)
    assert keys == {} and problem and "xyz" not in problem


def test_make_caller_key_prints_a_key_and_the_entry_that_accepts_it(capsys):
    assert caller_key(["team-c"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[1].strip()
    entry = json.loads("{" + out[-1].strip() + "}")
    keys, problem = parse_caller_keys(json.dumps(entry))
    assert problem is None and CallerCheck(keys, False, True).caller({"api-key": key}).name == "team-c"
    assert caller_key(["bad name"]) == 2
