"""Quorum arithmetic: majority (thesis §3.6) and joint (thesis §4.3) configurations.

The rest of the core asks two questions of a set of voters, and only these: which index
has been acknowledged by a quorum (commitment), and has an election been won or lost.
"""

from kvraft.raft.quorum.joint import JointConfig
from kvraft.raft.quorum.majority import MajorityConfig
from kvraft.raft.quorum.vote_result import VoteResult

__all__ = ["JointConfig", "MajorityConfig", "VoteResult"]
