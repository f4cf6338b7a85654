"""Fixtures: an MVCC store over a fresh LevelDB, closed and removed even on failure."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import plyvel
import pytest

from kvraft.storage.mvcc import MVCCStore


class Opened:
    """A store and its database, reopenable (the state must survive it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = plyvel.DB(str(path), create_if_missing=True)
        self.store = MVCCStore(self.db, sync=False)

    def reopen(self) -> MVCCStore:
        self.db.close()
        self.db = plyvel.DB(str(self.path))
        self.store = MVCCStore(self.db, sync=False)
        return self.store


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    o = Opened(tmp_path / "mvcc")
    try:
        yield o
    finally:
        o.db.close()


@pytest.fixture
def store(opened: Opened) -> MVCCStore:
    return opened.store
