"""Application settings: read from the environment once per process, validated, frozen.

Azure Functions exposes app settings (and ``local.settings.json`` ``Values``
locally) as environment variables. Each setting is described once, in
``config.registry``; problems name the setting but never echo its value: a value
may be a key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from . import registry as R
from .backends import BackendSettings, Defaults, parse_backends
from .ca_bundle import ca_problems
from .caller_keys import parse_caller_keys
from .endpoints import (
    allowed_hosts_problem,
    api_version_problem,
    deployment_problem,
    endpoint_problem,
    host_allowed,
    parse_allowed_hosts,
    token_scope_problem,
)
from .host_json import function_timeout_seconds
from .reader import Reader

# Azure's HTTP front end cuts any response at 230 s, whatever functionTimeout says.
FRONT_END_LIMIT_SECONDS = 230.0
# A stream ends itself this long before that limit (or functionTimeout), with an error event the
# caller can read, rather than being cut by the host or the front end.
STREAM_END_MARGIN = 10.0
SEED_API_TYPES = {"azure": "key", "azure_ad": "managed_identity", "azuread": "managed_identity"}


@dataclass(frozen=True)
class UpstreamSettings:
    """The single-endpoint settings; with AZURE_OPENAI_BACKENDS, only the defaults its entries inherit."""

    endpoint: str  # without trailing slash: openai appends "/openai/deployments/..."
    deployment: str
    api_version: str
    auth: str
    api_key: str | None = field(default=None, repr=False)
    client_id: str | None = None
    token_scope: str = R.DEFAULT_TOKEN_SCOPE
    api: str = R.API.default


@dataclass(frozen=True)
class RetrySettings:
    connect_timeout: float = R.CONNECT_TIMEOUT.default
    read_timeout: float = R.TIMEOUT.default  # per attempt, in total (connect, send, wait, read)
    max_retries: int = R.MAX_RETRIES.default
    deadline: float = R.DEADLINE.default  # whole invocation
    max_concurrency: int = R.MAX_CONCURRENCY.default  # upstream calls in flight per instance
    max_connections: int = R.MAX_CONCURRENCY.default  # kept-alive TCP connections per upstream host
    max_response_bytes: int = R.MAX_RESPONSE_BYTES.default  # larger upstream answers are refused as they arrive
    max_cooldown: float = R.MAX_COOLDOWN.default  # the longest a backend rests after a 429 or 503
    stream_seconds: float = 170.0  # the longest a stream may last: under functionTimeout and the 230 s front end


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = R.MAX_BODY_BYTES.default
    max_prompts: int = R.MAX_PROMPTS.default
    max_tokens: int = R.MAX_TOKENS.default
    max_n: int = R.MAX_N.default
    max_best_of: int = R.MAX_BEST_OF.default
    max_messages: int = R.MAX_MESSAGES.default


@dataclass(frozen=True)
class ChatSettings:
    """How the app speaks to chat deployments."""

    instructions: str = R.CHAT_INSTRUCTIONS.default  # before each prompt of /api/completions; "" sends none
    adapt_parameters: bool = R.ADAPT_PARAMETERS.default  # learn and drop what a reasoning deployment refuses


def single_backend(upstream: UpstreamSettings) -> BackendSettings:
    """The pool of one the single-endpoint settings describe."""
    return BackendSettings(name="default", endpoint=upstream.endpoint, deployment=upstream.deployment,
                           api_version=upstream.api_version, auth=upstream.auth, api_key=upstream.api_key,
                           client_id=upstream.client_id, token_scope=upstream.token_scope, api=upstream.api)


@dataclass(frozen=True)
class CallerSettings:
    """Who may call, when the app checks it itself (``shared.callers``)."""

    keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)  # caller name -> SHA-256 of its key
    platform: bool = False  # App Service Authentication validated the caller


@dataclass(frozen=True)
class Settings:
    upstream: UpstreamSettings
    retry: RetrySettings = RetrySettings()
    limits: Limits = Limits()
    chat: ChatSettings = ChatSettings()
    callers: CallerSettings = CallerSettings()
    log_text: bool = False
    backends: tuple[BackendSettings, ...] = ()  # what the client calls: never empty once loaded

    def __post_init__(self) -> None:
        if not self.backends:
            object.__setattr__(self, "backends", (single_backend(self.upstream),))


class SettingsError(Exception):
    """One or more settings are missing or invalid; ``problems`` maps name -> reason."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{name} {reason}" for name, reason in problems.items()))


