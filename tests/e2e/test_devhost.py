"""The dev host (`python -m devserver`): HTTP over real sockets (a subprocess), its
hardening (issue 11.7), and its pieces in process: host.json, storage settings, the
queue listener's algorithm against an in-memory queue service, trigger conversion.

The end-to-end queue, Event Grid and admin API tests, with Azurite, are in test_azurite.py.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import itertools
import json
import os
import re
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import azure.functions as func
import pytest
import requests

from devserver.host import storage as storage_module
from devserver.host.bindings import QueueOutputs, messages
from devserver.host.eventgrid import validation_code
from devserver.host.functions import Function, Invoker, event_grid_event, index, queue_message
from devserver.host.host import compile_template, load_local_settings, route_prefix
from devserver.host.hostconfig import HostConfig, HostConfigError, QueueOptions, timespan
from devserver.host.queues import Backoff, QueueListener, poison_queue_name
from devserver.host.storage import UndecodableMessage, decode_message, encode_message, storage_account
from support.app_client import SEED
from support.devhost_process import DevHostProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def devhost():
    # 1024 open files at most, soft and hard: the usual soft limit on Linux, where the old
    # thread-per-connection server ran out of descriptors (see the 1100-connection test).
    host = DevHostProcess("--no-storage", "--emulator-latency-ms", "0",
                          file_limit=1024 if sys.platform.startswith("linux") else None)
    yield host
    assert host.stop() == 0


def emulator_url(host: DevHostProcess) -> str:
    return __import__("re").search(r"Emulator: (http://\S+?)/ ", host.text).group(1)


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def test_seed_scenario_health_and_bad_body_over_http(devhost):
    reply = requests.post(devhost.url + "/api/completions", json=SEED, timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["text"].startswith(" ") and reply.headers["x-request-id"]
    health = requests.get(devhost.url + "/api/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    bad = requests.post(devhost.url + "/api/completions", data=b"not json", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    chunked = requests.post(devhost.url + "/api/completions", data=iter([json.dumps(SEED).encode()]), timeout=10)
    assert chunked.status_code == 200  # a chunked body, as requests sends a generator


def test_it_serves_exactly_the_http_functions_the_app_declares(devhost, declared_functions):
    declared = {}
    for name, function in declared_functions.items():
        bindings = json.loads(function.get_function_json())["bindings"]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        if trigger["type"] == "httpTrigger":
            declared[name] = (",".join(trigger["methods"]), f"{devhost.url}/api/{trigger['route']}")
    assert devhost.routes() == declared
    assert "EMULATOR" in devhost.text and "Function keys are not checked locally" in devhost.text
    # --no-storage: the others are listed, with why they are not served
    assert set(devhost.served()) == set(declared_functions) - set(declared)
    assert all("not served here" in how and "--no-storage" in how for how in devhost.served().values())


def test_unknown_routes_and_methods_are_404(devhost):
    assert requests.get(devhost.url + "/api/completions", timeout=10).status_code == 404
    assert requests.post(devhost.url + "/api/nothing", json={}, timeout=10).status_code == 404
    assert requests.post(devhost.url + "/completions", json=SEED, timeout=10).status_code == 404
    assert requests.post(devhost.url + "//api/completions", json=SEED, timeout=10).status_code == 200


def test_32_concurrent_requests_run_in_parallel(devhost):
    control = emulator_url(devhost) + "/_emulator/config"
    requests.post(control, json={"latency_ms": 200}, timeout=5).raise_for_status()
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(
                lambda _: requests.post(devhost.url + "/api/completions", json=SEED, timeout=30).status_code,
                range(32)))
        elapsed = time.monotonic() - started
    finally:
        requests.post(control, json={"latency_ms": 0}, timeout=5).raise_for_status()
    assert statuses == [200] * 32
    assert elapsed < 32 * 0.2 / 4, f"{elapsed:.2f} s for 32 x 200 ms: not parallel"


def test_configured_endpoint_is_used_instead_of_the_emulator(running_emulators, tmp_path):
    """An endpoint in local.settings.json (key auth here) wins; environment variables win over the file."""
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {
        "FUNCTIONS_WORKER_RUNTIME": "python", "AZURE_OPENAI_ENDPOINT": running_emulators.openai.endpoint,
        "AZURE_OPENAI_DEPLOYMENT": "gpt-35-turbo-instruct", "AZURE_OPENAI_AUTH": "key",
        "AZURE_OPENAI_API_KEY": running_emulators.openai.api_key, "COMPLETIONS_MAX_TOKENS": "5"}}))
    host = DevHostProcess("--no-storage", settings=settings, env={"COMPLETIONS_MAX_TOKENS": "7"})
    try:
        assert "EMULATOR" not in host.text
        before = requests.get(running_emulators.openai.base_url + "/_emulator/stats", timeout=5).json()
        assert requests.post(host.url + "/api/completions", json=SEED, timeout=10).status_code == 200
        after = requests.get(running_emulators.openai.base_url + "/_emulator/stats", timeout=5).json()
        assert after["completion_requests"] == before["completion_requests"] + 1
        assert requests.post(host.url + "/api/completions", json={"prompt": "x", "max_tokens": 7},
                             timeout=10).status_code == 200  # the environment's 7, not the file's 5
        assert requests.post(host.url + "/api/completions", json={"prompt": "x", "max_tokens": 8},
                             timeout=10).status_code == 400
    finally:
        assert host.stop() == 0


def test_appconfig_flag_serves_settings_from_the_stand_in_and_refreshes_them_live():
    """make run ARGS="--appconfig devserver/appconfig.example.json": the store's settings apply,
    and a change made through the stand-in's control API applies without a restart."""
    host = DevHostProcess("--appconfig", str(ROOT / "devserver" / "appconfig.example.json"), "--no-storage",
                          env={"AZURE_APPCONFIG_REFRESH_SECONDS": "1"})
    try:
        store = re.search(r"App Configuration stand-in: (https://\S+)", host.text).group(1)
        ca_file = re.search(r"--cacert (\S+)\)", host.text).group(1)
        too_many = {"prompt": "x", "max_tokens": 300}  # the example store's limit is 256
        assert requests.post(host.url + "/api/completions", json=too_many, timeout=30).status_code == 400
        health = requests.get(host.url + "/api/health", timeout=10).json()
        assert health["configuration"]["source"] == "app_configuration"
        requests.post(store + "/_emulator/settings", verify=ca_file, timeout=10, json=[
            {"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "512"},
            {"key": "completions:sentinel", "value": "2"}]).raise_for_status()
        give_up = time.monotonic() + 20
        while requests.post(host.url + "/api/completions", json=too_many, timeout=30).status_code != 200:
            assert time.monotonic() < give_up, "the change never applied"
            time.sleep(0.3)
    finally:
        assert host.stop() == 0


def test_ctrl_c_shuts_down_cleanly():
    host = DevHostProcess("--no-storage")
    assert host.stop() == 0
    assert "Dev host stopped." in host.tail
    assert "Unclosed" not in host.log and "Traceback" not in host.log


def test_without_node_queues_are_not_served_loudly_and_http_still_is():
    """Azurite needs Node.js: without it the dev host says so in a box and serves HTTP only."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]  # nothing listens here once closed
    connection = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
                  f"{storage_module.DEV_ACCOUNT_KEY};QueueEndpoint=http://127.0.0.1:{free}/devstoreaccount1;")
    host = DevHostProcess(env={"PATH": "/nonexistent", "AzureWebJobsStorage": connection})
    try:
        assert "QUEUES ARE NOT SERVED: Node.js is not installed" in host.text
        assert all("not served here" in how for how in host.served().values())
        assert requests.get(host.url + "/api/health", timeout=10).status_code == 200
    finally:
        assert host.stop() == 0


# -- issue 11.7: malformed framing, oversized bodies, idle connections ------------------------------
BODY = json.dumps(SEED).encode()


def exchange(url: str, data: bytes, timeout: float = 5.0) -> int | None:
    """Send raw bytes as one request; the answer's status, or None if none came in time."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while b"\r\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            return None
    return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else None


def request_head(*headers: str) -> bytes:
    return ("POST /api/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize("name, data", [
    ("Transfer-Encoding other than chunked", request_head("Transfer-Encoding: xchunked") + chunk(BODY) + b"0\r\n\r\n"),
    ("chunked not last", request_head("Transfer-Encoding: chunked, gzip") + chunk(BODY) + b"0\r\n\r\n"),
    ("Content-Length with a sign", request_head(f"Content-Length: +{len(BODY)}") + BODY),
    ("negative Content-Length", request_head("Content-Length: -1") + BODY),
    ("two Content-Lengths", request_head(f"Content-Length: {len(BODY)}", f"Content-Length: {len(BODY)}") + BODY),
    ("both framings", request_head(f"Content-Length: {len(BODY)}", "Transfer-Encoding: chunked")
     + chunk(BODY) + b"0\r\n\r\n"),
    ("negative chunk size", request_head("Transfer-Encoding: chunked") + b"-1\r\n" + BODY + b"\r\n0\r\n\r\n"),
    ("chunk size not hex", request_head("Transfer-Encoding: chunked") + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"),
    ("chunk size with 0x", request_head("Transfer-Encoding: chunked") + b"0x10\r\n" + BODY + b"\r\n0\r\n\r\n"),
    ("chunk size overflowing", request_head("Transfer-Encoding: chunked") + b"ffffffffffffffffff\r\n" + BODY),
])
def test_malformed_framing_is_rejected_with_400(devhost, name, data):
    assert exchange(devhost.url, data) == 400, name


def test_a_well_framed_chunked_request_still_works(devhost):
    data = request_head("Transfer-Encoding: chunked") + chunk(BODY[:10]) + chunk(BODY[10:]) + b"0\r\n\r\n"
    assert exchange(devhost.url, data) == 200


def test_bodies_over_32_mib_get_413_without_being_read(devhost):
    assert exchange(devhost.url, request_head(f"Content-Length: {33 * 1024 * 1024}")) == 413
    with socket.create_connection(address(devhost.url), timeout=10) as sock:
        sock.sendall(request_head("Transfer-Encoding: chunked"))
        piece = chunk(b"x" * (1024 * 1024))
        try:
            for _ in range(40):  # the answer comes once 32 MiB are exceeded; the host then stops reading
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sock.recv(64).startswith(b"HTTP/1.1 413")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _open_files_at_least(count: int) -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"this test needs {count} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def test_1100_idle_connections_neither_starve_a_real_client_nor_spin_the_cpu(devhost):
    """With the default limits, in a process allowed 1024 open files: idle connections (silent
    ones and half-sent request heads) cost the host nothing, and a real client is answered
    at once. (The old server took a thread per connection until accept() failed for want of
    descriptors, then spun on the listening socket: no one else got in.)"""
    _open_files_at_least(2600)
    idle = []
    try:
        for index_ in range(1100):
            sock = socket.create_connection(address(devhost.url), timeout=10)
            if index_ % 2:
                sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
            idle.append(sock)
        time.sleep(0.5)
        cpu_before = _cpu_seconds(devhost.process.pid) if Path("/proc").exists() else None
        time.sleep(1.0)
        if cpu_before is not None:
            assert _cpu_seconds(devhost.process.pid) - cpu_before < 0.25, "idle connections keep the host busy"
        started = time.monotonic()
        for _ in range(5):
            assert requests.get(devhost.url + "/api/health", timeout=10).status_code == 200
        assert time.monotonic() - started < 2.0
    finally:
        for sock in idle:
            sock.close()


@pytest.fixture(scope="module")
def strict_host():
    """Short limits, to see them act: 1 s idle timeout, 10 connections."""
    host = DevHostProcess("--no-storage", "--idle-timeout", "1", "--max-connections", "10")
    yield host
    assert host.stop() == 0


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_silent_connection_is_closed_after_the_idle_timeout(strict_host):
    with socket.create_connection(address(strict_host.url)) as sock:
        assert closed_within(sock, 4)


def test_a_request_head_dribbled_byte_by_byte_is_closed(strict_host):
    with socket.create_connection(address(strict_host.url)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/health HTTP/1.1\r\n")
        try:
            for byte in itertools.cycle(b"X-Slow: y\r\n"):
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > 6:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - started < 4, "the dribble kept the connection open"


def test_a_body_that_stops_arriving_gets_408(strict_host):
    status = exchange(strict_host.url, request_head(f"Content-Length: {len(BODY)}") + BODY[:10], timeout=5)
    assert status == 408


def test_a_connection_beyond_the_limit_closes_the_oldest_idle_one(strict_host):
    idle = [socket.create_connection(address(strict_host.url)) for _ in range(10)]
    try:
        assert requests.get(strict_host.url + "/api/health", timeout=5).status_code == 200
        assert closed_within(idle[0], 2)
    finally:
        for sock in idle:
            sock.close()


def test_a_connection_beyond_the_limit_gets_503_when_every_connection_is_busy(strict_host):
    control = emulator_url(strict_host) + "/_emulator/config"
    requests.post(control, json={"latency_ms": 2000}, timeout=5).raise_for_status()
    try:
        with ThreadPoolExecutor(10) as pool:
            busy = [pool.submit(requests.post, strict_host.url + "/api/completions", json=SEED, timeout=10)
                    for _ in range(10)]
            time.sleep(0.7)
            refused = requests.get(strict_host.url + "/api/health", timeout=5)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert [f.result().status_code for f in busy] == [200] * 10
    finally:
        requests.post(control, json={"latency_ms": 0}, timeout=5).raise_for_status()
    assert requests.get(strict_host.url + "/api/health", timeout=5).status_code == 200


# -- pieces -------------------------------------------------------------------------------
def test_route_templates():
    assert compile_template("api/items/{id:int}/{name?}").fullmatch("/api/Items/42").groupdict() == {
        "id": "42", "name": None}
    assert compile_template("api/items/{id:int}/{name?}").fullmatch("/api/items/x") is None
    assert compile_template("api/files/{*path}").fullmatch("/api/files/a/b.txt")["path"] == "a/b.txt"
    assert compile_template("").fullmatch("/")


def test_local_settings_loading_never_overrides_the_environment(tmp_path):
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"A": "file", "B": "file", "C": 3}}))
    environ, said = {"A": "env"}, []
    assert load_local_settings(path, environ, said.append) == {"B": "file"}
    assert environ == {"A": "env", "B": "file"}
    assert any("'A'" in line and "already defined" in line for line in said)
    assert load_local_settings(tmp_path / "missing.json", environ, said.append) == {}


