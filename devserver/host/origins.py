"""Who may talk to the dev host from a browser: the Host a request names, and its Origin.

- **DNS rebinding.** A web page can make a browser send requests to 127.0.0.1 under
  a name the page controls. A request whose ``Host`` is not the address the dev host
  serves (a loopback name and its port) is refused with 400, as ASP.NET's
  ``AllowedHosts`` refuses it. Bound to a wildcard address (``--host 0.0.0.0``), the
  host serves whatever name reaches it, and this check is off.
- **CORS.** A browser's cross-origin request (an ``Origin`` other than the dev host's
  own) is refused with 403 unless the origin is allowed with ``--cors ORIGIN`` or
  ``local.settings.json`` ``Host.CORS`` (comma-separated; ``*`` allows any), as Core
  Tools' ``Host.CORS``; an allowed one gets the CORS headers, and its preflight 204.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from .server import json_error

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}


class Origins:
    def __init__(self, bound_host: str, allowed: tuple[str, ...] = ()) -> None:
        self._bound = bound_host.strip("[]").lower()
        self._allowed = tuple(origin.rstrip("/").lower() for origin in allowed if origin.strip())
        self.port = 0  # set once the server listens

    def refusal(self, request: web.Request) -> web.StreamResponse | None:
        """The answer that refuses ``request``, or None when it may proceed."""
        host = request.headers.get("Host", "")
        if not self._host_allowed(host):
            return json_error(400, "invalid_host", "The Host header does not name this dev host (a DNS-rebinding "
                                                   "guard): call it as http://127.0.0.1:<port> or localhost.")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, host):
            return json_error(403, "cors_origin_not_allowed", "Cross-origin requests from this origin are not "
                                                              "allowed: start the dev host with --cors <origin>.")
        if origin is not None and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204)  # a preflight: the headers are added on the way out
        return None

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """The CORS headers on every answer to an allowed cross-origin request (streams included)."""
        origin = request.headers.get("Origin")
        if origin is None or origin.rstrip("/").lower() == f"http://{request.headers.get('Host', '')}".lower():
            return
        if not self._origin_allowed(origin, request.headers.get("Host", "")):
            return
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in self._allowed else origin
        response.headers.setdefault("Vary", "Origin")
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = request.headers.get(
                "Access-Control-Request-Method", "GET, POST")
            requested = request.headers.get("Access-Control-Request-Headers")
            if requested:
                response.headers["Access-Control-Allow-Headers"] = requested
            response.headers["Access-Control-Max-Age"] = "600"

    def _host_allowed(self, host: str) -> bool:
        if self._bound in WILDCARDS:
            return True
        name, port = _split(host)
        if port is not None and port != self.port:
            return False
        return name == self._bound or name in LOOPBACK_NAMES and _is_loopback(self._bound)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        return origin == f"http://{host}".lower() or "*" in self._allowed or origin in self._allowed


def _split(host: str) -> tuple[str, int | None]:
    """(name, port), the port None when the Host names none (raw HTTP clients often send just the name)."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    return name, (int(port) if port.isdigit() else -1) if port else None


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
