"""Settings from App Configuration: the real provider against the HTTPS stand-ins, over loopback.

Time is injected where this module decides it (when to check the sentinel, how long
to back off). Two waits belong to the provider and are real: a failed ``load()``
lasts at least 5 s (its minimum-uptime guard), and its refresh timer has a 1 s
floor; the tests that meet them say so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from devserver.emulators.appconfig import AppConfigStandIns
from shared.backoff import Backoff
from shared.config.appconfig import AppConfigSource, LoadState
from shared.config.appconfig_bootstrap import AppConfigBootstrap
from shared.config.settings import load_settings
from support.app_client import wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET_VALUE = "kv-secret-value-7f3a9c"
USER_ASSIGNED = "11111111-2222-4333-8444-555555555555"
SEED = {
    "settings": [
        {"key": "completions:AZURE_OPENAI_DEPLOYMENT", "value": "store-deployment"},
        {"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "256"},
        {"key": "completions:COMPLETIONS_MAX_TOKENS", "label": "prod", "value": "512"},
        {"key": "completions:AZURE_OPENAI_DEPLOYMENT", "label": "prod", "value": "prod-deployment"},
        {"key": "completions:AZURE_OPENAI_API_KEY", "secret": "openai-api-key"},
        {"key": "completions:sentinel", "value": "1"},
        {"key": "completions:sentinel", "label": "prod", "value": "1"},
        {"key": "other-app:AZURE_OPENAI_DEPLOYMENT", "value": "not-ours"},
    ],
    "secrets": {"openai-api-key": SECRET_VALUE},
}
APP_SETTINGS = {"AZURE_OPENAI_ENDPOINT": "https://example-resource.openai.azure.com",
                "AZURE_OPENAI_DEPLOYMENT": "app-setting-deployment", "AZURE_OPENAI_AUTH": "key",
                "AZURE_OPENAI_API_KEY": "app-setting-key", "COMPLETIONS_MAX_TOKENS": "1024"}


# -- fixtures and helpers ----------------------------------------------------------
@pytest.fixture(scope="module")
def running_standins(running_emulators):
    standins = AppConfigStandIns.start(SEED, identity=running_emulators.identity)
    yield standins
    standins.stop()


@pytest.fixture
def standins(running_standins, emulators, monkeypatch):
    """The stand-ins back at their seed, and the process set up for the identity emulator."""
    running_standins.bring_up()
    running_standins.reset()
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        monkeypatch.setenv(name, running_standins.app_settings()[name])
    yield running_standins
    running_standins.bring_up()
    running_standins.reset()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ManualWait:
    """The backoff sleep, under the test's control: records each delay, returns when released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._go = threading.Semaphore(0)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self._go.acquire(timeout=30)

    def release(self) -> None:
        self._go.release()


class Applied:
    """An ``apply`` that validates like the app: app settings overlaid with the store's values."""

    def __init__(self, app_settings: dict[str, str] | None = None) -> None:
        self.app_settings = dict(APP_SETTINGS if app_settings is None else app_settings)
        self.sets: list[dict[str, str]] = []
        self.settings = None

    def __call__(self, values) -> None:
        settings = load_settings({**self.app_settings, **values}, function_timeout=lambda: None)
        self.sets.append(dict(values))
        self.settings = settings


@pytest.fixture
def make_source():
    sources: list[AppConfigSource] = []

    def make(app_settings: dict[str, str], *, apply=None, clock=None, wait=None, **environ: str):
        bootstrap = AppConfigBootstrap.from_environ({**app_settings, **environ})
        assert bootstrap is not None
        source = AppConfigSource(bootstrap, apply=apply or Applied(), clock=clock or Clock(),
                                 wait=wait, backoff=Backoff(first=1.0, cap=60.0))
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.stop()


def started(source: AppConfigSource, timeout: float = 20) -> LoadState:
    source.start()
    return source.first_attempt.result(timeout)


