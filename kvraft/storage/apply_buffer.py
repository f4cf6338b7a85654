"""`ApplyBuffer`: the state machine's writes between their apply and the synced batch
that makes them durable; `FrozenView`: a point-in-time read view of LevelDB + buffer.

Why the buffer exists (issue 11, item 4). LevelDB's write-ahead log is not one
sequential file: when a memtable fills up, LevelDB closes the current log file WITHOUT
an fsync and starts a new one (google/leveldb #193, #196). After a power loss (not a
SIGKILL: the page cache survives that) an unsynced write in the old file can be gone
while a later synced write in the new file survives — and an unsynced write can survive
(the kernel wrote it back) while an earlier one did not. The only promises are: a write
made with sync=True is durable once it returns, and one WriteBatch is all or nothing.

So the state machine never writes to LevelDB without sync. An apply puts its effects
(and the new applied index, conf state, member records) here, where every read sees
them at once, and they reach LevelDB only inside ONE synced WriteBatch together:
* the next Raft-log write (`LevelDBStorage.persist` merges the buffer into its batch,
  so in steady state this costs no fsync of its own),
* a log compaction (it must make the applies durable before dropping their entries),
* `DataDir.close()`, or a flush of its own when the buffer passes `bytes_max`.
After any power loss the durable state machine is therefore the state after some
prefix of the applied entries (the applied index recorded with it says which), and
the entries after it are still in the log to be applied again. Nothing needs LevelDB
to keep the order of writes across its log files.

Invariant: LevelDB overlaid by `_flushing`, overlaid by `_current`, is the state
machine after its in-memory applied index; LevelDB alone is the state after the
applied index recorded in LevelDB.

Threading: `add` from the applying thread; flushes from any thread, one at a time
(`_flush_lock`); reads from any thread.
"""
from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Iterator
from typing import Final

import plyvel

APPLY_BUFFER_BYTES_MAX = 8 << 20   # buffered bytes (keys + values + overhead) before a flush
WRITE_OVERHEAD_BYTES = 64          # per buffered write, for the bound: dict entry + objects


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING: Final = _Missing.MISSING  # "not in the buffer": look in LevelDB


