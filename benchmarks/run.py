"""Run every benchmark, print the table, write docs/benchmarks.md.

Every figure is a ratio or a count from one run, the app and the seed guide's
baseline against the same emulator (absolute times on shared machines are
noise). The emulators run in their own processes (``python -m
devserver.emulators``), and so does each side (``benchmarks.worker``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

from benchmarks.common import PYTHON, ROOT, Row, clean_env, finish, fmt, take_turns
from benchmarks.common import start_worker as start_module_worker
from benchmarks.telemetry import telemetry_cold_start, telemetry_overhead
from devserver.emulators import EmulatorProcess

REQUEST = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


class Emulator(EmulatorProcess):
    """The emulators in their own process (``devserver.emulators.EmulatorProcess``), with the
    controls the benchmarks use."""

    def __init__(self, latency_ms: int = 0, token_lifetime: float = 3600, token_secret: str | None = None) -> None:
        super().__init__("--latency-ms", str(latency_ms), "--token-lifetime", str(token_lifetime),
                         *(["--token-secret", token_secret] if token_secret else []), env=clean_env())

    def configure(self, **config) -> None:
        self.openai_control.config(**config)

    def reset(self) -> None:
        self.openai_control.reset()

    def stats(self) -> dict:
        return self.openai_control.stats()

    def token_requests(self) -> int:
        return self.identity_control.stats()["token_requests"]


def start_worker(side: str, scenario: str, emulator: Emulator, stdin: bool = False, **config) -> subprocess.Popen:
    return start_module_worker("worker", side, scenario, emulator.info, stdin=stdin, **config)


def run_worker(side: str, scenario: str, emulator: Emulator, **config) -> dict:
    return finish(start_worker(side, scenario, emulator, **config))


# -- 1. per-request overhead ---------------------------------------------------------------
def overhead(calls: int, rounds: int = 20) -> Row:
    """Both sides warm in their own processes, taking turns in small blocks so that the
    machine's drift over the run falls on both alike."""
    with Emulator() as emulator:
        workers = {side: start_worker(side, "sequential", emulator, warmup=200, stdin=True)
                   for side in ("app", "baseline")}
        for worker in workers.values():
            json.loads(worker.stdout.readline())  # ready
        durations = take_turns(workers, calls, rounds)
    med = {s: statistics.median(d) for s, d in durations.items()}
    p99 = {s: statistics.quantiles(d, n=100)[98] for s, d in durations.items()}
    ratio_med, ratio_p99 = med["app"] / med["baseline"], p99["app"] / p99["baseline"]
    return Row(1, "Per-request time, sequential, emulator latency 0: app ÷ bare `openai.Completion.create`",
               "≤ 1.10 (median and p99)",
               f"median ×{fmt(ratio_med)}, p99 ×{fmt(ratio_p99)}",
               f"median {med['baseline'] / 1e6:.2f} ms, p99 {p99['baseline'] / 1e6:.2f} ms (= ×1.00)",
               ratio_med <= 1.10 and ratio_p99 <= 1.10,
               [f"{len(durations['app'])} calls a side; app median {med['app'] / 1e6:.2f} ms, "
                f"p99 {p99['app'] / 1e6:.2f} ms"])


# -- 2. token requests, 1-hour token ---------------------------------------------------------
def tokens_one_hour(total: int) -> Row:
    counts, failed = {}, {}
    with Emulator(token_lifetime=3600) as emulator:
        for side in ("app", "baseline"):
            emulator.reset()
            result = run_worker(side, "load", emulator, total=total, callers=32)
            counts[side], failed[side] = emulator.token_requests(), result["failed"]
    return Row(2, f"Token-endpoint requests, {total:,} completions by 32 concurrent callers, 1-hour token", "exactly 1",
               f"{counts['app']} ({failed['app']} failed)", f"{counts['baseline']} ({failed['baseline']} failed)",
               counts["app"] == 1 and failed["app"] == 0)


