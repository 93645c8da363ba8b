"""Application settings: read from the environment once per process, validated.

Azure Functions exposes app settings (and ``local.settings.json`` ``Values``
locally) as environment variables. Errors name the setting but never echo its
value: a value may be a key.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple
from urllib.parse import urlsplit

from .backends import BACKENDS_SETTING, BackendSettings, parse_backends
from .ca_bundle import ca_problems

AUTH_MODES = ("managed_identity", "default", "key")
DEFAULT_API_VERSION = "2024-10-21"
DEFAULT_TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
# Azure's HTTP front end cuts any response at 230 s, whatever functionTimeout says.
FRONT_END_LIMIT_SECONDS = 230.0
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"

# The seed guide's names, accepted when ours are absent.
SEED_FALLBACKS = {
    "AZURE_OPENAI_ENDPOINT": "OPENAI_API_BASE",
    "AZURE_OPENAI_API_KEY": "OPENAI_API_KEY",
    "AZURE_OPENAI_API_VERSION": "OPENAI_API_VERSION",
}
SEED_API_TYPES = {"azure": "key", "azure_ad": "managed_identity", "azuread": "managed_identity"}


@dataclass(frozen=True)
class UpstreamSettings:
    """Where and how to reach the Azure OpenAI completion deployment."""

    endpoint: str  # without trailing slash: openai appends "/openai/deployments/..."
    deployment: str
    api_version: str
    auth: str
    api_key: str | None = field(default=None, repr=False)
    client_id: str | None = None
    token_scope: str = DEFAULT_TOKEN_SCOPE


@dataclass(frozen=True)
class RetrySettings:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # per attempt, in total (connect, send, wait, read)
    max_retries: int = 3
    deadline: float = 120.0  # whole invocation
    max_concurrency: int = 512  # upstream calls in flight per instance (an asyncio.Semaphore)
    max_connections: int = 512  # kept-alive TCP connections per upstream host
    max_response_bytes: int = 8 * 1024 * 1024  # larger upstream answers are refused as they arrive


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 1024 * 1024
    max_prompts: int = 16
    max_tokens: int = 1024
    max_n: int = 10
    max_best_of: int = 20


@dataclass(frozen=True)
class Settings:
    # The single-endpoint settings; with AZURE_OPENAI_BACKENDS, only the defaults the
    # entries inherit (its endpoint is then unused and may be empty).
    upstream: UpstreamSettings
    retry: RetrySettings = RetrySettings()
    limits: Limits = Limits()
    log_text: bool = False
    backends: tuple[BackendSettings, ...] = ()  # what the client calls: never empty once loaded

    def __post_init__(self) -> None:
        if not self.backends:
            object.__setattr__(self, "backends", (BackendSettings.single(self.upstream),))


class QueueNames(NamedTuple):
    """Queue names for the event-driven functions (binding metadata, read at indexing)."""

    requests: str = "completion-requests"
    results: str = "completion-results"

    @property
    def poison(self) -> str:
        return f"{self.requests}-poison"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "QueueNames":
        defaults = cls()
        return cls(environ.get("COMPLETIONS_REQUEST_QUEUE") or defaults.requests,
                   environ.get("COMPLETIONS_RESULT_QUEUE") or defaults.results)


# Either names an Azure App Configuration store (shared/appconfig.py, imported only then).
STORE_SETTINGS = ("AZURE_APPCONFIG_ENDPOINT", "AZURE_APPCONFIG_CONNECTION_STRING")


class SettingsError(Exception):
    """One or more settings are missing or invalid; ``problems`` maps name -> reason."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{name} {reason}" for name, reason in problems.items()))


def function_timeout_seconds(host_json: Path = HOST_JSON) -> float | None:
    """host.json's ``functionTimeout`` in seconds; None when unset, unlimited or unreadable."""
    try:
        value = json.loads(host_json.read_text()).get("functionTimeout")
    except (OSError, ValueError, AttributeError):
        return None
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})", str(value or ""))
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def max_dequeue_count(host_json: Path = HOST_JSON) -> int:
    """host.json's ``extensions.queues.maxDequeueCount`` (the Functions default, 5, when unset)."""
    try:
        value = json.loads(host_json.read_text())["extensions"]["queues"]["maxDequeueCount"]
    except (OSError, ValueError, KeyError, TypeError):
        return 5
    return value if type(value) is int and value >= 1 else 5


