"""Telemetry: the values (in-memory reader and exporter), the wiring through the standard
environment variables (a real OTLP/HTTP receiver on loopback, and Application Insights'
ingestion API faked on loopback), a broken collector, secrets, and cold start."""

from __future__ import annotations

import gzip
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devserver.emulators.otlp_receiver import OTLPReceiver, refused_endpoint
from devserver.emulators.runner import LEGACY_DEPLOYMENT
from shared.service import CompletionService
from shared.telemetry.hooks import NOOP, InvocationEnd, InvocationStart
from shared.telemetry.otel import OTelTelemetry
from shared.telemetry.pipeline import _CountingBatchSpanProcessor
from shared.telemetry.switches import settings_problems, telemetry_from_environ
from support.app_client import LOOP, SEED, SETTING_NAMES, post_completions, post_many, post_stream, wait_for
from support.recorded import Recorded

ROOT = Path(__file__).resolve().parents[2]
CHILD = ROOT / "tests" / "support" / "telemetry_child.py"
SEED_PROMPT_TOKENS = 7  # the emulator counts whitespace-separated words
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TELEMETRY_SETTINGS = ("APPLICATIONINSIGHTS_CONNECTION_STRING", "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY")


def test_token_usage_after_n_requests_is_n_times_the_prompt_tokens(recorded):
    record = recorded()
    replies = post_many([SEED] * 5)
    assert [r.status for r in replies] == [200] * 5
    assert record.total("gen_ai.client.token.usage", gen_ai__token__type="input") == 5 * SEED_PROMPT_TOKENS
    assert record.count("gen_ai.client.token.usage", gen_ai__token__type="input") == 5
    assert record.total("gen_ai.client.token.usage", gen_ai__token__type="output") == \
        sum(r.body["usage"]["completion_tokens"] for r in replies)
    point = next(p for p in record.points("gen_ai.client.token.usage") if p.attributes["gen_ai.token.type"] == "input")
    assert dict(point.attributes) == {
        "gen_ai.operation.name": "text_completion", "gen_ai.provider.name": "azure.ai.openai",
        "gen_ai.request.model": "gpt-35-turbo-instruct", "gen_ai.response.model": "gpt-35-turbo-instruct",
        "gen_ai.token.type": "input", "server.address": "127.0.0.1", "server.port": point.attributes["server.port"],
        "completions.backend": "default", "completions.source": "http"}
    assert record.count("gen_ai.client.operation.duration") == 5
    assert record.total("completions.requests", completions__code="ok", completions__source="http") == 5
    assert record.total("completions.upstream.attempts") == 5
    assert record.count("completions.slot.wait.duration") == 0  # a slot was free for each: no wait recorded
    assert record.total("completions.active", completions__source="http") == 0  # in flight: back to zero


def test_completions_active_counts_the_invocations_in_flight(recorded, emulators):
    record = recorded()
    emulators.openai_control.config(latency_ms=600)
    burst = threading.Thread(target=post_many, args=([SEED] * 3,))
    burst.start()
    deadline = time.monotonic() + 5
    while record.total("completions.active", completions__source="http") != 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert record.total("completions.active", completions__source="http") == 3
    burst.join(10)
    assert record.total("completions.active", completions__source="http") == 0


def test_waits_for_a_concurrency_slot_are_recorded(recorded, emulators):
    record = recorded(AZURE_OPENAI_MAX_CONCURRENCY="1")
    emulators.openai_control.config(latency_ms=100)
    assert [r.status for r in post_many([SEED] * 3)] == [200] * 3
    waits = record.points("completions.slot.wait.duration")
    assert sum(p.count for p in waits) == 2 and sum(p.sum for p in waits) >= 0.15