# -- 3 and 8, run together: token refresh under load, and memory --------------------------------
def refresh_and_memory(seconds: float, lifetime_beyond_margin: float, memory_total: int) -> list[Row]:
    emulators = {name: Emulator(latency_ms=latency, token_lifetime=lifetime)
                 for name, latency, lifetime in (("app-tokens", 200, 300 + lifetime_beyond_margin),
                                                 ("baseline-tokens", 200, 300 + lifetime_beyond_margin),
                                                 ("app-memory", 0, 3600), ("baseline-memory", 0, 3600))}
    try:
        workers = {
            "app-tokens": start_worker("app", "load", emulators["app-tokens"], callers=32, seconds=seconds),
            "baseline-tokens": start_worker("baseline", "load", emulators["baseline-tokens"], callers=32,
                                            seconds=seconds),
            "app-memory": start_worker("app", "memory", emulators["app-memory"], callers=8, first=1000,
                                       total=memory_total),
            "baseline-memory": start_worker("baseline", "memory", emulators["baseline-memory"], callers=8,
                                            first=1000, total=memory_total),
        }
        results = {name: finish(worker, timeout=600) for name, worker in workers.items()}
        tokens = {side: emulators[f"{side}-tokens"].token_requests() for side in ("app", "baseline")}
    finally:
        for emulator in emulators.values():
            emulator.stop()
    expected = seconds / lifetime_beyond_margin
    app, base = results["app-tokens"], results["baseline-tokens"]
    refresh = Row(3, f"Token-endpoint requests, {seconds:g} s run, 32 concurrent callers, tokens stale every "
                     f"{lifetime_beyond_margin:g} s", f"≈ {expected:g} (+ the first), no failed request",
                  f"{tokens['app']}, {app['failed']} failed of {app['ok'] + app['failed']:,}",
                  f"{tokens['baseline']}, {base['failed']} failed of {base['ok'] + base['failed']:,}",
                  abs(tokens["app"] - (expected + 1)) <= 2 and app["failed"] == 0)
    growth = {side: (results[f"{side}-memory"]["rss_total"] - results[f"{side}-memory"]["rss_first"]) / 2 ** 20
              for side in ("app", "baseline")}
    memory = Row(8, f"Resident memory growth from 1,000 to {memory_total:,} completions (8 concurrent callers)",
                 "< 5 MiB",
                 f"{growth['app']:+.1f} MiB", f"{growth['baseline']:+.1f} MiB", growth["app"] < 5)
    return [refresh, memory]


# -- 4. TCP connections ------------------------------------------------------------------------
def connections(total: int) -> Row:
    opened = {}
    with Emulator() as emulator:
        for side in ("app", "baseline"):
            emulator.reset()
            run_worker(side, "load", emulator, total=total, callers=8)
            opened[side] = emulator.stats()["connections_accepted"] - 1  # this stats call's own
    return Row(4, f"Upstream TCP connections opened, {total:,} completions by 8 concurrent callers",
               "≤ 8", str(opened["app"]), str(opened["baseline"]), opened["app"] <= 8)


# -- 5. throughput ---------------------------------------------------------------------------
def throughput(seconds: float) -> list[Row]:
    rows = []
    with Emulator(latency_ms=100) as emulator:
        for callers in (1, 16, 32, 64, 256):
            ratio, shown, cpu = {}, {}, {}
            for side in ("app", "baseline"):
                emulator.reset()
                result = run_worker(side, "load", emulator, callers=callers, seconds=seconds)
                ratio[side] = result["ok"] / result["seconds"] / (callers / 0.1)
                connections = emulator.stats()["connections_accepted"] - 1  # this stats call's own
                shown[side] = f"{fmt(ratio[side], 3)} ({result['failed']} failed, {connections} connections)"
                cpu[side] = (f"{result['cpu_seconds'] / max(1, result['ok']) * 1000:.2f} ms of client CPU a "
                             f"request, client process {result['cpu_seconds'] / result['seconds']:.0%} busy")
            target = 16 <= callers <= 64  # at 256 callers (2,560 req/s) the client needs more than this machine's CPU
            label = f"{callers} caller{'s' if callers > 1 else ''}"
            rows.append(Row(5, f"Throughput, emulator latency 100 ms, {label}: achieved ÷ (callers ÷ latency)",
                            "≥ 0.90" if target else "(reported)", shown["app"], shown["baseline"],
                            ratio["app"] >= 0.9 if target else None,
                            [f"{label}: app {cpu['app']}; baseline {cpu['baseline']}"]))
    return rows


