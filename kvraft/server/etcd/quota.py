"""`--quota-backend-bytes`: a member whose database outgrows the quota raises its NOSPACE
alarm through Raft, and from the entry that raises it every member refuses the writes
that add data (kvraft/storage/mvcc_apply.py), as etcd does.

The size is LevelDB's: the bytes of the files of the member's `db/` directory (tables,
write-ahead log, manifest) — what fills the disk. A delete first ADDS a tombstone
there; the space comes back when LevelDB compacts the tables holding the key's records
and its tombstone. So freeing space is: delete (and `Compact` the history of what was
deleted), then `Defragment` (LevelDB's full compaction), then `alarm disarm`. Status
reports this size as dbSize (and the live data's estimate as dbSizeInUse).

The alarm is raised once per crossing: the watch proposes it again (every check) only
while the size is over the quota and the replicated state does not hold it yet. It
never disarms by itself: an operator does, as in etcd (a store that filled once is
looked at before it takes writes again).
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.storage import commands
from kvraft.storage.mvcc_apply import CORRUPT, NOSPACE

from ..node import Node
from .maintenance import db_size_bytes

log = logging.getLogger("kvraft.server")

CHECK_INTERVAL_S = 1.0


class QuotaWatch:
    def __init__(self, node: Node, quota_bytes: int, db_dir: Path,
                 interval_s: float = CHECK_INTERVAL_S) -> None:
        self._node = node
        self._quota = quota_bytes
        self._db_dir = db_dir
        self._interval_s = interval_s
        self.size_bytes = 0    # at the last check

    def _raised(self) -> bool:
        return any(a.member_id == self._node.id and a.alarm == NOSPACE
                   for a in self._node.store.sm.alarms())

    def _export_alarms(self) -> None:
        """kvraft_alarms{alarm}: how many members have each alarm type raised."""
        raised = [a.alarm for a in self._node.store.sm.alarms()]
        for alarm in (NOSPACE, CORRUPT):
            self._node.metrics.alarms.labels(etcdpb.AlarmType.Name(alarm)).set(
                raised.count(alarm))

    async def run(self) -> None:
        while not self._node.stopping:
            self.size_bytes = await asyncio.to_thread(db_size_bytes, self._db_dir)
            self._node.metrics.db_size_bytes.set(self.size_bytes)
            self._export_alarms()
            if self.size_bytes > self._quota and self._node.leader_id and not self._raised():
                log.warning("node %d: database %d bytes, over --quota-backend-bytes %d: "
                            "raising the NOSPACE alarm", self._node.id, self.size_bytes,
                            self._quota)
                request = etcdpb.AlarmRequest(action=etcdpb.AlarmRequest.ACTIVATE,
                                              memberID=self._node.id, alarm=etcdpb.NOSPACE)
                self._node.propose_own(commands.etcd_encoder("alarm", request),
                                       "NOSPACE alarm")
            await asyncio.sleep(self._interval_s)
