"""Property-based tests: garbage never crashes the app, and never reaches the upstream.

- The parser: whatever it accepts, the Azure spec and the emulator accept too.
- The whole HTTP handler with arbitrary bytes, arbitrary JSON and near-valid
  bodies: every answer is 200 or a 4xx with a JSON error body, nothing raises,
  and an upstream call happens exactly when the body was valid.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devserver.emulators.azure_openai import validate_request as emulator_validates
from shared.config.settings import Limits, SettingsError, load_settings
from shared.contract.body import parse_json_body
from shared.contract.completions import validate_completion_request
from shared.errors import AppError
from support import spec
from support.app_client import post_completions

LIMITS = Limits()
FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
          "logit_bias", "user", "logprobs", "echo", "suffix", "best_of", "seed", "stream"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)

# Values near each field's edges, valid and not.
edge_numbers = st.sampled_from([-101, -100, -3, -2.0001, -2, -1, -0.0, 0, 0.5, 1, 1.0, 1.0001, 2, 2.0001, 4, 5, 6,
                                10, 11, 16, 17, 20, 21, 1024, 1025, 2 ** 63 - 1, 2 ** 63, True, False])
short_text = st.text(min_size=0, max_size=12)
field_values = st.one_of(edge_numbers, short_text, st.lists(short_text, max_size=6), st.none(),
                         st.dictionaries(st.sampled_from(["1", "50256", "x", "-1"]), edge_numbers, max_size=3),
                         json_values)


@st.composite
def valid_bodies(draw) -> dict:
    body: dict = {"prompt": draw(st.text(min_size=1, max_size=30) | st.lists(st.text(min_size=1, max_size=10),
                                                                                min_size=1, max_size=4))}
    optional = {
        "max_tokens": st.integers(1, 64), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
        "n": st.integers(1, 3), "stop": st.text(min_size=1, max_size=3) | st.lists(
            st.text(min_size=1, max_size=3), min_size=1, max_size=4),
        "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
        "logit_bias": st.dictionaries(st.integers(0, 50256).map(str), st.integers(-100, 100), max_size=3),
        "user": st.text(max_size=10), "logprobs": st.integers(0, 5), "echo": st.booleans(),
        "suffix": st.text(max_size=5), "seed": st.integers(-2 ** 63, 2 ** 63 - 1), "stream": st.just(False),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        body[name] = draw(optional[name])
    if draw(st.booleans()):
        body["best_of"] = draw(st.integers(body.get("n", 1), 4))
    return body


@st.composite
def one_field_off(draw) -> dict:
    """A valid body with one field set to an edge value or a wrong type."""
    body = draw(valid_bodies())
    body[draw(st.sampled_from(FIELDS))] = draw(field_values)
    return body


@st.composite
def near_valid_bodies(draw) -> dict:
    body = draw(valid_bodies())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add unknown"]))
        if action == "replace":
            body[draw(st.sampled_from(FIELDS))] = draw(field_values)
        elif action == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        else:
            body[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return body


# -- the parser ------------------------------------------------------------------------
@settings(max_examples=1000, deadline=None)
@given(st.one_of(json_values, valid_bodies(), near_valid_bodies()))
def test_parser_accepts_only_what_the_spec_and_the_service_accept(data):
    _parser_property(data)


@settings(max_examples=1500, deadline=None)
@given(one_field_off())
def test_parser_with_one_field_off(data):
    _parser_property(data)


def _parser_property(data):
    try:
        params = validate_completion_request(data, LIMITS)
    except AppError as error:
        assert error.status == 400 and error.code == "invalid_request"
        return
    assert spec.request_errors("2024-10-21", params) == []
    emulator_validates(json.loads(json.dumps(params)))  # raises if the service would reject it


@settings(max_examples=200, deadline=None)
@given(valid_bodies())
def test_parser_accepts_every_valid_body_unchanged(body):
    params = validate_completion_request(body, LIMITS)
    assert params == {k: v for k, v in body.items() if k != "stream"}


# -- the whole handler, over real sockets ------------------------------------------------
def _upstream_calls(emulators) -> int:
    return emulators.openai_control.stats()["completion_requests"]


def _accepted(request: bytes | object) -> bool:
    """What the parser says of the request, as the handler reads it (bytes are decoded first)."""
    try:
        document = parse_json_body(request, LIMITS.max_body_bytes) if isinstance(request, bytes) else request
        validate_completion_request(document, LIMITS)
    except AppError:
        return False
    return True


def _check(emulators, request: bytes | object) -> None:
    before = _upstream_calls(emulators)
    reply = post_completions(raw=request) if isinstance(request, bytes) else post_completions(request)
    reached_upstream = _upstream_calls(emulators) - before
    assert (reply.status == 200) == _accepted(request), reply.body  # the handler answers what the parser accepts
    if reply.status == 200:
        assert reached_upstream == 1 and isinstance(reply.body["text"], str)
        return
    assert 400 <= reply.status < 500, reply.body
    assert reached_upstream == 0, reply.body
    error = reply.body["error"]
    assert error["code"] in ("invalid_json", "invalid_request", "payload_too_large")
    assert isinstance(error["message"], str) and error["request_id"] == reply.headers["x-request-id"]


HANDLER = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HANDLER
@given(st.binary(max_size=200))
def test_handler_with_arbitrary_bytes(configure_app, emulators, raw):
    configure_app(auth="key")
    _check(emulators, raw)


@HANDLER
@given(json_values)
def test_handler_with_arbitrary_json(configure_app, emulators, document):
    configure_app(auth="key")
    _check(emulators, document)


@HANDLER
@given(near_valid_bodies())
def test_handler_with_near_valid_bodies(configure_app, emulators, body):
    configure_app(auth="key")
    _check(emulators, body)


# -- settings ------------------------------------------------------------------------------
SETTING_VALUES = st.one_of(st.text(max_size=40), st.sampled_from(
    ["", " ", "0", "-1", "1e309", "nan", "inf", "2.5", "https://[x", "http://", "https://x.openai.azure.com/",
     "key", "default", "true", "00:00:01", "\x00"]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(
    ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_API_VERSION", "AZURE_OPENAI_AUTH",
     "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_TIMEOUT", "AZURE_OPENAI_CONNECT_TIMEOUT", "AZURE_OPENAI_MAX_RETRIES",
     "AZURE_OPENAI_DEADLINE", "AZURE_OPENAI_MAX_CONCURRENCY", "COMPLETIONS_MAX_BODY_BYTES", "COMPLETIONS_MAX_TOKENS",
     "COMPLETIONS_LOG_TEXT", "OPENAI_API_BASE", "OPENAI_API_TYPE", "OPENAI_API_KEY"]), SETTING_VALUES))
def test_any_settings_load_or_fail_as_settings_errors(environ):
    """Whatever the app settings hold, reading them gives settings or a SettingsError (so the
    functions still index and answer 503), never another exception."""
    try:
        load_settings(environ, function_timeout=lambda: 180.0)
    except SettingsError as error:
        assert error.problems and all(isinstance(reason, str) for reason in error.problems.values())


NUMERIC_FIELDS = ["max_tokens", "temperature", "top_p", "n", "presence_penalty", "frequency_penalty", "logprobs",
                  "best_of", "seed"]


@HANDLER
@given(st.sampled_from(NUMERIC_FIELDS), st.integers(20, 20_000), st.sampled_from([b"", b"-"]),
       st.sampled_from([b"", b".5", b"e3", b".0e-2"]))
def test_handler_with_numbers_of_thousands_of_digits(configure_app, emulators, field, digits, sign, tail):
    """Any JSON number in any numeric field is a 400 naming the field (Python will not even
    convert integers of more than 4,300 digits, and math.isfinite overflows on far fewer)."""
    configure_app(auth="key")
    raw = b'{"prompt": "x", "' + field.encode() + b'": ' + sign + b"7" * digits + tail + b"}"
    before = _upstream_calls(emulators)
    reply = post_completions(raw=raw)
    assert reply.status == 400 and reply.body["error"]["code"] == "invalid_request", reply.body
    assert reply.body["error"]["param"] == field
    assert _upstream_calls(emulators) == before
