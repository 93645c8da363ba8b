"""Completions from a pool of Azure OpenAI deployments, with failover, retries and a deadline.

openai 0.28 retries nothing on POST and loops forever on HTTP 409, so retries are
ours, decided by the ``RetryPolicy``: on 408, 409, 429, 5xx, timeouts, dropped
connections, broken bodies and token-endpoint failures; never on other 4xx. A
failure that is not the caller's cools its backend and the request goes at once to
the next ready one (each at most once per round); when none is left, it waits for
the earliest recovery if that fits the deadline and the retry budget.

What a deployment's answer teaches (its API, the parameters it refuses:
``knowledge``) is learned once and the same request goes again at once (to that
backend, or another of the same priority: the pool chooses), without the caller
seeing that answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple

from ..clock import SYSTEM_CLOCK, Clock, Deadline
from ..config.backends import BackendSettings
from ..config.settings import ChatSettings, RetrySettings
from ..errors import AppError
from ..telemetry.hooks import NOOP, Telemetry
from .attempt import Target, no_time
from .failures import rate_limited, upstream_unavailable
from .knowledge import ADAPTABLE, REFUSAL_CODES, Knowledge
from .plan import Plan, Request, plan_for
from .pool import DEFAULT_COOLDOWN, BackendPool, FailureKind, Recovery
from .retry import RetryPolicy
from .routing import Route
from .slots import Slots
from .transport import UpstreamHttp

if TYPE_CHECKING:
    from .streaming import UpstreamStream  # (imported by the first stream)
    from .tokens import TokenCache

log = logging.getLogger(__name__)
MAX_LESSONS = len(ADAPTABLE) + 2  # what one request may learn before it stops trying again at once
DEFAULT_CHAT = ChatSettings()


class UpstreamResult(NamedTuple):
    responses: list[dict[str, Any]]  # one per call of the plan (several: prompts fanned out to a chat deployment)
    plan: Plan  # what was sent: the API, what was adjusted
    attempts: int
    upstream_ms: float  # time spent in upstream attempts, waits excluded
    headers: Mapping[str, str]  # of the answer that succeeded
    backend: BackendSettings  # the backend that answered
    failovers: int  # attempts that went to another backend at once after a failure
    stream: UpstreamStream | None = None  # the answer streams: its first chunks are read
    release: Callable[[], None] | None = None  # gives a stream's concurrency slots back (once it ends)


class _Call:
    """One request's way through the pool: what it tried, and what it learned."""

    def __init__(self, request: Request, route: Route, deadline: Deadline, request_id: str,
                 chat: ChatSettings, until: float | None = None) -> None:
        self.request, self.route, self.deadline, self.request_id, self.chat = request, route, deadline, request_id, chat
        self.until = until  # a stream: the loop's time by which it must have ended (None: not a stream)
        self.tried: set[str] = set(route.excluded)  # backends tried in this round, and those that cannot serve it
        self.reauthenticated: set[str] = set()
        self.switched: set[str] = set()  # backends whose API this request switched
        self.lessons = 0
        self.attempts = self.rounds = self.failovers = 0
        self.upstream_seconds = 0.0
        self.last: AppError | None = None

    def new_round(self) -> None:
        """After an attempt of its own, a round of the retry budget; waiting alone costs none."""
        if self.tried - self.route.excluded:
            self.rounds += 1
        self.tried = set(self.route.excluded)

    def given_up(self, error: AppError) -> AppError:
        """``error`` as the final answer, with what this call cost."""
        return _final(error.replace(attempts=self.attempts, upstream_ms=self.upstream_seconds * 1000))


