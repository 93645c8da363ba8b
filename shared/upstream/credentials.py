"""The azure-identity credentials the app uses: for Azure OpenAI tokens, and for App Configuration
and Key Vault. Imported only in identity modes: azure-identity and msal take ~0.1 s to load."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..config.settings import RetrySettings


class AccessTokenLike(Protocol):
    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


class TokenCredentialLike(Protocol):
    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  **kwargs: Any) -> AccessTokenLike: ...


def build_credential(auth: str, client_id: str | None, retry: RetrySettings) -> TokenCredentialLike:
    """The azure-identity credential for the configured auth mode.

    Called by the token cache on a refresh thread, not at import: azure-identity
    and msal take ~0.1 s to load, which a key-auth app never needs and a
    managed-identity app pays with its first token request rather than while
    the host indexes the functions (and never on the event loop). Its own
    retries are off (``retry_total=0``) and its HTTP timeouts short: the
    caller's retry policy decides, within the invocation's deadline.
    """
    return azure_credential(auth, client_id, retry_total=0, connection_timeout=retry.connect_timeout,
                            read_timeout=min(retry.read_timeout, 10.0))


def azure_credential(auth: str, client_id: str | None, **transport_options: Any) -> TokenCredentialLike:
    """``managed_identity`` or ``default`` as an azure-identity credential (imported here, when
    first needed), for the token cache and for App Configuration and Key Vault."""
    if auth == "managed_identity":
        from azure.identity import ManagedIdentityCredential

        # ManagedIdentityCredential does not read AZURE_CLIENT_ID itself.
        return ManagedIdentityCredential(client_id=client_id, **transport_options)
    if auth == "default":
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=client_id, **transport_options)
    raise ValueError(f"auth mode {auth!r} uses no credential")


def quiet_identity_loggers(log_text: bool) -> None:
    """azure-identity logs a failed token request at WARNING *with the exception's message*,
    which can hold the token endpoint's raw response (a truncated one holds the token
    itself), and msal logs response bodies at DEBUG. Unless the operator asked for text
    logging, keep both where they cannot carry a body; the token cache logs each failure
    itself, by type."""
    if not log_text:
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
        logging.getLogger("msal").setLevel(logging.WARNING)


def describe(exc: BaseException) -> str:
    """An exception's type (and HTTP status, when it has one), never its message: the
    message of a token-endpoint or transport error can hold a response body or a header
    value, and so a token."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}, HTTP {status}" if isinstance(status, int) else type(exc).__name__
