"""A local Functions host for this app, for machines without Azure Functions Core Tools.

``python -m devserver`` does what ``func start`` does, for the triggers this app
uses: loads ``local.settings.json`` ``Values`` into the environment (variables
already set win, as with Core Tools), imports ``function_app``, reads every
function's bindings from the app's own metadata, and serves them all on one
asyncio event loop, as the Python worker runs coroutine functions:

- HTTP triggers on their routes (``host.json`` ``extensions.http``);
- queue triggers against the storage in ``AzureWebJobsStorage`` (Azurite, which
  it starts when nothing answers on Azurite's queue port), as ``host.json``
  ``extensions.queues`` says, with queue output bindings;
- Event Grid triggers through the webhook ``/runtime/webhooks/EventGrid``;
- the admin API (``/admin/functions``) that lists functions and invokes
  non-HTTP ones.

Function keys are checked only with ``--function-key``. When no Azure OpenAI
endpoint is configured it also starts the emulators and points the app at them
with managed-identity auth.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from azure.core.exceptions import AzureError, ResourceExistsError

from ..emulators import DEFAULT_DEPLOYMENT, Emulators
from . import http_v2
from . import storage as storage_module
from .admin import AdminApi
from .bindings import QueueOutputs
from .eventgrid import WEBHOOK_PATH, EventGridWebhook
from .functions import TRIGGER_EVENT_GRID, TRIGGER_QUEUE, Function, Invoker, index
from .hostconfig import HostConfig, HostConfigError
from .http_triggers import HttpTriggers, compile_template  # noqa: F401 - compile_template: part of this API
from .keys import FunctionKeys
from .origins import Origins
from .queues import QueueListener, poison_queue_name
from .server import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, BoundedServer, connection_limit, raise_file_limit
from .storage import AzuriteProcess, StorageAccount

APP_DIR = Path(__file__).resolve().parents[2]
SHUTDOWN_GRACE = 10.0  # seconds invocations in flight get to finish on Ctrl-C
log = logging.getLogger("devserver")


# -- settings ---------------------------------------------------------------------------
def local_cors(path: Path) -> tuple[str, ...]:
    """``Host.CORS`` from local.settings.json (Core Tools' setting): the origins allowed."""
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return ()
    host = document.get("Host") if isinstance(document, dict) else None
    cors = host.get("CORS") if isinstance(host, dict) else None
    return tuple(o.strip() for o in cors.split(",") if o.strip()) if isinstance(cors, str) else ()


def load_local_settings(path: Path, environ: dict | os._Environ = os.environ,
                        say: Callable[[str], None] = print) -> dict[str, str]:
    """Apply ``Values`` from local.settings.json to ``environ``; returns what was applied."""
    if not path.exists():
        return {}
    document = json.loads(path.read_text(encoding="utf-8-sig"))
    if document.get("IsEncrypted"):
        raise SystemExit(f"{path.name} is encrypted; decrypt it with `func settings decrypt` first.")
    applied = {}
    for name, value in (document.get("Values") or {}).items():
        if not isinstance(value, str):
            say(f"Skipping '{name}' from {path.name}: values must be strings.")
        elif name in environ:
            say(f"Skipping '{name}' from {path.name} as it's already defined in current environment variables.")
        else:
            environ[name] = applied[name] = value
    return applied


def route_prefix(host_json: Path) -> str:
    try:
        return HostConfig.load(host_json).http.route_prefix
    except HostConfigError:
        return "api"


def endpoint_configured(environ) -> bool:
    return bool((environ.get("AZURE_OPENAI_ENDPOINT") or environ.get("OPENAI_API_BASE") or "").strip())


def point_at_emulators(emulators: Emulators, environ=os.environ) -> None:
    """Settings that make the app use the emulators, with managed identity as in Azure."""
    environ.update(emulators.app_settings(auth="managed_identity",
                                          deployment=environ.get("AZURE_OPENAI_DEPLOYMENT") or DEFAULT_DEPLOYMENT))


# -- storage ----------------------------------------------------------------------------
@dataclass
class Storage:
    """The storage account queues live in, the Azurite this host started (if any), and,
    when queues cannot be served, why."""

    account: StorageAccount | None = None
    azurite: AzuriteProcess | None = None
    problem: str | None = None
    loud: bool = False  # say the problem in a box: the user expected queues to work

    def stop(self) -> None:
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None


def prepare_storage(environ, enabled: bool = True) -> Storage:
    """The account from ``AzureWebJobsStorage``, with Azurite started when it is this
    machine's Azurite and nothing answers on its queue port."""
    if not enabled:
        return Storage(problem="storage is off (--no-storage)")
    try:
        account = storage_module.storage_account(environ)
    except ValueError as error:
        return Storage(problem=str(error), loud=True)
    if not account.is_local_azurite:
        return Storage(account)
    host, port = account.host_port
    if storage_module.answers(host, port):
        return Storage(account)
    if not storage_module.node_available():
        return Storage(problem=f"Node.js is not installed, so Azurite cannot run on {host}:{port} "
                               "(install Node.js, then `make run` installs Azurite with npm)", loud=True)
    if not storage_module.AZURITE_QUEUE.exists():
        return Storage(problem="Azurite is not installed: run `make run` (it runs `npm ci --prefix devserver/azurite`)",
                       loud=True)
    try:
        return Storage(account, AzuriteProcess(host.strip("[]"), port))
    except (OSError, RuntimeError) as error:
        return Storage(problem=f"Azurite could not start on {host}:{port}: {error}", loud=True)


# -- the host ---------------------------------------------------------------------------
@dataclass
class DevHost:
    functions: list[Function]
    config: HostConfig
    storage: Storage
    keys: FunctionKeys
    host: str = "127.0.0.1"
    port: int = 7071
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    unserved: dict[str, str] = field(default_factory=dict)
    listeners: dict[str, QueueListener] = field(default_factory=dict)
    cors: tuple[str, ...] = ()  # origins whose browser requests are allowed (--cors, Host.CORS)

    async def start(self) -> None:
        """Serve; whatever started is stopped again when a later step fails (a port already taken,
        an app the worker would not load), so nothing is left open behind the error."""
        self.service = self.server = self.http = self.worker = self.admin = None
        self._tasks = []
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        for function in self.functions:
            reason = function.unserved_reason()
            if reason:
                self.unserved[function.name] = reason
        self.invoker = Invoker(self.config.function_timeout)
        if self.storage.account is not None:
            await self._connect_storage()
        for function in self.functions:
            if function.name not in self.unserved and function.queue_names() and self.service is None:
                self.unserved[function.name] = f"needs storage (AzureWebJobsStorage): {self.storage.problem}"
        served = [f for f in self.functions if f.name not in self.unserved]
        self.outputs = None
        if self.service is not None:
            self.outputs = QueueOutputs(self.service, self.config.queues.message_encoding, self._notify)
        body_timeout = self.idle_timeout
        self.worker = None
        if http_v2.enabled():  # the app streams: its HTTP functions are served as the worker serves them
            http_v2.check(served)
            self.worker = http_v2.WorkerServer()
            await self.worker.start()
        self.http = HttpTriggers(served, self.config.http, self.invoker, self.keys, body_timeout, self.worker)
        self.webhook = EventGridWebhook(served, self.invoker, self.outputs, self.keys, body_timeout)
        self.admin = AdminApi(self.functions, self.invoker, self.outputs, self.keys, self.unserved,
                              self._invoke_url, body_timeout)
        app = web.Application()  # bodies are read by read_body, with its own cap
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        self.origins = Origins(self.host, self.cors)
        app.on_response_prepare.append(self.origins.on_prepare)
        self.server = await BoundedServer(app, self.host, self.port, max_connections=self.max_connections,
                                          idle_timeout=self.idle_timeout, shutdown_timeout=SHUTDOWN_GRACE).start()
        self.origins.port = self.server.port
        for function in served:
            if function.trigger_type == TRIGGER_QUEUE:
                assert self.outputs is not None
                listener = QueueListener(function, self.service, self.config.queues, self.invoker, self.outputs)
                self.listeners[listener.queue_name] = listener
                self._tasks.append(asyncio.create_task(listener.run(), name=f"listener:{function.name}"))

    async def _connect_storage(self) -> None:
        """A client for the account, and every queue the served functions use created."""
        names = set()
        for function in self.functions:
            if function.name in self.unserved or not function.queue_names():
                continue
            names |= function.queue_names()
            if function.trigger_type == TRIGGER_QUEUE:
                names.add(poison_queue_name(str(function.trigger["queueName"])))
        names.discard(None)
        # Storage's own retries would hold a poll for a minute when Azurite stops; the
        # listener backs off on its own, so only a couple of quick retries here.
        service = storage_module.queue_service(self.storage.account, initial_backoff=1, increment_base=2,
                                               retry_total=2, random_jitter_range=0)
        try:
            async with asyncio.timeout(30):
                for name in sorted(names):
                    try:
                        await service.get_queue_client(name).create_queue()
                    except ResourceExistsError:
                        pass
        except (AzureError, TimeoutError, OSError) as error:
            await service.close()
            self.storage.problem = (f"the queues could not be created on {self.storage.account.describe()}: "
                                    f"{type(error).__name__}")
            self.storage.loud = True
            return
        self.service = service
        self.queue_names = sorted(names)

    def _notify(self, queue_name: str) -> None:
        listener = self.listeners.get(queue_name)
        if listener is not None:
            listener.notify()

    def _invoke_url(self, function: Function) -> str | None:
        for route in self.http.routes:
            if route.function is function:
                return f"{self.server.base_url}/{route.template}"
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        refusal = self.origins.refusal(request)
        if refusal is not None:
            return refusal
        path = "/" + request.path.lstrip("/")  # runs of leading slashes collapse, as in Azure
        lower = path.lower()
        if lower.rstrip("/") == WEBHOOK_PATH:
            return await self.webhook.handle(request)
        if lower == "/admin" or lower.startswith("/admin/"):
            return await self.admin.handle(request, self.server.base_url)
        found = self.http.find(path, request.method)
        if found is None:
            raw = "/" + request.raw_path.split("?", 1)[0].lstrip("/")
            found = self.http.find(raw, request.method, encoded=True)
        if found is None:
            return web.Response(status=404)
        return await self.http.handle(request, *found)

    async def stop(self) -> None:
        for listener in self.listeners.values():
            listener.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*([self.server.stop()] if self.server is not None else []),
                             *([self.admin.drain(SHUTDOWN_GRACE)] if self.admin is not None else []),
                             *(listener.drain(SHUTDOWN_GRACE) for listener in self.listeners.values()),
                             return_exceptions=True)
        if self.service is not None:
            await self.service.close()
        if self.http is not None:
            await self.http.close()
        if self.worker is not None:
            await self.worker.stop()
        if getattr(self, "invoker", None) is not None:
            self.invoker.close()

    def banner(self, emulators: Emulators | None, appconfig=None) -> str:
        base = self.server.base_url
        lines = ["", "Functions:", ""]
        for route in self.http.routes:
            lines.append(f"        {route.function.name}: [{','.join(route.methods)}] {base}/{route.template}")
        for function in self.functions:
            if function.name in self.unserved:
                lines.append(f"        {function.name}: {function.trigger_type}: not served here: "
                             f"{self.unserved[function.name]}")
            elif function.trigger_type == TRIGGER_QUEUE:
                lines.append(f"        {function.name}: {TRIGGER_QUEUE}: queue '{function.trigger['queueName']}' "
                             f"({function.trigger.get('connection') or storage_module.SETTING})")
            elif function.trigger_type == TRIGGER_EVENT_GRID:
                lines.append(f"        {function.name}: {TRIGGER_EVENT_GRID}: "
                             f"{EventGridWebhook.url(base, function.name)}")
        lines += [""]
        if self.service is not None and self.storage.account is not None:
            started = " (started by the dev host, in memory; it stops with it)" if self.storage.azurite else ""
            lines.append(f"Storage: {self.storage.account.queue_endpoint}{started}; "
                         f"queues: {', '.join(self.queue_names)}")
        lines.append(f"Admin API: {base}/admin/functions (POST /admin/functions/{{name}} "
                     '{"input": "..."} invokes a non-HTTP function)')
        lines.append("Function keys are checked (--function-key): FUNCTION routes, the webhook and the admin API "
                     "need ?code= or x-functions-key." if self.keys.enabled else
                     "Function keys are not checked locally (as with Core Tools); in Azure, "
                     "authLevel FUNCTION routes need ?code= or x-functions-key.")
        stars = "*" * 78
        if self.storage.problem and self.storage.loud:
            lines += ["", stars, "* QUEUES ARE NOT SERVED: " + self.storage.problem,
                      "* Only HTTP functions (and the admin API) work. Set AzureWebJobsStorage, or see the",
                      "* docs/dev-host.md (\"The dev host\", Storage) for running Azurite.", stars]
        if emulators is not None:
            lines += ["", stars,
                      "* No AZURE_OPENAI_ENDPOINT configured: answers come from the local EMULATOR,",
                      "* canned text rather than a model, with managed-identity tokens from the",
                      "* local identity endpoint. Set AZURE_OPENAI_ENDPOINT to use Azure OpenAI.",
                      f"* Emulator: {emulators.openai.endpoint} (control API: {emulators.openai.base_url}/_emulator/)",
                      stars]
        if appconfig is not None:
            lines += ["", stars,
                      f"* Settings from the local App Configuration stand-in: {appconfig.endpoint}",
                      "* (prefix completions:, sentinel completions:sentinel; a request checks it when "
                      f"{os.environ.get('AZURE_APPCONFIG_REFRESH_SECONDS', '30')} s have passed since the last check).",
                      f"* Change one live: POST {appconfig.endpoint}/_emulator/settings",
                      "*   [{\"key\": \"completions:COMPLETIONS_MAX_TOKENS\", \"value\": \"64\"},",
                      "*    {\"key\": \"completions:sentinel\", \"value\": \"2\"}]   (curl -k, or --cacert "
                      f"{appconfig.ca_file})", stars]
        lines += ["", f"Dev host listening on {base} (Ctrl-C to stop)"]
        return "\n".join(lines)