def test_route_prefix_comes_from_host_json(tmp_path):
    assert route_prefix(ROOT / "host.json") == "api"
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}))
    assert route_prefix(tmp_path / "host.json") == ""
    assert route_prefix(tmp_path / "missing.json") == "api"


def test_host_json_queue_settings_are_read_as_the_host_reads_them(tmp_path):
    config = HostConfig.load(ROOT / "host.json")
    assert config.queues == QueueOptions(batch_size=32, new_batch_threshold=32, max_polling_interval=2.0,
                                         visibility_timeout=30.0, max_dequeue_count=5, message_encoding="base64")
    assert config.function_timeout == 180.0 and config.http.route_prefix == "api"
    assert config.http.max_concurrent_requests == 512 and config.http.max_outstanding_requests == 1024
    defaults = HostConfig.load(tmp_path / "missing.json", processors=2).queues
    assert (defaults.batch_size, defaults.new_batch_threshold, defaults.max_polling_interval,
            defaults.visibility_timeout, defaults.max_dequeue_count) == (16, 16, 60.0, 0.0, 5)
    assert timespan("1.00:00:01.5", "x") == 86401.5
    for bad in ({"batchSize": 33}, {"maxPollingInterval": "00:00:00.050"}, {"maxDequeueCount": 0},
                {"messageEncoding": "utf8"}, {"visibilityTimeout": "30s"}):
        with pytest.raises(HostConfigError):
            QueueOptions.from_json(bad)


