"""Reads of the MVCC store over a Reader: a key range at any revision not compacted
(`range_at`, `iter_live`), the history a watch replays (`iter_events`), and the keys
of a lease (`keys_with_lease`).

Costs (n: keys in the range; h: of them, those changed since the read revision):
* at the current revision: one iteration over the keys' latest records, O(n) time,
  O(1) memory besides the result;
* at a past revision: the same, plus for each of the h keys a seek in its history
  (SeekCursor: a few steps or one fresh iterator), never the key's whole history;
* `count` (etcd always reports it) visits every key of the range, also with a limit;
  a count_only range decodes no record.
* Memory: a range holds at most its result, and never more than `RangeLimits`
  (RangeTooLargeError): with a limit, sorting by anything but the key ascending keeps
  only the best `limit` entries seen (a heap) or the last `limit` keys (descending by
  key), so it needs O(limit) memory and O(n log limit) time; without a limit it holds
  the whole result, which the bound caps.
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass

from kvraft.storage.apply_buffer import prefix_stop
from kvraft.storage.mvcc import layout
from kvraft.storage.mvcc.checks import check_range
from kvraft.storage.mvcc.errors import CompactedError, FutureRevisionError, RangeTooLargeError
from kvraft.storage.mvcc.keyrange import KeyRange
from kvraft.storage.mvcc.layout import Record, decode_record
from kvraft.storage.mvcc.messages import (
    Event,
    EventType,
    KeyValue,
    RangeRequest,
    RangeResponse,
    SortOrder,
    SortTarget,
)
from kvraft.storage.mvcc.view import SEEK_STEPS_MAX, ItemIterator, Reader, SeekCursor

KV_OVERHEAD_BYTES = 64  # per entry of a range result, for the byte bound


@dataclass(frozen=True, slots=True)
class RangeLimits:
    """The most a range may hold: entries of its result and their bytes (keys, values
    and KV_OVERHEAD_BYTES each), also while it sorts. Over it: RangeTooLargeError."""

    entries_max: int = 200_000
    bytes_max: int = 64 << 20

    def __post_init__(self) -> None:
        assert self.entries_max >= 1 and self.bytes_max >= 1


DEFAULT_RANGE_LIMITS = RangeLimits()


def items_of(it: ItemIterator) -> Iterator[tuple[bytes, bytes]]:
    while True:
        try:
            yield next(it)
        except StopIteration:
            return


# --- the store's revisions -------------------------------------------------------------
def current_revision(view: Reader) -> int:
    raw = view.get(layout.META_REVISION)
    return layout.FIRST_REVISION if raw is None else layout.unpack_int(raw)


def compact_revision(view: Reader) -> int:
    """Reads below it fail; 0 before the first compaction."""
    raw = view.get(layout.META_COMPACT)
    return 0 if raw is None else layout.unpack_int(raw)


def read_revision(requested: int, current: int, compacted: int) -> int:
    """The revision a read at `requested` (<= 0: current) sees, or etcd's refusal."""
    if requested > current:
        raise FutureRevisionError()
    rev = current if requested <= 0 else requested
    if rev < compacted:
        raise CompactedError(compacted)
    return rev


# --- keys at a revision ----------------------------------------------------------------
def iter_live(view: Reader, keys: KeyRange, rev: int, *,
              steps_max: int = SEEK_STEPS_MAX
              ) -> Generator[tuple[bytes, bytes], None, None]:
    """(user key, raw record) of each key live at `rev` in `keys`, in key order. `rev`
    must not be compacted (the caller checked). Close it if not run to the end."""
    if keys.empty:
        return
    if keys.single:
        raw = _single_at(view, keys.start, rev)
        if raw is not None and layout.record_live(raw):
            yield keys.start, raw
        return
    stop = layout.LATEST_END if keys.stop is None else layout.latest_key(keys.stop)
    it = view.iterator(start=layout.latest_key(keys.start), stop=stop)
    history: SeekCursor | None = None
    try:
        for lkey, raw in items_of(it):
            key = lkey[2:]
            if layout.record_mod_main(raw) > rev:
                if history is None:
                    history = SeekCursor(view, layout.HISTORY_END, steps_max=steps_max)
                item = history.seek(layout.history_seek(key, rev))
                if item is None or layout.history_group_of(item[0]) != \
                        layout.history_group(key):
                    continue  # the key did not exist at rev
                raw = item[1]
            if layout.record_live(raw):
                yield key, raw
    finally:
        it.close()
        if history is not None:
            history.close()


