"""Where the App Configuration store is and how to read it: bootstrap settings, from app settings only.

Returns None when no store is configured, so a plain app never imports the
provider (``service`` imports ``config.appconfig`` only when this finds a store).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import registry as R
from .ca_bundle import ca_file, ca_problems
from .reader import Reader
from .settings import SettingsError


@dataclass(frozen=True)
class AppConfigBootstrap:
    """Where the store is and how to read it; validated once, from app settings only."""

    endpoint: str | None
    connection_string: str | None = field(default=None, repr=False)
    key_prefix: str = R.APPCONFIG_KEY_PREFIX.default
    label: str | None = None
    sentinel: str = R.APPCONFIG_SENTINEL.default
    refresh_seconds: float = R.APPCONFIG_REFRESH_SECONDS.default
    auth: str = "managed_identity"
    client_id: str | None = None
    ca_file: str | None = None  # REQUESTS_CA_BUNDLE or SSL_CERT_FILE (config.ca_bundle); None: default roots

    @property
    def store_setting(self) -> str:
        """The setting that names the store (what a 503 points at when it cannot be read)."""
        return R.APPCONFIG_ENDPOINT.name if self.endpoint else R.APPCONFIG_CONNECTION_STRING.name

    @property
    def store_url(self) -> str:
        """The store's endpoint, from AZURE_APPCONFIG_ENDPOINT or the connection string."""
        if self.endpoint:
            return self.endpoint
        return _connection_string_parts(self.connection_string or "").get("Endpoint", "")

    @property
    def trimmed_sentinel(self) -> str | None:
        """The sentinel's name after prefix trimming, when it lies under the prefix."""
        return self.sentinel[len(self.key_prefix):] if self.sentinel.startswith(self.key_prefix) else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> AppConfigBootstrap | None:
        """The bootstrap settings; None when no store is configured. Raises SettingsError
        naming bad settings (never their values)."""
        read = Reader(os.environ if environ is None else environ)
        endpoint, connection_string = read.raw(R.APPCONFIG_ENDPOINT), read.raw(R.APPCONFIG_CONNECTION_STRING)
        if endpoint is None and connection_string is None:
            return None
        problems = read.problems
        if endpoint is not None and connection_string is not None:
            problems[R.APPCONFIG_CONNECTION_STRING.name] = "must not be set together with AZURE_APPCONFIG_ENDPOINT"
        if endpoint is not None:
            endpoint = _store_url(endpoint, R.APPCONFIG_ENDPOINT.name, problems)
        if connection_string is not None and not _connection_string_valid(connection_string):
            problems[R.APPCONFIG_CONNECTION_STRING.name] = "must be Endpoint=https://…;Id=…;Secret=… (an access key)"
        prefix = read.text(R.APPCONFIG_KEY_PREFIX) or R.APPCONFIG_KEY_PREFIX.default
        if re.search(r"[*,\\]", prefix):
            problems[R.APPCONFIG_KEY_PREFIX.name] = "must not contain * , or \\"
        label = read.text(R.APPCONFIG_LABEL)
        if label is not None and (re.search(r"[*,\\\0]", label)):
            problems[R.APPCONFIG_LABEL.name] = "must be one label: no * , \\"
        sentinel = read.text(R.APPCONFIG_SENTINEL) or R.APPCONFIG_SENTINEL.default
        if re.search(r"[*,\\]", sentinel):
            problems[R.APPCONFIG_SENTINEL.name] = "must be one key: no * , \\"
        refresh = read.number(R.APPCONFIG_REFRESH_SECONDS)
        # follow the app's own mode when unset: `default` is local development (az login)
        auth = read.choice(R.APPCONFIG_AUTH, "default" if read.choice(R.AUTH) == "default" else "managed_identity")
        problems.pop(R.AUTH.name, None)  # the app's own setting: load_settings names it
        problems.update(ca_problems(read.environ))
        if problems:
            raise SettingsError(problems)
        return cls(endpoint=endpoint, connection_string=connection_string, key_prefix=prefix, label=label,
                   sentinel=sentinel, refresh_seconds=refresh, auth=auth, client_id=read.text(R.CLIENT_ID),
                   ca_file=ca_file(read.environ))

def _store_url(value: str, name: str, problems: dict[str, str]) -> str:
    try:
        url = urlsplit(value)
        host = url.hostname
    except ValueError:
        url, host = None, None
    if url is None or url.scheme != "https" or not host or url.query or url.fragment or url.path not in ("", "/"):
        problems[name] = "must be https://<store>.azconfig.io"
    return value.rstrip("/")


def _connection_string_parts(value: str) -> dict[str, str]:
    return dict(segment.strip().split("=", 1) for segment in value.split(";") if "=" in segment)


def _connection_string_valid(value: str) -> bool:
    parts = _connection_string_parts(value)
    if len(value.split(";")) != 3 or set(parts) != {"Endpoint", "Id", "Secret"} or not all(parts.values()):
        return False
    problems: dict[str, str] = {}
    _store_url(parts["Endpoint"], "endpoint", problems)
    return not problems