def test_polling_backs_off_exponentially_to_the_maximum_and_resets_on_messages():
    backoff = Backoff(2.0, uniform=lambda low, high: 1.0)
    delays = [backoff.next_delay(False) for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.3, 0.5, 0.9, 1.7, 2.0])
    assert backoff.next_delay(True) == 0.1
    assert backoff.next_delay(False) == pytest.approx(0.2)


def test_storage_settings():
    dev = storage_account({})
    assert dev.queue_endpoint == "http://127.0.0.1:10001/devstoreaccount1" and dev.is_local_azurite
    assert storage_account({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}) == dev
    custom = storage_account({"AzureWebJobsStorage": "AccountName=devstoreaccount1;AccountKey=k;"
                                                     "QueueEndpoint=http://localhost:12345/devstoreaccount1"})
    assert custom.host_port == ("localhost", 12345) and custom.is_local_azurite
    azure = storage_account({"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=k;"
                                                    "EndpointSuffix=core.windows.net"})
    assert azure.queue_endpoint == "https://acct.queue.core.windows.net" and not azure.is_local_azurite
    identity = storage_account({"AzureWebJobsStorage__accountName": "acct"})
    assert identity.identity and identity.queue_endpoint == "https://acct.queue.core.windows.net"
    assert "AccountKey" not in azure.describe() and "k;" not in azure.describe()
    with pytest.raises(ValueError):
        storage_account({"AzureWebJobsStorage": "not a connection string"})
    assert poison_queue_name("work") == "work-poison" and poison_queue_name("work-poison") is None


