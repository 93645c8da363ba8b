"""The process-wide token cache in front of the managed-identity credential (``upstream.credentials``)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future

from ..backoff import Backoff
from ..clock import SYSTEM_CLOCK, Clock, Deadline
from ..errors import credential_unavailable
from ..telemetry.hooks import NOOP, Telemetry
from .credentials import AccessTokenLike, TokenCredentialLike, describe

log = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300.0  # refresh when the token is this close to expiry
EXPIRY_SKEW_SECONDS = 10.0  # never send a token with less life left than this
RETRY_INTERVAL_SECONDS = 2.0  # after a failed refresh, keep using a valid token this long before asking again
FAILURE_BACKOFF = Backoff(first=1.0, cap=15.0)  # with no valid token: fail fast for 1 s, 2 s, 4 s ... 15 s
# RFC 6750's b64token: what may follow "Bearer " in a header. Anything else (CR, LF, spaces,
# non-ASCII) is a broken token endpoint, and must not reach a header or a log line.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class CredentialConfigurationError(Exception):
    """The credential itself could not be created: retrying will not help."""


class InvalidToken(Exception):
    """The token endpoint answered with a token the app must not use."""


class TokenCache:
    """One cached token per identity and scope, refreshed ahead of expiry, shared by
    every invocation on every thread and event loop of the process.

    - Fresh token (more than the margin left): returned at once, no lock, no await.
    - Within the margin but still valid: returned at once, while one refresh runs
      in the background (single-flight: concurrent callers share it). A failed
      refresh is logged, and tried again after ``retry_interval``.
    - No valid token: callers await the refresh up to their deadline, then get
      503 ``credential_unavailable``. A failed refresh is remembered for a growing
      interval (1 s, 2 s, 4 s ... 15 s): callers in that window fail at once,
      with ``Retry-After`` set to what is left of it, without a new token request;
      each failure is logged once, however many callers it fails.
    The refresh runs on its own thread (azure-identity is synchronous), awaited
    with ``asyncio.wrap_future``, so the event loop never blocks on it and no
    caller waits past its deadline, even when the token endpoint hangs. The lock
    guards a few field assignments only; nothing waits while holding it.
    After any failed refresh the credential is built anew: msal replays a throttled
    or failed answer for up to an hour (``Retry-After``) on the same credential.
    """

    def __init__(self, credential: Callable[[], TokenCredentialLike], scope: str, *,
                 refresh_margin: float = REFRESH_MARGIN_SECONDS, retry_interval: float = RETRY_INTERVAL_SECONDS,
                 failure_backoff: Backoff = FAILURE_BACKOFF, clock: Clock = SYSTEM_CLOCK,
                 telemetry: Telemetry = NOOP) -> None:
        """``credential`` makes the credential; it is called by the first refresh (and after failures)."""
        self._make_credential = credential
        self._credential: TokenCredentialLike | None = None
        self._scope = scope
        self._margin = refresh_margin
        self._retry_interval = retry_interval
        self._failure_backoff = failure_backoff
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessTokenLike | None = None
        self._refresh: Future | None = None
        self._next_refresh_at = 0.0  # with a usable token: no new refresh before this
        self._failures = 0  # consecutive failed refreshes
        self._failed_until = 0.0  # with no usable token: fail fast before this
        self._failure_retryable = True
        self.refreshes = 0  # token requests started
        self._telemetry = telemetry

    async def get(self, deadline: Deadline, reserve: float = 0.0) -> str:
        """The token; a caller that must wait for a refresh waits until ``reserve`` seconds of its
        deadline are left at most (the time its call needs), then gets 503 ``credential_unavailable``."""
        token = self._token
        now = self._clock.time()
        if token is not None and now < token.expires_on - self._margin:
            return token.token
        if token is not None and now < token.expires_on - EXPIRY_SKEW_SECONDS:
            self._start_refresh(now, have_usable=True)
            return token.token
        if now < self._failed_until:
            raise credential_unavailable(self._failure_retryable, retry_after=self._failed_until - now)
        refresh = self._start_refresh(now, have_usable=False)
        assert refresh is not None
        try:
            return (await asyncio.wait_for(asyncio.wrap_future(refresh), deadline.remaining() - reserve)).token
        except CredentialConfigurationError:
            raise credential_unavailable(retryable=False) from None
        except TimeoutError:  # the caller's deadline, not the endpoint's answer: the refresh goes on
            raise credential_unavailable(retry_after=self._retry_after(self._clock.time()),
                                         deadline_exhausted=True) from None
        except Exception:  # noqa: BLE001 - failed (the refresh thread logged why)
            raise credential_unavailable(retry_after=self._retry_after(self._clock.time())) from None

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (upstream refused it): the next caller gets a fresh one. The
        credential goes too, or msal would answer the next request from its own cache
        with the very token that was refused."""
        with self._lock:
            if self._token is not None and self._token.token == token:
                self._token = None
                if self._refresh is None:  # (a running refresh replaces the token anyway)
                    self._credential = None

    def _retry_after(self, now: float) -> float | None:
        return self._failed_until - now if now < self._failed_until else None

    def _start_refresh(self, now: float, *, have_usable: bool) -> Future | None:
        with self._lock:
            if self._refresh is not None:
                return self._refresh
            if have_usable and now < self._next_refresh_at:
                return None
            self._refresh = future = Future[AccessTokenLike]()
            future.set_running_or_notify_cancel()  # a caller giving up must not cancel it for the others
            self.refreshes += 1
        threading.Thread(target=self._run_refresh, args=(future,), name="token-refresh", daemon=True).start()
        return future

    def _run_refresh(self, future: Future) -> None:
        try:
            token = self._credential_for_refresh().get_token(self._scope)
            self._check(token)
        except Exception as exc:  # noqa: BLE001 - any credential failure is handled the same way
            self._failed(exc)
            future.set_exception(exc)
            return
        with self._lock:
            self._token = token
            self._refresh = None
            self._failures = 0
            self._failed_until = 0.0
        self._telemetry.token_refresh()
        future.set_result(token)

    def _check(self, token: AccessTokenLike) -> None:
        if not isinstance(token.token, str) or not _BEARER_TOKEN.fullmatch(token.token):
            raise InvalidToken("the token is not a valid bearer token")
        if token.expires_on - EXPIRY_SKEW_SECONDS <= self._clock.time():
            raise InvalidToken("the token has already expired")

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            now = self._clock.time()
            self._refresh = None
            self._credential = None  # a new one next time: msal would replay this failure
            self._failures += 1
            self._failed_until = now + self._failure_backoff.delay(self._failures)
            self._failure_retryable = not isinstance(exc, CredentialConfigurationError)
            self._next_refresh_at = now + self._retry_interval
            previous = self._token
        self._telemetry.token_refresh(type(exc).__name__)
        left = (previous.expires_on - now) if previous is not None else 0
        if left > EXPIRY_SKEW_SECONDS:
            log.warning("token refresh failed (%s); keeping the cached token, valid for %d s more",
                        describe(exc), left)
        else:
            log.warning("token request failed (%s); callers fail fast for %.0f s before the next request",
                        describe(exc), self._failed_until - now)

    def _credential_for_refresh(self) -> TokenCredentialLike:
        if self._credential is None:  # only one refresh runs at a time: no race
            try:
                self._credential = self._make_credential()
            except Exception as exc:  # noqa: BLE001 - e.g. an invalid identity configuration
                raise CredentialConfigurationError(type(exc).__name__) from exc
        return self._credential
