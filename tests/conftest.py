"""Fixtures for every tier: a loopback-only guard; the emulators over real sockets and the app
configured through its settings (integration and end-to-end tiers).

Tiers: ``unit`` (no sockets, no real sleeping: ``unit/conftest.py`` enforces it), ``integration``
(the app against the emulators over loopback), ``e2e`` (the dev host, Azurite, the SDKs), ``infra``
(the Bicep template and the deployment package)."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devserver.emulators import Emulators  # noqa: E402
from devserver.emulators.runner import LEGACY_DEPLOYMENT  # noqa: E402
from support.app_client import LOOP, SkippingClock  # noqa: E402

# -- nothing but loopback -------------------------------------------------------
_violations: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _is_loopback(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str) -> OSError:
    _violations.append(what)
    return OSError(f"test isolation: {what} is not loopback")


def _guarded_connect(self, address):
    if isinstance(address, tuple) and not _is_loopback(address[0]):
        raise _refuse(f"connect to {address[0]}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if isinstance(address, tuple) and not _is_loopback(address[0]):
        raise _refuse(f"connect to {address[0]}")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _is_loopback(host):
        raise socket.gaierror(str(_refuse(f"name lookup of {host}")))
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def loopback_only():
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
    socket.getaddrinfo = _real_getaddrinfo


@pytest.fixture(autouse=True)
def no_network_escape():
    """Fail any test that tried to reach beyond loopback, even if the code swallowed the error."""
    start = len(_violations)
    yield
    assert _violations[start:] == [], f"tried to leave loopback: {_violations[start:]}"


# -- the emulators ------------------------------------------------------------
@pytest.fixture(scope="session")
def running_emulators():
    emulators = Emulators.start()
    yield emulators
    emulators.stop()


@pytest.fixture
def emulators(running_emulators):
    """The session's emulators, reset to defaults for this test."""
    _reset(running_emulators)
    yield running_emulators
    _reset(running_emulators)


def _reset(emulators: Emulators) -> None:
    emulators.openai_control.reset()
    emulators.openai_control.config(latency_ms=0, content_filter_phrase="trip the content filter", rpm=None, tpm=None,
                                    quota_window_s=60, stream_chunk_ms=0, deployments=None)
    emulators.identity_control.config(token_lifetime=3600, outage=None)


# -- the app, configured through its settings -------------------------------------
@pytest.fixture
def clock():
    """The app's clock for this test: real time, but retry waits are skipped and recorded."""
    return SkippingClock()


@pytest.fixture
def configure_app(emulators, monkeypatch, clock):
    """Configure the app from settings, as the Functions host would (environment
    variables), and install the resulting service in function_app for this test.
    ``configure_app(auth="key", AZURE_OPENAI_MAX_RETRIES="0", NAME=None)``; None unsets.
    The services made are closed (their connections on the app loop) after the test.
    By default the app calls the emulator's legacy completions deployment with the
    completions API (what the resilience, pool and token tests were written for); the chat
    tests name their deployment, or ``AZURE_OPENAI_API=None`` for ``auto``."""
    import function_app
    from shared.service import CompletionService
    from support.app_client import SETTING_NAMES

    made: list[CompletionService] = []

    def configure(auth: str | None = "managed_identity", **settings: str | None) -> CompletionService:
        for name in SETTING_NAMES:
            monkeypatch.delenv(name, raising=False)
        values: dict[str, str | None] = dict(emulators.app_settings(
            auth=auth or "managed_identity", deployment=LEGACY_DEPLOYMENT, api="completions"))
        if auth is None:
            values.pop("AZURE_OPENAI_AUTH")
        values.update(settings)
        for name, value in values.items():
            if value is not None:
                monkeypatch.setenv(name, value)
        service = CompletionService.from_environ(clock=clock)
        made.append(service)
        monkeypatch.setattr(function_app, "service", service)
        return service

    yield configure
    for service in made:
        LOOP.run(service.aclose())


@pytest.fixture(scope="session")
def declared_functions():
    """The app's functions, by name. ``get_functions()`` may be called once per app
    instance, so the whole session shares this one call."""
    import function_app

    return {function.get_function_name(): function for function in function_app.app.get_functions()}


@pytest.fixture
def recorded(configure_app, monkeypatch, clock):
    """``recorded(**settings)``: configure the app as configure_app does, with in-memory telemetry
    (``support.recorded.Recorded``: what it recorded)."""
    import function_app
    from shared.service import CompletionService
    from support.app_client import LOOP
    from support.recorded import Recorded

    made = []

    def configure(**settings) -> Recorded:
        configure_app(**settings)
        record = Recorded()
        service = CompletionService.from_environ(clock=clock, telemetry=record.telemetry)
        monkeypatch.setattr(function_app, "service", service)
        made.append((service, record))
        return record

    yield configure
    for service, record in made:
        LOOP.run(service.aclose())
        record.telemetry.shutdown()
