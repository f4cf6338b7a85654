"""kvraft: a replicated key-value store on an I/O-free Raft core.

Layers, each depending only on those to its left:
    raft (consensus, no I/O) <- storage (LevelDB log, KV state machine, snapshots)
    <- server (node loop, gRPC services, peer transport) <- client, cli
"""

__version__ = "0.1.0"