def test_message_encoding_is_strict_base64():
    assert encode_message('{"a": "é"}', "base64") == base64.b64encode('{"a": "é"}'.encode()).decode()
    assert decode_message(encode_message(b"\x00\xff", "base64"), "base64") == b"\x00\xff"
    assert decode_message("YWJj\r\nZGVm", "base64") == b"abcdef"  # whitespace is ignored, as .NET does
    for bad in ("not base64!", "YWJj=", "YWJj====", "YWJ", "%%%", "é"):
        with pytest.raises(UndecodableMessage):
            decode_message(bad, "base64")
    assert decode_message("plain", "none") == b"plain"


def test_queue_message_is_built_as_the_worker_builds_it():
    when = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    message = queue_message(b'{"x": 1}', id="m-1", dequeue_count=3, inserted_on=when,
                            expires_on=when + datetime.timedelta(days=7), next_visible_on=when, pop_receipt="r")
    assert isinstance(message, func.QueueMessage)
    assert (message.id, message.dequeue_count, message.pop_receipt, message.get_json()) == ("m-1", 3, "r", {"x": 1})
    assert message.insertion_time == when and message.expiration_time == when + datetime.timedelta(days=7)
    assert message.time_next_visible == when


def test_event_grid_events_and_cloud_events_are_told_apart():
    grid = event_grid_event({"id": "1", "eventType": "t", "subject": "s", "data": {"a": 1}, "dataVersion": "1",
                             "eventTime": "2025-01-02T03:04:05Z", "topic": "/x"})
    assert isinstance(grid, func.EventGridEvent) and (grid.event_type, grid.get_json()) == ("t", {"a": 1})
    cloud = event_grid_event({"specversion": "1.0", "id": "2", "type": "t2", "source": "/src", "data": {"b": 2}})
    assert isinstance(cloud, func.CloudEvent) and (cloud.type, cloud.source, cloud.get_json()) == ("t2", "/src",
                                                                                                    {"b": 2})
    assert validation_code([{"data": {"validationCode": "abc"}}]) == "abc"
    assert validation_code({"specversion": "1.0", "data": json.dumps({"validationCode": "def"})}) == "def"
    with pytest.raises(ValueError):
        validation_code([{"data": {}}])


