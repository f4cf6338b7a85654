"""A deterministic in-process network of RawNodes, for the Raft tests and the simulation.

Each node is driven the way a real application drives `kvraft.raft` (SPEC §1):
ready -> send `messages()` -> persist snapshot / entries / hard state -> send
`persisted_messages()` -> apply committed entries -> advance. In `async_persist` mode the
write is queued instead (`advance_append_async`) and completed later by `persist()`,
which sends the persisted messages and calls `on_persist_ready(number)`; a crash in
between loses the write, exactly as a crash before fsync would. `crash_during_ready()`
crashes a node after it sent a Ready's `messages()` and before that Ready's write, in
either mode.

Faults are injected between the nodes: drop (by link, by type, by filter, at random),
partition, isolate, delay, duplicate, reorder, and crash-restart, where a node comes
back with only what its storage had persisted. All randomness comes from one seeded
`random.Random`, so a run is a pure function of its seed.
"""
from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvraft.raft import (
    Config,
    MemStorage,
    ProposalDropped,
    RawNode,
    SnapshotStatus,
    SnapshotTemporarilyUnavailableError,
    StateRole,
    StepPeerNotFound,
    eraftpb,
)

if TYPE_CHECKING:
    from kvraft.raft.raft import Raft
    from kvraft.raft.storage import RaftState

# Bounds on every loop the harness runs, so a livelock fails a test instead of hanging it.
STABILIZE_ROUNDS_MAX = 10_000
READY_PER_NODE_MAX = 1_000
DEFAULT_ELECTION_TICK = 10
DEFAULT_HEARTBEAT_TICK = 1


class InvariantViolation(AssertionError):
    """A safety property of Raft observed broken by the harness itself."""


def msg_name(msg_type: int) -> str:
    return eraftpb.MessageType.Name(msg_type)


def describe(msg: eraftpb.Message) -> str:
    return (
        f"{msg_name(msg.msg_type)} {msg.from_}->{msg.to} term={msg.term} "
        f"log_term={msg.log_term} index={msg.index} commit={msg.commit} "
        f"entries={len(msg.entries)} reject={msg.reject}"
    )


def conf_state(voters: Iterable[int], learners: Iterable[int] = ()) -> eraftpb.ConfState:
    return eraftpb.ConfState(voters=sorted(voters), learners=sorted(learners))


def entry_key(e: eraftpb.Entry) -> tuple[int, int, bytes]:
    """What two logs must agree on at one index: term, type, payload."""
    return (e.term, int(e.entry_type), bytes(e.data))


@dataclass
class StateMachine:
    """The application's state: every applied entry, in order, and the configuration.

    Not durable on its own: after a crash it is rebuilt from the storage's snapshot
    and by re-applying the committed log, as an application without its own durable
    state machine would. For the same reason the storage's ConfState is only ever the
    configuration as of its snapshot (set when compacting or installing a snapshot):
    a restarted RawNode starts from it and re-applies the later conf-change entries.
    """

    # (index, term, entry type, data) of every applied entry, contiguous from base_index + 1
    applied: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    base_index: int = 0  # index covered by the snapshot this state was restored from
    conf_state: eraftpb.ConfState = field(default_factory=eraftpb.ConfState)
    # (index, configuration from that index on), for compacting below the applied index
    conf_history: list[tuple[int, eraftpb.ConfState]] = field(default_factory=list)

    def set_conf(self, index: int, cs: eraftpb.ConfState) -> None:
        self.conf_history.append((index, self.conf_state))
        self.conf_state = cs

    def conf_at(self, index: int) -> eraftpb.ConfState:
        """The configuration in force once `index` is applied."""
        assert index <= self.applied_index
        for changed_at, before in self.conf_history:
            if changed_at > index:
                return before
        return self.conf_state

    @property
    def applied_index(self) -> int:
        return self.applied[-1][0] if self.applied else self.base_index

    def encode(self) -> bytes:
        return json.dumps(
            [[i, t, k, d.hex()] for i, t, k, d in self.applied], separators=(",", ":")
        ).encode()

    @classmethod
    def decode(cls, data: bytes, meta: eraftpb.SnapshotMetadata) -> StateMachine:
        rows = json.loads(data.decode()) if data else []
        applied = [(i, t, k, bytes.fromhex(d)) for i, t, k, d in rows if i <= meta.index]
        cs = eraftpb.ConfState()
        cs.CopyFrom(meta.conf_state)
        return cls(applied=applied, base_index=meta.index, conf_state=cs)

    def data_upto(self, index: int) -> list[bytes]:
        return [d for i, _t, k, d in self.applied if k == eraftpb.EntryNormal and d and i <= index]