def _single_at(view: Reader, key: bytes, rev: int) -> bytes | None:
    """The raw record of `key` as of `rev` (live or tombstone), None if none."""
    raw = view.get(layout.latest_key(key))
    if raw is None or layout.record_mod_main(raw) <= rev:
        return raw
    group = layout.history_group(key)
    it = view.iterator(start=layout.history_seek(key, rev), stop=prefix_stop(group))
    try:
        item = next(it, None)
    finally:
        it.close()
    return None if item is None else item[1]


def record_at(view: Reader, key: bytes, main: int, sub: int) -> bytes | None:
    """The raw record `key` got at revision (main, sub), if it is still held."""
    raw = view.get(layout.latest_key(key))
    if raw is not None:
        rec = decode_record(raw)
        if (rec.mod_main, rec.mod_sub) == (main, sub):
            return raw
    return view.get(layout.history_key(key, main, sub))


def to_kv(key: bytes, rec: Record, *, keys_only: bool = False) -> KeyValue:
    return KeyValue(key, rec.create_revision, rec.mod_main, rec.version,
                    b"" if keys_only else rec.value, rec.lease)


# --- Range -------------------------------------------------------------------------------
def range_at(view: Reader, req: RangeRequest, *, current: int, compacted: int,
             limits: RangeLimits = DEFAULT_RANGE_LIMITS, truncate: bool = False
             ) -> RangeResponse:
    """etcd's Range over `view`, whose state is at revision `current` with compact
    revision `compacted`. The response's revision is `current` (etcd's header).

    A result over `limits` raises RangeTooLargeError, or with `truncate` (a range
    inside an apply: RangeResponse.truncated says why) stops collecting and is
    flagged."""
    check_range(req)
    rev = read_revision(req.revision, current, compacted)
    keys = KeyRange.of(req.key, req.range_end)
    count = 0
    if req.count_only:
        with closing(iter_live(view, keys, rev)) as live:
            for _ in live:
                count += 1
        return RangeResponse(current, (), False, count)
    limit = max(req.limit, 0)
    keep = _filter(req)
    collector = _collector(req, limit, limits)
    collector.truncate = truncate
    with closing(iter_live(view, keys, rev)) as live:
        for key, raw in live:
            count += 1
            if keep is None and collector.full:
                collector.matched += 1  # only `more` and `count` still need it
                continue
            rec = decode_record(raw)
            if keep is None or keep(rec):
                collector.add(key, rec)
    kvs = collector.result()
    return RangeResponse(current, kvs, limit > 0 and collector.matched > limit, count,
                         collector.truncated)


def _filter(req: RangeRequest) -> Callable[[Record], bool] | None:
    """etcd's min/max mod/create revision filters (0: unset), or None if none is set."""
    lo_mod, hi_mod = req.min_mod_revision, req.max_mod_revision
    lo_create, hi_create = req.min_create_revision, req.max_create_revision
    if not (lo_mod or hi_mod or lo_create or hi_create):
        return None

    def keep(rec: Record) -> bool:
        return not ((hi_mod and rec.mod_main > hi_mod) or (lo_mod and rec.mod_main < lo_mod)
                    or (hi_create and rec.create_revision > hi_create)
                    or (lo_create and rec.create_revision < lo_create))
    return keep


class _Collector:
    """The entries of a range result as they stream by. `matched`: entries offered."""

    def __init__(self, keys_only: bool, limits: RangeLimits) -> None:
        self.matched = 0
        self.keys_only = keys_only
        self.limits = limits
        self.held = 0        # entries held now
        self.held_bytes = 0  # their bytes, as RangeLimits counts them
        self.full = False    # no further entry can enter the result
        self.truncate = False   # over the limits: stop collecting instead of raising
        self.truncated = False  # ... and it did

    def add(self, key: bytes, rec: Record) -> None:
        raise NotImplementedError

    def result(self) -> list[KeyValue]:
        raise NotImplementedError

    def _size(self, key: bytes, rec: Record, *, with_value: bool) -> int:
        return len(key) + (len(rec.value) if with_value else 0) + KV_OVERHEAD_BYTES

    def _hold(self, size: int) -> None:
        self.held += 1
        self.held_bytes += size
        if self.held > self.limits.entries_max or self.held_bytes > self.limits.bytes_max:
            if not self.truncate:
                raise RangeTooLargeError(self.limits.entries_max, self.limits.bytes_max)
            self.truncated = self.full = True

    def _drop(self, size: int) -> None:
        self.held -= 1
        self.held_bytes -= size


