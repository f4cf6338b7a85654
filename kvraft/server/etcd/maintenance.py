"""etcd's `Maintenance` service (SPEC §6): Status, MoveLeader and Alarm (list).

* Status answers as etcd's does: this member's view of the leader, its Raft commit
  index (`raftIndex`), term and applied index, its learner flag, and `errors` ("etcdserver:
  no leader" when it knows none). `version` is ETCD_VERSION, the etcd release whose API
  kvraft serves, in the form etcd's clients parse ("3.5.0"). `dbSize` is the bytes of the
  files of the member's LevelDB directory (tables, write-ahead log, manifest): what the
  store occupies on disk. LevelDB has no free pages to report (space that overwritten
  and deleted data hold is reclaimed by its background compaction, not kept for reuse
  as bbolt's is), so `dbSizeInUse` is `dbSize`.
* MoveLeader must be sent to the leader, as in etcd (etcdctl finds it with Status):
  elsewhere it is FAILED_PRECONDITION "etcdserver: not leader". A target that is not a
  voter is etcd's "bad leader transferee"; the call returns once the target leads.
* Alarm: kvraft raises no alarms yet; GET lists none and DEACTIVATE disarms none
  (`etcdctl alarm list|disarm` work), ACTIVATE is UNIMPLEMENTED until the NOSPACE and
  CORRUPT alarms exist.
* Defragment, Hash, HashKV, Snapshot and Downgrade are UNIMPLEMENTED (the servicer's
  defaults).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.raft import StateRole
from kvraft.storage.datadir import DB_NAME

from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from ..waiters import NodeError
from . import errors
from .errors import EtcdError
from .header import etcd_header

T = TypeVar("T")
# The etcd release whose v3 API kvraft serves, as Status reports it: etcd's clients
# parse it as semver (MAJOR.MINOR.PATCH); etcdctl prints it.
ETCD_VERSION = "3.5.0"


def db_size_bytes(db_dir: Path) -> int:
    """The bytes of the files in a LevelDB directory (a file LevelDB deletes while it
    is counted is skipped). Reads the directory: call it off the event loop."""
    total = 0
    try:
        entries = list(os.scandir(db_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


class EtcdMaintenanceService(etcdpb_grpc.MaintenanceServicer):
    def __init__(self, node: Node, config: NodeConfig, metrics: NodeMetrics) -> None:
        self.node = node
        self.config = config
        self.metrics = metrics
        self.db_dir = Path(node.store.datadir.path) / DB_NAME

    async def _call(self, rpc: str, context: grpc.aio.ServicerContext,
                    body: Callable[[float], Awaitable[T]]) -> T:
        timeout_s = errors.deadline_s(context, self.config.default_deadline_s)

        async def run() -> T:
            if self.node.stopping:
                raise errors.STOPPED.error()
            return await body(timeout_s)

        return await errors.serve_call(f"etcd.Maintenance.{rpc}", context, self.metrics, run)

    async def Status(self, request: etcdpb.StatusRequest,
                     context: grpc.aio.ServicerContext) -> etcdpb.StatusResponse:
        async def body(timeout_s: float) -> etcdpb.StatusResponse:
            size = await asyncio.to_thread(db_size_bytes, self.db_dir)
            # Everything else is read at once, after the only await: one point in time.
            raft = self.node.raw.raft
            response = etcdpb.StatusResponse(
                header=etcd_header(self.node), version=ETCD_VERSION,
                dbSize=size, dbSizeInUse=size, leader=raft.leader_id,
                raftIndex=raft.raft_log.committed, raftTerm=raft.term,
                raftAppliedIndex=self.node.store.sm.applied_index,
                isLearner=self.node.id in self.node.learner_ids())
            if raft.leader_id == 0:
                response.errors.append(errors.NO_LEADER_STATUS_ERROR)
            return response

        return await self._call("Status", context, body)

    async def MoveLeader(self, request: etcdpb.MoveLeaderRequest,
                         context: grpc.aio.ServicerContext) -> etcdpb.MoveLeaderResponse:
        async def body(timeout_s: float) -> etcdpb.MoveLeaderResponse:
            raft = self.node.raw.raft
            if raft.state != StateRole.Leader:
                raise errors.NOT_LEADER.error()
            target = request.targetID
            voters = self.node.member_ids() - self.node.learner_ids()
            if target not in voters:
                raise errors.BAD_LEADER_TRANSFEREE.error()
            try:
                await self.node.transfer_leader(target, timeout_s)
            except NodeError as e:
                if e.code == grpc.StatusCode.UNAVAILABLE and not self.node.stopping:
                    raise errors.LEADER_TRANSFER_TIMEOUT.error() from None
                raise
            return etcdpb.MoveLeaderResponse(header=etcd_header(self.node))

        return await self._call("MoveLeader", context, body)

    async def Alarm(self, request: etcdpb.AlarmRequest,
                    context: grpc.aio.ServicerContext) -> etcdpb.AlarmResponse:
        async def body(timeout_s: float) -> etcdpb.AlarmResponse:
            if request.action == etcdpb.AlarmRequest.ACTIVATE:
                raise EtcdError(grpc.StatusCode.UNIMPLEMENTED,
                                "kvraft: alarms cannot be activated yet")
            # GET lists none; DEACTIVATE disarms none (etcd answers a disarm of an
            # alarm that is not raised with no alarms, too).
            return etcdpb.AlarmResponse(header=etcd_header(self.node), alarms=[])

        return await self._call("Alarm", context, body)
