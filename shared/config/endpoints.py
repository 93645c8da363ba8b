"""Rules for the values that say where Azure OpenAI is, and whom the app's token is for.

Each returns why a value is unusable (never echoing it), or None. The single-endpoint
settings and every ``AZURE_OPENAI_BACKENDS`` entry share them. Every part of an
endpoint is checked: a port that is not a number in range, spaces or control
characters, ``user:password@``, a query or fragment, a path outside plain segments;
so a bad value is a named setting, never a failed import, and no URL that carries
credentials ever reaches a log line or a span.

An endpoint that comes from App Configuration must also be an Azure OpenAI / AI
Services host (public and sovereign clouds), loopback, or a host the app setting
``AZURE_OPENAI_ALLOWED_HOSTS`` lists: whoever can write the store must not be able to
send the app's token, and the prompts, to a host of their choosing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from yarl import URL

_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)*/?")
# Azure OpenAI and AI Services data-plane hosts: public cloud, US Government, China.
AZURE_HOST_SUFFIXES = (
    ".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com",
    ".openai.azure.us", ".cognitiveservices.azure.us", ".services.ai.azure.us",
    ".openai.azure.cn", ".cognitiveservices.azure.cn", ".services.ai.azure.cn",
)
# The audiences a token for Azure OpenAI may be for.
TOKEN_SCOPES = (
    "https://cognitiveservices.azure.com/.default", "https://ai.azure.com/.default",
    "https://cognitiveservices.azure.us/.default", "https://ai.azure.us/.default",
    "https://cognitiveservices.azure.cn/.default", "https://ai.azure.cn/.default",
)


def endpoint_problem(endpoint: str) -> str | None:
    """https only (http for loopback); every part well-formed; no credentials, query or fragment."""
    if not endpoint.isascii() or any(c.isspace() or not c.isprintable() for c in endpoint):
        return "must be a URL without spaces or control characters (an international host in its xn-- form)"
    try:
        url = urlsplit(endpoint)
        hostname, port = url.hostname, url.port
        URL(endpoint)  # (what the transport will parse)
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number or out of range
        return "must be a URL with a valid host and port"
    if "@" in url.netloc:
        return "must not contain credentials (user:password@)"
    if url.scheme not in ("https", "http") or not hostname or (url.scheme == "http" and hostname not in _LOOPBACK):
        return "must be an https:// URL (http:// only for localhost)"
    if port == 0 or not (_HOSTNAME.fullmatch(hostname) or _is_ip(hostname)):
        return "must be a URL with a valid host and port"
    if url.query or url.fragment or "?" in endpoint or "#" in endpoint:
        return "must not have a query or fragment"
    if not _PATH.fullmatch(url.path):
        return "must not have a path other than plain segments"
    return None


def host_allowed(endpoint: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether a (valid) endpoint's host may receive the app's token when the store names it."""
    host = (urlsplit(endpoint).hostname or "").lower().rstrip(".")
    if host in _LOOPBACK or (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
        return True
    if host.endswith(AZURE_HOST_SUFFIXES):
        return True
    for allowed in allowed_hosts:
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return True
    return False


def allowed_hosts_problem(value: str) -> str | None:
    """``AZURE_OPENAI_ALLOWED_HOSTS``: a comma-separated list of host names, each maybe ``*.suffix``."""
    for entry in value.split(","):
        name = entry.strip().lower()
        if not name or not _HOSTNAME.fullmatch(name.removeprefix("*.")):
            return "must be a comma-separated list of host names (a leading *. allows a domain's hosts)"
    return None


def parse_allowed_hosts(value: str | None) -> tuple[str, ...]:
    return tuple(entry.strip().lower() for entry in (value or "").split(",") if entry.strip())


def token_scope_problem(scope: str) -> str | None:
    if scope not in TOKEN_SCOPES:
        return "must be the Azure OpenAI / AI Services audience (https://cognitiveservices.azure.com/.default or " \
               "its sovereign-cloud form)"
    return None


def deployment_problem(deployment: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", deployment):
        return "must be a deployment name (letters, digits, . _ -)"
    return None


def api_version_problem(api_version: str) -> str | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", api_version):
        return "must look like 2024-10-21"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
