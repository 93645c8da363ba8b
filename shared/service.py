"""The completion pipeline every trigger shares: validate, call upstream, shape, log.

One ``CompletionService`` per process holds the settings and the client built
from them (backends, token caches, connections). It never raises to its caller:
every request ends as an ``Outcome`` (a status, a JSON body, headers), and as
one log line.

Made when the host indexes the app, it loads its settings, builds its client and
imports the modules they need on first use (the first invocation): indexing imports
only the binding metadata, so a cold start compiles none of the core when the
package carries no bytecode for it (Flex Consumption runs from a read-only package).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .clock import SYSTEM_CLOCK, Clock
from .config import registry as R
from .telemetry.hooks import NOOP, InvocationStart, Telemetry

if TYPE_CHECKING:
    from .callers import Caller, CallerCheck
    from .config.appconfig import AppConfigSource
    from .config.settings import Limits, Settings
    from .handler import Operation
    from .outcome import Outcome
    from .upstream.client import CompletionClient
    from .upstream.transport import UpstreamHttp

log = logging.getLogger(__name__)
# Either names an Azure App Configuration store (config.appconfig, imported only then).
STORE_SETTINGS = (R.APPCONFIG_ENDPOINT.name, R.APPCONFIG_CONNECTION_STRING.name)


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
    the background, refreshed on a sentinel key; ``config.appconfig``) over them."""

    def __init__(self, settings: Settings | None, client: CompletionClient | None,
                 problems: Mapping[str, str] | None = None, *, clock: Clock = SYSTEM_CLOCK,
                 telemetry: Telemetry = NOOP, environ: Mapping[str, str] | None = None) -> None:
        """``environ``: app settings to load on first use instead (``settings`` and ``client`` None)."""
        self.clock = clock
        self.telemetry = telemetry  # metrics and traces (shared.telemetry.hooks): NOOP unless a switch is set
        self._loaded: Pipeline | None = None
        self._to_load = environ
        self._load_lock = threading.Lock()
        if environ is None:
            self._loaded = Pipeline(settings, client, dict(problems or {}), clock.time())
        self.after_load: Callable[[], None] | None = None  # called once, when settings are first loaded
        self._after_load_called = False
        self._source: AppConfigSource | None = None
        self._app_settings: Mapping[str, str] = {}
        self._first_load_wait = float(R.DEADLINE.default)  # how long a request may wait for the store's first load
        self._retired: list[tuple[float, UpstreamHttp]] = []  # replaced transports, closed once drained
        self._retired_due = math.inf  # the earliest of those times: requests look at this only
        self._retired_lock = threading.Lock()  # appended to on the store's thread, drained on the loop's
        # Whether the host lets requests through unchecked, so that the app checks callers itself
        # (binding metadata: function_app sets it when the host indexes the app; shared.callers).
        self.anonymous_routes = False

    @property
    def settings(self) -> Settings | None:
        return self._pipeline.settings

    @property
    def _pipeline(self) -> Pipeline:
        loaded = self._loaded
        return loaded if loaded is not None else self._load()

    @_pipeline.setter
    def _pipeline(self, pipeline: Pipeline) -> None:
        self._loaded = pipeline

    def _load(self) -> Pipeline:
        """The app settings given to ``from_environ``, loaded (and the client built) on first use."""
        from .config.settings import SettingsError, load_settings

        with self._load_lock:
            if self._loaded is not None:
                return self._loaded
            assert self._to_load is not None
            try:
                settings = load_settings(self._to_load)
                self._loaded = Pipeline(settings, self._client_for(settings), {}, self.clock.time())
            except SettingsError as exc:
                log.error("the app is not configured: %s", exc)  # names and reasons only, never values
                self._loaded = Pipeline(None, None, exc.problems, self.clock.time())
            except Exception as exc:  # noqa: BLE001 - every request would fail: 503 naming why, by type
                log.exception("the app's settings could not be applied")
                self._loaded = Pipeline(None, None, {"settings": f"could not be applied ({type(exc).__name__})"},
                                        self.clock.time())
            self._to_load = None
        self._after_first_load()
        return self._loaded

    def _after_first_load(self) -> None:
        if self.after_load is not None and not self._after_load_called:
            self._after_load_called = True
            self.after_load()

    def _client_for(self, settings: Settings, previous: Pipeline | None = None) -> CompletionClient:
        from .logs import configure_loggers
        from .upstream.build import client_for

        configure_loggers(settings)
        if previous is None:
            return client_for(settings, self.clock, self.telemetry)
        return client_for(settings, self.clock, self.telemetry, previous.client, previous.settings)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = SYSTEM_CLOCK,
                      telemetry: Telemetry = NOOP) -> CompletionService:
        service = cls(None, None, clock=clock, telemetry=telemetry)
        service._loaded = Pipeline(settings, service._client_for(settings), {}, clock.time())
        return service

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *,
                     clock: Clock = SYSTEM_CLOCK, telemetry: Telemetry = NOOP) -> CompletionService:
        """The service for this process's settings; unconfigured (answering 503) when they are
        invalid. With a store configured (``AZURE_APPCONFIG_ENDPOINT`` or ``_CONNECTION_STRING``)
        the first load starts in the background and this returns at once: indexing never
        waits for the store."""
        env = dict(os.environ if environ is None else environ)
        if not any((env.get(name) or "").strip() for name in STORE_SETTINGS):
            return cls(None, None, clock=clock, telemetry=telemetry, environ=env)  # loaded on first use
        from .config.appconfig import AppConfigSource  # only with a store: cold start is measured
        from .config.appconfig_bootstrap import AppConfigBootstrap
        from .config.settings import SettingsError, invocation_deadline

        try:
            bootstrap = AppConfigBootstrap.from_environ(env)
            if bootstrap is None:
                return cls(None, None, clock=clock, telemetry=telemetry, environ=env)
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
        """The store's values over the app settings, validated like app settings (an endpoint from
        the store must be an allowed host), then swapped in (on the source's thread; raises
        SettingsError, naming the store's keys for its values, to keep the last good set)."""
        from .config.settings import SettingsError, load_settings

        try:
            settings = load_settings({**self._app_settings, **values}, from_store=frozenset(values))
        except SettingsError as error:
            assert self._source is not None
            prefix = self._source.bootstrap.key_prefix
            raise SettingsError({(prefix + name if name in values else name): reason
                                 for name, reason in error.problems.items()}) from None
        self._install(settings)

    def _install(self, settings: Settings) -> None:
        previous = self._pipeline
        client = self._client_for(settings, previous)
        old = previous.client
        if old is not None and client.http is not old.http:
            retry = previous.settings.retry if previous.settings else None  # (a stream may outlast a deadline)
            drained_at = self.clock.monotonic() + (max(retry.deadline, retry.stream_seconds) + 5 if retry else 0)
            with self._retired_lock:
                self._retired.append((drained_at, old.http))
                self._retired_due = min(self._retired_due, drained_at)
        self._pipeline = Pipeline(settings, client, {}, self.clock.time())  # one assignment: atomic
        self._after_first_load()  # (from App Configuration: on the store's thread)

    async def aclose(self) -> None:
        """Close this service's connections on the running loop (shutdown, tests)."""
        if self._source is not None:
            self._source.stop()
        with self._retired_lock:
            retired, self._retired, self._retired_due = self._retired, [], math.inf
        for _, http in retired:
            await http.aclose()
        loaded = self._loaded  # (never loaded: nothing to close)
        if loaded is not None and loaded.client is not None:
            await loaded.client.http.aclose()

    # -- requests ------------------------------------------------------------
    async def complete(self, request: bytes | Any, request_id: str, *, source: str = "http") -> Outcome:
        """Run one completion. ``request`` is the raw body, or an already-decoded JSON document."""
        from .handler import Operation

        return await self.handle(Operation("completions"), request, request_id, source=source)

    async def chat(self, request: bytes | Any, request_id: str, *, source: str = "http") -> Outcome:
        """Run one chat completion (the app's contract)."""
        from .handler import Operation

        return await self.handle(Operation("chat"), request, request_id, source=source)

    async def handle(self, operation: Operation, request: bytes | Any, request_id: str, *, source: str = "http",
                     headers: Mapping[str, str] | None = None) -> Outcome:
        """Run one request of ``operation``: never raises; every request ends as an Outcome and a log line.
        ``headers`` (an HTTP request's, names lowercased): who is calling is checked first."""
        from .handler import OPERATION_NAMES
        from .invocation import Invocation

        settings = self._pipeline.settings
        start = InvocationStart(source, OPERATION_NAMES[operation.kind],
                                settings.backends[0].deployment if settings else None, request_id)
        with self.telemetry.invocation(start) as call:  # its span, its metrics (a stream's until it ends)
            return await Invocation(self, operation, request, request_id, source, headers, call).run()

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """Who sent a request with ``headers``; AppError 401 (nobody), or 503 (no settings to check with)."""
        from .callers import HOST

        settings = self._pipeline.settings
        if settings is None:
            if not self.anonymous_routes:
                return HOST
            raise self._not_configured()
        return self.caller_check(settings).caller(headers)

    def caller_check(self, settings: Settings) -> CallerCheck:
        from .callers import CallerCheck

        return CallerCheck(settings.callers.keys, settings.callers.platform, self.anonymous_routes)

    def models(self, model: str | None = None) -> dict[str, Any]:
        """The models callers may name, in OpenAI's list shape; one of them when ``model`` is given."""
        settings = self._pipeline.settings
        if settings is None:
            raise self._not_configured()
        created = int(self._pipeline.loaded_at)
        known = [{"id": name, "object": "model", "created": created, "owned_by": "azure-openai-completions"}
                 for name in dict.fromkeys(b.model for b in settings.backends)]
        if model is None:
            return {"object": "list", "data": known}
        found = next((entry for entry in known if entry["id"] == model), None)
        if found is None:
            from .upstream.routing import model_not_found

            raise model_not_found(model)
        return found

    @staticmethod
    def document(request: bytes | Any, limits: Limits) -> Any:
        from .contract.body import parse_json_body

        return parse_json_body(request, limits.max_body_bytes) if isinstance(request, (bytes, bytearray)) else request

    async def current(self, began: float) -> Pipeline:
        """The pipeline for a new invocation. While the store's first load is in progress, wait
        for it within the invocation's deadline (AZURE_OPENAI_DEADLINE from the app settings:
        the rest are not known yet); once a load attempt has failed, 503 at once."""
        source = self._source
        if source is not None:
            source.maybe_refresh()  # never blocks: at most every AZURE_APPCONFIG_REFRESH_SECONDS, a background check
            if self._pipeline.settings is None and source.state().status == "loading":
                left = self._first_load_wait - (self.clock.monotonic() - began)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(source.first_attempt), max(0.0, left))
                except TimeoutError:
                    pass
        if self._retired_due <= self.clock.monotonic():
            await self._close_drained()
        pipeline = self._pipeline
        if pipeline.settings is None:
            raise self._not_configured()
        return pipeline

    async def _close_drained(self) -> None:
        now = self.clock.monotonic()
        with self._retired_lock:
            drained = [http for when, http in self._retired if when <= now]
            self._retired = [(when, http) for when, http in self._retired if when > now]
            self._retired_due = min((when for when, _ in self._retired), default=math.inf)
        for http in drained:
            await http.aclose()

    def _not_configured(self) -> Exception:
        from .errors import not_configured

        return not_configured(self._problems())

    def _problems(self) -> Mapping[str, str]:
        if self._source is not None and self._pipeline.settings is None:
            state = self._source.state()
            return state.problems or {self._source.bootstrap.store_setting: state.status}
        return self._pipeline.problems

    def max_body_bytes(self) -> int:
        settings = self._pipeline.settings
        return settings.limits.max_body_bytes if settings else int(R.MAX_BODY_BYTES.default)

    def decode(self, body: bytes | bytearray) -> Any:
        """The JSON document in ``body`` (AppError 413/400 when too large or not JSON)."""
        from .contract.body import parse_json_body

        return parse_json_body(body, self.max_body_bytes())

    def health(self) -> Outcome:
        from .outcome import Outcome

        pipeline = self._pipeline
        configuration = self._source.describe() if self._source is not None else {
            "source": "app_settings", "loaded_at": _iso(pipeline.loaded_at), "last_refresh_error": None}
        if pipeline.settings is None or pipeline.client is None:
            return Outcome(503, {"status": "not_configured", "settings": dict(self._problems()),
                                 "configuration": configuration})
        client, first = pipeline.client, pipeline.settings.backends[0]
        backends = [{**state, "model": backend.model, "api": client.knowledge.api(backend)}
                    for state, backend in zip(client.pool.snapshot(), client.backends, strict=True)]
        return Outcome(200, {"status": "ok", "deployment": first.deployment, "model": first.model,
                             "api_version": first.api_version, "auth": first.auth, "backends": backends,
                             "configuration": configuration})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