# -- 9. in-flight capacity --------------------------------------------------------------------
def in_flight(seconds: float) -> list[Row]:
    """Hundreds of callers each waiting 1 s on Azure OpenAI: the app's coroutines on one event
    loop, the seed guide on as many threads."""
    rows = []
    with Emulator(latency_ms=1000) as emulator:
        for callers in (64, 256, 512):
            results = {}
            for side in ("app", "baseline"):
                emulator.reset()
                results[side] = run_worker(side, "load", emulator, callers=callers, seconds=seconds,
                                           sample_rss_after=seconds / 2)
            ratio = {side: r["ok"] / r["seconds"] / callers for side, r in results.items()}
            cpu = {side: r["cpu_seconds"] / max(1, r["ok"]) * 1000 for side, r in results.items()}
            rss = {side: r.get("rss_in_flight", 0) / 2 ** 20 for side, r in results.items()}
            cpu_ratio = cpu["app"] / cpu["baseline"]

            shown = {side: f"{fmt(ratio[side], 3)} ({results[side]['failed']} failed); {cpu[side]:.2f} ms CPU a "
                           f"completion; RSS {rss[side]:.0f} MiB in flight" for side in results}
            target = callers == 256
            rows.append(Row(9, f"In flight, emulator latency 1000 ms, {callers} concurrent callers: achieved ÷ "
                               f"ideal; app CPU per completion ÷ the seed guide's at the same load",
                            "≥ 0.90 and ≤ 0.50" if target else "(reported)", shown["app"], shown["baseline"],
                            (ratio["app"] >= 0.9 and cpu_ratio <= 0.5) if target else None,
                            [f"{callers} callers: app CPU per completion ×{fmt(cpu_ratio)} the seed guide's"]))
    return rows


# -- 10. the backend pool ----------------------------------------------------------------------
def pool_rows(seconds: float, window: float, per_window: int) -> list[Row]:
    """Three deployments with request quotas (the same limits per shorter window, so a run
    reaches its sustained state in seconds): the app's pool against the seed guide's one
    deployment, at the same offered load (open loop: requests arrive at a fixed rate)."""
    secret = "bench-shared-secret"
    emulators = [Emulator(token_secret=secret) for _ in range(3)]
    try:
        for emulator in emulators:
            emulator.configure(rpm=per_window, quota_window_s=window)
        quota_rate = 3 * per_window / window
        backends = [{"name": f"region-{i}", "endpoint": e.info["endpoint"], "priority": 1 if i == 0 else 2}
                    for i, e in enumerate(emulators)]
        settings = {"AZURE_OPENAI_BACKENDS": json.dumps(backends), "AZURE_OPENAI_MAX_RETRIES": "3"}
        rows = []
        for share in (0.9, 1.5):
            rate = share * quota_rate
            for emulator in emulators:
                emulator.reset()
            app = run_worker("app", "offered", emulators[0], settings=settings, rate=rate, seconds=seconds)
            upstream_429 = sum(e.stats()["throttled"] for e in emulators)
            emulators[0].reset()
            base = run_worker("baseline", "offered", emulators[0], rate=rate, seconds=seconds)
            served = app["ok"] / seconds / quota_rate
            caller_429 = app["statuses"].get("429", 0)
            base_429 = base["statuses"].get("429", 0) / max(1, base["ok"] + base["failed"])
            below = share < 1
            rows.append(Row(
                10, f"Backend pool: 3 deployments with request quotas, offered {share:.0%} of their sum "
                    f"({rate:.0f} req/s for {seconds:g} s): served ÷ the sum of the quotas; caller-visible 429s",
                "≥ 0.85 and no 429" if below else "≥ 0.90 (reported 429s: the excess)",
                f"{fmt(served, 3)}; {caller_429} caller-visible 429 of {app['ok'] + app['failed']} "
                f"({upstream_429} upstream 429s)",
                f"one deployment: {base['ok'] / seconds / (quota_rate / 3):.2f} of its quota; "
                f"{base_429:.0%} of callers got 429", (served >= 0.85 and caller_429 == 0) if below else served >= 0.9))
        return rows
    finally:
        for emulator in emulators:
            emulator.stop()


