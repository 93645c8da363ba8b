"""One side of the chat and streaming benchmarks, in its own process:
``python -m benchmarks.async_worker SIDE SCENARIO CONFIG``.

SIDE is
- ``app``: one of the app's HTTP functions (``config["function"]``, default ``chat_completions``),
  in process: its user function called with the FastAPI ``Request`` the worker builds, on one
  event loop as the Functions worker runs it; a streamed answer's body read as uvicorn reads it;
- ``direct``: openai 0.28.1's ``ChatCompletion.acreate(deployment_id=...)`` straight at the
  emulator, on one event loop, with module-global configuration (a managed-identity token fetched
  once) and one shared aiohttp session (``openai.aiosession``; without it openai opens a new
  session, and connection, for every call), unlimited connections as the app's;
- ``http``: an aiohttp client POSTing ``config["body"]`` to ``config["url"]`` (the dev host).

Both sides of a chat row send the same request to the same deployment (``gpt-4.1-mini``, a chat
model). Prints one JSON line of results (interactive scenarios: one line per line of stdin).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.worker import Tally, function_request, rss_bytes

CHAT_DEPLOYMENT = "gpt-4.1-mini"
PROMPT = "The food was delicious and the waiter"
CHAT = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0}
SCOPE = "https://cognitiveservices.azure.com/.default"
PATHS = {"chat_completions": "/api/chat/completions", "completions": "/api/completions"}

# A call: a request body -> the status, and for a stream, the seconds to its first byte.
Call = Callable[[dict], Awaitable[tuple[int, float | None]]]
Close = Callable[[], Awaitable[None]]


def cpu_seconds(pid: int) -> float:
    """A process's CPU time (user + system, all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the sides ------------------------------------------------------------------------------------
def app_side(emulator: dict, config: dict) -> tuple[Call, Close]:
    os.environ.update({
        "AZURE_OPENAI_ENDPOINT": emulator["endpoint"], "AZURE_OPENAI_DEPLOYMENT": CHAT_DEPLOYMENT,
        "AZURE_OPENAI_AUTH": "managed_identity", "IDENTITY_ENDPOINT": emulator["identity_endpoint"],
        "IDENTITY_HEADER": emulator["identity_header"], "AZURE_OPENAI_TIMEOUT": "10",
        **config.get("settings", {}),
    })
    import function_app

    function = config.get("function", "chat_completions")
    user_function = getattr(function_app, function).build().get_user_function()
    path = PATHS[function]
    encoded: dict[int, bytes] = {}  # each body encoded once: the caller's work, not the app's

    async def call(body: dict) -> tuple[int, float | None]:
        raw = encoded.get(id(body)) or encoded.setdefault(id(body), json.dumps(body).encode())
        began = time.perf_counter()
        response = await user_function(function_request(raw, path))
        iterator = getattr(response, "body_iterator", None)
        if iterator is None:
            return response.status_code, None
        first = None
        try:
            async for _ in iterator:  # as uvicorn sends it: chunk by chunk
                if first is None:
                    first = time.perf_counter() - began
        finally:
            await iterator.aclose()
        return response.status_code, first

    return call, function_app.service.aclose


def direct_side(emulator: dict, loop: asyncio.AbstractEventLoop) -> tuple[Call, Close]:
    os.environ.update({"IDENTITY_ENDPOINT": emulator["identity_endpoint"],
                       "IDENTITY_HEADER": emulator["identity_header"]})
    import aiohttp
    import openai
    from azure.identity import ManagedIdentityCredential

    token = ManagedIdentityCredential().get_token(SCOPE)  # one hour: no refresh within a run
    openai.api_type, openai.api_base, openai.api_version = "azure_ad", emulator["endpoint"], config_api_version()
    openai.api_key = token.token

    async def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    # Set in this (the main) context: every task the loop runs starts from a copy of it.
    shared_session = loop.run_until_complete(session())
    openai.aiosession.set(shared_session)

    async def call(body: dict) -> tuple[int, float | None]:
        began = time.perf_counter()
        try:
            answer = await openai.ChatCompletion.acreate(deployment_id=CHAT_DEPLOYMENT, **body)
            if not body.get("stream"):
                return 200, None
            first = None
            async for _ in answer:
                if first is None:
                    first = time.perf_counter() - began
            return 200, first
        except openai.error.OpenAIError as error:  # a failed request, counted by its status
            return error.http_status or 599, None

    return call, shared_session.close


def config_api_version() -> str:
    from shared.config.registry import DEFAULT_API_VERSION  # the app's: both sides call the same API version

    return DEFAULT_API_VERSION


def http_side(config: dict, loop: asyncio.AbstractEventLoop) -> tuple[Call, Close]:
    import aiohttp

    async def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=60))

    client = loop.run_until_complete(session())
    url = config["url"]

    async def call(body: dict) -> tuple[int, float | None]:
        try:
            async with client.post(url, json=body) as response:
                await response.read()
                return response.status, None
        except aiohttp.ClientError:
            return 599, None

    return call, client.close


