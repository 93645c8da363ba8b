"""An Azure App Configuration stand-in over HTTPS, speaking what ``azure-appconfiguration-provider`` sends.

Data plane (what the provider and ``azure-appconfiguration`` use):

- ``GET /kv?key=FILTER&label=FILTER&api-version=...`` lists key-values in pages
  (``items``, ``@nextLink`` with ``after=``), each page with an ``ETag``; a page
  asked for ``If-None-Match`` its current ETag answers 304. Filters as the
  service reads them: ``prefix*``, exact keys, ``a,b`` alternatives, ``\\``
  escapes; a label filter of ``\\0`` (``%00``) is "no label", an absent one any label.
- ``GET /kv/{key}?label=...`` one key-value (no label when absent or ``\\0``),
  with its ``ETag``; ``If-None-Match`` with that ETag answers 304, which is how the
  provider watches a sentinel key. 404 when absent.
- Every response carries ``Sync-Token: {id}={value};sn={n}`` (``n`` = the store's
  revision); the stats count the sync tokens clients send back.
- Auth: ``Authorization: Bearer`` with a token from the identity emulator whose
  audience is App Configuration's (``https://appconfig.azure.com`` or
  ``https://azconfig.io``), or ``HMAC-SHA256`` signed with the connection
  string's ``Id``/``Secret`` (date, host and content hash checked, ±15 minutes).
  401 when missing or invalid; 403 when the token's client id is not among the
  ``readers`` (the *App Configuration Data Reader* role).

Not emulated: writes through the data plane (PUT/DELETE /kv, locks), snapshots,
feature flags beyond storing them, ``Accept-Datetime`` (point-in-time reads),
``$Select`` (every field is returned), tag filters, revisions (``/revisions``),
replicas (SRV records) and throttling unless injected as a fault.

Key Vault references are ordinary key-values whose content type is
``application/vnd.microsoft.appconfig.keyvaultref+json;charset=utf-8`` and whose
value is ``{"uri": "<vault>/secrets/<name>"}``; seed them with ``"secret": NAME``
to point at the Key Vault stand-in started alongside.

Seed file (``--seed FILE.json``)::

    {"settings": [{"key": "completions:AZURE_OPENAI_DEPLOYMENT", "value": "gpt-35-turbo-instruct"},
                  {"key": "completions:COMPLETIONS_MAX_TOKENS", "label": "prod", "value": "256"},
                  {"key": "completions:AZURE_OPENAI_API_KEY", "secret": "openai-api-key"},
                  {"key": "completions:sentinel", "value": "1"}],
     "secrets": {"openai-api-key": "..."}}

(``"settings"`` may also be a plain ``{"key": "value"}`` object: no labels then.)

Control API (same server, ``/_emulator/...``): ``POST settings`` (a JSON list of
changes: ``{"key", "label"?, "value"}``, ``{"key", "label"?, "secret": NAME}``,
``{"key", "label"?, "reference": URI}``, ``{"key", "label"?, "delete": true}``,
each with optional ``content_type``/``tags``), ``GET settings``, ``POST config``
(``readers``: list of client ids or null for any; ``outage``: null |
``"error"`` (503) | ``"drop"`` (close without answering) | ``"stall"``;
``page_size``), ``POST faults``, ``GET stats``, ``POST reset`` (back to the seed).
To take the store down for real (connection refused), use
``AppConfigStandIns.take_down()`` / ``bring_up()`` from Python.

From the command line (one JSON line once listening, then serves until interrupted)::

    python -m devserver.emulators.appconfig [--seed FILE.json] [--host 127.0.0.1] [--port 0] [--token-secret S]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets as secrets_module
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from .control import ControlHandler
from .faults import FaultQueue, Sleeper
from .identity import IdentityServer
from .keyvault import KeyVaultServer
from .tls import LocalCA, TLSServer
from .tokens import TokenSigner

KEYVAULT_REF_CONTENT_TYPE = "application/vnd.microsoft.appconfig.keyvaultref+json;charset=utf-8"
APPCONFIG_AUDIENCES = {"https://appconfig.azure.com", "https://appconfig.azure.com/",
                       "https://azconfig.io", "https://azconfig.io/"}
OUTAGES = (None, "error", "drop", "stall")
DEFAULT_PAGE_SIZE = 100
HMAC_CLOCK_SKEW_SECONDS = 15 * 60
NULL_LABEL = "\0"
KVSET_TYPE = "application/vnd.microsoft.appconfig.kvset+json; charset=utf-8"
KV_TYPE = "application/vnd.microsoft.appconfig.kv+json; charset=utf-8"
PROBLEM_TYPE = "application/problem+json; charset=utf-8"


@dataclass
class KeyValue:
    key: str
    label: str | None
    value: str | None
    content_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    etag: str = ""
    last_modified: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"etag": self.etag, "key": self.key, "label": self.label, "content_type": self.content_type,
                "value": self.value, "tags": self.tags, "locked": False, "last_modified": self.last_modified}


# -- filters, as the service reads them ----------------------------------------------
def _split_filter(text: str) -> list[tuple[str, bool]]:
    """``a,b*`` -> [("a", False), ("b", True)]; backslash escapes ``*``, ``,`` and ``\\``."""
    parts: list[tuple[str, bool]] = []
    current, wildcard, escaped = [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(("".join(current), wildcard))
            current, wildcard = [], False
        elif char == "*":
            wildcard = True  # only a trailing * is meaningful; the service rejects others
        else:
            current.append(char)
    parts.append(("".join(current), wildcard))
    return parts


def _matches(value: str, text_filter: str) -> bool:
    return any(value.startswith(text) if wildcard else value == text for text, wildcard in _split_filter(text_filter))


def _label_matches(label: str | None, label_filter: str | None) -> bool:
    if label_filter is None or label_filter == "*":
        return True
    return any((label is None) if text == NULL_LABEL and not wildcard else
               (label is not None and (label.startswith(text) if wildcard else label == text))
               for text, wildcard in _split_filter(label_filter))


def _bare_etag(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()}


def _parse_date(text: str) -> datetime | None:
    """An ``x-ms-date``: RFC 1123, or what the Python SDK sends (``Nov, 27 2026 11:34:34.658568 GMT``)."""
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        pass
    try:
        return datetime.strptime(text, "%b, %d %Y %H:%M:%S.%f GMT").replace(tzinfo=UTC)
    except ValueError:
        return None


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class AppConfigState:
    """The store's key-values, its auth secrets, and what clients sent."""

    def __init__(self, signer: TokenSigner, seed_settings: list[dict[str, Any]] | None = None,
                 keyvault_secret_id=None) -> None:
        self.signer = signer
        self.faults = FaultQueue()
        self.sleeper = Sleeper()
        self.credential_id = "local-" + secrets_module.token_hex(4)
        self.credential_secret = base64.b64encode(secrets_module.token_bytes(32)).decode()
        self.sync_token_id = "local-" + secrets_module.token_hex(3)
        self._keyvault_secret_id = keyvault_secret_id  # name -> reference uri, from the Key Vault stand-in
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str | None], KeyValue] = {}
        self._seed = [dict(change) for change in (seed_settings or [])]
        self.revision = 0
        self.readers: list[str] | None = None
        self.outage: str | None = None
        self.page_size = DEFAULT_PAGE_SIZE
        self._stats: Counter[str] = Counter()
        self.change(self._seed)

    # -- data ----------------------------------------------------------------
    def change(self, changes: list[Any]) -> dict[str, Any]:
        """Apply a list of changes (all or nothing); returns the new revision and what changed."""
        parsed = [self._parse_change(change) for change in changes]
        changed = []
        with self._lock:
            for key, label, item in parsed:
                if item is None:
                    if self._items.pop((key, label), None) is not None:
                        changed.append({"key": key, "label": label, "deleted": True})
                    continue
                self.revision += 1
                item.etag = uuid.uuid4().hex
                item.last_modified = _now_iso()
                self._items[(key, label)] = item
                changed.append({"key": key, "label": label, "etag": item.etag})
            if any(entry.get("deleted") for entry in changed):
                self.revision += 1
            return {"revision": self.revision, "changed": changed}

    def _parse_change(self, change: Any) -> tuple[str, str | None, KeyValue | None]:
        if not isinstance(change, dict):
            raise ValueError("each change must be a JSON object")
        unknown = set(change) - {"key", "label", "value", "secret", "reference", "delete", "content_type", "tags"}
        if unknown:
            raise ValueError(f"unknown change keys: {sorted(unknown)}")
        key, label = change.get("key"), change.get("label")
        if not isinstance(key, str) or not key or key in (".", "..") or "%" in key:
            raise ValueError("key must be a non-empty string without %")
        if label is not None and (not isinstance(label, str) or not label or label == NULL_LABEL):
            raise ValueError("label must be a non-empty string, or null for no label")
        kinds = [name for name in ("value", "secret", "reference", "delete") if name in change]
        if len(kinds) != 1:
            raise ValueError("give exactly one of value, secret, reference, delete")
        tags = change.get("tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise ValueError("tags must be an object of strings")
        content_type = change.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise ValueError("content_type must be a string")
        if "delete" in change:
            return key, label, None
        if "value" in change:
            if not isinstance(change["value"], str):
                raise ValueError("value must be a string")
            return key, label, KeyValue(key, label, change["value"], content_type, tags)
        if "secret" in change:
            if self._keyvault_secret_id is None or not isinstance(change["secret"], str):
                raise ValueError("secret names a secret of the Key Vault stand-in")
            uri = self._keyvault_secret_id(change["secret"])
        else:
            uri = change["reference"]
            if not isinstance(uri, str):
                raise ValueError("reference must be a Key Vault secret URI")
        return key, label, KeyValue(key, label, json.dumps({"uri": uri}), KEYVAULT_REF_CONTENT_TYPE, tags)

    def listing(self, key_filter: str | None, label_filter: str | None) -> list[KeyValue]:
        with self._lock:
            items = list(self._items.values())
        selected = [item for item in items if (key_filter is None or _matches(item.key, key_filter))
                    and _label_matches(item.label, label_filter)]
        return sorted(selected, key=lambda item: (item.key, item.label or ""))

    def get(self, key: str, label: str | None) -> KeyValue | None:
        with self._lock:
            return self._items.get((key, label))

    def sync_token(self) -> str:
        value = base64.b64encode(str(self.revision).encode()).decode()
        return f"{self.sync_token_id}={value};sn={self.revision}"

    # -- control -------------------------------------------------------------
    def count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._stats[name] += 1

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        if set(changes) - {"readers", "outage", "page_size"}:
            raise ValueError("config takes readers, outage and page_size")
        readers = changes.get("readers", self.readers)
        if readers is not None and (not isinstance(readers, list) or not all(isinstance(r, str) for r in readers)):
            raise ValueError("readers must be a list of client ids, or null for any identity")
        outage = changes.get("outage", self.outage)
        if outage not in OUTAGES:
            raise ValueError(f"outage must be one of {list(OUTAGES)}")
        page_size = changes.get("page_size", self.page_size)
        if type(page_size) is not int or not 1 <= page_size <= 1000:
            raise ValueError("page_size must be an integer from 1 to 1000")
        self.readers, self.outage, self.page_size = readers, outage, page_size
        return {"readers": self.readers, "outage": self.outage, "page_size": self.page_size}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            stats = dict(self._stats)
            revision = self.revision

        def by(prefix: str) -> dict[str, int]:
            return {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}

        return {"requests": stats.get("requests", 0), "requests_by_route": by("route:"),
                "requests_by_status": by("status:"), "not_modified": stats.get("status:304", 0),
                "conditional_requests": stats.get("if-none-match", 0), "auth": by("auth:"),
                "token_audiences": by("aud:"), "client_ids": by("client:"), "request_types": by("type:"),
                "api_versions": by("api:"), "sync_tokens_received": stats.get("sync-token", 0),
                "revision": revision}

    def settings_json(self) -> list[dict[str, Any]]:
        return [item.as_json() for item in self.listing(None, None)]

    def reset(self) -> None:
        self.faults.clear()
        self.sleeper.interrupt()
        with self._lock:
            self._items.clear()
            self._stats.clear()
        self.readers = None
        self.outage = None
        self.page_size = DEFAULT_PAGE_SIZE
        self.change(self._seed)


def _problem(status: int, kind: str, title: str, detail: str) -> dict[str, Any]:
    return {"type": f"https://azconfig.io/errors/{kind}", "title": title, "status": status, "detail": detail}


class AppConfigHandler(ControlHandler):
    state: AppConfigState

    def do_GET(self) -> None:
        if self.is_control():
            if self.url().path == "/_emulator/settings":
                return self.send_json(200, self.state.settings_json())
            return self.serve_control()
        self._data_plane()

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self.is_control():
            if self.url().path == "/_emulator/settings":
                return self._change()
            return self.serve_control()
        self._answer(405, _problem(405, "method-not-allowed", "Method not allowed",
                                   "This stand-in serves reads only (GET /kv, GET /kv/{key})."))

    def _change(self) -> None:
        try:
            body = json.loads(self.read_body() or b"null")
            if not isinstance(body, list):
                raise ValueError("expected a JSON list of changes")
            result = self.state.change(body)
        except ValueError as exc:
            return self.send_json(400, {"error": str(exc)})
        self.send_json(200, result)

    # -- responses -------------------------------------------------------------
    def _answer(self, status: int, payload: Any = None, headers: Mapping[str, str] | None = None,
                content_type: str = PROBLEM_TYPE) -> None:
        self.state.count(f"status:{status}")
        all_headers = {"Sync-Token": self.state.sync_token(), "x-ms-request-id": str(uuid.uuid4()),
                       **(headers or {})}
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        self.send(status, body, content_type if payload is not None else None, all_headers)

    # -- the data plane ----------------------------------------------------------
    def _data_plane(self) -> None:
        state = self.state
        state.count("requests")
        fault, over = self.take_fault("status:dropped")
        if over:
            return
        if fault is not None and fault.status is not None:
            headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else {}
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            return self._answer(fault.status, _problem(fault.status, "injected", "Injected failure",
                                                       "An injected failure."), headers)
        if state.outage == "drop":
            state.count("status:dropped")
            return self.drop_connection()
        while state.outage == "stall":
            if not state.sleeper.sleep(0.05):
                return self.drop_connection()
        if state.outage == "error":
            return self._answer(503, _problem(503, "service-unavailable", "Service unavailable",
                                              "The store is unavailable."))

        url = self.url()
        query = parse_qs(url.query, keep_blank_values=True)
        route = "/kv" if url.path.rstrip("/") == "/kv" else ("/kv/{key}" if url.path.startswith("/kv/") else None)
        state.count(f"route:{self.command} {route or url.path}")
        if self.headers.get("Sync-Token"):
            state.count("sync-token")
        for part in self.headers.get("Correlation-Context", "").split(","):
            if part.strip().startswith("RequestType="):
                state.count("type:" + part.strip()[len("RequestType="):])
        api_version = query.get("api-version", [""])[0]
        if not api_version:
            return self._answer(400, _problem(400, "invalid-argument", "Invalid argument",
                                              "The 'api-version' parameter is required."))
        state.count(f"api:{api_version}")
        denied = self._authenticate()
        if denied:
            return
        if route == "/kv":
            return self._list(query)
        if route == "/kv/{key}":
            return self._get(unquote(url.path[len("/kv/"):]), query)
        self._answer(404, _problem(404, "not-found", "Not found", "Only /kv and /kv/{key} are emulated."))

    def _authenticate(self) -> bool:
        """True when the request was refused (and answered)."""
        state = self.state
        header = self.headers.get("Authorization", "")
        challenge = {"WWW-Authenticate": 'HMAC-SHA256, Bearer error="invalid_token"'}
        if header.startswith("Bearer "):
            state.count("auth:bearer")
            claims = state.signer.verify(header[len("Bearer "):].strip())
            if claims is None or claims.expires_on <= time.time():
                self._answer(401, _problem(401, "invalid-token", "Invalid token", "The access token is invalid "
                                           "or has expired."), challenge)
                return True
            state.count(f"aud:{claims.audience}", f"client:{claims.client_id}")
            if claims.audience not in APPCONFIG_AUDIENCES:
                self._answer(401, _problem(401, "invalid-token", "Invalid token",
                                           "The access token audience is not App Configuration's."), challenge)
                return True
            if state.readers is not None and claims.client_id not in state.readers:
                self._answer(403, _problem(403, "forbidden", "Forbidden", "The identity lacks the 'App "
                                           "Configuration Data Reader' role on this store."))
                return True
            return False
        if header.startswith("HMAC-SHA256 "):
            state.count("auth:hmac")
            if not self._hmac_valid(header[len("HMAC-SHA256 "):]):
                self._answer(401, _problem(401, "invalid-signature", "Invalid signature",
                                           "The HMAC signature, credential, date or content hash is not valid."),
                             challenge)
                return True
            return False
        state.count("auth:none")
        self._answer(401, _problem(401, "unauthorized", "Unauthorized", "Authorization is required."), challenge)
        return True

    def _hmac_valid(self, params: str) -> bool:
        fields = dict(part.split("=", 1) for part in params.split("&") if "=" in part)
        if fields.get("Credential") != self.state.credential_id:
            return False
        signed = [name.strip().lower() for name in fields.get("SignedHeaders", "").split(";") if name.strip()]
        if not {"x-ms-date", "host", "x-ms-content-sha256"} <= set(signed):
            return False
        body = self.read_body()
        if self.headers.get("x-ms-content-sha256") != base64.b64encode(hashlib.sha256(body).digest()).decode():
            return False
        sent = _parse_date(self.headers.get("x-ms-date", ""))
        if sent is None or abs(time.time() - sent.timestamp()) > HMAC_CLOCK_SKEW_SECONDS:
            return False
        values = [self.headers.get(name, "") for name in signed]
        string_to_sign = f"{self.command}\n{self.path}\n{';'.join(values)}"
        expected = hmac.new(base64.b64decode(self.state.credential_secret), string_to_sign.encode(),
                            hashlib.sha256).digest()
        try:
            given = base64.b64decode(fields.get("Signature", ""), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(expected, given)

    def _conditional(self, etag: str) -> bool:
        """True (and 304 sent) when the client's If-None-Match names the current ETag."""
        header = self.headers.get("If-None-Match")
        if header is None:
            return False
        self.state.count("if-none-match")
        tags = _bare_etag(header)
        if "*" in tags or etag in tags:
            self._answer(304, None, {"ETag": f'"{etag}"'})
            return True
        return False

    def _list(self, query: dict[str, list[str]]) -> None:
        key_filter = query.get("key", [None])[0]
        label_filter = query.get("label", [None])[0]
        items = self.state.listing(key_filter, label_filter)
        start = 0
        after = query.get("after", query.get("After", [None]))[0]
        if after:
            try:
                start = int(base64.urlsafe_b64decode(after.encode()).decode())
            except ValueError:
                return self._answer(400, _problem(400, "invalid-argument", "Invalid argument",
                                                  "The 'after' token is not valid."))
        page = items[start:start + self.state.page_size]
        page_etag = hashlib.sha256("|".join(f"{i.key}\0{i.label}\0{i.etag}" for i in page).encode()
                                   + f"#{start}".encode()).hexdigest()[:32]
        if self._conditional(page_etag):
            return
        payload: dict[str, Any] = {"items": [item.as_json() for item in page]}
        headers = {"ETag": f'"{page_etag}"'}
        if start + len(page) < len(items):
            params = {name: values[0] for name, values in query.items() if name.lower() != "after"}
            params["after"] = base64.urlsafe_b64encode(str(start + len(page)).encode()).decode()
            next_link = "/kv?" + urlencode(params, quote_via=quote)
            payload["@nextLink"] = next_link
            headers["Link"] = f'<{next_link}>; rel="next"'
        self._answer(200, payload, headers, KVSET_TYPE)

    def _get(self, key: str, query: dict[str, list[str]]) -> None:
        label = query.get("label", [None])[0]
        if label in (None, "", NULL_LABEL):
            label = None
        item = self.state.get(key, label)
        if item is None:
            return self._answer(404, _problem(404, "not-found", "Not found", "The key-value does not exist."))
        if self._conditional(item.etag):
            return
        self._answer(200, item.as_json(), {"ETag": f'"{item.etag}"', "Last-Modified": item.last_modified},
                     KV_TYPE)


class AppConfigServer(TLSServer):
    """The store on its own port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ca: LocalCA, state: AppConfigState) -> None:
        self.state = state
        handler = type("BoundAppConfigHandler", (AppConfigHandler,), {"state": self.state})
        super().__init__((host, port), handler, context=ca.server_context())

    @property
    def endpoint(self) -> str:
        return self.base_url

    @property
    def connection_string(self) -> str:
        return f"Endpoint={self.endpoint};Id={self.state.credential_id};Secret={self.state.credential_secret}"

    def stop(self) -> None:
        self.state.sleeper.interrupt()
        super().stop()


# -- seeds ------------------------------------------------------------------------
def read_seed(seed: str | Path | Mapping[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(settings changes, secrets) from a seed file, a mapping, or nothing."""
    if seed is None:
        return [], {}
    document = json.loads(Path(seed).read_text()) if isinstance(seed, (str, Path)) else dict(seed)
    if not isinstance(document, dict) or set(document) - {"settings", "secrets"}:
        raise ValueError("a seed is a JSON object with 'settings' and 'secrets'")
    settings = document.get("settings") or []
    if isinstance(settings, dict):
        settings = [{"key": key, "value": value} for key, value in settings.items()]
    secrets = document.get("secrets") or {}
    if not isinstance(settings, list) or not isinstance(secrets, dict):
        raise ValueError("'settings' is a list (or an object of key: value), 'secrets' an object of name: value")
    return settings, secrets


# -- the one-call starter -------------------------------------------------------------
class AppConfigStandIns:
    """The App Configuration store and its Key Vault, over HTTPS with a local CA.

    ``identity`` is the managed-identity emulator whose tokens they accept (the
    dev host's or tests'); without one, an identity emulator is started too (or
    give ``signer`` alone when it runs in another process)."""

    def __init__(self, appconfig: AppConfigServer, keyvault: KeyVaultServer, ca: LocalCA,
                 identity: IdentityServer | None, own_identity: bool) -> None:
        self.appconfig, self.keyvault, self.ca = appconfig, keyvault, ca
        self.identity = identity
        self._own_identity = own_identity
        self._host, self._port = appconfig.server_address[0], appconfig.port
        self.is_up = True

    @classmethod
    def start(cls, seed: str | Path | Mapping[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0,
              identity: IdentityServer | None = None, signer: TokenSigner | None = None) -> AppConfigStandIns:
        settings, secrets = read_seed(seed)
        own_identity = identity is None and signer is None
        if own_identity:
            identity = IdentityServer(host, 0).start()
        signer = signer or identity.state.signer
        ca = LocalCA()
        keyvault = KeyVaultServer(host, 0, ca=ca, signer=signer, secrets=secrets).start()
        state = AppConfigState(signer, settings, keyvault.state.secret_id)
        appconfig = AppConfigServer(host, port, ca=ca, state=state).start()
        return cls(appconfig, keyvault, ca, identity, own_identity)

    # -- where things are --------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.appconfig.endpoint

    @property
    def connection_string(self) -> str:
        return self.appconfig.connection_string

    @property
    def vault_url(self) -> str:
        return self.keyvault.vault_url

    @property
    def ca_file(self) -> str:
        """The local CA alone."""
        return self.ca.ca_file

    @property
    def ca_bundle(self) -> str:
        """Public roots plus the local CA: what REQUESTS_CA_BUNDLE / SSL_CERT_FILE should hold."""
        return self.ca.ca_bundle

    def app_settings(self, auth: str = "managed_identity", *, label: str | None = None, prefix: str | None = None,
                     sentinel: str | None = None, refresh_seconds: float | None = None) -> dict[str, str]:
        """Application settings pointing an app at this store: ``auth`` is ``managed_identity``
        (a token from the identity emulator) or ``connection_string`` (HMAC). Key Vault
        references always use the identity, so its settings are included either way."""
        if auth not in ("managed_identity", "connection_string"):
            raise ValueError("auth is managed_identity or connection_string")
        settings = ({"AZURE_APPCONFIG_ENDPOINT": self.endpoint} if auth == "managed_identity"
                    else {"AZURE_APPCONFIG_CONNECTION_STRING": self.connection_string})
        settings.update(REQUESTS_CA_BUNDLE=self.ca_bundle, SSL_CERT_FILE=self.ca_bundle)
        if self.identity is not None:
            settings.update(IDENTITY_ENDPOINT=self.identity.endpoint, IDENTITY_HEADER=self.identity.header)
        for name, value in (("AZURE_APPCONFIG_LABEL", label), ("AZURE_APPCONFIG_KEY_PREFIX", prefix),
                            ("AZURE_APPCONFIG_SENTINEL", sentinel), ("AZURE_APPCONFIG_REFRESH_SECONDS",
                                                                     refresh_seconds)):
            if value is not None:
                settings[name] = f"{value:g}" if isinstance(value, float) else str(value)
        return settings

    def describe(self) -> dict[str, Any]:
        """The JSON line the command line prints (includes the connection string: local use only)."""
        out = {"endpoint": self.endpoint, "connection_string": self.connection_string, "vault_url": self.vault_url,
               "ca_file": self.ca_file, "ca_bundle": self.ca_bundle,
               "control": self.endpoint + "/_emulator/"}
        if self.identity is not None:
            out.update(identity_endpoint=self.identity.endpoint, identity_header=self.identity.header)
        return out

    # -- changing things -------------------------------------------------------------
    def set(self, *changes: dict[str, Any]) -> dict[str, Any]:
        """Change key-values in process (same format as ``POST /_emulator/settings``)."""
        return self.appconfig.state.change(list(changes))

    def set_secrets(self, **values: str) -> dict[str, str]:
        return self.keyvault.state.set_secrets(values)

    def take_down(self) -> None:
        """Close the store's port: clients get connection refused until ``bring_up()``."""
        self.appconfig.stop()
        self.is_up = False

    def bring_up(self) -> None:
        """Listen again on the same port, with the same data."""
        if not self.is_up:
            self.appconfig = AppConfigServer(self._host, self._port, ca=self.ca, state=self.appconfig.state).start()
            self.is_up = True

    def reset(self) -> None:
        self.appconfig.state.reset()
        self.appconfig.reset_connection_count()
        self.keyvault.state.reset()

    def stop(self) -> None:
        self.appconfig.stop()
        self.keyvault.stop()
        if self._own_identity and self.identity is not None:
            self.identity.stop()
        self.ca.cleanup()

    def __enter__(self) -> AppConfigStandIns:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.emulators.appconfig",
                                     description="App Configuration and Key Vault stand-ins over HTTPS.")
    parser.add_argument("--seed", default=None, help="a JSON seed file (settings and secrets)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the store's port (0 = any free port)")
    parser.add_argument("--token-secret", default=None,
                        help="accept tokens of an identity emulator in another process started with this secret "
                             "(default: start an identity emulator here)")
    args = parser.parse_args(argv)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    signer = TokenSigner(args.token_secret) if args.token_secret else None
    standins = AppConfigStandIns.start(args.seed, host=args.host, port=args.port, signer=signer)
    print(json.dumps(standins.describe()), flush=True)
    stopped.wait()
    standins.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
