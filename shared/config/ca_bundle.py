"""Which CA certificates outbound HTTPS trusts: the standard settings, read the same way everywhere.

``REQUESTS_CA_BUNDLE`` (what requests reads) and then ``SSL_CERT_FILE`` (what
OpenSSL, and so ``ssl.create_default_context()`` and aiohttp, read). requests
ignores ``SSL_CERT_FILE`` and uses certifi's roots, so a client built on it must
be handed the file explicitly (``verify=``, or azure-core's ``connection_verify=``)
for ``SSL_CERT_FILE`` alone to work. None means the library's default roots.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

CA_SETTINGS = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def ca_file(environ: Mapping[str, str] | None = None) -> str | None:
    """The CA file the settings name (the first set of ``CA_SETTINGS``), or None."""
    env = os.environ if environ is None else environ
    for name in CA_SETTINGS:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def ca_problems(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CA setting in force, by name, when it does not name a file of PEM certificates
    OpenSSL can load (loaded once, when settings are: the App Configuration and Key Vault
    clients, and the Azure OpenAI transport, all trust that file)."""
    env = os.environ if environ is None else environ
    for name in CA_SETTINGS:
        value = (env.get(name) or "").strip()
        if value:
            try:
                ssl.create_default_context(cafile=value)
            except (OSError, ValueError):  # missing, unreadable, or no certificate OpenSSL accepts
                return {name: "must name a readable file of PEM certificates"}
            return {}
    return {}