class _InKeyOrder(_Collector):
    """Key order ascending (etcd's natural order): the first `limit` entries."""

    def __init__(self, limit: int, keys_only: bool, limits: RangeLimits) -> None:
        super().__init__(keys_only, limits)
        self.limit = limit
        self.kvs: list[KeyValue] = []

    def add(self, key: bytes, rec: Record) -> None:
        self.matched += 1
        if self.full:
            return
        self._hold(self._size(key, rec, with_value=not self.keys_only))
        self.kvs.append(to_kv(key, rec, keys_only=self.keys_only))
        self.full = self.full or (self.limit > 0 and len(self.kvs) >= self.limit)

    def result(self) -> list[KeyValue]:
        return self.kvs


class _LastInKeyOrder(_Collector):
    """Key order descending: the last `limit` entries of the ascending stream."""

    def __init__(self, limit: int, keys_only: bool, limits: RangeLimits) -> None:
        super().__init__(keys_only, limits)
        self.limit = limit
        self.kvs: deque[tuple[KeyValue, int]] = deque()

    def add(self, key: bytes, rec: Record) -> None:
        self.matched += 1
        if self.truncated:
            return
        size = self._size(key, rec, with_value=not self.keys_only)
        self.kvs.append((to_kv(key, rec, keys_only=self.keys_only), size))
        if self.limit and len(self.kvs) > self.limit:
            self._drop(self.kvs.popleft()[1])
        self._hold(size)

    def result(self) -> list[KeyValue]:
        return [kv for kv, _ in reversed(self.kvs)]


_SortKey = tuple[int | bytes, bytes]


class _HeapItem:
    """An entry of a sorted range in a heap whose top is the worst entry held: the
    largest when sorting ascending, the smallest when descending."""

    __slots__ = ("descending", "kv", "size", "sort_key")

    def __init__(self, sort_key: _SortKey, kv: KeyValue, size: int, descending: bool
                 ) -> None:
        self.sort_key = sort_key
        self.kv = kv
        self.size = size
        self.descending = descending

    def __lt__(self, other: _HeapItem) -> bool:  # "is worse than"
        if self.descending:
            return self.sort_key < other.sort_key
        return other.sort_key < self.sort_key


class _Sorted(_Collector):
    """By version, create or mod revision, or value (ties by key; descending is the
    exact reverse of ascending). With a limit only the best `limit` entries are held,
    without one every entry (which RangeLimits caps)."""

    def __init__(self, target: int, descending: bool, limit: int, keys_only: bool,
                 limits: RangeLimits) -> None:
        super().__init__(keys_only, limits)
        self.target = target
        self.descending = descending
        self.limit = limit
        self.heap: list[_HeapItem] = []

    def _sort_key(self, key: bytes, rec: Record) -> _SortKey:
        t = self.target
        if t == SortTarget.VERSION:
            return rec.version, key
        if t == SortTarget.CREATE:
            return rec.create_revision, key
        if t == SortTarget.MOD:
            return rec.mod_main, key
        assert t == SortTarget.VALUE, t
        return rec.value, key

    def add(self, key: bytes, rec: Record) -> None:
        self.matched += 1
        if self.truncated:
            return
        sort_key = self._sort_key(key, rec)
        if self.limit and len(self.heap) >= self.limit:
            worst = self.heap[0].sort_key
            if not (worst < sort_key if self.descending else sort_key < worst):
                return  # no better than the worst entry held
        # Sorting by value holds the value even for a keys-only result.
        with_value = self.target == SortTarget.VALUE or not self.keys_only
        item = _HeapItem(sort_key, to_kv(key, rec, keys_only=self.keys_only),
                         self._size(key, rec, with_value=with_value), self.descending)
        if self.limit and len(self.heap) >= self.limit:
            self._drop(heapq.heapreplace(self.heap, item).size)
        else:
            heapq.heappush(self.heap, item)
        self._hold(item.size)

    def result(self) -> list[KeyValue]:
        ordered = sorted(self.heap, key=lambda e: e.sort_key, reverse=self.descending)
        return [e.kv for e in ordered]


