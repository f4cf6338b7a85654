"""The leader's table of peers: the active configuration, one `Progress` per member,
and the votes of the current election."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.quorum import JointConfig, MajorityConfig, VoteResult
from kvraft.raft.tracker.progress import NEVER_ACKED_SEQ, NEVER_ACKED_TICK, Progress


class MapChangeType(enum.Enum):
    """How a configuration change alters the progress table."""

    Add = 0     # a new member: start tracking it
    Remove = 1  # a member left every configuration: forget it


# The progress-table edits a configuration change implies, in order (confchange.Changer
# computes them, ProgressTracker.apply_conf performs them).
MapChange = list[tuple[int, MapChangeType]]


class Configuration:
    """A membership configuration (thesis §4): the voters — joint while a change is in
    progress (§4.3) — and the learners, which receive the log but never vote and never
    count towards a quorum (§4.2.1)."""

    __slots__ = ("auto_leave", "learners", "learners_next", "voters")

    def __init__(self, voters: JointConfig | Iterable[int] = (),
                 learners: Iterable[int] = (), learners_next: Iterable[int] = (),
                 auto_leave: bool = False) -> None:
        if not isinstance(voters, JointConfig):
            voters = JointConfig(MajorityConfig(voters))
        self.voters: JointConfig = voters
        # Learners are never voters in either half of the joint configuration.
        self.learners: set[int] = set(learners)
        # Voters of the outgoing configuration that become learners once the joint
        # configuration is left: they cannot be learners while they still vote.
        self.learners_next: set[int] = set(learners_next)
        # Thesis §4.3: leave the joint configuration automatically once it commits.
        self.auto_leave: bool = auto_leave

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Configuration):
            return NotImplemented
        return (self.voters == other.voters and self.learners == other.learners
                and self.learners_next == other.learners_next
                and self.auto_leave == other.auto_leave)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        text = f"voters={self.voters!r}"
        if self.learners:
            text += f" learners={sorted(self.learners)}"
        if self.learners_next:
            text += f" learners_next={sorted(self.learners_next)}"
        if self.auto_leave:
            text += " autoleave"
        return f"Configuration({text})"

    def clone(self) -> Configuration:
        return Configuration(self.voters.clone(), self.learners, self.learners_next,
                             self.auto_leave)

    def is_joint(self) -> bool:
        return self.voters.is_joint()

    def to_conf_state(self) -> eraftpb.ConfState:
        return eraftpb.ConfState(
            voters=sorted(self.voters.incoming.ids),
            learners=sorted(self.learners),
            voters_outgoing=sorted(self.voters.outgoing.ids),
            learners_next=sorted(self.learners_next),
            auto_leave=self.auto_leave,
        )


class ProgressTracker:
    """Configuration, per-peer progress and election votes."""

    __slots__ = ("conf", "max_inflight", "progress", "votes")

    def __init__(self, max_inflight: int) -> None:
        assert max_inflight > 0, f"max_inflight must be positive, got {max_inflight}"
        self.max_inflight: int = max_inflight
        self.conf: Configuration = Configuration()
        # Every voter (both halves), learner and learner-next has an entry.
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def __repr__(self) -> str:
        return f"ProgressTracker({self.conf!r}, progress={self.progress!r})"

    def get(self, peer_id: int) -> Progress | None:
        return self.progress.get(peer_id)

    def voter_ids(self) -> set[int]:
        return self.conf.voters.ids()

    def learner_ids(self) -> set[int]:
        return self.conf.learners | self.conf.learners_next

    def is_singleton(self) -> bool:
        return self.conf.voters.is_singleton()

    def maximal_committed_index(self) -> int:
        """Thesis §3.6 / §4.3: the largest index replicated on a quorum of voters (of
        both halves while joint). Learners' progress never counts (§4.2.1). The caller
        still checks the entry's term (§3.6.2)."""
        progress = self.progress
        voters = self.conf.voters
        incoming = voters.incoming.ids
        if not voters.outgoing.ids and len(incoming) > 1 and progress.keys() >= incoming:
            # Hot path (every append response on the leader): a simple majority, every
            # voter tracked. Same rule as MajorityConfig.committed_index, inlined.
            matched = sorted([progress[peer_id].matched for peer_id in incoming],
                             reverse=True)
            return matched[len(matched) // 2]

        def acked(peer_id: int) -> int | None:
            pr = progress.get(peer_id)
            return pr.matched if pr is not None else None

        return voters.committed_index(acked)

    def quorum_ack_tick(self, perspective_of: int, now: int) -> int:
        """Thesis §6.4.1: the newest tick `s` such that a quorum of voters (of both
        halves when joint) acknowledged lease heartbeats sent at `s` or later; the
        leader (`perspective_of`) counts itself at `now`. NEVER_ACKED_TICK when no
        quorum acknowledged one in this leadership. Learners never count."""
        return self._quorum_value(perspective_of, now, NEVER_ACKED_TICK,
                                  lambda pr: pr.last_ack_tick)

    def quorum_ack_seq(self, perspective_of: int, newest: int) -> int:
        """The highest lease heartbeat sequence number that a quorum of voters
        acknowledged (or a later one); the leader counts itself at `newest`."""
        return self._quorum_value(perspective_of, newest, NEVER_ACKED_SEQ,
                                  lambda pr: pr.last_ack_seq)

    def _quorum_value(self, perspective_of: int, own: int, never: int,
                      value_of: Callable[[Progress], int]) -> int:
        progress = self.progress
        if not self.conf.voters.ids():
            return never  # no voters, no quorum (an uninitialized node)

        def acked(peer_id: int) -> int:
            if peer_id == perspective_of:
                return own
            pr = progress.get(peer_id)
            return value_of(pr) if pr is not None else never

        value = self.conf.voters.committed_index(acked)
        assert never <= value <= own, f"quorum value {value} outside [{never}, {own}]"
        return value

    def reset_votes(self) -> None:
        self.votes.clear()

    def record_vote(self, peer_id: int, granted: bool) -> None:
        """Thesis §3.4: each server votes at most once per term, so only the first
        answer from a peer counts."""
        self.votes.setdefault(peer_id, granted)

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        return self.conf.voters.vote_result(votes)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """(granted, rejected, result) over the current voters; answers from
        non-voters (learners, removed peers) are not counted (§4.2.1)."""
        granted = 0
        rejected = 0
        voters = self.conf.voters
        for peer_id, vote in self.votes.items():
            if not voters.contains(peer_id):
                continue
            if vote:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, voters.vote_result(self.votes)

    def quorum_recently_active(self, perspective_of: int) -> bool:
        """Thesis §6.2 check-quorum: whether a quorum of voters was heard from since the
        last check. Resets every peer's `recent_active` for the next interval; the
        node asking (`perspective_of`, the leader) always counts itself."""
        active: dict[int, bool] = {}
        for peer_id, pr in self.progress.items():
            if peer_id == perspective_of:
                pr.recent_active = True
                active[peer_id] = True
            elif pr.recent_active:
                # Learners may be in `active`; the quorum below counts voters only.
                active[peer_id] = True
                pr.recent_active = False
        return self.conf.voters.vote_result(active) is VoteResult.Won

    def has_quorum(self, potential_quorum: set[int]) -> bool:
        """Whether these ids form a quorum of the voters (of both halves when joint)."""
        return self.conf.voters.vote_result(
            {peer_id: True for peer_id in potential_quorum}) is VoteResult.Won

    def conf_state(self) -> eraftpb.ConfState:
        return self.conf.to_conf_state()

    def apply_conf(self, conf: Configuration, changes: MapChange, next_idx: int) -> None:
        """Install a configuration computed by `confchange.Changer` and edit the
        progress table as it says. A new peer starts probing at `next_idx` and counts
        as recently active, so check-quorum gives it a full interval to answer."""
        self.conf = conf
        for peer_id, change in changes:
            if change is MapChangeType.Add:
                pr = Progress(next_idx, self.max_inflight)
                pr.recent_active = True
                self.progress[peer_id] = pr
            else:
                self.progress.pop(peer_id, None)
        tracked = self.progress.keys()
        assert (conf.voters.ids() | conf.learners | conf.learners_next) == tracked, (
            f"progress table {sorted(tracked)} does not match configuration {conf!r}")