def check_now(source: AppConfigSource, clock: Clock) -> str:
    """Advance the injected clock past the interval and run one sentinel check. The provider's
    own timer has a 1 s floor in real time: a check it held back reports ``skipped``, and is
    tried again shortly (this is the only real waiting here)."""
    deadline = time.monotonic() + 5
    while True:
        clock.now += source.bootstrap.refresh_seconds
        future = source.maybe_refresh()
        assert future is not None
        outcome = future.result(15)
        if outcome != "skipped" or time.monotonic() > deadline:
            return outcome
        time.sleep(0.1)


def stats(standins: AppConfigStandIns) -> dict:
    return standins.appconfig.state.snapshot()


# -- bootstrap ---------------------------------------------------------------------

# -- loading -----------------------------------------------------------------------
def test_store_values_override_app_settings_and_validate_like_them(standins, make_source):
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, **standins.app_settings("connection_string"))
    assert source.state() == LoadState("loading")
    assert started(source) == LoadState("loaded")
    assert applied.sets == [{"AZURE_OPENAI_DEPLOYMENT": "store-deployment", "COMPLETIONS_MAX_TOKENS": "256",
                             "AZURE_OPENAI_API_KEY": SECRET_VALUE}]  # prefix trimmed, sentinel and others left out
    assert applied.settings.upstream.deployment == "store-deployment"
    assert applied.settings.upstream.api_key == SECRET_VALUE  # a Key Vault reference, resolved
    assert applied.settings.limits.max_tokens == 256
    assert applied.settings.upstream.endpoint == APP_SETTINGS["AZURE_OPENAI_ENDPOINT"]  # not in the store: kept
    described = source.describe()
    assert described["source"] == "app_configuration" and described["last_refresh_error"] is None
    assert described["loaded_at"].endswith("+00:00")
    assert stats(standins)["auth"] == {"hmac": 2}  # the list, then the sentinel's ETag (it has no label)
    assert "sentinel" not in applied.sets[0]


def test_label_selects_that_label_only(standins, make_source):
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, **standins.app_settings("connection_string", label="prod"))
    assert started(source) == LoadState("loaded")
    assert applied.sets == [{"AZURE_OPENAI_DEPLOYMENT": "prod-deployment", "COMPLETIONS_MAX_TOKENS": "512"}]


def test_a_custom_prefix_reads_only_its_keys(standins, make_source):
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied,
                         **standins.app_settings("connection_string", prefix="other-app:"))
    assert started(source) == LoadState("loaded")
    assert applied.sets == [{"AZURE_OPENAI_DEPLOYMENT": "not-ours"}]


def test_managed_identity_reads_the_store_and_key_vault_with_the_same_identity(standins, make_source):
    for server in (standins.appconfig, standins.keyvault):  # the roles, granted to the user-assigned identity only
        server.state.configure({"readers": [USER_ASSIGNED]})
    applied = Applied()
    source = make_source({**APP_SETTINGS, "AZURE_CLIENT_ID": USER_ASSIGNED}, apply=applied,
                         **standins.app_settings("managed_identity"))
    assert started(source) == LoadState("loaded")
    assert applied.settings.upstream.api_key == SECRET_VALUE
    store, vault = stats(standins), standins.keyvault.state.snapshot()
    assert store["auth"] == {"bearer": 2} and store["client_ids"] == {USER_ASSIGNED: 2}
    assert store["token_audiences"] == {"https://appconfig.azure.com": 2}
    # the SDK caches a vault's challenge process-wide: only the first client to meet this vault is challenged
    assert vault["challenges"] <= 1 and vault["requests_by_status"]["200"] == 1
    assert vault["client_ids"] == {USER_ASSIGNED: 1} and vault["token_audiences"] == {"https://vault.azure.net": 1}