def _no_commit_below_snapshot(hs: eraftpb.HardState, mem: MemStorage) -> eraftpb.HardState:
    """A hard state queued before a compaction may reach the disk after it; the disk's
    commit index must still cover its snapshot (everything compacted was committed)."""
    floor = mem.first_index() - 1
    if hs.commit >= floor:
        return hs
    raised = eraftpb.HardState()
    raised.CopyFrom(hs)
    raised.commit = floor
    return raised


class SimStorage:
    """MemStorage as the node's disk, plus a plain mirror of the persisted log that the
    invariant checks read, and snapshots built from the application's state.

    `snapshot()` is the application's job in a real deployment (raft only asks for it):
    it is taken at the applied index and carries the applied entries as its data, so a
    follower restored from it continues the same applied sequence.
    """

    def __init__(self, cs: eraftpb.ConfState | None, async_persist: bool = False) -> None:
        self.mem = MemStorage.new_with_conf_state(cs) if cs is not None else MemStorage()
        # In async mode the Raft core reads its entries from storage as soon as the
        # Ready is handed back (advance_append_async), before they are durable: `mem` is
        # what is readable, `durable` what survives a crash (fed by persist()).
        self.durable: MemStorage | None = copy.deepcopy(self.mem) if async_persist else None
        self.durable_snap: tuple[bytes, eraftpb.SnapshotMetadata] = (
            b"", eraftpb.SnapshotMetadata())
        self.reverted = False  # set by a crash that lost non-durable writes
        # Persisted log as plain tuples: mirror[k] is the entry at mirror_base + 1 + k.
        self.mirror: list[tuple[int, int, bytes]] = []
        self.mirror_base = 0
        self.version = 0  # bumped whenever the persisted log changes
        self.snap_data = b""
        self.snap_meta = eraftpb.SnapshotMetadata()
        self.state_fn: Callable[[], StateMachine] | None = None
        self.unavailable_snapshots = 0  # the next N snapshot() calls raise "temporarily"
        self.truncated_below: list[int] = []  # first index of each suffix replaced by append

    # -- Storage protocol (what the Raft core reads) --
    def initial_state(self) -> RaftState:
        return self.mem.initial_state()

    def entries(self, low: int, high: int, max_size: int | None = None) -> list[eraftpb.Entry]:
        return self.mem.entries(low, high, max_size)

    def term(self, idx: int) -> int:
        return self.mem.term(idx)

    def first_index(self) -> int:
        return self.mem.first_index()

    def last_index(self) -> int:
        return self.mem.last_index()

    def snapshot(self, request_index: int, to: int) -> eraftpb.Snapshot:
        if self.unavailable_snapshots > 0:
            self.unavailable_snapshots -= 1
            raise SnapshotTemporarilyUnavailableError()
        assert self.state_fn is not None
        sm = self.state_fn()
        index = sm.applied_index
        if index < request_index or index < self.mem.first_index() - 1 or index == 0:
            raise SnapshotTemporarilyUnavailableError()
        snap = eraftpb.Snapshot(data=sm.encode())
        snap.metadata.index = index
        snap.metadata.term = self.mem.term(index)
        snap.metadata.conf_state.CopyFrom(sm.conf_state)
        return snap

    # -- writes (what the application persists) --
    def append(self, entries: list[eraftpb.Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        if first <= self.mirror_last():
            # Rewriting identical entries changes nothing; record where the persisted log
            # really lost or changed an entry.
            new_keys = [entry_key(e) for e in entries]
            old_keys = self.mirror[first - self.mirror_base - 1 :]
            lost = next((first + k for k, (o, n) in enumerate(zip(old_keys, new_keys, strict=False))
                         if o != n), None)
            if lost is None and len(old_keys) > len(new_keys):
                lost = first + len(new_keys)
            if lost is not None:
                self.truncated_below.append(lost)
            del self.mirror[first - self.mirror_base - 1 :]
        self.mem.append(entries)
        assert first == self.mirror_last() + 1, "storage accepted a gap"
        self.mirror.extend(entry_key(e) for e in entries)
        self.version += 1

    def mirror_last(self) -> int:
        return self.mirror_base + len(self.mirror)

    def mirror_get(self, index: int) -> tuple[int, int, bytes] | None:
        k = index - self.mirror_base - 1
        return self.mirror[k] if 0 <= k < len(self.mirror) else None

    def set_hardstate(self, hs: eraftpb.HardState) -> None:
        self.mem.set_hardstate(hs)

    def commit_to(self, index: int) -> None:
        self.mem.commit_to(index)

    def set_conf_state(self, cs: eraftpb.ConfState) -> None:
        self.mem.set_conf_state(cs)

    def apply_snapshot(self, snap: eraftpb.Snapshot) -> None:
        self.mem.apply_snapshot(snap)
        self.mirror = []
        self.mirror_base = snap.metadata.index
        self.version += 1
        self.snap_data = bytes(snap.data)
        self.snap_meta = eraftpb.SnapshotMetadata()
        self.snap_meta.CopyFrom(snap.metadata)

    def compact(self, index: int, sm: StateMachine) -> None:
        """Drop the log up to `index` (≤ applied), keeping the state machine as snapshot."""
        assert index <= sm.applied_index, "compacting past what the application applied"
        term = self.mem.term(index)
        self.mem.compact(index + 1)  # MemStorage.compact(i) keeps i as the first entry
        assert self.mem.first_index() == index + 1
        if self.durable is not None:
            assert self.durable.last_index() >= index, "compacting past the durable log"
            self.durable.compact(index + 1)
        # The snapshot covers only committed entries: a disk holding it knows that much is
        # committed even if the hard state recording it is not durable yet.
        for mem in (self.mem, self.durable):
            if mem is not None and mem.hard_state().commit < index:
                hs = eraftpb.HardState()
                hs.CopyFrom(mem.hard_state())
                hs.commit = index
                mem.set_hardstate(hs)
        del self.mirror[: index - self.mirror_base]
        self.mirror_base = index
        self.version += 1
        cs = sm.conf_at(index)
        self.mem.set_conf_state(cs)  # a restart resumes from the snapshot's configuration
        self.snap_data = StateMachine(
            applied=[a for a in sm.applied if a[0] <= index], base_index=sm.base_index
        ).encode()
        self.snap_meta = eraftpb.SnapshotMetadata(index=index, term=term)
        self.snap_meta.conf_state.CopyFrom(cs)
        if self.durable is not None:
            self.durable.set_conf_state(cs)
            self.durable_snap = (self.snap_data, self.snap_meta)

    def hard_state(self) -> eraftpb.HardState:
        return self.mem.initial_state().hard_state

    def durable_hard_state(self) -> eraftpb.HardState:
        """The hard state a crash would keep (in sync mode every write is durable)."""
        if self.durable is None:
            return self.hard_state()
        return self.durable.hard_state()

    # -- durability (async mode) --
    def make_durable(self, task: WriteTask) -> None:
        """The write of one Ready reached the disk."""
        if self.durable is None:
            return
        if task.snapshot is not None:
            self.durable.apply_snapshot(task.snapshot)
            meta = eraftpb.SnapshotMetadata()
            meta.CopyFrom(task.snapshot.metadata)
            self.durable_snap = (bytes(task.snapshot.data), meta)
        self.durable.append(task.entries)
        if task.hs is not None:
            self.durable.set_hardstate(_no_commit_below_snapshot(task.hs, self.durable))

    def lose_volatile(self) -> None:
        """A crash: everything not yet durable is gone."""
        if self.durable is None:
            return
        self.mem = self.durable
        self.durable = copy.deepcopy(self.mem)
        self.snap_data, self.snap_meta = self.durable_snap
        first, last = self.mem.first_index(), self.mem.last_index()
        self.mirror_base = first - 1
        self.mirror = [entry_key(e) for e in self.mem.entries(first, last + 1)] if (
            last >= first) else []
        self.version += 1
        self.reverted = True


@dataclass
class WriteTask:
    """One Ready's worth of writes queued in async-persist mode."""

    number: int
    entries: list[eraftpb.Entry]
    hs: eraftpb.HardState | None
    snapshot: eraftpb.Snapshot | None
    persisted_messages: list[eraftpb.Message]


@dataclass
class Envelope:
    deliver_at: int
    seq: int
    msg: eraftpb.Message
    sender: int  # the node that put it on the wire (a forwarded request keeps its from_)


class SimNode:
    """One member: its disk (SimStorage), its RawNode, its application state."""

    def __init__(self, net: Network, node_id: int, storage: SimStorage) -> None:
        self.net = net
        self.id = node_id
        self.storage = storage
        self.sm = StateMachine(conf_state=self._initial_conf_state())
        self.storage.state_fn = lambda: self.sm
        self.raw: RawNode | None = None
        self.pending_writes: list[WriteTask] = []
        self.read_states: list = []  # ReadState(index, request_ctx) delivered by Ready
        self.restart_count = 0

    def _initial_conf_state(self) -> eraftpb.ConfState:
        cs = eraftpb.ConfState()
        cs.CopyFrom(self.storage.initial_state().conf_state)
        return cs

    @property
    def alive(self) -> bool:
        return self.raw is not None

    def start(self) -> None:
        """(Re)start from what storage holds: the app state restarts from the snapshot."""
        meta = self.storage.snap_meta
        if meta.index > 0:
            self.sm = StateMachine.decode(self.storage.snap_data, meta)
        else:
            self.sm = StateMachine(conf_state=self._initial_conf_state())
        self.net.on_restore(self, self.sm)
        # The core's only randomness (election timeouts) is seeded per node incarnation.
        rng = random.Random(f"{self.net.seed}/{self.id}/{self.restart_count}")
        self.raw = RawNode(self.net.make_config(self.id), self.storage, rng=rng)

    def crash(self) -> None:
        self.raw = None
        self.pending_writes.clear()
        self.storage.lose_volatile()
        self.restart_count += 1


class Network:
    """A cluster of SimNodes joined by a faulty, seeded, in-memory network."""

    def __init__(
        self,
        voters: Iterable[int],
        *,
        learners: Iterable[int] = (),
        seed: int = 0,
        async_persist: bool = False,
        auto_persist: bool = True,
        **config: object,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.async_persist = async_persist
        # In async mode, whether stabilize() completes queued writes by itself.
        self.auto_persist = auto_persist
        self.config = {
            "election_tick": DEFAULT_ELECTION_TICK,
            "heartbeat_tick": DEFAULT_HEARTBEAT_TICK,
            **config,
        }
        self.config_overrides: dict[int, dict[str, object]] = {}
        self.nodes: dict[int, SimNode] = {}
        self.queue: list[Envelope] = []
        self.now = 0
        self._seq = 0
        # faults
        self.cut_links: set[tuple[int, int]] = set()
        self.drop_types: set[int] = set()
        self.filters: list[Callable[[eraftpb.Message], bool]] = []  # True = drop; may rewrite
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.delay_max = 0  # delivery rounds
        self.reorder = False
        # Like a real transport, report to the sender whether each MsgSnapshot arrived
        # (report_snapshot Finish / Failure); without it a leader whose snapshot was lost
        # waits in ProgressState.Snapshot forever. Reports are stepped at the next
        # delivery, never in the middle of the sender's Ready.
        self.report_snapshots = True
        self.pending_reports: list[tuple[int, int, SnapshotStatus]] = []
        # observations
        self.sent: list[eraftpb.Message] = []  # every message handed to the network
        self.record_sent = True
        self.applied_hooks: list[Callable[[SimNode, eraftpb.Entry], None]] = []
        self.batch_hooks: list[Callable[[SimNode, list[eraftpb.Entry]], None]] = []
        self.restore_hooks: list[Callable[[SimNode, StateMachine], None]] = []
        # Called with (sender id, message) for every message put on the wire.
        self.send_hooks: list[Callable[[int, eraftpb.Message], None]] = []
        self.step_errors: list[tuple[int, Exception]] = []
        cs = conf_state(voters, learners)
        for node_id in [*cs.voters, *cs.learners]:
            self.add_node(node_id, cs)

    # ------------------------------------------------------------------ membership
    def make_config(self, node_id: int) -> Config:
        kwargs = {**self.config, **self.config_overrides.get(node_id, {})}
        return Config(id=node_id, **kwargs)

    def add_node(self, node_id: int, cs: eraftpb.ConfState | None = None) -> SimNode:
        """A node with storage bootstrapped to `cs` (None: empty, it waits for a leader)."""
        assert node_id not in self.nodes, f"node {node_id} exists"
        node = SimNode(self, node_id, SimStorage(cs, self.async_persist))
        self.nodes[node_id] = node
        node.start()
        return node

    def load(
        self, node_id: int, log_terms: Iterable[int], *, term: int, vote: int = 0, commit: int = 0
    ) -> None:
        """Give a node a persisted log (entry i+1 has term log_terms[i]) and hard state,
        then restart it from that: the "init" of the paper's log-repair figures."""
        node = self.nodes[node_id]
        node.crash()
        entries = [
            eraftpb.Entry(index=i + 1, term=t, data=f"e{i + 1}t{t}".encode())
            for i, t in enumerate(log_terms)
        ]
        hs = eraftpb.HardState(term=term, vote=vote, commit=commit)
        node.storage.append(entries)
        node.storage.set_hardstate(hs)
        node.storage.make_durable(WriteTask(0, entries, hs, None, []))
        node.start()

    def on_restore(self, node: SimNode, sm: StateMachine) -> None:
        for hook in self.restore_hooks:
            hook(node, sm)

    # ------------------------------------------------------------------ accessors
    def node(self, node_id: int) -> RawNode:
        raw = self.nodes[node_id].raw
        assert raw is not None, f"node {node_id} is down"
        return raw

    def raft(self, node_id: int) -> Raft:
        """The node's Raft state machine (SPEC §1 introspection attributes)."""
        return self.node(node_id).raft

    def ids(self) -> list[int]:
        return sorted(self.nodes)

    def alive_ids(self) -> list[int]:
        return [i for i in self.ids() if self.nodes[i].alive]

    def role(self, node_id: int) -> StateRole:
        return self.raft(node_id).state

    def term(self, node_id: int) -> int:
        return self.raft(node_id).term

    def committed(self, node_id: int) -> int:
        return self.raft(node_id).raft_log.committed

    def leaders(self) -> list[int]:
        return [i for i in self.alive_ids() if self.role(i) == StateRole.Leader]

    def leader(self) -> int | None:
        """The leader of the highest term among live nodes, if any."""
        leaders = sorted(self.leaders(), key=self.term)
        return leaders[-1] if leaders else None

    def applied_data(self, node_id: int) -> list[bytes]:
        sm = self.nodes[node_id].sm
        return sm.data_upto(sm.applied_index)

    def log_terms(self, node_id: int) -> list[int]:
        """Terms of the node's in-memory log from index 1 (0 for compacted indices)."""
        raft = self.raft(node_id)
        return [raft.raft_log.term(i) for i in range(1, raft.raft_log.last_index() + 1)]

    # ------------------------------------------------------------------ faults
    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def partition(self, *groups: Iterable[int]) -> None:
        """Only nodes within the same group can talk; nodes in no group are isolated."""
        group_of = {n: gi for gi, g in enumerate(groups) for n in g}
        for a in self.nodes:
            for b in self.nodes:
                if a != b and (a not in group_of or group_of.get(a) != group_of.get(b)):
                    self.cut_links.add((a, b))

    def cut(self, a: int, b: int) -> None:
        self.cut_links.add((a, b))
        self.cut_links.add((b, a))

    def cut_one_way(self, from_: int, to: int) -> None:
        self.cut_links.add((from_, to))

    def heal(self) -> None:
        """Remove every network fault (links, types, filters, rates, delay, reorder)."""
        self.cut_links.clear()
        self.drop_types.clear()
        self.filters.clear()
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.delay_max = 0
        self.reorder = False

    def crash(self, node_id: int) -> None:
        self.nodes[node_id].crash()
        for env in self.queue:
            if env.msg.to == node_id:
                self._snapshot_outcome(env.msg, delivered=False)
        self.queue = [e for e in self.queue if e.msg.to != node_id]

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.alive:
            node.crash()
        node.start()

    # ------------------------------------------------------------------ messages
    def _dropped(self, msg: eraftpb.Message, sender: int) -> bool:
        if (sender, msg.to) in self.cut_links or msg.msg_type in self.drop_types:
            return True
        if any(f(msg) for f in self.filters):
            return True
        return self.drop_rate > 0 and self.rng.random() < self.drop_rate

    def send(self, msgs: Iterable[eraftpb.Message], sender: int | None = None) -> None:
        """Put messages on the wire. `sender` is the node sending them: a forwarded
        MsgPropose / MsgReadIndex keeps its proposer in `from_`, which may even be the
        destination (a proposal forwarded back to its proposer, now the leader)."""
        for msg in msgs:
            src = msg.from_ if sender is None else sender
            assert msg.to != 0 and msg.to != src, f"bad destination: {describe(msg)}"
            if self.record_sent:
                self.sent.append(msg)
            for hook in self.send_hooks:
                hook(src, msg)
            if self._dropped(msg, src):
                self._snapshot_outcome(msg, delivered=False)
                continue
            self._enqueue(msg, src)
            if self.dup_rate > 0 and self.rng.random() < self.dup_rate:
                dup = eraftpb.Message()
                dup.CopyFrom(msg)
                self._enqueue(dup, src)

    def _enqueue(self, msg: eraftpb.Message, sender: int) -> None:
        delay = self.rng.randint(0, self.delay_max) if self.delay_max > 0 else 0
        self._seq += 1
        self.queue.append(Envelope(self.now + delay, self._seq, msg, sender))

    def take_sent(self, msg_type: int | None = None) -> list[eraftpb.Message]:
        """Messages sent since the last call (optionally of one type); clears the record."""
        out = [m for m in self.sent if msg_type is None or m.msg_type == msg_type]
        self.sent = []
        return out

    def _snapshot_outcome(self, msg: eraftpb.Message, delivered: bool) -> None:
        if self.report_snapshots and msg.msg_type == eraftpb.MsgSnapshot:
            status = SnapshotStatus.Finish if delivered else SnapshotStatus.Failure
            self.pending_reports.append((msg.from_, msg.to, status))

    def flush_reports(self) -> None:
        reports, self.pending_reports = self.pending_reports, []
        for sender, to, status in reports:
            if self.nodes[sender].alive:
                self.node(sender).report_snapshot(to, status)

    def deliverable(self) -> list[Envelope]:
        return [e for e in self.queue if e.deliver_at <= self.now]

    def deliver_one(self) -> bool:
        self.flush_reports()
        ready = self.deliverable()
        if not ready:
            return False
        env = self.rng.choice(ready) if self.reorder else min(ready, key=lambda e: e.seq)
        self.queue.remove(env)
        self.deliver(env.msg, env.sender)
        return True

    def deliver(self, msg: eraftpb.Message, sender: int | None = None) -> None:
        node = self.nodes.get(msg.to)
        src = msg.from_ if sender is None else sender
        if node is None or not node.alive or (src, msg.to) in self.cut_links:
            self._snapshot_outcome(msg, delivered=False)
            return
        self._snapshot_outcome(msg, delivered=True)
        try:
            node.raw.step(msg)
        except (StepPeerNotFound, ProposalDropped) as err:
            # A message from a removed member, a forwarded proposal that lost its leader:
            # the network may legitimately carry these; the node refuses them.
            self.step_errors.append((msg.to, err))

    def step(self, node_id: int, msg: eraftpb.Message) -> None:
        """Hand one message directly to a node (bypasses faults)."""
        self.node(node_id).step(msg)

    # ------------------------------------------------------------------ driving
    def handle_ready(self, node_id: int) -> bool:
        """Process one Ready of a node the way an application does. False if none."""
        node = self.nodes[node_id]
        raw = node.raw
        if raw is None or not raw.has_ready():
            return False
        rd = raw.ready()
        self.send(rd.take_messages(), node_id)
        snap = rd.snapshot()
        has_snap = snap is not None and snap.metadata.index > 0
        if has_snap:
            node.sm = StateMachine.decode(bytes(snap.data), snap.metadata)
            self.on_restore(node, node.sm)
        self._apply(node, rd.take_committed_entries())
        node.read_states.extend(rd.take_read_states())
        entries = list(rd.take_entries())
        hs = rd.hs()
        persisted = list(rd.take_persisted_messages())
        task = WriteTask(rd.number(), entries, hs, snap if has_snap else None, persisted)
        self._write(node, task)  # readable by the core from now on
        if self.async_persist:
            node.pending_writes.append(task)  # durable only once persist() runs
            raw.advance_append_async(rd)
            raw.advance_apply()  # the committed entries above were applied
            return True
        self.send(persisted, node_id)
        light = raw.advance(rd)
        commit = light.commit_index()
        if commit is not None:
            node.storage.commit_to(commit)
        self.send(light.take_messages(), node_id)
        self._apply(node, light.take_committed_entries())
        raw.advance_apply()
        return True

    def crash_during_ready(self, node_id: int) -> bool:
        """Take a Ready, send what it allows to go before the write (`messages()`), and
        crash before the write is durable: everything not yet persisted is lost, this
        Ready's write and, in async mode, every Ready handed back but not reported
        persisted. False if the node had no Ready (nothing happens then)."""
        node = self.nodes[node_id]
        raw = node.raw
        if raw is None or not raw.has_ready():
            return False
        rd = raw.ready()
        self.send(rd.take_messages(), node_id)
        self.crash(node_id)
        return True

    def _write(self, node: SimNode, task: WriteTask) -> None:
        if task.snapshot is not None:
            node.storage.apply_snapshot(task.snapshot)
        node.storage.append(task.entries)
        if task.hs is not None:
            node.storage.set_hardstate(task.hs)

    def persist(self, node_id: int) -> bool:
        """Async mode: complete the oldest queued write of a node. False if none."""
        node = self.nodes[node_id]
        if not node.alive or not node.pending_writes:
            return False
        task = node.pending_writes.pop(0)
        node.storage.make_durable(task)
        self.send(task.persisted_messages, node_id)
        node.raw.on_persist_ready(task.number)
        return True

    def _apply(self, node: SimNode, entries: Iterable[eraftpb.Entry]) -> None:
        entries = list(entries)
        if entries:
            for batch_hook in self.batch_hooks:
                batch_hook(node, entries)
        for e in entries:
            sm = node.sm
            if e.index <= sm.applied_index:
                raise InvariantViolation(
                    f"node {node.id} re-applies index {e.index} (applied {sm.applied_index})"
                )
            if e.index != sm.applied_index + 1:
                raise InvariantViolation(
                    f"node {node.id} applies index {e.index} after {sm.applied_index}: gap"
                )
            if e.entry_type == eraftpb.EntryConfChange:
                cc = eraftpb.ConfChange()
                cc.ParseFromString(e.data)
                sm.set_conf(e.index, node.raw.apply_conf_change(cc))
            elif e.entry_type == eraftpb.EntryConfChangeV2:
                cc2 = eraftpb.ConfChangeV2()
                cc2.ParseFromString(e.data)
                sm.set_conf(e.index, node.raw.apply_conf_change(cc2))
            sm.applied.append((e.index, e.term, int(e.entry_type), bytes(e.data)))
            for hook in self.applied_hooks:
                hook(node, e)

    def process(self, node_id: int) -> None:
        """Drain a node's Readys (and, with auto_persist, its queued writes)."""
        for _ in range(READY_PER_NODE_MAX):
            progressed = self.handle_ready(node_id)
            if self.async_persist and self.auto_persist:
                while self.persist(node_id):
                    progressed = True
            if not progressed:
                return
        raise AssertionError(f"node {node_id} produced Readys without end")

    def stabilize(self, rounds_max: int = STABILIZE_ROUNDS_MAX) -> None:
        """Run every node's Readys and deliver every deliverable message until quiet.

        Delayed messages are not waited for: each round advances the network clock by one,
        so they become deliverable after `delay_max` rounds at most."""
        for _ in range(rounds_max):
            for node_id in self.alive_ids():
                self.process(node_id)
            if not self.queue and not self.pending_reports:
                return
            self.flush_reports()
            while self.deliver_one():
                pass
            self.now += 1
        raise AssertionError(f"network did not stabilize in {rounds_max} rounds")

    def tick(self, node_ids: Iterable[int] | None = None, ticks: int = 1) -> None:
        """Tick the given (default: all live) nodes `ticks` times, stabilizing after each."""
        ids = list(node_ids) if node_ids is not None else None
        for _ in range(ticks):
            for node_id in ids if ids is not None else self.alive_ids():
                if self.nodes[node_id].alive:
                    self.node(node_id).tick()
            self.stabilize()

    def campaign(self, node_id: int) -> None:
        self.node(node_id).campaign()
        self.stabilize()

    def elect(self, node_id: int) -> int:
        """Make `node_id` leader via campaign, and let it commit its first entry."""
        self.campaign(node_id)
        assert self.role(node_id) == StateRole.Leader, (
            f"node {node_id} is {self.role(node_id)}, not leader"
        )
        return node_id

    def propose(self, node_id: int, data: bytes, context: bytes = b"") -> None:
        self.node(node_id).propose(context, data)
        self.stabilize()

    def tick_until(
        self, cond: Callable[[], bool], ticks_max: int, node_ids: Iterable[int] | None = None
    ) -> int:
        """Tick until `cond()` holds; returns the ticks it took. Fails after `ticks_max`."""
        for n in range(ticks_max + 1):
            if cond():
                return n
            self.tick(node_ids)
        raise AssertionError(f"condition not reached within {ticks_max} ticks")

    def compact(self, node_id: int, index: int | None = None) -> int:
        """Compact a node's log up to `index` (default: its applied index)."""
        node = self.nodes[node_id]
        idx = node.sm.applied_index if index is None else index
        node.storage.compact(idx, node.sm)
        return idx


# ---------------------------------------------------------------------- single nodes
def new_raw_node(
    node_id: int,
    voters: Iterable[int],
    *,
    log_terms: Iterable[int] = (),
    term: int = 0,
    vote: int = 0,
    commit: int = 0,
    learners: Iterable[int] = (),
    **config: object,
) -> RawNode:
    """A RawNode over a MemStorage that already holds a log with the given terms
    (entry i+1 has term log_terms[i]) and hard state — the "init" of a paper test."""
    storage = MemStorage.new_with_conf_state(conf_state(voters, learners))
    entries = [
        eraftpb.Entry(index=i + 1, term=t, data=f"e{i + 1}".encode())
        for i, t in enumerate(log_terms)
    ]
    storage.append(entries)
    storage.set_hardstate(eraftpb.HardState(term=term, vote=vote, commit=commit))
    cfg = {"election_tick": DEFAULT_ELECTION_TICK, "heartbeat_tick": DEFAULT_HEARTBEAT_TICK}
    cfg.update(config)
    return RawNode(Config(id=node_id, **cfg), storage)


def drain(raw: RawNode) -> list[eraftpb.Message]:
    """Persist and advance every Ready of a standalone node; return all messages it sent."""
    out: list[eraftpb.Message] = []
    storage = raw.store()
    for _ in range(READY_PER_NODE_MAX):
        if not raw.has_ready():
            return out
        rd = raw.ready()
        out.extend(rd.take_messages())
        snap = rd.snapshot()
        if snap is not None and snap.metadata.index > 0:
            storage.apply_snapshot(snap)
        storage.append(list(rd.take_entries()))
        if rd.hs() is not None:
            storage.set_hardstate(rd.hs())
        out.extend(rd.take_persisted_messages())
        light = raw.advance(rd)
        if light.commit_index() is not None:
            storage.commit_to(light.commit_index())
        out.extend(light.take_messages())
        raw.advance_apply()
    raise AssertionError("node produced Readys without end")


def only(msgs: list[eraftpb.Message], msg_type: int) -> list[eraftpb.Message]:
    return [m for m in msgs if m.msg_type == msg_type]
