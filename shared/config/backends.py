"""``AZURE_OPENAI_BACKENDS``: the deployments the pool routes among, parsed and validated.

Each entry is checked with the single-endpoint settings' own rules
(``config.endpoints``); a problem names the entry (by its name once that is
valid, else its index) and the field, and never repeats a value from the JSON
or the environment. Keys come from the app setting an entry names in
``api_key_setting``, which may not be a setting holding other credentials
(``config.protected``).
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .endpoints import api_version_problem, deployment_problem, endpoint_problem, host_allowed
from .protected import holds_other_credentials
from .registry import API_KINDS, AUTH_MODES, BACKENDS

BACKENDS_SETTING = BACKENDS.name
DEFAULT_BACKEND_NAME = "default"
MAX_BACKENDS = 64
MAX_PRIORITY = MAX_WEIGHT = 1000

_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_PRINTABLE_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")  # unknown keys are named only when they look like keys
_FIELDS = ("name", "endpoint", "deployment", "api_version", "priority", "weight", "auth", "api_key_setting",
           "client_id", "api", "model")
_KEY_VAULT_REFERENCE = "@microsoft.keyvault("
_RULES = {"endpoint": endpoint_problem, "deployment": deployment_problem, "api_version": api_version_problem}
STORE_HOST_PROBLEM = ("endpoint must be an Azure OpenAI or AI Services host, loopback, or a host listed in "
                      "AZURE_OPENAI_ALLOWED_HOSTS, when it comes from App Configuration")


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """One deployment the pool may send a request to (validated; never holds a bad value)."""

    name: str
    endpoint: str  # without trailing slash: openai appends "/openai/deployments/..."
    deployment: str
    api_version: str
    priority: int = 1  # lower is preferred
    weight: int = 1  # share within its priority
    auth: str = "managed_identity"
    api_key: str | None = field(default=None, repr=False)
    client_id: str | None = None
    token_scope: str
    api: str = "auto"  # which API it speaks: auto, chat or completions
    model: str = ""  # the name callers use for it; its deployment when empty
    from_pool: bool = False  # listed in AZURE_OPENAI_BACKENDS (not the single-endpoint settings)

    def __post_init__(self) -> None:
        if not self.model:
            object.__setattr__(self, "model", self.deployment)

    @property
    def api_setting(self) -> str:
        """Where its ``api`` is set, for an error that names it."""
        return f"AZURE_OPENAI_BACKENDS entry '{self.name}'" if self.from_pool else "AZURE_OPENAI_API"

    @property
    def identity(self) -> tuple[str, str | None, str] | None:
        """What its token cache is keyed by: backends with the same identity and scope share one
        cache. None for key auth."""
        return None if self.auth == "key" else (self.auth, self.client_id, self.token_scope)


class _JSONObject(dict):
    """A JSON object that remembers the keys it saw more than once (json keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _JSONObject:
    result = _JSONObject(pairs)
    if len(result) != len(pairs):
        counts = collections.Counter(key for key, _ in pairs)
        result.duplicates = tuple(sorted(key for key, count in counts.items() if count > 1))
    return result


def _key_label(key: str) -> str:
    return repr(key) if _PRINTABLE_KEY.fullmatch(key) else "(not shown)"


@dataclass(frozen=True)
class Defaults:
    """What an entry inherits from the single-endpoint settings, and whether its endpoint must
    be an allowed host (the list came from App Configuration)."""

    deployment: str | None
    api_version: str
    auth: str
    client_id: str | None
    token_scope: str
    api: str = "auto"
    allowed_hosts: tuple[str, ...] | None = None  # None: any host; else besides Azure's own and loopback


def parse_backends(environ: Mapping[str, str],
                   defaults: Defaults) -> tuple[tuple[BackendSettings, ...], dict[str, str]]:
    """The backends ``AZURE_OPENAI_BACKENDS`` lists, and the problems found.

    ``((), {})`` when the setting is absent or blank: the caller then builds the pool of
    one from the single-endpoint settings. Any problem gives
    ``((), {"AZURE_OPENAI_BACKENDS": "entry 'x': ...; ..."})``."""
    raw = environ.get(BACKENDS_SETTING)
    if raw is None or not raw.strip():
        return (), {}
    data, problem = _decode(raw)
    if problem is not None:
        return (), {BACKENDS_SETTING: problem}
    problems: list[str] = []
    backends = [backend for index, entry in enumerate(data)
                if (backend := _Entry(index, entry, environ, defaults).parse(problems)) is not None]
    names = [b.name for b in backends]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"entry '{name}': name is used by more than one entry")
    if problems:
        return (), {BACKENDS_SETTING: "; ".join(problems)}
    return tuple(backends), {}