def test_ssl_cert_file_alone_is_honoured(standins, make_source):
    """requests ignores SSL_CERT_FILE; the module hands the file to the SDK clients itself."""
    settings = standins.app_settings("managed_identity")
    del settings["REQUESTS_CA_BUNDLE"]
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, **settings)
    assert source.bootstrap.ca_file == standins.ca_bundle
    assert started(source) == LoadState("loaded")
    assert applied.settings.upstream.api_key == SECRET_VALUE  # Key Vault over the same trust


def test_json_values_reach_apply_as_json_text(standins, make_source):
    standins.set({"key": "completions:AZURE_OPENAI_BACKENDS", "content_type": "application/json",
                  "value": '[{"endpoint": "https://a.openai.azure.com", "weight": 2}]'})
    seen = []
    source = make_source(APP_SETTINGS, apply=seen.append, **standins.app_settings("connection_string"))
    assert started(source) == LoadState("loaded")
    assert json.loads(seen[0]["AZURE_OPENAI_BACKENDS"]) == [{"endpoint": "https://a.openai.azure.com", "weight": 2}]


def test_bootstrap_names_in_the_store_are_dropped_and_named_in_the_log(standins, make_source, caplog):
    standins.set({"key": "completions:AZURE_APPCONFIG_LABEL", "value": "prod"},
                 {"key": "completions:IDENTITY_ENDPOINT", "value": "http://elsewhere.example/token"})
    seen = []
    source = make_source(APP_SETTINGS, apply=seen.append, **standins.app_settings("connection_string"))
    with caplog.at_level(logging.WARNING, logger="shared.config.appconfig"):
        assert started(source) == LoadState("loaded")
    assert "AZURE_APPCONFIG_LABEL" not in seen[0] and "IDENTITY_ENDPOINT" not in seen[0]
    [line] = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert "AZURE_APPCONFIG_LABEL" in line and "IDENTITY_ENDPOINT" in line and "elsewhere" not in line


def test_many_pages_are_all_read(standins, make_source):
    standins.appconfig.state.configure({"page_size": 1})
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, **standins.app_settings("connection_string"))
    assert started(source) == LoadState("loaded")
    assert len(applied.sets[0]) == 3
    assert stats(standins)["requests_by_route"]["GET /kv"] == 4  # 4 keys under the prefix, one a page


def test_invalid_values_at_first_load_fail_by_name_and_are_retried(standins, make_source):
    standins.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "lots"})
    wait = ManualWait()
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, wait=wait, **standins.app_settings("connection_string"))
    state = started(source)
    assert state == LoadState("failed", "invalid", {"COMPLETIONS_MAX_TOKENS": "must be an integer"})
    assert source.describe()["last_refresh_error"] == "invalid settings: COMPLETIONS_MAX_TOKENS"
    standins.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "300"})
    wait.release()
    assert wait_for(lambda: source.state().status == "loaded", 20)
    assert applied.settings.limits.max_tokens == 300 and wait.delays == [1]
    assert source.describe()["last_refresh_error"] is None


# -- failures at start (each failed load() lasts >= 5 s: the provider's guard) -----------------
@pytest.mark.slow
def test_store_down_at_start_fails_fast_naming_it_then_recovers(standins, make_source):
    standins.take_down()
    wait = ManualWait()
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, wait=wait, **standins.app_settings("managed_identity"))
    state = started(source)
    assert state == LoadState("failed", "unreachable", {"AZURE_APPCONFIG_ENDPOINT": "unreachable"})
    assert source.describe() == {"source": "app_configuration", "loaded_at": None,
                                 "last_refresh_error": "unreachable"}
    assert source.maybe_refresh() is None  # nothing to refresh before a load
    standins.bring_up()
    wait.release()  # the backoff sleep ends: the next attempt finds the store
    assert wait_for(lambda: source.state() == LoadState("loaded"), 20)
    assert wait.delays == [1]
    assert applied.settings.upstream.deployment == "store-deployment"
    assert source.describe()["last_refresh_error"] is None


