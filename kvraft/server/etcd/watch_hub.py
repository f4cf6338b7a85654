"""The watch hub: one per member, fed by apply, serving every watch of the member's
etcd `Watch` streams (SPEC §6, issue 12 "Watches").

A watcher covers a key, a range or a prefix (etcd's range_end), from a start revision,
with prev_kv, the NOPUT / NODELETE filters and progress notifications. The promise:
**every watcher receives every matching event exactly once, in revision order, with no
gap** — also one that started at an old revision, one that fell behind, and one on a
member that installed a snapshot.

How it is kept. Each watcher holds `next_revision`, the lowest revision it has not yet
been given events of; its buffer holds only events below it, in order, and it is only
ever given events at or above it (anything below is dropped: that is what makes a
rejoin free of duplicates). A watcher is in one of two modes:

* synced: apply's fan-out (`on_applied`, on the loop after each applied batch) appends
  its matching events to its buffer as they happen. Only a synced watcher with
  `next_revision > hub.revision` is ever in the fan-out set, so it cannot miss any
  event the fan-out has already passed.
* unsynced: a catch-up task reads the history from the store (`source.events`, in a
  thread, in chunks of whole revisions) from `next_revision`, one chunk whenever its
  buffer is empty, until `next_revision > hub.revision` holds after a read — checked
  on the loop right after the read returns, with no await in between, so no fan-out
  can slip between the check and the rejoin. A read returning nothing proves there are
  no matching events up to the revision the hub had reached when the read began (the
  store is never behind the fan-out: apply writes before it tells the hub).

A watcher becomes unsynced when it starts at a revision the hub has passed, when its
buffer would overflow (a slow consumer: apply never waits for it, and no other watcher
notices), and when the member installs a snapshot (the history jumped). If its
`next_revision` has been compacted it is cancelled with the compact revision, as etcd
cancels it; the client may resume from there.

Where the reads run: `read` (asyncio.to_thread by default: a LevelDB read must not hold
the loop). A simulation on virtual time (tests/simcluster) passes its own, which runs
the read on the loop and delivers it after a drawn delay, so the fan-out interleaves
with the read as it does with a thread.

Nothing here polls: the consumer (the stream) waits on an asyncio.Event the hub sets
when one of its watchers has something to send, and a catch-up task waits on an event
the consumer sets when it empties the buffer.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvraft.storage import mvcc
from kvraft.storage.mvcc import Event, EventType, KeyRange

log = logging.getLogger(__name__)

# A watcher's buffer: past this many events undelivered, the fan-out stops feeding it
# and it catches up from the store once its consumer has drained what it holds. Bounds
# the memory a slow client can pin (times the size of an event).
WATCHER_BUFFER_EVENTS_MAX = 1024
# ... or past this many bytes of them (event_bytes): a few events with large values
# must not pin as much memory as a thousand small ones.
WATCHER_BUFFER_BYTES_MAX = 8 << 20
# Events asked of the store per catch-up read (whole revisions; a revision with more
# events comes whole). Bounds the memory and the thread time of one read.
CATCH_UP_CHUNK_EVENTS = 512
# A catch-up read asks for fewer events when the last chunk's were large, aiming at
# this many bytes per chunk (the store's read bounds events, not bytes).
CATCH_UP_CHUNK_BYTES = 4 << 20
# The first catch-up read of a watcher that has been given no event yet (nothing tells
# how large its events are) asks for at most this many.
CATCH_UP_FIRST_CHUNK_EVENTS = 32
# Per event held, besides its keys and values (the objects around them).
EVENT_OVERHEAD_BYTES = 200
# Catch-up reads in flight at once on a member, whatever the number of unsynced
# watchers: the store's thread pool serves the node too.
CATCH_UP_READS_MAX = 4


# Runs one catch-up read (a call of the source's `events`) away from the loop and
# returns its events (or raises what it raised).
ReadRunner = Callable[[Callable[[], list[Event]]], Awaitable[list[Event]]]


def read_in_thread(read: Callable[[], list[Event]]) -> Awaitable[list[Event]]:
    """The production ReadRunner: the read in the default executor's threads."""
    return asyncio.to_thread(read)