def _auth_mode(read: Reader) -> str:
    if read.raw(R.AUTH) is not None:
        return read.choice(R.AUTH)
    seed_type = read.raw(R.SEED_API_TYPE)
    if seed_type is not None:
        if seed_type.lower() not in SEED_API_TYPES:
            read.problems[R.SEED_API_TYPE.name] = "must be azure or azure_ad"
            return R.AUTH.default
        return SEED_API_TYPES[seed_type.lower()]
    return R.AUTH.default


def _checked(read: Reader, setting: R.Setting, rule: Callable[[str], str | None], *, required: bool,
             default: str | None = None) -> str | None:
    """The setting's value when it passes ``rule``; a problem when it fails or is required and absent."""
    value = read.text(setting, default)
    if value is None:
        if required:
            read.problems[setting.name] = "is required"
        return None
    problem = rule(value)
    if problem is not None:
        read.problems[setting.name] = problem
        return None
    return value


def _deadline(read: Reader, host_timeout: float | None) -> float:
    """AZURE_OPENAI_DEADLINE: under Azure's 230 s HTTP cut-off and host.json's functionTimeout
    (``host_timeout``); by default 120 s, or less to leave a tenth of the cap for everything
    around the call."""
    cap = FRONT_END_LIMIT_SECONDS
    if host_timeout is not None:
        cap = min(cap, host_timeout)
    default = min(R.DEADLINE.default, 0.9 * cap)
    deadline = read.number(R.DEADLINE, default)
    if deadline >= cap and R.DEADLINE.name not in read.problems:
        where = "host.json functionTimeout" if cap < FRONT_END_LIMIT_SECONDS else "Azure's 230 s HTTP limit"
        read.problems[R.DEADLINE.name] = f"must stay under {where} ({cap:g} s)"
        deadline = default
    return deadline


def invocation_deadline(environ: Mapping[str, str], *,
                        function_timeout: Callable[[], float | None] = function_timeout_seconds) -> float:
    """The deadline an invocation has before the other settings are known (while App
    Configuration loads): AZURE_OPENAI_DEADLINE as load_settings reads it, its default
    when it is absent or invalid."""
    return _deadline(Reader(environ), function_timeout())


def _upstream(read: Reader, pooled: bool, allowed_hosts: tuple[str, ...] | None) -> UpstreamSettings:
    """The single-endpoint settings (required unless AZURE_OPENAI_BACKENDS lists the backends);
    ``allowed_hosts``: the endpoint came from App Configuration (None: from app settings)."""
    auth = _auth_mode(read)
    endpoint = _checked(read, R.ENDPOINT, endpoint_problem, required=not pooled)
    if endpoint is not None and allowed_hosts is not None and not host_allowed(endpoint, allowed_hosts):
        read.problems[R.ENDPOINT.name] = "must be an Azure OpenAI or AI Services host, loopback, or a host " \
                                         "listed in AZURE_OPENAI_ALLOWED_HOSTS, when it comes from App Configuration"
        endpoint = None
    deployment = _checked(read, R.DEPLOYMENT, deployment_problem, required=not pooled)
    api_version = read.text(R.API_VERSION) or R.API_VERSION.default
    if (problem := api_version_problem(api_version)) is not None:
        read.problems[R.API_VERSION.name] = problem
    api_key = read.text(R.API_KEY)
    if auth == "key" and api_key is None and not pooled:
        read.problems[R.API_KEY.name] = "is required when AZURE_OPENAI_AUTH is key"
    return UpstreamSettings(endpoint=(endpoint or "").rstrip("/"), deployment=deployment or "",
                            api_version=api_version, auth=auth, api_key=api_key, client_id=read.text(R.CLIENT_ID),
                            token_scope=_checked(read, R.TOKEN_SCOPE, token_scope_problem, required=True) or "",
                            api=read.choice(R.API))


