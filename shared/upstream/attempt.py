"""One upstream attempt: an openai 0.28 call to one backend, bounded twice over by the deadline.

Everything openai needs is passed per call (no ``openai.api_*`` globals), so concurrent
invocations cannot interfere; the only openai state set is the session hook
(``transport.UpstreamHttp``). aiohttp's total timeout is what is left of the deadline
(capped by ``AZURE_OPENAI_TIMEOUT``), and the call runs inside ``asyncio.timeout`` of the
same length, so not even an upstream that sends one byte a second keeps an invocation
past its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, NamedTuple

import openai

from ..clock import Deadline
from ..config.backends import BackendSettings
from ..config.settings import RetrySettings
from ..errors import AppError, credential_unavailable
from .failures import check_chat, check_completion, upstream_failure
from .plan import Plan
from .transport import Exchange, UpstreamHttp, bad_response

if TYPE_CHECKING:
    from .streaming import UpstreamStream
    from .tokens import TokenCache

# Above this size, an answer's JSON is re-encoded to look for NaN or Infinity only when its
# bytes contain those words: each pass of the C encoder or decoder holds the GIL (so moving it
# to a thread frees nothing) for about 25 ms per MiB, the event loop with it.
SCAN_ANSWERS_BELOW_BYTES = 256 * 1024


class PlainCompletion(openai.Completion):
    """openai's Completion answering with the JSON as parsed (dicts and lists), through the
    library's own ``plain_old_data`` switch, rather than as nested ``OpenAIObject``s: the app
    reads each response once, to check and reshape it, and the conversion (about 15 objects
    for an answer with content-filter annotations) was a fifth of the client's CPU per
    completion."""

    plain_old_data = True


class PlainChatCompletion(openai.ChatCompletion):
    """openai's ChatCompletion (``/chat/completions``), answering with plain JSON likewise."""

    plain_old_data = True


_API = {"completions": PlainCompletion, "chat": PlainChatCompletion}
_CHECK = {"completions": check_completion, "chat": check_chat}


def no_time() -> AppError:
    return AppError(504, "upstream_timeout", "No time was left to call Azure OpenAI within the deadline.",
                    retryable=True, deadline_exhausted=True)


class _Budget(NamedTuple):
    api_key: str
    connect: float
    total: float
    cut_by_deadline: bool  # this attempt gets less than its full time