class CompletionClient:
    """Completions from a pool of backends (one, unless AZURE_OPENAI_BACKENDS lists more).

    ``tokens`` maps each identity (``BackendSettings.identity``) to its token cache;
    backends with the same identity and scope share one."""

    def __init__(self, backends: Sequence[BackendSettings], retry: RetrySettings,
                 tokens: Mapping[tuple, TokenCache], *, http: UpstreamHttp | None = None,
                 pool: BackendPool | None = None, policy: RetryPolicy | None = None, clock: Clock = SYSTEM_CLOCK,
                 rng: random.Random | None = None, telemetry: Telemetry = NOOP,
                 previous: CompletionClient | None = None) -> None:
        """``previous``: the client these settings replace; its concurrency slots carry over when
        the limit is the same (invocations in flight on it still count against this one). (What
        cooled each backend lives in the pool, which carries over when the backends are the same.)"""
        self._targets: dict[str, Target] = {}
        for backend in backends:
            if (backend.identity is None) == (backend.identity in tokens):
                raise ValueError(f"backend {backend.name}: a token cache is needed exactly when auth is not key")
            self._targets[backend.name] = Target(backend, tokens[backend.identity] if backend.identity else None)
        self.backends = tuple(backends)
        self._retry = retry
        self._clock = clock
        self._rng = rng
        self._policy = policy or RetryPolicy(max_retries=retry.max_retries)
        self.tokens = dict(tokens)
        self.pool = pool or BackendPool(backends, clock=clock.monotonic, wall_clock=clock.time, rng=rng,
                                        max_cooldown=retry.max_cooldown)
        self.knowledge: Knowledge = previous.knowledge if previous is not None and previous.backends == self.backends \
            else Knowledge()
        self._http = http or UpstreamHttp([b.endpoint for b in backends], max_connections=retry.max_connections,
                                          max_response_bytes=retry.max_response_bytes)
        self._slots: Slots = previous._slots if previous is not None and previous._slots.size == retry.max_concurrency \
            else Slots(retry.max_concurrency)
        self._telemetry = telemetry

    @property
    def http(self) -> UpstreamHttp:
        return self._http

    async def complete(self, request: Request, deadline: Deadline, request_id: str, *, model: str | None = None,
                       chat: ChatSettings = DEFAULT_CHAT) -> UpstreamResult:
        """The upstream's answers; AppError when it fails for good or time runs out. ``model``: the
        name callers use for the backends that may serve it (the first backend's when None)."""
        route = Route.for_request(request, self.backends, self.knowledge, model)
        if deadline.remaining() < self._policy.min_attempt:  # spent before it got here (e.g. waiting for settings)
            raise no_time()
        async with self._slots.held(deadline, self._telemetry, self._policy.min_attempt, count=route.calls):
            return await self._complete_with_failover(_Call(request, route, deadline, request_id, chat))

    async def stream(self, request: Request, deadline: Deadline, request_id: str, *, until: float,
                     model: str | None = None, chat: ChatSettings = DEFAULT_CHAT) -> UpstreamResult:
        """As ``complete``, for an answer that streams: ``result.stream`` has read its first chunks
        (every retry and failover happens before that), and the request keeps its concurrency slots
        until ``result.release()``. ``until``: the loop's time by which the whole stream must end."""
        route = Route.for_request(request, self.backends, self.knowledge, model)
        if deadline.remaining() < self._policy.min_attempt:
            raise no_time()
        release = await self._slots.acquire(deadline, self._telemetry, self._policy.min_attempt, count=route.calls)
        try:
            result = await self._complete_with_failover(_Call(request, route, deadline, request_id, chat, until))
        except BaseException:
            release()
            raise
        return result._replace(release=release)

    async def _complete_with_failover(self, call: _Call) -> UpstreamResult:
        """Try the pool's choice; on a failure that is not the caller's, go at once to the next
        ready backend; when none is left to try, wait for a new round or give up."""
        while True:
            call.route.check_servable(call.tried)
            backend = self.pool.choose(max_tokens=call.route.tokens_needed, tried=call.tried, owner=call)
            if backend is None:
                await self._next_round(call)
                continue
            if call.deadline.remaining() < self._policy.min_attempt:
                self.pool.release(backend, call)  # (chosen as a probe: give the role back)
                raise call.given_up(call.last or no_time())
            try:
                result = await self._try(call, backend)
            finally:
                self.pool.release(backend, call)  # (a probe that ended without an answer: the next one probes)
            if result is not None:
                return result

    async def _next_round(self, call: _Call) -> None:
        """Wait for the earliest recovery and start a new round; raises the final answer when
        nothing is worth waiting for, or the policy says the budget or the deadline does not allow it."""
        recovery = self.pool.next_recovery(among=call.route.names)
        wait = self._wait_for_recovery(recovery, call)
        if wait is None:
            raise _given_up(call, call.last or self._pool_answer(recovery, call.route.names), recovery)
        call.new_round()
        self._telemetry.retry_wait(wait)
        if recovery is not None and recovery.probe is not None:  # follow the probe's outcome
            await self._follow(recovery.probe, call.deadline)
        elif wait > 0:
            log.info("request_id=%s: no Azure OpenAI backend ready (last: %s); retrying in %.2f s",
                     call.request_id, call.last.code if call.last else "-", wait)
            await self._clock.sleep(wait)

    async def _follow(self, probe: Future, deadline: Deadline) -> None:
        """Wait for a probe to decide, within the deadline (less the time an attempt needs)."""
        try:
            await asyncio.wait_for(asyncio.wrap_future(probe), deadline.remaining() - self._policy.min_attempt)
        except TimeoutError:
            pass

    async def _try(self, call: _Call, backend: BackendSettings) -> UpstreamResult | None:
        """One attempt to ``backend``: the result, or None when the request should go on."""
        try:
            plan = plan_for(call.request, self.knowledge.api(backend), self.knowledge.refused(backend)
                            if call.chat.adapt_parameters else frozenset(), call.chat.instructions)
        except AppError as error:  # the caller's: what the request asks has no equivalent on this API
            raise call.given_up(error) from None
        attempt = self._telemetry.attempt(backend, call.attempts + 1,
                                          "failover" if call.tried - call.route.excluded else
                                          "retry" if call.attempts else "first", plan.api)
        if call.tried - call.route.excluded:
            call.failovers += 1
        call.tried.add(backend.name)
        call.attempts += 1
        started = time.perf_counter()
        target, stream = self._targets[backend.name], None
        try:
            if call.until is None:
                responses, exchange = await target.call(plan, call.deadline, call.request_id, http=self._http,
                                                        retry=self._retry, min_attempt=self._policy.min_attempt)
            else:
                stream = await target.open(plan, call.deadline, call.request_id, http=self._http, retry=self._retry,
                                           min_attempt=self._policy.min_attempt, until=call.until)
                responses, exchange = [], stream.exchange
        except AppError as error:
            attempt.end(error.upstream_status, error.code)
            call.upstream_seconds += time.perf_counter() - started
            if not self._learned(call, backend, plan, error):
                self._failed(call, backend, self._named(backend, error))
            return None
        attempt.end(exchange.status)
        call.upstream_seconds += time.perf_counter() - started
        self.pool.record_success(backend, exchange.headers)
        return UpstreamResult(responses, plan, call.attempts, call.upstream_seconds * 1000, exchange.headers, backend,
                              call.failovers, stream)

    def _learned(self, call: _Call, backend: BackendSettings, plan: Plan, error: AppError) -> bool:
        """Whether ``error`` taught something about ``backend`` (its API, a parameter it refuses):
        then the request goes to it again at once, as the lesson says."""
        if call.lessons >= MAX_LESSONS or error.upstream_status != 400:
            return False
        if error.upstream_code == "OperationNotSupported":
            if backend.api != "auto" or backend.name in call.switched:
                return False
            call.switched.add(backend.name)
            self.knowledge.switch_api(backend, plan.api)
            if call.request.operation == "chat" and self.knowledge.api(backend) == "completions":
                call.route = call.route.without(backend.name)  # it cannot serve chat: others may
                call.tried.add(backend.name)
        elif (error.upstream_code in REFUSAL_CODES and error.param in ADAPTABLE and plan.api == "chat"
              and call.chat.adapt_parameters and error.param in plan.calls[0]):
            self.knowledge.refuse(backend, error.param)
        else:
            return False
        call.lessons += 1
        if backend.name not in call.route.excluded:
            call.tried.discard(backend.name)
        return True

    def _named(self, backend: BackendSettings, error: AppError) -> AppError:
        """An API mismatch, named by the setting that chose the API."""
        if error.upstream_code != "OperationNotSupported":
            return error
        api = self.knowledge.api(backend)
        return error.replace(message=f"The deployment of backend '{backend.name}' does not serve {api} completions: "
                                     f"check {backend.api_setting} (its api: chat, completions or auto).")

    def _failed(self, call: _Call, backend: BackendSettings, error: AppError) -> None:
        """Raise the final answer, or record the failure against ``backend`` so the request goes on."""
        if error.deadline_exhausted:  # the caller's time ran out: nothing to hold against the backend
            raise call.given_up(error)
        if error.code == "credential_unavailable":  # the identity's failure, not the deployment's: not cooled
            log.info("request_id=%s: no token for backend %s (%s)", call.request_id, backend.name, error.code)
            call.last = error
            return
        kind = _pool_failure(error)
        if kind is None:  # the caller's own error: the backend answered, and no other would differ
            if error.upstream_status is not None:
                self.pool.record_success(backend, error.upstream_headers)
            raise call.given_up(error)
        if (error.upstream_status == 401 and self._targets[backend.name].tokens is not None
                and backend.name not in call.reauthenticated):
            # The token was refused (revoked, or the role assignment changed): the attempt
            # dropped it from the cache; one more attempt, at once, with a fresh token.
            call.reauthenticated.add(backend.name)
            call.tried.discard(backend.name)
            log.info("request_id=%s: backend %s refused the token (HTTP 401); retrying at once with a "
                     "new one", call.request_id, backend.name)
            return
        # Upstream's wait when it named one; else 10 s for a pool, or, for a pool of one,
        # none: each caller then waits its own jittered backoff (_wait_for_recovery), as
        # callers of a single endpoint always have, rather than all at the longest drawn.
        cooldown = error.retry_after if error.retry_after is not None else \
            0.0 if len(self.pool) == 1 else DEFAULT_COOLDOWN
        self.pool.record_failure(backend, kind, error.upstream_headers if error.upstream_status in (429, 503)
                                 else None, default_cooldown=cooldown,
                                 cause=error.replace(),  # a copy: no traceback, whose frames hold the token
                                 detail=f"{error.code}, HTTP {error.upstream_status or '-'}")
        # INFO, per attempt: an outage fails every caller's attempts at once, and the lines
        # an operator acts on are the pool's and the token cache's, once per episode.
        log.info("request_id=%s: attempt %d to backend %s failed (%s, HTTP %s)", call.request_id, call.attempts,
                 backend.name, error.code, error.upstream_status or "-")
        call.last = error

    def _pool_answer(self, recovery: Recovery | None, among: frozenset[str]) -> AppError | None:
        """For a request that found no backend ready: the failure that cooled them, when they
        all failed the same way (always, for a pool of one: its callers hear what upstream
        said, as they always have); else None, and the pool's state decides."""
        if recovery is None:
            return None
        cooling = self.pool.cooling_causes(among=among)
        failure = cooling[0] if cooling else None
        if failure is None or any(other is None or other.code != failure.code for other in cooling):
            return None
        return AppError(failure.status, failure.code, failure.message, param=failure.param,
                        retryable=failure.retryable, details=failure.details)

    def _wait_for_recovery(self, recovery: Recovery | None, call: _Call) -> float | None:
        """Seconds to wait before the next round, or None to give up now."""
        if recovery is not None and recovery.misconfigured:
            return None
        wait = 0.0 if recovery is None else recovery.seconds
        last = call.last
        if recovery is None and last is not None and last.code == "credential_unavailable":
            if not last.retryable:
                return None  # the credential cannot be made: waiting will not help
            wait = last.retry_after or 0.0  # the token cache's own window
        if len(call.route.names) == 1 and call.last is not None and call.last.retry_after is None:
            wait = max(wait, self._policy.backoff(call.rounds + 1, self._rng))  # its own, jittered (see the cooldown)
        return self._policy.next_round(call.rounds, wait, call.deadline.remaining(), attempted=call.last is not None)