def test_queue_output_values_become_messages():
    assert messages("a") == ["a"] and messages(None) == [] and messages([b"b", "c"]) == [b"b", "c"]
    assert messages(func.QueueMessage(body=b"d")) == [b"d"]
    with pytest.raises(TypeError):
        messages({"not": "allowed"})


def test_every_function_of_the_app_can_be_served(declared_functions):
    functions = {f.name: f for f in index(declared_functions.values())}
    http = ("completions", "chat_completions", "azure_completions", "azure_chat_completions", "v1_completions",
            "v1_chat_completions", "v1_models", "v1_model", "azure_models", "azure_model", "health")
    assert {name: f.trigger_type for name, f in functions.items()} == {
        **dict.fromkeys(http, "httpTrigger"), "completion_from_queue": "queueTrigger",
        "completion_poisoned": "queueTrigger", "completion_from_event_grid": "eventGridTrigger"}
    assert {name: f.unserved_reason() for name, f in functions.items()} == dict.fromkeys(functions)
    assert functions["completion_from_queue"].queue_names() == {"completion-requests", "completion-results"}


def test_a_queue_on_another_connection_is_not_served_rather_than_polled_on_the_wrong_account():
    other = func.FunctionApp()

    @other.queue_trigger(arg_name="msg", queue_name="q", connection="OtherStorage")
    async def elsewhere(msg: func.QueueMessage) -> None:
        pass

    @other.queue_trigger(arg_name="msg", queue_name="q2", connection="AzureWebJobsStorage")
    async def here(msg: func.QueueMessage) -> None:
        pass

    reasons = {f.name: f.unserved_reason() for f in index(other.get_functions())}
    assert reasons["here"] is None and "'OtherStorage'" in reasons["elsewhere"]


