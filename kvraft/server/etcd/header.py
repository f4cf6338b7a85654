"""The `etcdserverpb.ResponseHeader` of every etcd answer: cluster id, this member's
id, the store's revision and the Raft term (SPEC §6)."""
from __future__ import annotations

from kvraft.proto import etcdserverpb_pb2 as etcdpb

from ..node import Node


def etcd_header(node: Node, revision: int | None = None) -> etcdpb.ResponseHeader:
    """The header as of now; `revision` overrides the store's current revision (an
    answer reports the revision its write or read happened at)."""
    return etcdpb.ResponseHeader(
        cluster_id=node.cluster_id, member_id=node.id,
        revision=node.store.sm.revision if revision is None else revision,
        raft_term=node.raw.raft.term)
