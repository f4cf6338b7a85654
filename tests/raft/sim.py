"""Randomized simulation of Raft clusters on the deterministic network.

Each seed picks a layout (3 or 5 voters; 3 voters + 2 learners; one voter alone or with
1-2 learners), Raft options and fault rates, then runs a chaotic phase (random ticks,
deliveries, drops, duplicates, delays, reordering, partitions, crash-restarts, crashes
before a Ready's write is durable, compactions, proposals, ReadIndex requests, leader
transfers, membership changes) while checking after every step the safety properties of
the Raft paper (Figure 3):

- Election Safety: at most one leader per term;
- Log Matching: two logs with an entry of the same index and term agree up to it;
- committed entries never change (State Machine Safety), and every node's applied
  sequence is a prefix of one sequence;
- Leader Completeness: an entry committed in term t is in the log of every leader of a
  later term;
- Lease (with `--lease`): while a leader's lease holds, no leader of a higher term exists;
- ReadIndex: a read index is at least every commit index seen before the read began
  (linearizable reads; with `--lease`, every seed runs ReadOnlyOption.LeaseBased with
  check_quorum, and the lease must keep this property too);
- Durable state (§3.8): no message on the wire carries a term or vote that its sender
  has not persisted (a pre-vote request asks about its term + 1; a granted pre-vote
  answer carries the requester's term).

A crash drops everything not yet durable: the write of a Ready whose messages() were
already sent, and in async mode every Ready handed back but not reported persisted.
The logs compared for Log Matching and the applied sequences are every node's,
learners and crashed nodes included.

Then it heals everything and checks liveness: a new proposal commits and is applied on
every node within a bounded number of ticks. A run is a pure function of its seed:

    python -m tests.raft.sim --seeds 200        # seeds 0..199
    python -m tests.raft.sim --seed 17 -v       # replay one seed with a trace
    python -m tests.raft.sim --seeds 200 --lease   # the same seeds with lease reads

The lease (thesis §6.4.1) assumes the nodes' tick clocks advance at about the same
rate, so lease runs tick every live node together (never one alone).
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import ClassVar

from kvraft.raft import (
    NO_LIMIT,
    ProposalDropped,
    ReadOnlyOption,
    StateRole,
    eraftpb,
)
from tests.raft.network import (
    DEFAULT_ELECTION_TICK,
    InvariantViolation,
    Network,
    SimNode,
    StateMachine,
    entry_key,
)

CHAOS_STEPS = 3000
SINGLE_VOTER_SHARE = 0.25  # of the seeds: one voter, alone or with learners
VOTERS_AFTER_DEMOTION_MIN = 2
LIVENESS_TICKS_MAX = 30 * DEFAULT_ELECTION_TICK  # after healing, to elect and commit
TOTALS: dict[str, int] = {}  # summed statistics of the passing seeds of this process
LIVENESS_RETRY_TICKS = 5 * DEFAULT_ELECTION_TICK
REPLAY = "python -m tests.raft.sim --seed {seed} -v{flags}   (or: make sim SEED={seed})"


@dataclass
class Params:
    """Everything a seed decides before the run starts."""

    seed: int
    voters: int
    learners: int
    pre_vote: bool
    check_quorum: bool
    async_persist: bool
    drop_rate: float
    dup_rate: float
    delay_max: int
    reorder: bool
    compaction: bool
    max_inflight_msgs: int
    max_size_per_msg: int
    batch_append: bool
    skip_bcast_commit: bool
    # Move members between voter and learner with ConfChange / ConfChangeV2 (Auto,
    # Implicit, Explicit): 5-node seeds start as voters {1, 2, 3} + learners {4, 5};
    # single-voter seeds may promote their learners (and then demote down to two).
    membership: bool
    max_committed_size_per_ready: int
    max_uncommitted_size: int
    priorities: bool  # node i gets priority i (raft-rs: voters prefer higher priority)
    # ReadOnlyOption.LeaseBased (forces check_quorum): set by --lease, not by the seed,
    # so that every seed keeps the run it always had without it.
    lease_reads: bool = False

    @property
    def size(self) -> int:
        return self.voters + self.learners

    @classmethod
    def from_seed(cls, seed: int, lease_reads: bool = False) -> Params:
        r = random.Random(f"params-{seed}")
        size = 3 if seed % 2 == 0 else 5
        p = cls(
            seed=seed,
            voters=size,
            learners=0,
            pre_vote=r.random() < 0.5,
            check_quorum=r.random() < 0.5,
            async_persist=r.random() < 0.5,
            drop_rate=r.choice([0.0, 0.02, 0.1]),
            dup_rate=r.choice([0.0, 0.05]),
            delay_max=r.choice([0, 0, 2, 5]),
            reorder=r.random() < 0.5,
            compaction=r.random() < 0.5,
            max_inflight_msgs=r.choice([1, 3, 256]),
            max_size_per_msg=r.choice([0, 1, 1024]),
            batch_append=r.random() < 0.3,
            skip_bcast_commit=r.random() < 0.3,
            membership=seed % 2 == 1 and r.random() < 0.5,
            max_committed_size_per_ready=r.choice([NO_LIMIT, NO_LIMIT, 1, 200]),
            max_uncommitted_size=r.choice([NO_LIMIT, NO_LIMIT, 2048]),
            priorities=r.random() < 0.2,
        )
        # Drawn last, so that the other seeds keep the options they always had.
        if r.random() < SINGLE_VOTER_SHARE:
            # A single voter wins its elections at once: its first messages of a new
            # term are produced in the very Ready that makes the term durable.
            p.voters, p.learners = 1, r.choice([0, 1, 1, 2])
            p.membership = p.learners > 0 and r.random() < 0.5
        elif p.membership:
            p.voters, p.learners = 3, 2
        if lease_reads:
            p.lease_reads = True
            p.check_quorum = True  # LeaseBased requires it
        return p

    def config(self) -> dict[str, object]:
        return {
            "pre_vote": self.pre_vote,
            "check_quorum": self.check_quorum,
            "max_inflight_msgs": self.max_inflight_msgs,
            "max_size_per_msg": self.max_size_per_msg,
            "batch_append": self.batch_append,
            "skip_bcast_commit": self.skip_bcast_commit,
            "max_committed_size_per_ready": self.max_committed_size_per_ready,
            "max_uncommitted_size": self.max_uncommitted_size,
            "read_only_option": (ReadOnlyOption.LeaseBased if self.lease_reads
                                 else ReadOnlyOption.Safe),
        }


@dataclass
class Checker:
    """The safety properties, checked incrementally so every step can afford them."""

    net: Network
    # Whether to check the durable-state rule on the wire; without it only its
    # consequences (Log Matching, committed entries, applied sequences) are checked.
    wire_check: bool = True
    leader_of_term: dict[int, int] = field(default_factory=dict)
    # index -> (term, type, data) of every entry known committed, and the lowest term of
    # a node that saw it committed (the entry was committed in that term or earlier).
    canonical: dict[int, tuple[int, int, bytes]] = field(default_factory=dict)
    commit_term: dict[int, int] = field(default_factory=dict)
    commit_checked: dict[int, int] = field(default_factory=dict)
    max_commit: int = 0
    log_versions: dict[int, int] = field(default_factory=dict)
    leader_checked: dict[int, tuple] = field(default_factory=dict)
    reads: dict[bytes, int] = field(default_factory=dict)  # ctx -> minimum read index
    reads_done: int = 0

    def __post_init__(self) -> None:
        self.net.applied_hooks.append(self.on_apply)
        self.net.restore_hooks.append(self.on_restore)
        if self.wire_check:
            self.net.send_hooks.append(self.on_send)

    def fail(self, what: str) -> None:
        raise InvariantViolation(what)

    def observe(self, index: int, key: tuple[int, int, bytes], term: int, who: str) -> None:
        known = self.canonical.get(index)
        if known is None:
            self.canonical[index] = key
            self.commit_term[index] = term
        elif known != key:
            self.fail(f"committed entry {index} changed: {known[:2]} then {key[:2]} ({who})")
        elif term < self.commit_term[index]:
            self.commit_term[index] = term

    # -- hooks -------------------------------------------------------------------------
    def on_apply(self, node: SimNode, e: eraftpb.Entry) -> None:
        term = node.raw.raft.term
        self.observe(e.index, entry_key(e), term, f"applied by node {node.id}")

    def on_restore(self, node: SimNode, sm: StateMachine) -> None:
        st = node.storage
        if st.reverted:
            # A crash lost the writes that were not durable, before the node runs again
            # (and may rewrite its log). It may have seen an index committed only in a
            # write it lost; its disk can hold an older, uncommitted entry there (a
            # leader sends before its own write, §10.2.1) that a new leader may still
            # replace. Only the prefix equal to the committed entries stays checked.
            st.reverted = False
            checked = min(self.commit_checked.get(node.id, 0), st.mirror_last())
            while (checked > st.mirror_base
                   and st.mirror_get(checked) != self.canonical.get(checked)):
                checked -= 1
            self.commit_checked[node.id] = checked
        for expected, (i, t, k, d) in enumerate(sm.applied, start=1):
            if i != expected:
                self.fail(f"node {node.id} restored a state machine with a gap at {expected}")
            known = self.canonical.get(i)
            if known is not None and known != (t, k, d):
                self.fail(f"node {node.id} restored entry {i} that differs from the committed")
        if sm.applied and sm.applied[-1][0] != sm.base_index:
            self.fail(f"node {node.id} restored a snapshot at {sm.base_index} whose state "
                      f"ends at {sm.applied[-1][0]}")

    def on_send(self, sender: int, m: eraftpb.Message) -> None:
        """§3.8: a node speaks only of a term (and vote) it has persisted."""
        if m.from_ != sender or m.term == 0:
            return  # a forwarded proposal or read: it carries no term
        msg_type = m.msg_type
        if msg_type == eraftpb.MsgRequestPreVoteResponse and not m.reject:
            return  # the requester's term; the answer records nothing (§9.6)
        hs = self.net.nodes[sender].storage.durable_hard_state()
        own_term = m.term - 1 if msg_type == eraftpb.MsgRequestPreVote else m.term
        name = eraftpb.MessageType.Name(msg_type)
        if own_term > hs.term:
            self.fail(f"node {sender} sent {name} at term {m.term} to {m.to} while its "
                      f"durable term is {hs.term}")
        # A vote in term t is settled once it is durable, or once a later term is (the
        # node can then never vote in t again).
        if (msg_type == eraftpb.MsgRequestVote and hs.term == m.term
                and hs.vote != sender):
            self.fail(f"node {sender} asked for votes at term {m.term} before its own vote "
                      f"was durable (durable term {hs.term}, vote {hs.vote})")
        if (msg_type == eraftpb.MsgRequestVoteResponse and not m.reject
                and hs.term == m.term and hs.vote != m.to):
            self.fail(f"node {sender} granted its vote to {m.to} at term {m.term} before it "
                      f"was durable (durable term {hs.term}, vote {hs.vote})")

    def on_read_index(self, ctx: bytes) -> None:
        self.reads[ctx] = self.max_commit

    # -- the properties ------------------------------------------------------------------
    def check(self) -> None:
        net = self.net
        alive = [net.nodes[i] for i in net.alive_ids()]
        for node in alive:
            raft = node.raw.raft
            if raft.state == StateRole.Leader:
                first = self.leader_of_term.setdefault(raft.term, node.id)
                if first != node.id:
                    self.fail(f"two leaders in term {raft.term}: {first} and {node.id}")
            self._check_commit(node)
            self._check_reads(node)
        self._check_log_matching()
        leaders = [node for node in alive if node.raw.raft.state == StateRole.Leader]
        for node in leaders:
            self._check_leader_completeness(node)
        if len(leaders) > 1:
            self._check_leases(leaders)

    def _check_leases(self, leaders: list[SimNode]) -> None:
        """Thesis §6.4.1 (read_only.py): while a leader's lease holds, no leader of a
        higher term exists — checked at every step, whether or not a read comes."""
        newest = max(node.raw.raft.term for node in leaders)
        for node in leaders:
            raft = node.raw.raft
            if raft.term < newest and raft.lease_valid():
                self.fail(f"node {node.id} holds a lease at term {raft.term} while a "
                          f"leader of term {newest} exists")

    def _check_commit(self, node: SimNode) -> None:
        raft = node.raw.raft
        committed = raft.raft_log.committed
        if committed < raft.raft_log.applied:
            self.fail(f"node {node.id} applied {raft.raft_log.applied} > committed {committed}")
        self.max_commit = max(self.max_commit, committed)
        st = node.storage
        checked = self.commit_checked.get(node.id, 0)
        for below in st.truncated_below:
            if below <= checked:
                self.fail(f"node {node.id} truncated its log at {below}, "
                          f"below the committed index {checked}")
        st.truncated_below.clear()
        i = max(checked, st.mirror_base) + 1
        top = min(committed, st.mirror_last())
        while i <= top:
            key = st.mirror[i - st.mirror_base - 1]
            if raft.raft_log.term(i) != key[0]:
                break  # the persisted entry is about to be replaced by an unstable one
            self.observe(i, key, raft.term, f"log of {node.id}")
            i += 1
        self.commit_checked[node.id] = max(checked, i - 1)

    def _check_reads(self, node: SimNode) -> None:
        for rs in node.read_states:
            ctx = bytes(rs.request_ctx)
            if ctx not in self.reads:
                self.fail(f"node {node.id} got a ReadState for unknown request {ctx!r}")
            if rs.index < self.reads[ctx]:
                self.fail(f"read {ctx!r} got index {rs.index} but {self.reads[ctx]} was "
                          "already committed when it started")
            self.reads_done += 1
        node.read_states.clear()

    def _check_log_matching(self) -> None:
        nodes = [self.net.nodes[i] for i in self.net.ids()]  # crashed nodes' disks too
        versions = {n.id: n.storage.version for n in nodes}
        if versions == self.log_versions:
            return
        changed = {i for i, v in versions.items() if self.log_versions.get(i) != v}
        self.log_versions = versions
        for x, a in enumerate(nodes):
            for b in nodes[x + 1 :]:
                if a.id in changed or b.id in changed:
                    self._match_pair(a, b)

    def _match_pair(self, a: SimNode, b: SimNode) -> None:
        sa, sb = a.storage, b.storage
        lo = max(sa.mirror_base, sb.mirror_base) + 1
        i = min(sa.mirror_last(), sb.mirror_last())
        while i >= lo and sa.mirror_get(i)[0] != sb.mirror_get(i)[0]:
            i -= 1
        if i < lo:
            return
        seg_a = sa.mirror[lo - sa.mirror_base - 1 : i - sa.mirror_base]
        seg_b = sb.mirror[lo - sb.mirror_base - 1 : i - sb.mirror_base]
        if seg_a != seg_b:
            bad = next(k for k in range(len(seg_a)) if seg_a[k] != seg_b[k]) + lo
            self.fail(f"log matching: nodes {a.id} and {b.id} agree on the term at {i} "
                      f"but differ at {bad}")

    def _check_leader_completeness(self, node: SimNode) -> None:
        raft = node.raw.raft
        stamp = (raft.term, raft.raft_log.last_index(), len(self.canonical))
        if self.leader_checked.get(node.id) == stamp:
            return
        self.leader_checked[node.id] = stamp
        first = node.storage.first_index()
        for index, key in self.canonical.items():
            if self.commit_term[index] >= raft.term or index < first:
                continue
            have = raft.raft_log.term(index) if index <= raft.raft_log.last_index() else None
            if have != key[0]:
                self.fail(f"leader {node.id} of term {raft.term} lacks committed entry "
                          f"{index} (term {key[0]}, committed by term "
                          f"{self.commit_term[index]}); it has term {have}")


class Simulation:
    def __init__(self, seed: int, steps: int = CHAOS_STEPS, verbose: bool = False,
                 wire_check: bool = True, lease_reads: bool = False) -> None:
        self.p = Params.from_seed(seed, lease_reads)
        self.steps = steps
        self.verbose = verbose
        self.rng = random.Random(seed)
        ids = list(range(1, self.p.size + 1))
        voters, learners = ids[: self.p.voters], ids[self.p.voters :]
        self.net = Network(voters, learners=learners, seed=seed,
                           async_persist=self.p.async_persist, auto_persist=False,
                           **self.p.config())
        if self.p.priorities:
            for i in ids:
                self.net.config_overrides[i] = {"priority": i}
                self.net.restart(i)  # pick the override up (nothing has happened yet)
        self.check = Checker(self.net, wire_check=wire_check)
        self.proposals = 0
        self.reads = 0
        self.ticks = 0
        self.trace: list[str] = []

    def log(self, line: str) -> None:
        if self.verbose:
            print(f"[{self.net.now:5d}] {line}")

    # -- chaos ---------------------------------------------------------------------------
    def apply_faults(self) -> None:
        self.net.drop_rate = self.p.drop_rate
        self.net.dup_rate = self.p.dup_rate
        self.net.delay_max = self.p.delay_max
        self.net.reorder = self.p.reorder

    # Relative weights of the chaos actions: mostly time passing, messages flowing and
    # Readys processed; faults are rarer so that the cluster also makes progress.
    WEIGHTS: ClassVar[dict[str, float]] = {
        "tick_all": 20, "tick_one": 5, "deliver": 30, "ready": 20, "persist": 8,
        "propose": 8, "read_index": 3, "transfer": 0.3, "partition": 0.4, "cut_one_way": 0.2,
        "heal": 1, "crash": 0.25, "restart": 1, "compact": 1, "conf_change": 0.5,
        "reboot": 0.8, "reboot_voter": 1, "crash_before_fsync": 0.4,
    }

    # Lease runs read more and keep partitions longer (past an election timeout), so
    # that a deposed leader that may still believe in its lease coexists with its
    # successor and is asked (a stale answer shows up as a read index below a commit
    # index seen before the read began).
    LEASE_WEIGHTS: ClassVar[dict[str, float]] = {**WEIGHTS, "read_index": 15, "heal": 0.15}

    def random_action(self) -> None:
        weights = self.LEASE_WEIGHTS if self.p.lease_reads else self.WEIGHTS
        names = list(weights)
        action = self.rng.choices(names, weights=[weights[n] for n in names])[0]
        getattr(self, f"do_{action}")()

    def _pick_alive(self) -> int | None:
        alive = self.net.alive_ids()
        return self.rng.choice(alive) if alive else None

    def do_tick_all(self) -> None:
        for i in self.net.alive_ids():
            self.net.node(i).tick()
        self.net.now += 1
        self.ticks += 1
        self.log("tick all")

    def do_tick_one(self) -> None:
        if self.p.lease_reads:
            # Bounded clock drift is the lease's assumption: lease runs tick in lockstep.
            self.do_tick_all()
            return
        i = self._pick_alive()
        if i is not None:
            self.net.node(i).tick()
            self.log(f"tick {i}")

    def do_deliver(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            self.net.deliver_one()

    def do_ready(self) -> None:
        i = self._pick_alive()
        if i is not None:
            self.net.handle_ready(i)

    def do_persist(self) -> None:
        i = self._pick_alive()
        if i is not None:
            if self.net.async_persist:
                self.net.persist(i)
            else:
                self.net.handle_ready(i)

    def do_propose(self) -> None:
        i = self._pick_alive()
        if i is None:
            return
        self.proposals += 1
        data = f"s{self.p.seed}-p{self.proposals}".encode()
        try:
            self.net.node(i).propose(b"", data)
            self.log(f"propose {data!r} at {i}")
        except ProposalDropped:
            self.log(f"propose at {i}: dropped")

    def do_read_index(self) -> None:
        i = self._pick_alive()
        leaders = self.net.leaders()
        if self.p.lease_reads and leaders and self.rng.random() < 0.5:
            i = self.rng.choice(leaders)  # the nodes that may answer from a lease
        if i is None:
            return
        self.reads += 1
        ctx = f"r{self.reads}".encode()
        self.check.on_read_index(ctx)
        try:
            self.net.node(i).read_index(ctx)
            self.log(f"read_index {ctx!r} at {i}")
        except ProposalDropped:
            pass

    def do_transfer(self) -> None:
        leader = self.net.leader()
        if leader is not None and len(self.net.ids()) > 1:
            to = self.rng.choice([i for i in self.net.ids() if i != leader])
            self.net.node(leader).transfer_leader(to)
            self.log(f"transfer leader {leader} -> {to}")

    def do_partition(self) -> None:
        ids = self.net.ids()
        if len(ids) < 2:
            return
        self.net.cut_links.clear()
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) // 2)
        self.net.partition(ids[:cut], ids[cut:])
        self.log(f"partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")

    def do_cut_one_way(self) -> None:
        if len(self.net.ids()) < 2:
            return
        a, b = self.rng.sample(self.net.ids(), 2)
        self.net.cut_one_way(a, b)
        self.log(f"cut {a} -> {b}")

    def do_heal(self) -> None:
        self.net.cut_links.clear()
        self.log("heal links")

    def do_crash(self) -> None:
        alive = self.net.alive_ids()
        if len(alive) > 1:
            i = self.rng.choice(alive)
            self.net.crash(i)
            self.log(f"crash {i}")

    def do_crash_before_fsync(self) -> None:
        """Crash a node between sending a Ready's messages() and its write becoming
        durable (a power cut before the fsync); restart it at once if it was the only
        live node, so that the cluster is never empty."""
        i = self._pick_alive()
        if i is None:
            return
        alone = len(self.net.alive_ids()) == 1
        if self.net.crash_during_ready(i):
            self.log(f"crash {i} before the fsync of its Ready")
            if alone:
                self.net.restart(i)
                self.log(f"restart {i}")

    def do_reboot(self) -> None:
        """Crash and restart at once: a process restart that keeps only what is durable."""
        i = self._pick_alive()
        if i is not None:
            self.net.restart(i)
            self.log(f"reboot {i}")

    def do_reboot_voter(self) -> None:
        """During an election, reboot a node that has just voted: its vote must survive
        (thesis §3.8, votedFor is persistent) or two candidates win the same term."""
        net = self.net
        alive = net.alive_ids()
        terms = {net.term(i) for i in alive if net.role(i) == StateRole.Candidate}
        voters = [i for i in alive if net.role(i) == StateRole.Follower
                  and net.raft(i).vote and net.term(i) in terms]
        if voters:
            i = self.rng.choice(voters)
            net.restart(i)
            self.log(f"reboot voter {i}")

    def do_restart(self) -> None:
        down = [i for i in self.net.ids() if not self.net.nodes[i].alive]
        if down:
            i = self.rng.choice(down)
            self.net.restart(i)
            self.log(f"restart {i}")

    def do_compact(self) -> None:
        i = self._pick_alive()
        if not self.p.compaction or i is None:
            return
        node = self.net.nodes[i]
        if node.sm.applied_index > node.storage.first_index():
            idx = self.rng.randint(node.storage.first_index(), node.sm.applied_index)
            self.net.compact(i, idx)
            self.log(f"compact {i} to {idx}")

    def do_conf_change(self) -> None:
        leader = self.net.leader()
        if not self.p.membership or leader is None:
            return
        cs = self.net.nodes[leader].sm.conf_state
        cc: eraftpb.ConfChange | eraftpb.ConfChangeV2
        if list(cs.voters_outgoing):
            if cs.auto_leave:
                return
            cc = eraftpb.ConfChangeV2()  # leave an Explicit joint configuration
        else:
            voters, learners = sorted(cs.voters), sorted(cs.learners)
            moves: list[eraftpb.ConfChangeSingle] = []
            if learners and self.rng.random() < 0.6:
                moves.append(eraftpb.ConfChangeSingle(
                    change_type=eraftpb.AddNode, node_id=self.rng.choice(learners)))
            # Never demote down to one voter: a leader that demotes itself out of two
            # voters steps down once it applies the change, and if the other voter
            # missed the commit of that change it waits for a vote the demoted node
            # (with the longer log) refuses — a liveness limit of the core, not
            # explored here (this simulation found it when such demotions were allowed).
            if len(voters) > VOTERS_AFTER_DEMOTION_MIN and (
                    not moves or self.rng.random() < 0.5):
                moves.append(eraftpb.ConfChangeSingle(
                    change_type=eraftpb.AddLearnerNode, node_id=self.rng.choice(voters)))
            if not moves:
                return
            if len(moves) == 1 and self.rng.random() < 0.5:
                cc = eraftpb.ConfChange(change_type=moves[0].change_type,
                                        node_id=moves[0].node_id)
            else:
                transition = self.rng.choice([eraftpb.Auto, eraftpb.Implicit, eraftpb.Explicit])
                cc = eraftpb.ConfChangeV2(transition=transition, changes=moves)
        try:
            self.net.node(leader).propose_conf_change(b"", cc)
            self.log(f"conf change at {leader}: {cc}".replace("\n", " "))
        except ProposalDropped:
            pass

    # -- liveness ------------------------------------------------------------------------
    def heal_and_check_liveness(self) -> int:
        net = self.net
        net.heal()
        for i in net.ids():
            if not net.nodes[i].alive:
                net.restart(i)
        net.auto_persist = True
        net.stabilize()
        self.check.check()
        data = f"s{self.p.seed}-final".encode()
        proposed = False
        last_try = -LIVENESS_RETRY_TICKS
        for tick in range(LIVENESS_TICKS_MAX):
            leader = net.leader()
            # A proposal can be lost with a leader that is deposed before replicating it;
            # the client then retries, as a real one would.
            if leader is not None and tick - last_try >= LIVENESS_RETRY_TICKS:
                try:
                    net.node(leader).propose(b"", data)
                    proposed = True
                    last_try = tick
                    self.log(f"final proposal at {leader}")
                except ProposalDropped:
                    pass  # e.g. a leader transfer still in progress
            net.tick()
            self.check.check()
            if proposed and all(data in net.applied_data(i) for i in net.ids()):
                return tick
        states = {i: (net.role(i).name, net.term(i), net.committed(i)) for i in net.ids()}
        raise InvariantViolation(
            f"liveness: after healing, the proposal was not applied everywhere within "
            f"{LIVENESS_TICKS_MAX} ticks (proposed={proposed}); nodes: {states}")

    def run(self) -> dict[str, int]:
        self.apply_faults()
        self.check.check()
        for _ in range(self.steps):
            self.random_action()
            self.check.check()
        ticks = self.heal_and_check_liveness()
        return {
            "committed": len(self.check.canonical),
            "conf_changes": sum(1 for _t, k, _d in self.check.canonical.values()
                                if k != eraftpb.EntryNormal),
            "reads": self.check.reads_done,
            "terms": len(self.check.leader_of_term),
            "chaos_ticks": self.ticks,
            "crashes": sum(n.restart_count for n in self.net.nodes.values()),
            "liveness_ticks": ticks,
        }


def run_seed(seed: int, steps: int = CHAOS_STEPS, verbose: bool = False,
             wire_check: bool = True, lease_reads: bool = False) -> str | None:
    """Run one seed; None if every property held, else the failure with a replay line."""
    try:
        stats = Simulation(seed, steps, verbose, wire_check, lease_reads).run()
        if verbose:
            print(f"seed {seed}: {stats}")
        for k, v in stats.items():
            TOTALS[k] = TOTALS.get(k, 0) + v
    except Exception as err:
        detail = (traceback.format_exc() if verbose else
                  "".join(traceback.format_exception_only(type(err), err))).strip()
        flags = "" if wire_check else "   (add --no-wire-check)"
        lease = " --lease" if lease_reads else ""
        return (f"seed {seed} FAILED ({Params.from_seed(seed, lease_reads)}): {detail}\n"
                f"  replay: {REPLAY.format(seed=seed, flags=lease)}{flags}")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.raft.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--seeds", type=int, default=100, help="run seeds FIRST..FIRST+N-1")
    group.add_argument("--seed", type=int, help="run exactly this seed")
    ap.add_argument("--first", type=int, default=0, help="first seed of --seeds")
    ap.add_argument("--steps", type=int, default=CHAOS_STEPS, help="chaos steps per seed")
    ap.add_argument("-v", "--verbose", action="store_true", help="trace every action")
    ap.add_argument("--no-wire-check", dest="wire_check", action="store_false",
                    help="do not check that messages carry only durable terms and votes; "
                         "check only the consequences of breaking that rule")
    ap.add_argument("--lease", action="store_true",
                    help="run every seed with lease-based reads (ReadOnlyOption.LeaseBased)")
    args = ap.parse_args(argv)
    if not args.verbose:
        # The core logs every step-down and dropped proposal; thousands per run.
        logging.getLogger("kvraft").setLevel(logging.ERROR)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started = time.monotonic()
    failures = []
    for seed in seeds:
        if args.seed is not None:
            print(Params.from_seed(seed, args.lease))
        failure = run_seed(seed, args.steps, args.verbose, args.wire_check, args.lease)
        if failure:
            failures.append(failure)
            print(failure, flush=True)
    elapsed = time.monotonic() - started
    print(f"{len(seeds) - len(failures)}/{len(seeds)} seeds passed in {elapsed:.1f}s; "
          f"totals over passing seeds: {TOTALS}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
