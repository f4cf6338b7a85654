"""ReadIndex bookkeeping (thesis §6.4): linearizable reads without appending to the log.

The leader records its commit index when a read arrives, confirms it is still the
leader with a round of heartbeats carrying the request's context (Safe), and releases
the read once a quorum acknowledged; the application serves it once it has applied up
to that index.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.config import ReadOnlyOption

# A bound on the reads waiting for their heartbeat quorum: past it, new reads are
# refused (the caller retries), so a leader cut off from its quorum cannot grow memory.
PENDING_READS_MAX = 65536


@dataclass
class ReadState:
    """A read the application may serve once it has applied up to `index`."""

    index: int
    request_ctx: bytes


@dataclass
class ReadIndexStatus:
    """One pending read: the request, the commit index it must wait for, and which
    voters acknowledged the heartbeat round that carries its context."""

    req: eraftpb.Message
    index: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """The leader's pending ReadIndex requests, in arrival order."""

    __slots__ = ("option", "pending_read_index", "read_index_queue")

    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        self.pending_read_index: dict[bytes, ReadIndexStatus] = {}
        self.read_index_queue: deque[bytes] = deque()

    def is_full(self) -> bool:
        return len(self.read_index_queue) >= PENDING_READS_MAX

    def add_request(self, index: int, req: eraftpb.Message, self_id: int) -> None:
        """Record a read at commit index `index`; the leader acknowledges itself."""
        ctx = req.entries[0].data
        if ctx in self.pending_read_index:
            return
        self.pending_read_index[ctx] = ReadIndexStatus(req, index, {self_id})
        self.read_index_queue.append(ctx)

    def recv_ack(self, peer_id: int, ctx: bytes) -> set[int] | None:
        """A heartbeat response carrying `ctx` came from `peer_id`; the acks so far."""
        status = self.pending_read_index.get(ctx)
        if status is None:
            return None
        status.acks.add(peer_id)
        return status.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """The read with `ctx` is confirmed: it and every read queued before it (their
        heartbeat round was overtaken by a later, confirmed one) are released."""
        if ctx not in self.pending_read_index:
            return []
        released: list[ReadIndexStatus] = []
        queue = self.read_index_queue
        while queue:
            head = queue.popleft()
            released.append(self.pending_read_index.pop(head))
            if head == ctx:
                break
        return released

    def last_pending_request_ctx(self) -> bytes | None:
        """Context of the newest pending read: a heartbeat carrying it confirms them all."""
        return self.read_index_queue[-1] if self.read_index_queue else None

    def pending_read_count(self) -> int:
        return len(self.read_index_queue)
