"""Settings from Azure App Configuration: loaded in the background, refreshed when a sentinel key changes.

Uses the real ``azure-appconfiguration-provider`` (and ``azure-keyvault-secrets``
for Key Vault references). Nothing from ``azure.appconfiguration`` or
``azure.keyvault`` is imported until a store is configured and ``start()`` runs:
``AppConfigBootstrap.from_environ`` returns None without a store, and a plain
app's cold start is unchanged.

How it runs (each on its own daemon thread; nothing here blocks a caller):

- ``start()`` begins the first load. Until it ends, ``state()`` is ``loading``;
  ``first_attempt`` (a ``concurrent.futures.Future`` that cannot be cancelled, so
  ``asyncio.wrap_future`` + a timeout is safe) then resolves with the state:
  ``loaded``, or ``failed`` with a reason (``unreachable``, ``unauthorized``,
  ``invalid``) and the settings to name in a 503. A failed load is retried with
  backoff until one succeeds.
- ``maybe_refresh()`` is cheap and meant for every invocation: at most every
  ``AZURE_APPCONFIG_REFRESH_SECONDS`` it starts one background check of the
  sentinel key (a conditional GET: 304 when unchanged). On a change the provider
  reloads the whole prefix and ``apply`` gets the new values. A refresh that
  fails (store unreachable, values rejected by ``apply``) keeps the last good
  settings, is logged once by setting name (never values) and is retried at the
  next interval.

Provider behaviours this module relies on or works around (azure-appconfiguration-provider 2.5):

- Replica discovery (DNS SRV lookups of ``_origin._tcp.<host>``) is on by default;
  it is turned off here (``replica_discovery_enabled=False``): one store, no DNS.
- ``load()`` makes a failure last at least 5 s (its "minimum uptime" guard), and
  retries for ``startup_timeout`` (default 100 s) with 5-30 s sleeps. Here
  ``startup_timeout=0`` (one pass per attempt) and the retries are ours, with
  backoff and an injectable wait. SDK retries are bounded (``retry_total=1``), and
  timeouts short.
- Its refresh timer has a 1 s floor and reads ``time.time()``; it is set to 1 s
  and this module's own (injectable) clock decides when to check.
- Key Vault references are resolved by our ``secret_resolver`` with the same
  identity, bounded retries and the CA settings; resolved secrets are cached by
  the provider per reference URI for the life of the process (a new secret
  version is picked up when the reference changes, e.g. to a versioned URI).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ..backoff import Backoff
from ..upstream.credentials import azure_credential
from .appconfig_bootstrap import AppConfigBootstrap
from .appconfig_failures import (
    KeyVaultReferenceError,
    describe_failure,
    failure_reason,
    is_azure_error,
    key_vault_reason,
    verify_vault_challenge,
)
from .protected import is_bootstrap_name
from .settings import SettingsError

log = logging.getLogger(__name__)

NULL_LABEL = "\0"  # App Configuration's "no label" in filters
# The SDK clients' own retries and timeouts: short, since our loop retries.
CLIENT_OPTIONS = {"retry_total": 1, "retry_backoff_factor": 0.5, "retry_backoff_max": 2,
                  "connection_timeout": 5.0, "read_timeout": 10.0}
CREDENTIAL_OPTIONS = {"retry_total": 0, "connection_timeout": 5.0, "read_timeout": 10.0}
PROVIDER_REFRESH_FLOOR_SECONDS = 1  # the provider's minimum refresh_interval


# -- state ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadState:
    """``loading`` | ``loaded`` | ``failed``. When failed: ``reason`` (``unreachable``,
    ``unauthorized``, ``invalid``) and ``problems``, setting name -> reason (names
    only), ready for a 503 ``not_configured``."""

    status: str
    reason: str | None = None
    problems: Mapping[str, str] = field(default_factory=dict)


LOADING = LoadState("loading")
LOADED = LoadState("loaded")


DEFAULT_BACKOFF = Backoff(first=1.0, cap=60.0, jitter=(0.8, 1.2))  # between failed loads


# -- the source ------------------------------------------------------------------------
class AppConfigSource:
    """Loads the prefix in a background thread, retries failed loads with backoff, refreshes on the sentinel.

    ``apply(values)`` gets the full trimmed mapping (setting name -> string; Key Vault
    references resolved; JSON values as JSON text; bootstrap names and the sentinel
    left out) on the first successful load and on each changed reload. It runs on a
    background thread, never two at once. It may raise ``SettingsError`` to reject
    the set: the last good values stay in force.
    """

    def __init__(self, bootstrap: AppConfigBootstrap, *, apply: Callable[[Mapping[str, str]], None],
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 wait: Callable[[float], Any] | None = None, backoff: Backoff = DEFAULT_BACKOFF,
                 rand: Callable[[], float] = random.random) -> None:
        """``clock`` gates refresh checks; ``wall_clock`` stamps ``loaded_at``; ``wait(seconds)``
        sleeps between failed loads (default: an interruptible sleep that ``stop()`` ends)."""
        self.bootstrap = bootstrap
        self._apply = apply
        self._clock = clock
        self._wall_clock = wall_clock
        self._stopped = threading.Event()
        self._wait = wait or self._stopped.wait
        self._backoff = backoff
        self._rand = rand
        self._lock = threading.Lock()
        self._state = LOADING
        self._provider: Any = None
        self._credential_instance: Any = None
        self._secret_clients: dict[str, Any] = {}
        self._good_values: dict[str, str] | None = None
        self._loaded_at: float | None = None
        self._last_error: str | None = None
        self._dropped_logged: tuple[str, ...] = ()
        self._next_check = math.inf
        self._refresh: Future | None = None
        self._thread: threading.Thread | None = None
        # set by the provider's callbacks during one refresh (refreshes never overlap)
        self._changed = False
        self._refresh_error: BaseException | None = None
        self.first_attempt: Future = Future()
        self.first_attempt.set_running_or_notify_cancel()  # a running future cannot be cancelled by a waiter

    # -- the interface ---------------------------------------------------------------
    def start(self) -> None:
        """Begin the first load on a background thread; returns at once."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._load_loop, name="appconfig-load", daemon=True)
        self._thread.start()

    def state(self) -> LoadState:
        return self._state

    def maybe_refresh(self) -> Future | None:
        """Cheap, never blocks: when a check is due, start one in the background and return its
        future (resolving to ``applied``, ``unchanged``, ``rejected``, ``failed`` or ``skipped``);
        otherwise None."""
        now = self._clock()
        if now < self._next_check:
            return None
        with self._lock:
            if (self._refresh is not None or now < self._next_check or self._provider is None
                    or self._stopped.is_set()):
                return None
            self._next_check = now + self.bootstrap.refresh_seconds
            self._refresh = future = Future[str]()
            future.set_running_or_notify_cancel()
        threading.Thread(target=self._run_refresh, args=(future,), name="appconfig-refresh", daemon=True).start()
        return future

    def describe(self) -> dict[str, Any]:
        """For the health endpoint: no endpoint, no values."""
        loaded_at = self._loaded_at
        return {"source": "app_configuration",
                "loaded_at": None if loaded_at is None else
                datetime.fromtimestamp(loaded_at, UTC).isoformat(timespec="seconds"),
                "last_refresh_error": self._last_error}

    def stop(self) -> None:
        """Stop retrying and refreshing; close the clients. Threads are daemons: a call in flight
        ends on its own timeout."""
        self._stopped.set()
        with self._lock:
            provider, self._provider = self._provider, None
            clients, self._secret_clients = list(self._secret_clients.values()), {}
            credential, self._credential_instance = self._credential_instance, None
        for closeable in ([provider] if provider is not None else []) + clients + (
                [credential] if credential is not None else []):
            try:
                closeable.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    # -- the first load ----------------------------------------------------------------
    def _load_loop(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            loaded = False
            try:
                loaded = self._first_values(self._load())
            except Exception as exc:  # noqa: BLE001 - every failure is a reason and a retry, never a crash
                reason = failure_reason(exc)
                self._state = LoadState("failed", reason, {self.bootstrap.store_setting: reason})
                self._report_error(reason, "load", describe_failure(exc))
            finally:
                if not self.first_attempt.done():  # whatever happened, waiters learn the state
                    self.first_attempt.set_result(self._state)
            if loaded:
                return
            failures += 1
            delay = self._backoff.delay(failures, self._rand)
            log.debug("App Configuration: next load attempt in %.1f s", delay)
            self._wait(delay)

    def _first_values(self, provider: Any) -> bool:
        if self._stopped.is_set():
            provider.close()
            return False
        values = self._values(provider)
        try:
            self._apply(values)
        except SettingsError as exc:
            provider.close()
            self._state = LoadState("failed", "invalid", dict(exc.problems))
            self._report_error("invalid settings: " + ", ".join(sorted(exc.problems)), "load")
            return False
        except Exception as exc:  # noqa: BLE001 - apply's own bug: reported by type, values stay unlogged
            provider.close()
            self._state = LoadState("failed", "invalid", {self.bootstrap.store_setting: "could not be applied"})
            self._report_error(f"settings could not be applied ({type(exc).__name__})", "load")
            return False
        with self._lock:
            self._provider = provider
            self._good_values = values
            self._loaded_at = self._wall_clock()
            self._next_check = self._clock() + self.bootstrap.refresh_seconds
        self._state = LOADED
        self._clear_error()
        log.info("App Configuration: loaded %d settings (%s)", len(values), ", ".join(sorted(values)) or "none")
        return True

    def _load(self) -> Any:
        from azure.appconfiguration.provider import SettingSelector, WatchKey, load

        b = self.bootstrap
        label = b.label if b.label is not None else NULL_LABEL
        options: dict[str, Any] = dict(
            selects=[SettingSelector(key_filter=b.key_prefix + "*", label_filter=label)],
            trim_prefixes=[b.key_prefix],
            refresh_on=[WatchKey(b.sentinel, label)],
            refresh_interval=PROVIDER_REFRESH_FLOOR_SECONDS,
            on_refresh_success=self._on_refresh_success,
            on_refresh_error=self._on_refresh_error,
            secret_resolver=self._resolve_secret,
            replica_discovery_enabled=False,  # no DNS SRV lookups for replicas
            startup_timeout=0,  # one pass: the retries are ours
            connection_verify=b.ca_file or True,
            **CLIENT_OPTIONS,
        )
        if b.connection_string:
            return load(connection_string=b.connection_string, **options)
        return load(endpoint=b.endpoint, credential=self._credential(), **options)

    # -- refresh -----------------------------------------------------------------------
    def _on_refresh_success(self) -> None:
        self._changed = True

    def _on_refresh_error(self, error: Exception) -> None:
        self._refresh_error = error

    def _run_refresh(self, future: Future) -> None:
        outcome = "failed"
        try:
            outcome = self._check()
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed Key Vault reference: logged, retried
            self._report_error(failure_reason(exc), "refresh", describe_failure(exc))
        finally:
            with self._lock:
                self._refresh = None
            future.set_result(outcome)

    def _check(self) -> str:
        provider = self._provider
        if provider is None:
            return "skipped"
        self._changed, self._refresh_error = False, None
        responses: list[int] = []
        provider.refresh(raw_response_hook=lambda response: responses.append(response.http_response.status_code))
        error = self._refresh_error
        if error is not None and (responses or is_azure_error(error)):
            self._report_error(failure_reason(error), "refresh", describe_failure(error))
            return "failed"
        if self._changed:
            return self._changed_values(self._values(provider))
        if not responses:
            # Held back by the provider itself: its refresh timer (1 s floor, real time), or the
            # store's client still in the backoff that follows a failure (a RuntimeError, no request).
            with self._lock:
                self._next_check = min(self._next_check, self._clock() + PROVIDER_REFRESH_FLOOR_SECONDS)
            return "skipped"
        if self._last_error in ("unreachable", "unauthorized"):
            self._clear_error()
        return "unchanged"

    def _changed_values(self, values: dict[str, str]) -> str:
        if values == self._good_values:
            self._clear_error()
            return "unchanged"
        try:
            self._apply(values)
        except SettingsError as exc:
            self._report_error("invalid settings: " + ", ".join(sorted(exc.problems)), "refresh")
            return "rejected"
        except Exception as exc:  # noqa: BLE001 - see _first_values
            self._report_error(f"settings could not be applied ({type(exc).__name__})", "refresh")
            return "rejected"
        changed = sorted(name for name in set(values) | set(self._good_values or {})
                         if values.get(name) != (self._good_values or {}).get(name))
        with self._lock:
            self._good_values = values
            self._loaded_at = self._wall_clock()
        self._clear_error()
        log.info("App Configuration: applied a changed set; changed settings: %s", ", ".join(changed))
        return "applied"

    # -- values ---------------------------------------------------------------------------
    def _values(self, provider: Any) -> dict[str, str]:
        values: dict[str, str] = {}
        dropped = []
        for name in list(provider.keys()):
            if not name or name == self.bootstrap.trimmed_sentinel:
                continue
            if is_bootstrap_name(name):
                dropped.append(name)
                continue
            value = provider[name]
            values[name] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if tuple(sorted(dropped)) != self._dropped_logged:
            self._dropped_logged = tuple(sorted(dropped))
            if dropped:
                log.warning("App Configuration: ignoring %s: bootstrap and platform settings come from app "
                            "settings only", ", ".join(sorted(dropped)))
        return values

    # -- identity and Key Vault -----------------------------------------------------------
    def _credential(self) -> Any:
        if self._stopped.is_set():  # a load still in flight after stop() makes no new clients
            raise RuntimeError("App Configuration source stopped")
        with self._lock:
            if self._credential_instance is None:
                self._credential_instance = azure_credential(self.bootstrap.auth, self.bootstrap.client_id,
                                                             **CREDENTIAL_OPTIONS)
            return self._credential_instance

    def _resolve_secret(self, uri: str) -> str:
        """The provider's ``secret_resolver``: a Key Vault reference's secret, read with our identity."""
        from azure.keyvault.secrets import KeyVaultSecretIdentifier, SecretClient

        identifier = KeyVaultSecretIdentifier(uri)
        client = self._secret_clients.get(identifier.vault_url)
        if client is None:
            client = SecretClient(
                identifier.vault_url, self._credential(), connection_verify=self.bootstrap.ca_file or True,
                verify_challenge_resource=verify_vault_challenge(self.bootstrap.store_url, identifier.vault_url),
                **CLIENT_OPTIONS)
            self._secret_clients[identifier.vault_url] = client
        try:
            value = client.get_secret(identifier.name, version=identifier.version).value
        except Exception as exc:
            reason = key_vault_reason(exc)
            log.warning("App Configuration: Key Vault reference to secret %r on %s not resolved: %s (%s)",
                        identifier.name, urlsplit(identifier.vault_url).hostname, reason, describe_failure(exc))
            raise KeyVaultReferenceError(reason) from exc
        return value or ""  # a secret without a value reads as an unset setting

    # -- errors, logged once -------------------------------------------------------------
    def _report_error(self, text: str, during: str, detail: str | None = None) -> None:
        with self._lock:
            repeated = text == self._last_error
            self._last_error = text
        if repeated:
            log.debug("App Configuration %s: still %s", during, text)
            return
        keeping = "; keeping the last good settings" if self._good_values is not None else ""
        log.warning("App Configuration %s failed: %s%s%s; retrying", during, text,
                    f" ({detail})" if detail else "", keeping)

    def _clear_error(self) -> None:
        with self._lock:
            previous, self._last_error = self._last_error, None
        if previous is not None:
            log.info("App Configuration: recovered from: %s", previous)