def test_one_span_per_invocation_with_a_child_per_attempt(recorded):
    record = recorded()
    reply = post_completions(SEED, headers={"x-request-id": "req-7"})
    [invocation] = record.spans("text_completion")
    [attempt] = record.spans("POST ")
    assert invocation.name == "text_completion gpt-35-turbo-instruct"
    assert invocation.kind.name == "CLIENT" and attempt.kind.name == "CLIENT"
    assert attempt.parent.span_id == invocation.context.span_id
    assert invocation.attributes["completions.request_id"] == "req-7"
    assert invocation.attributes["gen_ai.usage.input_tokens"] == SEED_PROMPT_TOKENS
    assert invocation.attributes["gen_ai.usage.output_tokens"] == reply.body["usage"]["completion_tokens"]
    assert invocation.attributes["gen_ai.response.id"] == reply.body["id"]
    assert attempt.name == "POST /openai/deployments/{deployment-id}/completions"
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["completions.backend"] == "default"
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert 0 < attempt.attributes["completions.attempt.duration"] < 10  # seconds, set before the span ended
    assert invocation.status.status_code.name == "UNSET"


def test_chat_calls_are_the_chat_operation_and_a_refusal_is_a_retry(recorded, emulators):
    record = recorded(AZURE_OPENAI_DEPLOYMENT="gpt-5-mini", AZURE_OPENAI_API=None)
    reply = post_completions(SEED)  # the completions contract on a reasoning deployment: chat, adapted
    assert reply.status == 200
    [invocation] = record.spans("chat")
    assert invocation.name == "chat gpt-5-mini" and invocation.attributes["gen_ai.operation.name"] == "chat"
    attempts = sorted(record.spans("POST "), key=lambda s: s.start_time)
    assert [a.name for a in attempts] == ["POST /openai/deployments/{deployment-id}/chat/completions"] * 3
    assert [a.attributes["completions.attempt.kind"] for a in attempts] == ["first", "retry", "retry"]
    assert record.total("gen_ai.client.token.usage", gen_ai__operation__name="chat", gen_ai__token__type="input") \
        == reply.body["usage"]["prompt_tokens"]
    points = record.points("gen_ai.client.operation.duration")
    assert {p.attributes["gen_ai.response.model"] for p in points} == {"gpt-5-mini-2025-08-07"}


CHAT_STREAM = {"messages": [{"role": "user", "content": "The food was delicious and the waiter"}], "stream": True}


