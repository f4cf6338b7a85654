"""Simulated members: real Nodes over real stores, started, crashed and restarted.

A member is one node id and its data directory, across incarnations. `start` opens the
store (`open_store`, as `kvraft serve` does: bootstrap or recovery), builds a real
`Node` with the simulation's storage lanes, transport, virtual clock and a seeded
generator, and a real `PeerService` for it. `crash` is a power cut of that process:
its tasks vanish mid-await, the persistence jobs still queued are never written, the
state machine's applies not yet in a synced batch are lost (apply_buffer.py), and the
database is closed as the OS would release it. `stop` is a clean shutdown.

Each incarnation also runs the member's lessor (kvraft/server/etcd/lessor.py: its
deadlines on the node's virtual clock, its timer a task on the loop) and its watch hub
(watch_hub.py: catch-up reads delivered on the loop after a drawn delay, as from a
thread), the two the lease and watch clients use; a crash cancels their tasks with the
node's.

`SimCluster` is also the `net` that tests/raft/sim.py's Checker reads: `nodes` (id ->
member, whose `raw` is its live RawNode and `storage` its DiskMirror), `ids()`,
`alive_ids()` and the hooks it registers (applied entries, restarts, messages sent).
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import RawNode, StateRole
from kvraft.server.config import NodeConfig
from kvraft.server.etcd.lessor import Lessor
from kvraft.server.etcd.watch_hub import WatchHub
from kvraft.server.metrics import NodeMetrics
from kvraft.server.node import Node
from kvraft.server.peer_service import PeerService
from kvraft.server.storage_adapter import Store, open_store

from .disk import DiskMirror
from .lanes import DiskTiming, SimLanes
from .network import SimNetwork, SimTransport

log = logging.getLogger("kvraft.simcluster")

TICK_INTERVAL_S = 0.05
ELECTION_TICK = 10


def peer_address(node_id: int) -> str:
    return f"127.0.0.1:{21000 + node_id}"   # a name on the simulated network only


def client_address(node_id: int) -> str:
    return f"127.0.0.1:{22000 + node_id}"


@dataclass
class _NoState:
    """What Checker.on_restore reads of a restored state machine: the KV state machine
    keeps no applied sequence (its restart is checked through the log and the apply
    hook instead)."""

    applied: list[Any] = field(default_factory=list)
    base_index: int = 0


class SimMember:
    """One node id across its incarnations.

    Holds, always: `node`, `store`, `lanes`, `service` are all set (alive) or all None
    (down), and so are `lessor` and `hub` when the cluster runs them; `disk` is the
    mirror of its durable log whatever the state; `client_tasks` are the client calls
    running on the live incarnation, cancelled by a crash.
    """

    def __init__(self, node_id: int, config: NodeConfig) -> None:
        self.id = node_id
        self.config = config
        self.disk = DiskMirror(node_id)
        self.node: Node | None = None
        self.store: Store | None = None
        self.lanes: SimLanes | None = None
        self.service: PeerService | None = None
        self.lessor: Lessor | None = None
        self.hub: WatchHub | None = None
        self.transport: SimTransport | None = None
        # Insertion-ordered (a set of tasks would iterate in address order: not repeatable).
        self.client_tasks: dict[asyncio.Task[Any], None] = {}
        self.incarnations = 0
        self.read_states: list[Any] = []   # the Checker's ReadIndex check: unused here

    @property
    def alive(self) -> bool:
        return self.node is not None

    @property
    def raw(self) -> RawNode:
        assert self.node is not None, f"node {self.id} is down"
        return self.node.raw

    @property
    def storage(self) -> DiskMirror:
        return self.disk


@dataclass
class HubOptions:
    """The watch hubs' bounds (small ones make watchers overflow and catch up) and how
    long a catch-up read takes: it reads the store at its start or at its end (a thread
    takes its LevelDB snapshot at some instant in between), the fan-out going on."""

    buffer_events_max: int = 1024
    chunk_events: int = 512
    reads_max: int = 4
    read_delay_max_s: float = 0.0


class SimCluster:
    def __init__(self, root: Path, loop: asyncio.AbstractEventLoop, rng: random.Random,
                 network: SimNetwork, timing: DiskTiming, voters: list[int],
                 learners: list[int], config_overrides: dict[str, Any],
                 trace: Callable[[str], None], hub_options: HubOptions | None = None,
                 tag: str = "", services: bool = True) -> None:
        self.loop = loop
        # Whether members run a lessor and a watch hub (a run without their clients
        # leaves them out, and is then the run it was before they existed).
        self.services = services
        self.tag = tag   # the run's name, in the seeds of the members' own generators
        self.hub_options = hub_options or HubOptions()
        self.rng = rng
        self.network = network
        self.timing = timing
        self.trace = trace
        self.voters = voters
        self.learners = learners
        founding = {i: peer_address(i) for i in voters}
        self.nodes: dict[int, SimMember] = {}
        for i in voters + learners:
            config = NodeConfig(
                node_id=i, data_dir=root / f"n{i}", listen=client_address(i),
                peer_listen=peer_address(i), initial_cluster=dict(founding),
                join=i in learners, tick_interval_s=TICK_INTERVAL_S,
                election_tick=ELECTION_TICK, **config_overrides)
            self.nodes[i] = SimMember(i, config)
        # The Checker's hooks (tests/raft/sim.py registers into these).
        self.applied_hooks: list[Callable[[SimMember, eraftpb.Entry], None]] = []
        self.restore_hooks: list[Callable[[SimMember, Any], None]] = []
        # Called with (member id, Node) for each Node made, before it starts.
        self.start_hooks: list[Callable[[int, Node], None]] = []
        self.send_hooks = network.send_hooks
        self.crashes = 0
        self.jobs_lost = 0
        # Set whenever something the Checker reads may have changed (a round, a
        # persisted or applied batch, a disk write, a crash or start); the simulation
        # checks after the loop iterations that set it, and clears it.
        self.dirty = True

    # ------------------------------------------------------- the Checker's net
    def ids(self) -> list[int]:
        return list(self.nodes)

    def alive_ids(self) -> list[int]:
        return [i for i, m in self.nodes.items() if m.alive]

    def endpoint(self, node_id: int) -> tuple[Node, PeerService] | None:
        m = self.nodes[node_id]
        if m.node is None or m.service is None or m.node.stopping:
            return None
        return m.node, m.service

    def leader(self) -> int | None:
        """The live leader of the highest term, if any."""
        best: tuple[int, int] | None = None
        for i in self.alive_ids():
            r = self.nodes[i].raw.raft
            if r.state == StateRole.Leader and (best is None or r.term > best[0]):
                best = (r.term, i)
        return best[1] if best else None

    # ------------------------------------------------------------- lifecycle
    def start(self, node_id: int) -> None:
        m = self.nodes[node_id]
        assert not m.alive
        store = open_store(m.config)
        if m.incarnations:
            m.disk.reverted = True   # the crash may have lost writes: re-derive checks
        m.disk.attach(store, lambda e, m=m: self._applied(m, e))
        lanes = SimLanes(self.loop, random.Random(self.rng.getrandbits(64)), self.timing)
        transports: list[SimTransport] = []

        def transport(node: Node) -> SimTransport:
            t = SimTransport(self.network, node)
            transports.append(t)
            return t

        node = Node(m.config, store, NodeMetrics(), io=lanes, transport=transport,
                    clock=self.loop.time, rng=random.Random(self.rng.getrandbits(64)))
        self._watch(node)
        lessor: Lessor | None = None
        hub: WatchHub | None = None
        if self.services:
            lessor, hub = self._services(node_id, m, node, store)
        for start_hook in self.start_hooks:
            start_hook(node_id, node)
        m.node, m.store, m.lanes, m.transport = node, store, lanes, transports[0]
        m.lessor, m.hub = lessor, hub
        m.service = PeerService(node)
        m.incarnations += 1
        self.dirty = True
        for hook in self.restore_hooks:
            hook(m, _NoState())
        if lessor is not None:
            lessor.start()
        node.start()
        self.trace(f"node {node_id}: started (incarnation {m.incarnations}, term "
                   f"{node.raw.raft.term}, applied {store.sm.applied_index}, log "
                   f"{store.log.first_index()}..{store.log.last_index()})")

    def _services(self, node_id: int, m: SimMember, node: Node, store: Store
                  ) -> tuple[Lessor, WatchHub]:
        """The member's lessor and watch hub, as `kvraft serve` attaches them (before the
        node starts; the lessor's timer starts with it)."""
        # Seeded from the run, member and incarnation, not from self.rng (whose draws
        # stay those of a run without them).
        tag = f"{self.tag}-{node_id}-{m.incarnations}"
        ids, hub_rng = random.Random(f"lessor-{tag}"), random.Random(f"hub-{tag}")
        o = self.hub_options
        hub = WatchHub(store.sm, buffer_events_max=o.buffer_events_max,
                       chunk_events=o.chunk_events, reads_max=o.reads_max,
                       read=lambda read: self._hub_read(hub_rng, read))
        node.apply_listeners.append(hub.on_applied)
        lessor = Lessor(node, request_ids=lambda: ids.getrandbits(63) or 1)
        lessor.attach()
        return lessor, hub

    def _watch(self, node: Node) -> None:
        """Mark the cluster dirty whenever the node's Raft state may change: its
        rounds, and what its persister and apply task report (the callbacks they
        were given; wrapped on the instances)."""
        for owner, name in ((node, "_round"), (node.persister, "_persisted"),
                            (node.applier, "_applied")):
            inner = getattr(owner, name)

            def watched(*args: Any, _inner: Callable[..., None] = inner) -> None:
                self.dirty = True
                _inner(*args)

            setattr(owner, name, watched)

    async def _hub_read(self, rng: random.Random, read: Callable[[], list[Any]]
                        ) -> list[Any]:
        """A catch-up read as a thread would run it: the store read at the start or at
        the end of a drawn delay (a crash cancels the hub's reads with its tasks)."""
        delay_s = rng.uniform(0.0, self.hub_options.read_delay_max_s)
        if rng.random() < 0.5:
            events = read()
            await asyncio.sleep(delay_s)
            return events
        await asyncio.sleep(delay_s)
        return read()

    def _applied(self, m: SimMember, entry: eraftpb.Entry) -> None:
        for hook in self.applied_hooks:
            hook(m, entry)

    def crash(self, node_id: int, why: str = "crash") -> None:
        """A power cut of the member's process (see the module docstring)."""
        m = self.nodes[node_id]
        node, store, lanes = m.node, m.store, m.lanes
        assert node is not None and store is not None and lanes is not None
        lost = lanes.crash()
        self.jobs_lost += lost
        self.crashes += 1
        for task in list(m.client_tasks):
            task.cancel()
        m.client_tasks.clear()
        # The process is gone: its tasks end where they are.
        for task in [*node._tasks, *(m.lessor.tasks() if m.lessor else ())]:
            task.cancel()
        if m.hub is not None:
            m.hub.close()
        if m.transport is not None:
            m.transport.closed = True
        self.network.cancel_tasks_of(node)
        m.disk.detach()
        # The applies not yet in a synced batch die with the process (apply_buffer.py);
        # everything LevelDB acknowledged with sync=True stays.
        store.datadir.apply_buffer.discard()
        store.close()
        m.node = m.store = m.lanes = m.service = m.transport = None
        m.lessor = m.hub = None
        self.dirty = True
        self.trace(f"node {node_id}: {why} ({lost} persistence jobs lost)")

    async def stop(self, node_id: int) -> None:
        """A clean shutdown (the end of the run)."""
        m = self.nodes[node_id]
        if m.node is None or m.store is None:
            return
        if m.lessor is not None:
            await m.lessor.stop()
        if m.hub is not None:
            m.hub.close()
        await m.node.stop()
        m.disk.detach()
        m.store.close()
        m.node = m.store = m.lanes = m.service = m.transport = None
        m.lessor = m.hub = None
