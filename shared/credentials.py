"""Managed-identity credentials and the process-wide token cache in front of them."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from .errors import credential_unavailable
from .retry import Deadline
from .settings import RetrySettings, UpstreamSettings

log = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300.0  # refresh when the token is this close to expiry
EXPIRY_SKEW_SECONDS = 10.0  # never send a token with less life left than this
RETRY_INTERVAL_SECONDS = 2.0  # after a failed refresh, keep using a valid token this long before asking again


class AccessTokenLike(Protocol):
    token: str
    expires_on: int


class TokenCredentialLike(Protocol):
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessTokenLike: ...


def build_credential(upstream: UpstreamSettings, retry: RetrySettings) -> TokenCredentialLike:
    """The azure-identity credential for the configured auth mode.

    Called by the token cache on its first refresh, not at import: azure-identity
    and msal take ~0.1 s to load, which a key-auth app never needs and a
    managed-identity app pays with its first token request rather than while
    the host indexes the functions. Its own retries are off (``retry_total=0``)
    and its HTTP timeouts short: the caller's retry policy decides, within the
    invocation's deadline.
    """
    transport_options = {"retry_total": 0, "connection_timeout": retry.connect_timeout,
                         "read_timeout": min(retry.read_timeout, 10.0)}
    if upstream.auth == "managed_identity":
        from azure.identity import ManagedIdentityCredential

        # ManagedIdentityCredential does not read AZURE_CLIENT_ID itself.
        return ManagedIdentityCredential(client_id=upstream.client_id, **transport_options)
    if upstream.auth == "default":
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=upstream.client_id, **transport_options)
    raise ValueError(f"auth mode {upstream.auth!r} uses no credential")


class CredentialConfigurationError(Exception):
    """The credential itself could not be created: retrying will not help."""


class TokenCache:
    """One cached token per process, refreshed ahead of expiry, shared by all threads.

    - Fresh token (more than the margin left): returned without locking.
    - Within the margin but still valid: returned at once, while one refresh runs
      in the background (single-flight: concurrent callers share it). A failed
      refresh is logged, and tried again after ``retry_interval``.
    - No valid token: callers wait for the refresh up to their deadline, then
      get 503 ``credential_unavailable`` (retryable, unless the credential
      could not even be created).
    The refresh runs on its own thread so that no caller waits past its deadline,
    even when the token endpoint hangs.
    """

    def __init__(self, credential: Callable[[], TokenCredentialLike], scope: str, *,
                 refresh_margin: float = REFRESH_MARGIN_SECONDS, retry_interval: float = RETRY_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        """``credential`` makes the credential; it is called by the first refresh."""
        self._make_credential = credential
        self._credential: TokenCredentialLike | None = None
        self._scope = scope
        self._margin = refresh_margin
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessTokenLike | None = None
        self._refresh: Future | None = None
        self._next_refresh_at = 0.0
        self.refreshes = 0  # token requests started

    def get(self, deadline: Deadline) -> str:
        token = self._token
        now = self._clock()
        if token is not None and now < token.expires_on - self._margin:
            return token.token
        if token is not None and now < token.expires_on - EXPIRY_SKEW_SECONDS:
            self._start_refresh(now, have_usable=True)
            return token.token
        refresh = self._start_refresh(now, have_usable=False)
        try:
            return refresh.result(timeout=deadline.remaining()).token
        except CredentialConfigurationError:
            raise credential_unavailable(retryable=False) from None
        except Exception:  # noqa: BLE001 - timed out, or failed (the refresh thread logs why)
            raise credential_unavailable() from None

    def _start_refresh(self, now: float, *, have_usable: bool) -> Future | None:
        with self._lock:
            if self._refresh is not None:
                return self._refresh
            if have_usable and now < self._next_refresh_at:
                return None
            self._refresh = future = Future()
            self.refreshes += 1
        threading.Thread(target=self._run_refresh, args=(future,), name="token-refresh", daemon=True).start()
        return future

    def _run_refresh(self, future: Future) -> None:
        try:
            token = self._credential_for_refresh().get_token(self._scope)
        except Exception as exc:  # noqa: BLE001 - any credential failure is reported the same way
            with self._lock:
                self._refresh = None
                self._next_refresh_at = self._clock() + self._retry_interval
                previous = self._token
            left = (previous.expires_on - self._clock()) if previous is not None else 0
            if left > EXPIRY_SKEW_SECONDS:
                log.warning("token refresh failed (%s); keeping the cached token, valid for %d s more",
                            _describe(exc), left)
            else:
                log.warning("token request failed (%s)", _describe(exc))
            future.set_exception(exc)
            return
        with self._lock:
            self._token = token
            self._refresh = None
        future.set_result(token)

    def _credential_for_refresh(self) -> TokenCredentialLike:
        if self._credential is None:  # only one refresh runs at a time: no race
            try:
                self._credential = self._make_credential()
            except Exception as exc:  # noqa: BLE001 - e.g. an invalid identity configuration
                raise CredentialConfigurationError(_describe(exc)) from exc
        return self._credential


def _describe(exc: BaseException) -> str:
    """Exception type and the first line of its message, shortened: enough to act on,
    without dumping response bodies into the log."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line[:200]}" if first_line else type(exc).__name__
