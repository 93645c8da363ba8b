"""Event-driven use end to end, with Azurite (the Azure Storage emulator) on loopback.

- The queue wire format in process: a producer enqueues with the documented
  policy, the test receives the raw message as the Functions host would and runs
  the queue function with a real ``QueueMessage``.
- The dev host (``python -m devserver``, a subprocess) with this app, over real
  sockets: queue messages answered on the results queue, a bad one answered
  ``failed``, transient failures redelivered and then answered ``poisoned``
  through the poison queue, undecodable and oversized messages that do not stop
  the listener, concurrency, the Event Grid webhook and the admin API. Timings
  are shortened through ``--host-json`` (visibility 1 s), nothing else changes.
- The dev host with a probe app (tests/e2e/devhost_app) that reports what it was
  given: every QueueMessage field, CloudEvents, function keys, Azurite started
  and stopped by the dev host itself.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
import requests
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64DecodePolicy, TextBase64EncodePolicy

import function_app
from devserver.emulators.runner import LEGACY_DEPLOYMENT
from devserver.host.storage import answers
from devserver.tools.enqueue import enqueue
from devserver.tools.results import read_results, wait_for_result
from support.app_client import LOOP, SEED
from support.azurite import connection_string, free_port, need_azurite
from support.devhost_process import DevHostProcess
from support.triggers import Out

HTTP_FUNCTIONS = {"completions", "chat_completions", "azure_completions", "azure_chat_completions", "v1_completions",
                  "v1_chat_completions", "v1_models", "v1_model", "azure_models", "azure_model", "health"}

ROOT = Path(__file__).resolve().parents[2]
PROBE_APP = ROOT / "tests" / "e2e" / "devhost_app"
REQUESTS, RESULTS, POISON = "completion-requests", "completion-results", "completion-requests-poison"


def test_queue_round_trip_through_azurite(azurite, configure_app):
    configure_app()
    request_id = enqueue(azurite, REQUESTS, {"id": "wire-1", **SEED})
    assert request_id == "wire-1"

    # What the host receives: the raw message, base64 text.
    raw = QueueClient.from_connection_string(azurite, REQUESTS)
    received = next(iter(raw.receive_messages(messages_per_page=1, visibility_timeout=30)))
    assert json.loads(base64.b64decode(received.content)) == {"id": "wire-1", **SEED}

    msg = QueueMessage(id=received.id, body=base64.b64decode(received.content),
                       dequeue_count=received.dequeue_count, pop_receipt=received.pop_receipt)
    out = Out()
    LOOP.run(function_app.completion_from_queue.build().get_user_function()(msg, out))
    raw.delete_message(received)  # the host deletes the message once the function succeeded

    results = QueueClient.from_connection_string(azurite, RESULTS, message_encode_policy=TextBase64EncodePolicy())
    results.create_queue()
    results.send_message(out.value)  # the output binding, base64 as host.json says

    result = wait_for_result(azurite, RESULTS, "wire-1", timeout=10)
    assert result["status"] == "succeeded" and result["id"] == "wire-1"
    assert result["result"]["text"].startswith(" ")
    assert list(raw.peek_messages()) == []


# -- the dev host with this app ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(azurite, running_emulators, tmp_path_factory):
    """`make run` against Azurite and the emulators; host.json as shipped but with a 1 s
    visibility timeout and 0.5 s polling, and no in-invocation retries, so a poison run
    takes seconds."""
    host_json = json.loads((ROOT / "host.json").read_text())
    host_json["extensions"]["queues"].update(visibilityTimeout="00:00:01", maxPollingInterval="00:00:00.500")
    path = tmp_path_factory.mktemp("stack") / "host.json"
    path.write_text(json.dumps(host_json))
    host = DevHostProcess("--host-json", str(path), env={
        **running_emulators.app_settings(deployment=LEGACY_DEPLOYMENT, api="completions"),
        "AzureWebJobsStorage": azurite, "AZURE_OPENAI_MAX_RETRIES": "0"})
    yield host
    assert host.stop() == 0


def send_raw(connection: str, queue: str, text: str, encode: bool = True):
    policy = {"message_encode_policy": TextBase64EncodePolicy()} if encode else {}
    return QueueClient.from_connection_string(connection, queue, **policy).send_message(text)


def deliveries(host: DevHostProcess, message_id: str, count: int, timeout: float = 30) -> list[int]:
    """The dequeue counts the app logged for a queue message, once there are ``count``."""
    lines = host.wait_for_log(rf"queue message id='{message_id}' dequeue_count=\d+", timeout, count)
    return [int(re.search(r"dequeue_count=(\d+)", line).group(1)) for line in lines]


def test_every_function_is_served_and_its_queues_created(stack, azurite, declared_functions):
    assert set(stack.routes()) == HTTP_FUNCTIONS
    webhook = f"{stack.url}/runtime/webhooks/EventGrid?functionName=completion_from_event_grid"
    assert stack.served() == {
        "completion_from_queue": f"queueTrigger: queue '{REQUESTS}' (AzureWebJobsStorage)",
        "completion_poisoned": f"queueTrigger: queue '{POISON}' (AzureWebJobsStorage)",
        "completion_from_event_grid": f"eventGridTrigger: {webhook}"}
    assert set(stack.routes()) | set(stack.served()) == set(declared_functions)
    queues = {q.name for q in QueueServiceClient.from_connection_string(azurite).list_queues()}
    assert {REQUESTS, RESULTS, POISON} <= queues
    assert "not served" not in stack.text and "QUEUES ARE NOT SERVED" not in stack.text


def test_a_queue_message_gets_its_result(stack, azurite, emulators):
    sent = send_raw(azurite, REQUESTS, json.dumps({"id": "q-ok", **SEED}))
    result = wait_for_result(azurite, RESULTS, "q-ok", timeout=30)
    assert result["status"] == "succeeded" and result["result"]["text"].startswith(" ")
    assert deliveries(stack, sent.id, 1) == [1]
    time.sleep(0.5)
    assert list(QueueClient.from_connection_string(azurite, REQUESTS).peek_messages()) == []  # deleted


def test_a_result_too_large_for_a_message_is_delivered_as_result_too_large(stack, azurite, emulators):
    """Storage refuses messages over 64 KiB; a result that big, already paid for, must still
    reach the caller: as a failed result with its usage, never as five redeliveries and a poison."""
    big = {"id": "q-big", "prompt": ["word " * 100] * 16, "n": 10, "echo": True, "max_tokens": 200}
    sent = send_raw(azurite, REQUESTS, json.dumps(big))
    result = wait_for_result(azurite, RESULTS, "q-big", timeout=30)
    assert result["status"] == "failed" and result["error"]["code"] == "result_too_large"
    assert result["error"]["usage"]["total_tokens"] > 0
    assert deliveries(stack, sent.id, 1) == [1]


def test_a_bad_message_gets_a_failed_result_and_is_not_retried(stack, azurite, emulators):
    sent = send_raw(azurite, REQUESTS, json.dumps({"id": "q-bad", "prompt": ""}))
    result = wait_for_result(azurite, RESULTS, "q-bad", timeout=30)
    assert result["status"] == "failed" and result["error"]["code"] == "invalid_request"
    time.sleep(1.5)  # past the visibility timeout: no second delivery
    assert deliveries(stack, sent.id, 1) == [1]


def test_a_transient_failure_is_redelivered_then_answered_poisoned(stack, azurite, emulators):
    emulators.openai_control.faults(*[{"status": 503}] * 5)
    started = time.monotonic()
    sent = send_raw(azurite, REQUESTS, json.dumps({"id": "q-poison", **SEED}))
    result = wait_for_result(azurite, RESULTS, "q-poison", timeout=60)
    assert result["status"] == "failed" and result["error"]["code"] == "poisoned"
    assert deliveries(stack, sent.id, 5) == [1, 2, 3, 4, 5]  # maxDequeueCount: 5
    assert time.monotonic() - started >= 4 * 1.0  # each redelivery waited out the visibility timeout
    assert "Moving message to queue 'completion-requests-poison'" in stack.log
    assert emulators.openai_control.stats()["completion_requests"] == 5  # one attempt per delivery


def test_undecodable_and_oversized_messages_do_not_stop_the_listener(stack, azurite, emulators):
    undecodable = send_raw(azurite, REQUESTS, "%% this is not base64 %%", encode=False)
    prompt = " ".join(["word"] * 9500)  # ~64 KiB once base64-encoded: the largest a queue message may be
    send_raw(azurite, REQUESTS, json.dumps({"id": "q-big", "prompt": prompt}))
    send_raw(azurite, REQUESTS, json.dumps({"id": "q-after", **SEED}))
    found = read_results(azurite, RESULTS, ["q-big", "q-after"], timeout=30)
    assert found["q-big"]["status"] == "failed"  # longer than the model's context: rejected upstream
    assert found["q-big"]["error"]["code"] == "upstream_rejected"
    assert found["q-after"]["status"] == "succeeded"
    stack.wait_for_log(rf"Message id={undecodable.id} on queue '{REQUESTS}' cannot be decoded")


def test_queue_messages_are_processed_concurrently(stack, azurite, emulators):
    emulators.openai_control.config(latency_ms=500)
    ids = [f"q-many-{n}" for n in range(16)]
    started = time.monotonic()
    for request_id in ids:
        send_raw(azurite, REQUESTS, json.dumps({"id": request_id, **SEED}))
    found = read_results(azurite, RESULTS, ids, timeout=30)
    elapsed = time.monotonic() - started
    assert {r["status"] for r in found.values()} == {"succeeded"} and set(found) == set(ids)
    assert elapsed < 16 * 0.5 / 3, f"{elapsed:.1f} s for 16 x 500 ms: not concurrent"


def event(event_id: str, request: dict) -> dict:
    return {"id": event_id, "eventType": "completions.request", "subject": "tests", "dataVersion": "1.0",
            "eventTime": "2025-01-02T03:04:05Z", "data": request}


def test_the_event_grid_webhook_validates_and_delivers(stack, azurite, emulators):
    url = f"{stack.url}/runtime/webhooks/EventGrid?functionName=completion_from_event_grid"
    handshake = requests.post(url, headers={"aeg-event-type": "SubscriptionValidation"}, timeout=10, json=[
        {"id": "v", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "", "dataVersion": "1",
         "eventTime": "2025-01-02T03:04:05Z", "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}}])
    assert handshake.status_code == 200
    assert handshake.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}

    delivered = requests.post(url, headers={"aeg-event-type": "Notification"}, timeout=30, json=[
        event("eg-1", {"id": "eg-ok", **SEED}), event("eg-2", {"id": "eg-bad", "prompt": 1})])
    assert delivered.status_code == 202
    found = read_results(azurite, RESULTS, ["eg-ok", "eg-bad"], timeout=30)
    assert found["eg-ok"]["status"] == "succeeded" and found["eg-bad"]["error"]["code"] == "invalid_request"

    emulators.openai_control.faults({"status": 503})
    retry = requests.post(url, headers={"aeg-event-type": "Notification"}, timeout=30,
                          json=[event("eg-3", {"id": "eg-retry", **SEED})])
    assert retry.status_code == 500 and retry.json()["error"]["code"] == "function_failed"  # Event Grid retries
    assert read_results(azurite, RESULTS, ["eg-retry"], timeout=1) == {}  # no output from a failed invocation

    other = f"{stack.url}/runtime/webhooks/EventGrid?functionName=completion_from_queue"
    assert requests.post(other, headers={"aeg-event-type": "Notification"}, json=[], timeout=10).status_code == 404
    assert requests.post(url, json=[], timeout=10).status_code == 400  # no aeg-event-type
    options = requests.options(url, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}, timeout=10)
    assert options.status_code == 200 and options.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"


def test_the_admin_api_lists_and_invokes(stack, azurite, emulators, declared_functions):
    listed = requests.get(f"{stack.url}/admin/functions", timeout=10).json()
    assert {f["name"] for f in listed} == set(declared_functions)
    for function in listed:
        declared = json.loads(declared_functions[function["name"]].get_function_json())["bindings"]
        assert function["config"]["bindings"] == [{**b, "direction": b["direction"].lower()} for b in declared]
    assert next(f for f in listed if f["name"] == "completions")["invoke_url_template"] == \
        f"{stack.url}/api/completions"

    invoke = f"{stack.url}/admin/functions/completion_from_queue"
    assert requests.post(invoke, json={"input": json.dumps({"id": "adm-q", **SEED})}, timeout=10).status_code == 202
    grid = f"{stack.url}/admin/functions/completion_from_event_grid"
    assert requests.post(grid, json={"input": json.dumps(event("adm-e", {"id": "adm-eg", **SEED}))},
                         timeout=10).status_code == 202
    found = read_results(azurite, RESULTS, ["adm-q", "adm-eg"], timeout=30)
    assert {r["status"] for r in found.values()} == {"succeeded"}

    assert requests.post(f"{stack.url}/admin/functions/completions", json={"input": ""},
                         timeout=10).status_code == 400
    assert requests.post(f"{stack.url}/admin/functions/nothing", json={"input": ""}, timeout=10).status_code == 404
    assert requests.post(invoke, data=b"not json", timeout=10).status_code == 400
    assert requests.get(f"{stack.url}/admin/host/status", timeout=10).json()["state"] == "Running"


# -- the dev host with the probe app: what functions are given ---------------------------------------
KEY = "probe-key-0123456789"


@pytest.fixture(scope="module")
def probe(running_emulators):
    """The probe app, with function keys on, and storage on a port where nothing listens:
    the dev host starts Azurite there itself."""
    need_azurite()
    port = free_port()
    host = DevHostProcess("--app-dir", str(PROBE_APP), "--function-key", KEY, env={
        **running_emulators.app_settings(), "AzureWebJobsStorage": connection_string(port)})
    host.azurite_port = port
    host.connection = connection_string(port)
    yield host
    assert host.stop() == 0


def probe_reports(probe, count: int = 1, timeout: float = 20) -> list[dict]:
    client = QueueClient.from_connection_string(probe.connection, "probe-out",
                                                message_decode_policy=TextBase64DecodePolicy())
    reports, deadline = [], time.monotonic() + timeout
    while len(reports) < count and time.monotonic() < deadline:
        for message in client.receive_messages(messages_per_page=32, visibility_timeout=30):
            reports.append(json.loads(message.content))
            client.delete_message(message)
        time.sleep(0.1)
    assert len(reports) >= count, f"{len(reports)} of {count} reports"
    return reports


def test_the_dev_host_started_azurite_itself(probe):
    assert "started by the dev host" in probe.text and answers("127.0.0.1", probe.azurite_port)
    assert set(probe.served()) == {"probe_queue", "probe_event"}
    assert "Function keys are checked" in probe.text


def test_a_queue_message_reaches_the_function_with_every_field(probe):
    sent = send_raw(probe.connection, "probe-in", "héllo")
    report = probe_reports(probe)[0]
    assert report["id"] == sent.id and report["body"] == "héllo" and report["dequeue_count"] == 1
    assert report["pop_receipt"]
    assert report["insertion_time"] == sent.inserted_on.replace(microsecond=0).isoformat()
    assert report["expiration_time"] == sent.expires_on.replace(microsecond=0).isoformat()
    assert report["time_next_visible"] is not None


def test_a_failing_message_is_moved_to_the_poison_queue_as_it_was_sent(probe):
    send_raw(probe.connection, "probe-in", "fail")  # the probe app's maxDequeueCount is 2
    poison = QueueClient.from_connection_string(probe.connection, "probe-in-poison")
    deadline = time.monotonic() + 20
    while not (peeked := poison.peek_messages()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [m.content for m in peeked] == [base64.b64encode(b"fail").decode()]  # the text as sent, still base64
    assert len(probe.wait_for_log(r"Executed 'Functions.probe_queue' \(Failed", count=2)) == 2


def test_event_grid_events_and_cloud_events_reach_the_function_as_such(probe):
    url = f"{probe.url}/runtime/webhooks/EventGrid?functionName=probe_event&code={KEY}"
    cloud = {"specversion": "1.0", "id": "ce-1", "type": "com.example.request", "source": "/tests",
             "subject": "s", "time": "2025-01-02T03:04:05Z", "datacontenttype": "application/json", "data": {"n": 1}}
    assert requests.post(url, headers={"aeg-event-type": "Notification",
                                       "Content-Type": "application/cloudevents+json"},
                         data=json.dumps(cloud), timeout=10).status_code == 202
    assert requests.post(url, headers={"aeg-event-type": "Notification"},
                         json=[event("eg-9", {"n": 2})], timeout=10).status_code == 202
    reports = {r["id"]: r for r in probe_reports(probe, 2)}
    assert reports["ce-1"] == {"function": "probe_event", "kind": "CloudEvent", "id": "ce-1",
                               "type": "com.example.request", "source": "/tests", "subject": "s", "data": {"n": 1}}
    assert reports["eg-9"]["kind"] == "EventGridEvent" and reports["eg-9"]["type"] == "completions.request"
    validation = requests.post(url, headers={"aeg-event-type": "SubscriptionValidation"}, timeout=10, json={
        "specversion": "1.0", "id": "v", "type": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "source": "/x", "data": json.dumps({"validationCode": "cloud-code"})})
    assert validation.json() == {"validationResponse": "cloud-code"}


def test_an_unreadable_event_fails_its_delivery_before_any_event_runs(probe):
    """An eventTime the worker's converter refuses is a coded 400 for the whole delivery (nothing of
    it run, so a redelivery duplicates nothing), on the webhook as on the admin API."""
    url = f"{probe.url}/runtime/webhooks/EventGrid?functionName=probe_event&code={KEY}"
    bad = dict(event("eg-bad", {"n": 0}), eventTime="garbage")
    refused = requests.post(url, headers={"aeg-event-type": "Notification"}, json=[event("eg-10", {"n": 1}), bad],
                            timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_event", refused.text
    admin = requests.post(f"{probe.url}/admin/functions/probe_event", headers={"x-functions-key": KEY},
                          json={"input": json.dumps(bad)}, timeout=10)
    assert admin.status_code == 400 and admin.json()["error"]["code"] == "invalid_event", admin.text
    assert requests.post(url, headers={"aeg-event-type": "Notification"}, json=[event("eg-11", {"n": 2})],
                         timeout=10).status_code == 202
    assert [report["id"] for report in probe_reports(probe, 1)] == ["eg-11"]  # eg-10 never ran


def test_function_keys_are_checked_when_set(probe):
    hello = f"{probe.url}/api/hello"
    assert requests.get(hello, timeout=10).status_code == 401
    assert requests.get(hello, params={"code": "wrong"}, timeout=10).status_code == 401
    assert requests.get(hello, params={"code": KEY}, timeout=10).text == "hello"
    assert requests.get(hello, headers={"x-functions-key": KEY}, timeout=10).status_code == 200
    anonymous = requests.get(f"{probe.url}/api/open/world", params={"q": "1"}, timeout=10)  # a sync function
    assert anonymous.status_code == 200 and anonymous.json() == {"name": "world", "q": "1"}
    webhook = f"{probe.url}/runtime/webhooks/EventGrid?functionName=probe_event"
    assert requests.post(webhook, headers={"aeg-event-type": "Notification"}, json=[],
                         timeout=10).status_code == 401
    assert requests.get(f"{probe.url}/admin/functions", timeout=10).status_code == 401
    assert requests.get(f"{probe.url}/admin/functions", headers={"x-functions-key": KEY},
                        timeout=10).status_code == 200


def test_route_values_are_percent_decoded_once(probe):
    open_ = f"{probe.url}/api/open"
    assert requests.get(f"{open_}/%2541", timeout=10).json()["name"] == "%41"  # as ASP.NET routing gives it
    assert requests.get(f"{open_}/a%2Fb", timeout=10).json()["name"] == "a/b"  # an encoded / stays in the value


def test_stopping_the_dev_host_stops_the_azurite_it_started(probe):
    assert probe.stop() == 0
    assert not answers("127.0.0.1", probe.azurite_port)
