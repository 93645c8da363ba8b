"""A Key Vault *secrets* stand-in over HTTPS, with the challenge-based auth the SDK expects.

``GET /secrets/{name}[/{version}]?api-version=...`` answers a secret bundle
(``value``, ``id`` = ``{vault}/secrets/{name}/{version}``, ``attributes``), as
``azure-keyvault-secrets`` reads it. Auth as Key Vault does it: a request
without a valid bearer token gets 401 with ``WWW-Authenticate: Bearer
authorization="https://login.microsoftonline.com/{tenant}",
resource="https://vault.azure.net"``; the SDK then asks its credential for a
``https://vault.azure.net/.default`` token (from the identity emulator) and
sends the request again. A token whose client id is not among the ``readers``
(the *Key Vault Secrets User* role) gets 403 ``ForbiddenByRbac``; an unknown
secret 404 ``SecretNotFound``.

Not emulated: writing secrets through the data plane, deleted/recoverable
secrets, disabled versions, expiry, certificates and keys, CAE claims challenges.

Control API (same server): ``POST /_emulator/secrets`` (``{"name": "value", ...}``:
each a new current version), ``POST /_emulator/config`` (``readers``: a list of
client ids, or null for any identity; ``outage``: null | ``"error"`` (503) |
``"drop"`` (close without answering) | ``"stall"``), ``POST /_emulator/faults``,
``GET /_emulator/stats``, ``POST /_emulator/reset`` (seeded secrets, no faults,
any reader, zeroed stats).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from .control import ControlHandler
from .faults import FaultQueue, Sleeper
from .tls import LocalCA, TLSServer
from .tokens import TENANT_ID, TokenSigner

VAULT_AUDIENCES = {"https://vault.azure.net", "https://vault.azure.net/"}
CHALLENGE = (f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", '
             'resource="https://vault.azure.net"')
OUTAGES = (None, "error", "drop", "stall")
SECRET_ROUTE = re.compile(r"^/secrets/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9A-Za-z]{1,64}))?/?$")


class KeyVaultState:
    def __init__(self, signer: TokenSigner, seed: Mapping[str, str] | None = None) -> None:
        self.signer = signer
        self.faults = FaultQueue()
        self.sleeper = Sleeper()
        self._lock = threading.Lock()
        self._seed = dict(seed or {})
        self._versions: dict[str, list[tuple[str, str, int]]] = {}  # name -> [(version, value, created)]
        self.readers: list[str] | None = None
        self.outage: str | None = None
        self.vault_url = ""  # set by the server once it has a port
        self._stats: Counter[str] = Counter()
        self.set_secrets(self._seed)

    # -- data ----------------------------------------------------------------
    def set_secrets(self, secrets: Mapping[str, Any]) -> dict[str, str]:
        """Each ``name: value`` becomes the secret's new current version; returns name -> version."""
        for name, value in secrets.items():
            if not isinstance(name, str) or not re.fullmatch(r"[0-9A-Za-z-]{1,127}", name):
                raise ValueError("secret names are 1-127 letters, digits and dashes")
            if not isinstance(value, str) or not value:
                raise ValueError("secret values are non-empty strings")
        versions = {}
        with self._lock:
            for name, value in secrets.items():
                version = uuid.uuid4().hex
                self._versions.setdefault(name.lower(), []).append((version, value, int(time.time())))
                versions[name] = version
        return versions

    def secret(self, name: str, version: str | None) -> tuple[str, str, int] | None:
        with self._lock:
            history = self._versions.get(name.lower(), [])  # names are case-insensitive
            if version is None:
                return history[-1] if history else None
            return next((entry for entry in history if entry[0] == version), None)

    def secret_id(self, name: str, version: str | None = None) -> str:
        """The identifier a Key Vault reference points at (no version: always the current one)."""
        return f"{self.vault_url}/secrets/{name}" + (f"/{version}" if version else "")

    # -- control -------------------------------------------------------------
    def count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._stats[name] += 1

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        if set(changes) - {"readers", "outage"}:
            raise ValueError("config takes readers and outage")
        readers = changes.get("readers", self.readers)
        if readers is not None and (not isinstance(readers, list) or not all(isinstance(r, str) for r in readers)):
            raise ValueError("readers must be a list of client ids, or null for any identity")
        outage = changes.get("outage", self.outage)
        if outage not in OUTAGES:
            raise ValueError(f"outage must be one of {list(OUTAGES)}")
        self.readers, self.outage = readers, outage
        return {"readers": self.readers, "outage": self.outage}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            stats = dict(self._stats)
        by = lambda prefix: {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}  # noqa: E731
        return {"requests": stats.get("requests", 0), "requests_by_status": by("status:"),
                "challenges": stats.get("challenges", 0), "secrets_served": by("served:"),
                "token_audiences": by("aud:"), "client_ids": by("client:"),
                "api_versions": by("api:"), "secret_names": sorted(self._versions)}

    def reset(self) -> None:
        self.faults.clear()
        self.sleeper.interrupt()
        with self._lock:
            self._versions.clear()
            self._stats.clear()
        self.readers = None
        self.outage = None
        self.set_secrets(self._seed)