HUB_FAILED_REASON = "kvraft: the member's watch hub failed; resume the watch"


def event_bytes(event: Event) -> int:
    """About what an event held in a buffer costs."""
    size = EVENT_OVERHEAD_BYTES + len(event.kv.key) + len(event.kv.value)
    if event.prev_kv is not None:
        size += len(event.prev_kv.key) + len(event.prev_kv.value)
    return size


def event_revision(event: Event) -> int:
    """The (main) revision an event happened at: a put's mod revision, a deletion's."""
    return event.kv.mod_revision


class EventSource(Protocol):
    """What the hub reads from: the state machine (KVStateMachine), or in tests an
    MVCCStore behind an adapter. `events` runs in a thread; it returns the events with
    revision >= start_revision up to the current revision, at most about `limit`
    (whole revisions), and raises mvcc.CompactedError when start_revision has been
    compacted."""

    @property
    def revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def events(self, key: bytes, range_end: bytes, start_revision: int, *,
               prev_kv: bool = False, limit: int = ...) -> list[Event]: ...


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """A watch as its create request asks for it. `range_end` as etcd's: b"" the key
    alone, b"\\0" every key >= key, else [key, range_end). `start_revision` <= 0: from
    the next revision on."""

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    prev_kv: bool = False
    filter_put: bool = False      # etcd's NOPUT: leave put events out
    filter_delete: bool = False   # etcd's NODELETE: leave delete events out
    progress_notify: bool = False