# -- the queue listener's algorithm, against an in-memory queue service --------------------------------
class FakeQueue:
    """Enough of azure-storage-queue's async QueueClient for the listener; visibility runs
    100 times faster than the seconds it is given."""

    SCALE = 0.01

    def __init__(self, name: str, service: FakeService) -> None:
        self.name, self.service = name, service
        self.messages: dict[str, dict] = {}
        self.updates: list[tuple[str, int]] = []

    async def create_queue(self):
        pass

    async def send_message(self, text):
        key = f"{self.name}-{next(self.service.ids)}"
        now = datetime.datetime.now(datetime.UTC)
        self.messages[key] = {"content": text, "dequeue_count": 0, "visible_at": 0.0, "receipt": None,
                              "inserted_on": now}
        return key

    def receive_messages(self, *, messages_per_page, max_messages, visibility_timeout):
        async def page():
            now = time.monotonic()
            taken = [k for k, m in self.messages.items() if m["visible_at"] <= now][:max_messages]
            for key in taken:
                message = self.messages[key]
                message["dequeue_count"] += 1
                message["visible_at"] = now + visibility_timeout * self.SCALE
                message["receipt"] = f"r{next(self.service.ids)}"
                yield _Received(key, message)
        return page()

    async def update_message(self, key, *, pop_receipt, visibility_timeout):
        message = self.messages[key]
        assert message["receipt"] == pop_receipt
        self.updates.append((key, visibility_timeout))
        message["visible_at"] = time.monotonic() + visibility_timeout * self.SCALE
        message["receipt"] = f"r{next(self.service.ids)}"
        return _Received(key, message)

    async def delete_message(self, key, pop_receipt):
        assert self.messages[key]["receipt"] == pop_receipt
        del self.messages[key]


class _Received:
    def __init__(self, key: str, message: dict) -> None:
        self.id, self.content, self.dequeue_count = key, message["content"], message["dequeue_count"]
        self.pop_receipt, self.inserted_on = message["receipt"], message["inserted_on"]
        self.expires_on = self.inserted_on + datetime.timedelta(days=7)
        self.next_visible_on = self.inserted_on


class FakeService:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.queues: dict[str, FakeQueue] = {}

    def get_queue_client(self, name: str) -> FakeQueue:
        return self.queues.setdefault(name, FakeQueue(name, self))


def queue_function(user_function) -> Function:
    trigger = {"type": "queueTrigger", "direction": "IN", "name": "msg", "queueName": "work"}
    output = {"type": "queue", "direction": "OUT", "name": "out", "queueName": "done"}
    return Function("work_function", trigger, (output,), (output, trigger), user_function)


async def _listen(function: Function, options: QueueOptions, until, service: FakeService | None = None,
                  timeout: float = 10.0) -> FakeService:
    service = service or FakeService()
    listener = QueueListener(function, service, options, Invoker(5.0), QueueOutputs(service, "base64"),
                             uniform=lambda low, high: 1.0)
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(timeout):
            while not until(service):
                await asyncio.sleep(0.01)
    finally:
        listener.stop()
        task.cancel()
        await listener.drain(1)
    return service


def _options(**changes) -> QueueOptions:
    values = {"batch_size": 4, "new_batch_threshold": 2, "max_polling_interval": 0.1, "visibility_timeout": 30.0,
              "max_dequeue_count": 3, "message_encoding": "base64"}
    return QueueOptions(**{**values, **changes})


def _decoded(queue: FakeQueue) -> list[str]:
    return sorted(base64.b64decode(m["content"]).decode() for m in queue.messages.values())


def test_listener_runs_a_message_and_deletes_it_once_its_output_is_written():
    seen = []

    async def work(msg: func.QueueMessage, out: func.Out[str]) -> None:
        seen.append((msg.id, msg.dequeue_count, msg.pop_receipt is not None, msg.insertion_time is not None))
        out.set("done:" + msg.get_body().decode())

    async def scenario():
        service = FakeService()
        await service.get_queue_client("work").send_message(encode_message("hello", "base64"))
        await _listen(queue_function(work), _options(), lambda s: s.get_queue_client("done").messages, service)
        return service

    service = asyncio.run(scenario())
    assert seen == [("work-1", 1, True, True)]
    assert service.queues["work"].messages == {} and _decoded(service.queues["done"]) == ["done:hello"]


