"""A joint configuration C_old,new (thesis §4.3).

During joint consensus every decision — electing a leader, committing an entry — needs
a separate majority of the new ("incoming") and of the old ("outgoing") configuration.
Outside a joint configuration the outgoing half is empty and, by the empty-majority
rule, never constrains anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kvraft.raft.quorum.majority import MajorityConfig
from kvraft.raft.quorum.vote_result import VoteResult


class JointConfig:
    """Two majority configurations that must both agree."""

    __slots__ = ("incoming", "outgoing")

    def __init__(self, incoming: MajorityConfig,
                 outgoing: MajorityConfig | None = None) -> None:
        self.incoming: MajorityConfig = incoming
        self.outgoing: MajorityConfig = outgoing if outgoing is not None else MajorityConfig()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JointConfig):
            return NotImplemented
        return self.incoming == other.incoming and self.outgoing == other.outgoing

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        if self.outgoing.ids:
            return f"JointConfig({sorted(self.incoming.ids)}&&{sorted(self.outgoing.ids)})"
        return f"JointConfig({sorted(self.incoming.ids)})"

    def clone(self) -> JointConfig:
        return JointConfig(self.incoming.clone(), self.outgoing.clone())

    def ids(self) -> set[int]:
        """Every voter of either half."""
        return self.incoming.ids | self.outgoing.ids

    def contains(self, voter_id: int) -> bool:
        return voter_id in self.incoming.ids or voter_id in self.outgoing.ids

    def is_joint(self) -> bool:
        return bool(self.outgoing.ids)

    def is_singleton(self) -> bool:
        """One voter and no joint state: that voter alone decides everything."""
        return not self.outgoing.ids and len(self.incoming.ids) == 1

    def committed_index(self, acked: Callable[[int], int | None]) -> int:
        """Thesis §4.3: an entry is committed in C_old,new only once a majority of
        each half holds it, i.e. the smaller of the two halves' committed indexes."""
        incoming = self.incoming.committed_index(acked)
        if not self.outgoing.ids:
            return incoming
        return min(incoming, self.outgoing.committed_index(acked))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """Thesis §4.3: a candidate needs a majority in both halves; a loss in either
        half loses the election."""
        incoming = self.incoming.vote_result(votes)
        outgoing = self.outgoing.vote_result(votes)
        if incoming is outgoing:
            return incoming
        if VoteResult.Lost in (incoming, outgoing):
            return VoteResult.Lost
        # One half Won and the other Pending.
        return VoteResult.Pending
