"""The dev host's hardening of issue 22, over real sockets (a subprocess):

- JSON nested too deeply for Python (200,000 ``[``) is a client's 400 with a JSON error,
  on the admin API, the Event Grid webhook and as a CloudEvent's ``data``: never a 500
  with a ``RecursionError`` traceback in the host's log;
- DNS rebinding: a ``Host`` that does not name the dev host gets 400;
- CORS: a browser's cross-origin request is refused (403) unless its origin is allowed
  with ``--cors`` or local.settings.json ``Host.CORS``; allowed ones get the CORS headers;
- bodies over 32 MiB get a JSON 413, with a Content-Length as with a chunked body;
- a port already in use ends the dev host with one clear line and a non-zero exit code,
  no traceback and no "Unclosed client session" noise (with storage connected too);
- ``make results`` on an empty results queue says so;
- the App Configuration banner says when the stand-in is checked (a request starts it).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from support.app_client import SEED, SETTING_NAMES
from support.devhost_process import STORAGE_SETTINGS, DevHostProcess

ROOT = Path(__file__).resolve().parents[2]
NESTED = "[" * 200_000  # far deeper than Python's recursion limit
ALLOWED, FROM_SETTINGS, OTHER = "http://app.example", "http://settings.example", "http://evil.example"
# An app with one Event Grid function and no queue output: served with --no-storage, so the
# webhook and the admin API parse its events without Azurite.
GRID_APP = '''
import azure.functions as func

app = func.FunctionApp()


@app.event_grid_trigger(arg_name="event")
async def grid(event: func.EventGridEvent) -> None:
    pass
'''


@pytest.fixture(scope="module")
def devhost():
    host = DevHostProcess("--no-storage")
    yield host
    assert host.stop() == 0


@pytest.fixture(scope="module")
def grid_host(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("grid_app")
    (app_dir / "function_app.py").write_text(GRID_APP)
    (app_dir / "host.json").write_text(json.dumps({"version": "2.0"}))
    host = DevHostProcess("--no-storage", "--app-dir", str(app_dir))
    yield host
    assert host.stop() == 0


@pytest.fixture(scope="module")
def cors_host(tmp_path_factory):
    """``--cors http://app.example``, and ``Host.CORS`` in local.settings.json as Core Tools reads it."""
    settings = tmp_path_factory.mktemp("cors") / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}, "Host": {"CORS": f" {FROM_SETTINGS} ,"}}))
    host = DevHostProcess("--no-storage", "--cors", ALLOWED, settings=settings)
    yield host
    assert host.stop() == 0


def child_env(**extra: str) -> dict[str, str]:
    """The environment DevHostProcess gives the dev host: no app or storage settings of the caller's."""
    environ = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES + STORAGE_SETTINGS}
    return {**environ, "PYTHON_ENABLE_INIT_INDEXING": "1", **extra}


def port_of(host: DevHostProcess) -> int:
    return int(host.url.rsplit(":", 1)[1])


def assert_json_error(reply: requests.Response, status: int, code: str) -> None:
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    assert reply.json()["error"]["code"] == code, reply.text[:300]


def assert_no_recursion_trace(host: DevHostProcess) -> None:
    log = host.log
    assert "RecursionError" not in log and "Traceback" not in log, log[-3000:]


# -- JSON nested too deeply --------------------------------------------------------------------------------
def test_deeply_nested_json_to_the_admin_api_is_a_400(devhost):
    url = f"{devhost.url}/admin/functions/completion_from_queue"
    assert_json_error(requests.post(url, data=NESTED, timeout=30), 400, "invalid_json")
    assert_json_error(requests.post(url, data=iter([NESTED.encode()]), timeout=30), 400, "invalid_json")  # chunked
    assert requests.get(f"{devhost.url}/api/health", timeout=10).status_code == 200  # still serving
    assert_no_recursion_trace(devhost)


