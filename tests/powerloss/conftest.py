"""Fixtures for the power-loss tests: lazyfs mounts that are always unmounted."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .mount import LazyMount, fuse_unavailable_reason


@pytest.fixture(scope="session")
def fuse_available() -> None:
    reason = fuse_unavailable_reason()
    if reason is not None:
        pytest.skip(f"lazyfs cannot run here: {reason}")


@pytest.fixture
def lazy_mount(tmp_path: Path, fuse_available: None) -> Iterator[Callable[[str], LazyMount]]:
    """`lazy_mount(mode)` mounts a fresh lazyfs; every one is unmounted at the end."""
    mounts: list[LazyMount] = []

    def make(mode: str = "ext4") -> LazyMount:
        fs = LazyMount(tmp_path / f"fs{len(mounts)}", mode=mode)
        mounts.append(fs)
        return fs.start()

    try:
        yield make
    finally:
        for fs in mounts:
            fs.close()
