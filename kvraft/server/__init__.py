"""The kvraft node: event loop around RawNode, gRPC services, peer transport.

Used by kvraft.cli (`kvraft serve`): build a NodeConfig and call run_node; see
docs/INTERFACES.md, section "kvraft.server".

Modules, one concern each:
    config.py           NodeConfig, ServeError, address parsing, the cluster id
    run.py              run_node: open the store, start servers, signals, clean shutdown
    node.py             the Node facade and its Ready loop (rounds over RawNode)
    persist.py          the persist queue and task: group commit, compaction
    applier.py          the apply task: committed entries into the state machine
    proposals.py        write and member-change waiters; the pushback on writes
    reads.py            ReadIndex rounds for linearizable reads
    membership.py       the configuration, conf changes, addresses, the self-publish
    snapshots.py        received snapshots staged until installed; sent ones streamed
    storage_io.py       the threads storage work runs on (persistence lane, apply lane)
    apply_backlog.py    committed entries waiting to be applied, bounded in memory
    loop_lag.py         the event-loop lag probe and its metrics
    waiters.py          futures client calls await (Proposal, ReadWaiter, NodeError)
    kv_service.py       the KV and Cluster gRPC services (SPEC §2): validation, codes
    transport.py        outbound peer streams: batching, bounded queues, backoff, snapshots
    peer_service.py     the inbound Peer service: cluster/member checks, snapshot staging
    storage_adapter.py  opening/bootstrapping kvraft.storage; commands and conf changes
    metrics.py          Prometheus metrics of one node
"""
from __future__ import annotations

from .config import NodeConfig, ServeError

__all__ = ["NodeConfig", "ServeError", "run_node"]


def run_node(config: NodeConfig) -> int:
    """Serve until SIGTERM/SIGINT and return the exit code (0 after a clean stop).

    Raises ServeError (one line) when the node cannot start."""
    from .run import run_node as _run_node  # the runtime pulls in grpc, raft, storage

    return _run_node(config)
