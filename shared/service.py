"""The completion pipeline every trigger shares: validate, call upstream, shape, log.

One ``CompletionService`` per process holds the settings and the client built
from them (backends, token caches, connections). It never raises to its caller:
every request ends as an ``Outcome`` (a status, a JSON body, headers), and as
one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from .completion_client import CompletionClient, UpstreamResult
from .errors import AppError, internal_error, not_configured
from .retry import SYSTEM_CLOCK, Clock, Deadline
from .settings import (STORE_SETTINGS, Limits, RetrySettings, Settings, SettingsError, invocation_deadline,
                       load_settings)
from .telemetry import NOOP, Telemetry
from .upstream_http import UpstreamHttp, bad_response
from .validation import parse_json_body, validate_completion_request

if TYPE_CHECKING:
    from .appconfig import AppConfigSource

log = logging.getLogger(__name__)


_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_for(given: str | None) -> str:
    """The caller's request id when it is a short, header-safe token, else a new one.
    It goes into logs and the upstream X-Request-Id header, so nothing else is taken."""
    return given if given and _CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class Outcome(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = MappingProxyType({})  # read-only: the default is shared
    error: AppError | None = None
    encoded: str | None = None  # the body as JSON, for answers: encoded once, where a failure is an error

    def json(self) -> str:
        return self.encoded if self.encoded is not None else json.dumps(self.body)

    @property
    def ok(self) -> bool:
        return self.status == 200


class Pipeline(NamedTuple):
    """One consistent set of settings and the client built from them. Replaced as a whole
    when App Configuration changes the settings: an invocation takes the current one when
    it starts and finishes on it."""

    settings: Settings | None
    client: CompletionClient | None
    problems: Mapping[str, str]  # setting name -> reason, when settings is None
    loaded_at: float  # epoch seconds


class CompletionService:
    """The process's pipeline, from app settings, or from Azure App Configuration (loaded in
    the background, refreshed on a sentinel key; ``shared/appconfig.py``) over them."""

    def __init__(self, settings: Settings | None, client: CompletionClient | None,
                 problems: Mapping[str, str] | None = None, *, clock: Clock = SYSTEM_CLOCK,
                 telemetry: Telemetry = NOOP) -> None:
        self._clock = clock
        self.telemetry = telemetry  # metrics and traces (shared.telemetry): NOOP unless a switch is set
        self._pipeline = Pipeline(settings, client, dict(problems or {}), clock.time())
        self._source: AppConfigSource | None = None
        self._app_settings: Mapping[str, str] = {}
        self._first_load_wait = RetrySettings.deadline  # how long a request may wait for the store's first load
        self._retired: list[tuple[float, UpstreamHttp]] = []  # replaced transports, closed once drained
        self._retired_due = math.inf  # the earliest of those times: requests look at this only
        self._retired_lock = threading.Lock()  # appended to on the store's thread, drained on the loop's

    @property
    def settings(self) -> Settings | None:
        return self._pipeline.settings

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = SYSTEM_CLOCK,
                      telemetry: Telemetry = NOOP) -> "CompletionService":
        _configure_logging(settings)
        return cls(settings, _client_for(settings, clock, telemetry, None), clock=clock, telemetry=telemetry)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *,
                     clock: Clock = SYSTEM_CLOCK, telemetry: Telemetry = NOOP) -> "CompletionService":
        """The service for this process's settings; unconfigured (answering 503) when they are
        invalid. With a store configured (``AZURE_APPCONFIG_ENDPOINT`` or ``_CONNECTION_STRING``)
        the first load starts in the background and this returns at once: indexing never
        waits for the store."""
        env = dict(os.environ if environ is None else environ)
        try:
            if not any((env.get(name) or "").strip() for name in STORE_SETTINGS):
                return cls.from_settings(load_settings(env), clock=clock, telemetry=telemetry)
            from .appconfig import AppConfigBootstrap, AppConfigSource  # only with a store: cold start is measured

            bootstrap = AppConfigBootstrap.from_environ(env)
            if bootstrap is None:
                return cls.from_settings(load_settings(env), clock=clock, telemetry=telemetry)
        except SettingsError as exc:
            log.error("the app is not configured: %s", exc)  # names and reasons only, never values
            return cls(None, None, exc.problems, clock=clock, telemetry=telemetry)
        service = cls(None, None, {bootstrap.store_setting: "loading"}, clock=clock, telemetry=telemetry)
        service._app_settings = env
        service._first_load_wait = invocation_deadline(env)
        service._source = AppConfigSource(bootstrap, apply=service._apply_store_values, clock=clock.monotonic,
                                          wall_clock=clock.time)
        service._source.start()
        return service

    def _apply_store_values(self, values: Mapping[str, str]) -> None:
        """The store's values over the app settings, validated exactly like app settings, then
        swapped in (on the source's thread; raises SettingsError to keep the last good set)."""
        self._install(load_settings({**self._app_settings, **values}))

    def _install(self, settings: Settings) -> None:
        previous = self._pipeline
        client = _client_for(settings, self._clock, self.telemetry, previous)
        old = previous.client
        if old is not None and client.http is not old.http:
            drained_at = self._clock.monotonic() + (previous.settings.retry.deadline if previous.settings else 0)
            with self._retired_lock:
                self._retired.append((drained_at, old.http))
                self._retired_due = min(self._retired_due, drained_at)
        _configure_logging(settings)
        self._pipeline = Pipeline(settings, client, {}, self._clock.time())  # one assignment: atomic

    async def aclose(self) -> None:
        """Close this service's connections on the running loop (shutdown, tests)."""
        if self._source is not None:
            self._source.stop()
        with self._retired_lock:
            retired, self._retired, self._retired_due = self._retired, [], math.inf
        for _, http in retired:
            await http.aclose()
        if self._pipeline.client is not None:
            await self._pipeline.client.http.aclose()

    # -- requests ------------------------------------------------------------
    async def complete(self, request: bytes | Any, request_id: str, *, source: str = "http") -> Outcome:
        """Run one completion. ``request`` is the raw body, or an already-decoded JSON document."""
        with self.telemetry.invocation(source, self._pipeline.settings, request_id) as call:  # its span, its metrics
            return await self._complete(request, request_id, source, call)

    async def _complete(self, request: bytes | Any, request_id: str, source: str, call: Any) -> Outcome:
        started = time.perf_counter()
        began = self._clock.monotonic()
        result: UpstreamResult | None = None
        params: dict[str, Any] = {}
        settings: Settings | None = None
        try:
            pipeline = await self._current(began)
            settings = pipeline.settings
            assert settings is not None and pipeline.client is not None
            # (a wait for the store's first load counts against the deadline)
            deadline = Deadline(settings.retry.deadline - (self._clock.monotonic() - began), self._clock)
            data = parse_json_body(request, settings.limits) if isinstance(request, (bytes, bytearray)) else request
            params = validate_completion_request(data, settings.limits)
            result = await pipeline.client.complete(params, deadline, request_id)
            body = shape_response(result.response, result.backend.deployment, result.backend.name)
            outcome = Outcome(200, body, encoded=_encode_answer(body))
        except AppError as exc:
            outcome = Outcome(exc.status, exc.body(request_id), exc.headers(), exc)
        except Exception:  # noqa: BLE001 - the caller gets a coded 500, the log gets the traceback
            log.exception("completion request_id=%s failed unexpectedly", request_id)
            error = internal_error()
            outcome = Outcome(error.status, error.body(request_id), error.headers(), error)
        call.finish(outcome, result, params)
        self._log(outcome, result, params, request_id, source, started, settings, call.trace_id)
        return outcome

    async def _current(self, began: float) -> Pipeline:
        """The pipeline for a new invocation. While the store's first load is in progress, wait
        for it within the invocation's deadline (AZURE_OPENAI_DEADLINE from the app settings:
        the rest are not known yet); once a load attempt has failed, 503 at once."""
        source = self._source
        if source is not None:
            source.maybe_refresh()  # never blocks: at most every AZURE_APPCONFIG_REFRESH_SECONDS, a background check
            if self._pipeline.settings is None and source.state().status == "loading":
                left = self._first_load_wait - (self._clock.monotonic() - began)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(source.first_attempt), max(0.0, left))
                except TimeoutError:
                    pass
        if self._retired_due <= self._clock.monotonic():
            await self._close_drained()
        pipeline = self._pipeline
        if pipeline.settings is None:
            raise not_configured(self._problems())
        return pipeline

    async def _close_drained(self) -> None:
        now = self._clock.monotonic()
        with self._retired_lock:
            drained = [http for when, http in self._retired if when <= now]
            self._retired = [(when, http) for when, http in self._retired if when > now]
            self._retired_due = min((when for when, _ in self._retired), default=math.inf)
        for http in drained:
            await http.aclose()

    def _problems(self) -> Mapping[str, str]:
        if self._source is not None and self._pipeline.settings is None:
            state = self._source.state()
            return state.problems or {self._source.bootstrap.store_setting: state.status}
        return self._pipeline.problems

    def decode(self, body: bytes) -> Any:
        """The JSON document in ``body`` (AppError 413/400 when too large or not JSON)."""
        settings = self._pipeline.settings
        return parse_json_body(body, settings.limits if settings else Limits())

    def health(self) -> Outcome:
        pipeline = self._pipeline
        configuration = self._source.describe() if self._source is not None else {
            "source": "app_settings", "loaded_at": _iso(pipeline.loaded_at), "last_refresh_error": None}
        if pipeline.settings is None or pipeline.client is None:
            return Outcome(503, {"status": "not_configured", "settings": dict(self._problems()),
                                 "configuration": configuration})
        first = pipeline.settings.backends[0]
        return Outcome(200, {"status": "ok", "deployment": first.deployment, "api_version": first.api_version,
                             "auth": first.auth, "backends": pipeline.client.pool.snapshot(),
                             "configuration": configuration})

    def _log(self, outcome: Outcome, result: UpstreamResult | None, params: dict[str, Any],
             request_id: str, source: str, started: float, settings: Settings | None, trace_id: str = "") -> None:
        error = outcome.error
        usage = outcome.body.get("usage", {}) if outcome.ok else {}
        attempts = result.attempts if result else (error.attempts if error else 0)
        upstream_ms = result.upstream_ms if result else (error.upstream_ms if error else None)
        log.info(
            "completion request_id=%s source=%s backend=%s deployment=%s status=%d code=%s attempts=%d failovers=%s "
            "upstream_ms=%s prompt_tokens=%s completion_tokens=%s total_tokens=%s duration_ms=%.1f%s",
            request_id, source, result.backend.name if result else "-", result.backend.deployment if result else "-",
            outcome.status, error.code if error else "ok", attempts, result.failovers if result else "-",
            f"{upstream_ms:.1f}" if upstream_ms is not None else "-",
            usage.get("prompt_tokens", "-"), usage.get("completion_tokens", "-"), usage.get("total_tokens", "-"),
            (time.perf_counter() - started) * 1000, f" trace_id={trace_id}" if trace_id else "")
        if settings is not None and settings.log_text and params:
            log.info("completion text request_id=%s prompt=%r completions=%r", request_id, params.get("prompt"),
                     [choice["text"] for choice in outcome.body.get("choices", [])])


