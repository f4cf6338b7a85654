"""etcd's `Maintenance` service (SPEC §6): Status, MoveLeader, Alarm, Defragment,
Snapshot, Hash and HashKV.

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
* Alarm: replicated (kvraft/storage/mvcc_apply.py): GET lists the raised alarms after a
  read barrier; ACTIVATE and DEACTIVATE are proposed and answer, as etcd's, the one
  alarm they raised or disarmed (a disarm of an alarm not raised answers none). Status
  lists the raised alarms among its `errors`, as etcd's. A member raises its own NOSPACE
  alarm past --quota-backend-bytes (quota.py).
* Defragment compacts this member's LevelDB — every level, the Raft log's keys and the
  store's — with LevelDB's CompactRange, on a thread of its own: the member's reads
  and writes go on meanwhile (LevelDB is safe for concurrent use, and plyvel releases
  the GIL while it compacts), unlike etcd's, which stops the world (etcd #9222). One
  runs at a time; a second call waits for it. `close` waits for a running one, so the
  database is never closed under it.
* Snapshot streams a consistent image of the store — the state machine's snapshot
  stream at its applied index (kvraft/storage/snapshot.py, the one followers are sent),
  which has its own crc32 — in blobs of at most SNAPSHOT_BLOB_BYTES, zero bytes up to
  a multiple of 512 (etcdctl checks the size: bbolt's pages), then one last message
  whose blob is the SHA-256 of every byte before it, as etcd's does (etcdctl writes all
  of it to the file). A reader of the image stops at its trailer, before the padding.
  Only the first message carries a header. The total is not known ahead, so
  `remaining_bytes` is at least 32 (the checksum still to come) on every data message
  and 0 on the checksum.
* HashKV hashes the store's history at a revision R (0: the current one) from one
  point-in-time view: the keys live at the compact revision, then every change after
  it up to R (kvraft/storage/state_hash.py `hash_history`), with zlib's CRC-32 (etcd's
  is Castagnoli's: the values differ from etcd's, not their use). Members that
  applied the same entries give the same hash at R when their compact revisions
  agree, which is what `compact_revision` in the answer is for (the corruption check,
  corrupt_check.py, compares only such answers). R above the current revision is
  etcd's future-revision error, at or below the compact revision its compacted error.
* Hash hashes the member's whole replicated state — the key-value data's latest
  records, leases, alarms, auth, members, cluster version, current and compact
  revisions — from one point-in-time view (kvraft/storage/state_hash.py says what is
  in and what is left out, and why). etcd's is a CRC of its bbolt file, which differs
  between members holding the same data; kvraft's is equal on every member that
  applied the same entries, so it can be compared across members. The header's
  revision is the revision of the state hashed. During a snapshot install it is
  UNAVAILABLE (try again).
* Downgrade is UNIMPLEMENTED (the servicer's default).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.raft import SnapshotTemporarilyUnavailableError, StateRole
from kvraft.storage import commands
from kvraft.storage.datadir import DB_NAME

from .. import storage_adapter as sa
from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from ..waiters import NodeError
from . import errors
from .header import etcd_header

T = TypeVar("T")
log = logging.getLogger("kvraft.server.etcd")
# The etcd release whose v3 API kvraft serves, as Status reports it: etcd's clients
# parse it as semver (MAJOR.MINOR.PATCH); etcdctl prints it.
ETCD_VERSION = "3.5.0"
# The blob of one Snapshot message (etcd sends 32 KiB; larger blobs, fewer messages).
SNAPSHOT_BLOB_BYTES = 1 << 20
SHA256_BYTES = 32
# etcdctl (3.4's snapshot save) refuses a file whose size is not a multiple of this plus
# SHA256_BYTES ("sha256 checksum not found").
SNAPSHOT_PAGE_BYTES = 512
# Snapshot and Hash while a snapshot install replaces the state (readers see the old
# state meanwhile, but no new point-in-time view of it is taken).
INSTALLING = errors.EtcdStatus(grpc.StatusCode.UNAVAILABLE,
                               "kvraft: a snapshot is being installed; try again")


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
        # The thread defragmentations run on (one at a time: `_defrag_lock`).
        self._defrag_executor = ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="kvraft-defrag")
        self._defrag_lock: asyncio.Lock | None = None   # made on the loop, at first use
        # The reads of snapshot streams running on a thread now (each reads one blob).
        self._snapshot_reads: set[asyncio.Future[bytes | None]] = set()
        # Set by `close`: no defragmentation starts, no snapshot stream reads further.
        self._closed = False

    async def close(self) -> None:
        """Wait for a running defragmentation and the snapshot reads in flight: the
        caller closes the database next, which must not happen under them."""
        self._closed = True
        if self._snapshot_reads:
            await asyncio.wait(set(self._snapshot_reads))
        await asyncio.to_thread(self._defrag_executor.shutdown, wait=True)

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
            # etcd lists every raised alarm among the errors too (its AlarmMember's text).
            response.errors.extend(
                f"memberID:{a.member_id} alarm:{etcdpb.AlarmType.Name(a.alarm)}"
                for a in self.node.store.sm.alarms())
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

    def _compact(self) -> tuple[float, float]:
        """Compact the whole LevelDB (on the defrag thread): (when it started, as a Unix
        time, and how long it took in seconds)."""
        started_at, t0 = time.time(), time.monotonic()
        self.node.store.datadir.db.compact_range()
        return started_at, time.monotonic() - t0

    async def Defragment(self, request: etcdpb.DefragmentRequest,
                         context: grpc.aio.ServicerContext) -> etcdpb.DefragmentResponse:
        async def body(timeout_s: float) -> etcdpb.DefragmentResponse:
            if self._defrag_lock is None:
                self._defrag_lock = asyncio.Lock()
            async with self._defrag_lock:
                if self._closed:
                    raise errors.STOPPED.error()
                before = await asyncio.to_thread(db_size_bytes, self.db_dir)
                log.info("node %d: defragmenting the database (%d bytes)", self.node.id,
                         before)
                # Shielded: a client that gives up does not stop the compaction, and
                # the lock is held until it ends (one at a time, and `close` waits).
                future = asyncio.get_running_loop().run_in_executor(
                    self._defrag_executor, self._compact)
                started_at, took_s = await asyncio.shield(future)
                after = await asyncio.to_thread(db_size_bytes, self.db_dir)
                log.info("node %d: defragmented the database in %.3f s (from %.3f): "
                         "%d -> %d bytes", self.node.id, took_s, started_at, before, after)
            return etcdpb.DefragmentResponse(header=etcd_header(self.node))

        return await self._call("Defragment", context, body)

    async def Snapshot(self, request: etcdpb.SnapshotRequest,
                       context: grpc.aio.ServicerContext) -> None:
        async def body(timeout_s: float) -> None:
            try:
                handle = self.node.store.sm.create_snapshot()
            except SnapshotTemporarilyUnavailableError:
                raise INSTALLING.error() from None
            header = etcd_header(self.node)
            # A generator (SnapshotHandle.chunks): closing it ends the stream's hold.
            chunks = cast(Generator[bytes, None, None], handle.chunks(SNAPSHOT_BLOB_BYTES))
            loop = asyncio.get_running_loop()
            pending: asyncio.Future[bytes | None] | None = None
            digest = hashlib.sha256()
            sent = 0
            try:
                while True:
                    if self._closed:
                        raise errors.STOPPED.error()
                    # The image is read off the loop; shielded, so a cancelled call
                    # waits below for the read in flight before it closes the stream
                    # (and `close` waits for it before the database closes).
                    pending = loop.run_in_executor(None, next, chunks, None)
                    self._snapshot_reads.add(pending)
                    pending.add_done_callback(self._snapshot_reads.discard)
                    blob = await asyncio.shield(pending)
                    if blob is None:
                        break
                    digest.update(blob)
                    sent += len(blob)
                    response = etcdpb.SnapshotResponse(remaining_bytes=SHA256_BYTES,
                                                       blob=blob)
                    if sent == len(blob):
                        response.header.CopyFrom(header)
                    await context.write(response)
                # etcd's clients take a file whose size is a multiple of 512 bytes plus
                # the 32 of the checksum for a snapshot (bbolt's pages): pad the image.
                padding = bytes(-sent % SNAPSHOT_PAGE_BYTES)
                if padding:
                    digest.update(padding)
                    await context.write(etcdpb.SnapshotResponse(
                        remaining_bytes=SHA256_BYTES, blob=padding))
                await context.write(etcdpb.SnapshotResponse(remaining_bytes=0,
                                                            blob=digest.digest()))
                log.info("node %d: sent a snapshot of %d bytes (index %d)", self.node.id,
                         sent, handle.metadata.index)
            finally:
                if pending is not None and not pending.done():
                    with contextlib.suppress(BaseException):
                        await pending
                chunks.close()
                handle.close()

        await self._call("Snapshot", context, body)

    async def Hash(self, request: etcdpb.HashRequest,
                   context: grpc.aio.ServicerContext) -> etcdpb.HashResponse:
        async def body(timeout_s: float) -> etcdpb.HashResponse:
            try:
                hashed = await asyncio.to_thread(self.node.store.sm.state_hash)
            except SnapshotTemporarilyUnavailableError:
                raise INSTALLING.error() from None
            return etcdpb.HashResponse(header=etcd_header(self.node, hashed.revision),
                                       hash=hashed.hash)

        return await self._call("Hash", context, body)

    async def HashKV(self, request: etcdpb.HashKVRequest,
                     context: grpc.aio.ServicerContext) -> etcdpb.HashKVResponse:
        async def body(timeout_s: float) -> etcdpb.HashKVResponse:
            try:
                crc, compact, _ = await asyncio.to_thread(self.node.store.sm.hash_kv,
                                                          request.revision)
            except SnapshotTemporarilyUnavailableError:
                raise INSTALLING.error() from None
            # The header's revision is the store's current one, as etcd's.
            return etcdpb.HashKVResponse(header=etcd_header(self.node), hash=crc,
                                         compact_revision=compact)

        return await self._call("HashKV", context, body)

    async def Alarm(self, request: etcdpb.AlarmRequest,
                    context: grpc.aio.ServicerContext) -> etcdpb.AlarmResponse:
        async def body(timeout_s: float) -> etcdpb.AlarmResponse:
            # Alarms are replicated (mvcc_apply.py): GET reads this member's state
            # after a read barrier; ACTIVATE and DEACTIVATE go through Raft.
            deadline = asyncio.get_running_loop().time() + timeout_s
            await self.node.read_index(timeout_s)
            raised = self.node.store.sm.alarms()
            if request.action != etcdpb.AlarmRequest.GET:
                # etcd answers a change with the one alarm it changed: the alarm raised,
                # or the alarm disarmed (none if it was not raised) — `etcdctl alarm
                # disarm` prints those.
                asked = (request.memberID, request.alarm)
                was_raised = asked in {(a.member_id, a.alarm) for a in raised}
                request_id = sa.new_request_id()
                result = await self.node.propose(
                    request_id, commands.etcd_command(request_id, "alarm", request),
                    max(0.0, deadline - asyncio.get_running_loop().time()))
                if result.mvcc_error is not None:
                    raise result.mvcc_error
                after = result.response if isinstance(result.response, list) else []
                now_raised = asked in {(a.member_id, a.alarm) for a in after}
                changed = now_raised if request.action == etcdpb.AlarmRequest.ACTIVATE \
                    else was_raised and not now_raised
                raised = [a for a in (after if now_raised else raised)
                          if (a.member_id, a.alarm) == asked] if changed else []
            return etcdpb.AlarmResponse(header=etcd_header(self.node), alarms=[
                etcdpb.AlarmMember(memberID=a.member_id, alarm=etcdpb.AlarmType.Name(a.alarm))
                for a in raised])

        return await self._call("Alarm", context, body)
