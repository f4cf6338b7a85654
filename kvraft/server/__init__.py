"""The kvraft node: event loop around RawNode, gRPC services, peer transport.

Used by kvraft.cli (`kvraft serve`): build a NodeConfig and call run_node; see
docs/INTERFACES.md, section "kvraft.server".
"""
from __future__ import annotations

from .config import NodeConfig, ServeError

__all__ = ["NodeConfig", "ServeError", "run_node"]


def run_node(config: NodeConfig) -> int:
    """Serve until SIGTERM/SIGINT and return the exit code (0 after a clean stop).

    Raises ServeError (one line) when the node cannot start."""
    from .run import run_node as _run_node  # the runtime pulls in grpc, raft, storage

    return _run_node(config)