def _kv_error(code: str, message: str, inner: str | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


class KeyVaultHandler(ControlHandler):
    state: KeyVaultState

    def do_GET(self) -> None:
        if self.is_control():
            return self.serve_control()
        self._secret()

    def do_POST(self) -> None:
        if self.is_control():
            if self.url().path == "/_emulator/secrets":
                return self._set_secrets()
            return self.serve_control()
        self.send_json(405, _kv_error("BadParameter", "Only GET /secrets/{name} is emulated."))

    def _set_secrets(self) -> None:
        try:
            body = json.loads(self.read_body() or b"null")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object of name: value")
            versions = self.state.set_secrets(body)
        except ValueError as exc:
            return self.send_json(400, {"error": str(exc)})
        self.send_json(200, {"versions": versions})

    def _answer(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self.state.count(f"status:{status}")
        self.send_json(status, payload, headers)

    def _secret(self) -> None:
        state = self.state
        state.count("requests")
        fault, over = self.take_fault("status:dropped")
        if over:
            return
        if fault is not None and fault.status is not None:
            return self._answer(fault.status, _kv_error("Injected", "Injected failure."))
        if state.outage == "drop":
            state.count("status:dropped")
            return self.drop_connection()
        while state.outage == "stall":
            if not state.sleeper.sleep(0.05):
                return self.drop_connection()
        if state.outage == "error":
            return self._answer(503, _kv_error("ServiceUnavailable", "The service is unavailable."))

        url = self.url()
        api_version = parse_qs(url.query).get("api-version", [""])[0]
        if not api_version:
            return self._answer(400, _kv_error("BadParameter", "The 'api-version' query parameter is missing."))
        state.count(f"api:{api_version}")
        claims = self._bearer_claims()
        if claims is None:
            state.count("challenges")
            return self._answer(401, _kv_error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
                                {"WWW-Authenticate": CHALLENGE})
        state.count(f"aud:{claims.audience}", f"client:{claims.client_id}")
        if claims.audience not in VAULT_AUDIENCES:
            return self._answer(401, _kv_error("Unauthorized", "AKV10022: Invalid audience."),
                                {"WWW-Authenticate": CHALLENGE})
        if state.readers is not None and claims.client_id not in state.readers:
            return self._answer(403, _kv_error(
                "Forbidden", "Caller is not authorized to perform action on resource: the identity lacks the "
                "'Key Vault Secrets User' role (Microsoft.KeyVault/vaults/secrets/getSecret/action).",
                "ForbiddenByRbac"))
        match = SECRET_ROUTE.match(url.path)
        if match is None:
            return self._answer(404, _kv_error("NotFound", "Only GET /secrets/{name}[/{version}] is emulated."))
        name, version = unquote(match["name"]), match["version"]
        found = state.secret(name, version)
        if found is None:
            return self._answer(404, _kv_error("SecretNotFound", f"A secret with (name/id) {name} was not found "
                                               "in this key vault."))
        found_version, value, created = found
        state.count(f"served:{name}")
        self._answer(200, {
            "value": value, "id": state.secret_id(name, found_version),
            "attributes": {"enabled": True, "created": created, "updated": created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
            "tags": {},
        })

    def _bearer_claims(self):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        claims = self.state.signer.verify(header[len("Bearer "):].strip())
        if claims is None or claims.expires_on <= time.time():
            return None
        return claims


class KeyVaultServer(TLSServer):
    """The vault on its own port; ``vault_url`` is what Key Vault references point at."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ca: LocalCA, signer: TokenSigner,
                 secrets: Mapping[str, str] | None = None, state: KeyVaultState | None = None) -> None:
        self.state = state or KeyVaultState(signer, secrets)
        handler = type("BoundKeyVaultHandler", (KeyVaultHandler,), {"state": self.state})
        super().__init__((host, port), handler, context=ca.server_context())
        self.state.vault_url = self.base_url

    @property
    def vault_url(self) -> str:
        return self.base_url

    def stop(self) -> None:
        self.state.sleeper.interrupt()
        super().stop()
