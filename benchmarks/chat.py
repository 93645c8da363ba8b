"""Chat benchmarks (issue 19), for ``benchmarks.run`` (``make bench``) to call, beside the
completions rows they mirror:

- ``chat_overhead()`` (row 1): per-request time of the app's ``/api/chat/completions`` on a
  chat deployment ÷ a direct openai 0.28.1 ``ChatCompletion.acreate(deployment_id=...)``,
  sequential, emulator latency 0, the sides taking turns in small blocks.
- ``chat_in_flight()`` (row 9): hundreds of chat completions each waiting 1 s on the emulator:
  achieved ÷ ideal, CPU per completion, both sides on one event loop.
- ``fan_out()`` (row 14): a 16-prompt ``/api/completions`` request on a chat deployment (16
  concurrent upstream chat calls, merged into one answer) ÷ a single-prompt request, emulator
  latency 200 ms.

Each side runs in its own process (``benchmarks.async_worker``), the emulators in theirs.
"""

from __future__ import annotations

import json
import statistics
import subprocess

from benchmarks.common import Row, clean_env, finish, fmt, start_worker, take_turns
from devserver.emulators import EmulatorProcess

SIDES = ("app", "direct")
REQUEST = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


def emulator(*args: str) -> EmulatorProcess:
    return EmulatorProcess(*args, env=clean_env())


def start(side: str, scenario: str, emulator_info: dict, stdin: bool = False, **config) -> subprocess.Popen:
    return start_worker("async_worker", side, scenario, emulator_info, stdin=stdin, **config)


def ready(worker: subprocess.Popen) -> None:
    line = worker.stdout.readline()
    if not line:
        worker.wait(timeout=30)
        raise RuntimeError(f"benchmark worker failed ({worker.returncode})")
    assert json.loads(line)["ready"], line


def turns(workers: dict[str, subprocess.Popen], calls: int, rounds: int) -> tuple[dict, dict, dict]:
    """Interactive workers, once ready, taking turns: their durations, medians and p99s (ns)."""
    for worker in workers.values():
        ready(worker)
    durations = take_turns(workers, calls, rounds)
    med = {s: statistics.median(d) for s, d in durations.items()}
    p99 = {s: statistics.quantiles(d, n=100)[98] for s, d in durations.items()}
    return durations, med, p99


# -- 1 (chat). per-request overhead -------------------------------------------------------------
def chat_overhead(calls: int, rounds: int = 20) -> Row:
    with emulator() as emu:
        workers = {side: start(side, "sequential", emu.info, stdin=True, warmup=200) for side in SIDES}
        durations, med, p99 = turns(workers, calls, rounds)
    ratio_med, ratio_p99 = med["app"] / med["direct"], p99["app"] / p99["direct"]
    return Row(1, "Per-request time, chat deployment (`gpt-4.1-mini`), sequential, emulator latency 0: app "
                  "`/api/chat/completions` ÷ a direct openai 0.28.1 `ChatCompletion.acreate(deployment_id=...)`",
               "≤ 1.10 (median and p99)", f"median ×{fmt(ratio_med)}, p99 ×{fmt(ratio_p99)}",
               f"median {med['direct'] / 1e6:.2f} ms, p99 {p99['direct'] / 1e6:.2f} ms (= ×1.00)",
               ratio_med <= 1.10 and ratio_p99 <= 1.10,
               [f"chat: {len(durations['app'])} calls a side; app median {med['app'] / 1e6:.2f} ms, "
                f"p99 {p99['app'] / 1e6:.2f} ms (+{(med['app'] - med['direct']) / 1e3:.0f} µs a request)"])


# -- 9 (chat). in-flight capacity -----------------------------------------------------------------
def chat_in_flight(seconds: float, callers_list: tuple[int, ...] = (64, 256, 512)) -> list[Row]:
    """As row 9, on a chat deployment; the baseline is openai's own async client on one event
    loop too (coroutines against coroutines, where row 9's are threads)."""
    rows = []
    with emulator("--latency-ms", "1000") as emu:
        for callers in callers_list:
            results = {}
            for side in SIDES:
                emu.openai_control.reset()
                results[side] = finish(start(side, "load", emu.info, callers=callers, seconds=seconds,
                                             sample_rss_after=seconds / 2))
            ratio = {side: r["ok"] / r["seconds"] / callers for side, r in results.items()}
            cpu = {side: r["cpu_seconds"] / max(1, r["ok"]) * 1000 for side, r in results.items()}
            rss = {side: r.get("rss_in_flight", 0) / 2 ** 20 for side, r in results.items()}
            shown = {side: f"{fmt(ratio[side], 3)} ({results[side]['failed']} failed); {cpu[side]:.2f} ms CPU a "
                           f"completion; RSS {rss[side]:.0f} MiB in flight" for side in results}
            target = callers == 256
            rows.append(Row(9, f"In flight, chat deployment, emulator latency 1000 ms, {callers} concurrent callers: "
                               "achieved ÷ ideal; CPU per completion, app ÷ direct `ChatCompletion.acreate`",
                            "≥ 0.90 (CPU reported)" if target else "(reported)", shown["app"], shown["direct"],
                            ratio["app"] >= 0.9 if target else None,
                            [f"chat, {callers} callers: app CPU per completion ×{fmt(cpu['app'] / cpu['direct'])} "
                             "direct acreate's"]))
    return rows


# -- 14. fan-out of a many-prompt completions request on a chat deployment ---------------------------------
def fan_out(pairs: int, prompts: int = 16, latency_ms: int = 200) -> Row:
    """Sequential requests to ``/api/completions`` on a chat deployment, a single-prompt one and a
    ``prompts``-prompt one in turn: the many-prompt request's time ÷ the single's, medians. The
    emulator counts the upstream chat calls (``prompts`` per request) and the connections. The
    baseline does the same by hand: ``prompts`` concurrent ``acreate`` calls ÷ one."""
    with emulator("--latency-ms", str(latency_ms)) as emu:
        emu.openai_control.reset()
        app = finish(start("app", "fan_out", emu.info, function="completions", body=REQUEST, prompts=prompts,
                           pairs=pairs))
        stats = emu.openai_control.stats()
        emu.openai_control.reset()
        direct = finish(start("direct", "fan_out", emu.info, prompts=prompts, pairs=pairs))
    ratio = {name: statistics.median(r["many"]) / statistics.median(r["single"])
             for name, r in (("app", app), ("direct", direct))}
    requests = pairs + 1  # of each kind, the warm-up's included
    per_request = (stats["chat_requests"] - requests) / requests
    connections = stats["connections_accepted"] - 1  # this stats call's own
    return Row(14, f"Fan-out: a {prompts}-prompt `/api/completions` request on a chat deployment ({prompts} "
                   f"concurrent upstream chat calls, merged) ÷ a single-prompt request, emulator latency "
                   f"{latency_ms} ms, sequential",
               "≈ 1 (≤ 1.10)",
               f"×{fmt(ratio['app'])} ({statistics.median(app['many']) * 1000:.0f} ms ÷ "
               f"{statistics.median(app['single']) * 1000:.0f} ms; {app['failed']} failed)",
               f"{prompts} concurrent `acreate` calls ÷ one: ×{fmt(ratio['direct'])}",
               ratio["app"] <= 1.10 and app["failed"] == 0,
               [f"{pairs} requests of each kind; {per_request:g} upstream chat calls a {prompts}-prompt request, "
                f"{connections} upstream connections in all"])
