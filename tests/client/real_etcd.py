"""A real etcd cluster for the client tests: Debian's etcd-server (etcd 3.4) on loopback,
so that kvraft.client's etcd API is judged by etcd itself, not only by kvraft.

The binary comes from the machine (.ci/run installs etcd-server); without it the tests
that need it are skipped with the package's name, never installed mid-test."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.etcd import EtcdClusterOverKvraftStubs


@contextlib.contextmanager
def real_etcd(members: int) -> Iterator[tuple[str, ...]]:
    """Starts `members` etcd processes; yields their client endpoints. The processes
    are killed and their data directory removed on exit, also when the start failed."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian: etcd-server)")
    base = Path(tempfile.mkdtemp(prefix="kvraft-real-etcd-"))
    cluster = EtcdClusterOverKvraftStubs(members, base)
    try:
        cluster.start()
        yield cluster.endpoints
    finally:
        cluster.stop(graceful=False)   # the data is thrown away: no clean shutdown needed
        shutil.rmtree(base, ignore_errors=True)
