"""What ships and what Core Tools expects: host.json, function_app.py, settings files, .funcignore."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devserver.tools.package import build, deployed_files, ignored_patterns, shipped
from support.app_client import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[2]
DOCTOR = Path(sys.executable).parent / "azure-functions-doctor"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The deployment package, as devserver/tools/package.py builds it (what `make lint` checks)."""
    return build(tmp_path_factory.mktemp("deploy") / "package")


def test_make_lint_style_and_type_checks_pass():
    """What `make lint` runs besides the doctor: ruff and mypy, with pyproject.toml's settings."""
    tools = Path(sys.executable).parent
    for command in ([str(tools / "ruff"), "check", "."], [str(tools / "mypy")]):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr


def test_azure_functions_doctor_finds_no_failures_in_the_package(package):
    """On the files that deploy, as `make lint` runs it (the doctor walks every file under its
    path once per rule: on the working tree, with its virtual environments and tests, that takes
    half a minute and judges files that never ship)."""
    assert {"function_app.py", "host.json", "requirements.txt", "shared/service.py",
            "shared/config/settings.py"} <= set(deployed_files())
    assert "devserver.tools.package" in (ROOT / "Makefile").read_text().split("\nlint:")[1].split("\n\n")[0]
    checked = package.parent / "checked"  # the package, with the azd template beside it (as make lint does)
    shutil.copytree(package, checked)
    for name in ("infra", "azure.yaml", ".funcignore"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, checked / name)
    summary = package.parent / "summary.json"
    done = subprocess.run([str(DOCTOR), "doctor", "--path", str(checked), "--profile", "deploy",
                           "--summary-json", str(summary)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(summary.read_text())["failed"] == 0
    assert "Hosting plan 'flex-consumption'" in done.stdout  # the Flex Consumption checks ran


def test_the_package_holds_the_app_and_nothing_a_tool_left_in_the_folder(tmp_path):
    """azd zips the folder less .funcignore, tracked or not: caches (mypy's, ruff's: tens of MB), a .env,
    the test and dev folders never ship."""
    assert {path.split("/")[0] for path in deployed_files()} <= {
        "function_app.py", "host.json", "requirements.txt", "shared"}
    for left_behind in (".mypy_cache/3.11/x.json", ".ruff_cache/x", ".env", ".coverage", "tests/conftest.py",
                        "devserver/__main__.py", ".venv/bin/python", "local.settings.json", "shared/__pycache__/x.pyc"):
        (tmp_path / left_behind).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / left_behind).write_text("x")
    (tmp_path / "function_app.py").write_text("")
    (tmp_path / ".funcignore").write_text((ROOT / ".funcignore").read_text())
    assert deployed_files(tmp_path) == ["function_app.py"]


def test_the_package_carries_the_apps_bytecode_and_a_read_only_import_compiles_nothing(package):
    """Flex Consumption runs the package read-only: each module it carries no bytecode for would be
    compiled at every cold start. The prepackage hook (azure.yaml) writes checked-hash bytecode."""
    assert "prepackage" in (ROOT / "azure.yaml").read_text()
    sources = [package / "function_app.py", *(package / "shared").rglob("*.py")]
    for source in sources:
        compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-311.pyc"
        assert compiled.exists(), source
        assert int.from_bytes(compiled.read_bytes()[4:8], "little") == 0b11, compiled  # checked-hash
        assert shipped(str(compiled.relative_to(package)), ignored_patterns())  # .funcignore lets it through
    for path in package.rglob("*"):
        path.chmod(path.stat().st_mode & ~0o222)  # read-only, as Flex Consumption mounts it
    try:
        env = {**os.environ, "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9/", "AZURE_OPENAI_DEPLOYMENT": "d",
               "AZURE_OPENAI_AUTH": "key", "AZURE_OPENAI_API_KEY": "k", "PYTHONPATH": ""}
        done = subprocess.run([sys.executable, "-v", "-c", "import function_app; function_app.service.settings; "
                               "import shared.invocation"], cwd=package, env=env, capture_output=True, text=True,
                              timeout=60)
    finally:
        for path in package.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
    assert done.returncode == 0, done.stderr[-2000:]
    from_bytecode = re.findall(r"^# code object from '?(\S+?\.pyc)'?$", done.stderr, re.MULTILINE)
    app_modules = [line for line in from_bytecode if str(package) in line]
    assert len(app_modules) >= 40, done.stderr[-2000:]  # the core, from the package's bytecode
    assert not re.search(rf"^# (?:could not|can't) .*{re.escape(str(package))}", done.stderr, re.MULTILINE)


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
    for dev_only in ("devserver", "tests", "benchmarks", "docs", "local.settings.json", ".venv",
                     # the azd template and its checker's venv; azd's per-environment state
                     "infra", "azure.yaml", "requirements-infra.txt", ".venv-infra", ".azure"):
        assert dev_only in funcignore
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert {"local.settings.json", ".venv-infra/", ".azure/"} <= set(gitignore)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "local.settings.json" not in tracked


def test_host_json_limits_are_consistent_with_the_app_defaults():
    from shared.config.host_json import function_timeout_seconds
    from shared.config.settings import RetrySettings

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
        # streaming: the Functions streaming extension and what it brings (FastAPI on uvicorn)
        "azurefunctions-extensions-http-fastapi", "azurefunctions-extensions-base", "fastapi", "starlette",
        "uvicorn", "pydantic",
        # settings from App Configuration (shared/config/appconfig.py): the provider, the client whose
        # wire behaviour it relies on, and Key Vault for references
        "azure-appconfiguration-provider", "azure-appconfiguration", "azure-keyvault-secrets",
        # telemetry, imported only when a switch is set (shared/telemetry/switches.py)
        "azure-monitor-opentelemetry", "opentelemetry-api", "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http"}
    assert all("==" in line for line in lines)
    assert "openai==0.28.1" in lines
