"""Queue and Event Grid functions, invoked as Microsoft documents: the user function with a
``QueueMessage`` / ``EventGridEvent`` and a ``func.Out`` stand-in, against the emulators."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from shared.events import RetryLater
from support.app_client import LOOP, SEED, SETTING_NAMES
from support.triggers import Out, event, from_event_grid, from_poison_queue, from_queue, message

ROOT = Path(__file__).resolve().parents[2]


def upstream_calls(emulators) -> int:
    return emulators.openai_control.stats()["completion_requests"]


def inject(emulators, *faults) -> None:
    emulators.openai_control.faults(*faults)


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    from shared.events import RecentResults

    monkeypatch.setattr(function_app, "recent_results", RecentResults())


# -- queue -----------------------------------------------------------------------------------
def test_queue_success_writes_a_succeeded_result(configure_app, emulators):
    configure_app()
    result = from_queue(message({"id": "order-42", **SEED}))
    assert result["id"] == "order-42" and result["status"] == "succeeded"
    assert result["result"]["object"] == "text_completion" and result["result"]["text"].startswith(" ")
    assert set(result["result"]) >= {"id", "created", "model", "deployment", "text", "choices", "usage"}


def test_queue_message_without_id_is_correlated_by_the_message_id(configure_app):
    configure_app()
    assert from_queue(message(SEED, id_="queue-message-7"))["id"] == "queue-message-7"


@pytest.mark.parametrize(("body", "code", "param"), [
    (b"not json", "invalid_json", None),
    (b"\xff", "invalid_json", None),
    ({"prompt": ""}, "invalid_request", "prompt"),
    ({"prompt": "x", "n": 0}, "invalid_request", "n"),
    (["not", "an", "object"], "invalid_request", None),
    ({"id": 42, "prompt": "x"}, "invalid_request", "id"),
    ({"id": "", "prompt": "x"}, "invalid_request", "id"),
])
def test_bad_messages_get_a_failed_result_at_once(configure_app, emulators, body, code, param):
    configure_app()
    result = from_queue(message(body))
    assert result["status"] == "failed" and result["error"]["code"] == code
    assert result["error"].get("param") == param and result["error"]["message"]
    assert result["id"] == "msg-1"  # the queue message's id: the request's own is missing or unusable
    assert upstream_calls(emulators) == 0


def test_final_upstream_refusals_get_a_failed_result(configure_app):
    configure_app()
    result = from_queue(message({"id": "cf", "prompt": "trip the content filter"}))
    assert result["status"] == "failed" and result["error"]["code"] == "content_filter"


def test_unconfigured_app_answers_failed_not_configured(configure_app):
    configure_app(AZURE_OPENAI_ENDPOINT=None)
    result = from_queue(message({"id": "x", **SEED}))
    assert result["error"]["code"] == "not_configured"


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 429, "retry_after": 1}, {"status": 500},
                                   {"drop": True}, {"status": 409}, {"status": 408}])
def test_transient_failure_raises_so_the_host_redelivers(configure_app, emulators, fault):
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    inject(emulators, fault)
    out = Out()
    with pytest.raises(RetryLater):
        LOOP.run(function_app.completion_from_queue.build().get_user_function()(message({"id": "t", **SEED}), out))
    assert out.value is None  # nothing written: the retry will answer


def test_identity_endpoint_down_raises(configure_app, emulators):
    emulators.identity_control.config(outage="error")
    configure_app(AZURE_OPENAI_DEADLINE="1")
    with pytest.raises(RetryLater):
        from_queue(message({"id": "t", **SEED}))


def test_dequeue_count_is_logged(configure_app, caplog):
    configure_app()
    with caplog.at_level(logging.INFO):
        from_queue(message({"id": "d", **SEED}, dequeue_count=3))
    assert "dequeue_count=3" in caplog.text


def test_poison_message_gets_a_failed_poisoned_result(configure_app, emulators):
    configure_app()
    result = from_poison_queue(message({"id": "order-9", **SEED}, id_="poison-copy", dequeue_count=1))
    assert result == {"id": "order-9", "status": "failed", "error": {
        "code": "poisoned", "message": result["error"]["message"]}}
    assert "poison" in result["error"]["message"]
    assert from_poison_queue(message(b"garbage", id_="poison-copy"))["id"] == "poison-copy"
    assert upstream_calls(emulators) == 0


def test_redelivery_after_success_costs_no_second_completion(configure_app, emulators):
    configure_app()
    first = from_queue(message({"id": "same", **SEED}, dequeue_count=1))
    again = from_queue(message({"id": "same", **SEED}, dequeue_count=2))
    assert again == first and upstream_calls(emulators) == 1
    changed = from_queue(message({"id": "same", **SEED, "max_tokens": 3}))
    assert changed["status"] == "succeeded" and upstream_calls(emulators) == 2


# -- Event Grid ------------------------------------------------------------------------------
def test_event_grid_event_writes_a_result(configure_app):
    configure_app()
    result = from_event_grid(event({"id": "evt-req-1", **SEED}))
    assert result["id"] == "evt-req-1" and result["status"] == "succeeded"
    assert from_event_grid(event(SEED, id_="evt-9"))["id"] == "evt-9"


def test_a_cloud_event_is_served_too(configure_app):
    """Event Grid subscriptions can deliver CloudEvents 1.0; the worker then passes a func.CloudEvent."""
    configure_app()
    cloud_event = func.CloudEvent(id="ce-1", source="/contoso/orders", type="Contoso.Completions.Requested",
                                  specversion="1.0", data={"id": "ce-req", **SEED}, subject="requests/2")
    assert from_event_grid(cloud_event)["id"] == "ce-req"


def test_event_grid_bad_data_fails_at_once_and_transient_failure_raises(configure_app, emulators):
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    assert from_event_grid(event({"prompt": 5}))["error"]["code"] == "invalid_request"
    assert from_event_grid(event(None))["error"]["code"] == "invalid_request"
    inject(emulators, {"status": 503})
    with pytest.raises(RetryLater):
        from_event_grid(event(SEED))


# -- binding metadata --------------------------------------------------------------------------
def _bindings(function) -> dict[str, dict]:
    return {b["type"]: b for b in json.loads(function.get_function_json())["bindings"]}


def test_function_json_names_the_documented_queues_and_connection(declared_functions):
    queue = _bindings(declared_functions["completion_from_queue"])
    assert queue["queueTrigger"]["queueName"] == "completion-requests"
    assert queue["queue"]["queueName"] == "completion-results"
    poison = _bindings(declared_functions["completion_poisoned"])
    assert poison["queueTrigger"]["queueName"] == "completion-requests-poison"
    assert poison["queue"]["queueName"] == "completion-results"
    grid = _bindings(declared_functions["completion_from_event_grid"])
    assert "eventGridTrigger" in grid and grid["queue"]["queueName"] == "completion-results"
    for bindings in (queue, poison, grid):
        for binding in bindings.values():
            if binding["type"] in ("queue", "queueTrigger"):
                assert binding["connection"] == "AzureWebJobsStorage"


def test_queue_names_come_from_settings():
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(COMPLETIONS_REQUEST_QUEUE="orders-in", COMPLETIONS_RESULT_QUEUE="orders-out")
    script = ("import function_app, json; print(json.dumps({f.get_function_name(): json.loads(f.get_function_json())"
              " for f in function_app.app.get_functions()}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    names = {(b["type"], b["queueName"]) for f in json.loads(done.stdout).values() for b in f["bindings"]
             if "queueName" in b}
    assert names == {("queueTrigger", "orders-in"), ("queueTrigger", "orders-in-poison"), ("queue", "orders-out")}


def test_host_json_sets_the_queue_retry_policy():
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert queues["maxDequeueCount"] == 5 and queues["messageEncoding"] == "base64"
    assert queues["visibilityTimeout"] == "00:00:30"


# -- issue 11: what hostile messages and large results used to break -------------------------
def test_a_huge_integer_in_a_number_field_is_a_failed_result_not_a_redelivery(configure_app, emulators):
    configure_app()
    for field in ("temperature", "max_tokens", "seed", "top_p", "n"):
        body = b'{"id": "big", "prompt": "x", "' + field.encode() + b'": ' + b"1" * 400 + b"}"
        result = from_queue(message(body))
        assert result["status"] == "failed" and result["error"]["code"] == "invalid_request", result
        assert result["error"]["param"] == field
    assert upstream_calls(emulators) == 0


def test_a_result_too_large_for_a_queue_message_is_answered_with_its_usage(configure_app):
    """A queue message carries 64 KiB, base64: about 48 KiB of JSON. A request within the app's
    own limits can produce more; it is answered `failed` with code result_too_large and the
    usage (it was paid for), never left to be redelivered and poisoned."""
    configure_app()
    result = from_queue(message({"id": "big-result", "prompt": ["word " * 100] * 16, "n": 10, "echo": True,
                                 "max_tokens": 200}))
    assert result["status"] == "failed" and result["error"]["code"] == "result_too_large"
    assert result["error"]["usage"]["total_tokens"] > 0 and result["id"] == "big-result"
    assert len(json.dumps(result)) < 48 * 1024


def test_a_poisoned_answer_for_a_message_without_id_carries_the_senders_message_id(configure_app, emulators):
    """The poison queue gets a copy with a new message id, which the sender cannot match: so the
    last delivery of a message without an id answers `poisoned` itself, with the original id."""
    configure_app(AZURE_OPENAI_MAX_RETRIES="0")
    inject(emulators, {"status": 503}, {"status": 503})
    with pytest.raises(RetryLater):  # an early delivery: the host will deliver it again
        from_queue(message(SEED, id_="sender-sees-this", dequeue_count=4))
    result = from_queue(message(SEED, id_="sender-sees-this", dequeue_count=5))  # the last one (maxDequeueCount)
    assert result == {"id": "sender-sees-this", "status": "failed",
                      "error": {"code": "poisoned", "message": result["error"]["message"]}}
    inject(emulators, {"status": 503})
    with pytest.raises(RetryLater):  # with its own id, it goes through the poison queue as before
        from_queue(message({"id": "own", **SEED}, dequeue_count=5))


def test_an_event_id_with_a_newline_cannot_forge_a_log_line(configure_app, caplog):
    configure_app()
    with caplog.at_level(logging.INFO):
        from_event_grid(event(SEED, id_="evt-1\nINFO forged line status=200"))
    assert "\nINFO forged" not in caplog.text and "evt-1\\nINFO forged" in caplog.text  # quoted, on one line
