"""A managed-identity token endpoint speaking the App Service / Functions protocol.

``azure-identity`` (through msal) uses it when ``IDENTITY_ENDPOINT`` and
``IDENTITY_HEADER`` are set: ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01
&resource=...[&client_id=...]`` with header ``X-IDENTITY-HEADER``. Answers
``{"access_token", "expires_on", "resource", "token_type", "client_id"}`` with
``expires_on`` in epoch seconds as a string, as the platform does.

Control API (same server): ``POST /_emulator/faults`` (list of faults served to
the next token requests), ``POST /_emulator/config`` (``token_lifetime``,
``outage``: ``null`` | ``"error"`` (every token request gets 500) | ``"stall"``
(token requests hang until the outage ends)), ``GET /_emulator/stats``,
``POST /_emulator/reset``.
"""

from __future__ import annotations

import math
import secrets
import threading
import uuid
from collections import Counter
from urllib.parse import parse_qs

from .control import ControlHandler
from .faults import FaultQueue, Sleeper
from .httpserver import Server
from .tokens import TokenSigner

TOKEN_PATH = "/msi/token"
API_VERSION = "2019-08-01"
SYSTEM_ASSIGNED_CLIENT_ID = "00000000-0000-4000-8000-00000000a551"
DEFAULT_TOKEN_LIFETIME = 3600.0
OUTAGES = (None, "error", "stall")


class IdentityState:
    def __init__(self, signer: TokenSigner, token_lifetime: float) -> None:
        self.signer = signer
        self.header_secret = secrets.token_urlsafe(24)
        self.token_lifetime = token_lifetime
        self.outage: str | None = None
        self.faults = FaultQueue()
        self.sleeper = Sleeper()
        self._lock = threading.Lock()
        self.by_status: Counter[str] = Counter()
        self.tokens_by_client_id: Counter[str] = Counter()

    def count(self, status: int | str) -> None:
        with self._lock:
            self.by_status[str(status)] += 1

    def issued(self, client_id: str) -> None:
        with self._lock:
            self.tokens_by_client_id[client_id] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "token_requests": sum(self.by_status.values()),
                "requests_by_status": dict(self.by_status),
                "tokens_issued": sum(self.tokens_by_client_id.values()),
                "tokens_by_client_id": dict(self.tokens_by_client_id),
            }

    def configure(self, changes: dict) -> dict:
        if set(changes) - {"token_lifetime", "outage"}:
            raise ValueError("config takes token_lifetime and outage")
        lifetime = changes.get("token_lifetime", self.token_lifetime)
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            raise ValueError("token_lifetime must be a positive number of seconds")
        outage = changes.get("outage", self.outage)
        if outage not in OUTAGES:
            raise ValueError(f"outage must be one of {list(OUTAGES)}")
        self.token_lifetime, self.outage = float(lifetime), outage
        return {"token_lifetime": self.token_lifetime, "outage": self.outage}

    def reset(self) -> None:
        self.faults.clear()
        self.sleeper.interrupt()
        self.outage = None
        with self._lock:
            self.by_status.clear()
            self.tokens_by_client_id.clear()


def _platform_error(status: int, message: str) -> dict:
    return {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())}


class IdentityHandler(ControlHandler):
    state: IdentityState  # set on the subclass built by IdentityServer

    def do_GET(self) -> None:
        if self.is_control():
            return self.serve_control()
        url = self.url()
        if url.path.rstrip("/") != TOKEN_PATH:
            return self.send_json(404, _platform_error(404, "Not found"))
        self._token(parse_qs(url.query))

    def do_POST(self) -> None:
        if self.is_control():
            return self.serve_control()
        self.send_json(404, _platform_error(404, "Not found"))

    def _token(self, query: dict[str, list[str]]) -> None:
        state = self.state
        fault, over = self.take_fault()
        if over:
            return
        if fault is not None:
            if fault.status is not None or fault.raw is not None:
                status = fault.status or 200
                state.count(status)
                headers = dict(fault.headers)
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(math.ceil(fault.retry_after))
                if fault.raw is not None:
                    return self.send(status, fault.raw, "application/json", headers)
                return self.send_json(status, _platform_error(status, "Injected failure."), headers)
        while state.outage == "stall":  # hang until the outage ends
            if not state.sleeper.sleep(0.05):
                return self.drop_connection()
        if state.outage == "error":
            state.count(500)
            return self.send_json(500, _platform_error(500, "An unexpected error occurred."))

        secret = self.headers.get("X-IDENTITY-HEADER")
        if secret is None:
            state.count(400)
            return self.send_json(400, _platform_error(400, "Missing required header X-IDENTITY-HEADER."))
        if secret != state.header_secret:
            state.count(401)
            return self.send_json(401, _platform_error(401, "Unauthorized: invalid X-IDENTITY-HEADER."))
        if query.get("api-version", [None])[0] != API_VERSION:
            state.count(400)
            return self.send_json(400, _platform_error(400, f"Unsupported api-version; use {API_VERSION}."))
        resource = query.get("resource", [""])[0]
        if not resource:
            state.count(400)
            return self.send_json(400, _platform_error(400, "Missing required parameter 'resource'."))
        client_id = query.get("client_id", [SYSTEM_ASSIGNED_CLIENT_ID])[0]
        token, expires_on = state.signer.issue(resource, client_id, state.token_lifetime)
        state.issued(client_id)
        state.count(200)
        self.send_json(200, {
            "access_token": token, "expires_on": str(expires_on), "resource": resource,
            "token_type": "Bearer", "client_id": client_id,
        })


class IdentityServer(Server):
    """The token endpoint on its own port. ``endpoint``/``header`` are what the app's
    ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` settings must hold."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 signer: TokenSigner | None = None,
                 token_lifetime: float = DEFAULT_TOKEN_LIFETIME) -> None:
        self.state = IdentityState(signer or TokenSigner(), token_lifetime)
        handler = type("BoundIdentityHandler", (IdentityHandler,), {"state": self.state})
        super().__init__((host, port), handler)

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}{TOKEN_PATH}"

    @property
    def header(self) -> str:
        return self.state.header_secret

    def stop(self) -> None:
        self.state.sleeper.interrupt()  # release stalled requests
        super().stop()
