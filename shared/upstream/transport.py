"""The HTTP transport under openai 0.28's async client: one aiohttp session per event loop.

openai 0.28 takes its ``aiohttp.ClientSession`` from the ``openai.aiosession``
context variable and, when it is unset, opens and closes a new session (a new
TCP and TLS connection) for every call. ``UpstreamHttp`` keeps one session per
event loop (the Functions worker has one) and sets that variable around each
call (``UpstreamHttp.exchange``): the one piece of openai state the app sets,
and only in the calling task's context.

The session is where the app's transport rules live, as requests' adapters
and auth hooks are for the sync client:

- **Pinned**: a request to any origin but the configured endpoints' is refused
  before it is sent, so no header (least of all ``api-key``) leaves for
  another host.
- **No redirects**: a 3xx answer ends the attempt (502 ``upstream_bad_response``)
  before aiohttp would follow it.
- **Bounded bodies**: a response larger than ``max_response_bytes`` is refused
  as it arrives, without reading the rest.
- **Recorded**: the status and headers of each answer go into the attempt's
  ``Exchange``, so the client can classify failures openai itself mangles,
  and read rate-limit headers from successful answers.
- **Kept alive**: up to ``max_connections`` connections per host, reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import urllib.request
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import aiohttp
import openai
from yarl import URL

from ..config.ca_bundle import CA_SETTINGS, ca_file
from ..config.settings import SettingsError
from ..errors import AppError


@dataclass
class Exchange:
    """What the transport saw during one upstream attempt."""

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    size: int = 0  # bytes of the answer's body, once read
    json_constants: bool = True  # whether the body may hold NaN or Infinity (only a scan of it can say no)
    response: aiohttp.ClientResponse | None = None  # the answer itself (a stream closes it when it ends)


_current_exchange: ContextVar[Exchange | None] = ContextVar("upstream_exchange", default=None)


def bad_response(message: str) -> AppError:
    return AppError(502, "upstream_bad_response", message, retryable=True)


class _CappedResponse(aiohttp.ClientResponse):
    """A response whose body is refused once it passes ``max_bytes`` (set per session
    by subclassing), rather than read whole into memory first."""

    max_bytes = 0

    async def read(self) -> bytes:
        body = getattr(self, "_capped_body", None)
        if body is None:
            if self.content_length is not None and self.content_length > self.max_bytes:
                self.close()
                raise _too_large(self.max_bytes)
            chunks, size = [], 0
            async for chunk in self.content.iter_any():
                size += len(chunk)
                if size > self.max_bytes:
                    self.close()
                    raise _too_large(self.max_bytes)
                chunks.append(chunk)
            body = self._capped_body = b"".join(chunks)
            exchange = _current_exchange.get()
            if exchange is not None:
                exchange.size = len(body)
                exchange.json_constants = b"NaN" in body or b"Infinity" in body  # memchr-fast, unlike a re-encode
            await super().read()  # the stream is at its end: this only releases the connection
        return body


def _too_large(limit: int) -> AppError:
    return bad_response(f"Azure OpenAI sent a response larger than the app's limit of {limit} bytes.")


def _origin(url: str) -> URL:
    return URL(url).origin()


def _ssl_context() -> ssl.SSLContext | bool:
    """Verified TLS, trusting the CA file ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE`` names when
    one does, as the App Configuration and Key Vault clients do (load_settings checked it)."""
    bundle = ca_file(os.environ)
    if not bundle:
        return True
    try:
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ValueError) as exc:  # not certificates OpenSSL can load (or gone since the settings were read)
        name = next(name for name in CA_SETTINGS if (os.environ.get(name) or "").strip())
        raise SettingsError({name: "must name a readable file of PEM certificates"}) from exc


class UpstreamHttp:
    """Sessions for the configured endpoints: one per event loop, made on first use."""

    def __init__(self, endpoints: Iterable[str], *, max_connections: int, max_response_bytes: int) -> None:
        self._origins = frozenset(_origin(endpoint) for endpoint in endpoints)
        self._max_connections = max_connections
        self._response_class = type("CappedResponse", (_CappedResponse,), {"max_bytes": max_response_bytes})
        self._ssl = _ssl_context() if any(origin.scheme == "https" for origin in self._origins) else True
        # aiohttp with trust_env re-reads every environment variable on each request to look
        # for proxies; the environment does not change under a running worker, so ask once.
        self._trust_env = bool(urllib.request.getproxies())
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = \
            weakref.WeakKeyDictionary()

    def session(self) -> aiohttp.ClientSession:
        """The running loop's session."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._max_connections, ssl=self._ssl)
            session = aiohttp.ClientSession(
                connector=connector, middlewares=(self._middleware,), response_class=self._response_class,
                trust_env=self._trust_env, auto_decompress=True)
            self._sessions[loop] = session
        return session

    @contextlib.contextmanager
    def exchange(self) -> Iterator[Exchange]:
        """Route the openai calls made inside this block through the running loop's session,
        recording what upstream answered in the yielded ``Exchange``."""
        exchange = Exchange()
        session_token = openai.aiosession.set(self.session())
        exchange_token = _current_exchange.set(exchange)
        try:
            yield exchange
        finally:
            _current_exchange.reset(exchange_token)
            openai.aiosession.reset(session_token)

    async def _middleware(self, request: aiohttp.ClientRequest, handler) -> aiohttp.ClientResponse:
        if request.url.origin() not in self._origins:
            # Unreachable through openai (it builds URLs from the configured endpoint);
            # kept as the guarantee that credentials only go where they are meant to.
            raise bad_response("The app refused to send a request outside the configured endpoints.")
        response = await handler(request)
        exchange = _current_exchange.get()
        if exchange is not None:
            exchange.status, exchange.headers, exchange.response = response.status, response.headers, response
        if 300 <= response.status < 400:
            response.release()
            raise bad_response(f"Azure OpenAI answered with a redirect (HTTP {response.status}); "
                               "the app does not follow redirects: check AZURE_OPENAI_ENDPOINT.")
        return response

    async def aclose(self) -> None:
        """Close the running loop's session (at shutdown; tests)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
