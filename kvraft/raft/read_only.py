"""ReadIndex bookkeeping (thesis §6.4): linearizable reads without appending to the log.

The leader records its commit index when a read arrives, confirms it is still the
leader with a round of heartbeats carrying the request's context (Safe), and releases
the read once a quorum acknowledged; the application serves it once it has applied up
to that index.

Lease-based reads (thesis §6.4.1, `ReadOnlyOption.LeaseBased`)
---------------------------------------------------------------
A LeaseBased leader answers a ReadIndex at once, with no round, while its lease holds;
otherwise it runs the Safe round above. The lease holds at tick `now` of the leader's
tick clock (`Raft.tick_count`) iff all of:

1. it has committed an entry of its current term (§6.4 step 1: before that its commit
   index may lag behind the latest committed entry);
2. it has not started a leadership transfer in this term (below);
3. a quorum of voters acknowledged, at the leader's current term, heartbeats the
   leader sent at tick `s` or later (the leader counts itself), with
   `now - s < election_tick - margin` = `Config.lease_ticks()`, where the margin is
   LEASE_CLOCK_DRIFT_PERCENT of the election timeout plus LEASE_GRANULARITY_TICKS.

The evidence for (3) is the heartbeat's *send* tick, never the tick its answer arrived:
a follower restarts its election timer when it receives the heartbeat, some time after
`s`, and an answer may be delayed without bound, so only `s` bounds the follower's
promise from below. Every heartbeat of a LeaseBased leader therefore carries its send
tick and a sequence number in its context (`lease_heartbeat_ctx`), which followers
echo; `Progress.last_ack_tick` and `last_ack_seq` keep the newest acknowledged per
peer. Append responses echo nothing that dates their request, so they do not renew the
lease (a stale one could otherwise stretch it); the heartbeat every heartbeat_tick
ticks does. A read that finds no valid lease waits for the next heartbeat sent after
it arrived (its `heartbeat_seq`): once a quorum acknowledged that one or a later one,
it is released — the Safe round, counted in sequence numbers, and the same round
renews the lease. No read context ever rides on a LeaseBased heartbeat.

Why no other leader can exist while the lease holds. Let leader L of term T hold the
lease at `now` on the evidence of quorum Q's acknowledgements of heartbeats sent at
ticks >= s. Every member of Q was at term T when it answered, and terms only grow, so
no member of Q had voted in any term > T before the instant L sent at `s`; an election
of a term > T needs a vote from some member of Q (quorums intersect, joint ones
included, §4.3). After receiving L's heartbeat, a member of Q (check_quorum is
required, §6.2):
* ignores RequestVote and PreVote for a higher term while fewer than election_tick of
  its ticks have passed since it last heard from L (Raft.step's lease check), and
  cannot time out itself before that either (its randomized timeout is at least
  election_tick);
* in LeaseBased mode also ignores, for that time, every other message of a higher term
  that does not come from a leader (stale vote answers and append responses to an
  earlier leadership of its own would otherwise move it to the higher term with no
  leader, and it could then vote at once);
* after a restart — which forgets whom it heard from — ignores them for its first
  election_tick ticks (LeaseBased mode, a node whose hard state has a term).
So no member of Q votes for a term > T until election_tick of its ticks have passed
after `s`; with tick clocks within LEASE_CLOCK_DRIFT_PERCENT of each other and one tick
lost at each end, that is later than `s + lease_ticks` on L's clock. Hence no leader of
a higher term exists before then, none of term T but L (one vote each per term), and
L's commit index is the latest: answering with it is linearizable, exactly as a
quorum-acknowledged round sent after the read arrived would be.

The leadership transfer (§3.10) breaks the argument on purpose: MsgTimeoutNow makes the
target campaign with CAMPAIGN_TRANSFER, which voters grant despite their lease, so the
target may win at once. The lease therefore ends as soon as the leader starts a
transfer, and stays forfeited for the rest of the term, even if the transfer is
abandoned: a MsgTimeoutNow may still be in flight.

What remains. All of this holds on the tick clocks. The host must tick every node at
the same steady rate; a leader whose ticks stall (a process paused by SIGSTOP, a VM
freeze, a starved event loop that drops ticks) believes in a lease that has ended in
real time, and the application must catch the leader's clock up before it asks for a
read (kvraft's node does, see server/node.py). And a pause that falls between the
lease check and the reply — after the ReadState is handed out, before the application
answers from its state machine — can let a new leader commit a write that the late
reply does not show; no check inside the core can close that window, only the bound on
clock drift and pauses it relies on. The Safe round has neither hazard.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.config import ReadOnlyOption

# The context of a lease-mode heartbeat: this prefix, the tick at which the leader
# sent it and the heartbeat's sequence number in this leadership (8 bytes each, big
# endian). Followers echo a heartbeat's context in their answer.
LEASE_HEARTBEAT_CTX_PREFIX = b"\x00kvraft-lease\x00"
_PREFIX_LEN = len(LEASE_HEARTBEAT_CTX_PREFIX)
_LEASE_CTX_LEN = _PREFIX_LEN + 16


def lease_heartbeat_ctx(tick: int, seq: int) -> bytes:
    """The context of the lease-mode heartbeat number `seq`, sent at `tick`."""
    assert tick >= 0 and seq > 0, f"bad lease heartbeat stamp: tick {tick}, seq {seq}"
    return LEASE_HEARTBEAT_CTX_PREFIX + tick.to_bytes(8, "big") + seq.to_bytes(8, "big")


def parse_lease_heartbeat_ctx(ctx: bytes) -> tuple[int, int] | None:
    """(send tick, sequence number) of a lease-mode heartbeat context; None for any
    other context."""
    if len(ctx) != _LEASE_CTX_LEN or not ctx.startswith(LEASE_HEARTBEAT_CTX_PREFIX):
        return None
    tick = int.from_bytes(ctx[_PREFIX_LEN:_PREFIX_LEN + 8], "big")
    seq = int.from_bytes(ctx[_PREFIX_LEN + 8:], "big")
    return tick, seq


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
    voters acknowledged the heartbeat round that carries its context (Safe). In
    LeaseBased mode `heartbeat_seq` is instead the first lease heartbeat sent after
    the read arrived: a quorum acknowledging it (or a later one) releases the read."""

    req: eraftpb.Message
    index: int
    acks: set[int] = field(default_factory=set)
    heartbeat_seq: int = 0