class Watcher:
    """One watch. The hub writes it; its consumer (one stream) calls `take`,
    `wants_wake` and reads the flags.

    Fields and what holds of them:
    * `next_revision`: the lowest revision whose events this watcher has not been
      given. Every event in `_buffer` is below it; every event handed to the watcher
      later is at or above it. Never decreases.
    * `synced`: in the hub's fan-out set. Invariant: synced implies no matching event
      in [next_revision, hub.revision] is missing from the buffer or already sent
      (i.e. next_revision > hub.revision at the moment it joined, and the fan-out has
      fed it every revision since).
    * `_buffer`: events given, not yet taken by the consumer, in revision order; at
      most the hub's buffer_events_max events and buffer_bytes_max bytes while fed by
      the fan-out (a catch-up chunk is put only into an empty buffer, and one entry's
      events into an empty one whatever their size). `_buffer_bytes`: their
      event_bytes.
    * `compact_revision`: > 0 once cancelled because next_revision was compacted; the
      consumer sends what is buffered, then the cancellation.
    * `closed`: cancelled (by the client, the stream's end, compaction, or a failed
      read, then `cancel_reason` says why): nothing is given to it any more.
    """

    def __init__(self, hub: WatchHub, watch_id: int, spec: WatchSpec, next_revision: int,
                 wake: asyncio.Event) -> None:
        self.hub = hub
        self.id = watch_id
        self.spec = spec
        self.keys = KeyRange.of(spec.key, spec.range_end)
        # Watchers equal in this see the same events, shaped the same.
        self.share_key = (self.keys, spec.filter_put, spec.filter_delete, spec.prev_kv)
        self.next_revision = next_revision
        self.synced = False
        self.compact_revision = 0
        self.closed = False
        self.cancel_reason = ""                # the server ended it (not compaction)
        self._buffer: deque[Event] = deque()
        self._buffer_bytes = 0
        # Events given so far and their bytes: how large this watch's events run.
        self.given_events = 0
        self.given_bytes = 0
        self._wake = wake                      # the consumer's: something to send
        self._drained = asyncio.Event()        # the catch-up task's: buffer emptied
        self._drained.set()
        # Set when an event was taken since the last progress tick (etcd sends a
        # periodic progress notification only to a watcher that got no event in the
        # interval).
        self.sent_since_tick = False

    # --- the consumer's side ----------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events buffered, not yet taken."""
        return len(self._buffer)

    def take(self, events_max: int) -> list[Event]:
        """Up to about `events_max` buffered events, in order, never splitting a
        revision (a revision with more comes whole)."""
        out: list[Event] = []
        buf = self._buffer
        while buf:
            if len(out) >= events_max and event_revision(buf[0]) != event_revision(out[-1]):
                break
            ev = buf.popleft()
            self._buffer_bytes -= event_bytes(ev)
            out.append(ev)
        if out:
            self.sent_since_tick = True
        if not buf:
            self._drained.set()
        return out

    def progress_ready(self) -> bool:
        """A progress notification now would be true: the watcher is synced and holds
        nothing undelivered, so it has everything up to hub.revision."""
        return self.synced and not self._buffer and not self.closed

    # --- the hub's side ---------------------------------------------------------------
    def _matches(self, event: Event) -> bool:
        if event.kv.key not in self.keys:
            return False
        if event.type == EventType.PUT:
            return not self.spec.filter_put
        return not self.spec.filter_delete

    def _shape(self, event: Event) -> Event:
        """The event as this watcher is given it: prev_kv only when asked for."""
        if not self.spec.prev_kv and event.prev_kv is not None:
            return Event(event.type, event.kv)
        return event

    def _append(self, events: Sequence[Event], size: int) -> None:
        """The fan-out's share for one entry: matching, shaped, all at revisions >=
        next_revision (the caller advances next_revision past the entry)."""
        assert not self._buffer or event_revision(self._buffer[-1]) <= \
            event_revision(events[0]), f"watch {self.id}: events out of order"
        assert event_revision(events[0]) >= self.next_revision, \
            f"watch {self.id}: given {event_revision(events[0])} below {self.next_revision}"
        self._buffer.extend(events)
        self._buffer_bytes += size
        self.given_events += len(events)
        self.given_bytes += size
        self._drained.clear()
        self._wake.set()

    def _give(self, events: Sequence[Event], upto_revision: int) -> None:
        """Append `events` (matching or not; all below upto_revision + 1) and advance
        next_revision past `upto_revision`."""
        for ev in events:
            rev = event_revision(ev)
            if rev < self.next_revision:
                continue                       # given before: a rejoin's overlap
            assert not self._buffer or event_revision(self._buffer[-1]) <= rev, \
                f"watch {self.id}: event at {rev} after {event_revision(self._buffer[-1])}"
            if self._matches(ev):
                shaped = self._shape(ev)
                size = event_bytes(shaped)
                self._buffer.append(shaped)
                self._buffer_bytes += size
                self.given_events += 1
                self.given_bytes += size
        if upto_revision + 1 > self.next_revision:
            self.next_revision = upto_revision + 1
        if self._buffer:
            self._drained.clear()
            self._wake.set()


