"""Five Raft peers in one process, on in-memory storage: the application loop of
`kvraft.raft` from the first election to 100 committed proposals.

Node 1 founds a cluster of one and elects itself; nodes 2-5 start knowing only node 1
(they are not voters yet, so they never campaign) and join through conf changes that
node 1 proposes one at a time. Then 100 proposals are committed and applied on all five
nodes. Every peer runs the same loop, once per round of a logical clock:

    step the messages in its mailbox -> tick -> take the Ready -> persist its entries
    and hard state -> send its messages -> apply its committed entries -> advance

"Persisting" here is appending to a `MemStorage`; "sending" is putting a message in the
recipient's mailbox, delivered at the next round. A real program swaps those two for a
disk and a network and keeps the loop (see replicated_queue.py beside this file).

    python examples/five_mem_node.py      # prints what each node applied; exit 0 if all
"""
from __future__ import annotations

import random
import sys
from collections import deque
from dataclasses import dataclass

from kvraft.raft import (
    Config,
    MemStorage,
    ProposalDropped,
    RawNode,
    Ready,
    StateRole,
    eraftpb,
)

NODE_IDS = (1, 2, 3, 4, 5)
PROPOSALS = 100
# Ticks of the logical clock: an election times out after 10-20 ticks without a leader;
# a leader heartbeats every 3. One message hop takes one round.
ELECTION_TICK = 10
HEARTBEAT_TICK = 3
# A proposal not applied on the leader this many rounds after it was handed to Raft is
# proposed again (a leader change may have dropped it); applying is idempotent.
PROPOSAL_RETRY_ROUNDS = 50
# Proposals handed to the leader and not yet applied there, at most.
PROPOSALS_IN_FLIGHT_MAX = 16
ROUNDS_MAX = 5_000


@dataclass
class Proposal:
    """A command waiting to be applied on the leader; `context` names it uniquely."""

    context: bytes
    data: bytes = b""
    conf_change: eraftpb.ConfChange | None = None
    proposed_at_round: int = -1      # -1: not handed to Raft yet
    applied: bool = False            # true once the leader applied it


class Peer:
    """One node: a RawNode, its storage, its mailbox and its state machine."""

    def __init__(self, node_id: int, founders: list[int], rng: random.Random) -> None:
        self.id = node_id
        # Every node starts from the founding configuration, so the log replayed from
        # index 1 (the conf changes that add nodes 2-5) gives every node the same view.
        self.storage = MemStorage.new_with_conf_state(eraftpb.ConfState(voters=founders))
        config = Config(id=node_id, election_tick=ELECTION_TICK,
                        heartbeat_tick=HEARTBEAT_TICK, max_size_per_msg=1 << 20)
        self.raw = RawNode(config, self.storage, rng)
        self.mailbox: deque[eraftpb.Message] = deque()
        # The state machine: key -> value, and the data of every applied proposal in
        # the order applied (the log order, identical on every node).
        self.kv: dict[bytes, bytes] = {}
        self.applied: list[bytes] = []
        self.applied_contexts: set[bytes] = set()   # a re-proposed command applies once

    def is_leader(self) -> bool:
        return self.raw.raft.state is StateRole.Leader

    def step_mailbox(self) -> None:
        while self.mailbox:
            self.raw.step(self.mailbox.popleft())

    def handle_ready(self, network: dict[int, Peer], proposals: dict[bytes, Proposal]) -> None:
        raw = self.raw
        if not raw.has_ready():
            return
        rd: Ready = raw.ready()
        # Persist first: a node may only vote or acknowledge what its disk holds (thesis
        # §3.8). A leader could send rd.messages() before persisting (§10.2.1); in
        # memory the order makes no difference.
        snapshot = rd.snapshot()
        if snapshot.metadata.index > 0:
            self.storage.apply_snapshot(snapshot)
        self.storage.append(rd.take_entries())
        hs = rd.hs()
        if hs is not None:
            self.storage.set_hardstate(hs)
        self.send(rd.take_messages(), network)
        self.send(rd.take_persisted_messages(), network)
        self.apply(rd.take_committed_entries(), proposals)
        light = raw.advance(rd)
        commit = light.commit_index()
        if commit is not None:
            self.storage.commit_to(commit)
        self.send(light.take_messages(), network)
        self.apply(light.take_committed_entries(), proposals)
        raw.advance_apply()

    def send(self, messages: list[eraftpb.Message], network: dict[int, Peer]) -> None:
        for msg in messages:
            network[msg.to].mailbox.append(msg)

    def apply(self, entries: list[eraftpb.Entry], proposals: dict[bytes, Proposal]) -> None:
        for entry in entries:
            if entry.entry_type == eraftpb.EntryConfChange:
                cc = eraftpb.ConfChange.FromString(entry.data)
                self.storage.set_conf_state(self.raw.apply_conf_change(cc))
            elif entry.data and entry.context not in self.applied_contexts:
                # A new leader's first entry is empty (data b""): nothing to apply.
                self.applied_contexts.add(entry.context)
                key, _, value = entry.data.partition(b"=")
                self.kv[key] = value
                self.applied.append(entry.data)
            if self.is_leader() and entry.context in proposals:
                proposals[entry.context].applied = True


