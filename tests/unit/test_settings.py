"""Settings: read once from the environment, validated, named in errors, never echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config.host_json import function_timeout_seconds
from shared.config.queues import QueueNames
from shared.config.registry import DEFAULT_API_VERSION, DEFAULT_TOKEN_SCOPE
from shared.config.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
BASE = {"AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com/",
        "AZURE_OPENAI_DEPLOYMENT": "gpt-35-turbo-instruct"}


def load(**env):
    return load_settings({k: v for k, v in {**BASE, **env}.items() if v is not None},
                         function_timeout=lambda: 180.0)


def problems(**env) -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        load(**env)
    return caught.value.problems


def test_defaults():
    settings = load()
    upstream = settings.upstream
    assert upstream.endpoint == "https://example.openai.azure.com"  # openai appends /openai/...
    assert upstream.api_version == DEFAULT_API_VERSION == "2025-04-01-preview"
    assert upstream.auth == "managed_identity" and upstream.token_scope == DEFAULT_TOKEN_SCOPE
    assert upstream.api_key is None and upstream.client_id is None
    assert settings.retry.read_timeout == 30 and settings.retry.max_retries == 3 and settings.retry.deadline == 120
    assert settings.limits.max_body_bytes == 1024 * 1024 and not settings.log_text


def test_every_setting_is_read():
    digest = "ab" * 32
    settings = load(AZURE_OPENAI_API_VERSION="2023-05-15", AZURE_OPENAI_AUTH="key", AZURE_OPENAI_API_KEY="k",
                    AZURE_CLIENT_ID="cid", AZURE_OPENAI_TOKEN_SCOPE="https://cognitiveservices.azure.us/.default",
                    AZURE_OPENAI_TIMEOUT="7.5", AZURE_OPENAI_CONNECT_TIMEOUT="2", AZURE_OPENAI_MAX_RETRIES="5",
                    AZURE_OPENAI_DEADLINE="60", AZURE_OPENAI_MAX_CONCURRENCY="8", AZURE_OPENAI_MAX_CONNECTIONS="4",
                    AZURE_OPENAI_MAX_RESPONSE_BYTES="70000", AZURE_OPENAI_MAX_COOLDOWN="9", AZURE_OPENAI_API="chat",
                    COMPLETIONS_MAX_BODY_BYTES="4096", COMPLETIONS_MAX_PROMPTS="2", COMPLETIONS_MAX_TOKENS="50",
                    COMPLETIONS_MAX_N="3", COMPLETIONS_MAX_BEST_OF="4", COMPLETIONS_MAX_MESSAGES="9",
                    COMPLETIONS_CHAT_INSTRUCTIONS="Go on.", COMPLETIONS_ADAPT_PARAMETERS="false",
                    COMPLETIONS_CALLER_KEYS=json.dumps({"team-a": digest}), WEBSITE_AUTH_ENABLED="true",
                    COMPLETIONS_LOG_TEXT="true")
    assert (settings.upstream.api_version, settings.upstream.auth, settings.upstream.api_key,
            settings.upstream.client_id, settings.upstream.token_scope, settings.upstream.api) == (
        "2023-05-15", "key", "k", "cid", "https://cognitiveservices.azure.us/.default", "chat")
    assert (settings.retry.read_timeout, settings.retry.connect_timeout, settings.retry.max_retries,
            settings.retry.deadline, settings.retry.max_concurrency, settings.retry.max_connections,
            settings.retry.max_response_bytes, settings.retry.max_cooldown) == (7.5, 2, 5, 60, 8, 4, 70000, 9)
    assert (settings.limits.max_body_bytes, settings.limits.max_prompts, settings.limits.max_tokens,
            settings.limits.max_n, settings.limits.max_best_of, settings.limits.max_messages) == (4096, 2, 50, 3, 4, 9)
    assert (settings.chat.instructions, settings.chat.adapt_parameters) == ("Go on.", False)
    assert settings.callers.keys == {"team-a": bytes.fromhex(digest)} and settings.callers.platform
    assert settings.backends[0].api == "chat" and settings.log_text


def test_an_empty_chat_instruction_sends_none_and_an_absent_one_the_default():
    assert load(COMPLETIONS_CHAT_INSTRUCTIONS="").chat.instructions == ""
    assert load().chat.instructions.startswith("Continue the user's text")


def test_a_stream_ends_before_the_function_timeout_and_the_front_end_cut():
    short = load_settings(BASE, function_timeout=lambda: 60.0)
    assert short.retry.stream_seconds == 54 == short.retry.deadline  # (never shorter than the first chunk may take)
    assert load_settings(BASE, function_timeout=lambda: None).retry.stream_seconds == 220


def test_the_key_never_shows_in_repr():
    assert "sekret" not in repr(load(AZURE_OPENAI_AUTH="key", AZURE_OPENAI_API_KEY="sekret"))


@pytest.mark.parametrize(("env", "auth"), [({"OPENAI_API_TYPE": "azure", "OPENAI_API_KEY": "k"}, "key"),
                                           ({"OPENAI_API_TYPE": "azure_ad"}, "managed_identity")])
def test_seed_guide_names_are_fallbacks(env, auth):
    settings = load_settings({"OPENAI_API_BASE": "https://seed.openai.azure.com/", "OPENAI_API_VERSION": "2023-05-15",
                              "AZURE_OPENAI_DEPLOYMENT": "d", **env}, function_timeout=lambda: None)
    assert settings.upstream.endpoint == "https://seed.openai.azure.com"
    assert settings.upstream.api_version == "2023-05-15" and settings.upstream.auth == auth


def test_our_names_win_over_the_seed_names():
    settings = load(OPENAI_API_BASE="https://seed.openai.azure.com", OPENAI_API_TYPE="azure",
                    AZURE_OPENAI_AUTH="managed_identity")
    assert settings.upstream.endpoint == "https://example.openai.azure.com"
    assert settings.upstream.auth == "managed_identity"


@pytest.mark.parametrize(("env", "name"), [
    ({"AZURE_OPENAI_ENDPOINT": None}, "AZURE_OPENAI_ENDPOINT"),
    ({"AZURE_OPENAI_ENDPOINT": "  "}, "AZURE_OPENAI_ENDPOINT"),
    ({"AZURE_OPENAI_ENDPOINT": "http://example.openai.azure.com"}, "AZURE_OPENAI_ENDPOINT"),
    ({"AZURE_OPENAI_ENDPOINT": "example.openai.azure.com"}, "AZURE_OPENAI_ENDPOINT"),
    ({"AZURE_OPENAI_ENDPOINT": "https://[bad-ipv6"}, "AZURE_OPENAI_ENDPOINT"),
    ({"AZURE_OPENAI_DEPLOYMENT": None}, "AZURE_OPENAI_DEPLOYMENT"),
    ({"AZURE_OPENAI_DEPLOYMENT": "a/b"}, "AZURE_OPENAI_DEPLOYMENT"),
    ({"AZURE_OPENAI_API_VERSION": "latest"}, "AZURE_OPENAI_API_VERSION"),
    ({"AZURE_OPENAI_AUTH": "password"}, "AZURE_OPENAI_AUTH"),
    ({"OPENAI_API_TYPE": "open_ai"}, "OPENAI_API_TYPE"),
    ({"AZURE_OPENAI_AUTH": "key"}, "AZURE_OPENAI_API_KEY"),
    ({"AZURE_OPENAI_TIMEOUT": "fast"}, "AZURE_OPENAI_TIMEOUT"),
    ({"AZURE_OPENAI_TIMEOUT": "0"}, "AZURE_OPENAI_TIMEOUT"),
    ({"AZURE_OPENAI_MAX_RETRIES": "2.5"}, "AZURE_OPENAI_MAX_RETRIES"),
    ({"AZURE_OPENAI_MAX_RETRIES": "-1"}, "AZURE_OPENAI_MAX_RETRIES"),
    ({"AZURE_OPENAI_DEADLINE": "nan"}, "AZURE_OPENAI_DEADLINE"),
    ({"AZURE_OPENAI_DEADLINE": "180"}, "AZURE_OPENAI_DEADLINE"),
    ({"COMPLETIONS_MAX_TOKENS": "0"}, "COMPLETIONS_MAX_TOKENS"),
    ({"COMPLETIONS_LOG_TEXT": "maybe"}, "COMPLETIONS_LOG_TEXT"),
])
def test_invalid_settings_are_named_without_their_values(env, name):
    found = problems(**env)
    assert name in found
    for value in env.values():
        if value and len(value.strip()) >= 4 and not value.replace(".", "").isdigit():  # distinctive values
            assert value not in found[name]


def test_all_problems_are_reported_at_once():
    assert set(problems(AZURE_OPENAI_ENDPOINT=None, AZURE_OPENAI_DEPLOYMENT=None, AZURE_OPENAI_TIMEOUT="x")) == {
        "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_TIMEOUT"}


def test_http_is_allowed_for_loopback_only():
    assert load(AZURE_OPENAI_ENDPOINT="http://127.0.0.1:1234/").upstream.endpoint == "http://127.0.0.1:1234"


def test_deadline_stays_under_the_230_second_front_end_limit():
    unlimited = lambda: None  # noqa: E731 - host.json without functionTimeout
    assert "AZURE_OPENAI_DEADLINE" in _problems_with(unlimited, AZURE_OPENAI_DEADLINE="230")
    assert load_settings({**BASE, "AZURE_OPENAI_DEADLINE": "229"}, function_timeout=unlimited).retry.deadline == 229


def _problems_with(function_timeout, **env):
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, **env}, function_timeout=function_timeout)
    return caught.value.problems


def test_function_timeout_comes_from_host_json(tmp_path):
    assert function_timeout_seconds(ROOT / "host.json") == 180.0
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "functionTimeout": "1.00:00:30"}))
    assert function_timeout_seconds(tmp_path / "host.json") == 86430.0
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "functionTimeout": "-1"}))
    assert function_timeout_seconds(tmp_path / "host.json") is None
    assert function_timeout_seconds(tmp_path / "missing.json") is None


@pytest.mark.parametrize("function_timeout", [30.0, 60.0, 120.0, 180.0, None])
def test_the_default_deadline_fits_any_function_timeout(function_timeout):
    settings = load_settings(BASE, function_timeout=lambda: function_timeout)
    assert settings.retry.deadline < min(function_timeout or 230, 230)
    assert settings.retry.deadline == min(120, 0.9 * min(function_timeout or 230, 230))


def test_the_default_deadline_fits_the_repositorys_host_json():
    settings = load_settings(BASE)
    assert settings.retry.deadline < function_timeout_seconds() < 230


def test_queue_names_have_defaults_and_settings():
    assert QueueNames.from_environ({}) == QueueNames("completion-requests", "completion-results")
    names = QueueNames.from_environ({"COMPLETIONS_REQUEST_QUEUE": "in", "COMPLETIONS_RESULT_QUEUE": "out"})
    assert (names.requests, names.results, names.poison) == ("in", "out", "in-poison")
