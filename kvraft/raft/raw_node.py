"""`RawNode`: the application's handle on a Raft peer, and the `Ready` batches it hands out.

The application loop (SPEC §1, the raft-rs design):

    if node.has_ready():
        rd = node.ready()
        send(rd.take_messages())                 # a leader's appends: send right away
        apply snapshot, append rd.entries(), persist rd.hs()   (fsync if rd.must_sync())
        send(rd.take_persisted_messages())       # votes, responses: only once durable
        apply(rd.take_committed_entries())
        light = node.advance(rd)                 # or advance_append_async + on_persist_ready
        send(light.take_messages()); apply(light.take_committed_entries())
        node.advance_apply()

Thesis §10.2.1: the leader may send its entries to followers in parallel with writing
them to its own disk, because it counts itself towards commit only once they are
durable. Everything a node says that depends on its own durable state (a vote, an
append acknowledgement) waits in `persisted_messages` until that state is written.

The routing rule: no message carries a term (or a vote) that is not yet durable on its
sender (thesis §3.8: currentTerm and votedFor are on stable storage before the node
speaks). RawNode tracks the highest durable term and vote: those of the newest HardState
in a Ready reported persisted (`advance`, `advance_append`, `on_persist_ready`). Only a
leader's messages may go in `messages()`, and only those the durable state covers; the
others go in `persisted_messages()` of whichever Ready carries them (with
`advance_append_async` the Ready after the one that raised the term has no HardState
but may already hold appends and heartbeats of the new term), and a LightReady leaves
them queued for the next Ready. The case this matters for is a single voter: it wins
at once, so the Ready that raises its term already holds appends to its learners; sent
before the term is durable, a crash before the fsync lets it win the same term again
and write another entry at the same (index, term), which a learner would keep.
Persisted messages wait only for their own Ready's write, never for the durable term to
reach their term, so nothing is held for good. Pre-vote (§9.6) is reasoned about
explicitly: a MsgRequestPreVote carries term + 1 but asserts only the sender's current
term, and a granted pre-vote answer carries the requester's term and depends on no
durable state, so neither is held for its term.
"""
from __future__ import annotations

import enum
import random
from collections import deque

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.config import Config
from kvraft.raft.errors import StepLocalMsg, StepPeerNotFound
from kvraft.raft.raft import (
    MSG_PROPOSE,
    MSG_READ_INDEX,
    MSG_REQUEST_PRE_VOTE,
    MSG_REQUEST_PRE_VOTE_RESPONSE,
    MSG_REQUEST_VOTE,
    MSG_REQUEST_VOTE_RESPONSE,
    MSG_SNAP_STATUS,
    MSG_TRANSFER_LEADER,
    MSG_UNREACHABLE,
    Raft,
    StateRole,
    is_local_msg,
    is_response_msg,
)
from kvraft.raft.read_only import ReadState
from kvraft.raft.status import SoftState, Status
from kvraft.raft.storage import Storage


class SnapshotStatus(enum.Enum):
    """Outcome of sending a snapshot, reported with `RawNode.report_snapshot`."""

    Finish = 0
    Failure = 1


class _ReadyRecord:
    """What one Ready asked the application to persist: its entries, snapshot and the
    term and vote of its hard state."""

    __slots__ = ("first_index", "last_entry", "number", "snapshot", "term_vote")

    def __init__(self, number: int) -> None:
        self.number = number
        self.first_index = 0                                 # of its entries, 0 when none
        self.last_entry: tuple[int, int] | None = None       # (index, term)
        self.snapshot: tuple[int, int] | None = None         # (index, term)
        self.term_vote: tuple[int, int] | None = None        # of its HardState, if any


_EMPTY_SNAPSHOT = eraftpb.Snapshot()


