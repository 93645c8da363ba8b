"""The dev host (`python -m devserver`), started as a subprocess and used over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app_client import SEED, SETTING_NAMES
from devserver.host import compile_template, load_local_settings, route_prefix

ROOT = Path(__file__).resolve().parent.parent


class DevHostProcess:
    def __init__(self, *args: str, env: dict | None = None, settings: Path | None = None):
        environ = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
        environ.update(env or {})
        command = [sys.executable, "-m", "devserver", "--port", "0",
                   "--settings", str(settings or ROOT / "tests" / "no-such-local.settings.json"), *args]
        self.process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.banner = []
        for line in self.process.stdout:
            self.banner.append(line.rstrip("\n"))
            found = re.search(r"Dev host listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise AssertionError("dev host did not start:\n" + self.process.stderr.read())

    @property
    def text(self) -> str:
        return "\n".join(self.banner)

    def routes(self) -> dict[str, tuple[str, str]]:
        """Function name -> (methods, URL), as the banner lists them."""
        found = re.findall(r"^\s+(\w+): \[([A-Z,]+)\] (http://\S+)$", self.text, re.MULTILINE)
        return {name: (methods, url) for name, methods, url in found}

    def stop(self) -> int:
        """Ctrl-C, as a user would; the exit code. What it printed on the way out is in ``tail``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.tail, _ = self.process.communicate(timeout=15)
        return self.process.returncode


@pytest.fixture(scope="module")
def devhost():
    host = DevHostProcess("--emulator-latency-ms", "0")
    yield host
    host.stop()


def emulator_url(host: DevHostProcess) -> str:
    return re.search(r"Emulator: (http://\S+?)/ ", host.text).group(1)


def test_seed_scenario_health_and_bad_body_over_http(devhost):
    reply = requests.post(devhost.url + "/api/completions", json=SEED, timeout=10)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json()["text"].startswith(" ") and reply.headers["x-request-id"]
    health = requests.get(devhost.url + "/api/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    bad = requests.post(devhost.url + "/api/completions", data=b"not json", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"


def test_it_serves_exactly_the_http_functions_the_app_declares(devhost, declared_functions):
    declared = {}
    for name, function in declared_functions.items():
        bindings = json.loads(function.get_function_json())["bindings"]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        if trigger["type"] == "httpTrigger":
            declared[name] = (",".join(trigger["methods"]), f"{devhost.url}/api/{trigger['route']}")
    assert devhost.routes() == declared
    assert "EMULATOR" in devhost.text and "Function keys are not checked locally" in devhost.text


def test_unknown_routes_and_methods_are_404(devhost):
    assert requests.get(devhost.url + "/api/completions", timeout=10).status_code == 404
    assert requests.post(devhost.url + "/api/nothing", json={}, timeout=10).status_code == 404
    assert requests.post(devhost.url + "/completions", json=SEED, timeout=10).status_code == 404


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
    host = DevHostProcess(settings=settings, env={"COMPLETIONS_MAX_TOKENS": "7"})
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


def test_ctrl_c_shuts_down_cleanly():
    host = DevHostProcess()
    assert host.stop() == 0
    assert "Dev host stopped." in host.tail


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
