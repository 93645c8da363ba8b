"""Settings that belong to the platform, the app's identity or its trust roots.

Two rules rest on this list: App Configuration may not set them (``config.appconfig``:
a store able to move ``IDENTITY_ENDPOINT`` could have the app hand its identity
header to another host), and a backend's ``api_key_setting`` may not name them,
nor any other setting that holds a credential (``config.backends``: whoever writes
``AZURE_OPENAI_BACKENDS``, in the store say, would otherwise have the app send a
storage connection string as ``api-key`` to an endpoint of their choosing).
"""

from __future__ import annotations

from .registry import store_refused

# The platform's own (the app never reads them; the libraries it uses do), besides the
# registry's settings marked store=False.
PLATFORM_NAMES = frozenset({"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "SSL_CERT_DIR",
                            "CURL_CA_BUNDLE"})
BOOTSTRAP_PREFIXES = ("AZURE_APPCONFIG_", "FUNCTIONS_", "AzureWebJobs", "WEBSITE_")
# Besides those, settings that hold credentials for something other than Azure OpenAI.
CREDENTIAL_NAMES = frozenset({"AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_CERTIFICATE_PATH",
                              "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD"})
CREDENTIAL_PREFIXES = ("APPLICATIONINSIGHTS_", "OTEL_", "PYTHON_APPLICATIONINSIGHTS_")


def is_bootstrap_name(name: str) -> bool:
    """True for settings that must come from app settings, never from App Configuration."""
    return store_refused(name) or name in PLATFORM_NAMES or name.startswith(BOOTSTRAP_PREFIXES)


def holds_other_credentials(name: str) -> bool:
    """True for settings an Azure OpenAI key must never be read from (and so sent upstream)."""
    return (is_bootstrap_name(name) or name in CREDENTIAL_NAMES or name.startswith(CREDENTIAL_PREFIXES)
            or "CONNECTION_STRING" in name.upper() or name.upper().endswith("CONNECTIONSTRING"))
