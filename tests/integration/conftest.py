"""Fixtures the integration tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def app_with_store(store, configure_app):
    """``app_with_store(refresh_seconds=5, **app_settings)``: the app configured from app settings that
    point at the module's App Configuration stand-in ``store`` (managed identity), as the Functions host
    would; the service installed in function_app. The store is back up and at its seed before and after."""
    store.bring_up()
    store.reset()

    def configure(refresh_seconds: float = 5, **settings: str | None):
        return configure_app(**{**store.app_settings("managed_identity", refresh_seconds=float(refresh_seconds)),
                                **settings})

    yield configure
    store.bring_up()
    store.reset()
