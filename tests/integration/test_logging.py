"""Logs: one line per invocation; no key, token or identity secret ever; text only on request."""

from __future__ import annotations

import logging
import time

from support.app_client import SEED, post_completions, wait_for


def _all_logs(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_logs_never_contain_keys_tokens_or_the_identity_secret(configure_app, emulators, caplog, capfd):
    """Every record at DEBUG, with tracebacks (caplog.text), and whatever reached stdout/stderr."""
    emulators.identity_control.config(token_lifetime=302)
    with caplog.at_level(logging.DEBUG):
        for log_text in ("false", "true"):
            configure_app(COMPLETIONS_LOG_TEXT=log_text)
            assert post_completions(SEED).status == 200
            fetched = emulators.identity_control.stats()["token_requests"]
            time.sleep(2.2)  # past the refresh margin: another token request
            assert post_completions(SEED).status == 200
            assert wait_for(lambda: emulators.identity_control.stats()["token_requests"] > fetched)  # noqa: B023
            configure_app(auth="key", COMPLETIONS_LOG_TEXT=log_text)
            assert post_completions(SEED).status == 200
            configure_app(auth="key", AZURE_OPENAI_API_KEY="wrong-key-value-123", AZURE_OPENAI_MAX_RETRIES="0",
                          COMPLETIONS_LOG_TEXT=log_text)
            assert post_completions(SEED).status == 502
        time.sleep(0.2)  # background refreshes log from their own thread
    captured = capfd.readouterr()
    text = caplog.text + captured.out + captured.err
    assert emulators.openai.api_key not in text
    assert "wrong-key-value-123" not in text
    assert emulators.identity.header not in text
    assert "eyJ" not in text  # any JWT starts with a base64 '{"'
    assert caplog.text.count("completion request_id=") == 8


def test_one_line_per_invocation_with_the_facts(configure_app, caplog):
    configure_app()
    with caplog.at_level(logging.INFO, logger="shared.logs"):
        reply = post_completions(SEED, headers={"x-request-id": "req-42"})
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.logs"]
    assert len(lines) == 1
    line = lines[0]
    usage = reply.body["usage"]
    for fact in ("request_id=req-42", "deployment=gpt-35-turbo-instruct", "status=200", "attempts=1",
                 f"prompt_tokens={usage['prompt_tokens']}", f"completion_tokens={usage['completion_tokens']}",
                 "upstream_ms="):
        assert fact in line


def test_prompt_and_completion_text_are_logged_only_when_asked(configure_app, caplog):
    configure_app()
    with caplog.at_level(logging.DEBUG):
        reply = post_completions(SEED)
    assert SEED["prompt"] not in _all_logs(caplog) and reply.body["text"] not in _all_logs(caplog)
    caplog.clear()
    configure_app(COMPLETIONS_LOG_TEXT="true")
    with caplog.at_level(logging.DEBUG):
        reply = post_completions(SEED)
    assert SEED["prompt"] in _all_logs(caplog) and reply.body["text"] in _all_logs(caplog)


def test_openai_log_switch_is_warned_about(configure_app, monkeypatch, caplog):
    """openai 0.28 prints request bodies to stderr itself when OPENAI_LOG is set."""
    monkeypatch.setenv("OPENAI_LOG", "debug")
    with caplog.at_level(logging.WARNING, logger="shared.logs"):
        assert configure_app().settings is not None  # (the settings load on first use)
    assert "OPENAI_LOG is set" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.logs"):
        assert configure_app(COMPLETIONS_LOG_TEXT="true").settings  # text logging asked for: nothing to warn about
    assert "OPENAI_LOG" not in caplog.text
