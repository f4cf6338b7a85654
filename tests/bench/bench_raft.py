#!/usr/bin/env python3
"""Raft core throughput: three in-process RawNodes over MemStorage, in-memory network.

Not a test: `make bench` runs it and it prints a table. Each node is driven the way a
real application drives it (SPEC §1): propose on the leader, then for every node take
its Ready, send `messages()` at once, persist entries and hard state to its MemStorage,
send `persisted_messages()`, apply committed entries, `advance()`, and handle the
LightReady. Messages are delivered in order with no loss; the network is a queue.

Rows: proposals submitted 1 and 64 per Ready round (the leader's Ready then carries
that many new entries), pipelined — a round never waits for earlier proposals to
commit, so the Inflights window (max_inflight_msgs) bounds what is in flight. A
proposal counts once it has been applied on all three nodes. The nodes run with
`batch_append=True` (appends to one peer queued in the same Ready travel as one
message), as a throughput-minded application would configure them.

    .venv/bin/python tests/bench/bench_raft.py                  # the table
    .venv/bin/python tests/bench/bench_raft.py --profile 64     # cProfile of one row
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import time

from kvraft.raft import Config, MemStorage, RawNode, StateRole, eraftpb

NODE_IDS = (1, 2, 3)
ELECTION_ROUNDS_MAX = 1_000
# A round that commits nothing new this many times in a row means the cluster is stuck.
IDLE_ROUNDS_MAX = 1_000


class Cluster:
    """Three RawNodes and a FIFO in-memory network between them."""

    def __init__(self, max_inflight_msgs: int) -> None:
        conf_state = eraftpb.ConfState(voters=list(NODE_IDS))
        self.stores = {i: MemStorage.new_with_conf_state(conf_state) for i in NODE_IDS}
        self.nodes = {
            i: RawNode(Config(id=i, election_tick=10, heartbeat_tick=1,
                              max_inflight_msgs=max_inflight_msgs,
                              max_size_per_msg=1 << 20, batch_append=True),
                    self.stores[i])
            for i in NODE_IDS
        }
        self.network: collections.deque[eraftpb.Message] = collections.deque()
        self.applied = dict.fromkeys(NODE_IDS, 0)   # normal entries with data applied

    def elect(self, leader_id: int) -> RawNode:
        self.nodes[leader_id].campaign()
        for _ in range(ELECTION_ROUNDS_MAX):
            self.round()
            if self.nodes[leader_id].raft.state == StateRole.Leader and not self.network:
                return self.nodes[leader_id]
        raise RuntimeError(f"node {leader_id} was not elected in {ELECTION_ROUNDS_MAX} rounds")

    def round(self) -> None:
        """Every node handles its Ready once, then every queued message is delivered."""
        for node_id in NODE_IDS:
            self.handle_ready(node_id)
        network = self.network
        nodes = self.nodes
        while network:
            msg = network.popleft()
            nodes[msg.to].step(msg)

    def handle_ready(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if not node.has_ready():
            return
        store = self.stores[node_id]
        rd = node.ready()
        # A leader may send before its own entries are durable (thesis §10.2.1).
        self.network.extend(rd.take_messages())
        snapshot = rd.snapshot()
        if snapshot.metadata.index:
            store.apply_snapshot(snapshot)
        entries = rd.take_entries()
        if entries:
            store.append(entries)
        hs = rd.hs()
        if hs is not None:
            store.set_hardstate(hs)
        self.network.extend(rd.take_persisted_messages())
        self.apply(node_id, rd.take_committed_entries())
        light = node.advance(rd)
        commit = light.commit_index()
        if commit is not None:
            store.commit_to(commit)
        self.network.extend(light.take_messages())
        self.apply(node_id, light.take_committed_entries())
        node.advance_apply()

    def check_logs_match(self) -> None:
        """Sanity check after a run (untimed): every node holds the same committed log."""
        committed = min(node.raft.raft_log.committed for node in self.nodes.values())
        logs = [
            [(e.index, e.term, e.data) for e in self.stores[i].entries(1, committed + 1)]
            for i in NODE_IDS
        ]
        assert logs[0] == logs[1] == logs[2], "committed logs differ between nodes"

    def apply(self, node_id: int, entries: list[eraftpb.Entry]) -> None:
        count = 0
        for entry in entries:
            if entry.data and entry.entry_type == eraftpb.EntryNormal:
                count += 1
        self.applied[node_id] += count


def run(proposals: int, per_ready: int, payload_bytes: int,
        max_inflight_msgs: int) -> tuple[float, float]:
    """Returns (wall-clock seconds, CPU seconds of this process) to get `proposals`
    applied on every node."""
    cluster = Cluster(max_inflight_msgs)
    leader = cluster.elect(1)
    payload = b"x" * payload_bytes
    applied = cluster.applied
    proposed = 0
    idle_rounds = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    while min(applied.values()) < proposals:
        before = min(applied.values())
        batch = min(per_ready, proposals - proposed)
        for _ in range(batch):
            leader.propose(b"", payload)
        proposed += batch
        cluster.round()
        idle_rounds = idle_rounds + 1 if min(applied.values()) == before else 0
        if idle_rounds > IDLE_ROUNDS_MAX:
            raise RuntimeError(f"no progress for {IDLE_ROUNDS_MAX} rounds: {applied}")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    assert all(count == proposals for count in applied.values()), applied
    cluster.check_logs_match()
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=20_000,
                        help="proposals per row (default 20000)")
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--max-inflight-msgs", type=int, default=256)
    parser.add_argument("--profile", type=int, metavar="PER_READY",
                        help="profile the row with this many proposals per Ready instead")
    args = parser.parse_args()

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(args.proposals, args.profile, args.payload_bytes, args.max_inflight_msgs)
        profiler.disable()
        stats = pstats.Stats(profiler).sort_stats("tottime")
        stats.print_stats(30)
        return 0

    print(f"Raft core, 3 in-process RawNodes over MemStorage, in-memory network; "
          f"{args.proposals} proposals of {args.payload_bytes} B per row, "
          f"max_inflight_msgs={args.max_inflight_msgs}")
    # CPU time is shown too: on a shared machine wall-clock includes other processes.
    print(f"{'proposals/Ready':>15} {'committed/s':>12} {'us/proposal':>12} "
          f"{'CPU us/prop':>12} {'seconds':>8}")
    count = args.proposals
    for per_ready in (1, 64):
        elapsed, cpu = run(count, per_ready, args.payload_bytes, args.max_inflight_msgs)
        print(f"{per_ready:>15} {count / elapsed:>12,.0f} {elapsed / count * 1e6:>12.1f} "
              f"{cpu / count * 1e6:>12.1f} {elapsed:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
