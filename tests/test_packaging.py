"""What ships and what Core Tools expects: host.json, function_app.py, settings files, .funcignore."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app_client import SETTING_NAMES

ROOT = Path(__file__).resolve().parent.parent
DOCTOR = Path(sys.executable).parent / "azure-functions-doctor"


def test_make_lint_style_checks_pass():
    """The same ruff rules `make lint` applies (the Makefile holds them)."""
    ruff_args = next(line.split(":=", 1)[1].split() for line in (ROOT / "Makefile").read_text().splitlines()
                     if line.startswith("RUFF_ARGS"))
    done = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", *ruff_args, "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_azure_functions_doctor_finds_no_failures(tmp_path):
    summary = tmp_path / "summary.json"
    done = subprocess.run([str(DOCTOR), "doctor", "--path", str(ROOT), "--profile", "deploy",
                           "--summary-json", str(summary)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(summary.read_text())["failed"] == 0


def test_local_settings_example_is_what_core_tools_expects():
    example = json.loads((ROOT / "local.settings.example.json").read_text())
    assert example["IsEncrypted"] is False
    values = example["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    app_settings = {n for n in SETTING_NAMES if n.startswith(("AZURE_OPENAI_", "COMPLETIONS_"))} | {"AZURE_CLIENT_ID"}
    assert app_settings <= set(values), app_settings - set(values)
    assert values["AZURE_OPENAI_API_KEY"] == ""  # a safe placeholder: never a real-looking secret
    assert all(isinstance(v, str) for v in values.values())


def test_dev_only_files_never_ship_and_local_settings_are_never_committed():
    funcignore = (ROOT / ".funcignore").read_text().split()
    for dev_only in ("devserver", "tests", "benchmarks", "docs", "local.settings.json", ".venv"):
        assert dev_only in funcignore
    assert "local.settings.json" in (ROOT / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "local.settings.json" not in tracked


def test_host_json_limits_are_consistent_with_the_app_defaults():
    from shared.settings import RetrySettings, function_timeout_seconds

    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    http = host["extensions"]["http"]
    assert http["routePrefix"] == "api"
    assert http["maxConcurrentRequests"] == RetrySettings.max_concurrency
    assert http["maxOutstandingRequests"] >= http["maxConcurrentRequests"]
    assert RetrySettings.deadline < function_timeout_seconds() < 230


def test_runtime_requirements_are_pinned():
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert {line.split("==")[0] for line in lines} == {
        "aiohttp", "azure-functions", "azure-identity", "openai", "requests",
        # telemetry, imported only when a switch is set (shared/telemetry.py)
        "azure-monitor-opentelemetry", "opentelemetry-api", "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http"}
    assert all("==" in line for line in lines)
    assert "openai==0.28.1" in lines
