"""Azurite's queue service (npm, devserver/azurite) for the tests that use real Storage queues."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devserver.host.storage import DEV_ACCOUNT_KEY

ROOT = Path(__file__).resolve().parents[2]
AZURITE_QUEUE = ROOT / "devserver" / "azurite" / "node_modules" / ".bin" / "azurite-queue"


def connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_ACCOUNT_KEY};"
            f"QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def need_azurite() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the Azurite tests need it")
    assert AZURITE_QUEUE.exists(), "Azurite is not installed: run `make test` (npm ci --prefix devserver/azurite)"


def running_azurite() -> Iterator[str]:
    """Azurite's queue service on a free port, in memory; yields its connection string (a fixture's body)."""
    need_azurite()
    process = subprocess.Popen(
        [str(AZURITE_QUEUE), "--queueHost", "127.0.0.1", "--queuePort", "0", "--inMemoryPersistence",
         "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tempfile.mkdtemp())
    try:
        assert process.stdout is not None
        for line in process.stdout:
            found = re.search(r"listens on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        else:
            raise AssertionError("Azurite did not start")
        yield connection_string(int(found.group(1)))
    finally:
        process.terminate()
        process.wait(timeout=10)
