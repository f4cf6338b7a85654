"""`MVCCStore`: the MVCC model over a plyvel DB on its own — each write request is one
MVCCBatch written in one synced WriteBatch; each read runs on a LevelDB snapshot.

This is the module's standalone form (its tests drive it, across reopens). In a node
the state machine owns the database: it runs an MVCCBatch per apply over its own view
and buffers the writes with the applied index (state_machine.py), instead of this.

Threading: writes one at a time (a lock); reads from any thread, never waiting for a
write (a snapshot is a point in time).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

import plyvel

from kvraft.storage.mvcc.batch import LeaseExists, MVCCBatch
from kvraft.storage.mvcc.compaction import pending
from kvraft.storage.mvcc.messages import (
    CompactResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)
from kvraft.storage.mvcc.reads import (
    DEFAULT_RANGE_LIMITS,
    RangeLimits,
    compact_revision,
    current_revision,
    iter_events,
    keys_with_lease,
    range_at,
)
from kvraft.storage.mvcc.view import PlyvelReader

_T = TypeVar("_T")


class MVCCStore:
    def __init__(self, db: plyvel.DB, *, range_limits: RangeLimits = DEFAULT_RANGE_LIMITS,
                 lease_exists: LeaseExists | None = None, sync: bool = True) -> None:
        """`sync=False` only for tests that never lose power (keys.py: a node writes
        nothing unsynced)."""
        self._db = db
        self._range_limits = range_limits
        self._lease_exists = lease_exists
        self._sync = sync
        self._write_lock = threading.Lock()

    # --- writes ----------------------------------------------------------------------------
    def _write(self, op: Callable[[MVCCBatch], _T]) -> _T:
        with self._write_lock:
            batch = MVCCBatch(PlyvelReader(self._db), range_limits=self._range_limits,
                              lease_exists=self._lease_exists)
            result = op(batch)
            if batch.writes:
                wb = self._db.write_batch(sync=self._sync)
                for key, value in batch.writes.items():
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
                wb.write()
            return result

    def put(self, req: PutRequest) -> PutResponse:
        return self._write(lambda b: b.put(req))

    def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        return self._write(lambda b: b.delete_range(req))

    def txn(self, req: TxnRequest) -> TxnResponse:
        return self._write(lambda b: b.txn(req))

    def write_ops(self, ops: Sequence[PutRequest | DeleteRangeRequest]
                  ) -> list[PutResponse | DeleteRangeResponse]:
        return self._write(lambda b: b.write_ops(ops))

    def compact(self, revision: int) -> CompactResponse:
        return self._write(lambda b: b.compact(revision))

    def compact_step(self, entries_max: int) -> bool:
        """One bounded step of removing compacted history; True while more is left."""
        return self._write(lambda b: b.compact_step(entries_max))

    def delete_keys_with_lease(self, lease_id: int) -> DeleteRangeResponse:
        return self._write(lambda b: b.delete_keys_with_lease(lease_id))

    # --- reads -----------------------------------------------------------------------------
    def range(self, req: RangeRequest) -> RangeResponse:
        with self._db.snapshot() as snap:
            view = PlyvelReader(snap)
            return range_at(view, req, current=current_revision(view),
                            compacted=compact_revision(view), limits=self._range_limits)

    def events(self, key: bytes, range_end: bytes, start_revision: int, *,
               prev_kv: bool = False, stop_revision: int = 0
               ) -> Generator[Event, None, None]:
        """reads.iter_events on a snapshot taken now (released when the iterator ends
        or is closed). CompactedError is raised here, not at the first event."""
        snap = self._db.snapshot()
        try:
            events = iter_events(PlyvelReader(snap), key, range_end, start_revision,
                                 prev_kv=prev_kv, stop_revision=stop_revision)
        except BaseException:
            snap.close()
            raise
        return _closing_with(events, snap)

    def keys_with_lease(self, lease_id: int, *, limit: int, after: bytes = b""
                        ) -> list[bytes]:
        with self._db.snapshot() as snap:
            return keys_with_lease(PlyvelReader(snap), lease_id, limit=limit, after=after)

    @property
    def revision(self) -> int:
        return current_revision(PlyvelReader(self._db))

    @property
    def compact_revision(self) -> int:
        return compact_revision(PlyvelReader(self._db))

    @property
    def compaction_pending(self) -> bool:
        return pending(PlyvelReader(self._db))


def _closing_with(events: Generator[Event, None, None], snap: plyvel.Snapshot
                  ) -> Generator[Event, None, None]:
    try:
        yield from events
    finally:
        events.close()
        snap.close()