class _Reader:
    """Reads settings from a mapping, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self.problems: dict[str, str] = {}

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.environ.get(name)
        if value is None or not value.strip():
            fallback = SEED_FALLBACKS.get(name)
            value = self.environ.get(fallback) if fallback else None
        value = value.strip() if value else None
        return value or default

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        return int(self.number(name, default, low=low, high=high, integer=True))

    def number(self, name: str, default: float, *, low: float, high: float | None = None,
               integer: bool = False) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            self.problems[name] = f"must be {'an integer' if integer else 'a number'}"
            return default
        # (math.isfinite overflows on a huge integer: integers need no finiteness check)
        if (not integer and not math.isfinite(value)) or value < low or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            self.problems[name] = f"must be {bounds}"
            return default
        return value

    def flag(self, name: str) -> bool:
        raw = (self.text(name) or "false").lower()
        if raw not in ("true", "false", "1", "0", "yes", "no"):
            self.problems[name] = "must be true or false"
        return raw in ("true", "1", "yes")


def _auth_mode(read: _Reader) -> str:
    explicit = read.text("AZURE_OPENAI_AUTH")
    if explicit is not None:
        if explicit.lower() not in AUTH_MODES:
            read.problems["AZURE_OPENAI_AUTH"] = f"must be one of {', '.join(AUTH_MODES)}"
            return "managed_identity"
        return explicit.lower()
    seed_type = read.text("OPENAI_API_TYPE")
    if seed_type is not None:
        if seed_type.lower() not in SEED_API_TYPES:
            read.problems["OPENAI_API_TYPE"] = "must be azure or azure_ad"
            return "managed_identity"
        return SEED_API_TYPES[seed_type.lower()]
    return "managed_identity"


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be an Azure OpenAI endpoint (never echoing it), or None.
    https only (http for loopback), no query or fragment. Shared with the backend pool."""
    try:
        url = urlsplit(endpoint)
        hostname = url.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "must be a URL"
    loopback = hostname in ("localhost", "127.0.0.1", "::1")
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


def _endpoint(read: _Reader, required: bool) -> str:
    endpoint = read.text("AZURE_OPENAI_ENDPOINT")
    if endpoint is None:
        if required:
            read.problems["AZURE_OPENAI_ENDPOINT"] = "is required"
        return ""
    problem = endpoint_problem(endpoint)
    if problem is not None:
        read.problems["AZURE_OPENAI_ENDPOINT"] = problem
    return endpoint.rstrip("/")


def _deadline(read: _Reader, function_timeout: Callable[[], float | None]) -> float:
    """AZURE_OPENAI_DEADLINE: under Azure's 230 s HTTP cut-off and host.json's functionTimeout;
    by default 120 s, or less to leave a tenth of the cap for everything around the call."""
    cap = FRONT_END_LIMIT_SECONDS
    host_timeout = function_timeout()
    if host_timeout is not None:
        cap = min(cap, host_timeout)
    deadline = read.number("AZURE_OPENAI_DEADLINE", min(RetrySettings.deadline, 0.9 * cap), low=0.5)
    if deadline >= cap and "AZURE_OPENAI_DEADLINE" not in read.problems:
        where = "host.json functionTimeout" if cap < FRONT_END_LIMIT_SECONDS else "Azure's 230 s HTTP limit"
        read.problems["AZURE_OPENAI_DEADLINE"] = f"must stay under {where} ({cap:g} s)"
        deadline = min(RetrySettings.deadline, 0.9 * cap)
    return deadline


def invocation_deadline(environ: Mapping[str, str], *,
                        function_timeout: Callable[[], float | None] = function_timeout_seconds) -> float:
    """The deadline an invocation has before the other settings are known (while App
    Configuration loads): AZURE_OPENAI_DEADLINE as load_settings reads it, its default
    when it is absent or invalid."""
    return _deadline(_Reader(environ), function_timeout)