class Ready:
    """One batch of work for the application: state to persist, messages to send,
    entries to apply. Obtain with `RawNode.ready()`, hand back with `advance*`."""

    __slots__ = ("_committed_entries", "_entries", "_hs", "_messages", "_must_sync",
                 "_number", "_persisted_messages", "_read_states", "_snapshot", "_ss")

    def __init__(self, number: int) -> None:
        self._number = number
        self._ss: SoftState | None = None
        self._hs: eraftpb.HardState | None = None
        self._read_states: list[ReadState] = []
        self._entries: list[eraftpb.Entry] = []
        self._snapshot: eraftpb.Snapshot = _EMPTY_SNAPSHOT
        self._committed_entries: list[eraftpb.Entry] = []
        self._messages: list[eraftpb.Message] = []
        self._persisted_messages: list[eraftpb.Message] = []
        self._must_sync = False

    def __repr__(self) -> str:
        return (f"Ready(number={self._number}, ss={self._ss}, hs={self._hs!r}, "
                f"entries={len(self._entries)}, committed={len(self._committed_entries)}, "
                f"messages={len(self._messages)}, "
                f"persisted_messages={len(self._persisted_messages)}, "
                f"snapshot={self._snapshot.metadata.index}, must_sync={self._must_sync})")

    def number(self) -> int:
        """The sequence number of this Ready, for `on_persist_ready`."""
        return self._number

    def ss(self) -> SoftState | None:
        """The new soft state, if the leader or our role changed."""
        return self._ss

    def hs(self) -> eraftpb.HardState | None:
        """The hard state to persist, if it changed."""
        return self._hs

    def read_states(self) -> list[ReadState]:
        return self._read_states

    def take_read_states(self) -> list[ReadState]:
        rs, self._read_states = self._read_states, []
        return rs

    def entries(self) -> list[eraftpb.Entry]:
        """Entries to append to stable storage (before sending persisted_messages)."""
        return self._entries

    def take_entries(self) -> list[eraftpb.Entry]:
        ents, self._entries = self._entries, []
        return ents

    def snapshot(self) -> eraftpb.Snapshot:
        """A snapshot to install; an empty Snapshot (metadata.index 0) when none."""
        return self._snapshot

    def committed_entries(self) -> list[eraftpb.Entry]:
        """Committed entries to apply to the state machine, in order."""
        return self._committed_entries

    def take_committed_entries(self) -> list[eraftpb.Entry]:
        ents, self._committed_entries = self._committed_entries, []
        return ents

    def messages(self) -> list[eraftpb.Message]:
        """Messages that may be sent immediately (a leader's)."""
        return self._messages

    def take_messages(self) -> list[eraftpb.Message]:
        msgs, self._messages = self._messages, []
        return msgs

    def persisted_messages(self) -> list[eraftpb.Message]:
        """Messages to send only after entries, snapshot and hard state are durable."""
        return self._persisted_messages

    def take_persisted_messages(self) -> list[eraftpb.Message]:
        msgs, self._persisted_messages = self._persisted_messages, []
        return msgs

    def must_sync(self) -> bool:
        """Whether the write must be fsync'd (new entries, snapshot, term or vote)."""
        return self._must_sync


class LightReady:
    """What `advance_append` produces: the new commit index, entries now committed and
    durable, and messages (a leader's) that followed from persisting."""

    __slots__ = ("_commit_index", "_committed_entries", "_messages")

    def __init__(self) -> None:
        self._commit_index: int | None = None
        self._committed_entries: list[eraftpb.Entry] = []
        self._messages: list[eraftpb.Message] = []

    def __repr__(self) -> str:
        return (f"LightReady(commit_index={self._commit_index}, "
                f"committed={len(self._committed_entries)}, messages={len(self._messages)})")

    def commit_index(self) -> int | None:
        """The new commit index to persist in the hard state, if it advanced."""
        return self._commit_index

    def committed_entries(self) -> list[eraftpb.Entry]:
        return self._committed_entries

    def take_committed_entries(self) -> list[eraftpb.Entry]:
        ents, self._committed_entries = self._committed_entries, []
        return ents

    def messages(self) -> list[eraftpb.Message]:
        return self._messages

    def take_messages(self) -> list[eraftpb.Message]:
        msgs, self._messages = self._messages, []
        return msgs


