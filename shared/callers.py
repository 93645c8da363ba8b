"""Who is calling: the app's own check of a caller's key, or the caller App Service Authentication validated.

The OpenAI SDKs send ``api-key: <key>`` (``AzureOpenAI``) or ``Authorization: Bearer
<key>`` (``OpenAI``); the Functions host reads its own keys only from
``x-functions-key`` or ``?code=``. So:

- With ``COMPLETIONS_CALLER_KEYS`` (name → SHA-256 hex digest of the key) the routes are
  anonymous at the host and every request must carry one of the keys: its digest is
  compared with every caller's, in constant time (``hmac.compare_digest``), and the
  caller's name goes into the log line and telemetry; the key never does.
- With App Service Authentication on (``WEBSITE_AUTH_ENABLED``), the platform has
  validated the Entra ID token and removed forged ``x-ms-client-principal-*`` headers:
  a request that carries ``x-ms-client-principal-id`` is that principal. Only then are
  those headers trusted.
- With neither, the host checks its function keys (the routes' auth level FUNCTION)
  and the app checks nothing.

Whether the routes are anonymous is binding metadata: decided from the app settings when
the host indexes the app (``routes_are_anonymous``). The keys themselves are read with
the other settings, so App Configuration may rotate them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from .config import registry as R
from .config.reader import Reader

if TYPE_CHECKING:
    from .errors import AppError

PRINCIPAL_ID, PRINCIPAL_NAME = "x-ms-client-principal-id", "x-ms-client-principal-name"


def routes_are_anonymous(environ: Mapping[str, str]) -> bool:
    """Whether the host should let requests through to the app's own check (read at indexing)."""
    read = Reader(environ)
    return read.raw(R.CALLER_KEYS) is not None or read.flag(R.AUTH_ENABLED)


def invalid_api_key() -> AppError:
    from .errors import AppError

    return AppError(401, "invalid_api_key", "Missing or invalid API key: send it as 'api-key: <key>' or "
                                            "'Authorization: Bearer <key>'.")


class Caller(NamedTuple):
    name: str  # for the log line and telemetry
    how: str  # "key", "platform" (App Service Authentication) or "host" (the host's function key)


HOST = Caller("-", "host")


class CallerCheck:
    """The check for one set of settings (rebuilt with them)."""

    def __init__(self, keys: Mapping[str, bytes], platform_auth: bool, anonymous_routes: bool) -> None:
        self._keys = dict(keys)
        self._platform = platform_auth
        self._anonymous = anonymous_routes

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """Who sent a request with ``headers`` (names lowercased); 401 ``invalid_api_key`` when nobody."""
        if not self._anonymous:
            return HOST  # the host checked its function key before the app ran
        if self._platform and headers.get(PRINCIPAL_ID):
            name = headers.get(PRINCIPAL_NAME) or headers[PRINCIPAL_ID]
            return Caller(name[:128], "platform")
        presented = headers.get("api-key") or _bearer(headers.get("authorization"))
        if presented and self._keys:
            digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
            found = None
            for name, expected in self._keys.items():  # every one, whatever matches: no early exit
                if hmac.compare_digest(digest, expected):
                    found = name
            if found is not None:
                return Caller(found, "key")
        raise invalid_api_key()


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