def throttled_backend(calls: int) -> Row:
    """One of two backends throttled for the whole run (a 429 asking for an hour): the pool
    skips it after that first 429. Sequential calls; median latency with the throttled backend
    first in priority, against a pool of the healthy backend alone; and the requests the
    throttled one received (1: the pool never tried it again)."""
    secret = "bench-shared-secret"
    with Emulator(token_secret=secret) as throttled, Emulator(token_secret=secret) as healthy:
        both = [{"name": "throttled", "endpoint": throttled.info["endpoint"], "priority": 1},
                {"name": "healthy", "endpoint": healthy.info["endpoint"], "priority": 2}]
        alone = [{"name": "healthy", "endpoint": healthy.info["endpoint"]}]
        medians, success = {}, {}
        for label, backends in (("alone", alone), ("both", both)):
            if label == "both":
                throttled.openai_control.faults({"status": 429, "retry_after": 3600})
            result = run_worker("app", "load", healthy, callers=1, total=calls,
                                settings={"AZURE_OPENAI_BACKENDS": json.dumps(backends)})
            medians[label], success[label] = result["median_ms"], result["ok"] / (result["ok"] + result["failed"])
        found = throttled.stats()
        tried = found["completion_requests"] + found["chat_requests"]  # (an auto backend is called with chat)
    added = medians["both"] - medians["alone"]
    return Row(10, f"Backend pool: one of two backends throttled for the whole run ({calls} sequential calls): "
                   "success, median latency added over a pool of the healthy backend alone, and requests "
                   "the throttled backend received",
               "100 %, ≤ 1 ms, 1 request", f"{success['both']:.1%} served; {added:+.2f} ms (median "
               f"{medians['both']:.2f} ms); {tried} request(s) to the throttled backend",
               f"healthy backend alone: median {medians['alone']:.2f} ms",
               success["both"] == 1 and added <= 1 and tried == 1)


# -- 13. pauses of the event loop --------------------------------------------------------------------
def loop_pauses(callers: int, collections: int, answer_choices: int) -> list[Row]:
    """What holds the one event loop (every invocation on the instance) that no await can
    release: a full garbage collection, and a large answer's JSON decode and encode."""
    with Emulator(latency_ms=1000) as emulator:
        result = run_worker("app", "pauses", emulator, callers=callers, collections=collections,
                            answer_choices=answer_choices)
    frozen, unfrozen = statistics.median(result["frozen_ms"]), statistics.median(result["unfrozen_ms"])
    mib = result["answer_bytes"] / 2 ** 20
    assert result["answer_status"] == 200, result
    return [
        Row(13, f"Full garbage collection with {callers} completions in flight: the loop's pause, median of "
                f"{collections}, as the app runs (`gc.freeze()` at import) and after `gc.unfreeze()`",
            "(reported)", f"{frozen:.1f} ms (range {min(result['frozen_ms']):.1f}–{max(result['frozen_ms']):.1f})",
            f"unfrozen: {unfrozen:.1f} ms (range {min(result['unfrozen_ms']):.1f}–{max(result['unfrozen_ms']):.1f})",
            None),
        Row(13, f"One large answer ({mib:.1f} MiB of JSON, {answer_choices} choices of 1,024 tokens with "
                "logprobs=5): the longest pause of the loop while the app reads and answers it",
            "(reported)", f"{result['answer_pause_ms']:.0f} ms ({result['answer_pause_ms'] / mib:.0f} ms a MiB)",
            "—", None),
    ]


# -- 6. the dev host over HTTP (wrk) -------------------------------------------------------------
def wrk(url: str, headers: dict[str, str], seconds: int, connections: int = 32) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(REQUEST))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write("\n".join(lines) + "\n")
    script.close()
    done = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
                          capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(script.name)
    out = done.stdout
    percentiles = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "percentiles": percentiles,
            "errors": int(non_2xx.group(1)) if non_2xx else 0, "socket_errors": "Socket errors" in out}