@pytest.mark.slow
def test_refused_credentials_fail_as_unauthorized(standins, make_source):
    wrong_secret = standins.app_settings("connection_string")
    wrong_secret["AZURE_APPCONFIG_CONNECTION_STRING"] = wrong_secret["AZURE_APPCONFIG_CONNECTION_STRING"].replace(
        "Secret=", "Secret=AAAA")
    standins.keyvault.state.configure({"readers": [USER_ASSIGNED]})  # the vault role missing for the default identity
    standins.appconfig.state.configure({"readers": [USER_ASSIGNED]})
    sources = {
        "hmac": make_source(APP_SETTINGS, **wrong_secret),
        "store role": make_source(APP_SETTINGS, **standins.app_settings("managed_identity")),
        "vault role": make_source(APP_SETTINGS, **standins.app_settings("connection_string")),
    }
    for source in sources.values():  # together: each failed attempt takes the provider's 5 s
        source.start()
    for name, source in sources.items():
        state = source.first_attempt.result(30)
        expected = "Key Vault access denied" if name == "vault role" else "unauthorized"
        assert (name, state.status, state.reason) == (name, "failed", expected)
    assert sources["store role"].state().problems == {"AZURE_APPCONFIG_ENDPOINT": "unauthorized"}
    assert sources["hmac"].state().problems == {"AZURE_APPCONFIG_CONNECTION_STRING": "unauthorized"}
    assert stats(standins)["requests_by_status"]["401"] >= 1 and stats(standins)["requests_by_status"]["403"] >= 1
    assert standins.keyvault.state.snapshot()["requests_by_status"]["403"] >= 1


def test_requests_can_wait_for_the_first_load_and_a_timed_out_waiter_cancels_nothing(standins, make_source):
    standins.appconfig.state.configure({"outage": "stall"})
    source = make_source(APP_SETTINGS, **standins.app_settings("connection_string"))
    source.start()

    async def impatient_then_patient():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(source.first_attempt), 0.2)
        assert source.state() == LoadState("loading") and not source.first_attempt.cancelled()
        standins.appconfig.state.configure({"outage": None})
        return await asyncio.wait_for(asyncio.wrap_future(source.first_attempt), 15)

    assert asyncio.run(impatient_then_patient()) == LoadState("loaded")


# -- live refresh ----------------------------------------------------------------------
def test_sentinel_change_is_applied_within_the_interval_without_restart(standins, make_source):
    clock = Clock()
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, clock=clock,
                         **standins.app_settings("connection_string", refresh_seconds=30))
    assert started(source) == LoadState("loaded")
    loaded_at = source.describe()["loaded_at"]
    assert source.maybe_refresh() is None  # within the interval: no check at all
    clock.now += 29.9
    assert source.maybe_refresh() is None

    standins.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "128"})
    assert check_now(source, clock) == "unchanged"  # a value alone changed: the sentinel says nothing yet
    assert applied.settings.limits.max_tokens == 256
    assert stats(standins)["not_modified"] == 1  # If-None-Match on the sentinel -> 304

    standins.set({"key": "completions:sentinel", "value": "2"})
    assert check_now(source, clock) == "applied"
    assert applied.settings.limits.max_tokens == 128 and len(applied.sets) == 2
    assert source.describe()["loaded_at"] >= loaded_at
    assert stats(standins)["request_types"].get("Watch", 0) >= 2


def test_maybe_refresh_is_cheap_and_starts_one_check_at_a_time(standins, make_source):
    clock = Clock()
    source = make_source(APP_SETTINGS, clock=clock, **standins.app_settings("connection_string"))
    assert started(source) == LoadState("loaded")
    started_at = time.perf_counter()
    assert all(source.maybe_refresh() is None for _ in range(100_000))
    per_call = (time.perf_counter() - started_at) / 100_000
    assert per_call < 20e-6, per_call  # a clock read and a compare when no check is due
    time.sleep(1.1)  # past the provider's own 1 s floor, so that the check really reaches the store
    clock.now += 30
    standins.appconfig.state.configure({"outage": "stall"})
    first = source.maybe_refresh()
    clock.now += 300
    assert first is not None and source.maybe_refresh() is None  # single flight, even when long overdue
    standins.appconfig.state.configure({"outage": None})
    assert first.result(15) == "unchanged"