def _decode(raw: str) -> tuple[list[Any], str | None]:
    try:
        data = json.loads(raw, object_pairs_hook=_object)
    except RecursionError:
        return [], "is nested too deeply to be a list of backends"
    except ValueError as exc:  # JSONDecodeError's msg and position describe the syntax, not the content
        where = f" (line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        return [], f"must be valid JSON{where}"
    if not isinstance(data, list):
        return [], "must be a JSON list of backend objects"
    if not data:
        return [], "must list at least one backend"
    if len(data) > MAX_BACKENDS:
        return [], f"must list at most {MAX_BACKENDS} backends"
    return data, None


class _Entry:
    """One entry of the list, read field by field; ``found`` collects what is wrong with it."""

    def __init__(self, index: int, entry: Any, environ: Mapping[str, str], defaults: Defaults) -> None:
        self.index, self.entry, self.environ, self.defaults = index, entry, environ, defaults
        self.found: list[str] = []

    def parse(self, problems: list[str]) -> BackendSettings | None:
        if not isinstance(self.entry, dict):
            problems.append(f"entry at index {self.index} must be a JSON object")
            return None
        name, label = self._name()
        endpoint = self._checked("endpoint", self._text("endpoint", required=True))
        if endpoint is not None and not self.found and self.defaults.allowed_hosts is not None \
                and not host_allowed(endpoint, self.defaults.allowed_hosts):
            self.found.append(STORE_HOST_PROBLEM)
        deployment = self._checked("deployment", self._text("deployment") or self.defaults.deployment)
        if deployment is None and self.entry.get("deployment") is None:
            self.found.append("deployment is required when AZURE_OPENAI_DEPLOYMENT is not set")
        api_version = self._checked("api_version", self._text("api_version") or self.defaults.api_version)
        priority, weight = self._whole_number("priority", MAX_PRIORITY), self._whole_number("weight", MAX_WEIGHT)
        auth = (self._text("auth") or self.defaults.auth).lower()
        if auth not in AUTH_MODES:
            self.found.append(f"auth must be one of {', '.join(AUTH_MODES)}")
        client_id = self._text("client_id") or self.defaults.client_id
        api_key = self._api_key(auth)
        api = (self._text("api") or self.defaults.api).lower()
        if api not in API_KINDS:
            self.found.append(f"api must be one of {', '.join(API_KINDS)}")
        model = self._text("model")
        if model is not None and not _MODEL.fullmatch(model):
            self.found.append("model must be 1 to 64 letters, digits, . _ - or :")
        if self.found:
            problems.extend(f"{label}: {reason}" for reason in self.found)
            return None
        return BackendSettings(name=name, endpoint=(endpoint or "").rstrip("/"), deployment=deployment or "",
                               api_version=api_version or "", priority=priority, weight=weight, auth=auth,
                               api_key=api_key, client_id=client_id, token_scope=self.defaults.token_scope, api=api,
                               model=model or "", from_pool=True)

    def _name(self) -> tuple[str, str]:
        name = self.entry.get("name")
        label = f"entry at index {self.index}"
        if isinstance(name, str) and _NAME.fullmatch(name):
            label = f"entry '{name}'"
        else:
            self.found.append("name is required: 1 to 32 letters, digits, _ or -")
        for key in sorted(set(self.entry) - set(_FIELDS)):
            self.found.append(f"unknown key {_key_label(key)}")
        for key in getattr(self.entry, "duplicates", ()):
            self.found.append(f"key {_key_label(key)} appears more than once")
        return (name if isinstance(name, str) else ""), label

    def _text(self, key: str, required: bool = False) -> str | None:
        value = self.entry.get(key)
        if value is None:
            if required:
                self.found.append(f"{key} is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.found.append(f"{key} must be a non-empty string")
            return None
        return value.strip()

    def _checked(self, key: str, value: str | None) -> str | None:
        reason = _RULES[key](value) if value is not None else None
        if reason is not None:
            self.found.append(f"{key} {reason}")
        return value

    def _whole_number(self, key: str, high: int) -> int:
        value = self.entry.get(key)
        if value is None:
            return 1
        if type(value) is not int or not 1 <= value <= high:  # true and 1.0 are not integers here
            self.found.append(f"{key} must be an integer from 1 to {high}")
            return 1
        return value

    def _api_key(self, auth: str) -> str | None:
        key_setting = self._text("api_key_setting", required=auth == "key")
        if key_setting is None:
            return None
        if auth != "key":
            self.found.append("api_key_setting is only used with auth key")
        elif not _SETTING_NAME.fullmatch(key_setting):
            self.found.append("api_key_setting must be the name of an app setting (letters, digits, _ and .)")
        elif holds_other_credentials(key_setting):
            self.found.append("api_key_setting must not name a setting of the platform, the app's identity or "
                              "another service's credentials")
        else:
            api_key = (self.environ.get(key_setting) or "").strip() or None
            if api_key is None:
                self.found.append("the app setting named by api_key_setting is not set")
            elif api_key.lower().startswith(_KEY_VAULT_REFERENCE):
                self.found.append("the app setting named by api_key_setting is a Key Vault reference the platform "
                                  "could not resolve (check the app's access to the vault)")
            else:
                return api_key
        return None
