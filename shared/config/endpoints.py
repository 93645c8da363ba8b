"""Rules for the values that say where Azure OpenAI is: endpoint, deployment, API version.

Each returns why a value is unusable (never echoing it), or None. The single-endpoint
settings and every ``AZURE_OPENAI_BACKENDS`` entry share them.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def endpoint_problem(endpoint: str) -> str | None:
    """https only (http for loopback), no query or fragment."""
    try:
        url = urlsplit(endpoint)
        hostname = url.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "must be a URL"
    loopback = hostname in _LOOPBACK
    if url.scheme not in ("https", "http") or not hostname or (url.scheme == "http" and not loopback):
        return "must be an https:// URL (http:// only for localhost)"
    if url.query or url.fragment:
        return "must not have a query or fragment"
    return None


def deployment_problem(deployment: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", deployment):
        return "must be a deployment name (letters, digits, . _ -)"
    return None


def api_version_problem(api_version: str) -> str | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", api_version):
        return "must look like 2024-10-21"
    return None
