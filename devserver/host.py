"""A local host for the app's HTTP functions, for machines without Azure Functions Core Tools.

``python -m devserver`` does what ``func start`` does for HTTP triggers: loads
``local.settings.json`` ``Values`` into the environment (variables already set
win, as with Core Tools), imports ``function_app``, reads each HTTP function's
route, methods and route parameters from the app's own metadata, honours
``host.json``'s ``extensions.http.routePrefix``, and serves them over HTTP with
one thread per connection, so requests run in parallel as on the Functions
thread pool, and coroutine functions on one long-lived event loop, as the worker runs them.
Like Core Tools it does not check function keys locally.

When no Azure OpenAI endpoint is configured it also starts the emulators and
points the app at them with managed-identity auth.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote

import azure.functions as func

from .emulators import DEFAULT_DEPLOYMENT, Emulators
from .httpserver import Handler, Server

APP_DIR = Path(__file__).resolve().parent.parent
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
_CONSTRAINTS = {"int": r"-?\d+", "long": r"-?\d+", "alpha": r"[A-Za-z]+", "bool": r"(?:true|false)",
                "guid": r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}",
                "float": r"-?\d+(?:\.\d+)?", "double": r"-?\d+(?:\.\d+)?", "decimal": r"-?\d+(?:\.\d+)?"}
_PARAMETER = re.compile(r"^\{(?P<star>\*)?(?P<name>\w+)(?::(?P<constraint>\w+)(?:\([^)]*\))?)?(?P<optional>\?)?\}$")


# -- settings ---------------------------------------------------------------------------
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
        prefix = json.loads(host_json.read_text())["extensions"]["http"]["routePrefix"]
    except (OSError, ValueError, KeyError, TypeError):
        return "api"
    return str(prefix).strip("/")


def endpoint_configured(environ) -> bool:
    return bool((environ.get("AZURE_OPENAI_ENDPOINT") or environ.get("OPENAI_API_BASE") or "").strip())


def point_at_emulators(emulators: Emulators, environ=os.environ) -> None:
    """Settings that make the app use the emulators, with managed identity as in Azure."""
    environ.update(emulators.app_settings(auth="managed_identity",
                                          deployment=environ.get("AZURE_OPENAI_DEPLOYMENT") or DEFAULT_DEPLOYMENT))


# -- routes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    function_name: str
    template: str  # the full path template, prefix included
    methods: tuple[str, ...]
    pattern: re.Pattern
    call: Callable[[func.HttpRequest], Any]

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items() if v is not None}


def compile_template(template: str) -> re.Pattern:
    """An ASP.NET-style route template (``items/{id:int}/{name?}``, ``{*rest}``) as a regex."""
    regex = ""
    for segment in [s for s in template.split("/") if s]:
        parameter = _PARAMETER.match(segment)
        if parameter is None:
            regex += "/" + re.escape(segment)
            continue
        name = parameter["name"]
        if parameter["star"]:
            regex += f"(?:/(?P<{name}>.*))?"
            continue
        value = _CONSTRAINTS.get((parameter["constraint"] or "").lower(), r"[^/]+")
        piece = f"/(?P<{name}>{value})"
        regex += f"(?:{piece})?" if parameter["optional"] else piece
    return re.compile(regex or "/?", re.IGNORECASE)


def http_routes(functions: list, prefix: str, loop: AppLoop) -> tuple[list[Route], list[tuple[str, str]]]:
    """The app's HTTP functions as routes, and (name, reason) for each function not served."""
    routes, skipped = [], []
    for function in functions:
        # The function.json the worker gives the host: plain strings, as the host reads them.
        bindings = json.loads(function.get_function_json())["bindings"]
        spec = next(b for b in bindings if str(b.get("type", "")).endswith("Trigger"))
        name = function.get_function_name()
        if spec.get("type") != "httpTrigger":
            skipped.append((name, f"{spec.get('type')} (use `func start` for non-HTTP triggers)"))
            continue
        user_function = function.get_user_function()
        arg = spec["name"]
        extra = [p for p in inspect.signature(user_function).parameters if p not in (arg, "context")]
        if extra:
            skipped.append((name, f"needs bindings the dev host does not provide: {', '.join(extra)}"))
            continue
        template = "/".join(part for part in (prefix, str(spec.get("route") or name).strip("/")) if part)
        methods = tuple(m.upper() for m in (spec.get("methods") or ALL_METHODS))
        routes.append(Route(name, template, methods, compile_template(template), _caller(user_function, arg, loop)))
    return routes, skipped


