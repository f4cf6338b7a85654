"""In-process nodes for tests: a real Node over a real store in a temporary directory,
driven on the test's own event loop (no gRPC servers; peers, when named, are loopback
ports where nothing listens, so every message to them is dropped by the transport)."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import StateRole
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


class InProcessCluster:
    """`n` real Nodes on this event loop, each with its own store and a real gRPC peer
    server on loopback, so Raft traffic crosses the real transport and peer service.
    Use `async with InProcessCluster(...) as cluster:`; leaving stops every node and
    server and closes every store, also when the test fails."""

    def __init__(self, root: Path, n: int = 3, **config_overrides: Any) -> None:
        self.root = root
        self.n = n
        self.config_overrides = config_overrides
        self.nodes: dict[int, Node] = {}
        self.stores: dict[int, Store] = {}
        self._servers: list[Any] = []

    async def __aenter__(self) -> InProcessCluster:
        import grpc

        from kvraft.proto import peer_pb2_grpc
        from kvraft.server.peer_service import PeerService

        initial = {i: f"127.0.0.1:{free_port()}" for i in range(1, self.n + 1)}
        try:
            for i in initial:
                config = node_config(self.root / f"n{i}", node_id=i, members=self.n,
                                     **self.config_overrides)
                config.initial_cluster = initial
                config.peer_listen = initial[i]
                node, store = open_node(config)
                self.nodes[i], self.stores[i] = node, store
                server = grpc.aio.server()
                peer_pb2_grpc.add_PeerServicer_to_server(PeerService(node), server)
                assert server.add_insecure_port(initial[i]) != 0
                self._servers.append(server)
                await server.start()
            for node in self.nodes.values():
                node.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.stop()
        for server in self._servers:
            await server.stop(0)
        for store in self.stores.values():
            store.close()

    def leader(self) -> int:
        """The id every node agrees leads, or 0."""
        views = {node.raw.raft.leader_id for node in self.nodes.values()}
        if len(views) != 1:
            return 0
        (leader,) = views
        return leader if leader and self.nodes[leader].raw.raft.state is StateRole.Leader else 0

    async def wait_leader(self, timeout_s: float = 20.0) -> int:
        return await wait_for(self.leader, timeout_s, "an agreed leader")

    def leader_changes(self) -> float:
        return sum(node.metrics.registry.get_sample_value("kvraft_leader_changes_total") or 0
                   for node in self.nodes.values())


class StallGate:
    """Stalls a store's storage writes, as LevelDB stalls every writer while its
    compaction is behind: while armed, each write waits (in whatever thread called it)
    until released. Also records any write called on the event loop's thread."""

    WRITES = (("log", "persist"), ("log", "compact"), ("sm", "apply"),
              ("sm", "install_snapshot"))
    WAIT_MAX_S = 60.0   # a test that forgets to release cannot hang forever

    def __init__(self) -> None:
        import threading

        self._released = threading.Event()
        self._released.set()
        self.stalled_calls = 0
        self.loop_thread = threading.current_thread()
        self.calls_on_loop: list[str] = []

    def install(self, store: Store) -> None:
        for part, name in self.WRITES:
            target = getattr(store, part)
            setattr(target, name, self._wrap(getattr(target, name), f"{part}.{name}"))

    def _wrap(self, fn: Callable[..., Any], what: str) -> Callable[..., Any]:
        import threading

        def stalled(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is self.loop_thread:
                self.calls_on_loop.append(what)
            if not self._released.is_set():
                self.stalled_calls += 1
                self._released.wait(self.WAIT_MAX_S)
            return fn(*args, **kwargs)

        return stalled

    def arm(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()


class LagProbe:
    """How late the event loop runs: polls every `interval_s` and keeps the largest
    delay beyond it."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.max_lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.interval_s)
            self.max_lag_s = max(self.max_lag_s, time.monotonic() - t0 - self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