def dev_host(seconds: int) -> list[Row]:
    if shutil.which("wrk") is None:
        return [Row(6, "Through the dev host over HTTP (wrk, 32 connections)", "(reported)", "not measured",
                    "not measured", None, ["wrk is not installed (Debian: apt-get install wrk)"])]
    rows = []
    with Emulator() as emulator:
        host = subprocess.Popen(
            [PYTHON, "-m", "devserver", "--port", "0", "--no-storage",
             "--settings", str(Path(tempfile.mkdtemp()) / "local.settings.json")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=clean_env(AZURE_OPENAI_ENDPOINT=emulator.info["endpoint"],
                          AZURE_OPENAI_DEPLOYMENT="gpt-35-turbo-instruct", AZURE_OPENAI_AUTH="managed_identity",
                          IDENTITY_ENDPOINT=emulator.info["identity_endpoint"],
                          IDENTITY_HEADER=emulator.info["identity_header"]))
        try:
            url = next(m.group(1) for line in host.stdout
                       if (m := re.search(r"Dev host listening on (http://\S+)", line)))
            direct = f"{emulator.info['endpoint']}openai/deployments/gpt-35-turbo-instruct/completions" \
                     "?api-version=2024-10-21"
            for latency in (0, 100):
                emulator.configure(latency_ms=latency)
                app = wrk(url + "/api/completions", {}, seconds)
                base = wrk(direct, {"api-key": emulator.info["api_key"]}, seconds)

                def show(r: dict) -> str:
                    p = r["percentiles"]
                    errors = f", {r['errors']} non-2xx" if r["errors"] else ""
                    return f"{r['rps']:.0f} req/s; p50 {p.get('50')}, p90 {p.get('90')}, p99 {p.get('99')}{errors}"

                rows.append(Row(6, f"Through the dev host over HTTP (wrk, 32 connections), emulator latency "
                                   f"{latency} ms; baseline: wrk straight at the emulator", "(reported)",
                                show(app), show(base), None))
        finally:
            host.terminate()
            host.wait(timeout=15)
    return rows


# -- 7. cold start ---------------------------------------------------------------------------------
def import_seconds(code: str, env: dict[str, str], cwd: Path = ROOT) -> float:
    """Total import time (the sum of every module's own time) of ``python -X importtime -c code``."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return sum(int(m.group(1)) for m in re.finditer(r"^import time:\s+(\d+) \|", done.stderr, re.MULTILINE)) / 1e6


# What indexing imports besides the app (function_app.py's own imports), and what the first
# completion adds (the core: openai and its aiohttp, requests for the identity libraries).
INDEXING_DEPENDENCIES = "azure.functions, azurefunctions.extensions.http.fastapi"
ALL_DEPENDENCIES = "azure.functions, azurefunctions.extensions.http.fastapi, openai, requests"
FIRST_COMPLETION = "import function_app; function_app.service.settings; import shared.invocation"


def cold_start(runs: int) -> list[Row]:
    """``import function_app`` from the deployment package, as Flex Consumption runs it (read-only:
    nothing is written to __pycache__), with the package's bytecode and without it."""
    from devserver.tools.package import build

    rows = []
    settings = {"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9/", "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1-mini",
                "AZURE_OPENAI_AUTH": "key", "AZURE_OPENAI_API_KEY": "unused"}
    # Azure sets no CA bundle: a configured one costs its loading (~20 ms for a distribution's bundle).
    env = {k: v for k, v in clean_env(**settings, PYTHONDONTWRITEBYTECODE="1").items()
           if k not in ("PYTHONPATH", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    work = Path(tempfile.mkdtemp(prefix="bench-package-"))
    compiled = build(work / "compiled")
    source_only = work / "source"
    shutil.copytree(compiled, source_only, ignore=shutil.ignore_patterns("__pycache__"))
    for package, how in ((compiled, "with the package's bytecode"), (source_only, "without bytecode")):
        for code, deps, what, target in (
                ("import function_app", INDEXING_DEPENDENCIES, "indexing: `import function_app`", 1.05),
                (FIRST_COMPLETION, ALL_DEPENDENCIES, "indexing and the first completion's imports", None)):
            import_seconds(code, env, package)  # warm the file cache
            pairs = [(import_seconds(code, env, package), import_seconds(f"import {deps}", env, package))
                     for _ in range(runs)]  # interleaved, so that the machine's drift falls on both
            # Best of N, as timeit advises: on a shared machine noise only ever adds time.
            app, dependencies = min(a for a, _ in pairs), min(d for _, d in pairs)
            ratio = app / dependencies
            rows.append(Row(7, f"Cold start, {what} ÷ importing {deps} alone, {how}",
                            f"≤ {target:.2f}" if target else "(reported)", f"×{fmt(ratio)} ({app * 1000:.0f} ms)",
                            f"{dependencies * 1000:.0f} ms (= ×1.00)", ratio <= target if target else None))
    shutil.rmtree(work, ignore_errors=True)
    with Emulator() as emulator:
        first = {side: [run_worker(side, "first_call", emulator) for _ in range(3)] for side in ("app", "baseline")}

    def show(results: list[dict]) -> str:
        median = {k: statistics.median(r[k] for r in results) * 1000 for k in ("setup", "first", "second")}
        return (f"setup {median['setup']:.0f} ms, first completion {median['first']:.0f} ms, "
                f"second {median['second']:.1f} ms")

    rows.append(Row(7, "From a fresh process to the first managed-identity completion: app (import function_app, "
                       "then the first request builds the credential and fetches the token) and seed guide "
                       "(import, configure(), which fetches the token, then the first request)", "(reported)",
                    show(first["app"]), show(first["baseline"]), None))
    return rows


# -- the report -------------------------------------------------------------------------------
def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in
                         ("openai", "aiohttp", "azure-functions", "azure-identity", "requests", "urllib3"))
    return [f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
            f"{os.cpu_count()} cores, {memory:.0f} GiB",
            f"- Python {platform.python_version()}; {versions}"]


def table(rows: list[Row]) -> str:
    lines = ["| # | metric | target | this app | seed guide (baseline) | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        verdict = {True: "yes", False: "**no**", None: "—"}[row.met]
        lines.append(f"| {row.number} | {row.metric} | {row.target} | {row.app} | {row.baseline} | {verdict} |")
    notes = [f"- ({row.number}) {note}" for row in rows for note in row.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for trying the harness")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    from benchmarks import chat, streaming  # the chat and streaming rows (issues 19 and 21)

    scale = 0.1 if args.quick else 1.0
    started = time.monotonic()
    rows: list[Row] = []
    print("3 + 8: token refresh under load, and memory (in parallel) ...", flush=True)
    rows += refresh_and_memory(seconds=60 * scale, lifetime_beyond_margin=10 * scale,
                               memory_total=int(20_000 * scale))
    print("1: per-request overhead ...", flush=True)
    rows.append(overhead(calls=int(2000 * scale)))
    print("1 (chat): per-request overhead on a chat deployment ...", flush=True)
    rows.append(chat.chat_overhead(calls=int(2000 * scale)))
    print("2: token requests with a 1-hour token ...", flush=True)
    rows.append(tokens_one_hour(total=int(5000 * scale)))
    print("4: TCP connections ...", flush=True)
    rows.append(connections(total=int(5000 * scale)))
    print("5: throughput ...", flush=True)
    rows += throughput(seconds=4 * scale if args.quick else 4)
    print("9: in-flight capacity ...", flush=True)
    rows += in_flight(seconds=2 if args.quick else 6)
    print("9 (chat): in-flight capacity on a chat deployment ...", flush=True)
    rows += chat.chat_in_flight(seconds=2 if args.quick else 6)
    print("14: fan-out of a 16-prompt request on a chat deployment ...", flush=True)
    rows.append(chat.fan_out(pairs=3 if args.quick else 10))
    print("10: the backend pool ...", flush=True)
    rows += pool_rows(seconds=10 if args.quick else 30, window=5 if args.quick else 10, per_window=50)
    rows.append(throttled_backend(calls=100 if args.quick else 500))
    print("13: pauses of the event loop ...", flush=True)
    rows += loop_pauses(callers=256, collections=3 if args.quick else 9, answer_choices=40)
    print("11 + 12: telemetry ...", flush=True)
    rows.append(telemetry_overhead(calls=800 if args.quick else 4000, rounds=8 if args.quick else 40))
    rows.append(telemetry_overhead(calls=200 if args.quick else 1000, rounds=4 if args.quick else 20, latency_ms=20))
    rows += telemetry_cold_start(repeats=2 if args.quick else 7)
    print("15 + 16: streaming (first byte; many long streams) ...", flush=True)
    rows.append(streaming.first_byte(calls=30 if args.quick else 100, rounds=6 if args.quick else 10))
    rows.append(streaming.many_streams(count=64 if args.quick else 256, seconds=3 if args.quick else 10))
    print("17: in flight through the dev host, before and after the streaming extension ...", flush=True)
    rows.append(streaming.dev_host_in_flight(callers=256, seconds=2 if args.quick else 6))
    print("6: the dev host over HTTP ...", flush=True)
    rows += dev_host(seconds=5 if not args.quick else 2)
    print("7: cold start ...", flush=True)
    rows += cold_start(runs=15 if not args.quick else 2)
    rows.sort(key=lambda row: row.number)
    elapsed = time.monotonic() - started

    report = table(rows)
    print("\n" + report + f"\n\n({elapsed:.0f} s)")
    if not args.quick:
        template = (ROOT / "benchmarks" / "report.md").read_text()
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(template.replace("{{machine}}", "\n".join(machine()))
                               .replace("{{table}}", report).replace("{{elapsed}}", f"{elapsed:.0f}"))
        print(f"written to {args.output.relative_to(ROOT)}")
    return 0