class Target:
    """What openai needs to call one backend, prepared once."""

    def __init__(self, backend: BackendSettings, tokens: TokenCache | None) -> None:
        self.backend = backend
        self.tokens = tokens
        self.per_call = {
            # openai sends "Authorization: Bearer <api_key>" for azure_ad, "api-key" for azure.
            "api_type": "azure" if tokens is None else "azure_ad",
            "api_base": backend.endpoint,
            "api_version": backend.api_version,
            "deployment_id": backend.deployment,
        }

    async def _budget(self, deadline: Deadline, retry: RetrySettings, min_attempt: float) -> _Budget:
        """The key or token, and the time this attempt has (its wait for a token counts)."""
        before = deadline.remaining()
        api_key = (self.backend.api_key or "") if self.tokens is None else \
            await self.tokens.get(deadline, reserve=min_attempt)
        remaining = deadline.remaining()
        if remaining < min_attempt:
            if self.tokens is not None and before - remaining > 0.001:  # the token came too late to use
                raise credential_unavailable(deadline_exhausted=True)
            raise no_time()
        total = min(retry.read_timeout, remaining)
        return _Budget(api_key, min(retry.connect_timeout, total), total, remaining < retry.read_timeout)

    async def call(self, plan: Plan, deadline: Deadline, request_id: str, *, http: UpstreamHttp,
                   retry: RetrySettings, min_attempt: float) -> tuple[list[dict[str, Any]], Exchange]:
        """The answers (one per call of the plan, concurrently) and what the transport saw of the
        last; AppError (translated at ``failures``) when any call fails: the others are cancelled."""
        budget = await self._budget(deadline, retry, min_attempt)
        if len(plan.calls) == 1:
            response, exchange = await self._one(plan.api, plan.calls[0], budget, request_id, http)
            return [response], exchange
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._one(plan.api, params, budget, request_id, http))
                         for params in plan.calls]
        except* AppError as failed:
            raise failed.exceptions[0] from None
        done = [task.result() for task in tasks]
        return [response for response, _ in done], done[-1][1]

    async def open(self, plan: Plan, deadline: Deadline, request_id: str, *, http: UpstreamHttp,
                   retry: RetrySettings, min_attempt: float, until: float) -> UpstreamStream:
        """The plan's calls as streams, each open and past its first chunk (within this attempt's
        time); ``until``: the loop's time by which the whole stream must end."""
        budget = await self._budget(deadline, retry, min_attempt)
        usage = {"stream_options": {"include_usage": True}} if plan.api == "chat" else {}
        calls = [{**params, "stream": True, **usage} for params in plan.calls]
        tasks: list[asyncio.Task] = []
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._open_one(plan.api, params, budget, request_id, http, until))
                         for params in calls]
        except* AppError as failed:
            for task in tasks:  # close the streams that did open
                if task.done() and not task.cancelled() and task.exception() is None:
                    await task.result()[0].aclose()
            raise failed.exceptions[0] from None
        opened = [task.result() for task in tasks]
        from .streaming import UpstreamStream  # only streams need it (and are built here)

        return UpstreamStream([o[0] for o in opened], [o[1] for o in opened], [o[2] for o in opened],
                              between=retry.read_timeout, until=until, max_bytes=retry.max_response_bytes)

    async def _open_one(self, api: str, params: dict[str, Any], budget: _Budget, request_id: str,
                        http: UpstreamHttp, until: float) -> tuple[AsyncGenerator[Any, None], Any, Exchange]:
        from .streaming import readable_chunk

        stream: Any = None
        whole = max(0.1, until - asyncio.get_running_loop().time())
        with http.exchange() as exchange:
            try:
                async with asyncio.timeout(budget.total):  # the first chunk within the attempt's time
                    stream = await _API[api].acreate(
                        **self.per_call, api_key=budget.api_key, **params, request_id=request_id,
                        request_timeout=(budget.connect, whole), timeout=-1)
                    if not isinstance(stream, AsyncGenerator):  # a 200 that is not a stream
                        raise bad_response("Azure OpenAI answered a stream request without a stream.")
                    first = await anext(stream)
                    if not readable_chunk(first):  # (before the first byte: a failed attempt, retried)
                        raise bad_response("Azure OpenAI sent a stream the app cannot read.")
            except Exception as exc:  # noqa: BLE001 - every failure is translated, at one boundary
                if exchange.response is not None:
                    exchange.response.close()
                raise self._failure(exc, exchange, budget) from None
        return stream, first, exchange

    async def _one(self, api: str, params: dict[str, Any], budget: _Budget, request_id: str,
                   http: UpstreamHttp) -> tuple[dict[str, Any], Exchange]:
        with http.exchange() as exchange:
            try:
                async with asyncio.timeout(budget.total):
                    response = await _API[api].acreate(
                        **self.per_call, api_key=budget.api_key, **params, request_id=request_id,
                        request_timeout=(budget.connect, budget.total),
                        # openai retries HTTP 409 in a loop until `timeout` seconds of the wall
                        # clock have passed; -1 has passed already, even if the clock steps back,
                        # so it raises TryAgain at once and our policy decides.
                        timeout=-1,
                    )
            except Exception as exc:  # noqa: BLE001 - every failure is translated, at one boundary
                raise self._failure(exc, exchange, budget) from None
        _CHECK[api](response, scan=exchange.size < SCAN_ANSWERS_BELOW_BYTES or exchange.json_constants)
        return response, exchange

    def _failure(self, exc: Exception, exchange: Exchange, budget: _Budget) -> AppError:
        """What an attempt's call raised, translated (``failures``); a refused token leaves the cache."""
        error = upstream_failure(exc, exchange)
        if error.upstream_status == 401 and self.tokens is not None:
            self.tokens.invalidate(budget.api_key)
        if budget.cut_by_deadline and error.code == "upstream_timeout" and error.upstream_status is None:
            error = error.replace(deadline_exhausted=True)  # no answer in the time the caller had left
        return error