def test_a_bad_refresh_keeps_the_last_good_settings_and_is_logged_once(standins, make_source, caplog):
    clock = Clock()
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, clock=clock, **standins.app_settings("connection_string"))
    assert started(source) == LoadState("loaded")
    good = applied.settings
    caplog.set_level(logging.DEBUG)
    standins.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "-987654"},
                 {"key": "completions:AZURE_OPENAI_API_VERSION", "value": "yesterday-q7z"},
                 {"key": "completions:sentinel", "value": "2"})
    assert check_now(source, clock) == "rejected"
    assert applied.settings is good  # still in force
    error = "invalid settings: AZURE_OPENAI_API_VERSION, COMPLETIONS_MAX_TOKENS"
    assert source.describe()["last_refresh_error"] == error
    assert source.state() == LoadState("loaded")
    assert check_now(source, clock) == "unchanged"  # retried at the next interval; nothing new to apply
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and r.name == "shared.config.appconfig"]
    assert len(warnings) == 1 and error in warnings[0]
    assert "yesterday-q7z" not in caplog.text and "-987654" not in caplog.text

    standins.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "64"},
                 {"key": "completions:AZURE_OPENAI_API_VERSION", "delete": True},
                 {"key": "completions:sentinel", "value": "3"})
    assert check_now(source, clock) == "applied"
    assert applied.settings.limits.max_tokens == 64 and source.describe()["last_refresh_error"] is None


def test_an_unreachable_store_during_refresh_keeps_serving_then_recovers(standins, make_source, caplog):
    clock = Clock()
    applied = Applied()
    source = make_source(APP_SETTINGS, apply=applied, clock=clock, **standins.app_settings("connection_string"))
    assert started(source) == LoadState("loaded")
    good = applied.settings
    caplog.set_level(logging.WARNING, logger="shared.config.appconfig")
    standins.take_down()
    assert check_now(source, clock) == "failed"
    assert source.describe()["last_refresh_error"] == "unreachable"
    assert applied.settings is good and source.state() == LoadState("loaded")
    assert check_now(source, clock) == "failed"  # retried at the next interval, not logged again
    assert len([r for r in caplog.records if r.name == "shared.config.appconfig"]) == 1

    standins.bring_up()
    standins.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "99"},
                 {"key": "completions:sentinel", "value": "2"})
    assert check_now(source, clock) == "applied"
    assert applied.settings.limits.max_tokens == 99 and source.describe()["last_refresh_error"] is None


def test_an_outage_that_ends_without_a_change_clears_the_error(standins, make_source):
    """No sentinel change after the store comes back: the next check is 'unchanged', and health
    no longer reports the outage."""
    clock = Clock()
    source = make_source(APP_SETTINGS, apply=Applied(), clock=clock, **standins.app_settings("connection_string"))
    assert started(source) == LoadState("loaded")
    standins.take_down()
    assert check_now(source, clock) == "failed"
    assert source.describe()["last_refresh_error"] == "unreachable"
    standins.bring_up()
    assert check_now(source, clock) == "unchanged"
    assert source.describe()["last_refresh_error"] is None


def test_apply_errors_other_than_settings_errors_are_reported_by_type_only(standins, make_source, caplog):
    clock = Clock()
    calls = []

    def apply(values):
        calls.append(values)
        if len(calls) > 1:
            raise RuntimeError(f"boom with {values['AZURE_OPENAI_API_KEY']}")

    source = make_source(APP_SETTINGS, apply=apply, clock=clock, **standins.app_settings("connection_string"))
    assert started(source) == LoadState("loaded")
    standins.set({"key": "completions:sentinel", "value": "2"}, {"key": "completions:COMPLETIONS_MAX_N", "value": "2"})
    with caplog.at_level(logging.DEBUG):
        assert check_now(source, clock) == "rejected"
    assert source.describe()["last_refresh_error"] == "settings could not be applied (RuntimeError)"
    assert SECRET_VALUE not in caplog.text


