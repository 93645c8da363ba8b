"""The dev host (`python -m devserver`) as a subprocess, for tests that use it over real sockets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from support.app_client import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[2]
STORAGE_SETTINGS = ("AzureWebJobsStorage", "AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__accountName",
                    "COMPLETIONS_REQUEST_QUEUE", "COMPLETIONS_RESULT_QUEUE")


class DevHostProcess:
    """Starts the dev host and reads its banner; its log (stderr) is drained on a thread
    (so the host never blocks on a full pipe) and searchable with ``wait_for_log``."""

    def __init__(self, *args: str, env: dict | None = None, settings: Path | None = None, start_timeout: float = 60,
                 file_limit: int | None = None):
        """``file_limit``: the process's open-file limit, soft and hard (Linux distributions'
        usual soft limit is 1024)."""
        environ = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES + STORAGE_SETTINGS}
        environ["PYTHON_ENABLE_INIT_INDEXING"] = "1"  # the app streams: as make run and the Bicep template set it
        environ.update(env or {})
        command = [sys.executable, "-m", "devserver", "--port", "0",
                   "--settings", str(settings or ROOT / "tests" / "no-such-local.settings.json"), *args]
        self.process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        preexec_fn=(lambda: _limit_files(file_limit)) if file_limit else None)
        self.log_lines: list[str] = []
        self._log_changed = threading.Condition()
        threading.Thread(target=self._drain_log, daemon=True).start()
        self.banner: list[str] = []
        deadline = time.monotonic() + start_timeout
        for line in self.process.stdout:
            self.banner.append(line.rstrip("\n"))
            found = re.search(r"Dev host listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
            if time.monotonic() > deadline:
                break
        else:
            self.process.wait(timeout=10)
            raise AssertionError("dev host did not start:\n" + "\n".join(self.banner + self.log_lines[-30:]))

    def _drain_log(self) -> None:
        for line in self.process.stderr:
            with self._log_changed:
                self.log_lines.append(line.rstrip("\n"))
                self._log_changed.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(self.banner)

    @property
    def log(self) -> str:
        with self._log_changed:
            return "\n".join(self.log_lines)

    def wait_for_log(self, pattern: str, timeout: float = 30, count: int = 1) -> list[str]:
        """The log lines matching ``pattern`` once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        with self._log_changed:
            while True:
                found = [line for line in self.log_lines if re.search(pattern, line)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {count} log lines matching {pattern!r} within {timeout} s:\n"
                                         + "\n".join(self.log_lines[-40:]))
                self._log_changed.wait(left)

    def routes(self) -> dict[str, tuple[str, str]]:
        """Function name -> (methods, URL), as the banner lists HTTP functions."""
        found = re.findall(r"^\s+(\w+): \[([A-Z,]+)\] (http://\S+)$", self.text, re.MULTILINE)
        return {name: (methods, url) for name, methods, url in found}

    def served(self) -> dict[str, str]:
        """Function name -> how the banner says it is served (non-HTTP functions)."""
        return dict(re.findall(r"^\s+(\w+): (\w+Trigger: .+)$", self.text, re.MULTILINE))

    def stop(self) -> int:
        """Ctrl-C, as a user would; the exit code. What it printed on the way out is in ``tail``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)  # after the banner it prints one line: the pipe cannot fill
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.tail = self.process.stdout.read()
        return self.process.returncode


def _limit_files(count: int) -> None:  # runs in the child, before exec
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))
