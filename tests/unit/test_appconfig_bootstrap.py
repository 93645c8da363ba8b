"""App Configuration's bootstrap settings, the names the store may not set, and the CA settings (no store)."""

from __future__ import annotations

import pytest

from shared.backoff import Backoff
from shared.config.appconfig_bootstrap import AppConfigBootstrap
from shared.config.protected import is_bootstrap_name
from shared.config.settings import SettingsError

USER_ASSIGNED = "11111111-2222-4333-8444-555555555555"


def test_without_a_store_there_is_no_bootstrap():
    assert AppConfigBootstrap.from_environ({}) is None
    assert AppConfigBootstrap.from_environ({"AZURE_APPCONFIG_LABEL": "prod", "AZURE_OPENAI_DEPLOYMENT": "x"}) is None


def test_bootstrap_defaults_and_auth_modes():
    bootstrap = AppConfigBootstrap.from_environ({"AZURE_APPCONFIG_ENDPOINT": "https://store.azconfig.io/",
                                                 "AZURE_CLIENT_ID": USER_ASSIGNED})
    assert bootstrap == AppConfigBootstrap(endpoint="https://store.azconfig.io", key_prefix="completions:",
                                           label=None, sentinel="completions:sentinel", refresh_seconds=30.0,
                                           auth="managed_identity", client_id=USER_ASSIGNED, ca_file=None)
    assert bootstrap.store_setting == "AZURE_APPCONFIG_ENDPOINT" and bootstrap.trimmed_sentinel == "sentinel"
    follows_app = AppConfigBootstrap.from_environ({"AZURE_APPCONFIG_ENDPOINT": "https://s.azconfig.io",
                                                   "AZURE_OPENAI_AUTH": "default"})
    assert follows_app.auth == "default"
    explicit = AppConfigBootstrap.from_environ({"AZURE_APPCONFIG_ENDPOINT": "https://s.azconfig.io",
                                                "AZURE_OPENAI_AUTH": "default",
                                                "AZURE_APPCONFIG_AUTH": "managed_identity"})
    assert explicit.auth == "managed_identity"


def test_bad_bootstrap_settings_are_named_never_echoed():
    secret = "c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw=="
    with pytest.raises(SettingsError) as caught:
        AppConfigBootstrap.from_environ({
            "AZURE_APPCONFIG_CONNECTION_STRING": f"Endpoint=http://store.azconfig.io;Id=x;Secret={secret}",
            "AZURE_APPCONFIG_KEY_PREFIX": "completions:*", "AZURE_APPCONFIG_LABEL": "a,b",
            "AZURE_APPCONFIG_SENTINEL": "s*", "AZURE_APPCONFIG_REFRESH_SECONDS": "0.5",
            "AZURE_APPCONFIG_AUTH": "key", "REQUESTS_CA_BUNDLE": "/nonexistent/ca.pem"})
    assert set(caught.value.problems) == {
        "AZURE_APPCONFIG_CONNECTION_STRING", "AZURE_APPCONFIG_KEY_PREFIX", "AZURE_APPCONFIG_LABEL",
        "AZURE_APPCONFIG_SENTINEL", "AZURE_APPCONFIG_REFRESH_SECONDS", "AZURE_APPCONFIG_AUTH", "REQUESTS_CA_BUNDLE"}
    assert secret not in str(caught.value)
    with pytest.raises(SettingsError) as both:
        AppConfigBootstrap.from_environ({"AZURE_APPCONFIG_ENDPOINT": "https://s.azconfig.io",
                                         "AZURE_APPCONFIG_CONNECTION_STRING": "Endpoint=https://s;Id=a;Secret=b"})
    assert set(both.value.problems) == {"AZURE_APPCONFIG_CONNECTION_STRING"}
    bootstrap = AppConfigBootstrap.from_environ({"AZURE_APPCONFIG_CONNECTION_STRING":
                                                 f"Endpoint=https://s.azconfig.io;Id=x;Secret={secret}"})
    assert secret not in repr(bootstrap)
    assert bootstrap.store_setting == "AZURE_APPCONFIG_CONNECTION_STRING"


def test_bootstrap_and_platform_names_cannot_come_from_the_store():
    for name in ("AZURE_APPCONFIG_ENDPOINT", "AZURE_APPCONFIG_LABEL", "AZURE_CLIENT_ID", "IDENTITY_ENDPOINT",
                 "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "FUNCTIONS_WORKER_RUNTIME",
                 "AzureWebJobsStorage", "WEBSITE_SITE_NAME"):
        assert is_bootstrap_name(name), name
    for name in ("AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_BACKENDS", "COMPLETIONS_MAX_TOKENS", "AZURE_OPENAI_AUTH"):
        assert not is_bootstrap_name(name), name


def test_backoff_grows_to_its_cap_with_bounded_jitter():
    backoff = Backoff(first=1, factor=2, cap=60)
    assert [backoff.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    jittery = Backoff(first=10, cap=10, jitter=(0.8, 1.2))
    assert jittery.delay(1, rand=lambda: 0.0) == pytest.approx(8)
    assert jittery.delay(1, rand=lambda: 1.0) == pytest.approx(12)


def test_ca_settings_are_read_in_order_and_checked(tmp_path):
    from shared.config.ca_bundle import ca_file, ca_problems

    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert ca_file({}) is None and ca_problems({}) == {}
    assert ca_file({"SSL_CERT_FILE": str(pem)}) == str(pem)
    assert ca_file({"REQUESTS_CA_BUNDLE": str(pem), "SSL_CERT_FILE": "/other"}) == str(pem)
    assert ca_problems({"SSL_CERT_FILE": str(tmp_path / "missing.pem")}) == {
        "SSL_CERT_FILE": "must name a readable file of PEM certificates"}
    # the marker alone is not a certificate: with a store, the 503 names the setting, not the store
    assert ca_problems({"SSL_CERT_FILE": str(pem)}) == {
        "SSL_CERT_FILE": "must name a readable file of PEM certificates"}

    with pytest.raises(SettingsError) as caught:
        AppConfigBootstrap.from_environ({"AZURE_APPCONFIG_ENDPOINT": "https://s.azconfig.io",
                                         "REQUESTS_CA_BUNDLE": str(pem)})
    assert set(caught.value.problems) == {"REQUESTS_CA_BUNDLE"}