# -- scenarios -------------------------------------------------------------------------------------
async def closed_loop(call: Call, body: dict, callers: int, seconds: float, watch_pid: int | None = None,
                      sample_rss_after: float | None = None, warm_wave: bool = False) -> dict:
    """``callers`` coroutines, each calling again as soon as it has its answer, for ``seconds``
    (after one call outside the count, or with ``warm_wave`` one wave of ``callers`` concurrent
    calls: every connection open); the CPU of this process, or of ``watch_pid``'s, over that window."""
    await call(body)
    if warm_wave:
        await asyncio.gather(*(call(body) for _ in range(callers)))
    tally = Tally()
    rss: list[int] = []

    def cpu() -> float:
        return cpu_seconds(watch_pid) if watch_pid else time.process_time()

    started, cpu_started = time.monotonic(), cpu()
    stop_at = started + seconds
    if sample_rss_after is not None:
        asyncio.get_running_loop().call_later(sample_rss_after, lambda: rss.append(rss_bytes()))

    async def caller() -> None:
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            status, _ = await call(body)
            tally.add(status, time.perf_counter() - began)

    await asyncio.gather(*(caller() for _ in range(callers)))
    result = tally.result(time.monotonic() - started, cpu() - cpu_started)
    if rss:
        result["rss_in_flight"] = rss[0]
    return result


async def fan_out(call: Call, single: dict, many: dict, pairs: int) -> dict:
    """Sequential requests, a single-prompt one and a many-prompt one in turn (alternating which
    goes first): the seconds each took."""
    await call(single)
    await call(many)  # the many connections opened
    times: dict[str, list[float]] = {"single": [], "many": []}
    statuses: list[int] = []
    for number in range(pairs):
        for kind in (("single", "many") if number % 2 == 0 else ("many", "single")):
            began = time.perf_counter()
            status, _ = await call(single if kind == "single" else many)
            times[kind].append(time.perf_counter() - began)
            statuses.append(status)
    return {**times, "failed": sum(1 for status in statuses if status != 200)}


async def direct_fan_out(call: Call, single: dict, prompts: int, pairs: int) -> dict:
    """The same fan-out done by hand: ``prompts`` concurrent acreate calls, against one."""
    async def many_calls() -> tuple[int, None]:
        statuses = await asyncio.gather(*(call(single) for _ in range(prompts)))
        return max(status for status, _ in statuses), None

    await many_calls()
    times: dict[str, list[float]] = {"single": [], "many": []}
    for number in range(pairs):
        for kind in (("single", "many") if number % 2 == 0 else ("many", "single")):
            began = time.perf_counter()
            await (call(single) if kind == "single" else many_calls())
            times[kind].append(time.perf_counter() - began)
    return {**times, "failed": 0}


async def streams(call: Call, body: dict, count: int, seconds: float) -> dict:
    """``count`` concurrent streams (each about ``seconds`` long, the emulator's pacing): this
    process's CPU over the run, and its resident memory before, with all of them in flight
    (halfway), and after."""
    rss_before = rss_bytes()
    firsts: list[float] = []
    durations: list[float] = []
    statuses: dict[int, int] = {}
    rss_during: list[int] = []

    async def one() -> None:
        began = time.perf_counter()
        status, first = await call(body)
        statuses[status] = statuses.get(status, 0) + 1
        durations.append(time.perf_counter() - began)
        if first is not None:
            firsts.append(first)

    started, cpu_started = time.monotonic(), time.process_time()
    asyncio.get_running_loop().call_later(seconds / 2, lambda: rss_during.append(rss_bytes()))
    await asyncio.gather(*(one() for _ in range(count)))
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
    return {"ok": statuses.get(200, 0), "statuses": statuses, "seconds": elapsed, "cpu_seconds": cpu,
            "rss_before": rss_before, "rss_during": rss_during[0] if rss_during else None,
            "rss_after": rss_bytes(), "first_byte_median_s": statistics.median(firsts) if firsts else None,
            "duration_median_s": statistics.median(durations), "duration_max_s": max(durations)}


def main() -> int:
    side, scenario, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run = loop.run_until_complete
    emulator = config.get("emulator", {})
    call, close = (app_side(emulator, config) if side == "app" else direct_side(emulator, loop) if side == "direct"
                   else http_side(config, loop))
    body: dict[str, Any] = config.get("body", CHAT)

    if scenario in ("sequential", "first_byte"):
        # Interactive, for take_turns: each line on stdin asks for that many timed calls, answered
        # with their durations in ns (first_byte: to a stream's first byte; each stream read to its end).
        async def timed(count: int) -> list[int]:
            durations = []
            for _ in range(count):
                began = time.perf_counter_ns()
                status, first = await call(body)
                if status != 200:
                    raise SystemExit(f"{side}: a call failed with {status}")
                durations.append(int(first * 1e9) if scenario == "first_byte" else time.perf_counter_ns() - began)
            return durations

        run(timed(config.get("warmup", 100)))
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            print(json.dumps(run(timed(int(line)))), flush=True)
        run(close())
        return 0
    if scenario == "load":
        result = run(closed_loop(call, body, config["callers"], config["seconds"], config.get("watch_pid"),
                                 config.get("sample_rss_after"), config.get("warm_wave", False)))
    elif scenario == "fan_out" and side == "app":  # one request whose prompts the app fans out
        many = {**body, "prompt": [f"{body['prompt']} ({i + 1})" for i in range(config["prompts"])]}
        result = run(fan_out(call, body, many, config["pairs"]))
    elif scenario == "fan_out":  # the calls fanned out by hand
        result = run(direct_fan_out(call, body, config["prompts"], config["pairs"]))
    elif scenario == "streams":
        # Warm (the token, the connections, the code paths) while the emulator does not pace, then
        # wait for the word: the runner sets the pacing, and the streams start.
        run(asyncio.gather(*(call(body) for _ in range(config.get("warmup", 16)))))
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
        result = run(streams(call, body, config["count"], config["seconds"]))
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    run(close())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
