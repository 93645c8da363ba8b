"""What went wrong with App Configuration or Key Vault, as a reason and a description without values."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit


def is_azure_error(exc: BaseException) -> bool:
    from azure.core.exceptions import AzureError

    return isinstance(exc, AzureError)


def verify_vault_challenge(store_url: str, vault_url: str) -> bool:
    """Whether the Key Vault client must check that the vault's auth challenge names a Key
    Vault resource. Always, except for local stand-ins: a vault on loopback referenced from a
    store on loopback (development). The reference comes from the store, so a store in Azure
    naming a loopback "vault" must not get a token for whatever resource that listener names."""
    return not (_is_loopback(store_url) and _is_loopback(vault_url))


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps, and (for the provider's TimeoutError) each attempt's error."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        args: tuple[Any, ...] = getattr(current, "args", ())
        if len(args) > 1 and isinstance(args[1], list):  # TimeoutError(message, [errors of each attempt])
            pending.extend(error for error in args[1] if isinstance(error, BaseException))
        pending.extend([current.__cause__, current.__context__])
    return seen


class KeyVaultReferenceError(Exception):
    """A Key Vault reference in the store that could not be resolved: ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_vault_reason(exc: BaseException) -> str:
    """What went wrong reading a referenced secret: it does not exist, the identity may not read
    it, or the vault did not answer."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    if isinstance(exc, ResourceNotFoundError) or getattr(exc, "status_code", None) == 404:
        return "Key Vault secret not found"
    if isinstance(exc, ClientAuthenticationError) or (isinstance(exc, HttpResponseError)
                                                      and exc.status_code in (401, 403)):
        return "Key Vault access denied"
    return "Key Vault unreachable"


def failure_reason(exc: BaseException) -> str:
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

    causes = _causes(exc)
    reference = next((c for c in causes if isinstance(c, KeyVaultReferenceError)), None)
    if reference is not None:
        return reference.reason
    if any(isinstance(c, ClientAuthenticationError) or (isinstance(c, HttpResponseError)
                                                         and c.status_code in (401, 403)) for c in causes):
        return "unauthorized"
    if any(isinstance(c, (AzureError, OSError)) for c in causes):
        return "unreachable"
    return "invalid"


def describe_failure(exc: BaseException) -> str:
    """Exception types (and HTTP statuses) of the failure: enough to act on, no bodies, no values."""
    parts = []
    for cause in _causes(exc):
        if isinstance(cause, TimeoutError) and len(cause.args) > 1:
            continue  # the provider's wrapper: its attempts follow
        status = getattr(cause, "status_code", None)
        parts.append(type(cause).__name__ + (f" {status}" if status else ""))
    return ", ".join(dict.fromkeys(parts)) or type(exc).__name__
