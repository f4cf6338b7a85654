"""The seam with the state machine: an MVCCBatch runs over the data directory's
ApplyBuffer (reads see what is buffered, nothing is written to LevelDB by the batch)
and adds its writes to the caller's pending-writes dict, beside the other writes of
the same apply; a refused entry leaves the dict as it was. Reads through a FrozenView
see one point in time."""
from __future__ import annotations

import pytest

from kvraft.storage import DataDir, keys
from kvraft.storage.mvcc import (
    DuplicateKeyError,
    MVCCBatch,
    PutRequest,
    RangeRequest,
    TxnRequest,
    compact_revision,
    current_revision,
    iter_events,
    range_at,
)


def read(view: object, key: bytes, end: bytes = b"\x00") -> list[tuple[bytes, bytes]]:
    resp = range_at(view, RangeRequest(key, end), current=current_revision(view),  # type: ignore[arg-type]
                    compacted=compact_revision(view))  # type: ignore[arg-type]
    return [(kv.key, kv.value) for kv in resp.kvs]


def test_a_batch_over_the_apply_buffer_writes_into_the_pending_dict(
        datadir: DataDir) -> None:
    buffer = datadir.apply_buffer
    pending: dict[bytes, bytes | None] = {keys.kv_key(b"legacy"): b"1"}
    batch = MVCCBatch(buffer, pending)
    batch.put(PutRequest(b"a", b"1"))
    batch.put(PutRequest(b"a", b"2"))  # reads the first put through `pending`
    with pytest.raises(DuplicateKeyError):
        batch.txn(TxnRequest([], [PutRequest(b"b"), PutRequest(b"b")]))
    assert batch.revision == 3
    assert pending[keys.kv_key(b"legacy")] == b"1"  # the apply's other writes stay
    assert all(k.startswith(b"V") for k in pending if k != keys.kv_key(b"legacy"))
    assert datadir.db.get(b"Vmrev") is None          # nothing reached LevelDB
    buffer.add(pending)

    # The next apply reads the buffered state; a frozen view keeps the old one.
    frozen = buffer.freeze()
    second = MVCCBatch(buffer, {})
    second.put(PutRequest(b"b", b"x"))
    buffer.add(second.writes)
    assert read(buffer, b"a") == [(b"a", b"2"), (b"b", b"x")]
    assert read(frozen, b"a") == [(b"a", b"2")]
    assert [e.kv.value for e in iter_events(frozen, b"a", b"", 1)] == [b"1", b"2"]
    frozen.close()
    buffer.flush()
    assert read(buffer, b"\x00") == [(b"a", b"2"), (b"b", b"x")]