def start_appconfig(seed: Path, emulators: Emulators | None, environ=os.environ):
    """The App Configuration and Key Vault stand-ins, seeded from ``seed``, and the bootstrap
    settings that point the app at them (over HTTPS with a local CA; the emulators' identity
    when they run, else the store's connection string). A request checks the sentinel once 5 s
    have passed since the last check (unless AZURE_APPCONFIG_REFRESH_SECONDS says otherwise), so
    a change shows quickly."""
    from ..emulators.appconfig import AppConfigStandIns

    standins = AppConfigStandIns.start(seed, identity=emulators.identity if emulators is not None else None)
    auth = "managed_identity" if emulators is not None else "connection_string"
    for name, value in standins.app_settings(auth).items():
        environ[name] = value
    environ.setdefault("AZURE_APPCONFIG_REFRESH_SECONDS", "5")
    return standins


async def serve(devhost: DevHost, emulators: Emulators | None, appconfig=None) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stopping.is_set():  # a second Ctrl-C: stop now
            os._exit(130)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C included: stop cleanly, whenever it comes
        loop.add_signal_handler(signum, on_signal)
    await devhost.start()
    print(devhost.banner(emulators, appconfig), flush=True)
    await stopping.wait()
    await devhost.stop()
    # The app's own client sessions stay open to the end, as in the worker, whose process
    # just exits; asyncio would report each one as it is collected with the loop.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071, help="0 = any free port")
    parser.add_argument("--app-dir", type=Path, default=APP_DIR, help="folder of function_app.py and host.json")
    parser.add_argument("--settings", type=Path, default=None,
                        help="local settings file (default: local.settings.json in the app folder)")
    parser.add_argument("--host-json", type=Path, default=None,
                        help="host.json to apply (default: the app folder's); tests use it for shorter timings")
    parser.add_argument("--function-key", default=None,
                        help="check function keys as Azure does: FUNCTION routes, the Event Grid webhook and "
                             "the admin API need this key (?code= or x-functions-key)")
    parser.add_argument("--no-storage", action="store_true",
                        help="serve HTTP only: no storage, no queue or Event Grid functions")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help="open connections at most; beyond, the oldest idle one is closed")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT,
                        help="seconds a connection may wait before sending a request (or its body)")
    parser.add_argument("--emulator-latency-ms", type=int, default=0,
                        help="latency of the embedded Azure OpenAI emulator")
    parser.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                        help="allow browser requests from ORIGIN (repeat, or * for any; also local.settings.json "
                             "Host.CORS); other cross-origin requests get 403")
    parser.add_argument("--appconfig", type=Path, default=None, metavar="FILE.json",
                        help="take settings from a local Azure App Configuration (and Key Vault) stand-in seeded "
                             "from FILE.json, refreshed live (e.g. devserver/appconfig.example.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("azure").setLevel(logging.WARNING)  # azure-core logs every request at INFO

    load_local_settings(args.settings or args.app_dir / "local.settings.json")
    try:
        config = HostConfig.load(args.host_json or args.app_dir / "host.json")
    except HostConfigError as error:
        raise SystemExit(f"host.json: {error}") from None
    max_connections = connection_limit(args.max_connections, raise_file_limit())
    emulators = None
    if not endpoint_configured(os.environ):
        emulators = Emulators.start(latency_ms=args.emulator_latency_ms)
        point_at_emulators(emulators)
    appconfig = start_appconfig(args.appconfig, emulators) if args.appconfig else None
    storage = prepare_storage(os.environ, enabled=not args.no_storage)
    try:
        sys.path.insert(0, str(args.app_dir.resolve()))
        app = importlib.import_module("function_app").app
        devhost = DevHost(index(app.get_functions()), config, storage, FunctionKeys(args.function_key),
                          args.host, args.port, max_connections, args.idle_timeout,
                          cors=(*args.cors, *local_cors(args.settings or args.app_dir / "local.settings.json")))
        asyncio.run(serve(devhost, emulators, appconfig))
    except http_v2.HttpV2Error as error:  # what the worker reports when it cannot load the functions
        print(f"The app's functions cannot be served: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the port is taken, most likely
        print(f"The dev host cannot listen on {args.host}:{args.port}: {error.strerror or error}"
              " (another `make run` or `func start`? `make run ARGS=\"--port 8080\"` picks another port)",
              file=sys.stderr)
        return 1
    finally:
        storage.stop()
        if appconfig is not None:
            appconfig.stop()
        if emulators is not None:
            emulators.stop()
    print("Dev host stopped.", flush=True)
    return 0
