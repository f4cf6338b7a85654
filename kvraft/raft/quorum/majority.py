"""A simple majority configuration: one set of voters (thesis §3.6, §3.4)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping

from kvraft.raft.quorum.vote_result import VoteResult


class MajorityConfig:
    """A set of voter ids decided by simple majority.

    An empty configuration agrees to everything (committed index `sys.maxsize`, every
    vote won): that is what makes the "outgoing" half of a non-joint `JointConfig`
    neutral, so a joint rule can always be the conjunction of both halves.
    """

    __slots__ = ("ids",)

    def __init__(self, voters: Iterable[int] = ()) -> None:
        self.ids: set[int] = set(voters)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, voter_id: object) -> bool:
        return voter_id in self.ids

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MajorityConfig):
            return NotImplemented
        return self.ids == other.ids

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"MajorityConfig({sorted(self.ids)})"

    def clone(self) -> MajorityConfig:
        return MajorityConfig(self.ids)

    def quorum(self) -> int:
        """Votes needed for a decision: more than half of the voters."""
        return len(self.ids) // 2 + 1

    def committed_index(self, acked: Callable[[int], int | None]) -> int:
        """The largest index that a majority of the voters have acknowledged.

        Thesis §3.6: an entry is committed once the leader has replicated it on a
        majority of the servers. `acked(id)` returns the voter's match index, or None
        when nothing is known about the voter (counted as 0). An empty configuration
        returns `sys.maxsize` so that `min()` over a joint configuration ignores it.
        """
        voters = self.ids
        n = len(voters)
        if n == 0:
            return sys.maxsize
        if n == 1:
            for voter_id in voters:
                return acked(voter_id) or 0
        matched = sorted([acked(voter_id) or 0 for voter_id in voters], reverse=True)
        # The quorum-th largest (1-based) index is held by at least `quorum` voters,
        # and no larger index is: index n // 2 in the descending list.
        return matched[n // 2]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """Tally an election (thesis §3.4): Won once a majority granted, Lost once a
        majority can no longer be reached, otherwise Pending. Votes of non-members
        are ignored; a voter absent from `votes` has not answered yet."""
        if not self.ids:
            # Joint rule: the missing half of a simple configuration never objects.
            return VoteResult.Won
        granted = 0
        missing = 0
        for voter_id in self.ids:
            vote = votes.get(voter_id)
            if vote is None:
                missing += 1
            elif vote:
                granted += 1
        needed = self.quorum()
        if granted >= needed:
            return VoteResult.Won
        if granted + missing >= needed:
            return VoteResult.Pending
        return VoteResult.Lost
