"""The completion pipeline every trigger shares: validate, call upstream, shape, log.

One ``CompletionService`` per process holds the settings, the credential and
its token cache. It never raises to its caller: every request ends as an
``Outcome`` (a status, a JSON body, headers), and as one log line.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from .completion_client import CompletionClient, UpstreamResult
from .errors import AppError, internal_error, not_configured
from .retry import SYSTEM_CLOCK, Clock, Deadline
from .settings import Limits, Settings, SettingsError, load_settings
from .telemetry import NOOP, Telemetry
from .validation import parse_json_body, validate_completion_request

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

    @property
    def ok(self) -> bool:
        return self.status == 200


class CompletionService:
    def __init__(self, settings: Settings | None, client: CompletionClient | None,
                 problems: Mapping[str, str] | None = None, *, clock: Clock = SYSTEM_CLOCK,
                 telemetry: Telemetry = NOOP) -> None:
        self.settings = settings
        self.telemetry = telemetry  # metrics and traces (shared.telemetry): NOOP unless a switch is set
        self._client = client
        self._problems = dict(problems or {})
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = SYSTEM_CLOCK,
                      telemetry: Telemetry = NOOP) -> "CompletionService":
        # openai 0.28 logs whole request bodies (prompts) at DEBUG; keep them out of the
        # logs unless the operator asked for text logging.
        logging.getLogger("openai").setLevel(logging.DEBUG if settings.log_text else logging.INFO)
        if os.environ.get("OPENAI_LOG", "").lower() in ("debug", "info") and not settings.log_text:
            log.warning("OPENAI_LOG is set: openai 0.28 prints request bodies (prompts) to stderr itself, "
                        "whatever COMPLETIONS_LOG_TEXT says; unset it to keep prompts out of the logs")
        tokens = {}
        identities = {backend.identity for backend in settings.backends if backend.identity is not None}
        if identities:
            # identity modes only: not on key-auth cold start
            from .credentials import TokenCache, build_credential, quiet_identity_loggers

            quiet_identity_loggers(settings.log_text)
            for auth, client_id, scope in identities:  # one cache per identity and scope, shared by its backends
                tokens[(auth, client_id, scope)] = TokenCache(
                    lambda auth=auth, client_id=client_id: build_credential(auth, client_id, settings.retry),
                    scope, clock=clock, telemetry=telemetry)
        client = CompletionClient(settings.backends, settings.retry, tokens, clock=clock, telemetry=telemetry)
        return cls(settings, client, clock=clock, telemetry=telemetry)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *,
                     clock: Clock = SYSTEM_CLOCK, telemetry: Telemetry = NOOP) -> "CompletionService":
        """The service for this process's settings; unconfigured (answering 503) when they are invalid."""
        try:
            settings = load_settings(os.environ if environ is None else environ)
        except SettingsError as exc:
            log.error("the app is not configured: %s", exc)  # names and reasons only, never values
            return cls(None, None, exc.problems, clock=clock, telemetry=telemetry)
        return cls.from_settings(settings, clock=clock, telemetry=telemetry)

    async def aclose(self) -> None:
        """Close this service's connections on the running loop (shutdown, tests)."""
        if self._client is not None:
            await self._client.http.aclose()

    # -- requests ------------------------------------------------------------
    async def complete(self, request: bytes | Any, request_id: str, *, source: str = "http") -> Outcome:
        """Run one completion. ``request`` is the raw body, or an already-decoded JSON document."""
        with self.telemetry.invocation(source, self.settings, request_id) as call:  # its span, its metrics
            return await self._complete(request, request_id, source, call)

    async def _complete(self, request: bytes | Any, request_id: str, source: str, call: Any) -> Outcome:
        started = time.perf_counter()
        result: UpstreamResult | None = None
        params: dict[str, Any] = {}
        try:
            settings = self._configured()
            deadline = Deadline(settings.retry.deadline, self._clock)
            data = parse_json_body(request, settings.limits) if isinstance(request, (bytes, bytearray)) else request
            params = validate_completion_request(data, settings.limits)
            assert self._client is not None
            result = await self._client.complete(params, deadline, request_id)
            outcome = Outcome(200, shape_response(result.response, result.backend.deployment, result.backend.name))
        except AppError as exc:
            outcome = Outcome(exc.status, exc.body(request_id), exc.headers(), exc)
        except Exception:  # noqa: BLE001 - the caller gets a coded 500, the log gets the traceback
            log.exception("completion request_id=%s failed unexpectedly", request_id)
            error = internal_error()
            outcome = Outcome(error.status, error.body(request_id), error.headers(), error)
        call.finish(outcome, result, params)
        self._log(outcome, result, params, request_id, source, started, call.trace_id)
        return outcome

    def decode(self, body: bytes) -> Any:
        """The JSON document in ``body`` (AppError 413/400 when too large or not JSON)."""
        return parse_json_body(body, self.settings.limits if self.settings else Limits())

    def health(self) -> Outcome:
        if self.settings is None:
            return Outcome(503, {"status": "not_configured", "settings": self._problems})
        first = self.settings.backends[0]
        assert self._client is not None
        return Outcome(200, {"status": "ok", "deployment": first.deployment, "api_version": first.api_version,
                             "auth": first.auth, "backends": self._client.pool.snapshot()})

    def _configured(self) -> Settings:
        if self.settings is None:
            raise not_configured(sorted(self._problems))
        return self.settings

    def _log(self, outcome: Outcome, result: UpstreamResult | None, params: dict[str, Any],
             request_id: str, source: str, started: float, trace_id: str = "") -> None:
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
        if self.settings is not None and self.settings.log_text and params:
            log.info("completion text request_id=%s prompt=%r completions=%r", request_id, params.get("prompt"),
                     [choice["text"] for choice in outcome.body.get("choices", [])])


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
