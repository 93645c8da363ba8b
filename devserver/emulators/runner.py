"""Start the Azure OpenAI emulator and the managed-identity endpoint, alone or together.

From Python (tests, the dev host, benchmarks)::

    with Emulators.start(latency_ms=0) as emulators:
        emulators.app_settings()   # the settings that point an app at them

From the command line (an interface other tools rely on; keep it stable)::

    python -m devserver.emulators [--host 127.0.0.1] [--port 0] [--latency-ms N] [--token-lifetime S]
                                  [--stream-chunk-ms N] [--deployment NAME=KIND:MODEL[:VERSION] ...]

prints one line of JSON once both accept connections, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .azure_openai import OpenAIServer
from .control_client import EmulatorControl
from .deployments import DEFAULT_DEPLOYMENTS, Deployment, parse_cli
from .identity import DEFAULT_TOKEN_LIFETIME, IdentityServer
from .tokens import TokenSigner

DEFAULT_DEPLOYMENT = "gpt-4.1-mini"  # a chat model: what make run serves
LEGACY_DEPLOYMENT = "gpt-35-turbo-instruct"  # the retired completions model, for the completions API itself


@dataclass
class Emulators:
    openai: OpenAIServer | None
    identity: IdentityServer | None

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0, *, latency_ms: int = 0,
              token_lifetime: float = DEFAULT_TOKEN_LIFETIME, api_key: str | None = None,
              token_secret: str | None = None, only: str | None = None, stream_chunk_ms: int = 0,
              deployments: dict[str, Deployment] | None = None) -> Emulators:
        """Both servers (or ``only`` one), serving on daemon threads. ``port`` is the
        OpenAI emulator's; the identity endpoint takes any free port."""
        signer = TokenSigner(token_secret)
        identity = openai = None
        if only in (None, "identity"):
            identity = IdentityServer(host, port if only == "identity" else 0, signer=signer,
                                      token_lifetime=token_lifetime).start()
        if only in (None, "openai"):
            openai = OpenAIServer(host, port, api_key=api_key, signer=signer, latency_ms=latency_ms,
                                  identity=identity.state if identity else None, stream_chunk_ms=stream_chunk_ms,
                                  deployments=deployments).start()
        return cls(openai, identity)

    @property
    def openai_control(self) -> EmulatorControl:
        assert self.openai is not None
        return EmulatorControl(self.openai.base_url)

    @property
    def identity_control(self) -> EmulatorControl:
        assert self.identity is not None
        return EmulatorControl(self.identity.base_url)

    def stop(self) -> None:
        for server in (self.openai, self.identity):
            if server is not None:
                server.stop()

    def __enter__(self) -> Emulators:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> dict:
        """The JSON line the command line prints."""
        out: dict = {}
        if self.openai is not None:
            # Kinds and models: GET /_emulator/config (this line's keys stay as they are).
            out.update(endpoint=self.openai.endpoint, api_key=self.openai.api_key,
                       deployments=list(self.openai.state.deployments))
        if self.identity is not None:
            out.update(identity_endpoint=self.identity.endpoint, identity_header=self.identity.header)
        return out

    def app_settings(self, auth: str = "managed_identity", deployment: str = DEFAULT_DEPLOYMENT,
                     api: str | None = None) -> dict[str, str]:
        """Application settings pointing the app at these emulators (``api``: AZURE_OPENAI_API)."""
        assert self.openai is not None
        settings = {"AZURE_OPENAI_ENDPOINT": self.openai.endpoint, "AZURE_OPENAI_DEPLOYMENT": deployment,
                    "AZURE_OPENAI_AUTH": auth}
        if api is not None:
            settings["AZURE_OPENAI_API"] = api
        if auth == "key":
            settings["AZURE_OPENAI_API_KEY"] = self.openai.api_key
        elif self.identity is not None:
            settings.update(IDENTITY_ENDPOINT=self.identity.endpoint, IDENTITY_HEADER=self.identity.header)
        return settings


class EmulatorProcess:
    """The emulators in a process of their own, through the command line above: for
    measurements and tests where the emulators' threads must not compete with the app
    for this process's CPU and GIL (as a real Azure OpenAI would not)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "devserver.emulators", *args],
                                        cwd=Path(__file__).resolve().parents[2], env=env or dict(os.environ),
                                        stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.process.stdout.readline())
        self.openai_control = EmulatorControl(self.info["endpoint"])
        self.identity_control = EmulatorControl(self.info["identity_endpoint"].rsplit("/msi/", 1)[0])

    def app_settings(self, auth: str = "managed_identity", deployment: str = DEFAULT_DEPLOYMENT,
                     api: str | None = None) -> dict[str, str]:
        settings = {"AZURE_OPENAI_ENDPOINT": self.info["endpoint"], "AZURE_OPENAI_DEPLOYMENT": deployment,
                    "AZURE_OPENAI_AUTH": auth}
        if api is not None:
            settings["AZURE_OPENAI_API"] = api
        if auth == "key":
            settings["AZURE_OPENAI_API_KEY"] = self.info["api_key"]
        else:
            settings.update(IDENTITY_ENDPOINT=self.info["identity_endpoint"],
                            IDENTITY_HEADER=self.info["identity_header"])
        return settings

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.emulators", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="OpenAI emulator port (0 = any free port)")
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every completion")
    parser.add_argument("--token-lifetime", type=float, default=DEFAULT_TOKEN_LIFETIME,
                        help="seconds a managed-identity token is valid")
    parser.add_argument("--api-key", default=None, help="the key to accept (default: random)")
    parser.add_argument("--token-secret", default=None,
                        help="signing secret shared with an emulator in another process")
    parser.add_argument("--only", choices=("openai", "identity"), default=None,
                        help="start just one of the two")
    parser.add_argument("--stream-chunk-ms", type=int, default=0, help="pause between streamed events")
    parser.add_argument("--deployment", action="append", default=[], metavar="NAME=KIND:MODEL[:VERSION]",
                        help="add or replace a deployment (kind: completions, chat or reasoning); repeatable")
    args = parser.parse_args(argv)
    try:
        added = [parse_cli(value) for value in args.deployment]
    except ValueError as exc:
        parser.error(str(exc))
    deployments = {**DEFAULT_DEPLOYMENTS, **{d.name: d for d in added}}
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C included: stop cleanly, whenever it comes
        signal.signal(signum, lambda *_: stopped.set())
    emulators = Emulators.start(args.host, args.port, latency_ms=args.latency_ms,
                                token_lifetime=args.token_lifetime, api_key=args.api_key,
                                token_secret=args.token_secret, only=args.only,
                                stream_chunk_ms=args.stream_chunk_ms, deployments=deployments)
    print(json.dumps(emulators.describe()), flush=True)
    stopped.wait()
    emulators.stop()
    return 0


__all__ = ["Emulators", "EmulatorProcess", "DEFAULT_DEPLOYMENT", "DEFAULT_DEPLOYMENTS", "main"]
