"""One side of one benchmark, in its own process: ``python -m benchmarks.worker SIDE SCENARIO CONFIG``.

SIDE is ``app`` (the function's user function, a coroutine: the FastAPI ``Request``
the worker builds in, a ``Response`` out (the streaming extension's types), settings
from the environment as in Azure, run on one event loop as the Functions worker runs
it) or ``baseline`` (the seed guide: ``openai.Completion.create`` with global
configuration, on threads). Each side
runs in a separate process because openai's sessions and globals would otherwise
be shared between them. Prints one JSON line of results.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

REQUEST = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


def app_call(emulator: dict, settings: dict | None = None) -> Callable[[], Awaitable[int]]:
    os.environ.update({
        "AZURE_OPENAI_ENDPOINT": emulator["endpoint"], "AZURE_OPENAI_DEPLOYMENT": "gpt-35-turbo-instruct",
        "AZURE_OPENAI_AUTH": "managed_identity", "IDENTITY_ENDPOINT": emulator["identity_endpoint"],
        "IDENTITY_HEADER": emulator["identity_header"], "AZURE_OPENAI_TIMEOUT": "10", **(settings or {}),
    })
    import function_app

    user_function = function_app.completions.build().get_user_function()
    body = json.dumps(REQUEST).encode()

    async def call() -> int:
        return (await user_function(function_request(body))).status_code

    return call


def function_request(body: bytes, path: str = "/api/completions", path_params: dict[str, str] | None = None):
    """The FastAPI ``Request`` the worker hands an HTTP function of the app for a POST of ``body``
    (the tests' builder: tests/support/worker_requests.py)."""
    from tests.support.worker_requests import http_request

    return http_request("POST", path, body, {"content-type": "application/json",
                                             "content-length": str(len(body))}, path_params)


def baseline_call(emulator: dict) -> Callable[[], int]:
    os.environ.update({"IDENTITY_ENDPOINT": emulator["identity_endpoint"],
                       "IDENTITY_HEADER": emulator["identity_header"]})
    import openai.error

    from benchmarks import seed_guide

    seed_guide.configure(emulator["endpoint"], "2024-10-21")

    def call() -> int:
        try:
            seed_guide.complete("gpt-35-turbo-instruct", **REQUEST)
            return 200
        except openai.error.OpenAIError as error:  # a failed request, counted by its status
            return error.http_status or 599
        except Exception:  # noqa: BLE001 - a failed request, counted
            return 599

    return call


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Tally:
    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []

    def add(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(seconds)

    def result(self, seconds: float, cpu: float) -> dict:
        ok = self.statuses.get(200, 0)
        return {"ok": ok, "failed": sum(self.statuses.values()) - ok, "statuses": self.statuses,
                "seconds": seconds, "cpu_seconds": cpu,
                "median_ms": statistics.median(self.latencies) * 1000 if self.latencies else None}


# -- closed loop: N callers, each calling again as soon as it has its answer --------------------
def run_threads(call: Callable[[], int], total: int | None, callers: int, seconds: float | None = None,
                sample_rss_after: float | None = None) -> dict:
    """The baseline: ``callers`` threads (one first call outside the count: credential, token
    and connection set up, as the guide's configure() does before its first call)."""
    lock = threading.Lock()
    counts = {"started": 0}
    tally = Tally()
    stop_at = None if seconds is None else time.monotonic() + seconds

    def loop() -> None:
        while True:
            with lock:
                if (total is not None and counts["started"] >= total) or (
                        stop_at is not None and time.monotonic() >= stop_at):
                    return
                counts["started"] += 1
            began = time.perf_counter()
            status = call()
            with lock:
                tally.add(status, time.perf_counter() - began)

    rss: list[int] = []
    with ThreadPoolExecutor(callers) as pool:
        pool.submit(call).result()
        started, cpu = time.monotonic(), time.process_time()
        stop_at = None if seconds is None else started + seconds
        if sample_rss_after is not None:
            timer = threading.Timer(sample_rss_after, lambda: rss.append(rss_bytes()))
            timer.daemon = True
            timer.start()
        for future in [pool.submit(loop) for _ in range(callers)]:
            future.result()
    result = tally.result(time.monotonic() - started, time.process_time() - cpu)
    if rss:
        result["rss_in_flight"] = rss[0]
    return result


async def run_tasks(call: Callable[[], Awaitable[int]], total: int | None, callers: int,
                    seconds: float | None = None, sample_rss_after: float | None = None) -> dict:
    """The app: ``callers`` coroutines on this one loop (after one first call outside the count)."""
    await call()
    counts = {"started": 0}
    tally = Tally()
    rss: list[int] = []
    started, cpu = time.monotonic(), time.process_time()
    stop_at = None if seconds is None else started + seconds
    if sample_rss_after is not None:
        asyncio.get_running_loop().call_later(sample_rss_after, lambda: rss.append(rss_bytes()))

    async def caller() -> None:
        while True:
            if (total is not None and counts["started"] >= total) or (
                    stop_at is not None and time.monotonic() >= stop_at):
                return
            counts["started"] += 1
            began = time.perf_counter()
            status = await call()
            tally.add(status, time.perf_counter() - began)

    await asyncio.gather(*(caller() for _ in range(callers)))
    result = tally.result(time.monotonic() - started, time.process_time() - cpu)
    if rss:
        result["rss_in_flight"] = rss[0]
    return result


# -- open loop: requests arrive at a fixed rate, whatever the answers take ---------------------------
async def offer_tasks(call: Callable[[], Awaitable[int]], rate: float, seconds: float) -> dict:
    await call()
    tally = Tally()
    started, cpu = time.monotonic(), time.process_time()

    async def one() -> None:
        began = time.perf_counter()
        status = await call()
        tally.add(status, time.perf_counter() - began)

    tasks = []
    for number in range(int(rate * seconds)):
        delay = started + number / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return tally.result(time.monotonic() - started, time.process_time() - cpu)


def offer_threads(call: Callable[[], int], rate: float, seconds: float, threads: int = 256) -> dict:
    call()
    tally = Tally()
    lock = threading.Lock()
    started, cpu = time.monotonic(), time.process_time()

    def one() -> None:
        began = time.perf_counter()
        status = call()
        with lock:
            tally.add(status, time.perf_counter() - began)

    with ThreadPoolExecutor(threads) as pool:
        for number in range(int(rate * seconds)):
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one)
    return tally.result(time.monotonic() - started, time.process_time() - cpu)


# -- pauses of the event loop: full garbage collections, and one large answer ---------------------------
def logprobs_answer(choices: int, tokens: int = 1024) -> bytes:
    """A completion answer of the heaviest kind per byte: every token with its logprobs (5 each)."""
    words = [" word"] * tokens
    choice = {"text": "".join(words), "index": 0, "finish_reason": "length",
              "logprobs": {"tokens": words, "token_logprobs": [-0.123456] * tokens,
                           "top_logprobs": [{" a": -0.1, " b": -0.2, " c": -0.3, " d": -0.4, " e": -0.5}] * tokens,
                           "text_offset": list(range(tokens))}}
    return json.dumps({"choices": [dict(choice, index=i) for i in range(choices)],
                       "usage": {"prompt_tokens": 8, "completion_tokens": choices * tokens,
                                 "total_tokens": choices * tokens + 8}}).encode()


async def loop_pauses(call: Callable[[], Awaitable[int]], emulator: dict, callers: int, collections: int,
                      answer_choices: int) -> dict:
    """With ``callers`` completions in flight: how long full collections hold the loop as the
    app leaves the heap (``gc.freeze()`` at import) and after ``gc.unfreeze()``; then the longest
    pause of the loop while one large answer is read, checked and encoded."""
    import base64
    import gc

    from devserver.emulators.control_client import EmulatorControl

    await call()
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            await call()

    callers_done = asyncio.gather(*(caller() for _ in range(callers)))
    await asyncio.sleep(1.5)  # every caller has a completion in flight

    async def full_collections() -> list[float]:
        pauses = []
        for _ in range(collections):
            began = time.perf_counter()
            gc.collect()  # on the loop's thread, as the collector runs: every invocation waits
            pauses.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.2)  # the callers run between collections
        return pauses

    frozen = await full_collections()
    gc.unfreeze()
    unfrozen = await full_collections()
    stop.set()
    await callers_done

    answer = logprobs_answer(answer_choices)
    EmulatorControl(emulator["endpoint"]).faults({"status": 200, "raw_base64": base64.b64encode(answer).decode(),
                                                  "headers": {"Content-Type": "application/json"}})
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.002)
            worst = max(worst, time.perf_counter() - began - 0.002)

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    status = await call()
    done.set()
    await ticking
    import function_app

    await function_app.service.aclose()
    return {"frozen_ms": frozen, "unfrozen_ms": unfrozen, "answer_bytes": len(answer), "answer_status": status,
            "answer_pause_ms": worst * 1000}


