"""One side of one benchmark, in its own process: ``python -m benchmarks.worker SIDE SCENARIO CONFIG``.

SIDE is ``app`` (the function's user function: ``func.HttpRequest`` in,
``func.HttpResponse`` out, settings from the environment as in Azure) or
``baseline`` (the seed guide: ``openai.Completion.create`` with global
configuration). Each side runs in a separate process because openai's
per-thread sessions and globals would otherwise be shared between them.
Prints one JSON line of results.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

REQUEST = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


def app_call(emulator: dict) -> Callable[[], bool]:
    os.environ.update({
        "AZURE_OPENAI_ENDPOINT": emulator["endpoint"], "AZURE_OPENAI_DEPLOYMENT": "gpt-35-turbo-instruct",
        "AZURE_OPENAI_AUTH": "managed_identity", "IDENTITY_ENDPOINT": emulator["identity_endpoint"],
        "IDENTITY_HEADER": emulator["identity_header"], "AZURE_OPENAI_TIMEOUT": "10",
    })
    import azure.functions as func

    import function_app

    user_function = function_app.completions.build().get_user_function()
    body = json.dumps(REQUEST).encode()

    def call() -> bool:
        request = func.HttpRequest(method="POST", url="http://localhost:7071/api/completions", body=body,
                                   headers={"content-type": "application/json"})
        return user_function(request).status_code == 200

    return call


def baseline_call(emulator: dict) -> Callable[[], bool]:
    os.environ.update({"IDENTITY_ENDPOINT": emulator["identity_endpoint"],
                       "IDENTITY_HEADER": emulator["identity_header"]})
    from benchmarks import seed_guide

    seed_guide.configure(emulator["endpoint"], "2024-10-21")

    def call() -> bool:
        try:
            seed_guide.complete("gpt-35-turbo-instruct", **REQUEST)
            return True
        except Exception:  # noqa: BLE001 - a failed request, counted
            return False

    return call


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_many(call: Callable[[], bool], total: int | None, threads: int, seconds: float | None = None,
             warmup: bool = False) -> dict:
    """``total`` calls (or as many as fit in ``seconds``) spread over ``threads`` threads; with
    ``warmup``, one first call outside the count (credential, token and connection set up, as
    the guide's configure() does before its first call)."""
    lock = threading.Lock()
    counts = {"started": 0, "ok": 0, "failed": 0}
    stop_at = None if seconds is None else time.monotonic() + seconds

    def loop() -> None:
        while True:
            with lock:
                if (total is not None and counts["started"] >= total) or (
                        stop_at is not None and time.monotonic() >= stop_at):
                    return
                counts["started"] += 1
            ok = call()
            with lock:
                counts["ok" if ok else "failed"] += 1

    with ThreadPoolExecutor(threads) as pool:
        if warmup:  # on a pool thread, so no extra thread (and connection) joins the run
            pool.submit(call).result()
        started, cpu = time.monotonic(), time.process_time()
        for future in [pool.submit(loop) for _ in range(threads)]:
            future.result()
    return {"ok": counts["ok"], "failed": counts["failed"], "seconds": time.monotonic() - started,
            "cpu_seconds": time.process_time() - cpu}


def main() -> int:
    side, scenario, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    started = time.perf_counter()
    call = (app_call if side == "app" else baseline_call)(config["emulator"])
    if scenario == "first_call":  # from a fresh process: imports, setup, then the first completions
        ready = time.perf_counter()
        assert call()
        first = time.perf_counter()
        assert call()
        print(json.dumps({"setup": ready - started, "first": first - ready, "second": time.perf_counter() - first}))
        return 0
    if scenario == "sequential":
        # Interactive, so that the two sides can take turns in small blocks: each line
        # on stdin asks for that many timed calls, answered with their durations.
        for _ in range(config["warmup"]):
            call()
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            durations = []
            for _ in range(int(line)):
                started = time.perf_counter_ns()
                call()
                durations.append(time.perf_counter_ns() - started)
            print(json.dumps(durations), flush=True)
        return 0
    if scenario == "load":
        result = run_many(call, config.get("total"), config["threads"], config.get("seconds"), warmup=True)
    elif scenario == "memory":
        run_many(call, config["first"], config["threads"])
        before = rss_bytes()
        run_many(call, config["total"] - config["first"], config["threads"])
        result = {"rss_first": before, "rss_total": rss_bytes()}
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
