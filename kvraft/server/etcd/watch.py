"""etcd's `Watch` service: the bidirectional stream Watch(stream WatchRequest) ->
stream WatchResponse (SPEC §6), served from the member's WatchHub (watch_hub.py).

One stream carries many watches. Per stream:
* create: answered `created=true` with the watch's id — the client's, if it chose one
  (etcd 3.4+: `watch_id` != 0; refused when the stream already has it), else the
  lowest id from a counter that skips the ones in use (etcd's). A refused create is
  answered created=true, canceled=true, watch_id -1 and etcd's reason, as etcd does.
* cancel: answered `canceled=true`; an unknown id gets no answer (etcd's).
* progress_request: one response with watch_id -1 (etcd's InvalidWatchID: clients hand
  it to every watch on the stream) and only a header, whose revision is one every
  watch on the stream has delivered everything up to — so it waits until every watch
  is synced and has sent what it holds (etcd 3.4 answered at once, even with watches
  behind it: etcd #15220).
* progress_notify: every PROGRESS_INTERVAL_S a watch that sent no event in the
  interval and is synced gets an event-less response with its id (etcd's rule).
* fragment is ignored: a revision's events always come in one response.

Each response's header revision is that of its last event, or the hub's revision (every
event up to it has been fanned out) for a response without events.

`hasleader` (etcd's clientv3.WithRequireLeader): when the client sets that gRPC metadata
to "true", the stream fails with UNAVAILABLE "etcdserver: no leader" once this member
has had no leader for NO_LEADER_ELECTIONS_MAX election timeouts (etcd's
monitorLeader; after its start, for that plus the leader's reconnect backoff) — at once
when it opens on a member leaderless for longer, after the rest of that time on one
that lost its leader (or started) more recently — so the client moves to another
member. (etcd refuses at once, but an etcd member serves no
client before it has a leader; a kvraft member serves from its start, and clientv3
gives up a watch refused with "no leader" rather than retry it.)
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.proto import mvccpb_pb2 as mvccpb
from kvraft.raft import StateRole
from kvraft.storage.mvcc import Event
from kvraft.storage.mvcc.convert import event_pb

from ..config import NodeConfig
from ..node import Node
from ..transport import BACKOFF_MAX_S
from .header import etcd_header
from .watch_hub import Watcher, WatchHub, WatchSpec, event_revision

log = logging.getLogger(__name__)

# etcd sends progress notifications every 10 minutes; kvraft every 10 s by default, so
# that a client resuming after a member failure knows a recent revision even on a key
# that rarely changes. (Tests pass a shorter interval to WatchService.)
PROGRESS_INTERVAL_S = 10.0
# etcd's maxNoLeaderCnt: election timeouts without a leader before streams that asked
# for one are failed.
NO_LEADER_ELECTIONS_MAX = 3
# One response carries at most about this many events or bytes (whole revisions).
RESPONSE_EVENTS_MAX = 1000
RESPONSE_BYTES_MAX = 1 << 20
# Converted events kept for the other watchers given the same event (EventPbCache).
EVENT_PBS_MAX = 4096
# etcd's clientv3.InvalidWatchID: a response to no single watch (a progress request's)
# or to a refused create.
INVALID_WATCH_ID = -1

ERR_NO_LEADER = "etcdserver: no leader"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"

NOPUT = etcdpb.WatchCreateRequest.FilterType.Value("NOPUT")
NODELETE = etcdpb.WatchCreateRequest.FilterType.Value("NODELETE")


def spec_of(creq: etcdpb.WatchCreateRequest) -> WatchSpec:
    """etcd's reading of a create request: an empty key means b"\\0" (the smallest
    key); range_end b"\\0" means every key >= key."""
    filters = set(creq.filters)
    return WatchSpec(key=creq.key or b"\x00", range_end=creq.range_end,
                     start_revision=creq.start_revision, prev_kv=creq.prev_kv,
                     filter_put=NOPUT in filters, filter_delete=NODELETE in filters,
                     progress_notify=creq.progress_notify)


def _take_response_events(w: Watcher) -> list[Event]:
    """The next response's events: at most about RESPONSE_EVENTS_MAX events and
    RESPONSE_BYTES_MAX bytes, whole revisions."""
    out: list[Event] = []
    size = 0
    while w.pending and len(out) < RESPONSE_EVENTS_MAX and size < RESPONSE_BYTES_MAX:
        batch = w.take(1)      # one revision, whole
        out.extend(batch)
        size += sum(len(e.kv.key) + len(e.kv.value)
                    + (len(e.prev_kv.value) if e.prev_kv is not None else 0) for e in batch)
    return out


class WatchStream:
    """The watches of one gRPC stream and what it has to send.

    * `watchers`: watch id -> Watcher, the stream's live watches (a cancelled one leaves
      at once; one the server ended leaves once its last events and its cancellation
      are sent).
    * `control`: created / canceled responses not yet sent, in the order their requests
      came — each watch's `created` goes out before any of its events (the sender sends
      control first, and a watch's events come only after an await).
    * `wake`: set when control, a watcher's buffer, a progress request or tick has
      something to send; the sender is the only writer to the gRPC stream.
    """

    def __init__(self, service: WatchService) -> None:
        self.hub = service.hub
        self.to_pb = service.event_pbs.get
        self.node = service.node
        self.wake = asyncio.Event()
        self.watchers: dict[int, Watcher] = {}
        self.control: deque[etcdpb.WatchResponse] = deque()
        self._next_id = 0
        self.progress_requested = False
        self.progress_tick = False

    def header(self, revision: int | None = None) -> etcdpb.ResponseHeader:
        return etcd_header(self.node, self.hub.revision if revision is None else revision)

    # --- requests ----------------------------------------------------------------------
    def on_request(self, req: etcdpb.WatchRequest) -> None:
        kind = req.WhichOneof("request_union")
        if kind == "create_request":
            self.create(req.create_request)
        elif kind == "cancel_request":
            self.cancel(req.cancel_request.watch_id)
        elif kind == "progress_request":
            self.progress_requested = True
        self.wake.set()

    def _refuse(self, reason: str) -> None:
        self.control.append(etcdpb.WatchResponse(
            header=self.header(), watch_id=INVALID_WATCH_ID, created=True, canceled=True,
            cancel_reason=reason))

    def create(self, creq: etcdpb.WatchCreateRequest) -> None:
        spec = spec_of(creq)
        if spec.range_end not in (b"", b"\x00") and spec.key >= spec.range_end:
            self._refuse(ERR_EMPTY_RANGE)
            return
        if creq.watch_id != 0:
            if creq.watch_id in self.watchers:
                self._refuse(ERR_DUPLICATE_ID)
                return
            watch_id = creq.watch_id
        else:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        # The created response first, then the watcher: its header revision is the one
        # a watch from "now" starts after (next_revision - 1).
        self.control.append(etcdpb.WatchResponse(header=self.header(), watch_id=watch_id,
                                                 created=True))
        self.watchers[watch_id] = self.hub.watch(watch_id, spec, self.wake)

    def cancel(self, watch_id: int) -> None:
        w = self.watchers.pop(watch_id, None)
        if w is None:
            return
        self.hub.cancel(w)
        self.control.append(etcdpb.WatchResponse(header=self.header(), watch_id=watch_id,
                                                 canceled=True))

    def close(self) -> None:
        for w in self.watchers.values():
            self.hub.cancel(w)
        self.watchers.clear()

    # --- responses ---------------------------------------------------------------------
    async def responses(self) -> AsyncIterator[etcdpb.WatchResponse]:
        """What to send, as it becomes ready (never ends by itself)."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.control:
                yield self.control.popleft()
            for watch_id, w in list(self.watchers.items()):
                if self.watchers.get(watch_id) is not w:
                    continue                       # cancelled while we were sending
                events = _take_response_events(w)
                if events:
                    yield etcdpb.WatchResponse(
                        header=self.header(event_revision(events[-1])), watch_id=watch_id,
                        events=[self.to_pb(e) for e in events])
                    if w.pending:
                        self.wake.set()            # more: after the other watches' turn
                if w.closed and not w.pending and self.watchers.get(watch_id) is w:
                    del self.watchers[watch_id]
                    yield etcdpb.WatchResponse(
                        header=self.header(), watch_id=watch_id, canceled=True,
                        compact_revision=w.compact_revision,
                        cancel_reason=w.cancel_reason)
            while self.control:
                yield self.control.popleft()
            if self.progress_tick:
                self.progress_tick = False
                for watch_id, w in list(self.watchers.items()):
                    if w.spec.progress_notify and not w.sent_since_tick and w.progress_ready():
                        yield etcdpb.WatchResponse(header=self.header(), watch_id=watch_id)
                    w.sent_since_tick = False
            if self.progress_requested and all(w.progress_ready()
                                               for w in self.watchers.values()):
                self.progress_requested = False
                yield etcdpb.WatchResponse(header=self.header(), watch_id=INVALID_WATCH_ID)


