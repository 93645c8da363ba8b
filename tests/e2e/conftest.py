"""Fixtures the end-to-end tests share."""

from __future__ import annotations

import pytest

from support.azurite import running_azurite


@pytest.fixture(scope="module")
def azurite():
    """Azurite's queue service, for one module (skipped without Node.js); its connection string."""
    yield from running_azurite()
