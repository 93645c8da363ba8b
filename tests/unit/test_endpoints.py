"""Every part of an endpoint is checked; the store cannot point the app's token anywhere."""

from __future__ import annotations

import json

import pytest

from shared.config.endpoints import endpoint_problem, host_allowed
from shared.config.settings import SettingsError, load_settings

BASE = {"AZURE_OPENAI_ENDPOINT": "https://east.openai.azure.com", "AZURE_OPENAI_DEPLOYMENT": "d"}


def problems(environ: dict, **options) -> dict[str, str]:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, **environ}, function_timeout=lambda: 180.0, **options)
    return caught.value.problems


@pytest.mark.parametrize("endpoint", [
    "https://x.openai.azure.com:abc", "https://x.openai.azure.com:99999", "https://x.openai.azure.com:-1",
    "https://x.openai.azure.com:0", "https://x.openai.azure.com\r\nX-Injected: 1", "https://x.openai.az\nure.com",
    "https://u:pw@x.openai.azure.com", "https://u@x.openai.azure.com", "https://x.openai.azure.com/?q=1",
    "https://x.openai.azure.com/#f", "https://[::1", "https://x open.com", "https://bücher.example",
    "https://x.openai.azure.com/a b", "https://x.openai.azure.com/%2e%2e/", "https://x_y.com", "ftp://x.com",
    "http://x.openai.azure.com", "https://", "https://-x.com", "https://x.openai.azure.com\t/x",
])
def test_a_malformed_endpoint_is_a_named_setting_never_a_crash_or_an_echo(endpoint):
    assert endpoint_problem(endpoint) is not None
    found = problems({"AZURE_OPENAI_ENDPOINT": endpoint})
    assert "AZURE_OPENAI_ENDPOINT" in found and "pw" not in str(found)
    backends = [{"name": "a", "endpoint": endpoint}]
    assert "entry 'a': endpoint" in problems({"AZURE_OPENAI_BACKENDS": json.dumps(backends)})["AZURE_OPENAI_BACKENDS"]


@pytest.mark.parametrize("endpoint", ["https://east.openai.azure.com", "https://east.openai.azure.com/",
                                      "https://gw.example.com:8443/openai-gw/", "http://127.0.0.1:8080",
                                      "http://[::1]:1", "https://10.0.0.4"])
def test_well_formed_endpoints_pass(endpoint):
    assert endpoint_problem(endpoint) is None


def test_the_token_scope_must_be_an_azure_openai_audience():
    assert "AZURE_OPENAI_TOKEN_SCOPE" in problems({"AZURE_OPENAI_TOKEN_SCOPE": "https://management.azure.com/.default"})
    for scope in ("https://cognitiveservices.azure.us/.default", "https://ai.azure.com/.default"):
        assert load_settings({**BASE, "AZURE_OPENAI_TOKEN_SCOPE": scope}).upstream.token_scope == scope


def test_an_endpoint_from_the_store_must_be_an_azure_openai_host_loopback_or_allowed():
    evil = {"AZURE_OPENAI_ENDPOINT": "https://collector.evil.example"}
    assert load_settings({**BASE, **evil})  # an app setting: the operator's choice
    assert "AZURE_OPENAI_ENDPOINT" in problems(evil, from_store={"AZURE_OPENAI_ENDPOINT"})
    allowed = {**evil, "AZURE_OPENAI_ALLOWED_HOSTS": "gw.contoso.com, *.evil.example"}
    assert load_settings({**BASE, **allowed}, from_store={"AZURE_OPENAI_ENDPOINT"})
    for host in ("https://x.cognitiveservices.azure.com", "https://x.services.ai.azure.com",
                 "https://x.openai.azure.us", "http://localhost:9"):
        assert load_settings({**BASE, "AZURE_OPENAI_ENDPOINT": host}, from_store={"AZURE_OPENAI_ENDPOINT"})
    pool = {"AZURE_OPENAI_BACKENDS": json.dumps([{"name": "a", "endpoint": "https://x.openai.azure.com.evil.example"}])}
    assert "App Configuration" in problems(pool, from_store={"AZURE_OPENAI_BACKENDS"})["AZURE_OPENAI_BACKENDS"]
    assert load_settings({**BASE, **pool})  # from app settings: allowed


def test_allowed_hosts_match_exactly_or_by_domain():
    assert host_allowed("https://gw.contoso.com", ["gw.contoso.com"])
    assert not host_allowed("https://evil-gw.contoso.com", ["gw.contoso.com"])
    assert host_allowed("https://a.b.contoso.com", ["*.contoso.com"])
    assert not host_allowed("https://contoso.com.evil.example", ["*.contoso.com"])
    assert "AZURE_OPENAI_ALLOWED_HOSTS" in problems({"AZURE_OPENAI_ALLOWED_HOSTS": "ok.com, bad host"})
