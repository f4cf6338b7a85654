"""What the MVCC store reads from and writes to: any `Reader` of the LevelDB key space
(a plyvel DB or snapshot through `PlyvelReader`; the state machine's ApplyBuffer, its
FrozenView or live view as they are), and a `WriteSet` that holds one apply's writes
over it.

The store never writes to LevelDB itself (keys.py: nothing reaches LevelDB unsynced).
An apply builds its writes in a WriteSet — a plain dict of LevelDB key -> value (None:
delete), which may be the state machine's own pending-writes dict — and whoever owns
the database makes them durable (MVCCStore: one synced WriteBatch; the state machine:
its ApplyBuffer, with the applied index).

Reads must see one point in time: give the store a plyvel Snapshot, a FrozenView, or
(during an apply, on the applying thread) the live state that no one else changes.
"""
from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Protocol

import plyvel

if TYPE_CHECKING:
    from kvraft.storage.apply_buffer import ApplyBuffer, FrozenView

# A history cursor steps over at most this many records to reach its next target
# before it opens a fresh iterator there instead (see SeekCursor).
SEEK_STEPS_MAX = 16


class ItemIterator(Protocol):
    """(key, value) pairs in key order; close() releases what it reads from."""

    def __next__(self) -> tuple[bytes, bytes]: ...
    def close(self) -> None: ...


class Reader(Protocol):
    """Point reads and forward range iteration over LevelDB keys."""

    def get(self, key: bytes) -> bytes | None: ...
    def iterator(self, *, start: bytes, stop: bytes) -> ItemIterator: ...


class PlyvelReader:
    """A plyvel DB or Snapshot as a Reader."""

    def __init__(self, source: plyvel.DB | plyvel.Snapshot) -> None:
        self._source = source

    def get(self, key: bytes) -> bytes | None:
        return self._source.get(key)

    def iterator(self, *, start: bytes, stop: bytes) -> ItemIterator:
        return self._source.iterator(start=start, stop=stop)


class _MergedItems:
    """A base iterator's items overlaid by sorted writes (None hides a key)."""

    def __init__(self, inner: ItemIterator, overlay: list[tuple[bytes, bytes | None]]
                 ) -> None:
        self._inner = inner
        self._items = self._merge(overlay)

    def _merge(self, overlay: list[tuple[bytes, bytes | None]]
               ) -> Iterator[tuple[bytes, bytes]]:
        pos, count = 0, len(overlay)
        for key, value in _items(self._inner):
            while pos < count and overlay[pos][0] <= key:
                okey, ovalue = overlay[pos]
                pos += 1
                if ovalue is not None:
                    yield okey, ovalue
                if okey == key:
                    break
            else:
                yield key, value
        for okey, ovalue in overlay[pos:]:
            if ovalue is not None:
                yield okey, ovalue

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._items)

    def close(self) -> None:
        self._inner.close()


def _items(it: ItemIterator) -> Iterator[tuple[bytes, bytes]]:
    while True:
        try:
            yield next(it)
        except StopIteration:
            return


class WriteSet:
    """The writes of one apply over `base`, read through: get/iterator see them.

    Writes are made per entry: `put`/`delete` go to the open entry, which
    `commit_entry` adds to `writes` (the apply's, possibly the caller's dict) and
    `abort_entry` forgets — so a refused entry leaves nothing behind. Invariant:
    `writes` holds only committed entries' writes, in apply order (later wins).
    """

    def __init__(self, base: Reader, writes: MutableMapping[bytes, bytes | None] | None
                 = None) -> None:
        self.base = base
        self.writes: MutableMapping[bytes, bytes | None] = {} if writes is None else writes
        self._entry: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self._entry:
            return self._entry[key]
        if key in self.writes:
            return self.writes[key]
        return self.base.get(key)

    def iterator(self, *, start: bytes, stop: bytes) -> ItemIterator:
        """Items in [start, stop) as of this call (later writes are not seen)."""
        overlay = {k: v for k, v in self.writes.items() if start <= k < stop}
        overlay.update((k, v) for k, v in self._entry.items() if start <= k < stop)
        if not overlay:
            return self.base.iterator(start=start, stop=stop)
        return _MergedItems(self.base.iterator(start=start, stop=stop),
                            sorted(overlay.items()))

    def put(self, key: bytes, value: bytes) -> None:
        self._entry[key] = value

    def delete(self, key: bytes) -> None:
        self._entry[key] = None

    def commit_entry(self) -> None:
        self.writes.update(self._entry)
        self._entry = {}

    def abort_entry(self) -> None:
        self._entry = {}


class SeekCursor:
    """A forward cursor over [.., stop) of a Reader that finds the first item at or
    after each target, for non-decreasing targets.

    A Reader has no seek (the ApplyBuffer's merged view iterates forward only, and
    opening an iterator there copies the buffered writes in range), so the cursor
    steps forward to a near target and opens a new iterator at a far one: at most
    `steps_max` steps plus one iterator per target. Invariant: every item before the
    current one is before the last target.
    """

    def __init__(self, reader: Reader, stop: bytes, *, steps_max: int = SEEK_STEPS_MAX
                 ) -> None:
        assert steps_max >= 0
        self._reader = reader
        self._stop = stop
        self._steps_max = steps_max
        self._it: ItemIterator | None = None
        self._item: tuple[bytes, bytes] | None = None
        self._target = b""

    def seek(self, target: bytes) -> tuple[bytes, bytes] | None:
        """The first item with key >= target (None: none before stop)."""
        assert target >= self._target, "SeekCursor targets must not decrease"
        self._target = target
        if self._it is not None:
            steps = 0
            while (self._item is not None and self._item[0] < target
                   and steps < self._steps_max):
                self._item = next(self._it, None)
                steps += 1
            if self._item is None or self._item[0] >= target:
                return self._item
            self._it.close()
        self._it = self._reader.iterator(start=target, stop=self._stop)
        self._item = next(self._it, None)
        return self._item

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None


if TYPE_CHECKING:
    # The seam with state_machine.py, checked by mypy: its readers are Readers as is.
    def _readers_of_the_state_machine(buffer: ApplyBuffer, view: FrozenView
                                      ) -> tuple[Reader, Reader]:
        return buffer, view
