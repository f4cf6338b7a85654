"""Fixtures for the storage tests: a fresh data directory, closed even on failure."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft.storage import DataDir


@pytest.fixture
def datadir(tmp_path: Path) -> Iterator[DataDir]:
    """An opened, empty data directory of node 1."""
    dd = DataDir.open(tmp_path / "node1", 1)
    try:
        yield dd
    finally:
        dd.close()