class NoLeader(Exception):
    pass


class EventPbCache:
    """mvccpb.Event of the hub's events, converted once for every watcher that is
    given the same event object (the hub shares one filtered list among the watchers
    of one key range): 100 clients of a prefix cost one conversion per event, not 100.
    Holds the last EVENT_PBS_MAX conversions (and their events, so an id is not reused
    while its entry lives)."""

    def __init__(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self._entries: OrderedDict[int, tuple[Event, mvccpb.Event]] = OrderedDict()

    def get(self, event: Event) -> mvccpb.Event:
        hit = self._entries.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        pb = event_pb(event)
        self._entries[id(event)] = (event, pb)
        if len(self._entries) > self.entries_max:
            self._entries.popitem(last=False)
        return pb


class WatchService(etcdpb_grpc.WatchServicer):
    def __init__(self, node: Node, hub: WatchHub, *,
                 progress_interval_s: float = PROGRESS_INTERVAL_S) -> None:
        assert progress_interval_s > 0
        self.node = node
        self.hub = hub
        self.progress_interval_s = progress_interval_s
        self.event_pbs = EventPbCache(EVENT_PBS_MAX)
        # Exactly one of the two is set: whether this member knows a leader. While it
        # knows none, `_leaderless_deadline` (monotonic seconds) is when the streams
        # that asked for one fail; None while it knows one.
        self._has_leader = asyncio.Event()
        self._no_leader = asyncio.Event()
        self._leaderless_deadline: float | None = None
        if node.raw.raft.leader_id == 0:
            # A member that has just started hears from its leader only once the
            # leader's transport reconnects to it, after up to BACKOFF_MAX_S.
            self._leaderless_deadline = (time.monotonic() + self.leaderless_bound_s()
                                         + BACKOFF_MAX_S)
        self._on_role(node.raw.raft.leader_id, node.raw.raft.state)
        node.role_listeners.append(self._on_role)

    def _on_role(self, leader_id: int, role: StateRole) -> None:
        if leader_id != 0:
            self._leaderless_deadline = None
            self._no_leader.clear()
            self._has_leader.set()
        else:
            if self._leaderless_deadline is None:
                self._leaderless_deadline = time.monotonic() + self.leaderless_bound_s()
            self._has_leader.clear()
            self._no_leader.set()

    def leaderless_bound_s(self) -> float:
        """How long a member may be without a leader before the streams that asked for
        one fail: NO_LEADER_ELECTIONS_MAX election timeouts."""
        config = self.node.config
        return NO_LEADER_ELECTIONS_MAX * config.election_tick * config.tick_interval_s

    async def _leader_known(self) -> bool:
        """Whether the member knows a leader, waiting (bounded) until its leaderless
        deadline — a member that has just started or lost its leader a moment ago may
        know one soon. (etcd serves no client before it has a leader: it waits for its
        own publication through Raft.)"""
        deadline = self._leaderless_deadline
        if deadline is not None:
            left_s = deadline - time.monotonic()
            if left_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._has_leader.wait(), left_s)
        return self._has_leader.is_set()

    async def _monitor_leader(self) -> None:
        """Returns when this member has had no leader for leaderless_bound_s in a row
        (etcd's monitorLeader)."""
        while True:
            await self._no_leader.wait()
            if not await self._leader_known():
                return

    async def _ticker(self, stream: WatchStream) -> None:
        while True:
            await asyncio.sleep(self.progress_interval_s)
            stream.progress_tick = True
            stream.wake.set()

    async def _read(self, requests: AsyncIterator[etcdpb.WatchRequest],
                    stream: WatchStream) -> None:
        async for req in requests:
            stream.on_request(req)
        # The client closed its side: etcd keeps sending until the stream ends.
        await asyncio.Event().wait()

    async def Watch(self, request_iterator: AsyncIterator[etcdpb.WatchRequest],
                    context: grpc.aio.ServicerContext[Any, Any]) -> None:
        metadata = {k: v for k, v in (context.invocation_metadata() or ())}
        require_leader = metadata.get("hasleader") == "true"
        if require_leader and not await self._leader_known():
            await context.abort(grpc.StatusCode.UNAVAILABLE, ERR_NO_LEADER)
        stream = WatchStream(self)
        tasks = [asyncio.create_task(self._read(request_iterator, stream), name="watch-read"),
                 asyncio.create_task(self._ticker(stream), name="watch-progress")]
        monitor = None
        if require_leader:
            monitor = asyncio.create_task(self._monitor_leader(), name="watch-leader")
            tasks.append(monitor)
        sender = asyncio.create_task(self._send(stream, context), name="watch-send")
        tasks.append(sender)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if monitor is not None and monitor in done:
                log.info("watch stream: no leader for %d election timeouts, ending it",
                         NO_LEADER_ELECTIONS_MAX)
                await context.abort(grpc.StatusCode.UNAVAILABLE, ERR_NO_LEADER)
            for t in done:
                t.result()       # a failed read or write ends the stream with its error
        finally:
            stream.close()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t

    async def _send(self, stream: WatchStream,
                    context: grpc.aio.ServicerContext[Any, Any]) -> None:
        async for resp in stream.responses():
            await context.write(resp)


def add_watch_service(server: grpc.aio.Server, node: Node, config: NodeConfig,
                      on_close: list[Callable[[], Awaitable[None]]] | None = None, *,
                      progress_interval_s: float = PROGRESS_INTERVAL_S) -> str:
    """The member's watch hub, fed by apply, and etcd's Watch service over it. At
    shutdown (`on_close`) the hub cancels its watchers' catch-up reads."""
    hub = WatchHub(node.store.sm)
    node.apply_listeners.append(hub.on_applied)
    etcdpb_grpc.add_WatchServicer_to_server(
        WatchService(node, hub, progress_interval_s=progress_interval_s), server)
    if on_close is not None:
        async def close() -> None:
            hub.close()
        on_close.append(close)
    return str(etcdpb.DESCRIPTOR.services_by_name["Watch"].full_name)
