"""What the benchmark runner (``run.py``) and the telemetry benchmarks (``telemetry.py``) share:
the clean environment of a benchmark process, interleaved sequential timing, and the table's row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The app's settings, and the telemetry switches: a benchmark process never exports anywhere by accident.
SETTING_PREFIXES = ("AZURE_OPENAI_", "OPENAI_", "COMPLETIONS_", "IDENTITY_", "MSI_", "AZURE_CLIENT", "OTEL_",
                    "APPLICATIONINSIGHTS_", "PYTHON_APPLICATIONINSIGHTS_", "AZURE_MONITOR")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env["PYTHONPATH"] = str(ROOT)
    # The app imports the streaming extension: the worker (and the dev host) serve it only with
    # this app setting, as make run and the Bicep template set it.
    env["PYTHON_ENABLE_INIT_INDEXING"] = "1"
    env.update(extra)
    return env


def take_turns(workers: dict[str, subprocess.Popen], calls: int, rounds: int) -> dict[str, list[int]]:
    """Sequential per-request durations (ns) from interactive workers (each line asks for that
    many calls), the sides taking turns in ``rounds`` blocks in alternating order, so that the
    machine's drift over the run falls on both alike. Closes the workers' input when done."""
    durations: dict[str, list[int]] = {side: [] for side in workers}
    sides = list(workers)
    try:
        for number in range(rounds):
            for side in (sides if number % 2 == 0 else sides[::-1]):
                workers[side].stdin.write(f"{calls // rounds}\n")
                workers[side].stdin.flush()
                durations[side] += json.loads(workers[side].stdout.readline())
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait(timeout=60)
    return durations


@dataclass
class Row:
    number: int
    metric: str
    target: str
    app: str
    baseline: str
    met: bool | None
    notes: list[str] = field(default_factory=list)


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def start_worker(module: str, side: str, scenario: str, emulator_info: dict, stdin: bool = False,
                 **config) -> subprocess.Popen:
    """``python -m benchmarks.<module> side scenario '<config>'``, against the emulator ``emulator_info``
    describes; it prints its results as its last line (``finish``)."""
    return subprocess.Popen([PYTHON, "-m", f"benchmarks.{module}", side, scenario,
                             json.dumps({"emulator": emulator_info, **config})],
                            cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE if stdin else None)


def finish(worker: subprocess.Popen, timeout: float = 300) -> dict:
    out, _ = worker.communicate(timeout=timeout)
    if worker.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({worker.returncode})")
    return json.loads(out.strip().splitlines()[-1])
