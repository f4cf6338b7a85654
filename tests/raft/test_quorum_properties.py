"""Quorum arithmetic against its definitions, on random configurations (hypothesis).

The tables in test_quorum.py pin chosen cases; these check the rules themselves:
thesis §3.6 (an index is committed when a majority holds it), §3.4 (an election is
decided by a majority), §4.3 (joint = both halves).
"""

from __future__ import annotations

import itertools
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from kvraft.raft.quorum import JointConfig, MajorityConfig, VoteResult

voter_sets = st.sets(st.integers(min_value=1, max_value=9), max_size=7)
match_maps = st.dictionaries(st.integers(min_value=1, max_value=9),
                             st.integers(min_value=0, max_value=20), max_size=9)
vote_maps = st.dictionaries(st.integers(min_value=1, max_value=9), st.booleans(), max_size=9)


def committed_by_definition(voters: set[int], acked: dict[int, int]) -> int:
    """The largest index held by more than half of the voters."""
    if not voters:
        return sys.maxsize
    candidates = {acked.get(voter, 0) for voter in voters} | {0}
    return max(index for index in candidates
               if sum(acked.get(voter, 0) >= index for voter in voters) * 2 > len(voters))


def vote_by_definition(voters: set[int], votes: dict[int, bool]) -> VoteResult:
    """Won if the granted votes already form a majority; Lost if no way of filling in
    the missing votes can; otherwise Pending."""
    if not voters:
        return VoteResult.Won
    missing = [voter for voter in voters if voter not in votes]
    outcomes = set()
    for fill in itertools.product([True, False], repeat=len(missing)):
        complete = {**{v: votes[v] for v in voters if v in votes}, **dict(zip(missing, fill,
                                                                              strict=True))}
        outcomes.add(sum(complete.values()) * 2 > len(voters))
    if outcomes == {True}:
        return VoteResult.Won
    if outcomes == {False}:
        return VoteResult.Lost
    return VoteResult.Pending


@settings(max_examples=300, deadline=None)
@given(voter_sets, match_maps)
def test_majority_committed_index_matches_definition(voters, acked):
    assert MajorityConfig(voters).committed_index(acked.get) == \
        committed_by_definition(voters, acked)


@settings(max_examples=300, deadline=None)
@given(voter_sets, vote_maps)
def test_majority_vote_result_matches_definition(voters, votes):
    assert MajorityConfig(voters).vote_result(votes) is vote_by_definition(voters, votes)


@settings(max_examples=300, deadline=None)
@given(voter_sets, voter_sets, match_maps)
def test_joint_committed_index_is_the_minimum_of_both_halves(incoming, outgoing, acked):
    joint = JointConfig(MajorityConfig(incoming), MajorityConfig(outgoing))
    assert joint.committed_index(acked.get) == min(
        committed_by_definition(incoming, acked), committed_by_definition(outgoing, acked))


@settings(max_examples=300, deadline=None)
@given(voter_sets, voter_sets, vote_maps)
def test_joint_vote_needs_both_halves(incoming, outgoing, votes):
    joint = JointConfig(MajorityConfig(incoming), MajorityConfig(outgoing))
    halves = {vote_by_definition(incoming, votes), vote_by_definition(outgoing, votes)}
    if halves == {VoteResult.Won}:
        expected = VoteResult.Won
    elif VoteResult.Lost in halves:
        expected = VoteResult.Lost
    else:
        expected = VoteResult.Pending
    assert joint.vote_result(votes) is expected
