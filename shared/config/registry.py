"""Every setting the app reads, once: its name, type, default, bounds and one line of doc.

The loaders read settings through these entries (``config.reader``), the tests
take their names from here, and ``docs/settings.md``'s table is generated from
this list (``python -m shared.config.registry``; a unit test keeps the page in
step). ``store=False`` marks a setting Azure App Configuration may not set: it
must come from app settings, because it says where the store is, who the app
is, whom it trusts, or what the host binds at indexing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AUTH_MODES = ("managed_identity", "default", "key")
STORE_AUTH_MODES = ("managed_identity", "default")
API_KINDS = ("auto", "chat", "completions")
DEFAULT_API_VERSION = "2025-04-01-preview"  # the latest dated version: reasoning models need it (docs/design.md)
DEFAULT_TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # text, url, int, number, seconds, flag, choice, json, secret
    default: Any
    doc: str
    group: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    store: bool = True  # App Configuration may set it
    fallback: str | None = None  # the seed guide's name, read when this one is absent
    default_text: str | None = None  # how the docs show a default that is not a plain value

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return "—"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        if isinstance(self.default, float) and self.default.is_integer():
            return f"`{int(self.default)}`"
        return f"`{self.default}`"


def _s(name: str, kind: str, default: Any, doc: str, group: str, **options: Any) -> Setting:
    return Setting(name, kind, default, doc, group, **options)


# -- Azure OpenAI: where, and how to authenticate ------------------------------------------------
ENDPOINT = _s("AZURE_OPENAI_ENDPOINT", "url", None,
              "`https://<resource>.openai.azure.com/` (`http://` only for loopback)", "upstream",
              fallback="OPENAI_API_BASE", default_text="required (unless `AZURE_OPENAI_BACKENDS`)")
DEPLOYMENT = _s("AZURE_OPENAI_DEPLOYMENT", "text", None, "deployment name, e.g. `gpt-4.1-mini`", "upstream",
                default_text="required (unless every backend names one)")
API = _s("AZURE_OPENAI_API", "choice", "auto",
         "which API the deployment speaks: `chat`, `completions`, or `auto` (chat, switching at once to completions "
         "when the deployment says it only does those, and remembering it)", "upstream", choices=API_KINDS)
BACKENDS = _s("AZURE_OPENAI_BACKENDS", "json", None,
              "a pool of deployments, as JSON ([design](design.md#backend-pool)); without it the settings here are "
              "a pool of one named `default`", "upstream")
API_VERSION = _s("AZURE_OPENAI_API_VERSION", "text", DEFAULT_API_VERSION, "data-plane API version", "upstream",
                 fallback="OPENAI_API_VERSION")
AUTH = _s("AZURE_OPENAI_AUTH", "choice", "managed_identity",
          "`managed_identity` (ManagedIdentityCredential with `client_id=AZURE_CLIENT_ID`), `default` "
          "(DefaultAzureCredential: `az login` locally), or `key`", "upstream", choices=AUTH_MODES)
API_KEY = _s("AZURE_OPENAI_API_KEY", "secret", None, "required when auth is `key`; never logged or shown",
             "upstream", fallback="OPENAI_API_KEY")
CLIENT_ID = _s("AZURE_CLIENT_ID", "text", None,
               "client id of a user-assigned identity (passed explicitly: ManagedIdentityCredential does not read it)",
               "upstream", store=False)
TOKEN_SCOPE = _s("AZURE_OPENAI_TOKEN_SCOPE", "text", DEFAULT_TOKEN_SCOPE,
                 "token scope: the Azure OpenAI / AI Services audience (public or sovereign cloud)", "upstream",
                 store=False)
ALLOWED_HOSTS = _s("AZURE_OPENAI_ALLOWED_HOSTS", "text", None,
                   "hosts besides Azure OpenAI's own (`*.openai.azure.com` ...) and loopback that an endpoint from "
                   "App Configuration may name, comma-separated (`*.example.com` allows a domain)", "upstream",
                   store=False)
SEED_API_TYPE = _s("OPENAI_API_TYPE", "choice", None,
                   "the seed guide's auth switch, read when `AZURE_OPENAI_AUTH` is absent: `azure` → key, "
                   "`azure_ad` → managed identity", "upstream", choices=("azure", "azure_ad", "azuread"))

# -- time, retries and capacity ---------------------------------------------------------------------
TIMEOUT = _s("AZURE_OPENAI_TIMEOUT", "seconds", 30.0,
             "seconds: the most one upstream attempt may take, in total (connecting, sending, waiting, reading)",
             "retry", low=0.1, high=600)
CONNECT_TIMEOUT = _s("AZURE_OPENAI_CONNECT_TIMEOUT", "seconds", 5.0,
                     "seconds: the most connecting may take, within that", "retry", low=0.1, high=60)
MAX_RETRIES = _s("AZURE_OPENAI_MAX_RETRIES", "int", 3,
                 "rounds of retries after the first; immediate failovers to other backends do not count", "retry",
                 low=0, high=10)
DEADLINE = _s("AZURE_OPENAI_DEADLINE", "seconds", 120.0,
              "seconds for the whole invocation; must stay under 230 s and under `host.json` `functionTimeout`",
              "retry", low=0.5)
MAX_CONCURRENCY = _s("AZURE_OPENAI_MAX_CONCURRENCY", "int", 512,
                     "completions in flight per instance (an `asyncio.Semaphore`); more wait for a slot within "
                     "their deadline", "retry", low=1, high=4096)
MAX_CONNECTIONS = _s("AZURE_OPENAI_MAX_CONNECTIONS", "int", None,
                     "kept-alive TCP connections per Azure OpenAI host; fewer than the concurrency makes calls wait "
                     "for a connection (within the connect timeout)", "retry", low=1, high=4096,
                     default_text="= the concurrency")
MAX_COOLDOWN = _s("AZURE_OPENAI_MAX_COOLDOWN", "seconds", 60.0,
                  "seconds at most a backend rests after a 429 or 503, whatever its Retry-After asks; then one "
                  "probe request decides", "retry", low=1, high=3600)
MAX_RESPONSE_BYTES = _s("AZURE_OPENAI_MAX_RESPONSE_BYTES", "int", 8 * MIB,
                        "larger upstream answers are refused as they arrive (502 `upstream_bad_response`); raise it "
                        "for `logprobs` at the limits", "retry", low=64 * 1024, high=256 * MIB)

# -- what one request may ask for ---------------------------------------------------------------
MAX_BODY_BYTES = _s("COMPLETIONS_MAX_BODY_BYTES", "int", MIB, "largest accepted body", "limits", low=1024,
                    high=64 * MIB)
MAX_PROMPTS = _s("COMPLETIONS_MAX_PROMPTS", "int", 16, "most prompts in a list", "limits", low=1, high=2048)
MAX_TOKENS = _s("COMPLETIONS_MAX_TOKENS", "int", 16384,
                "highest `max_tokens` or `max_completion_tokens` a caller may ask for (a reasoning model's thinking "
                "counts against the latter)", "limits", low=1, high=128_000)
MAX_MESSAGES = _s("COMPLETIONS_MAX_MESSAGES", "int", 256, "most messages in a chat request", "limits", low=1,
                  high=2048)
MAX_N = _s("COMPLETIONS_MAX_N", "int", 10, "highest `n`", "limits", low=1, high=128)
MAX_BEST_OF = _s("COMPLETIONS_MAX_BEST_OF", "int", 20, "highest `best_of` (the service's own limit)", "limits",
                 low=1, high=20)
CHAT_INSTRUCTIONS = _s("COMPLETIONS_CHAT_INSTRUCTIONS", "text",
                       "Continue the user's text. Answer with the continuation only: do not repeat the text, "
                       "do not comment on it.",
                       "the instruction sent before each prompt when `/api/completions` runs on a chat deployment; "
                       "set it empty to send none", "limits", default_text="a short instruction to continue the text")
ADAPT_PARAMETERS = _s("COMPLETIONS_ADAPT_PARAMETERS", "flag", True,
                      "learn what a reasoning deployment refuses (`max_tokens`, `temperature`, `stop` ...) from its "
                      "answer and send the request again without it; `false` passes the refusal on as 400 "
                      "`upstream_rejected`", "limits")
LOG_TEXT = _s("COMPLETIONS_LOG_TEXT", "flag", False,
              "`true` logs prompts and completions (and lets openai's DEBUG request logs through)", "limits")

# -- who may call ------------------------------------------------------------------------------------
CALLER_KEYS = _s("COMPLETIONS_CALLER_KEYS", "json", None,
                 "callers and their keys, as a JSON object: name → SHA-256 hex digest of the key (`make caller-key`). "
                 "Set in app settings at indexing, the HTTP routes are anonymous at the host and the app checks "
                 "`api-key` or `Authorization: Bearer` itself ([the SDKs](sdk.md)); the store may change the keys",
                 "callers")
AUTH_ENABLED = _s("WEBSITE_AUTH_ENABLED", "flag", False,
                  "set by the platform when App Service Authentication is on: the HTTP routes are anonymous at the "
                  "host and the app trusts the caller the platform validated (`x-ms-client-principal-*`)",
                  "callers", store=False)

# -- event-driven (binding metadata: read when the host indexes the app) ----------------------------
REQUEST_QUEUE = _s("COMPLETIONS_REQUEST_QUEUE", "text", "completion-requests",
                   "the request queue (its poison queue is `<name>-poison`)", "queues", store=False)
RESULT_QUEUE = _s("COMPLETIONS_RESULT_QUEUE", "text", "completion-results", "the results queue", "queues",
                  store=False)

# -- Azure App Configuration (bootstrap: app settings only) --------------------------------------
APPCONFIG_ENDPOINT = _s("AZURE_APPCONFIG_ENDPOINT", "url", None,
                        "`https://<store>.azconfig.io`: settings from Azure App Configuration "
                        "([App Configuration](app-configuration.md))", "appconfig", store=False)
APPCONFIG_CONNECTION_STRING = _s("AZURE_APPCONFIG_CONNECTION_STRING", "secret", None,
                                 "the store by access key instead (`Endpoint=…;Id=…;Secret=…`)", "appconfig",
                                 store=False)
APPCONFIG_KEY_PREFIX = _s("AZURE_APPCONFIG_KEY_PREFIX", "text", "completions:",
                          "keys read (and trimmed): `<prefix><SETTING_NAME>`", "appconfig", store=False)
APPCONFIG_LABEL = _s("AZURE_APPCONFIG_LABEL", "text", None, "the label read (default: no label)", "appconfig",
                     store=False)
APPCONFIG_SENTINEL = _s("AZURE_APPCONFIG_SENTINEL", "text", "completions:sentinel",
                        "the key whose change reloads the prefix", "appconfig", store=False)
APPCONFIG_REFRESH_SECONDS = _s("AZURE_APPCONFIG_REFRESH_SECONDS", "seconds", 30.0,
                               "seconds between checks of the sentinel", "appconfig", low=1, high=86400,
                               store=False)
APPCONFIG_AUTH = _s("AZURE_APPCONFIG_AUTH", "choice", None,
                    "`managed_identity` or `default` (default: follows `AZURE_OPENAI_AUTH`)", "appconfig",
                    choices=STORE_AUTH_MODES, store=False)

# -- trust ------------------------------------------------------------------------------------------
REQUESTS_CA_BUNDLE = _s("REQUESTS_CA_BUNDLE", "text", None,
                        "a PEM file of CA certificates outbound HTTPS trusts (then `SSL_CERT_FILE`)", "trust",
                        store=False)
SSL_CERT_FILE = _s("SSL_CERT_FILE", "text", None, "the same, OpenSSL's name (used when the first is unset)",
                   "trust", store=False)

# -- telemetry (the SDK reads its own OTEL_* settings) -------------------------------------------
APPINSIGHTS_CONNECTION_STRING = _s("APPLICATIONINSIGHTS_CONNECTION_STRING", "secret", None,
                                   "metrics and traces to Application Insights ([observability](observability.md))",
                                   "telemetry", store=False)
OTLP_ENDPOINT = _s("OTEL_EXPORTER_OTLP_ENDPOINT", "url", None,
                   "metrics and traces to an OTLP/HTTP backend, with the standard `OTEL_*` settings", "telemetry",
                   store=False)
WORKER_TELEMETRY = _s("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", "flag", False,
                      "the Functions worker configures Azure Monitor itself; the app then uses its pipeline",
                      "telemetry", store=False)
OTEL_SDK_DISABLED = _s("OTEL_SDK_DISABLED", "flag", False, "`true` turns telemetry off whatever else is set",
                       "telemetry", store=False)

SETTINGS: tuple[Setting, ...] = tuple(value for value in dict(globals()).values() if isinstance(value, Setting))
BY_NAME = {setting.name: setting for setting in SETTINGS}
GROUPS = {"upstream": "Azure OpenAI", "retry": "Time, retries and capacity", "limits": "What a request may ask for",
          "callers": "Who may call",
          "queues": "Event-driven", "appconfig": "Azure App Configuration (app settings only)",
          "trust": "Trust", "telemetry": "Telemetry"}


def names(*, group: str | None = None) -> tuple[str, ...]:
    """Every setting's name (and each seed-guide fallback), optionally of one group."""
    found: list[str] = []
    for setting in SETTINGS:
        if group is None or setting.group == group:
            found.append(setting.name)
            if setting.fallback:
                found.append(setting.fallback)
    return tuple(found)