def load_settings(environ: Mapping[str, str] | None = None, *,
                  function_timeout: Callable[[], float | None] = function_timeout_seconds) -> Settings:
    """Settings from ``environ`` (default: the process environment); raises SettingsError."""
    read = _Reader(os.environ if environ is None else environ)
    pooled = read.text(BACKENDS_SETTING) is not None  # then the single-endpoint settings are only defaults
    auth = _auth_mode(read)
    endpoint = _endpoint(read, required=not pooled)
    deployment = read.text("AZURE_OPENAI_DEPLOYMENT")
    if deployment is None:
        if not pooled:
            read.problems["AZURE_OPENAI_DEPLOYMENT"] = "is required"
    elif (problem := deployment_problem(deployment)) is not None:
        read.problems["AZURE_OPENAI_DEPLOYMENT"] = problem
        deployment = None
    api_version = read.text("AZURE_OPENAI_API_VERSION", DEFAULT_API_VERSION)
    if (problem := api_version_problem(api_version or "")) is not None:
        read.problems["AZURE_OPENAI_API_VERSION"] = problem
    api_key = read.text("AZURE_OPENAI_API_KEY")
    if auth == "key" and api_key is None and not pooled:
        read.problems["AZURE_OPENAI_API_KEY"] = "is required when AZURE_OPENAI_AUTH is key"
    client_id = read.text("AZURE_CLIENT_ID")
    token_scope = read.text("AZURE_OPENAI_TOKEN_SCOPE", DEFAULT_TOKEN_SCOPE) or ""
    backends: tuple[BackendSettings, ...] = ()
    if pooled:
        backends, problems = parse_backends(
            read.environ, default_deployment=deployment, default_api_version=api_version or DEFAULT_API_VERSION,
            default_auth=auth, default_client_id=client_id, token_scope=token_scope,
            validate_endpoint=endpoint_problem, validate_deployment=deployment_problem,
            validate_api_version=api_version_problem)
        read.problems.update(problems)

    deadline = _deadline(read, function_timeout)
    concurrency = read.integer("AZURE_OPENAI_MAX_CONCURRENCY", RetrySettings.max_concurrency, low=1, high=4096)
    retry = RetrySettings(
        connect_timeout=read.number("AZURE_OPENAI_CONNECT_TIMEOUT", RetrySettings.connect_timeout, low=0.1, high=60),
        read_timeout=read.number("AZURE_OPENAI_TIMEOUT", RetrySettings.read_timeout, low=0.1, high=600),
        max_retries=read.integer("AZURE_OPENAI_MAX_RETRIES", RetrySettings.max_retries, low=0, high=10),
        deadline=deadline,
        max_concurrency=concurrency,
        max_connections=read.integer("AZURE_OPENAI_MAX_CONNECTIONS", concurrency, low=1, high=4096),
        max_response_bytes=read.integer("AZURE_OPENAI_MAX_RESPONSE_BYTES", RetrySettings.max_response_bytes,
                                        low=64 * 1024, high=256 * 1024 * 1024),
    )
    limits = Limits(
        max_body_bytes=read.integer("COMPLETIONS_MAX_BODY_BYTES", Limits.max_body_bytes, low=1024,
                                    high=64 * 1024 * 1024),
        max_prompts=read.integer("COMPLETIONS_MAX_PROMPTS", Limits.max_prompts, low=1, high=2048),
        max_tokens=read.integer("COMPLETIONS_MAX_TOKENS", Limits.max_tokens, low=1, high=128_000),
        max_n=read.integer("COMPLETIONS_MAX_N", Limits.max_n, low=1, high=128),
        max_best_of=read.integer("COMPLETIONS_MAX_BEST_OF", Limits.max_best_of, low=1, high=20),
    )
    log_text = read.flag("COMPLETIONS_LOG_TEXT")
    read.problems.update(ca_problems(read.environ))  # outbound HTTPS trusts that file: it must be usable
    if read.problems:
        raise SettingsError(read.problems)
    return Settings(
        upstream=UpstreamSettings(endpoint=endpoint, deployment=deployment or "", api_version=api_version or "",
                                  auth=auth, api_key=api_key, client_id=client_id, token_scope=token_scope),
        retry=retry, limits=limits, log_text=log_text, backends=backends)