class AppLoop:
    """The one long-lived event loop coroutine functions run on, on its own thread, as in
    the Functions worker (never a loop per request: the app keeps its connections and
    semaphores per loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="app-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def _caller(user_function, arg: str, loop: AppLoop) -> Callable[[func.HttpRequest], Any]:
    if inspect.iscoroutinefunction(user_function):
        return lambda request: loop.run(user_function(**{arg: request}))
    return lambda request: user_function(**{arg: request})


# -- serving -----------------------------------------------------------------------------
class HostHandler(Handler):
    routes: list[Route]  # set on the subclass built by DevHost

    def _dispatch(self) -> None:
        url = self.url()
        try:
            body = self.read_body()
        except ValueError:
            self.close_connection = True
            return self.send(400, b"Bad request body framing.", "text/plain")
        for route in self.routes:
            route_params = route.match(url.path)
            if route_params is not None and self.command in route.methods:
                return self._invoke(route, url, route_params, body)
        self.send(404, b"", None)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _invoke(self, route: Route, url, route_params: dict[str, str], body: bytes) -> None:
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.port}"
        request = func.HttpRequest(
            method=self.command, url=f"http://{host}{self.path}", headers=dict(self.headers.items()),
            params=dict(parse_qsl(url.query, keep_blank_values=True)), route_params=route_params, body=body)
        try:
            response = route.call(request)
        except Exception:  # noqa: BLE001 - as the Functions host: a 500, the traceback in the log
            logging.getLogger("devserver").error("Executed '%s' (Failed)\n%s", route.function_name,
                                                 traceback.format_exc())
            return self.send(500, b"", None)
        if response is None:
            return self.send(204)
        if not isinstance(response, func.HttpResponse):
            return self.send(200, str(response).encode(), "text/plain; charset=utf-8")
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        content_type = response.headers.get("Content-Type") or f"{response.mimetype}; charset={response.charset}"
        self.send(response.status_code, response.get_body(), content_type, headers)


class DevHost(Server):
    def __init__(self, routes: list[Route], host: str = "127.0.0.1", port: int = 7071) -> None:
        self.routes = routes
        super().__init__((host, port), type("BoundHostHandler", (HostHandler,), {"routes": routes}))


def banner(host: DevHost, skipped: list[tuple[str, str]], emulators: Emulators | None) -> str:
    lines = ["", "Functions:", ""]
    for route in host.routes:
        lines.append(f"        {route.function_name}: [{','.join(route.methods)}] {host.base_url}/{route.template}")
    for name, reason in skipped:
        lines.append(f"        {name}: not served here: {reason}")
    lines += ["", "Function keys are not checked locally (as with Core Tools); in Azure, "
                  "authLevel FUNCTION routes need ?code= or x-functions-key."]
    if emulators is not None:
        stars = "*" * 78
        lines += ["", stars,
                  "* No AZURE_OPENAI_ENDPOINT configured: answers come from the local EMULATOR,",
                  "* canned text rather than a model, with managed-identity tokens from the",
                  "* local identity endpoint. Set AZURE_OPENAI_ENDPOINT to use Azure OpenAI.",
                  f"* Emulator: {emulators.openai.endpoint} (control API: {emulators.openai.base_url}/_emulator/)",
                  stars]
    lines += ["", f"Dev host listening on {host.base_url} (Ctrl-C to stop)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071, help="0 = any free port")
    parser.add_argument("--app-dir", type=Path, default=APP_DIR, help="folder of function_app.py and host.json")
    parser.add_argument("--settings", type=Path, default=None,
                        help="local settings file (default: local.settings.json in the app folder)")
    parser.add_argument("--emulator-latency-ms", type=int, default=0,
                        help="latency of the embedded Azure OpenAI emulator")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("azure").setLevel(logging.WARNING)  # azure-core logs every token request at INFO

    load_local_settings(args.settings or args.app_dir / "local.settings.json")
    emulators = None
    if not endpoint_configured(os.environ):
        emulators = Emulators.start(latency_ms=args.emulator_latency_ms)
        point_at_emulators(emulators)
    sys.path.insert(0, str(args.app_dir))
    app = importlib.import_module("function_app").app
    loop = AppLoop()
    routes, skipped = http_routes(app.get_functions(), route_prefix(args.app_dir / "host.json"), loop)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C included: stop cleanly, whenever it comes
        signal.signal(signum, lambda *_: stopped.set())
    host = DevHost(routes, args.host, args.port).start()
    print(banner(host, skipped, emulators), flush=True)
    stopped.wait()
    host.stop()
    loop.stop()
    if emulators is not None:
        emulators.stop()
    print("Dev host stopped.", flush=True)
    return 0
