"""What the leader knows about one peer's log, and how it replicates to it.

Thesis §3.5 gives the leader a `nextIndex` and `matchIndex` per follower. Flow control
adds a state (the design of etcd/raft-rs):

* Probe: the leader does not know where the follower's log diverges. It sends one
  append per heartbeat interval and waits for the answer (`paused`), backing
  `next_idx` off on each rejection (thesis §3.5, with the fast backtracking hint).
* Replicate: the logs match up to `matched`; the leader streams appends optimistically,
  advancing `next_idx` as it sends, bounded by the `Inflights` window.
* Snapshot: the entries the follower needs are compacted; the leader sent a snapshot
  (thesis §5.3) and sends nothing else until the follower reports it applied.
"""

from __future__ import annotations

import enum

from kvraft.raft.tracker.inflights import Inflights

# Index 0 is never a log index (logs start at 1): used for "no request" / "none".
INVALID_INDEX = 0
# `Progress.last_ack_tick` / `last_ack_seq` of a peer that acknowledged no lease
# heartbeat of this leadership.
NEVER_ACKED_TICK = -1
NEVER_ACKED_SEQ = -1


class ProgressState(enum.Enum):
    """How the leader currently replicates to a peer."""

    Probe = 0
    Replicate = 1
    Snapshot = 2


# Module-level aliases for the hot paths (no enum-class attribute lookup per call).
_PROBE = ProgressState.Probe
_REPLICATE = ProgressState.Replicate


