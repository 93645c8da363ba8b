"""Indexing: importing function_app in a fresh process, as the worker does, whatever the settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.app_client import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[2]


def test_importing_function_app_never_fails_on_bad_settings():
    """The host must still index the functions when settings are missing or invalid."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env["AZURE_OPENAI_TIMEOUT"] = "not a number"
    script = ("import function_app, json; print(json.dumps(sorted(f.get_function_name() "
              "for f in function_app.app.get_functions()))); function_app.service.settings")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "completions" in json.loads(done.stdout) and "health" in json.loads(done.stdout)
    # logged when the settings are first used (the first invocation), by name, never the value
    assert "AZURE_OPENAI_ENDPOINT" in done.stderr and "not a number" not in done.stderr


def test_indexing_imports_only_the_binding_metadata():
    """Cold start: the core (settings, contracts, the upstream client, openai) is imported by the
    first invocation, not when the host indexes the app; then only what that request needs."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(AZURE_OPENAI_ENDPOINT="http://127.0.0.1:9/", AZURE_OPENAI_DEPLOYMENT="d", AZURE_OPENAI_AUTH="key",
               AZURE_OPENAI_API_KEY="k", AZURE_OPENAI_MAX_RETRIES="0")
    script = ("import asyncio, sys, json, function_app; indexed = set(sys.modules); "  # a plain completion, refused
              "asyncio.run(function_app.service.complete(b'{\"prompt\": \"x\"}', 'r')); "
              "print(json.dumps([sorted(indexed), sorted(set(sys.modules) - indexed)]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    indexed, first_use = json.loads(done.stdout)
    core = ("shared.upstream", "shared.contract", "shared.config.settings", "shared.handler", "shared.invocation",
            "openai", "aiohttp")
    assert not [name for name in indexed if name.startswith(core)]
    assert {"shared.config.settings", "shared.upstream.client", "openai"} <= set(first_use)
    assert not [name for name in first_use if name.startswith((
        "shared.contract.stream", "shared.upstream.streaming", "shared.config.appconfig", "opentelemetry",
        "azure.identity"))]


@pytest.mark.parametrize("auth", ["key", "managed_identity"])
def test_importing_function_app_loads_no_identity_library(auth):
    """Cold start: azure-identity (and msal) load with the first token request, never at import."""
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(AZURE_OPENAI_ENDPOINT="http://127.0.0.1:9/", AZURE_OPENAI_DEPLOYMENT="d", AZURE_OPENAI_AUTH=auth,
               AZURE_OPENAI_API_KEY="k", IDENTITY_ENDPOINT="http://127.0.0.1:9/msi/token", IDENTITY_HEADER="h")
    script = ("import sys, function_app; "
              "print(sorted(m for m in sys.modules if m.startswith(('azure.identity', 'msal'))))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "not configured" not in done.stderr  # the settings were valid: this measured the configured app


@pytest.mark.parametrize("content", [None, b"not a certificate", b"-----BEGIN CERTIFICATE-----\ngarbage\n"])
def test_an_unusable_ca_bundle_is_named_and_never_breaks_indexing(tmp_path, content):
    """REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) names what outbound HTTPS trusts: a missing file,
    or one without usable certificates, is a setting problem (503 naming it), not a crash."""
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES and k not in ("SSL_CERT_FILE",)}
    env.update(AZURE_OPENAI_ENDPOINT="https://example.openai.azure.com", AZURE_OPENAI_DEPLOYMENT="d",
               REQUESTS_CA_BUNDLE=str(bundle))
    script = ("import json, function_app; print(json.dumps(function_app.service.health().body))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    health = json.loads(done.stdout.strip().splitlines()[-1])
    assert health["status"] == "not_configured" and "REQUESTS_CA_BUNDLE" in health["settings"]
    assert str(bundle) not in done.stdout + done.stderr


@pytest.mark.parametrize("endpoint", ["https://x.openai.azure.com:abc", "https://x.openai.azure.com:99999",
                                      "https://x.openai.azure.com:-1", "https://x.openai.az\r\nure.com",
                                      "https://u:pw@x.openai.azure.com"])
def test_a_malformed_endpoint_never_breaks_indexing_and_is_named(endpoint):
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(AZURE_OPENAI_ENDPOINT=endpoint, AZURE_OPENAI_DEPLOYMENT="d", AZURE_OPENAI_AUTH="key",
               AZURE_OPENAI_API_KEY="k")
    script = ("import json, function_app; names = [f.get_function_name() for f in function_app.app.get_functions()]; "
              "print(json.dumps([names, function_app.service.health().body]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    names, health = json.loads(done.stdout.strip().splitlines()[-1])
    assert "health" in names and health["status"] == "not_configured"
    assert "AZURE_OPENAI_ENDPOINT" in health["settings"] and "pw" not in done.stdout + done.stderr