# -- secrets -------------------------------------------------------------------------
def test_no_secret_value_reaches_the_logs_or_describe(standins, make_source, caplog):
    caplog.set_level(logging.DEBUG)  # the root: azure.core, azure.identity, urllib3 and ours
    logging.getLogger("azure").setLevel(logging.DEBUG)
    try:
        clock = Clock()
        sources = [make_source(APP_SETTINGS, apply=Applied(), clock=clock, **standins.app_settings(auth))
                   for auth in ("connection_string", "managed_identity")]
        for source in sources:
            assert started(source) == LoadState("loaded")
        standins.set({"key": "completions:COMPLETIONS_MAX_TOKENS", "value": "300"},
                     {"key": "completions:sentinel", "value": "2"})
        for source in sources:
            assert check_now(source, clock) == "applied"
    finally:
        logging.getLogger("azure").setLevel(logging.NOTSET)
    hmac_secret = standins.appconfig.state.credential_secret
    identity_header = standins.app_settings()["IDENTITY_HEADER"]
    text = caplog.text + json.dumps([source.describe() for source in sources])
    assert "api-version" in caplog.text  # the azure loggers did log the requests
    for secret in (SECRET_VALUE, hmac_secret, identity_header):
        assert secret not in text
    assert "eyJ" not in text  # no JWT (access token) either
    assert standins.endpoint not in json.dumps([source.describe() for source in sources])


