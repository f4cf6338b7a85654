"""Configuration of one Raft peer (SPEC §1 `Config`).

Every field says why it exists and what goes wrong when it is set badly, because a
misconfigured consensus node fails in ways that look like bugs elsewhere (elections that
never settle, a leader that stalls a slow follower, memory that grows without bound).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from kvraft.raft.errors import ConfigInvalid

# "No limit" for the size limits below: raft-rs's u64::MAX, so the value also fits the
# uint64 fields of the wire format should an application ever ship it.
NO_LIMIT = 2**64 - 1

# Node id 0 means "nobody" (no vote, no leader) throughout the protocol.
INVALID_ID = 0


class ReadOnlyOption(enum.Enum):
    """How a leader confirms it is still the leader before serving a read (§6.4)."""

    # Thesis §6.4: the leader confirms its leadership with a round of heartbeats to a
    # quorum for every ReadIndex request. Safe regardless of clock drift.
    Safe = 0
    # Thesis §6.4.1: the leader trusts its lease (it heard from a quorum within an
    # election timeout less a clock-drift margin, and voters ignore elections while
    # they hear from it); without a valid lease it falls back to the Safe round. Cheaper,
    # but only correct while ticks advance at about the same rate on every node; see
    # read_only.py for the argument and its limits.
    LeaseBased = 1


# Thesis §6.4.1 bounds the lease by "election timeout / clock drift bound". The tick
# clocks of two nodes are assumed to run at rates within this many percent of each
# other; the lease is shortened by that share of the election timeout ...
LEASE_CLOCK_DRIFT_PERCENT = 10
# ... and by two more ticks for granularity: a heartbeat sent late in the leader's tick
# t is stamped t, and a follower's first tick after it received the heartbeat may come
# at once, so each end of the interval may lose up to one tick.
LEASE_GRANULARITY_TICKS = 2


@dataclass
class Config:
    """Parameters of one Raft peer. Keyword-constructible; call `validate()` before use."""

    # The identity of this peer. Must be non-zero and unique within the cluster: 0 is
    # the "no node" sentinel (no vote, no leader), and two peers sharing an id would
    # both count their votes and acks as one node's, breaking quorum arithmetic.
    id: int = INVALID_ID
    # Ticks a follower waits without hearing from a leader before it starts an election
    # (thesis §3.4). Must exceed heartbeat_tick by a good margin (raft-rs suggests
    # 10 x): too close, and ordinary heartbeat jitter triggers needless elections that
    # depose a healthy leader; too large, and a crashed leader stays unnoticed longer.
    election_tick: int = 20
    # Ticks between the heartbeats a leader sends to maintain its authority (§3.4).
    # Must be positive and smaller than election_tick, or followers time out between
    # two heartbeats and the cluster never keeps a leader.
    heartbeat_tick: int = 2
    # The last index the application has already applied, for a restart: entries up to
    # here are not handed out again in `Ready.committed_entries`. Setting it beyond what
    # the state machine actually holds skips entries (silent divergence); setting it too
    # low re-applies entries, which the state machine must then tolerate.
    applied: int = 0
    # Byte limit on the entries of one MsgAppend. Bounds the size of a single message,
    # and so the memory and latency of one send. 0 means one entry per message (slow
    # catch-up); NO_LIMIT means a lagging follower may receive the whole log at once.
    max_size_per_msg: int = 0
    # How many MsgAppend may be in flight to one follower in the Replicate state
    # (flow control, the Inflights window). Must be positive. Too small throttles
    # throughput on high-latency links; too large lets a slow follower make the leader
    # buffer many messages in transport queues.
    max_inflight_msgs: int = 256
    # Thesis §6.2: the leader steps down when it has not heard from a quorum for an
    # election timeout, so clients stop waiting on a leader that cannot commit. Also
    # enables the leader lease that makes voters ignore vote requests while they hear
    # from a live leader (§4.2.3). Without it, a partitioned leader stays leader forever.
    check_quorum: bool = False
    # Thesis §9.6: before incrementing its term, a candidate asks whether it could win.
    # Prevents a node rejoining after a partition from deposing a healthy leader by
    # bumping the term. Off means such a node disrupts the cluster once it reconnects.
    pre_vote: bool = False
    # The randomized election timeout is drawn from [min_election_tick,
    # max_election_tick) (§3.4: randomness splits votes rarely). 0 means election_tick.
    # Must be >= election_tick, or a follower may time out before a heartbeat-paced
    # leader could possibly reach it.
    min_election_tick: int = 0
    # Upper bound (exclusive) of the randomized timeout; 0 means 2 * election_tick. Must
    # exceed min_election_tick, or every node times out together and votes keep splitting.
    max_election_tick: int = 0
    # How ReadIndex requests are confirmed; see ReadOnlyOption. LeaseBased requires
    # check_quorum, since the lease is only meaningful when a leader that lost its
    # quorum steps down; without it a deposed leader could serve stale reads.
    read_only_option: ReadOnlyOption = ReadOnlyOption.Safe
    # If set, the leader does not broadcast a MsgAppend just to advance followers'
    # commit index; they learn it with the next append or heartbeat. Saves messages
    # under load, at the cost of followers applying later.
    skip_bcast_commit: bool = False
    # If set, the leader merges consecutive appends to a follower that are still queued
    # into one message. Fewer, bigger messages; useful when proposals arrive one by one.
    batch_append: bool = False
    # Election priority (raft-rs extension): a voter rejects a vote request from a
    # candidate whose priority is lower than its own unless that candidate's log is
    # strictly more up to date. A badly chosen priority can make a healthy node unable
    # to win, so leave it 0 unless placement matters.
    priority: int = 0
    # Byte limit on the entries a leader has appended but not yet committed. Past it,
    # proposals are dropped (ProposalDropped) instead of growing the log without bound
    # while a quorum is unreachable. Must be at least max_size_per_msg.
    max_uncommitted_size: int = NO_LIMIT
    # Byte limit on the committed entries one Ready hands to the application, so a
    # follower that catches up on a long log applies it in bounded batches instead of
    # loading it all into memory at once.
    max_committed_size_per_ready: int = NO_LIMIT

    def min_election_ticks(self) -> int:
        """The effective lower bound of the randomized election timeout."""
        return self.election_tick if self.min_election_tick == 0 else self.min_election_tick

    def max_election_ticks(self) -> int:
        """The effective (exclusive) upper bound of the randomized election timeout."""
        return 2 * self.election_tick if self.max_election_tick == 0 else self.max_election_tick

    def lease_drift_margin_ticks(self) -> int:
        """Thesis §6.4.1: how much shorter than the election timeout the lease is, in
        ticks: LEASE_CLOCK_DRIFT_PERCENT of it (rounded up) plus LEASE_GRANULARITY_TICKS."""
        drift = -(-self.election_tick * LEASE_CLOCK_DRIFT_PERCENT // 100)
        return drift + LEASE_GRANULARITY_TICKS

    def lease_ticks(self) -> int:
        """How long, in this node's ticks from the sending of a heartbeat that a quorum
        acknowledged, a LeaseBased leader may answer reads without a round."""
        return self.election_tick - self.lease_drift_margin_ticks()

    def validate(self) -> None:
        """Raise ConfigInvalid naming the first bad field."""
        if self.id == INVALID_ID:
            raise ConfigInvalid("invalid node id: 0 is reserved for 'no node'")
        if self.id < 0:
            raise ConfigInvalid(f"invalid node id {self.id}: must be positive")
        if self.heartbeat_tick <= 0:
            raise ConfigInvalid("heartbeat_tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigInvalid("election_tick must be greater than heartbeat_tick")
        min_timeout = self.min_election_ticks()
        max_timeout = self.max_election_ticks()
        if min_timeout < self.election_tick:
            raise ConfigInvalid(
                f"min_election_tick {min_timeout} must not be less than "
                f"election_tick {self.election_tick}"
            )
        if min_timeout >= max_timeout:
            raise ConfigInvalid(
                f"min_election_tick {min_timeout} must be less than "
                f"max_election_tick {max_timeout}"
            )
        if self.max_inflight_msgs <= 0:
            raise ConfigInvalid("max_inflight_msgs must be greater than 0")
        if self.applied < 0:
            raise ConfigInvalid("applied must not be negative")
        if self.max_size_per_msg < 0:
            raise ConfigInvalid("max_size_per_msg must not be negative")
        if self.read_only_option is ReadOnlyOption.LeaseBased and not self.check_quorum:
            raise ConfigInvalid("read_only_option LeaseBased requires check_quorum")
        if (self.read_only_option is ReadOnlyOption.LeaseBased
                and self.lease_ticks() <= self.heartbeat_tick):
            # The lease must outlast the interval between two heartbeats, or it lapses
            # before the next one can renew it and every read pays a round anyway.
            raise ConfigInvalid(
                f"read_only_option LeaseBased needs a lease ({self.lease_ticks()} ticks: "
                f"election_tick {self.election_tick} less a drift margin of "
                f"{self.lease_drift_margin_ticks()}) longer than heartbeat_tick "
                f"{self.heartbeat_tick}")
        if self.max_uncommitted_size <= 0:
            raise ConfigInvalid("max_uncommitted_size must be greater than 0")
        if self.max_uncommitted_size < self.max_size_per_msg:
            raise ConfigInvalid("max_uncommitted_size must not be less than max_size_per_msg")
        if self.max_committed_size_per_ready <= 0:
            raise ConfigInvalid("max_committed_size_per_ready must be greater than 0")