def _collector(req: RangeRequest, limit: int, limits: RangeLimits) -> _Collector:
    order, target = req.sort_order, req.sort_target
    # etcd: any target but the key is sorted ascending by default; by key ascending is
    # the natural order.
    if target != SortTarget.KEY and order == SortOrder.NONE:
        order = SortOrder.ASCEND
    elif target == SortTarget.KEY and order == SortOrder.ASCEND:
        order = SortOrder.NONE
    if order == SortOrder.NONE:
        return _InKeyOrder(limit, req.keys_only, limits)
    if target == SortTarget.KEY:
        return _LastInKeyOrder(limit, req.keys_only, limits)
    return _Sorted(target, order == SortOrder.DESCEND, limit, req.keys_only, limits)


# --- the history a watch replays -----------------------------------------------------------
def iter_events(view: Reader, key: bytes, range_end: bytes, start_revision: int, *,
                prev_kv: bool = False, stop_revision: int = 0
                ) -> Generator[Event, None, None]:
    """Every change to a key in (key, range_end) at revisions >= start_revision (<= 0:
    none yet, the watch starts after the current revision) and < stop_revision (0: to
    the current one), in revision order: what a watch from start_revision replays.

    CompactedError (carrying the compact revision, for the watch's cancellation) when
    start_revision is below the compact revision; events AT it are all held (compaction
    keeps that revision's tombstones until the next compaction), which etcd allows a
    watch to start from. `prev_kv`: the key before the change, as etcd's watch reads it
    (at revision - 1: absent when that revision is compacted or the key did not exist).
    Time: O(changes to any key since start_revision); memory O(1).
    """
    compacted = compact_revision(view)
    if start_revision <= 0:
        start_revision = current_revision(view) + 1
    elif start_revision < compacted:
        raise CompactedError(compacted)
    return _events(view, KeyRange.of(key, range_end), start_revision, stop_revision,
                   compacted, prev_kv)


def _events(view: Reader, keys: KeyRange, start: int, stop: int, compacted: int,
            prev_kv: bool) -> Generator[Event, None, None]:
    end = layout.event_key(stop, 0) if stop > 0 else layout.EVENT_END
    it = view.iterator(start=layout.event_key(start, 0), stop=end)
    try:
        for ekey, evalue in items_of(it):
            key = evalue[1:]
            if key not in keys:
                continue
            main, sub = layout.event_revision(ekey)
            raw = record_at(view, key, main, sub)
            assert raw is not None, f"no record of {key!r} at ({main}, {sub})"
            rec = decode_record(raw)
            if evalue[0] == layout.EVENT_PUT:
                assert rec.live
                kv, kind = to_kv(key, rec), EventType.PUT
            else:
                assert not rec.live
                kv, kind = KeyValue(key, mod_revision=main), EventType.DELETE
            prev = None
            if prev_kv and rec.prev_main and main - 1 >= compacted:
                praw = view.get(layout.history_key(key, rec.prev_main, rec.prev_sub))
                if praw is not None and layout.record_live(praw):
                    prev = to_kv(key, decode_record(praw))
            yield Event(kind, kv, prev)
    finally:
        it.close()


# --- leases ------------------------------------------------------------------------------
def iter_keys_with_lease(view: Reader, lease_id: int, *, after: bytes = b""
                         ) -> Generator[bytes, None, None]:
    """The live keys attached to `lease_id` that sort after `after`, in key order;
    O(1) memory. Close it if not run to the end."""
    prefix = layout.lease_prefix(lease_id)
    start = prefix + after + b"\x00" if after else prefix
    it = view.iterator(start=start, stop=prefix_stop(prefix))
    try:
        for lkey, _ in items_of(it):
            yield lkey[len(prefix):]
    finally:
        it.close()


def keys_with_lease(view: Reader, lease_id: int, *, limit: int, after: bytes = b""
                    ) -> list[bytes]:
    """One page of `iter_keys_with_lease`: at most `limit` keys after `after` (pass the
    last key of a page to get the next)."""
    assert limit >= 1
    out: list[bytes] = []
    with closing(iter_keys_with_lease(view, lease_id, after=after)) as keys:
        for key in keys:
            out.append(key)
            if len(out) >= limit:
                break
    return out
