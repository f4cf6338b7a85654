"""The whole node under deterministic simulation (issue 15).

Each seed runs 3 or 5 real `kvraft.server.node.Node`s — their real Raft core, real
LevelDB stores in temporary directories, real peer service and snapshot staging — in
one process, on one event loop whose clock is virtual (loop.py), with the storage
lanes (lanes.py) and the network (network.py) simulated. Every choice — delays,
drops, duplicates, which fault when, disk latencies, Raft's election timeouts, the
clients' operations — comes from generators seeded by the seed, and nothing runs on
another thread, so a run is a pure function of its seed: the same seed gives the same
trace. FoundationDB's simulator and TigerBeetle's VOPR are the model.

Layouts: 3 or 5 voters; 3 voters + 2 learners; one voter + 2 or 4 learners (the
documented way to grow a one-node cluster; a single voter wins its elections at once,
which is what issue 11's item 1 needs). Learners are added by conf changes through the
real proposal path once the voters elect a leader.

Faults during the chaos phase: partitions, one-way cuts, heals; crashes (a power cut:
the queued persistence jobs and the unsynced applies are lost), crashes at the moment
a Ready's write was queued after its messages left, reboots; disk stalls of several
election timeouts; failed fsyncs (the node fails, a supervisor restarts it); pauses
(what reaches the member meanwhile is handed over at once); lossy, duplicating,
reordering links. Clients put, get and compare-and-swap all along, run two-key
transactions, hold leases (leases.py) and watch key ranges (watchers.py).

Checked after every step of the loop: the Raft properties tests/raft/sim.py's Checker
checks (Election Safety, Log Matching over every node's durable log, committed entries
never change, Leader Completeness, and no message carries a term or vote its sender
has not made durable); a node that fails on anything but an injected fsync failure is
a failure. At the end, after healing: liveness (a write commits and every member
applies it), every member holds the same state, every acknowledged write's entry is
the committed one at its index, and the whole history — final reads of every key on
every member included — is linearizable; every lease left expires and each watch client
received exactly the committed events of its range (README.md says what is checked).

    python -m tests.simcluster --seeds 20          # seeds 0..19 (make sim-cluster SEEDS=20)
    python -m tests.simcluster --seed 7 -v         # replay one with a trace (SEED=7)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kvraft.server import storage_adapter as sa
from kvraft.server.etcd.lessor import min_lease_ttl_s
from kvraft.storage import datadir as datadir_module
from kvraft.storage import mvcc
from tests.chaos import linearizability
from tests.chaos.linearizability import Kind
from tests.raft.network import InvariantViolation
from tests.raft.sim import Checker

from .cluster import (
    ELECTION_TICK,
    TICK_INTERVAL_S,
    HubOptions,
    SimCluster,
    client_address,
    peer_address,
)
from .events import EventOrder
from .lanes import DiskTiming, InjectedFsyncError
from .leases import TTLS_S, LeaseClients
from .loop import VirtualTimeLoop
from .network import NetworkFaults, SimNetwork
from .watchers import WatchClients
from .workload import TXN_GROUP, Workload

ELECTION_TIMEOUT_S = ELECTION_TICK * TICK_INTERVAL_S
CHAOS_S = 20.0                 # virtual seconds of faults and clients
SETUP_S_MAX = 60.0             # to elect a first leader and add the learners
LIVENESS_S_MAX = 60.0          # after healing: a write commits and every member applies it
CALL_TIMEOUT_S = 2.0           # a client call's deadline
RESTART_DELAY_S = (0.1, 3.0)   # a crashed member comes back after this long
SNAPSHOT_RECEIVER_PAUSE_SHARE = 0.3   # of the snapshots sent in the chaos phase
REPLAY = ("python -m tests.simcluster --seed {seed} -v{flags}   "
          "(or: make sim-cluster SEED={seed})")
LAYOUTS = [(3, 0), (5, 0), (3, 2), (1, 2), (1, 4)]


class SimFailure(AssertionError):
    """A property failed (or the run could not finish): the seed replays it."""


@dataclass
class Params:
    """Everything a seed decides before the run starts."""

    seed: int
    voters: int
    learners: int
    network: NetworkFaults
    timing: DiskTiming
    snapshot_entries: int
    snapshot_keep_entries: int
    fault_interval_s: float
    clients: int
    keys: int
    hub: HubOptions
    lease_clients: int
    watch_clients: int

    @classmethod
    def from_seed(cls, seed: int) -> Params:
        r = random.Random(f"simcluster-params-{seed}")
        voters, learners = LAYOUTS[seed % len(LAYOUTS)]
        delay_max_s = r.choice([0.002, 0.01, 0.05])
        persist_max_s = r.choice([0.002, 0.01, 0.03])
        # Mostly small logs: a member that falls behind needs a snapshot, so snapshots
        # travel often (and their staging is exercised); sometimes none at all.
        snapshot_entries = r.choice([4, 8, 8, 16, 50, 10_000])
        return cls(
            seed=seed, voters=voters, learners=learners,
            network=NetworkFaults(
                drop_rate=r.choice([0.0, 0.01, 0.05]), dup_rate=r.choice([0.0, 0.02, 0.1]),
                delay_min_s=0.001, delay_max_s=delay_max_s, fifo=r.random() < 0.3,
                snapshot_transfer_max_s=r.choice([0.01, 0.3, 1.0])),
            timing=DiskTiming(persist_min_s=0.0005, persist_max_s=persist_max_s,
                              apply_min_s=0.0002, apply_max_s=persist_max_s / 2),
            snapshot_entries=snapshot_entries,
            snapshot_keep_entries=r.choice([0, 1, 3]) if snapshot_entries < 10_000 else 1_000,
            fault_interval_s=r.choice([0.3, 1.0, 2.5]),
            clients=r.choice([2, 4, 6]),
            keys=r.choice([1, 3, 5]),
            # Drawn last: the draws above are what they were before these existed.
            hub=HubOptions(buffer_events_max=r.choice([1, 4, 64, 1024]),
                           chunk_events=r.choice([1, 3, 512]), reads_max=r.choice([1, 4]),
                           read_delay_max_s=r.choice([0.0, 0.005, 0.1])),
            lease_clients=r.choice([1, 2, 3]),
            watch_clients=r.choice([1, 2, 4]),
        )

    def describe(self) -> str:
        n = self.network
        return (f"seed {self.seed}: {self.voters} voters + {self.learners} learners; "
                f"net drop {n.drop_rate} dup {n.dup_rate} delay <= {n.delay_max_s * 1000:.0f} ms"
                f"{' fifo' if n.fifo else ''}; disk <= {self.timing.persist_max_s * 1000:.0f} ms;"
                f" snapshot every {self.snapshot_entries} keep {self.snapshot_keep_entries};"
                f" a fault every ~{self.fault_interval_s} s; {self.clients} clients on "
                f"{self.keys} keys; {self.lease_clients} lease and {self.watch_clients} "
                f"watch clients, watch buffers {self.hub.buffer_events_max} events")


class Simulation:
    # Relative weights of the faults the nemesis draws.
    FAULTS: ClassVar[dict[str, float]] = {
        "partition": 1.0, "heal": 1.5, "cut_one_way": 0.5, "crash": 1.0, "reboot": 0.7,
        "crash_before_fsync": 1.0, "stall": 0.8, "fsync_failure": 0.4, "pause": 1.5,
    }

    def __init__(self, seed: int, chaos_s: float = CHAOS_S, verbose: bool = False,
                 wire_check: bool = True, read_mode: str = "safe",
                 lease_watch: bool = True) -> None:
        self.p = Params.from_seed(seed)
        # Whether the lease and watch clients run (without them a seed runs as it did
        # before they existed: the seeds that found issue 11's bugs replay exactly).
        self.lease_watch = lease_watch
        # `kvraft serve --read-mode` of every member: "lease" runs the seed's history
        # through lease reads (thesis §6.4.1); the nodes share one clock here, so this
        # checks the lease against the network's faults, not against clock drift.
        self.read_mode = read_mode
        # Whether to check the durable-state rule on the wire; without it only its
        # consequences are checked (as tests/raft/sim.py --no-wire-check).
        self.wire_check = wire_check
        self.seed = seed
        self.chaos_s = chaos_s
        self.verbose = verbose
        self.rng = random.Random(seed)
        self.trace_lines: list[str] = []
        self.loop = VirtualTimeLoop()
        self._restarting: set[int] = set()
        self._failure: SimFailure | None = None
        self._chaos = False   # in the chaos phase (faults on)
        self.cluster: SimCluster
        self.checker: Checker
        self.workload: Workload

    # ----------------------------------------------------------------- tracing
    def trace(self, line: str) -> None:
        text = f"[{self.loop.time():9.4f}] {line}"
        self.trace_lines.append(text)
        if self.verbose:
            print(text, flush=True)

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace_lines).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------- setup
    def _build(self, root: Path) -> None:
        p = self.p
        ids = list(range(1, p.voters + p.learners + 1))
        network = SimNetwork(self.loop, random.Random(self.rng.getrandbits(64)), p.network,
                             lambda i: self.cluster.endpoint(i), self.trace)
        self.cluster = SimCluster(
            root, self.loop, random.Random(self.rng.getrandbits(64)), network, p.timing,
            ids[:p.voters], ids[p.voters:],
            {"snapshot_entries": p.snapshot_entries,
             "snapshot_keep_entries": p.snapshot_keep_entries,
             "snapshot_chunk_bytes": 4096, "read_mode": self.read_mode},
            self.trace, p.hub, tag=f"seed-{self.seed}", services=self.lease_watch)
        self.checker = Checker(self.cluster, wire_check=self.wire_check)  # type: ignore[arg-type]
        network.snapshot_hooks.append(self._on_snapshot_sent)
        self.event_order = EventOrder(lambda what: self._fail(f"events: {what}"))
        self.cluster.start_hooks.append(self.event_order.attach)
        network.on_violation = lambda e: self._fail(f"invariant: {e}")
        self.workload = Workload(self.cluster, random.Random(self.rng.getrandbits(64)),
                                 [b"k%d" % i for i in range(p.keys)], CALL_TIMEOUT_S,
                                 think_max_s=0.05, trace=self.trace)
        # Their own generators: a run without them draws from self.rng as before.
        self.leases = LeaseClients(self.cluster, random.Random(f"leases-{self.seed}"),
                                   CALL_TIMEOUT_S, min_lease_ttl_s(ELECTION_TIMEOUT_S),
                                   self.trace, lambda what: self._fail(f"leases: {what}"))
        self.cluster.start_hooks.append(self.leases.attach)
        self.watchers = WatchClients(self.cluster, random.Random(f"watchers-{self.seed}"),
                                     self.trace, lambda what: self._fail(f"watch: {what}"))

    def _after_step(self) -> None:
        """Run by the loop after each of its iterations."""
        if self._failure is not None or not self.cluster.dirty:
            return
        self.cluster.dirty = False
        try:
            self.checker.check()
        except InvariantViolation as e:
            self._fail(f"invariant: {e}")
            return
        for i in self.cluster.alive_ids():
            node = self.cluster.nodes[i].node
            assert node is not None
            fatal = node.fatal
            if fatal is None or i in self._restarting:
                continue
            if isinstance(fatal, InjectedFsyncError):
                # A supervisor restarts a member that failed on its disk.
                self._restarting.add(i)
                self.loop.call_soon(self._supervise, i)
            else:
                self._fail(f"node {i} failed: {type(fatal).__name__}: {fatal}")

    def _fail(self, what: str) -> None:
        if self._failure is not None:
            return
        self.trace(f"FAILED: {what}")
        self._failure = SimFailure(what)
        self.loop.stop()

    def _supervise(self, i: int) -> None:
        self.cluster.crash(i, "failed on its disk; the supervisor restarts it")
        self._schedule_restart(i)

    def _schedule_restart(self, i: int) -> None:
        self._restarting.add(i)
        self.loop.call_later(self.rng.uniform(*RESTART_DELAY_S), self._restart, i)

    def _restart(self, i: int) -> None:
        self._restarting.discard(i)
        if not self.cluster.nodes[i].alive:
            self.cluster.start(i)

    # ------------------------------------------------------------------ faults
    def _fault(self) -> None:
        names = list(self.FAULTS)
        name = self.rng.choices(names, weights=[self.FAULTS[n] for n in names])[0]
        getattr(self, f"_fault_{name}")()

    def _pick_alive(self) -> int | None:
        alive = [i for i in self.cluster.alive_ids() if i not in self._restarting]
        return self.rng.choice(alive) if alive else None

    def _fault_partition(self) -> None:
        ids = self.cluster.ids()
        self.rng.shuffle(ids)
        side = set(ids[:self.rng.randint(1, len(ids) // 2)])
        self.cluster.network.partition(side, ids)
        self.trace(f"partition {sorted(side)} | {sorted(set(ids) - side)}")

    def _fault_heal(self) -> None:
        self.cluster.network.heal()
        self.trace("heal")

    def _fault_cut_one_way(self) -> None:
        a, b = self.rng.sample(self.cluster.ids(), 2)
        self.cluster.network.cut_one_way(a, b)
        self.trace(f"cut {a} -> {b}")

    def _fault_crash(self) -> None:
        leader = self.cluster.leader()
        i = leader if leader is not None and self.rng.random() < 0.5 else self._pick_alive()
        if i is not None and i not in self._restarting:
            self.cluster.crash(i)
            self._schedule_restart(i)

    def _fault_reboot(self) -> None:
        i = self._pick_alive()
        if i is not None:
            self.cluster.crash(i, "reboot")
            self.cluster.start(i)

    def _fault_crash_before_fsync(self) -> None:
        """Crash a member before its queued writes are durable, after the messages
        of their Readys left: at the next write it queues, or at the end of a slow
        disk spell (every write queued meanwhile is lost — a power cut during a long
        fsync). The leader is the interesting one (its appends leave before its
        write); a member just restarted, too (its election's hard state is queued)."""
        leader = self.cluster.leader()
        i = leader if leader is not None and self.rng.random() < 0.7 else self._pick_alive()
        if i is not None and i not in self._restarting:
            self._arm_crash_before_fsync(i)

    def _arm_crash_before_fsync(self, i: int, restarted: bool = False) -> None:
        lanes = self.cluster.nodes[i].lanes
        assert lanes is not None

        def crash(why: str) -> None:
            if self.cluster.nodes[i].lanes is not lanes or i in self._restarting:
                return
            self.cluster.crash(i, why)
            # Reboot at once half of the time (a single voter must come back), and
            # sometimes crash it again before its first writes are durable.
            if self.rng.random() < 0.5:
                self.cluster.start(i)
                if self._chaos and self.rng.random() < 0.5:
                    self._arm_crash_before_fsync(i, restarted=True)
            else:
                self._schedule_restart(i)

        if not restarted and self.rng.random() < 0.5:
            lanes.on_persist_submitted = lambda: crash(
                "crash before the fsync of its queued write")
            self.trace(f"node {i}: will crash at its next queued write")
        else:
            # Just restarted: long enough for it to win an election and take writes.
            seconds = self.rng.uniform(ELECTION_TIMEOUT_S, ELECTION_TIMEOUT_S * 3) \
                if restarted else self.rng.uniform(0.05, ELECTION_TIMEOUT_S * 2)
            lanes.stall(seconds)
            self.loop.call_later(seconds * self.rng.uniform(0.5, 1.0), crash,
                                 "crash during a slow fsync")
            self.trace(f"node {i}: its disk stalls for {seconds:.3f} s, then it crashes")

    def _fault_stall(self) -> None:
        i = self._pick_alive()
        if i is not None:
            seconds = self.rng.uniform(0.1, 6 * ELECTION_TIMEOUT_S)
            lanes = self.cluster.nodes[i].lanes
            assert lanes is not None
            lanes.stall(seconds)
            self.trace(f"node {i}: disk stalls for {seconds:.3f} s")

    def _fault_pause(self) -> None:
        """The member's process is not scheduled for a while (a GC pause, a starved
        CPU): its disk waits, and what reaches it is handed over all at once after."""
        i = self._pick_alive()
        if i is not None:
            seconds = self.rng.uniform(0.05, 3 * ELECTION_TIMEOUT_S)
            lanes = self.cluster.nodes[i].lanes
            assert lanes is not None
            lanes.stall(seconds)
            self.cluster.network.pause(i, seconds)
            self.trace(f"node {i}: paused for {seconds:.3f} s")

    def _on_snapshot_sent(self, sender: int, to: int) -> None:
        """Sometimes pause the receiver of a snapshot: whatever else reaches it before
        it resumes — another leader's snapshot, a late copy — arrives together (issue
        11's item 2 needed two snapshots between two rounds)."""
        if self._chaos and self.rng.random() < SNAPSHOT_RECEIVER_PAUSE_SHARE:
            seconds = self.rng.uniform(0.05, 4 * ELECTION_TIMEOUT_S)
            lanes = self.cluster.nodes[to].lanes
            if lanes is not None:
                lanes.stall(seconds)
            self.cluster.network.pause(to, seconds)
            self.trace(f"node {to}: paused for {seconds:.3f} s while a snapshot from "
                       f"{sender} travels")

    def _fault_fsync_failure(self) -> None:
        i = self._pick_alive()
        if i is not None:
            written = self.rng.random() < 0.5
            lanes = self.cluster.nodes[i].lanes
            assert lanes is not None
            lanes.fail_next_persist(written)
            self.trace(f"node {i}: its next fsync fails ({'after' if written else 'before'}"
                       " the write)")

    async def _nemesis(self, until_s: float) -> None:
        while self.loop.time() < until_s:
            await asyncio.sleep(self.rng.expovariate(1.0 / self.p.fault_interval_s))
            if self.loop.time() < until_s:
                self._fault()

    # ------------------------------------------------------------------ phases
    async def _add_learners(self) -> None:
        """Grow the founding voters by the learners, through the leader's real
        proposal path (what `kvraft member add --learner` does)."""
        deadline = self.loop.time() + SETUP_S_MAX
        for learner in self.cluster.learners:
            while True:
                if self.loop.time() > deadline:
                    raise SimFailure(f"setup: learner {learner} was not added within "
                                     f"{SETUP_S_MAX} s")
                leader = self.cluster.leader()
                node = self.cluster.nodes[leader].node if leader is not None else None
                if node is not None and learner in node.learner_ids():
                    break
                if node is not None and not node.pending_conf_change():
                    cc = sa.member_conf_change(learner, peer_address(learner),
                                               client_address(learner), True, add=True,
                                               cc_id=self.rng.getrandbits(63) or 1)
                    with contextlib.suppress(Exception):
                        await node.propose_conf_change(cc, CALL_TIMEOUT_S)
                        self.trace(f"learner {learner} added")
                        break
                await asyncio.sleep(0.2)

    def _heal_all(self) -> None:
        c = self.cluster
        c.network.heal()
        c.network.faults = NetworkFaults(drop_rate=0.0, dup_rate=0.0,
                                         delay_min_s=self.p.network.delay_min_s,
                                         delay_max_s=self.p.network.delay_max_s,
                                         fifo=self.p.network.fifo)
        for i in c.ids():
            m = c.nodes[i]
            if m.lanes is not None:
                m.lanes.heal()
        self.trace("heal everything; faults off")

    async def _wait_restarted(self) -> None:
        while self._restarting:
            await asyncio.sleep(0.1)
        for i in self.cluster.ids():
            if not self.cluster.nodes[i].alive:
                self.cluster.start(i)

    async def _liveness(self) -> int:
        """A write commits and every member applies it; returns its index."""
        deadline = self.loop.time() + LIVENESS_S_MAX
        w = self.workload
        final_index = 0
        while final_index == 0:
            if self.loop.time() > deadline:
                raise SimFailure(f"liveness: no write committed within {LIVENESS_S_MAX} s "
                                 f"of healing ({self._states()})")
            leader = self.cluster.leader()
            if leader is None:
                await asyncio.sleep(0.1)
                continue
            op = await w.one(-1, leader, Kind.PUT, w.keys[0])
            if op is not None:
                final_index = w.acked[-1].index
        while not all(self._applied(i) >= final_index for i in self.cluster.ids()):
            if self.loop.time() > deadline:
                raise SimFailure(f"liveness: not every member applied {final_index} within "
                                 f"{LIVENESS_S_MAX} s of healing ({self._states()})")
            await asyncio.sleep(0.1)
        self.trace(f"liveness: every member applied the final write at {final_index}")
        return final_index

    def _applied(self, i: int) -> int:
        store = self.cluster.nodes[i].store
        return store.sm.applied_index if store is not None else -1

    def _states(self) -> str:
        parts = []
        for i in self.cluster.ids():
            m = self.cluster.nodes[i]
            if m.node is None or m.store is None:
                parts.append(f"{i}: down")
                continue
            r = m.node.raw.raft
            parts.append(f"{i}: {r.state.name} term {r.term} commit {r.raft_log.committed} "
                         f"applied {m.store.sm.applied_index}")
        return "; ".join(parts)

    async def _final_reads(self) -> None:
        """Every key read linearizably on every member (into the history): an
        acknowledged write lost anywhere shows as a read the history cannot explain."""
        w = self.workload
        for i in self.cluster.ids():
            for key in (*w.keys, TXN_GROUP):
                for _attempt in range(20):
                    if await w.one(-2, i, Kind.GET, key) is not None:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise SimFailure(f"liveness: member {i} could not serve a read of {key!r}")

    async def _same_state(self) -> None:
        members = [self.cluster.nodes[i] for i in self.cluster.ids()]
        deadline = self.loop.time() + LIVENESS_S_MAX
        while len({self._applied(m.id) for m in members}) != 1:
            if self.loop.time() > deadline:
                raise SimFailure(f"members did not reach the same applied index ({self._states()})")
            await asyncio.sleep(0.1)
        states = {}
        for m in members:
            assert m.store is not None
            kvs, more = m.store.sm.scan(b"", b"", 100_000)
            assert not more
            states[m.id] = kvs
        first = states[members[0].id]
        for i, kvs in states.items():
            if kvs != first:
                raise SimFailure(f"member {i} holds another state than member {members[0].id} "
                                 f"at the same applied index: {kvs} vs {first}")
        # The MVCC view of the same state: revisions, versions and the store's revision.
        versioned = {}
        for m in members:
            assert m.store is not None
            sm = m.store.sm
            everything = sm.range(mvcc.RangeRequest(b"\0", b"\0"))
            versioned[m.id] = (sm.revision, list(everything.kvs))
        first_v = versioned[members[0].id]
        for i, state in versioned.items():
            if state != first_v:
                raise SimFailure(f"member {i} holds another MVCC state than member "
                                 f"{members[0].id}: revision {state[0]} vs {first_v[0]}")

    async def _leases_gone(self) -> None:
        """Every lease left (abandoned, kept alive until the clients stopped, or granted
        by a call whose outcome is unknown) expires on the stable leader and is gone,
        with its keys, from every member, within its TTL and a few election timeouts."""
        bound_s = max(TTLS_S) + 3 * ELECTION_TIMEOUT_S + 3.0
        deadline = self.loop.time() + bound_s
        while True:
            left = {i: self.leases.left_on(self.cluster.nodes[i]) for i in self.cluster.ids()
                    if self.cluster.nodes[i].store is not None}
            if not any(left.values()):
                break
            if self.loop.time() > deadline:
                raise SimFailure(f"leases: still there {bound_s:.1f} s after the clients "
                                 f"stopped (lease ids, then the lease of each key left): "
                                 f"{ {i: [f'{x:x}' for x in v] for i, v in left.items()} } "
                                 f"({self._states()})")
            await asyncio.sleep(0.1)
        self.trace("leases: every lease and its keys gone from every member")

    async def _watchers_drained(self, watchers: list[asyncio.Task[None]]) -> None:
        """Every member holds the final revision: each watch client receives everything
        up to it, then stops."""
        m = self.cluster.nodes[self.cluster.ids()[0]]
        assert m.store is not None
        self.watchers.final_revision = m.store.sm.revision
        done, pending = await asyncio.wait(watchers, timeout=LIVENESS_S_MAX)
        for task in done:
            if task.exception() is not None:
                raise SimFailure(f"watch: a client failed: {task.exception()!r}")
        if pending:
            late = [r.describe() for r in self.watchers.records if not r.done]
            raise SimFailure(f"watch: {late} did not receive everything up to revision "
                             f"{self.watchers.final_revision} within {LIVENESS_S_MAX} s")
        self.trace(f"watch: every client received everything up to revision "
                   f"{self.watchers.final_revision}")

    async def _main(self) -> None:
        c = self.cluster
        for i in c.ids():
            c.start(i)
        await self._add_learners()
        self.trace(f"setup done: {self._states()}")
        chaos_end = self.loop.time() + self.chaos_s
        clients = [self.loop.create_task(self.workload.client(k))
                   for k in range(self.p.clients)]
        watchers: list[asyncio.Task[None]] = []
        if self.lease_watch:
            clients += [self.loop.create_task(self.leases.client(k))
                        for k in range(self.p.lease_clients)]
            watchers = [self.loop.create_task(self.watchers.client(k))
                        for k in range(self.p.watch_clients)]
        self._chaos = True
        await self._nemesis(chaos_end)
        self._chaos = False
        self._heal_all()
        await self._wait_restarted()
        await self._liveness()
        self.workload.stopping = self.leases.stopping = True
        await asyncio.wait(clients, timeout=CALL_TIMEOUT_S * 3)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        if self.lease_watch:
            await self._leases_gone()
        await self._final_reads()
        await self._same_state()
        if watchers:
            await self._watchers_drained(watchers)
        for i in c.ids():
            await c.stop(i)

    # --------------------------------------------------------------------- run
    def _check_history(self) -> None:
        canonical = self.checker.canonical
        for a in self.workload.acked:
            entry = canonical.get(a.index)
            if entry is None or entry[2] != a.data:
                raise SimFailure(f"acknowledged write lost: {a.what} was applied at "
                                 f"{a.index}, but the committed entry there is "
                                 f"{'unknown' if entry is None else entry[:2]}")
        result = linearizability.check(self.workload.history)
        if not result.ok:
            raise SimFailure(f"history: {result.describe()}")
        if self.lease_watch:
            for what, failure in (("watch", self.watchers.check(self.event_order)),
                                  ("leases", self.leases.check_atomic(self.event_order))):
                if failure is not None:
                    raise SimFailure(f"{what}: {failure}")

    def run(self, root: Path) -> dict[str, Any]:
        self._build(root)
        self.trace(self.p.describe())
        asyncio.set_event_loop(self.loop)
        self.loop.after_step = self._after_step
        main = self.loop.create_task(self._main())
        try:
            self.loop.run_until_complete(main)
        except RuntimeError:
            if self._failure is None:   # "Event loop stopped before Future completed."
                raise
        finally:
            self.loop.after_step = None
            self._shutdown(main)
        if self._failure is not None:
            raise self._failure
        self._check_history()
        return {
            "virtual_s": round(self.loop.time(), 1),
            "steps": self.loop.steps,
            "committed": len(self.checker.canonical),
            "terms": len(self.checker.leader_of_term),
            "crashes": self.cluster.crashes,
            "persist_jobs_lost": self.cluster.jobs_lost,
            "snapshots_delivered": self.cluster.network.snapshots_delivered,
            "revisions": len(self.event_order.by_revision),
            "ops": dict(sorted(self.workload.stats.items())),
            "leases": dict(sorted(self.leases.stats.items())),
            "watch_events": self.watchers.events_received(),
            "trace": self.digest(),
        }

    def _shutdown(self, main: asyncio.Task[None]) -> None:
        """Close every store and the loop, whatever happened."""
        loop = self.loop
        if not main.done():
            main.cancel()
        for i in self.cluster.ids():
            m = self.cluster.nodes[i]
            if m.node is not None:
                self.cluster.crash(i, "end of run")
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        asyncio.set_event_loop(None)
        loop.close()


@contextlib.contextmanager
def _seeded_incarnations(rng: random.Random) -> Any:
    """Data-directory incarnations from the seed (they travel in every batch)."""
    original = datadir_module.new_incarnation
    datadir_module.new_incarnation = lambda: rng.getrandbits(64) or 1
    try:
        yield
    finally:
        datadir_module.new_incarnation = original


@contextlib.contextmanager
def _node_logs(verbose: bool) -> Any:
    """The nodes log every election and member change, thousands per run: only into a
    verbose trace (a failure is reported by the run itself)."""
    kvraft_log = logging.getLogger("kvraft")
    saved = kvraft_log.level, kvraft_log.propagate
    kvraft_log.setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    kvraft_log.propagate = not verbose
    try:
        yield
    finally:
        kvraft_log.setLevel(saved[0])
        kvraft_log.propagate = saved[1]


def _scratch_root() -> Path:
    shm = Path("/dev/shm")   # fsyncs cost nothing there; the run's work is the point
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kvraft-simcluster-", dir=base))


def run_seed(seed: int, chaos_s: float = CHAOS_S, verbose: bool = False,
             on_start: Callable[[Simulation], None] | None = None, wire_check: bool = True,
             read_mode: str = "safe", lease_watch: bool = True
             ) -> tuple[str | None, dict[str, Any]]:
    """Run one seed: (None, its statistics) if every property held, else (the failure
    with its replay line, {})."""
    root = _scratch_root()
    sim = Simulation(seed, chaos_s, verbose, wire_check, read_mode, lease_watch)
    if on_start is not None:
        on_start(sim)
    try:
        with _seeded_incarnations(random.Random(f"incarnations-{seed}")), \
                _node_logs(verbose):
            stats = sim.run(root)
        return None, stats
    except Exception as err:
        detail = (traceback.format_exc() if verbose and not isinstance(err, SimFailure)
                  else "".join(traceback.format_exception_only(type(err), err))).strip()
        flags = ("" if wire_check else " --no-wire-check") + \
            ("" if lease_watch else " --no-lease-watch")
        mode = "" if read_mode == "safe" else f" --read-mode {read_mode}"
        return (f"seed {seed} FAILED at {sim.loop.time():.3f} s ({sim.p.describe()}): "
                f"{detail}\n  replay: {REPLAY.format(seed=seed, flags=mode + flags)}"), {}
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _TraceLogs(logging.Handler):
    """The nodes' own log lines, in the verbose trace, at virtual time."""

    def __init__(self) -> None:
        super().__init__()
        self.sim: Simulation | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.sim is not None:
            text = f"[{self.sim.loop.time():9.4f}]   {record.levelname.lower()}: " \
                   f"{record.getMessage()}"
            print(text, flush=True)
            if record.exc_info:
                traceback.print_exception(*record.exc_info, file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.simcluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--seeds", type=int, default=20, help="run seeds FIRST..FIRST+N-1")
    group.add_argument("--seed", type=int, help="run exactly this seed")
    ap.add_argument("--first", type=int, default=0, help="first seed of --seeds")
    ap.add_argument("--chaos-s", type=float, default=CHAOS_S,
                    help="virtual seconds of faults and clients per seed")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="trace every event, with the nodes' own log lines")
    ap.add_argument("--no-wire-check", dest="wire_check", action="store_false",
                    help="do not check that messages carry only durable terms and votes; "
                         "check only the consequences of breaking that rule")
    ap.add_argument("--read-mode", choices=("safe", "lease"), default="safe",
                    help="the members' `kvraft serve --read-mode`")
    ap.add_argument("--no-lease-watch", dest="lease_watch", action="store_false",
                    help="no lease and watch clients: the run is what it was before they "
                         "existed (the seeds of tests/simcluster/README.md replay so)")
    args = ap.parse_args(argv)
    kvraft_log = logging.getLogger("kvraft")
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started = time.monotonic()
    failures = []
    for seed in seeds:
        handler = _TraceLogs()
        if args.verbose:
            kvraft_log.addHandler(handler)
            print(Params.from_seed(seed).describe())
        failure, stats = run_seed(seed, args.chaos_s, args.verbose,
                                  on_start=lambda sim, h=handler: setattr(h, "sim", sim),
                                  wire_check=args.wire_check, read_mode=args.read_mode,
                                  lease_watch=args.lease_watch)
        kvraft_log.removeHandler(handler)
        if failure:
            failures.append(failure)
            print(failure, flush=True)
        else:
            print(f"seed {seed} ok: {stats}", flush=True)
    elapsed = time.monotonic() - started
    print(f"{len(seeds) - len(failures)}/{len(seeds)} seeds passed in {elapsed:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