def test_a_stream_is_one_invocation_until_it_ends_with_its_first_chunk_time_and_tokens(recorded, emulators):
    record = recorded(AZURE_OPENAI_DEPLOYMENT="gpt-4.1-mini", AZURE_OPENAI_API=None)
    emulators.openai_control.config(stream_chunk_ms=150)
    seen: dict[str, float] = {}

    def watch() -> None:  # while the stream runs: it is in flight, and its span has not ended
        time.sleep(0.4)
        seen["streams"] = record.total("completions.streams.active", completions__source="http")
        seen["active"] = record.total("completions.active", completions__source="http")
        seen["spans"] = len(record.spans("chat"))
    watcher = threading.Thread(target=watch)
    watcher.start()
    streamed = post_stream("chat_completions", CHAT_STREAM)  # no include_usage: the caller gets no usage chunk
    watcher.join()
    assert streamed.status == 200 and streamed.events[-1] == "[DONE]"
    assert not any(e.get("usage") for e in streamed.events[:-1])
    assert seen == {"streams": 1, "active": 1, "spans": 0}
    assert record.total("completions.streams.active", completions__source="http") == 0
    assert record.total("completions.active", completions__source="http") == 0
    [invocation] = record.spans("chat")
    assert invocation.attributes["gen_ai.usage.input_tokens"] > 0  # the app asked for the usage chunk itself
    assert 0 < invocation.attributes["gen_ai.response.time_to_first_chunk"] < invocation.end_time / 1e9 - \
        invocation.start_time / 1e9
    assert tuple(invocation.attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert record.count("gen_ai.client.operation.time_to_first_chunk", gen_ai__request__model="gpt-4.1-mini") == 1
    assert record.total("gen_ai.client.token.usage", gen_ai__token__type="output") > 0
    assert record.total("completions.requests", completions__code="ok") == 1


def test_a_caller_who_leaves_mid_stream_ends_its_span_as_client_closed(recorded, emulators):
    record = recorded(AZURE_OPENAI_DEPLOYMENT="gpt-4.1-mini", AZURE_OPENAI_API=None)
    emulators.openai_control.config(stream_chunk_ms=50)
    streamed = post_stream("chat_completions", CHAT_STREAM, read=2)
    assert streamed.status == 200 and len(streamed.events) == 2
    [invocation] = record.spans("chat")
    assert invocation.attributes["error.type"] == "client_closed" and invocation.status.status_code.name == "ERROR"
    assert record.total("completions.requests", completions__code="client_closed") == 1
    assert record.total("completions.streams.active", completions__source="http") == 0
    assert record.total("completions.active", completions__source="http") == 0


def test_a_retry_shows_as_two_attempt_spans_and_an_event(recorded, emulators, clock):
    record = recorded(AZURE_OPENAI_MAX_RETRIES="2")
    emulators.openai_control.faults({"status": 503, "retry_after": 1})
    assert post_completions(SEED).status == 200
    [invocation] = record.spans("text_completion")
    first, second = sorted(record.spans("POST "), key=lambda s: s.start_time)
    assert first.parent.span_id == second.parent.span_id == invocation.context.span_id
    assert first.attributes["http.response.status_code"] == 503 and first.attributes["error.type"] == "503"
    assert first.status.status_code.name == "ERROR"
    assert second.attributes["http.response.status_code"] == 200 and "error.type" not in second.attributes
    assert second.attributes["completions.attempt.kind"] == "retry"
    [event] = invocation.events
    assert event.name == "retry" and event.attributes["error.type"] == "upstream_unavailable"
    assert event.attributes["completions.retry.wait"] == clock.slept[0]
    assert record.total("completions.upstream.retries") == 1
    assert record.total("completions.upstream.attempts", error__type="503") == 1
    assert invocation.attributes["completions.attempts"] == 2


def test_a_failover_is_counted_and_shown_as_an_event(recorded, emulators):
    endpoint = emulators.openai.endpoint
    backends = [{"name": "east", "endpoint": endpoint, "priority": 1}, {"name": "west", "endpoint": endpoint,
                                                                         "priority": 2}]
    record = recorded(AZURE_OPENAI_BACKENDS=json.dumps(backends), AZURE_OPENAI_ENDPOINT=None)
    emulators.openai_control.faults({"status": 500})
    reply = post_completions(SEED)
    assert reply.status == 200 and reply.body["backend"] == "west"
    [invocation] = record.spans("text_completion")
    assert [(e.name, e.attributes["completions.failover.from"], e.attributes["completions.backend"])
            for e in invocation.events] == [("failover", "east", "west")]
    assert record.total("completions.upstream.failovers", completions__backend="west") == 1
    assert record.total("gen_ai.client.token.usage", completions__backend="west", gen_ai__token__type="input") == 7
    assert invocation.attributes["completions.backend"] == "west"


def test_failures_carry_error_type(recorded, emulators):
    record = recorded(AZURE_OPENAI_MAX_RETRIES="0")
    emulators.openai_control.faults({"status": 500})
    assert post_completions(SEED).status == 502
    assert post_completions({"prompt": "trip the content filter"}).status == 400
    assert post_completions({"prompt": ""}).status == 400  # invalid: no gen-AI operation took place
    durations = {p.attributes.get("error.type"): p.count for p in record.points("gen_ai.client.operation.duration")}
    assert durations == {"upstream_error": 1, "content_filter": 1}
    codes = {p.attributes["completions.code"]: p.value for p in record.points("completions.requests")}
    assert codes == {"upstream_error": 1, "content_filter": 1, "invalid_request": 1}
    failed = [s for s in record.spans("text_completion") if s.attributes.get("error.type") == "upstream_error"]
    assert failed and failed[0].status.status_code.name == "ERROR"
    assert record.points("gen_ai.client.token.usage") == []


def test_the_invocation_continues_the_functions_trace_context(recorded):
    import function_app

    record = recorded()

    class TraceContext:
        trace_parent, trace_state, attributes = TRACEPARENT, "vendor=1", {}

    class Context:
        trace_context = TraceContext()

    from support.app_client import completions_request

    user_function = function_app.completions.build().get_user_function()
    assert LOOP.run(user_function(completions_request(SEED), Context())).status_code == 200
    assert LOOP.run(user_function(completions_request(SEED))).status_code == 200  # no context: a new trace
    first, second = record.spans("text_completion")
    assert format(first.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert format(first.parent.span_id, "016x") == TRACEPARENT.split("-")[2]
    assert first.parent.is_remote and first.context.trace_state.get("vendor") == "1"
    assert second.parent is None and second.context.trace_id != first.context.trace_id


def test_the_log_line_carries_the_trace_id_when_telemetry_is_on(recorded, configure_app, caplog):
    record = recorded()
    with caplog.at_level(logging.INFO, logger="shared.logs"):
        post_completions(SEED)
        configure_app()  # telemetry off
        post_completions(SEED)
    on, off = [r.getMessage() for r in caplog.records if r.getMessage().startswith("completion request_id=")]
    [span] = record.spans("text_completion")
    assert on.endswith(f" trace_id={format(span.context.trace_id, '032x')}")
    assert "trace_id" not in off


def test_token_refreshes_and_their_failures_are_counted(recorded, emulators):
    record = recorded()
    assert post_completions(SEED).status == 200
    assert record.total("completions.token.refreshes", completions__outcome="ok") == 1
    record = recorded()  # a new token cache
    emulators.identity_control.config(outage="error")
    assert post_completions(SEED).status == 503
    time.sleep(0.2)  # the refresh thread records after the caller gave up
    failed = [p for p in record.points("completions.token.refreshes")
              if p.attributes["completions.outcome"] == "failed"]
    assert failed and failed[0].attributes["error.type"]


def test_events_from_the_queue_are_counted_by_source(recorded):
    from azure.functions.queue import QueueMessage

    import function_app

    record = recorded()
    msg = QueueMessage(id="m-1", body=json.dumps({"id": "q-1", **SEED}).encode(), dequeue_count=1, pop_receipt="r")

    class Out:
        def set(self, value):
            self.value = value

    out = Out()
    LOOP.run(function_app.completion_from_queue.build().get_user_function()(msg, out))
    assert json.loads(out.value)["status"] == "succeeded"
    assert record.total("gen_ai.client.token.usage", completions__source="queue", gen_ai__token__type="input") == 7
    assert record.total("completions.requests", completions__source="queue") == 1


def test_nothing_secret_is_exported_and_text_only_on_request(recorded, emulators):
    emulators.identity_control.config(token_lifetime=302)
    for log_text in ("false", "true"):
        record = recorded(COMPLETIONS_LOG_TEXT=log_text)
        assert post_completions(SEED).status == 200
        fetched = emulators.identity_control.stats()["token_requests"]
        time.sleep(2.2)  # past the refresh margin: another token request
        assert post_completions(SEED).status == 200
        assert wait_for(lambda: emulators.identity_control.stats()["token_requests"] > fetched)  # noqa: B023
        key_record = recorded(auth="key", COMPLETIONS_LOG_TEXT=log_text)
        assert post_completions(SEED).status == 200
        bad_key = recorded(auth="key", AZURE_OPENAI_API_KEY="wrong-key-value-123", AZURE_OPENAI_MAX_RETRIES="0",
                           COMPLETIONS_LOG_TEXT=log_text)
        assert post_completions(SEED).status == 502
        text = "\n".join(r.exported_text() for r in (record, key_record, bad_key))
        for secret in (emulators.openai.api_key, "wrong-key-value-123", emulators.identity.header, "eyJ"):
            assert secret not in text
        assert (SEED["prompt"] in text) == (log_text == "true")
        [span] = key_record.spans("text_completion")
        if log_text == "true":
            assert json.loads(span.attributes["gen_ai.input.messages"])[0]["parts"][0]["content"] == SEED["prompt"]
            assert json.loads(span.attributes["gen_ai.output.messages"])[0]["role"] == "assistant"
        else:
            assert "gen_ai.input.messages" not in span.attributes


def test_a_full_queue_drops_spans_and_counts_them():
    """The pipeline's bounded queue: a stalled exporter never makes ending a span wait."""
    release = threading.Event()

    class Stalled(SpanExporter):
        def export(self, spans):
            release.wait(10)
            return SpanExportResult.FAILURE

    record = Recorded()
    processor = _CountingBatchSpanProcessor(Stalled(), max_queue_size=4, max_export_batch_size=2,
                                            schedule_delay_millis=10)
    processor.dropped = record.telemetry.dropped
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    started = time.perf_counter()
    for _ in range(50):
        tracer.start_span("s").end()
    assert time.perf_counter() - started < 0.5
    dropped = record.total("completions.telemetry.dropped", error__type="queue_full")
    assert 40 <= dropped <= 50
    release.set()
    provider.shutdown()


def test_the_noop_costs_nothing_and_imports_nothing(configure_app):
    service = configure_app()
    assert service.telemetry is NOOP and not NOOP.enabled
    with NOOP.invocation(InvocationStart("http", "text_completion", None, None)) as call:
        assert call.trace_id == ""
        call.finish(InvocationEnd(200, "ok", True))
    assert NOOP.attempt(None, 1, "first").end() is None


# -- settings -------------------------------------------------------------------------
SECRET = "s3cr3t-value-not-for-logs"


@pytest.mark.parametrize("name,value", [
    ("OTEL_EXPORTER_OTLP_HEADERS", f"api-key {SECRET}"),
    ("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer {SECRET},broken"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", f"ftp://{SECRET}"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{SECRET}:port"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "-5"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "nan"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "1.5"),
])
def test_a_malformed_otel_setting_is_logged_once_by_name_and_telemetry_stays_off(name, value, caplog):
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", name: value}
    with caplog.at_level(logging.DEBUG):
        assert telemetry_from_environ(environ) is NOOP
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and name in errors[0], errors
    assert SECRET not in caplog.text and value not in caplog.text


def test_well_formed_settings_have_no_problems():
    assert settings_problems({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/",
                              "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%20def, x-tenant = t1",
                              "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                              "OTEL_BSP_MAX_QUEUE_SIZE": "4096"}) == {}


@pytest.fixture
def clean_process_env(monkeypatch):
    """Restore, after the test, the variables the distro and shared.otel set with setdefault."""
    for name in ("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "OTEL_LOGS_EXPORTER", "AZURE_MONITOR_DISTRO_VERSION",
                 "OTEL_EXPORTER_OTLP_ENDPOINT", *TELEMETRY_SETTINGS):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    return monkeypatch


def test_a_malformed_connection_string_is_logged_once_and_telemetry_stays_off(clean_process_env, caplog):
    import azure.monitor.opentelemetry as distro

    calls = []
    clean_process_env.setattr(distro, "configure_azure_monitor", lambda **kwargs: calls.append(kwargs))
    for value in (f"InstrumentationKey={SECRET}", f"{SECRET}", f"InstrumentationKey=;Authorization={SECRET}"):
        caplog.clear()
        clean_process_env.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", value)
        with caplog.at_level(logging.DEBUG):
            assert telemetry_from_environ() is NOOP
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and "APPLICATIONINSIGHTS_CONNECTION_STRING" in errors[0], errors
        assert SECRET not in caplog.text
    assert calls == []


def test_application_insights_is_configured_with_the_connection_string(clean_process_env):
    import azure.monitor.opentelemetry as distro

    calls = []
    clean_process_env.setattr(distro, "configure_azure_monitor", lambda **kwargs: calls.append(kwargs))
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://x.example/"
    clean_process_env.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", connection)
    clean_process_env.setenv("OTEL_SERVICE_NAME", "completions-test")
    telemetry = telemetry_from_environ()
    assert telemetry.enabled
    [kwargs] = calls
    assert kwargs["connection_string"] == connection
    assert kwargs["enable_live_metrics"] is False and kwargs["enable_performance_counters"] is False
    assert all(not option["enabled"] for option in kwargs["instrumentation_options"].values())
    assert {"requests", "urllib3", "azure_sdk"} <= set(kwargs["instrumentation_options"])
    assert kwargs["resource"].attributes["service.name"] == "completions-test"
    assert kwargs["span_processors"] == [] and kwargs["metric_readers"] == []
    # env-only detectors (no instance-metadata probe), and no second copy of every log line
    assert os.environ["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] == "azure_functions"
    assert os.environ["OTEL_LOGS_EXPORTER"] == "none"


def test_the_worker_owned_pipeline_is_used_not_configured_again(clean_process_env):
    """PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true: the worker called configure_azure_monitor
    before importing the app; configuring it again would replace nothing and double the work."""
    import azure.monitor.opentelemetry as distro
    import opentelemetry.trace as trace_api

    calls = []
    clean_process_env.setattr(distro, "configure_azure_monitor", lambda **kwargs: calls.append(kwargs))
    clean_process_env.setattr(trace_api, "get_tracer_provider", lambda: TracerProvider())
    clean_process_env.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING",
                             "InstrumentationKey=00000000-0000-0000-0000-000000000000")
    for true_like in ("true", "1", "Yes"):  # as the worker reads it (is_true_like)
        clean_process_env.setenv("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", true_like)
        assert telemetry_from_environ().enabled
    assert calls == []


def test_otel_sdk_disabled_means_no_telemetry_at_all(clean_process_env):
    clean_process_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    clean_process_env.setenv("OTEL_SDK_DISABLED", "TRUE")
    assert telemetry_from_environ() is NOOP  # not three threads feeding no-op instruments


# -- end to end, in fresh processes -------------------------------------------------------
def child_env(emulators, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SETTING_NAMES and not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_", "AZURE_MONITOR"))
           and k not in TELEMETRY_SETTINGS}
    env.update(emulators.app_settings(auth="key", deployment=LEGACY_DEPLOYMENT, api="completions"))
    env.update(settings)
    return env


def run_child(env: dict[str, str], timeout: float = 60, **config) -> dict:
    done = subprocess.run([sys.executable, str(CHILD), json.dumps(config)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["violations"] == [], result["violations"]
    return result


def test_with_no_switch_no_opentelemetry_sdk_or_exporter_is_imported(emulators):
    """(FastAPI, which the streaming extension brings, imports OpenTelemetry's API context itself.)"""
    result = run_child(child_env(emulators), requests=1)
    assert result["statuses"] == [200]
    assert result["telemetry"] == "Telemetry"
    assert [m for m in result["otel_modules"] if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter",
                                                               "azure.monitor"))] == []


def test_otlp_end_to_end_through_the_standard_settings(emulators):
    """The issue's check: three seed completions with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a
    receiver give gen_ai.client.token.usage of 21 input tokens, and text_completion spans."""
    with OTLPReceiver() as receiver:
        env = child_env(emulators, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_EXPORTER_OTLP_HEADERS="x-tenant=t%201",
                        OTEL_METRIC_EXPORT_INTERVAL="60000", OTEL_SERVICE_NAME="completions-e2e")
        result = run_child(env, requests=3, flush=True, traceparent=TRACEPARENT)
        assert result["statuses"] == [200, 200, 200] and result["telemetry"] == "OTelTelemetry"
        received = receiver.received
        inputs = [p for p in received.latest("gen_ai.client.token.usage")
                  if p.attributes["gen_ai.token.type"] == "input"]
        assert sum(p.sum for p in inputs) == 3 * SEED_PROMPT_TOKENS and sum(p.count for p in inputs) == 3
        assert inputs[0].unit == "{token}" and inputs[0].resource["service.name"] == "completions-e2e"
        spans = [s for s in received.spans if s.name.startswith("text_completion")]
        assert [s.name for s in spans] == ["text_completion gpt-35-turbo-instruct"] * 3
        assert {s.trace_id for s in spans} == {TRACEPARENT.split("-")[1]}
        assert {s.parent_span_id for s in spans} == {TRACEPARENT.split("-")[2]}
        assert len([s for s in received.spans if s.name.startswith("POST ")]) == 3
        assert all(headers.get("x-tenant") == "t 1" for _, headers, _ in received.requests)
        assert {path for path, _, _ in received.requests} == {"/v1/traces", "/v1/metrics"}
        assert f"trace_id={TRACEPARENT.split('-')[1]}" in "\n".join(result["logs"])


class _Ingestion:
    """Application Insights' ingestion API (``POST /v2.1/track``), faked on loopback."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        ingestion = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                items = json.loads(body) if body.lstrip().startswith(b"[") else \
                    [json.loads(line) for line in body.splitlines() if line.strip()]
                ingestion.items += items
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *args) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_application_insights_end_to_end_on_a_loopback_ingestion_endpoint(emulators):
    """The real distro and exporter, pointed by the connection string at a fake ingestion API
    (Azure itself cannot be reached here). Statsbeat, SDK stats and the OneSettings control
    plane would call Microsoft's endpoints: off for the test (the child refuses non-loopback)."""
    ingestion = _Ingestion()
    try:
        connection = (f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={ingestion.endpoint}"
                      f";LiveEndpoint={ingestion.endpoint}")
        env = child_env(emulators, APPLICATIONINSIGHTS_CONNECTION_STRING=connection, OTEL_TRACES_SAMPLER="always_on",
                        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true", APPLICATIONINSIGHTS_SDKSTATS_DISABLED="true",
                        APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true")
        result = run_child(env, requests=3, flush=True)
        assert result["statuses"] == [200] * 3 and result["telemetry"] == "OTelTelemetry"
        metrics = [(item["data"]["baseData"]["properties"], item["data"]["baseData"]["metrics"][0])
                   for item in ingestion.items if item["name"].endswith(".Metric")]
        tokens = [(props, m) for props, m in metrics if m["name"] == "gen_ai.client.token.usage"]
        assert sum(m["value"] for props, m in tokens if props["gen_ai.token.type"] == "input") == 21
        dependencies = [item["data"]["baseData"]["name"] for item in ingestion.items
                        if item["name"].endswith(".RemoteDependency")]
        assert dependencies.count("text_completion gpt-35-turbo-instruct") == 3
        assert not any(item["name"].endswith((".Message", ".Request")) for item in ingestion.items)
    finally:
        ingestion.close()


@pytest.mark.parametrize("mode", ["refused", "stall", "error"])
def test_a_broken_collector_costs_requests_nothing(emulators, mode):
    """Export runs on its own threads: a collector that refuses, stalls or fails leaves every
    request as fast as with no collector at all, and the process still exits promptly."""
    with OTLPReceiver("stall" if mode == "stall" else "error", stall_seconds=30) as receiver:
        endpoint = refused_endpoint() if mode == "refused" else receiver.endpoint
        env = child_env(emulators, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_METRIC_EXPORT_INTERVAL="50",
                        OTEL_BSP_SCHEDULE_DELAY="20", OTEL_BSP_MAX_QUEUE_SIZE="64",
                        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="16", OTEL_EXPORTER_OTLP_TIMEOUT="1")
        started = time.monotonic()
        result = run_child(env, requests=120)
        elapsed = time.monotonic() - started
        receiver.release()
    assert result["statuses"] == [200] * 120 and result["telemetry"] == "OTelTelemetry"
    steady = result["durations"][20:]
    assert statistics.median(steady) < 0.05 and max(steady) < 0.5, (statistics.median(steady), max(steady))
    assert elapsed < 30, elapsed  # exit: at most OTEL_EXPORTER_OTLP_TIMEOUT per pending export
    if mode == "stall":
        assert receiver.stalled >= 1


def test_a_hanging_collector_holds_the_exit_at_most_five_seconds(emulators):
    """With no OTEL_EXPORTER_OTLP_TIMEOUT set, a collector that accepts and never answers: the
    exit flush gives up within its budget (it took ~18 s with the SDK's defaults)."""
    with OTLPReceiver("stall", stall_seconds=60) as receiver:
        env = child_env(emulators, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_METRIC_EXPORT_INTERVAL="60000",
                        OTEL_BSP_SCHEDULE_DELAY="60000")
        env.pop("OTEL_EXPORTER_OTLP_TIMEOUT", None)
        result = run_child(env, requests=5)
        exited = time.time()
        receiver.release()
    assert result["statuses"] == [200] * 5
    assert exited - result["finished_at"] < 5.5, exited - result["finished_at"]


# -- sampling ------------------------------------------------------------------------------------
class SampledRecorded(Recorded):
    """As Recorded, with the sampler the app configures for these settings."""

    def __init__(self, environ: dict[str, str]) -> None:
        from shared.telemetry.pipeline import _sampler

        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider(sampler=_sampler(environ))
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = OTelTelemetry(tracer_provider, meter_provider, owned=(tracer_provider, meter_provider))


@pytest.mark.parametrize(("environ", "expected"), [({}, "few"), ({"OTEL_TRACES_SAMPLER": "always_on"}, "all"),
                                                   ({"OTEL_TRACES_SAMPLER": "microsoft.rate_limited",
                                                     "OTEL_TRACES_SAMPLER_ARG": "2"}, "fewer")])
def test_traces_are_rate_limited_by_default_and_metrics_count_everything(configure_app, monkeypatch, environ,
                                                                         expected):
    """By default at most 5 new traces a second are recorded (spans cost CPU; requests alike
    need not each be traced); OTEL_TRACES_SAMPLER overrides it. Metrics count every request."""
    import function_app

    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)  # (always_on: read by the SDK itself)
    recorded = SampledRecorded(environ)
    service = configure_app()
    monkeypatch.setattr(function_app, "service", CompletionService.from_settings(service.settings,
                                                                                  telemetry=recorded.telemetry))
    assert {r.status for r in post_many([SEED] * 40)} == {200}
    invocations = len(recorded.spans("text_completion"))
    assert {"few": 1 <= invocations <= 7, "fewer": 1 <= invocations <= 3, "all": invocations == 40}[expected], \
        invocations
    assert recorded.count("gen_ai.client.operation.duration") == 40
    LOOP.run(function_app.service.aclose())


def test_a_sampled_parent_is_always_recorded(configure_app, monkeypatch):
    """Parent-based: when the Functions host's trace context says sampled, the invocation is traced
    whatever the rate (so a trace the host records is never missing its middle)."""
    import function_app
    from support.app_client import completions_request

    recorded = SampledRecorded({})
    service = configure_app()
    monkeypatch.setattr(function_app, "service", CompletionService.from_settings(service.settings,
                                                                                  telemetry=recorded.telemetry))

    class Context:
        class trace_context:  # noqa: N801 - the shape func.Context has
            trace_parent, trace_state = TRACEPARENT, ""

    user_function = function_app.completions.build().get_user_function()

    async def burst() -> None:
        for _ in range(20):
            await user_function(completions_request(SEED), context=Context())

    LOOP.run(burst())
    assert len(recorded.spans("text_completion")) == 20
    LOOP.run(function_app.service.aclose())


def test_a_rate_under_one_trace_a_second_still_samples():
    from opentelemetry.sdk.trace.sampling import Decision

    from shared.telemetry.pipeline import RateLimitedSampler

    sampler = RateLimitedSampler(0.5)
    decisions = [sampler.should_sample(None, trace_id, "x").decision for trace_id in range(1, 5)]
    assert decisions[0] is Decision.RECORD_AND_SAMPLE and Decision.DROP in decisions[1:]