def prefix_stop(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (non-empty, not all 0xff)."""
    stripped = prefix.rstrip(b"\xff")
    assert stripped, f"no key follows prefix {prefix!r}"
    return stripped[:-1] + bytes((stripped[-1] + 1,))


class MergedIterator:
    """(key, value) in key order: LevelDB's items overlaid by buffered writes (a buffered
    None hides the key). A context manager; `close()` releases what it reads from."""

    def __init__(self, inner: plyvel.Iterator[tuple[bytes, bytes]],
                 overlay: list[tuple[bytes, bytes | None]],
                 on_close: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self._on_close = on_close
        self._items = _merge(inner, overlay)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self._items

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._items)

    def close(self) -> None:
        self._inner.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> MergedIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merge(inner: plyvel.Iterator[tuple[bytes, bytes]],
           overlay: list[tuple[bytes, bytes | None]]
           ) -> Iterator[tuple[bytes, bytes]]:
    pos, count = 0, len(overlay)
    for key, value in inner:
        while pos < count and overlay[pos][0] < key:
            okey, ovalue = overlay[pos]
            pos += 1
            if ovalue is not None:
                yield okey, ovalue
        if pos < count and overlay[pos][0] == key:
            okey, ovalue = overlay[pos]
            pos += 1
            if ovalue is not None:
                yield okey, ovalue
            continue
        yield key, value
    for okey, ovalue in overlay[pos:]:
        if ovalue is not None:
            yield okey, ovalue


def _in_range(writes: dict[bytes, bytes | None], start: bytes | None, stop: bytes | None
              ) -> list[tuple[bytes, bytes | None]]:
    return sorted((k, v) for k, v in writes.items()
                  if (start is None or k >= start) and (stop is None or k < stop))


class FrozenView:
    """LevelDB as of one moment plus the writes buffered at that moment: what the state
    machine was then, whatever is applied or installed afterwards. `close()` it."""

    def __init__(self, snapshot: plyvel.Snapshot, overlay: dict[bytes, bytes | None]
                 ) -> None:
        self._snapshot = snapshot
        self._overlay = overlay

    def get(self, key: bytes) -> bytes | None:
        value = self._overlay.get(key, MISSING)
        return self._snapshot.get(key) if value is MISSING else value

    def iterator(self, *, prefix: bytes | None = None, start: bytes | None = None,
                 stop: bytes | None = None) -> MergedIterator:
        if prefix is not None:
            start, stop = prefix, prefix_stop(prefix)
        return MergedIterator(self._snapshot.iterator(start=start, stop=stop),
                              _in_range(self._overlay, start, stop))

    def close(self) -> None:
        self._snapshot.close()


class ApplyBuffer:
    """See the module docstring. One per DataDir (`DataDir.apply_buffer`)."""

    def __init__(self, db: plyvel.DB, *, bytes_max: int = APPLY_BUFFER_BYTES_MAX) -> None:
        assert bytes_max > 0
        self._db = db
        self.bytes_max = bytes_max
        self._lock = threading.Lock()        # guards the three fields below
        self._current: dict[bytes, bytes | None] = {}   # applied, not yet in any batch
        self._flushing: dict[bytes, bytes | None] = {}  # in the batch being written
        self._bytes = 0                      # accounted size of _current
        self._flush_lock = threading.Lock()  # one flush at a time; owns _flushing

    # --- reads --------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The state machine's value of a LevelDB key: buffered, else in LevelDB."""
        with self._lock:
            value = self._current.get(key, MISSING)
            if value is MISSING:
                value = self._flushing.get(key, MISSING)
        # A key absent from the buffer here can only enter it newer than LevelDB's value,
        # so reading LevelDB after releasing the lock returns that value or a newer one.
        return self._db.get(key) if value is MISSING else value

    def freeze(self, start: bytes | None = None, stop: bytes | None = None) -> FrozenView:
        """A point-in-time view (of keys in [start, stop) when given): a LevelDB snapshot
        and a copy of the buffer, taken together under the lock. A batch being flushed
        is in the snapshot entirely or not at all, and in the copy either way."""
        with self._lock:
            snapshot = self._db.snapshot()
            overlay = dict(self._flushing)
            overlay.update(self._current)
        if start is not None or stop is not None:
            overlay = dict(_in_range(overlay, start, stop))
        return FrozenView(snapshot, overlay)

    def iterator(self, *, start: bytes, stop: bytes) -> MergedIterator:
        """Keys in [start, stop) as of now (point in time), buffer included."""
        view = self.freeze(start, stop)
        it = view.iterator(start=start, stop=stop)
        it._on_close = view.close  # the snapshot lives as long as the iterator
        return it

    # --- writes -------------------------------------------------------------------------
    def add(self, writes: dict[bytes, bytes | None]) -> None:
        """Buffer the writes of one apply (in apply order: later calls win)."""
        size = sum(len(k) + (len(v) if v is not None else 0) + WRITE_OVERHEAD_BYTES
                   for k, v in writes.items())
        with self._lock:
            self._current.update(writes)
            self._bytes += size

    def over_bound(self) -> bool:
        return self._bytes > self.bytes_max

    def flush(self) -> None:
        """Write everything buffered in ONE synced batch (waits for a running flush)."""
        batch = self._db.write_batch(sync=True)
        with self.merged_into(batch, wait=True) as took:
            if took:
                batch.write()

    @contextlib.contextmanager
    def merged_into(self, batch: plyvel.WriteBatch, *, wait: bool) -> Iterator[bool]:
        """Add every buffered write to `batch`, which the caller must write with
        sync=True inside the `with` block; yields whether anything was added. Without
        `wait`, adds nothing while another flush runs (that one carries the writes).
        If the block raises, the writes stay buffered."""
        if not self._flush_lock.acquire(blocking=wait):
            yield False
            return
        try:
            with self._lock:
                taken, self._current, self._bytes = self._current, {}, 0
                self._flushing = taken
            for key, value in taken.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            try:
                yield bool(taken)
            except BaseException:
                with self._lock:  # not written: keep them, older under newer
                    taken.update(self._current)
                    self._current, self._flushing = taken, {}
                    self._bytes = sum(len(k) + len(v or b"") + WRITE_OVERHEAD_BYTES
                                      for k, v in taken.items())
                raise
            with self._lock:
                self._flushing = {}  # in LevelDB now
        finally:
            self._flush_lock.release()

    def discard(self) -> None:
        """Forget everything buffered (a snapshot install replaces all of it)."""
        with self._flush_lock, self._lock:
            self._current, self._flushing, self._bytes = {}, {}, 0

    @property
    def empty(self) -> bool:
        with self._lock:
            return not self._current and not self._flushing
