"""The storage behind ``AzureWebJobsStorage``: which account, whether it is local
Azurite, starting Azurite when it is not running, and queue clients on it.

``AzureWebJobsStorage`` is a connection string (``UseDevelopmentStorage=true``
means Azurite on 127.0.0.1:10000-10002 with its well-known account) or an
identity-based connection (``AzureWebJobsStorage__queueServiceUri`` or
``__accountName``, with ``DefaultAzureCredential``: your ``az login``). When it
points at Azurite on this machine and nothing answers on its queue port, the dev
host starts Azurite's queue service there itself (in memory, from
``devserver/azurite``) and stops it on exit.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

AZURITE_DIR = Path(__file__).resolve().parents[1] / "azurite"
AZURITE_QUEUE = AZURITE_DIR / "node_modules" / ".bin" / "azurite-queue"
DEV_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key: public, documented, the same on every machine.
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_QUEUE_PORT = 10001
SETTING = "AzureWebJobsStorage"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class StorageAccount:
    """Where the queues are, and how to authenticate (a connection string, or an
    account URL for identity-based connections)."""

    queue_endpoint: str  # e.g. http://127.0.0.1:10001/devstoreaccount1
    connection_string: str | None = None
    identity: bool = False

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.queue_endpoint)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def is_local_azurite(self) -> bool:
        """Azurite's development account on this machine: something the dev host may start."""
        host, _ = self.host_port
        path = urlsplit(self.queue_endpoint).path.strip("/")
        return host in _LOOPBACK and path == DEV_ACCOUNT and not self.identity

    def describe(self) -> str:
        """For the banner and logs: the endpoint only, never a key."""
        return f"{self.queue_endpoint} ({'identity-based' if self.identity else 'connection string'})"


def _connection_settings(connection_string: str) -> dict[str, str]:
    settings = {}
    for part in connection_string.split(";"):
        if "=" in part:
            name, value = part.split("=", 1)
            settings[name.strip().lower()] = value.strip()
    return settings


def storage_account(environ) -> StorageAccount:
    """The account ``AzureWebJobsStorage`` names (default: Azurite's development storage)."""
    connection = (environ.get(SETTING) or "").strip()
    if not connection:
        uri = (environ.get(f"{SETTING}__queueServiceUri") or "").strip()
        account = (environ.get(f"{SETTING}__accountName") or "").strip()
        if uri or account:
            return StorageAccount((uri or f"https://{account}.queue.core.windows.net").rstrip("/"), identity=True)
        connection = "UseDevelopmentStorage=true"
    settings = _connection_settings(connection)
    if settings.get("usedevelopmentstorage", "").lower() == "true":
        proxy = settings.get("developmentstorageproxyuri", "http://127.0.0.1").rstrip("/")
        endpoint = f"{proxy}:{DEV_QUEUE_PORT}/{DEV_ACCOUNT}"
        return StorageAccount(endpoint, (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};"
                                         f"AccountKey={DEV_ACCOUNT_KEY};QueueEndpoint={endpoint};"))
    if "queueendpoint" in settings:
        return StorageAccount(settings["queueendpoint"].rstrip("/"), connection)
    if "accountname" not in settings:
        raise ValueError(f"{SETTING} is not a storage connection string (it has no AccountName or QueueEndpoint)")
    protocol = settings.get("defaultendpointsprotocol", "https")
    suffix = settings.get("endpointsuffix", "core.windows.net")
    return StorageAccount(f"{protocol}://{settings['accountname']}.queue.{suffix}", connection)


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            return True
    except OSError:
        return False


def node_available() -> bool:
    return shutil.which("node") is not None


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl() if sys.platform.startswith("linux") else None  # looked up here, not after fork


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: Azurite gets SIGTERM if the dev host dies without stopping it (kill -9, a crash)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class AzuriteProcess:
    """Azurite's queue service, in memory, on host:port; ``stop()`` ends it."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port = host, port
        self._workdir = tempfile.TemporaryDirectory(prefix="devhost-azurite-")
        self.process = subprocess.Popen(
            [str(AZURITE_QUEUE), "--queueHost", host, "--queuePort", str(port), "--inMemoryPersistence",
             "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self._workdir.name,
            preexec_fn=_die_with_parent if _PRCTL is not None else None)
        self.output: list[str] = []
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), name="azurite-output", daemon=True).start()
        if not ready.wait(timeout) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("Azurite did not start: " + " ".join(self.output[-5:]).strip())

    def _read(self, ready: threading.Event) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # drained to the end, so Azurite never blocks on a full pipe
            self.output = (self.output + [line.rstrip()])[-50:]
            if re.search(r"listens on http://", line):
                ready.set()
        ready.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._workdir.cleanup()


# -- message encoding (host.json extensions.queues.messageEncoding) ----------------------------
class UndecodableMessage(ValueError):
    """A message that is not valid for the configured encoding."""


def encode_message(body: str | bytes, encoding: str) -> str:
    """Queue message text for a body, as the output binding writes it."""
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8")


_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_SPACE = str.maketrans("", "", " \t\r\n")


def decode_message(text: str, encoding: str) -> bytes:
    """The body of a queue message, as the trigger reads it. Base64 is read as .NET's
    ``Convert.FromBase64String`` reads it: whitespace ignored, whole 4-character groups,
    at most two ``=``; anything else is undecodable."""
    if encoding != "base64":
        return text.encode("utf-8")
    compact = text.translate(_BASE64_SPACE)
    if len(compact) % 4 or not _BASE64.fullmatch(compact):
        raise UndecodableMessage("the message is not valid base64 (host.json messageEncoding is base64)")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise UndecodableMessage("the message is not valid base64 (host.json messageEncoding is base64)") from None


def queue_service(account: StorageAccount, **options):
    """An async QueueServiceClient (azure-storage-queue over aiohttp) for the account;
    ``options`` go to the client (retry settings)."""
    from azure.storage.queue.aio import QueueServiceClient

    if account.identity:
        from azure.identity.aio import DefaultAzureCredential

        return QueueServiceClient(account.queue_endpoint, credential=DefaultAzureCredential(), **options)
    return QueueServiceClient.from_connection_string(account.connection_string, **options)