def store_refused(name: str) -> bool:
    """True for the registry's settings App Configuration may not set."""
    setting = BY_NAME.get(name)
    return setting is not None and not setting.store


def markdown_table() -> str:
    """The settings table of docs/settings.md, one section per group."""
    lines: list[str] = []
    for group, title in GROUPS.items():
        lines += [f"### {title}", "", "| setting | default | meaning |", "|---|---|---|"]
        for setting in SETTINGS:
            if setting.group != group:
                continue
            bounds = ""
            if setting.low is not None and setting.high is not None:
                number = (lambda v: f"{int(v)}") if setting.kind == "int" else (lambda v: f"{v:g}")
                bounds = f" Range: {number(setting.low)}–{number(setting.high)}."
            store = "" if setting.store else " App settings only."
            fallback = f" Seed-guide name: `{setting.fallback}`." if setting.fallback else ""
            lines.append(f"| `{setting.name}` | {setting.shown_default()} | {setting.doc}.{bounds}{store}{fallback} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


START, END = "<!-- settings table: generated", "<!-- end of the generated table -->"


def write_page(path: str) -> None:
    """Replace the generated table in ``path`` (docs/settings.md) with the registry's."""
    with open(path, encoding="utf-8") as page:
        text = page.read()
    start = text.index("\n", text.index(START)) + 1
    with open(path, "w", encoding="utf-8") as page:
        page.write(text[:start] + markdown_table() + text[text.index(END):])


if __name__ == "__main__":  # python -m shared.config.registry [--write docs/settings.md]
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_page(sys.argv[2])
    else:
        print(markdown_table(), end="")