def test_listener_redelivers_after_the_visibility_timeout_then_moves_to_poison():
    deliveries = []

    async def fails(msg: func.QueueMessage, out: func.Out[str]) -> None:
        deliveries.append(msg.dequeue_count)
        out.set("never written")
        raise RuntimeError("transient")

    async def scenario():
        service = FakeService()
        await service.get_queue_client("work").send_message(encode_message("job", "base64"))
        return await _listen(queue_function(fails), _options(),
                             lambda s: s.get_queue_client("work-poison").messages, service)

    service = asyncio.run(scenario())
    assert deliveries == [1, 2, 3]
    assert [seconds for _, seconds in service.queues["work"].updates] == [30, 30]  # released, not deleted
    assert service.queues["work"].messages == {} and _decoded(service.queues["work-poison"]) == ["job"]
    assert "done" not in service.queues or not service.queues["done"].messages  # outputs of failures are dropped


def test_listener_poisons_undecodable_and_overdue_messages_without_an_invocation():
    invoked = []

    async def work(msg: func.QueueMessage, out: func.Out[str]) -> None:
        invoked.append(msg.get_body())

    async def scenario():
        service = FakeService()
        work_queue = service.get_queue_client("work")
        await work_queue.send_message("%% not base64 %%")
        overdue = await work_queue.send_message(encode_message("old", "base64"))
        work_queue.messages[overdue]["dequeue_count"] = 3  # it will be delivery 4 of at most 3
        await work_queue.send_message(encode_message("fine", "base64"))
        return await _listen(queue_function(work), _options(),
                             lambda s: len(s.get_queue_client("work-poison").messages) == 2 and invoked, service)

    service = asyncio.run(scenario())
    assert invoked == [b"fine"]
    contents = sorted(m["content"] for m in service.queues["work-poison"].messages.values())
    assert contents == sorted(["%% not base64 %%", encode_message("old", "base64")])  # copied as received


def test_a_failure_on_a_poison_queue_leaves_the_message_invisible():
    async def fails(msg: func.QueueMessage, out: func.Out[str]) -> None:
        raise RuntimeError("no luck")

    function = queue_function(fails)
    function = Function(function.name, {**function.trigger, "queueName": "work-poison"}, function.outputs,
                        function.bindings, fails)

    async def scenario():
        service = FakeService()
        await service.get_queue_client("work-poison").send_message(encode_message("x", "base64"))
        await _listen(function, _options(),
                      lambda s: next(iter(s.queues["work-poison"].messages.values()))["dequeue_count"] == 1, service)
        await asyncio.sleep(0.1)
        return service

    service = asyncio.run(scenario())
    assert service.queues["work-poison"].updates == []  # not released: invisible until its 10 minutes end
    assert "work-poison-poison" not in service.queues


def test_listener_runs_at_most_batch_size_plus_threshold_at_once_on_one_loop():
    """Batch 4, threshold 2: four run; once two of them finish, the next batch of four is
    fetched (six in flight), and no more until the count drops to two again."""
    running, peak, loops = 0, 0, set()
    first, rest = None, None

    async def gated(msg: func.QueueMessage, out: func.Out[str]) -> None:
        nonlocal running, peak
        loops.add(id(asyncio.get_running_loop()))
        running += 1
        peak = max(peak, running)
        await (first if int(msg.get_body()) < 2 else rest).wait()
        running -= 1

    async def scenario():
        nonlocal first, rest
        first, rest = asyncio.Event(), asyncio.Event()
        service = FakeService()
        for number in range(20):
            await service.get_queue_client("work").send_message(encode_message(str(number), "base64"))
        asyncio.get_running_loop().call_later(0.3, first.set)
        asyncio.get_running_loop().call_later(0.8, rest.set)
        return await _listen(queue_function(gated), _options(batch_size=4, new_batch_threshold=2),
                             lambda s: not s.queues["work"].messages, service)

    asyncio.run(scenario())
    assert peak == 4 + 2 and len(loops) == 1
