"""Fixtures of the chaos tier: skip (never fail) where namespaces cannot be made."""

from __future__ import annotations

import pytest

from tests.chaos.netns import unavailable_reason


@pytest.fixture(scope="session")
def netns_available() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"chaos tier skipped: {reason}")
