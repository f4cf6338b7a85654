"""A persisted Raft log entry survives a power cut also where a new file's name needs
its directory's fsync (strict POSIX; tests/powerloss/model.py's posix mode).

LevelDB (1.22) makes a new write-ahead log file at every memtable switch and fsyncs
the database directory only when it syncs a MANIFEST, which a background compaction
does a little later. A synced write that lands in the new log in between is fsynced,
but the file's name is not yet durable: a power cut at that moment takes the file, and
the write, with it. `LevelDBStorage.persist` promised the write durable when it returned
(the node then sends its acknowledgements), so it must make such a name durable first.

lazyfs is armed to fail right after the first fsync of a log file whose name that
fsync left volatile: the worst moment, which a random cut finds only by luck."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import plyvel
import pytest

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage.datadir import DataDir, DataDirError
from kvraft.storage.log_store import LevelDBStorage

from .mount import LazyMount

pytestmark = pytest.mark.powerloss

WRITE_BUFFER_BYTES = 64 << 10
ENTRY_BYTES = 512
ENTRIES_MAX = 2000  # about 16 memtable switches: the trigger comes at the first


def test_a_persisted_entry_survives_a_cut_right_after_a_log_switch(
        lazy_mount: Callable[[str], LazyMount]) -> None:
    fs = lazy_mount("posix")
    data = fs.mountpoint / "data"
    DataDir.open(data, 1, write_buffer_bytes=WRITE_BUFFER_BYTES).close()
    fs.cut(seed=0, torn_probability=0.0)  # DataDir.open made itself durable: a reboot
    fs.start()
    datadir = DataDir.open(data, 1, write_buffer_bytes=WRITE_BUFFER_BYTES)
    persisted = 0
    try:
        storage = LevelDBStorage(datadir)
        storage.initialize(eraftpb.ConfState(voters=[1]))
        fs.arm_volatile_wal_sync()
        for index in range(1, ENTRIES_MAX + 1):
            entry = eraftpb.Entry(term=1, index=index, data=b"e" * ENTRY_BYTES)
            try:
                storage.persist([entry], eraftpb.HardState(term=1, vote=1, commit=0))
            except (plyvel.Error, OSError, DataDirError):
                break  # the power failed inside this persist: it was never acknowledged
            persisted = index
            if fs.counters()["frozen"]:
                break  # ... or failed as it returned: acknowledged
    finally:
        with contextlib.suppress(Exception):
            datadir.close()
    assert fs.counters()["frozen"], "no fsync left a name volatile: the test proves nothing"
    assert persisted > 0
    fs.cut(seed=1, torn_probability=0.5)
    fs.start()
    with DataDir.open(data, 1, create=False) as datadir:
        last = LevelDBStorage(datadir).last_index()
    assert last >= persisted, (
        f"entries {last + 1}..{persisted} were persisted (persist returned) but are gone "
        f"after the cut: their log file's name was never made durable")