def propose(leader: Peer, p: Proposal, round_no: int) -> None:
    try:
        if p.conf_change is not None:
            leader.raw.propose_conf_change(p.context, p.conf_change)
        else:
            leader.raw.propose(p.context, p.data)
    except ProposalDropped:
        return   # no leader for now: try again next round
    p.proposed_at_round = round_no


def run(seed: int = 0) -> dict[int, Peer]:
    """Run the five nodes until every proposal is applied everywhere; return them."""
    rng = random.Random(seed)
    network = {i: Peer(i, [NODE_IDS[0]], random.Random(rng.getrandbits(64)))
               for i in NODE_IDS}
    network[NODE_IDS[0]].raw.campaign()

    # Conf changes first, one at a time (a leader accepts a second one only once the
    # first is applied, thesis §4.1), then the proposals, a bounded window at a time.
    conf_changes = deque(
        Proposal(context=b"add-%d" % i,
                 conf_change=eraftpb.ConfChange(change_type=eraftpb.AddNode, node_id=i))
        for i in NODE_IDS[1:])
    puts = deque(Proposal(context=b"put-%d" % n, data=b"key%03d=value %d" % (n, n))
                 for n in range(PROPOSALS))
    proposals = {p.context: p for p in (*conf_changes, *puts)}
    in_flight: list[Proposal] = []

    for round_no in range(ROUNDS_MAX):
        for peer in network.values():
            peer.step_mailbox()
        for peer in network.values():
            peer.raw.tick()

        leader = next((p for p in network.values() if p.is_leader()), None)
        in_flight = [p for p in in_flight if not p.applied]
        if leader is not None:
            for p in in_flight:
                if round_no - p.proposed_at_round >= PROPOSAL_RETRY_ROUNDS:
                    propose(leader, p, round_no)
            if conf_changes and not in_flight:
                in_flight.append(conf_changes.popleft())
                propose(leader, in_flight[-1], round_no)
            while not conf_changes and puts and len(in_flight) < PROPOSALS_IN_FLIGHT_MAX:
                in_flight.append(puts.popleft())
                propose(leader, in_flight[-1], round_no)
            for p in in_flight:
                if p.proposed_at_round < 0:
                    propose(leader, p, round_no)

        for peer in network.values():
            peer.handle_ready(network, proposals)

        if all(len(peer.applied) == PROPOSALS for peer in network.values()):
            return network
    raise RuntimeError(f"not every node applied {PROPOSALS} proposals in {ROUNDS_MAX} "
                       f"rounds: {[len(p.applied) for p in network.values()]}")


def main() -> int:
    network = run()
    reference = network[NODE_IDS[0]].applied
    for peer in network.values():
        same = "same order as node 1" if peer.applied == reference else "DIFFERENT ORDER"
        status = peer.raw.status()
        print(f"node {peer.id}: applied {len(peer.applied)} proposals ({same}), "
              f"{len(peer.kv)} keys, term {status.hs.term}, "
              f"voters {sorted(peer.storage.initial_state().conf_state.voters)}")
    return 0 if all(p.applied == reference for p in network.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