# -- cold start ------------------------------------------------------------------------
def test_without_a_store_importing_the_app_loads_no_provider():
    """Importing function_app with no store configured imports nothing of the provider or Key
    Vault, nor the app's own module for them. Also measures what a configured store adds: the
    imports ``start()`` makes on its load thread (printed with pytest -s; recorded in
    docs/app-configuration.md)."""
    script = (
        "import os, sys, time\n"
        "started = time.perf_counter()\n"
        "import function_app\n"
        "app = time.perf_counter() - started\n"
        "loaded = [m for m in sys.modules if m.startswith(('azure.appconfiguration', 'azure.keyvault', 'dns',\n"
        "                                                  'shared.config.appconfig'))]\n"
        "import shared.config.appconfig_bootstrap as bootstrap\n"
        "assert bootstrap.AppConfigBootstrap.from_environ(os.environ) is None\n"
        "started = time.perf_counter()\n"
        "import azure.appconfiguration.provider, azure.keyvault.secrets, azure.identity\n"
        "store = time.perf_counter() - started\n"
        "print(app, store, len(loaded))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_APPCONFIG_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    app, store, loaded = done.stdout.split()
    assert loaded == "0"
    print(f"import function_app without a store: {float(app) * 1000:.0f} ms; "
          f"a store adds, on the load thread: {float(store) * 1000:.0f} ms of imports")


# -- the stand-ins themselves ------------------------------------------------------------
def test_the_store_refuses_a_tampered_hmac_signature_and_unsigned_requests(standins):
    from azure.appconfiguration import AzureAppConfigurationClient
    from azure.core.exceptions import ClientAuthenticationError

    good = AzureAppConfigurationClient.from_connection_string(standins.connection_string,
                                                              connection_verify=standins.ca_file)
    assert good.get_configuration_setting("completions:sentinel").value == "1"
    tampered = standins.connection_string.replace("Secret=", "Secret=AAAA")
    bad = AzureAppConfigurationClient.from_connection_string(tampered, connection_verify=standins.ca_file)
    with pytest.raises(ClientAuthenticationError):
        bad.get_configuration_setting("completions:sentinel")
    unsigned = requests.get(standins.endpoint + "/kv?api-version=2023-11-01", verify=standins.ca_file, timeout=5)
    assert unsigned.status_code == 401 and "Sync-Token" in unsigned.headers
    assert standins.app_settings("connection_string")["REQUESTS_CA_BUNDLE"] == standins.ca_bundle


def test_the_vault_challenges_first_then_serves_the_current_version(standins):
    first = requests.get(standins.vault_url + "/secrets/openai-api-key?api-version=7.6", verify=standins.ca_file,
                         timeout=5)
    assert first.status_code == 401 and 'resource="https://vault.azure.net"' in first.headers["WWW-Authenticate"]
    versions = standins.set_secrets(**{"openai-api-key": "rotated"})
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(standins.vault_url, ManagedIdentityCredential(), connection_verify=standins.ca_file,
                          verify_challenge_resource=False)
    assert client.get_secret("openai-api-key").value == "rotated"
    assert client.get_secret("openai-api-key", versions["openai-api-key"]).properties.version == versions[
        "openai-api-key"]


def test_only_a_store_on_loopback_may_point_at_a_vault_that_fails_the_challenge_check(standins):
    """A Key Vault reference comes from the store: one in Azure naming a loopback "vault" must not
    get a token for whatever resource that listener's challenge names (the stand-in names
    https://vault.azure.net, which a loopback host does not match: the real client refuses)."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    from shared.config.appconfig_bootstrap import AppConfigBootstrap
    from shared.config.appconfig_failures import verify_vault_challenge

    azure_store = AppConfigBootstrap(endpoint=None, connection_string="Endpoint=https://s.azconfig.io;Id=i;Secret=c")
    assert azure_store.store_url == "https://s.azconfig.io"
    assert verify_vault_challenge(azure_store.store_url, standins.vault_url)
    assert verify_vault_challenge(standins.endpoint, "https://v.vault.azure.net")
    assert not verify_vault_challenge(standins.endpoint, standins.vault_url)  # local development
    client = SecretClient(standins.vault_url, ManagedIdentityCredential(), connection_verify=standins.ca_file,
                          verify_challenge_resource=verify_vault_challenge(azure_store.store_url, standins.vault_url))
    with pytest.raises(ValueError, match="does not match"):
        client.get_secret("openai-api-key")


def test_control_api_changes_values_and_reports_stats(standins):
    base = standins.endpoint + "/_emulator"
    changed = requests.post(base + "/settings", json=[{"key": "completions:X", "label": "prod", "value": "1"}],
                            verify=standins.ca_file, timeout=5)
    assert changed.status_code == 200 and changed.json()["changed"][0]["key"] == "completions:X"
    listing = requests.get(base + "/settings", verify=standins.ca_file, timeout=5).json()
    assert {"key": "completions:X", "label": "prod", "value": "1"}.items() <= next(
        item for item in listing if item["key"] == "completions:X").items()
    bad = requests.post(base + "/settings", json=[{"key": "k", "value": 1}], verify=standins.ca_file, timeout=5)
    assert bad.status_code == 400
    assert requests.post(base + "/config", json={"outage": "sometimes"}, verify=standins.ca_file,
                         timeout=5).status_code == 400
    assert requests.get(base + "/stats", verify=standins.ca_file, timeout=5).json()["requests"] == 0


def test_the_command_line_serves_the_documented_example_seed():
    seed = ROOT / "devserver" / "appconfig.example.json"
    process = subprocess.Popen([sys.executable, "-m", "devserver.emulators.appconfig", "--seed", str(seed)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        described = json.loads(process.stdout.readline())
        listing = requests.get(described["control"] + "settings", verify=described["ca_file"], timeout=5).json()
        assert {"completions:sentinel", "completions:AZURE_OPENAI_API_KEY"} <= {item["key"] for item in listing}
        assert described["connection_string"].startswith("Endpoint=https://127.0.0.1:")
    finally:
        process.terminate()
        process.wait(10)
