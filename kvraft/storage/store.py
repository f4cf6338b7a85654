"""Opening a node's store: its data directory, Raft log and state machine, in the order
crash recovery needs.

1. `DataDir.open`: the lock, the identity record, the LevelDB.
2. `LevelDBStorage(datadir)`: the Raft log, checked whole. Until an interrupted snapshot
   install is redone the log is the old one, untouched (the install rewrites it only in
   its final batch), so it opens as usual.
3. `recover_unfinished_install(datadir, log)` (snapshot_install.py): redo an install a
   crash interrupted — its final batch rewrites the log through the log store — and
   drop stale staged files.
4. `KVStateMachine(datadir)`: only now, when its data is entirely old or entirely new
   (it refuses a directory whose install is still pending).

`open_store` does these; code that opens the parts itself must keep the order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kvraft.storage.datadir import DataDir
from kvraft.storage.log_store import LevelDBStorage
from kvraft.storage.snapshot_install import recover_unfinished_install
from kvraft.storage.state_machine import KVStateMachine


@dataclass
class NodeStore:
    """One node's opened store. `close()` (or `with`) closes it all."""

    datadir: DataDir
    log: LevelDBStorage
    sm: KVStateMachine

    def close(self) -> None:
        """Release the snapshot images, flush the buffered applies, close the database
        and release the lock (KVStateMachine.close, then DataDir.close). Idempotent."""
        self.sm.close()
        self.datadir.close()

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_store(path: str | Path, node_id: int, *, create: bool = True,
               scan_page_entries_max: int = 10_000) -> NodeStore:
    """Open (with `create`, make) node `node_id`'s store, finishing a snapshot install
    a crash interrupted. Raises DataDirError (one line) for every refusal of
    `DataDir.open` and for a damaged log or install."""
    datadir = DataDir.open(path, node_id, create=create)
    try:
        log = LevelDBStorage(datadir)
        recover_unfinished_install(datadir, log)
        sm = KVStateMachine(datadir, scan_page_entries_max=scan_page_entries_max)
    except BaseException:
        datadir.close()
        raise
    return NodeStore(datadir, log, sm)