def main() -> int:
    side, scenario, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    started = time.perf_counter()
    if side == "app":
        call = app_call(config["emulator"], config.get("settings"))
        loop = asyncio.new_event_loop()
        run = loop.run_until_complete
    else:
        call = baseline_call(config["emulator"])
    if scenario == "first_call":  # from a fresh process: imports, setup, then the first completions
        ready = time.perf_counter()
        status = run(call()) if side == "app" else call()
        first = time.perf_counter()
        status2 = run(call()) if side == "app" else call()
        assert status == status2 == 200
        print(json.dumps({"setup": ready - started, "first": first - ready, "second": time.perf_counter() - first}))
        return 0
    if scenario == "sequential":
        # Interactive, so that the two sides can take turns in small blocks: each line
        # on stdin asks for that many timed calls, answered with their durations.
        async def timed(count: int) -> list[int]:
            durations = []
            for _ in range(count):
                began = time.perf_counter_ns()
                await call()
                durations.append(time.perf_counter_ns() - began)
            return durations

        def timed_sync(count: int) -> list[int]:
            durations = []
            for _ in range(count):
                began = time.perf_counter_ns()
                call()
                durations.append(time.perf_counter_ns() - began)
            return durations

        if side == "app":
            run(timed(config["warmup"]))
        else:
            timed_sync(config["warmup"])
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            print(json.dumps(run(timed(int(line))) if side == "app" else timed_sync(int(line))), flush=True)
        return 0
    callers = config.get("callers", 1)
    if scenario == "load":
        result = (run(run_tasks(call, config.get("total"), callers, config.get("seconds"),
                                config.get("sample_rss_after")))
                  if side == "app" else run_threads(call, config.get("total"), callers, config.get("seconds"),
                                                    config.get("sample_rss_after")))
    elif scenario == "offered":
        result = (run(offer_tasks(call, config["rate"], config["seconds"])) if side == "app"
                  else offer_threads(call, config["rate"], config["seconds"]))
    elif scenario == "pauses":
        result = run(loop_pauses(call, config["emulator"], callers, config["collections"], config["answer_choices"]))
    elif scenario == "memory":
        if side == "app":
            run(run_tasks(call, config["first"], callers))
            before = rss_bytes()
            run(run_tasks(call, config["total"] - config["first"], callers))
        else:
            run_threads(call, config["first"], callers)
            before = rss_bytes()
            run_threads(call, config["total"] - config["first"], callers)
        result = {"rss_first": before, "rss_total": rss_bytes()}
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