class Progress:
    """The leader's view of one peer (voter or learner)."""

    __slots__ = (
        "committed_index",
        "ins",
        "last_ack_seq",
        "last_ack_tick",
        "matched",
        "next_idx",
        "paused",
        "pending_request_snapshot",
        "pending_snapshot",
        "recent_active",
        "state",
    )

    def __init__(self, next_idx: int, ins_size: int) -> None:
        # Thesis §3.5 matchIndex: the highest index known to be replicated on the peer.
        self.matched: int = 0
        # Thesis §3.5 nextIndex: the index of the next entry to send.
        self.next_idx: int = next_idx
        self.state: ProgressState = ProgressState.Probe
        # In Probe state: an append is outstanding, wait for its answer or a heartbeat.
        self.paused: bool = False
        # In Snapshot state: the index of the snapshot being sent.
        self.pending_snapshot: int = 0
        # The follower asked for a snapshot at least this recent (request_snapshot).
        self.pending_request_snapshot: int = INVALID_INDEX
        # Thesis §6.2 check-quorum: heard from the peer during the last election timeout.
        self.recent_active: bool = False
        self.ins: Inflights = Inflights(ins_size)
        # The commit index the peer last reported (heartbeat / append responses).
        self.committed_index: int = 0
        # Thesis §6.4.1 lease evidence (LeaseBased only, read_only.py): the leader's
        # tick (Raft.tick_count) at which it sent the newest lease heartbeat this peer
        # acknowledged at the leader's current term. Invariant: NEVER_ACKED_TICK (none
        # since the last reset, i.e. since this leadership began) or
        # 0 <= last_ack_tick <= the leader's tick; it never decreases until a reset.
        self.last_ack_tick: int = NEVER_ACKED_TICK
        # The sequence number of that same newest acknowledged lease heartbeat.
        # Invariant: NEVER_ACKED_SEQ or 1 <= last_ack_seq <= Raft.heartbeat_seq; it
        # never decreases until a reset, and moves together with last_ack_tick (a
        # later heartbeat has a later or equal tick).
        self.last_ack_seq: int = NEVER_ACKED_SEQ

    def __repr__(self) -> str:
        return (f"Progress(state={self.state.name}, matched={self.matched}, "
                f"next_idx={self.next_idx}, paused={self.paused}, "
                f"pending_snapshot={self.pending_snapshot}, "
                f"recent_active={self.recent_active}, inflights={self.ins.count()}, "
                f"last_ack_tick={self.last_ack_tick}, last_ack_seq={self.last_ack_seq})")

    def reset(self, next_idx: int) -> None:
        """Start over, as a new leader does for every peer (thesis §3.5: nextIndex is
        initialised just past the leader's last entry, matchIndex to 0)."""
        self.matched = 0
        self.next_idx = next_idx
        self.state = ProgressState.Probe
        self.paused = False
        self.pending_snapshot = 0
        self.pending_request_snapshot = INVALID_INDEX
        self.recent_active = False
        self.last_ack_tick = NEVER_ACKED_TICK
        self.last_ack_seq = NEVER_ACKED_SEQ
        self.ins.reset()

    def _reset_state(self, state: ProgressState) -> None:
        self.paused = False
        self.pending_snapshot = 0
        self.state = state
        self.ins.reset()

    def become_probe(self) -> None:
        """Go back to probing for the point where the logs match."""
        if self.state is ProgressState.Snapshot:
            # The snapshot, if the follower applied it, makes everything up to its
            # index present; probe from there rather than from an older match.
            pending = self.pending_snapshot
            self._reset_state(ProgressState.Probe)
            self.next_idx = max(self.matched + 1, pending + 1)
        else:
            self._reset_state(ProgressState.Probe)
            self.next_idx = self.matched + 1

    def become_replicate(self) -> None:
        """The logs match up to `matched`: stream from just past it."""
        self._reset_state(ProgressState.Replicate)
        self.next_idx = self.matched + 1

    def become_snapshot(self, snapshot_idx: int) -> None:
        """Thesis §5.3: the entries the peer needs are gone; a snapshot is on its way."""
        self._reset_state(ProgressState.Snapshot)
        self.pending_snapshot = snapshot_idx

    def snapshot_failure(self) -> None:
        """The snapshot was not delivered; `become_probe` will then retry from matched."""
        self.pending_snapshot = 0

    def is_snapshot_caught_up(self) -> bool:
        """In Snapshot state, the peer has acknowledged an index covering the snapshot."""
        return (self.state is ProgressState.Snapshot
                and self.matched >= self.pending_snapshot)

    def maybe_update(self, n: int) -> bool:
        """The peer acknowledged index `n` (a successful append response).

        Returns whether `matched` advanced; a stale acknowledgement changes nothing
        except that `next_idx` never lags behind `n + 1`.
        """
        updated = self.matched < n
        if updated:
            self.matched = n
            self.resume()
        if self.next_idx < n + 1:
            self.next_idx = n + 1
        return updated

    def update_committed(self, committed_index: int) -> None:
        if committed_index > self.committed_index:
            self.committed_index = committed_index

    def ack_lease_heartbeat(self, tick: int, seq: int) -> bool:
        """The peer acknowledged, at the leader's term, lease heartbeat number `seq`,
        sent at `tick`. An older (reordered, duplicated) acknowledgement changes
        nothing, nor does a stamp no heartbeat of ours could carry (a later number
        sent at an earlier tick). Whether it was recorded."""
        if seq <= self.last_ack_seq or tick < self.last_ack_tick or tick < 0:
            return False
        self.last_ack_seq = seq
        self.last_ack_tick = tick
        return True

    def optimistic_update(self, n: int) -> None:
        """Replicate state: entries up to `n` were sent; the next append starts after."""
        self.next_idx = n + 1

    def update_state(self, last: int) -> None:
        """Account for an append whose last entry is `last` having just been sent."""
        state = self.state
        if state is _REPLICATE:
            self.next_idx = last + 1  # optimistic_update, inlined: hot path
            self.ins.add(last)
        elif state is _PROBE:
            # One probe at a time: wait for its answer (or the next heartbeat).
            self.pause()
        else:
            raise AssertionError(f"sending entries to a peer in Snapshot state: {self!r}")

    def maybe_decr_to(self, rejected: int, match_hint: int, request_snapshot: int) -> bool:
        """The peer rejected the append that followed index `rejected` (thesis §3.5
        consistency check); `match_hint` is the peer's last index that may match
        (fast backtracking). Returns False when the rejection is stale and ignored.

        A non-zero `request_snapshot` means the peer asks for a snapshot at least that
        recent instead of entries.
        """
        if self.state is ProgressState.Replicate:
            # Appends are pipelined, so a rejection of an index already known to match
            # answers an old message: ignore it, unless it carries a snapshot request.
            if rejected < self.matched or (
                    rejected == self.matched and request_snapshot == INVALID_INDEX):
                return False
            if request_snapshot == INVALID_INDEX:
                self.next_idx = self.matched + 1
            else:
                self.pending_request_snapshot = request_snapshot
            return True

        # Probe (or Snapshot): only the answer to the outstanding probe counts, i.e.
        # a rejection of exactly next_idx - 1.
        if self.next_idx - 1 != rejected and request_snapshot == INVALID_INDEX:
            return False
        if request_snapshot == INVALID_INDEX:
            # Thesis §3.5 backtracking, accelerated: jump to the follower's hint, but
            # never forward past the rejected index and never below index 1.
            self.next_idx = max(min(rejected, match_hint + 1), 1)
        elif self.pending_request_snapshot == INVALID_INDEX:
            self.pending_request_snapshot = request_snapshot
        self.resume()
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold appends to this peer for now."""
        state = self.state
        if state is _REPLICATE:
            return self.ins.full()
        if state is _PROBE:
            return self.paused
        return True  # Snapshot: wait for the snapshot's outcome

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
