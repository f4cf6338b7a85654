"""kvraft.raft: an I/O-free Raft consensus core (SPEC.md §1)."""
from kvraft.proto import eraftpb_pb2 as eraftpb

__all__ = ["eraftpb"]
