"""The requests sessions openai 0.28 uses, with our auth hook attached.

openai 0.28 keeps one ``requests.Session`` per thread, built from
``openai.requestssession``, and closes and rebuilds it every 180 s. A single
shared Session instance (what the seed guide sets) would be used by every
thread and closed under all of them, so we install a *factory* instead.

The hook itself cannot live on the session alone: sessions outlive a call and
are shared by every call on their thread. So each session carries a thin
dispatcher, and the auth of the call in progress is held in a context variable
set around that call (``call_auth``). openai calls are synchronous, so the
variable is exactly the current call's. Key-auth calls set nothing and openai's
own ``api-key`` header stands.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator
from urllib.parse import urlsplit

import openai
import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase


_current_auth: ContextVar[AuthBase | None] = ContextVar("openai_call_auth", default=None)


class BearerTokenAuth(AuthBase):
    """``Authorization: Bearer <token>`` in place of openai's placeholder, and no ``api-key``.

    The seed guide's ``TokenRefresh`` fetched the token inside this hook; here the
    token comes from the process-wide cache (``TokenCache``) just before the
    call, so that the time spent getting it counts against the deadline before
    the attempt's HTTP timeouts are set.
    """

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        request.headers.pop("api-key", None)
        return request


class _CallAuth(AuthBase):
    """Session-level hook: applies the current call's auth, if any."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        auth = _current_auth.get()
        return auth(request) if auth is not None else request


class _Session(requests.Session):
    """A requests Session that reads proxy and CA settings from the environment once per host.

    requests re-scans every environment variable for ``*_proxy`` on each request
    (about 0.2 ms with a few dozen variables, more with an App Service's
    hundred). The environment does not change under a running worker, and
    openai rebuilds its sessions every 180 s anyway, so the answer is kept per
    session and target. Used by one thread only (openai's sessions are per
    thread), so no lock.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple, dict[str, Any]] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        key = (tuple(urlsplit(url)[:2]), tuple(sorted((proxies or {}).items())), stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            settings = self._environment[key] = super().merge_environment_settings(url, proxies, stream, verify,
                                                                                  cert)
        return {**settings, "proxies": dict(settings["proxies"])}


def new_session() -> requests.Session:
    """A session for one openai thread: our auth hook, no transport-level retries
    (the client's retry policy owns retries, within the deadline)."""
    session = _Session()
    session.auth = _CallAuth()
    adapter = HTTPAdapter(max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def install() -> None:
    """Make openai build its per-thread sessions with ``new_session``.

    The one piece of module-global openai state this app sets; everything else
    is passed per call. Idempotent.
    """
    if openai.requestssession is not new_session:
        openai.requestssession = new_session


@contextlib.contextmanager
def call_auth(auth: AuthBase | None) -> Iterator[None]:
    """Apply ``auth`` to the openai requests made inside this block (this thread only)."""
    token = _current_auth.set(auth)
    try:
        yield
    finally:
        _current_auth.reset(token)


install()
