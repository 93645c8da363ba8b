"""Streaming benchmarks (issue 21), for ``benchmarks.run`` (``make bench``) to call:

- ``first_byte()`` (row 15): time to the first byte of the app's stream (in process, through
  ``/api/chat/completions``: the function's ``StreamingResponse`` read as uvicorn reads it) ÷ a
  direct ``ChatCompletion.acreate(stream=True)``'s time to its first chunk, the emulator pacing
  both streams alike.
- ``many_streams()`` (row 16): hundreds of concurrent streams of about ten seconds each (the
  emulator's ``stream_chunk_ms`` pacing): the CPU seconds and resident memory each costs, the
  app against direct ``acreate`` doing the same streams.
- ``dev_host_in_flight()`` (row 17): the in-flight capacity of non-streamed completions through
  the dev host, before the move to the streaming extension (the classic path: a
  ``func.HttpRequest`` function, the body handed over with the invocation,
  ``benchmarks/classic_app``) and after (today's app: the request proxied to uvicorn).

Each side runs in its own process (``benchmarks.async_worker``), the emulators in theirs.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path

from benchmarks.async_worker import CHAT
from benchmarks.chat import REQUEST, SIDES, emulator, ready, start, turns
from benchmarks.common import PYTHON, ROOT, Row, clean_env, finish, fmt

STREAM = {"app": {**CHAT, "stream": True},
          # The app always asks for the usage chunk (its log line counts the tokens): so does the baseline,
          # so that both read the same stream.
          "direct": {**CHAT, "stream": True, "stream_options": {"include_usage": True}}}
# The emulator's chat answer to CHAT: 13 events (the prompt annotation, the role, 9 tokens, the
# finish, the usage) and [DONE], the pacing's pause before each but the first.
PAUSES = 13


# -- 15. time to first byte ---------------------------------------------------------------------------
def first_byte(calls: int, rounds: int = 10, chunk_ms: int = 5) -> Row:
    """Sequential streams, each read to its end (connections kept alive), the sides taking
    turns in small blocks; the time to the first byte of each. (p90, not p99: a hundred-odd
    streams a side.)"""
    with emulator("--stream-chunk-ms", str(chunk_ms)) as emu:
        workers = {side: start(side, "first_byte", emu.info, stdin=True, warmup=50, body=STREAM[side])
                   for side in SIDES}
        durations, med, _ = turns(workers, calls, rounds)
    p90 = {side: statistics.quantiles(d, n=10)[8] for side, d in durations.items()}
    ratio_med, ratio_p90 = med["app"] / med["direct"], p90["app"] / p90["direct"]
    return Row(15, f"Streaming: time to first byte, chat deployment, emulator latency 0, events {chunk_ms} ms "
                   "apart: the app's stream (in process, through `/api/chat/completions`) ÷ a direct "
                   "`ChatCompletion.acreate(stream=True)`'s first chunk", "(reported)",
               f"median ×{fmt(ratio_med)}, p90 ×{fmt(ratio_p90)}",
               f"median {med['direct'] / 1e6:.2f} ms, p90 {p90['direct'] / 1e6:.2f} ms (= ×1.00)", None,
               [f"{len(durations['app'])} streams a side, each read to its end ({PAUSES * chunk_ms} ms of pacing); "
                f"app median {med['app'] / 1e6:.2f} ms, p90 {p90['app'] / 1e6:.2f} ms "
                f"(+{(med['app'] - med['direct']) / 1e3:.0f} µs to the first byte)"])


# -- 16. hundreds of long streams ------------------------------------------------------------------------
def many_streams(count: int, seconds: float) -> Row:
    """Both sides at once, each against an emulator of its own: warmed while their emulator does
    not pace, then ``count`` concurrent streams each about ``seconds`` long."""
    chunk_ms = round(seconds * 1000 / PAUSES)
    emulators = {side: emulator() for side in SIDES}
    try:
        workers = {side: start(side, "streams", emulators[side].info, stdin=True, body=STREAM[side], count=count,
                               seconds=seconds) for side in SIDES}
        for side, worker in workers.items():
            ready(worker)
            emulators[side].openai_control.config(stream_chunk_ms=chunk_ms)
        for worker in workers.values():
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = {side: finish(worker, timeout=seconds * 3 + 60) for side, worker in workers.items()}
    finally:
        for emu in emulators.values():
            emu.stop()

    def show(r: dict) -> str:
        during = (r["rss_during"] - r["rss_before"]) / count / 1024
        after = (r["rss_after"] - r["rss_before"]) / 2 ** 20
        return (f"{r['cpu_seconds']:.2f} CPU s in all, {r['cpu_seconds'] / count * 1000:.2f} ms a stream; "
                f"RSS +{during:.0f} KiB a stream in flight (+{after:.1f} MiB after); "
                f"{r['ok']} of {count} streamed")

    app, direct = results["app"], results["direct"]
    return Row(16, f"Streaming: {count} concurrent streams of ~{seconds:g} s each (chat, events {chunk_ms} ms apart): "
                   "CPU seconds and resident-memory growth a stream; direct `acreate(stream=True)` doing the same "
                   "streams", "(reported)", show(app), show(direct), None,
               [f"{count} streams: lasted {app['duration_median_s']:.1f} s (median; app) and "
                f"{direct['duration_median_s']:.1f} s (direct); app CPU a stream "
                f"×{fmt(app['cpu_seconds'] / direct['cpu_seconds'])} direct acreate's"])


# -- 17. through the dev host, before and after the streaming extension ------------------------------------
class DevHost:
    """``python -m devserver`` for the app in ``app_dir`` (None: the project's own), HTTP only,
    on a free port, pointed at ``emu``."""

    def __init__(self, emu, app_dir: Path | None = None) -> None:
        args = ["--app-dir", str(app_dir), "--host-json", str(ROOT / "host.json")] if app_dir else []
        self.process = subprocess.Popen(
            [PYTHON, "-m", "devserver", "--port", "0", "--no-storage",
             "--settings", str(Path(tempfile.mkdtemp()) / "local.settings.json"), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=clean_env(**emu.app_settings(deployment="gpt-35-turbo-instruct"), AZURE_OPENAI_TIMEOUT="10"))
        self.banner: list[str] = []
        for line in self.process.stdout:
            self.banner.append(line)
            if (found := re.search(r"Dev host listening on (http://\S+)", line)):
                self.url = found.group(1)
                break
        else:
            self.process.wait(timeout=30)
            raise RuntimeError("the dev host did not start:\n" + "".join(self.banner))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _ in self.process.stdout:  # so that the host never blocks on a full pipe
            pass

    def __enter__(self) -> DevHost:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def dev_host_in_flight(callers: int, seconds: float) -> Row:
    """Closed-loop callers (aiohttp, in a process of their own) each waiting 1 s on the emulator,
    through the dev host: achieved ÷ ideal, and the dev host's CPU (its whole process: HTTP server,
    the function, and after the move the proxy and uvicorn) per completion."""
    results = {}
    with emulator("--latency-ms", "1000") as emu:
        for mode, app_dir in (("before", ROOT / "benchmarks" / "classic_app"), ("after", None)):
            with DevHost(emu, app_dir) as host:
                emu.openai_control.reset()
                results[mode] = finish(start("http", "load", {}, url=host.url + "/api/completions", body=REQUEST,
                                             callers=callers, seconds=seconds, watch_pid=host.process.pid,
                                             warm_wave=True),
                                       timeout=seconds * 3 + 60)

    def show(r: dict) -> str:
        return (f"{fmt(r['ok'] / r['seconds'] / callers, 3)} ({r['failed']} failed); "
                f"{r['cpu_seconds'] / max(1, r['ok']) * 1000:.2f} ms of dev-host CPU a completion, "
                f"dev host {r['cpu_seconds'] / r['seconds']:.0%} busy")

    before, after = results["before"], results["after"]
    cpu_ratio = (after["cpu_seconds"] / max(1, after["ok"])) / (before["cpu_seconds"] / max(1, before["ok"]))
    return Row(17, f"In flight through the dev host, non-streamed completions, emulator latency 1000 ms, {callers} "
                   "concurrent callers: achieved ÷ ideal, dev-host CPU a completion; after the move to the "
                   "streaming extension (this app) and before (the classic path: `func.HttpRequest`, no extension)",
               "(reported)", show(after), f"before: {show(before)}", None,
               [f"through the dev host, {callers} callers: CPU a completion after ×{fmt(cpu_ratio)} before; "
                f"client-side median {after['median_ms']:.0f} ms after, {before['median_ms']:.0f} ms before"])
