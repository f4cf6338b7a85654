"""`--corrupt-check-time`: the leader compares the members' data and raises the CORRUPT
alarm for a member whose data differs (etcd's periodic corruption check,
`--experimental-corrupt-check-time`).

Every interval the leader hashes its own history with HashKV at its current revision R
(kvraft/storage/state_hash.py `hash_history`), asks every other member for HashKV at
R over that member's peer port, and compares. Only answers with the leader's compact revision are
compared (etcd's rule: the hash at R covers the history after the compact revision, so
members that have not applied the same compaction yet differ without being corrupt).
A member that cannot be reached, has not applied R yet (etcd's future-revision error,
after a few short retries) or has compacted differently is skipped, not flagged.

The decision (`find_corrupt`): the members whose hash differs from the hash a strict
majority of the compared answers share — the leader's own answer counts as one, so a
leader whose data differs is flagged by its followers. Without such a majority (two
answers that disagree, or three different hashes) the alarm names no member (member
0), as etcd 3.5's check always does ("it isn't clear which member's data is
corrupted"): the cluster stops taking writes all the same. The leader logs one line
naming the members, their hashes and the revision, and proposes an `alarm` ACTIVATE
CORRUPT for each flagged member whose alarm is not raised yet. From that entry on
every member refuses writes with etcd's "etcdserver: corrupt cluster" (DATA_LOSS;
kvraft/storage/mvcc_apply.py) until an operator replaces the member and disarms the
alarm (docs/operations.md). The check never disarms an alarm by itself.

The peers' HashKV calls go to their peer ports (member_calls.py serves HashKV there, as
etcd asks its peers over their peer URLs) with this member's peer TLS (tls.py
`member_channel`, as the lease and promote forwarding): the client port's access check
never sees them, so they need no root token with auth enabled.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.raft import StateRole
from kvraft.storage import commands
from kvraft.storage.commands import MemberRecord
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MVCC, CORRUPT

from ..config import NodeConfig
from ..node import Node
from ..tls import member_channel
from ..transport import CHANNEL_OPTIONS

log = logging.getLogger("kvraft.server")

# A member that has not applied R yet is asked again this many times, this far apart
# (a follower is normally a few milliseconds behind its leader).
FUTURE_RETRIES = 3
FUTURE_RETRY_S = 0.2
# The member id of an alarm that cannot name a member (no majority): etcd 3.5's.
UNKNOWN_MEMBER = 0


@dataclass(frozen=True, slots=True)
class HashAnswer:
    hash: int
    compact_revision: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """`corrupt`: the members to raise CORRUPT for (UNKNOWN_MEMBER when no majority
    says which); `compared`: the members whose answers were compared; `majority`: the
    hash a strict majority of them shares (None: none does)."""

    corrupt: frozenset[int]
    compared: frozenset[int]
    majority: int | None


def find_corrupt(compact_revision: int, answers: dict[int, HashAnswer]) -> Verdict:
    """Which members' data differs (module docstring): `answers` are every member's
    HashKV at one revision, the leader's included; only those at `compact_revision`
    are compared."""
    compared = {m: a.hash for m, a in answers.items() if a.compact_revision == compact_revision}
    counts = collections.Counter(compared.values())
    majority = next((h for h, n in counts.items() if 2 * n > len(compared)), None)
    if len(counts) <= 1:
        return Verdict(frozenset(), frozenset(compared), majority)
    if majority is None:
        return Verdict(frozenset({UNKNOWN_MEMBER}), frozenset(compared), None)
    return Verdict(frozenset(m for m, h in compared.items() if h != majority),
                   frozenset(compared), majority)


class CorruptionCheck:
    """The leader's periodic check (module docstring); `run` is the node's task."""

    def __init__(self, node: Node, config: NodeConfig, interval_s: float) -> None:
        assert interval_s > 0
        self._node = node
        self._config = config
        self._interval_s = interval_s

    async def run(self) -> None:
        while not self._node.stopping:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except Exception as e:   # a failed round is logged; the next one runs
                log.warning("node %d: corruption check failed: %s", self._node.id, e)

    async def check_once(self) -> Verdict | None:
        """One round; None when this member does not lead (or before MVCC)."""
        node = self._node
        sm = node.store.sm
        if node.raw.raft.state != StateRole.Leader or sm.cluster_version < CLUSTER_VERSION_MVCC:
            return None
        own, compact, revision = await asyncio.to_thread(sm.hash_kv, 0)
        peers = [m for m in sm.members() if m.id != node.id and m.peer_address]
        asked = await asyncio.gather(*(self._peer_hash(m, revision) for m in peers))
        answers = {node.id: HashAnswer(own, compact)}
        answers.update((m.id, a) for m, a in zip(peers, asked, strict=True) if a is not None)
        verdict = find_corrupt(compact, answers)
        if not verdict.corrupt:
            # One line a round, as etcd's "finished peer corruption check".
            log.info("node %d: corruption check at revision %d: %d members compared, "
                     "all agree; %d skipped", node.id, revision, len(verdict.compared),
                     len(peers) + 1 - len(verdict.compared))
            return verdict
        hashes = ", ".join(f"{m}={answers[m].hash:#010x}" for m in sorted(verdict.compared))
        named = ", ".join(str(m) for m in sorted(verdict.corrupt))
        log.warning("node %d: corruption check at revision %d (compact revision %d): "
                    "member(s) %s differ from %s; hashes %s: raising the CORRUPT alarm",
                    node.id, revision, compact, named,
                    "the majority" if verdict.majority is not None else
                    "each other, with no majority", hashes)
        raised = {a.member_id for a in sm.alarms() if a.alarm == CORRUPT}
        for member_id in sorted(verdict.corrupt - raised):
            request = etcdpb.AlarmRequest(action=etcdpb.AlarmRequest.ACTIVATE,
                                          memberID=member_id, alarm=etcdpb.CORRUPT)
            node.propose_own(commands.etcd_encoder("alarm", request), "CORRUPT alarm")
        return verdict

    async def _peer_hash(self, member: MemberRecord, revision: int) -> HashAnswer | None:
        """The member's HashKV at `revision`; None when it is skipped (unreachable,
        not at `revision` yet, compacted past it, any other failure)."""
        timeout_s = self._config.default_deadline_s
        async with member_channel(self._config, member.peer_address,
                                  CHANNEL_OPTIONS) as channel:
            stub = etcdpb_grpc.MaintenanceStub(channel)
            for attempt in range(FUTURE_RETRIES + 1):
                try:
                    response = await stub.HashKV(
                        etcdpb.HashKVRequest(revision=revision), timeout=timeout_s)
                except grpc.aio.AioRpcError as e:
                    future = e.code() == grpc.StatusCode.OUT_OF_RANGE and \
                        "future revision" in (e.details() or "")
                    if future and attempt < FUTURE_RETRIES:
                        await asyncio.sleep(FUTURE_RETRY_S)
                        continue
                    log.info("node %d: corruption check skips member %d at revision %d: "
                             "%s %s", self._node.id, member.id, revision, e.code().name,
                             e.details())
                    return None
                if response.header.member_id != member.id:
                    log.info("node %d: corruption check skips member %d: %s answers as "
                             "member %d", self._node.id, member.id, member.peer_address,
                             response.header.member_id)
                    return None
                return HashAnswer(response.hash, response.compact_revision)
        return None