class RawNode:
    """A Raft peer driven by the application (SPEC §1)."""

    def __init__(self, config: Config, store: Storage,
                 rng: random.Random | None = None) -> None:
        self.raft = Raft(config, store, rng)
        raft = self.raft
        self._prev_ss = SoftState(raft.leader_id, raft.state)
        self._prev_hs = (raft.term, raft.vote, raft.raft_log.committed)
        # The term and vote known to be on stable storage: the storage's own at start,
        # then those of the newest HardState in a Ready reported persisted. Invariant:
        # _durable_term <= _prev_hs[0] <= raft.term; no message above it is handed out
        # to be sent before the write (see the module docstring).
        self._durable_term: int = raft.term
        self._durable_vote: int = raft.vote
        self._max_number = 0
        self._records: deque[_ReadyRecord] = deque()
        # Committed entries up to here were handed to the application already.
        self._commit_since_index = raft.raft_log.applied

    # --- input ------------------------------------------------------------------------
    def tick(self) -> bool:
        """Advance the logical clock; True if the tick produced work (an election, a
        heartbeat)."""
        return self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when configured)."""
        self.raft.step(eraftpb.Message(msg_type=eraftpb.MsgHup, from_=self.raft.id))

    def propose(self, context: bytes, data: bytes) -> None:
        """Propose an entry; ProposalDropped if no leader is known (or it refuses)."""
        raft = self.raft
        if raft.state is StateRole.Leader:
            raft.append_proposal([eraftpb.Entry(data=data, context=context)])
            return
        m = eraftpb.Message(msg_type=MSG_PROPOSE, from_=raft.id)
        m.entries.add(data=data, context=context)
        raft.step(m)

    def propose_conf_change(self, context: bytes,
                            cc: eraftpb.ConfChange | eraftpb.ConfChangeV2) -> None:
        """Propose a membership change (thesis chapter 4)."""
        if isinstance(cc, eraftpb.ConfChangeV2):
            entry_type = eraftpb.EntryConfChangeV2
        else:
            entry_type = eraftpb.EntryConfChange
        m = eraftpb.Message(msg_type=MSG_PROPOSE, from_=self.raft.id)
        m.entries.add(entry_type=entry_type, data=cc.SerializeToString(), context=context)
        self.raft.step(m)

    def apply_conf_change(self, cc: eraftpb.ConfChange | eraftpb.ConfChangeV2
                          ) -> eraftpb.ConfState:
        """Apply a committed conf change entry; ConfChangeError if it is invalid."""
        from kvraft.raft.confchange import to_conf_change_v2

        return self.raft.apply_conf_change(to_conf_change_v2(cc))

    def step(self, m: eraftpb.Message) -> None:
        """Deliver a message received from a peer."""
        msg_type = m.msg_type
        if is_local_msg(msg_type):
            raise StepLocalMsg(eraftpb.MessageType.Name(msg_type))
        if is_response_msg(msg_type) and m.from_ not in self.raft.prs.progress:
            raise StepPeerNotFound(m.from_)
        self.raft.step(m)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read (thesis §6.4); the answer arrives as a ReadState
        carrying `ctx` in a later Ready."""
        m = eraftpb.Message(msg_type=MSG_READ_INDEX)
        m.entries.add(data=ctx)
        self.raft.step(m)

    def transfer_leader(self, transferee: int) -> None:
        """Ask the leader to hand leadership to `transferee` (thesis §3.10)."""
        self.raft.step(eraftpb.Message(msg_type=MSG_TRANSFER_LEADER, from_=transferee))

    def report_unreachable(self, peer_id: int) -> None:
        """The transport failed to reach `peer_id`."""
        self.raft.step(eraftpb.Message(msg_type=MSG_UNREACHABLE, from_=peer_id))

    def report_snapshot(self, peer_id: int, status: SnapshotStatus) -> None:
        """The snapshot sent to `peer_id` was delivered (Finish) or not (Failure)."""
        self.raft.step(eraftpb.Message(msg_type=MSG_SNAP_STATUS, from_=peer_id,
                                       reject=status is SnapshotStatus.Failure))

    def request_snapshot(self) -> None:
        """Ask the leader for a snapshot; ProposalDropped if it cannot be asked now."""
        self.raft.request_snapshot()

    # --- output -----------------------------------------------------------------------
    def has_ready(self) -> bool:
        """Whether `ready()` has work. No side effects: a deferred broadcast (coalesced
        appends, a Safe ReadIndex heartbeat round) counts as ready but is sent only
        by `ready()`, so what arrives until then still joins it."""
        raft = self.raft
        if raft.msgs or raft.read_states or raft.msgs_before_leadership:
            return True
        if raft.has_pending_broadcast():
            return True
        log = raft.raft_log
        if log.unstable.has_next_entries() or log.unstable.next_snapshot() is not None:
            return True
        prev_ss = self._prev_ss
        if raft.state is not prev_ss.raft_state or raft.leader_id != prev_ss.leader_id:
            return True
        if (raft.term, raft.vote, log.committed) != self._prev_hs:
            return True
        return log.has_next_entries_since(self._commit_since_index)

    def ready(self) -> Ready:
        """The next batch of work. Call `advance*` with it before the next `ready()`."""
        raft = self.raft
        raft.flush_pending_broadcasts()
        log = raft.raft_log
        self._max_number += 1
        rd = Ready(self._max_number)
        record = _ReadyRecord(self._max_number)

        prev_ss = self._prev_ss
        if raft.state is not prev_ss.raft_state or raft.leader_id != prev_ss.leader_id:
            rd._ss = SoftState(raft.leader_id, raft.state)
        hs = (raft.term, raft.vote, log.committed)
        prev_hs = self._prev_hs
        if hs != prev_hs:
            # A new term or vote must be durable before anyone hears of it (§3.8).
            if hs[0] != prev_hs[0] or hs[1] != prev_hs[1]:
                rd._must_sync = True
            rd._hs = eraftpb.HardState(term=hs[0], vote=hs[1], commit=hs[2])
            record.term_vote = (hs[0], hs[1])

        if raft.read_states:
            rd._read_states, raft.read_states = raft.read_states, []

        snap = log.unstable.next_snapshot()
        if snap is not None:
            meta = snap.metadata
            rd._snapshot = snap
            assert self._commit_since_index <= meta.index, (
                f"snapshot {meta.index} is behind applied entries {self._commit_since_index}"
            )
            self._commit_since_index = meta.index
            # Nothing after the snapshot can be durable yet, so nothing to apply.
            assert not log.has_next_entries_since(self._commit_since_index), (
                "has snapshot but also committed entries since the snapshot")
            record.snapshot = (meta.index, meta.term)
            rd._must_sync = True

        entries = log.unstable.next_entries()
        if entries:
            rd._entries = entries
            last = entries[-1]
            record.first_index = entries[0].index
            record.last_entry = (last.index, last.term)
            rd._must_sync = True

        if raft.msgs_before_leadership:
            rd._persisted_messages = raft.msgs_before_leadership
            raft.msgs_before_leadership = []
        if raft.msgs:
            if raft.state is StateRole.Leader:
                # §10.2.1: the leader's appends may go out before its own disk write,
                # but not before the term (and vote) they carry is durable (§3.8). Held
                # messages are at most at raft.term, whose HardState is in this Ready or
                # an earlier one, so this Ready's write makes their term durable.
                send_now, held = self._split_by_durable_state(raft.msgs)
                rd._messages = send_now
                rd._persisted_messages.extend(held)
            else:
                rd._persisted_messages.extend(raft.msgs)
            raft.msgs = []

        committed = log.next_entries_since(self._commit_since_index,
                                           raft.max_committed_size_per_ready)
        if committed:
            raft.reduce_uncommitted_size(committed)
            assert self._commit_since_index < committed[-1].index
            self._commit_since_index = committed[-1].index
            rd._committed_entries = committed

        self._records.append(record)
        return rd

    def _commit_ready(self, rd: Ready) -> None:
        if rd._ss is not None:
            self._prev_ss = rd._ss
        if rd._hs is not None:
            hs = rd._hs
            self._prev_hs = (hs.term, hs.vote, hs.commit)
        assert self._records and self._records[-1].number == rd._number, (
            f"advance with Ready {rd._number}, but the last Ready is "
            f"{self._records[-1].number if self._records else None}"
        )
        # Its entries and snapshot are being written now; they stay in memory (and
        # readable) until on_persist_ready says they are durable.
        self.raft.raft_log.unstable.accept_in_progress()

    def _gen_light_ready(self) -> LightReady:
        raft = self.raft
        raft.flush_pending_broadcasts()
        light = LightReady()
        committed = raft.raft_log.next_entries_since(self._commit_since_index,
                                                     raft.max_committed_size_per_ready)
        if committed:
            raft.reduce_uncommitted_size(committed)
            self._commit_since_index = committed[-1].index
            light._committed_entries = committed
        # Only a leader may send right away, and only what the durable term and vote
        # cover (a term raised since the last Ready is not on disk yet); anything else
        # stays queued for the next Ready, which routes it to persisted_messages.
        if raft.msgs and raft.state is StateRole.Leader:
            light._messages, raft.msgs = self._split_by_durable_state(raft.msgs)
        return light

    def _split_by_durable_state(self, msgs: list[eraftpb.Message]
                                ) -> tuple[list[eraftpb.Message], list[eraftpb.Message]]:
        """(messages the durable term and vote cover, messages that must wait)."""
        durable_term = self._durable_term
        send_now: list[eraftpb.Message] = []
        held: list[eraftpb.Message] = []
        for m in msgs:
            (send_now if self._covered_by_durable_state(m, durable_term) else held).append(m)
        return send_now, held

    def _covered_by_durable_state(self, m: eraftpb.Message, durable_term: int) -> bool:
        """Whether every term and vote of ours that `m` carries is durable."""
        msg_type = m.msg_type
        if msg_type == MSG_REQUEST_PRE_VOTE_RESPONSE and not m.reject:
            # §9.6: a granted pre-vote answers with the requester's term and records
            # nothing here; it asserts no state of ours.
            return True
        # A pre-vote request asks about term + 1 from our current term.
        own_term = m.term - 1 if msg_type == MSG_REQUEST_PRE_VOTE else m.term
        if own_term > durable_term:
            return False
        # A vote in term t is settled once it is durable, or once a later term is (we
        # can then never vote in t again). A candidate's request implies its own vote.
        if msg_type == MSG_REQUEST_VOTE and own_term == durable_term:
            return self._durable_vote == self.raft.id
        if msg_type == MSG_REQUEST_VOTE_RESPONSE and not m.reject and own_term == durable_term:
            return self._durable_vote == m.to
        return True

    def advance(self, rd: Ready) -> LightReady:
        """The Ready was fully handled (persisted, sent, applied)."""
        applied = self._commit_since_index
        light = self.advance_append(rd)
        self.advance_apply_to(applied)
        return light

    def advance_append(self, rd: Ready) -> LightReady:
        """The Ready's entries, snapshot and hard state are durable (synchronously);
        its committed entries are not necessarily applied yet."""
        self._commit_ready(rd)
        self.on_persist_ready(self._max_number)
        light = self._gen_light_ready()
        committed = self.raft.raft_log.committed
        if committed > self._prev_hs[2]:
            light._commit_index = committed
            self._prev_hs = (self._prev_hs[0], self._prev_hs[1], committed)
        return light

    def advance_append_async(self, rd: Ready) -> None:
        """The Ready's writes are queued; call `on_persist_ready(rd.number())` once
        they are durable. Its entries must be readable from Storage from now on."""
        self._commit_ready(rd)

    def on_persist_ready(self, number: int) -> None:
        """Every Ready up to `number` is durable."""
        index = term = snap_index = 0
        records = self._records
        while records and records[0].number <= number:
            record = records.popleft()
            if record.term_vote is not None:
                self._durable_term, self._durable_vote = record.term_vote
            if record.snapshot is not None:
                snap_index = record.snapshot[0]
                index = term = 0
            if record.last_entry is not None:
                index, term = record.last_entry
        if snap_index:
            self.raft.on_persist_snap(snap_index)
        if index:
            # A write still outstanding (or not even handed out) may rewrite a suffix of
            # what just became durable: only the prefix before it is durable for good.
            log = self.raft.raft_log
            limit = log.unstable.offset_in_progress - 1
            for pending in records:
                if pending.first_index:
                    limit = min(limit, pending.first_index - 1)
            if index > limit:
                index = limit
                term = log.term_or_zero(index)
            self.raft.on_persist_entries(index, term)

    def advance_apply(self) -> None:
        """Everything handed out as committed entries so far is applied."""
        self.advance_apply_to(self._commit_since_index)

    def advance_apply_to(self, applied: int) -> None:
        """Entries up to `applied` are applied."""
        self.raft.commit_apply(applied)

    # --- introspection ------------------------------------------------------------------
    @property
    def durable_term(self) -> int:
        """The highest term known to be on stable storage: the storage's at start, then
        that of the newest HardState in a Ready reported persisted. An application that
        sends some persisted messages before a queued write completes (a heartbeat
        response that acknowledges nothing unwritten) may send only those at or below
        it (thesis §3.8)."""
        return self._durable_term

    def status(self) -> Status:
        return Status.from_raft(self.raft)

    def store(self) -> Storage:
        """The Storage this node reads from."""
        return self.raft.raft_log.store
