"""Building the completion client for a set of settings, keeping what still applies from the last one.

When App Configuration changes the settings, the same backends and limits keep
the whole client (pool state, tokens, connections); otherwise token caches
survive per identity, the pool's state when the backends are the same, and the
connections when the endpoints and connection limits are.
"""

from __future__ import annotations

import functools

from ..clock import Clock
from ..config.settings import Settings
from ..telemetry.hooks import Telemetry
from .client import CompletionClient


def client_for(settings: Settings, clock: Clock, telemetry: Telemetry, old: CompletionClient | None = None,
               before: Settings | None = None) -> CompletionClient:
    """The client for ``settings``; ``old`` and ``before``: the client and settings it replaces."""
    if old is not None and before is not None and before.backends == settings.backends \
            and before.retry == settings.retry:
        return old
    tokens = {}
    identities = {backend.identity for backend in settings.backends if backend.identity is not None}
    if identities:
        from .credentials import build_credential  # identity modes only: not on key-auth cold start
        from .tokens import TokenCache

        for identity in identities:  # one cache per identity and scope, shared by its backends
            auth, client_id, scope = identity
            tokens[identity] = (old.tokens.get(identity) if old is not None else None) or TokenCache(
                functools.partial(build_credential, auth, client_id, settings.retry), scope, clock=clock,
                telemetry=telemetry)
    # (the pool keeps its cooldowns; a new AZURE_OPENAI_MAX_COOLDOWN needs a new pool to apply)
    same_backends = before is not None and before.backends == settings.backends \
        and before.retry.max_cooldown == settings.retry.max_cooldown
    same_transport = before is not None and {b.endpoint for b in before.backends} == {
        b.endpoint for b in settings.backends} and (before.retry.max_connections, before.retry.max_response_bytes) \
        == (settings.retry.max_connections, settings.retry.max_response_bytes)
    return CompletionClient(settings.backends, settings.retry, tokens, clock=clock, telemetry=telemetry,
                            pool=old.pool if old is not None and same_backends else None,
                            http=old.http if old is not None and same_transport else None, previous=old)