class ReadOnly:
    """The leader's pending ReadIndex requests, in arrival order."""

    __slots__ = ("option", "pending_read_index", "read_index_queue")

    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        self.pending_read_index: dict[bytes, ReadIndexStatus] = {}
        self.read_index_queue: deque[bytes] = deque()

    def is_full(self) -> bool:
        return len(self.read_index_queue) >= PENDING_READS_MAX

    def add_request(self, index: int, req: eraftpb.Message, self_id: int,
                    heartbeat_seq: int = 0) -> None:
        """Record a read at commit index `index`; the leader acknowledges itself.
        LeaseBased: `heartbeat_seq` is the next lease heartbeat's sequence number."""
        ctx = req.entries[0].data
        if ctx in self.pending_read_index:
            return
        self.pending_read_index[ctx] = ReadIndexStatus(req, index, {self_id}, heartbeat_seq)
        self.read_index_queue.append(ctx)

    def recv_ack(self, peer_id: int, ctx: bytes) -> set[int] | None:
        """A heartbeat response carrying `ctx` came from `peer_id`; the acks so far."""
        status = self.pending_read_index.get(ctx)
        if status is None:
            return None
        status.acks.add(peer_id)
        return status.acks

    def advance_to_seq(self, quorum_seq: int) -> list[ReadIndexStatus]:
        """LeaseBased: a quorum acknowledged lease heartbeats up to `quorum_seq`; the
        reads waiting for one of them are released, in arrival order (their
        `heartbeat_seq` never decreases along the queue)."""
        released: list[ReadIndexStatus] = []
        queue = self.read_index_queue
        pending = self.pending_read_index
        while queue and pending[queue[0]].heartbeat_seq <= quorum_seq:
            released.append(pending.pop(queue.popleft()))
        return released

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