class WatchHub:
    """The member's watchers and the fan-out of applied events to them.

    * `revision`: the highest revision the fan-out has passed (every synced watcher has
      been given every event up to it). Never decreases; the store's revision is at
      least it.
    * `_synced`: the watchers fed by the fan-out; `_catching_up`: watcher -> its task.
      A live watcher is in exactly one of them.
    """

    def __init__(self, source: EventSource, *,
                 buffer_events_max: int = WATCHER_BUFFER_EVENTS_MAX,
                 buffer_bytes_max: int = WATCHER_BUFFER_BYTES_MAX,
                 chunk_events: int = CATCH_UP_CHUNK_EVENTS,
                 chunk_bytes: int = CATCH_UP_CHUNK_BYTES,
                 reads_max: int = CATCH_UP_READS_MAX,
                 read: ReadRunner = read_in_thread) -> None:
        assert buffer_events_max >= 1 and chunk_events >= 1 and reads_max >= 1
        assert buffer_bytes_max >= 1 and chunk_bytes >= 1
        self.source = source
        self.buffer_events_max = buffer_events_max
        self.buffer_bytes_max = buffer_bytes_max
        self.chunk_events = chunk_events
        self.chunk_bytes = chunk_bytes
        self._read = read
        self.revision = source.revision
        self._synced: set[Watcher] = set()
        self._catching_up: dict[Watcher, asyncio.Task[None]] = {}
        self._reads = asyncio.Semaphore(reads_max)
        self._closed = False
        # Counters for tests and metrics: how often watchers overflowed, and catch-up
        # reads made.
        self.overflows = 0
        self.catch_up_reads = 0

    # --- watchers ----------------------------------------------------------------------
    def watch(self, watch_id: int, spec: WatchSpec, wake: asyncio.Event) -> Watcher:
        """A new watcher (call on the loop). From the next revision: synced at once.
        From a revision the fan-out has passed: catches up from the store first (and
        is cancelled with the compact revision if that revision is compacted). From a
        future revision: synced, given nothing below it."""
        assert not self._closed
        start = spec.start_revision
        if start <= 0:
            start = self.revision + 1
        w = Watcher(self, watch_id, spec, start, wake)
        compacted = self.source.compact_revision
        if start < compacted:
            # etcd: a watch may start AT the compact revision (its events are kept),
            # not below it.
            self._cancel_compacted(w, compacted)
        elif start > self.revision:
            self._join(w)
        else:
            self._start_catch_up(w)
        return w

    def cancel(self, w: Watcher) -> None:
        """Stop the watcher; nothing more is given to it (idempotent)."""
        w.closed = True
        self._synced.discard(w)
        task = self._catching_up.pop(w, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        """The member stops: cancel every watcher's catch-up."""
        self._closed = True
        for w in list(self._synced) + list(self._catching_up):
            self.cancel(w)

    @property
    def watchers(self) -> int:
        return len(self._synced) + len(self._catching_up)

    # --- the fan-out (an apply listener) -----------------------------------------------
    def on_applied(self, entries: Sequence[object], results: Sequence[object]) -> None:
        """node.apply_listeners: each applied batch's results, in log order, on the
        loop; ([], []) after a snapshot install. Must not block: it only appends to
        bounded buffers.

        A failure in here (a broken invariant of the hub) ends every watch, with a
        reason, and the hub starts over from the store's revision: the member's apply
        goes on, and clients resume their watches (from their last revision + 1) —
        never a silent gap, never a member down for a watch."""
        try:
            if not entries and not results:
                self._on_snapshot_installed()
                return
            for result in results:
                events: Sequence[Event] = getattr(result, "events", None) or ()
                revision = getattr(result, "revision", 0) or 0
                if revision <= self.revision:
                    # An entry that wrote no revision (kvraft's own commands, a refused
                    # write) — or one the hub has passed (created after it was applied).
                    continue
                assert all(event_revision(ev) <= revision for ev in events)
                self._fan_out(events, revision)
                self.revision = revision
        except Exception:
            log.exception("watch hub: fan-out failed; ending every watch")
            self._end_all(HUB_FAILED_REASON)
            self.revision = max(self.revision, self.source.revision)

    def _end_all(self, reason: str) -> None:
        for w in list(self._synced) + list(self._catching_up):
            self.cancel(w)
            w.cancel_reason = reason
            w._wake.set()

    def _fan_out(self, events: Sequence[Event], revision: int) -> None:
        """Give each synced watcher its share of one entry's events (all at or below
        `revision`). Watchers with the same key range, filters and prev_kv (many
        clients of one prefix) share one filtering pass per entry."""
        overflowed: list[Watcher] = []
        shares: dict[tuple[object, ...], tuple[list[Event], int]] = {}
        events_max, bytes_max = self.buffer_events_max, self.buffer_bytes_max
        for w in self._synced:
            assert w.next_revision > self.revision, \
                f"watch {w.id}: synced at {w.next_revision} behind hub {self.revision}"
            if w.next_revision > revision:
                continue                       # a watch from a future revision
            if events:
                cached = shares.get(w.share_key)
                if cached is None:
                    matching = [w._shape(ev) for ev in events if w._matches(ev)]
                    cached = shares[w.share_key] = (matching,
                                                    sum(map(event_bytes, matching)))
                share, size = cached
                if share:
                    pending = len(w._buffer)
                    if pending and (pending + len(share) > events_max
                                    or w._buffer_bytes + size > bytes_max):
                        # A slow consumer: stop feeding it; it catches up from this
                        # revision once it has taken what it holds. Apply and the
                        # other watchers never wait for it.
                        overflowed.append(w)
                        continue
                    w._append(share, size)
            w.next_revision = revision + 1
        for w in overflowed:
            self.overflows += 1
            self._synced.discard(w)
            w.synced = False
            self._start_catch_up(w)

    def _on_snapshot_installed(self) -> None:
        """The store jumped to a snapshot's state: the fan-out never saw the revisions
        in between, so every synced watcher catches up from the store."""
        self.revision = max(self.revision, self.source.revision)
        for w in list(self._synced):
            self._synced.discard(w)
            w.synced = False
            self._start_catch_up(w)

    # --- synced / unsynced -------------------------------------------------------------
    def _join(self, w: Watcher) -> None:
        assert w.next_revision > self.revision and not w.closed
        w.synced = True
        self._synced.add(w)
        w._wake.set()      # its consumer may be waiting to send a progress notification

    def _start_catch_up(self, w: Watcher) -> None:
        assert w not in self._synced and w not in self._catching_up
        w.synced = False
        self._catching_up[w] = asyncio.get_running_loop().create_task(
            self._catch_up(w), name=f"watch-catch-up-{w.id}")

    def _cancel_compacted(self, w: Watcher, compact_revision: int) -> None:
        self.cancel(w)
        w.compact_revision = compact_revision
        w._wake.set()

    def _chunk_limit(self, mean_event_bytes: float) -> int:
        """Events per catch-up read for events of about this size."""
        return max(1, min(self.chunk_events, int(self.chunk_bytes / mean_event_bytes)))

    async def _catch_up(self, w: Watcher) -> None:
        if w.given_events:
            limit = self._chunk_limit(w.given_bytes / w.given_events)
        else:
            limit = min(self.chunk_events, CATCH_UP_FIRST_CHUNK_EVENTS)
        try:
            while not w.closed:
                # Read a chunk only into an empty buffer: the consumer's pace bounds
                # the memory, not the length of the history.
                await w._drained.wait()
                passed = self.revision
                async with self._reads:
                    if w.closed:
                        return
                    self.catch_up_reads += 1
                    events = await self._read(functools.partial(
                        self.source.events, w.spec.key, w.spec.range_end, w.next_revision,
                        prev_kv=w.spec.prev_kv, limit=limit))
                if w.closed:
                    return
                if events:
                    # Aim the next chunk at chunk_bytes, from this one's event sizes.
                    limit = self._chunk_limit(sum(map(event_bytes, events)) / len(events))
                # Back on the loop: no fan-out runs until the next await.
                if events:
                    w._give(events, event_revision(events[-1]))
                else:
                    # Nothing matched from next_revision to the store's revision at
                    # the read, which was at least `passed`.
                    w._give((), passed)
                if w.next_revision > self.revision:
                    del self._catching_up[w]
                    self._join(w)
                    return
        except mvcc.CompactedError as e:
            self._catching_up.pop(w, None)
            self._cancel_compacted(w, e.compact_revision)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A read that failed for another reason (the store closing): end the watch
            # rather than leave it silently stalled; the client resumes elsewhere.
            log.exception("watch %d: catch-up read failed", w.id)
            self._catching_up.pop(w, None)
            w.closed = True
            w.cancel_reason = "kvraft: the watch's history could not be read"
            w._wake.set()