def _pool_failure(error: AppError) -> FailureKind | None:
    """How a failed attempt counts against its backend; None for the caller's own errors
    (and other final answers), which no other backend would answer differently."""
    if error.code == "upstream_misconfigured":
        return "misconfigured"
    if not error.retryable:
        return None
    return "throttled" if error.status == 429 else "unavailable"


def _given_up(call: _Call, last: AppError | None, recovery: Recovery | None) -> AppError:
    """The answer once no backend can be tried within the deadline: this request's last
    failure (so a pool of one answers as it always has), or, when it made no attempt, what
    the pool's state says; ``Retry-After`` is the earliest recovery, when known."""
    if last is None:
        if recovery is not None and recovery.misconfigured:
            last = AppError(502, "upstream_misconfigured", "Every Azure OpenAI backend is misconfigured (it "
                            "refused the app's credentials or has no such deployment): check the app's settings "
                            "and role assignments.")
        elif recovery is not None and recovery.all_throttled:
            last = rate_limited()
        else:
            last = upstream_unavailable()
    if recovery is not None and not recovery.misconfigured and last.retryable:
        last = last.replace(retry_after=recovery.seconds)  # when the pool can serve again, whichever backend it is
    return call.given_up(last)


def _final(failure: AppError) -> AppError:
    """The error to give the caller once retrying stops."""
    if failure.status == 429 and failure.retry_after is None:
        return failure.replace(retry_after=1.0)
    return failure