def _allowed_hosts(read: Reader) -> tuple[str, ...]:
    raw = read.raw(R.ALLOWED_HOSTS)
    if raw is not None and (problem := allowed_hosts_problem(raw)) is not None:
        read.problems[R.ALLOWED_HOSTS.name] = problem
        return ()
    return parse_allowed_hosts(raw)


def _retry(read: Reader, function_timeout: Callable[[], float | None]) -> RetrySettings:
    host_timeout = function_timeout()  # (host.json, read once)
    deadline = _deadline(read, host_timeout)
    concurrency = read.integer(R.MAX_CONCURRENCY)
    cap = min(FRONT_END_LIMIT_SECONDS, host_timeout) if host_timeout is not None else FRONT_END_LIMIT_SECONDS
    return RetrySettings(
        stream_seconds=max(deadline, cap - STREAM_END_MARGIN),
        connect_timeout=read.number(R.CONNECT_TIMEOUT), read_timeout=read.number(R.TIMEOUT),
        max_retries=read.integer(R.MAX_RETRIES), deadline=deadline, max_concurrency=concurrency,
        max_connections=read.integer(R.MAX_CONNECTIONS, concurrency),
        max_response_bytes=read.integer(R.MAX_RESPONSE_BYTES), max_cooldown=read.number(R.MAX_COOLDOWN))


def _limits(read: Reader) -> Limits:
    return Limits(max_body_bytes=read.integer(R.MAX_BODY_BYTES), max_prompts=read.integer(R.MAX_PROMPTS),
                  max_tokens=read.integer(R.MAX_TOKENS), max_n=read.integer(R.MAX_N),
                  max_best_of=read.integer(R.MAX_BEST_OF), max_messages=read.integer(R.MAX_MESSAGES))


def load_settings(environ: Mapping[str, str] | None = None, *, from_store: Collection[str] = (),
                  function_timeout: Callable[[], float | None] = function_timeout_seconds) -> Settings:
    """Settings from ``environ`` (default: the process environment); raises SettingsError.
    ``from_store``: the names whose values came from App Configuration (an endpoint among them
    must be an allowed host)."""
    read = Reader(os.environ if environ is None else environ)
    allowed = _allowed_hosts(read)
    pooled = read.raw(R.BACKENDS) is not None  # then the single-endpoint settings are only defaults
    upstream = _upstream(read, pooled, allowed if R.ENDPOINT.name in from_store else None)
    backends: tuple[BackendSettings, ...] = ()
    if pooled:
        backends, problems = parse_backends(read.environ, Defaults(
            deployment=upstream.deployment or None, api_version=upstream.api_version, auth=upstream.auth,
            client_id=upstream.client_id, token_scope=upstream.token_scope, api=upstream.api,
            allowed_hosts=allowed if R.BACKENDS.name in from_store else None))
        read.problems.update(problems)
    retry, limits, log_text = _retry(read, function_timeout), _limits(read), read.flag(R.LOG_TEXT)
    chat = ChatSettings(instructions=read.text_or_empty(R.CHAT_INSTRUCTIONS),
                        adapt_parameters=read.flag(R.ADAPT_PARAMETERS))
    keys, problem = parse_caller_keys(read.raw(R.CALLER_KEYS))
    if problem is not None:
        read.problems[R.CALLER_KEYS.name] = problem
    callers = CallerSettings(keys=keys, platform=read.flag(R.AUTH_ENABLED))
    read.problems.update(ca_problems(read.environ))  # outbound HTTPS trusts that file: it must be usable
    if read.problems:
        raise SettingsError(read.problems)
    return Settings(upstream=upstream, retry=retry, limits=limits, chat=chat, callers=callers, log_text=log_text,
                    backends=backends)