def test_deeply_nested_json_to_the_event_grid_webhook_and_as_an_event_is_a_400(grid_host):
    assert "grid: eventGridTrigger: " in grid_host.text and "not served" not in grid_host.text
    webhook = f"{grid_host.url}/runtime/webhooks/EventGrid?functionName=grid"
    for event_type in ("Notification", "SubscriptionValidation"):
        reply = requests.post(webhook, data=NESTED, headers={"aeg-event-type": event_type}, timeout=30)
        assert_json_error(reply, 400, "invalid_json")
    cloud = {"specversion": "1.0", "id": "v", "type": "Microsoft.EventGrid.SubscriptionValidationEvent",
             "source": "/tests", "data": NESTED}  # a CloudEvent's data may be JSON text
    reply = requests.post(webhook, json=cloud, headers={"aeg-event-type": "SubscriptionValidation"}, timeout=30)
    assert_json_error(reply, 400, "invalid_validation_event")
    admin = f"{grid_host.url}/admin/functions/grid"
    assert_json_error(requests.post(admin, data=NESTED, timeout=30), 400, "invalid_json")
    assert_json_error(requests.post(admin, json={"input": NESTED}, timeout=30), 400, "invalid_event")
    handshake = requests.post(webhook, headers={"aeg-event-type": "SubscriptionValidation"}, timeout=10,
                              json={**cloud, "data": json.dumps({"validationCode": "still-fine"})})
    assert handshake.json() == {"validationResponse": "still-fine"}
    assert_no_recursion_trace(grid_host)


# -- DNS rebinding ---------------------------------------------------------------------------------------
def test_a_host_header_that_does_not_name_the_dev_host_is_refused(devhost):
    port = port_of(devhost)
    health = f"{devhost.url}/api/health"
    for host in ("evil.example.com", f"evil.example.com:{port}", f"127.0.0.1.nip.io:{port}",
                 f"localhost.evil.example:{port}", f"127.0.0.1:{port + 1 if port < 65535 else 1}", "10.0.0.1"):
        reply = requests.get(health, headers={"Host": host}, timeout=10)
        assert_json_error(reply, 400, "invalid_host")
    refused = requests.post(f"{devhost.url}/api/completions", json=SEED, headers={"Host": "evil.example.com"},
                            timeout=10)
    assert_json_error(refused, 400, "invalid_host")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "localhost"):
        assert requests.get(health, headers={"Host": host}, timeout=10).status_code == 200, host
    assert requests.post(f"{devhost.url}/api/completions", json=SEED, headers={"Host": f"localhost:{port}"},
                         timeout=10).status_code == 200


