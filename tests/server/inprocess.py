"""In-process nodes for tests: a real Node over a real store in a temporary directory,
driven on the test's own event loop (no gRPC servers; peers, when named, are loopback
ports where nothing listens, so every message to them is dropped by the transport)."""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.server.config import NodeConfig
from kvraft.server.metrics import NodeMetrics
from kvraft.server.node import Node
from kvraft.server.storage_adapter import Store, open_store
from kvraft.storage import keys
from kvraft.storage.datadir import DataDir
from kvraft.storage.snapshot import SnapshotHandle, StagedSnapshot

POLL_INTERVAL_S = 0.01


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(data_dir: Path, node_id: int = 1, members: int = 3,
                **overrides: Any) -> NodeConfig:
    initial = {i: f"127.0.0.1:{free_port()}" for i in range(1, members + 1)}
    base: dict[str, Any] = dict(
        node_id=node_id, data_dir=data_dir, listen=f"127.0.0.1:{free_port()}",
        peer_listen=initial[node_id], initial_cluster=initial,
        tick_interval_s=0.02, snapshot_entries=10_000, snapshot_keep_entries=1_000)
    base.update(overrides)
    return NodeConfig(**base)


def open_node(config: NodeConfig, **node_kwargs: Any) -> tuple[Node, Store]:
    """Open the store and build the Node (call on a running event loop)."""
    store = open_store(config)
    try:
        return Node(config, store, NodeMetrics(), **node_kwargs), store
    except BaseException:
        store.close()
        raise


async def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


def staged_snapshot(store: Store, scratch: Path, index: int, term: int,
                    voters: list[int], data: dict[bytes, bytes]) -> StagedSnapshot:
    """A complete snapshot at (index, term) staged in `store`'s data directory, as the
    peer service stages one it received: built from a scratch LevelDB that holds
    exactly `data` at that applied index."""
    with DataDir.open(scratch, node_id=99) as source:
        source.db.put(keys.APPLIED, keys.pack_index_term(index, term))
        source.db.put(keys.CONF_STATE, eraftpb.ConfState(voters=voters).SerializeToString())
        for k, v in data.items():
            source.db.put(keys.kv_key(k), v)
        receiver = store.sm.receive_snapshot(
            eraftpb.SnapshotMetadata(index=index, term=term,
                                     conf_state=eraftpb.ConfState(voters=voters)))
        with SnapshotHandle(source.db) as handle:
            for chunk in handle.chunks(4096):
                receiver.write(chunk)
        return receiver.finish()


def snapshot_message(staged: StagedSnapshot, from_id: int, to_id: int) -> eraftpb.Message:
    meta = staged.metadata
    msg = eraftpb.Message(msg_type=eraftpb.MsgSnapshot, from_=from_id, to=to_id,
                          term=meta.term)
    msg.snapshot.metadata.CopyFrom(meta)
    return msg