def _configure_logging(settings: Settings) -> None:
    # openai 0.28 logs whole request bodies (prompts) at DEBUG; keep them out of the
    # logs unless the operator asked for text logging.
    logging.getLogger("openai").setLevel(logging.DEBUG if settings.log_text else logging.INFO)
    if os.environ.get("OPENAI_LOG", "").lower() in ("debug", "info") and not settings.log_text:
        log.warning("OPENAI_LOG is set: openai 0.28 prints request bodies (prompts) to stderr itself, "
                    "whatever COMPLETIONS_LOG_TEXT says; unset it to keep prompts out of the logs")
    # azure-core logs every request of the Azure SDK clients (token endpoint, App Configuration,
    # Key Vault) at INFO, several lines each; what an operator needs from them is logged by the app.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(
        logging.INFO if settings.log_text else logging.WARNING)
    if any(backend.identity is not None for backend in settings.backends):
        from .credentials import quiet_identity_loggers

        quiet_identity_loggers(settings.log_text)


def _client_for(settings: Settings, clock: Clock, telemetry: Telemetry, previous: Pipeline | None) -> CompletionClient:
    """The client for ``settings``, keeping what still applies from the previous pipeline's:
    the same backends and limits keep the whole client (pool state, tokens, connections);
    otherwise token caches survive per identity, the pool's state when the backends are the
    same, and the connections when the endpoints and connection limits are."""
    old, before = (previous.client, previous.settings) if previous is not None else (None, None)
    if old is not None and before is not None and before.backends == settings.backends \
            and before.retry == settings.retry:
        return old
    tokens = {}
    identities = {backend.identity for backend in settings.backends if backend.identity is not None}
    if identities:
        from .credentials import TokenCache, build_credential  # identity modes only: not on key-auth cold start

        for identity in identities:  # one cache per identity and scope, shared by its backends
            auth, client_id, scope = identity
            tokens[identity] = (old.tokens.get(identity) if old is not None else None) or TokenCache(
                lambda auth=auth, client_id=client_id: build_credential(auth, client_id, settings.retry),
                scope, clock=clock, telemetry=telemetry)
    same_backends = before is not None and before.backends == settings.backends
    same_transport = before is not None and {b.endpoint for b in before.backends} == {
        b.endpoint for b in settings.backends} and (before.retry.max_connections, before.retry.max_response_bytes) \
        == (settings.retry.max_connections, settings.retry.max_response_bytes)
    return CompletionClient(settings.backends, settings.retry, tokens, clock=clock, telemetry=telemetry,
                            pool=old.pool if old is not None and same_backends else None,
                            http=old.http if old is not None and same_transport else None, previous=old)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def shape_response(upstream: dict[str, Any], deployment: str, backend: str) -> dict[str, Any]:
    """The app's 200 body: the upstream's fields the contract names, plus ``deployment``,
    ``backend`` (the pool's name for the deployment that answered) and ``text``."""
    choices = []
    for choice in upstream["choices"]:
        shaped = {"index": choice.get("index"), "text": choice.get("text", ""),
                  "finish_reason": choice.get("finish_reason"), "logprobs": choice.get("logprobs")}
        if "content_filter_results" in choice:
            shaped["content_filter_results"] = choice["content_filter_results"]
        choices.append(shaped)
    usage = upstream["usage"]
    body = {
        "id": upstream.get("id"), "object": "text_completion", "created": upstream.get("created"),
        "model": upstream.get("model"), "deployment": deployment, "backend": backend,
        "text": choices[0]["text"] if choices else "", "choices": choices,
        "usage": {name: usage.get(name, 0) for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
    }
    if "prompt_filter_results" in upstream:
        body["prompt_filter_results"] = upstream["prompt_filter_results"]
    return body


def _encode_answer(body: dict[str, Any]) -> str:
    """The answer's JSON. The client re-encodes a large answer to look for what JSON cannot carry
    only when its bytes hold ``NaN`` or ``Infinity``; what that lets through (a number too large
    for a float, such as ``1e400``, which reads as inf; nesting deeper than the encoder goes) is
    refused here, as 502 at once: the attempt already counted as the backend's success, so there
    is no failover. Azure OpenAI sends neither."""
    try:
        return json.dumps(body, allow_nan=False)
    except (ValueError, RecursionError):
        raise bad_response("Azure OpenAI sent a response with values JSON cannot carry.") from None