# -- CORS ------------------------------------------------------------------------------------------------
def test_cross_origin_requests_are_refused_without_cors(devhost):
    health = f"{devhost.url}/api/health"
    for origin in (ALLOWED, OTHER, "null", f"http://localhost:{port_of(devhost)}"):
        reply = requests.get(health, headers={"Origin": origin}, timeout=10)
        assert_json_error(reply, 403, "cors_origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in reply.headers
    preflight = requests.options(f"{devhost.url}/api/completions", timeout=10, headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
    assert_json_error(preflight, 403, "cors_origin_not_allowed")
    same_origin = requests.get(health, headers={"Origin": devhost.url}, timeout=10)  # the page the host serves
    assert same_origin.status_code == 200 and "Access-Control-Allow-Origin" not in same_origin.headers


def test_allowed_origins_get_the_cors_headers_and_others_are_refused(cors_host):
    health, completions = f"{cors_host.url}/api/health", f"{cors_host.url}/api/completions"
    for origin in (ALLOWED, FROM_SETTINGS):  # --cors, and Host.CORS in local.settings.json
        reply = requests.get(health, headers={"Origin": origin}, timeout=10)
        assert reply.status_code == 200, (origin, reply.text)
        assert reply.headers["Access-Control-Allow-Origin"] == origin and "Origin" in reply.headers["Vary"]
    answered = requests.post(completions, json=SEED, headers={"Origin": ALLOWED}, timeout=10)  # a function's answer
    assert answered.status_code == 200 and answered.headers["Access-Control-Allow-Origin"] == ALLOWED
    for origin in (OTHER, "http://app.example:8080", "https://app.example"):
        refused = requests.get(health, headers={"Origin": origin}, timeout=10)
        assert_json_error(refused, 403, "cors_origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in refused.headers


def test_preflight_is_answered_for_allowed_origins_only(cors_host):
    completions = f"{cors_host.url}/api/completions"
    asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-request-id"}
    for origin in (ALLOWED, FROM_SETTINGS):
        preflight = requests.options(completions, headers={"Origin": origin, **asked}, timeout=10)
        assert preflight.status_code == 204, (origin, preflight.text)
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "content-type,x-request-id"
        assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    refused = requests.options(completions, headers={"Origin": OTHER, **asked}, timeout=10)
    assert_json_error(refused, 403, "cors_origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in refused.headers
    rebound = requests.options(completions, headers={"Origin": ALLOWED, "Host": "evil.example.com", **asked},
                               timeout=10)
    assert_json_error(rebound, 400, "invalid_host")  # an allowed origin does not lift the Host check


# -- bodies over 32 MiB ----------------------------------------------------------------------------------
def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one answer, its body read by its Content-Length."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {received!r}"
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before the whole body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def assert_json_413(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413, (status, headers, body[:300])
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert error["code"] == "payload_too_large" and str(32 * 1024 * 1024) in error["message"]


def test_a_body_over_32_mib_gets_a_json_413_by_its_content_length(devhost):
    for path in ("/api/completions", "/admin/functions/completion_from_queue"):
        with socket.create_connection(("127.0.0.1", port_of(devhost)), timeout=10) as sock:
            sock.sendall((f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {33 * 1024 * 1024}\r\n\r\n").encode())
            assert_json_413(*read_answer(sock))  # answered at once: nothing of the body was sent


def test_a_chunked_body_over_32_mib_gets_a_json_413(devhost):
    with socket.create_connection(("127.0.0.1", port_of(devhost)), timeout=10) as sock:
        sock.sendall(b"POST /api/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (1024 * 1024, b"x" * (1024 * 1024))
        try:
            for _ in range(40):  # the answer comes once 32 MiB are exceeded; the host then stops reading
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert_json_413(*read_answer(sock))


# -- a port already in use -------------------------------------------------------------------------------
def start_on_a_busy_port(*args: str, **env: str) -> tuple[int, str, int]:
    """The dev host started on a port something else listens on: (exit code, its output, the port)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "devserver", "--port", str(port),
                              "--settings", str(ROOT / "tests" / "no-such-local.settings.json"), *args],
                             cwd=ROOT, env=child_env(**env), capture_output=True, text=True, timeout=60)
    return run.returncode, run.stdout + run.stderr, port


def assert_one_clear_line(code: int, output: str, port: int) -> None:
    assert code != 0, output
    assert f"The dev host cannot listen on 127.0.0.1:{port}" in output, output
    assert re.search(r"(?i)address already in use", output), output
    for noise in ("Traceback", "Unclosed client session", "Unclosed connector", "Task was destroyed", "ERROR"):
        assert noise not in output, output
    assert "Dev host listening" not in output


def test_a_busy_port_ends_with_one_clear_line():
    assert_one_clear_line(*start_on_a_busy_port("--no-storage"))


def test_a_busy_port_with_storage_connected_leaves_no_unclosed_client(azurite):
    """With storage, the queue client was open when the port turned out to be taken: it is closed."""
    assert_one_clear_line(*start_on_a_busy_port(AzureWebJobsStorage=azurite))


# -- make results ---------------------------------------------------------------------------------------
def test_make_results_on_an_empty_queue_says_so(azurite):
    """What `make results` runs (Makefile: python -m devserver.tools.results $(ARGS)), against make run's storage."""
    run = subprocess.run([sys.executable, "-m", "devserver.tools.results"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=child_env(AzureWebJobsStorage=azurite))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""  # no results to print
    assert re.search(r"The results queue 'completion-results' is empty", run.stderr), run.stderr
    assert "Traceback" not in run.stderr


# -- the App Configuration banner -----------------------------------------------------------------------
def test_the_appconfig_banner_says_a_request_starts_the_check():
    host = DevHostProcess("--no-storage", "--appconfig", str(ROOT / "devserver" / "appconfig.example.json"))
    try:
        lines = host.banner
        first = next(i for i, line in enumerate(lines) if "App Configuration stand-in" in line)
        box = lines[first:next(i for i in range(first, len(lines)) if lines[i].startswith("*****"))]
        assert ("* (prefix completions:, sentinel completions:sentinel; a request checks it when 5 s have passed "
                "since the last check).") in box, "\n".join(box)
        assert not any(re.search(r"(?i)\bevery\b", line) for line in box), "\n".join(box)
    finally:
        assert host.stop() == 0
