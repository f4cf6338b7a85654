"""A member publishing its own addresses never changes its role (issue 11, item 5).

The publish used to be a conf change — AddLearnerNode(self) from a learner, AddNode(self)
from a voter — so one proposed before a promotion and applied after it demoted the
member again, and a demoted voter's stale publish promoted it again. These tests build
a real Node in-process, take the publish it queues, and apply it through the node's
own apply path after the role changed."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.server import NodeConfig
from kvraft.server import storage_adapter as sa
from kvraft.server.metrics import NodeMetrics
from kvraft.server.node import Node
from kvraft.storage import DataDir, KVStateMachine, LevelDBStorage, MemberRecord

PEER_1 = "127.0.0.1:7001"


def make_node(tmp_path: Path, *, learner: bool) -> Node:
    """Member 2 of {1 voter, 2 learner-or-voter}, whose record lacks its addresses."""
    datadir = DataDir.open(tmp_path / "node2", 2)
    log_store, sm = LevelDBStorage(datadir), KVStateMachine(datadir)
    conf = eraftpb.ConfState(voters=[1], learners=[2]) if learner else \
        eraftpb.ConfState(voters=[1, 2])
    log_store.initialize(conf)
    sm.initialize_members([MemberRecord(1, PEER_1), MemberRecord(2, learner=learner)])
    store = sa.Store(datadir, log_store, sm, sa.CompactionPolicy())
    config = NodeConfig(node_id=2, data_dir=tmp_path / "node2", listen="127.0.0.1:7102",
                        peer_listen="127.0.0.1:7002", join=True)
    return Node(config, store, NodeMetrics())


def queued_publish(node: Node, index: int) -> eraftpb.Entry:
    """The entry the node's publish proposal becomes once appended at `index`."""
    node._leader_id = 1  # a leader is known: the node publishes
    node._maybe_publish_self()
    queued = node.proposals._queued
    assert len(queued) == 1, "the node did not publish its addresses"
    p = queued.pop()
    if p.conf_change is not None:  # as RawNode.propose_conf_change builds it
        return eraftpb.Entry(index=index, term=1, entry_type=eraftpb.EntryConfChange,
                             data=p.conf_change.SerializeToString())
    return eraftpb.Entry(index=index, term=1, data=p.data)


def role_change(index: int, change_type: int) -> eraftpb.Entry:
    cc = eraftpb.ConfChange(id=index, change_type=change_type, node_id=2)
    return eraftpb.Entry(index=index, term=1, entry_type=eraftpb.EntryConfChange,
                         data=cc.SerializeToString())


@pytest.mark.parametrize("was_learner, change, now_learner", [
    (True, eraftpb.AddNode, False),          # promoted while its publish was in flight
    (False, eraftpb.AddLearnerNode, True),   # demoted while its publish was in flight
])
def test_a_publish_applied_after_a_role_change_keeps_the_new_role(
        tmp_path: Path, was_learner: bool, change: int, now_learner: bool) -> None:
    async def scenario() -> None:
        node = make_node(tmp_path, learner=was_learner)
        try:
            publish = queued_publish(node, index=2)  # proposed in the old role ...
            # ... applied after the change, through the node's own path: handed out
            # (the conf change takes effect in Raft) and applied by the apply lane.
            node.applier.hand_out(node.raw, [role_change(1, change), publish])
            batch = node.applier.backlog.next_batch()
            assert batch is not None
            node.applier.apply_batch(batch)
            sm = node.store.sm
            cs = sm.conf_state()
            assert (2 in cs.learners) == now_learner and (2 in cs.voters) != now_learner, (
                f"the publish changed member 2's role back: {cs}")
            record = {m.id: m for m in sm.members()}[2]
            assert record.learner == now_learner
            assert (record.peer_address, record.client_address) == (
                node.config.peer_address, node.config.client_address), "not published"
            assert (2 in node.raw.raft.prs.learner_ids()) == now_learner
        finally:
            node.store.close()

    asyncio.run(scenario())
