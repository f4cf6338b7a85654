"""etcd's `Cluster` service (MemberAdd, MemberRemove, MemberUpdate, MemberList,
MemberPromote) on kvraft's membership (SPEC §6).

How etcd's members map onto kvraft's:

* ids: etcd's MemberAdd carries no id; the cluster picks a random nonzero 64-bit one
  that no member has (`new_member_id`). etcdctl prints it in hex; the new member is
  started with `kvraft serve --join --id <that id, decimal or 0x-hex> ...`.
* URLs: etcd names peers and clients by URL, kvraft by HOST:PORT. A member has exactly
  one peer URL, `http://HOST:PORT` of its `--peer-listen` (or `--advertise-peer`)
  address; its client URL is `http://` + the client address it published.
* names: etcd's member name is `--name`, empty until the member started; kvraft has no
  names, so a member is `kvraft-<decimal id>` once it published its client address
  (it started and reached a leader) and "" before, which etcdctl prints as
  "unstarted".
* changes are kvraft's simple conf changes (storage_adapter.member_conf_change), one
  at a time; a request that arrives while another change is in flight waits for it
  (within its deadline). MemberUpdate is a normal entry (command MemberUpdate): it
  changes the peer address every member dials, never the member's role.
* MemberPromote checks, on the leader, that the learner is in sync as etcd does (its
  match index at least 90% of the leader's); a follower forwards the call to the
  leader's client port.
* etcd's strict reconfiguration check: adding a voter, or removing one, is refused when
  the voters that have started would not be a quorum of the new configuration.
"""
from __future__ import annotations

import asyncio
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.raft import StateRole
from kvraft.storage import MemberRecord

from .. import storage_adapter as sa
from ..config import NodeConfig, ServeError, parse_address
from ..metrics import NodeMetrics
from ..node import Node
from ..tls import member_channel
from . import errors
from .errors import EtcdError
from .header import etcd_header

T = TypeVar("T")
# etcd's readyPercent: a learner is in sync when its match index is at least this
# fraction of the leader's (etcd server.go, isLearnerReady).
LEARNER_READY_FRACTION = 0.9
# How often a member change waiting for the one in flight looks again.
CONF_CHANGE_POLL_S = 0.02
# Set on a MemberPromote a follower forwards to the leader: the leader answers it
# itself (or refuses), it never forwards again.
FORWARDED_METADATA_KEY = "kvraft-forwarded"
MEMBER_ID_BITS = 64
URL_SCHEMES = ("http", "https")


def member_name(record: MemberRecord | None, member_id: int) -> str:
    """etcd's member name: "" until the member started (published its client address)."""
    if record is None or not record.client_address:
        return ""
    return f"kvraft-{member_id}"


def url_of_address(address: str) -> str:
    """HOST:PORT -> http://HOST:PORT (etcd's URL of a kvraft address)."""
    return f"http://{address}"


def address_of_url(url: str) -> str:
    """etcd's peer URL -> kvraft's HOST:PORT; EtcdError MEMBER_BAD_URLS unless it is
    http(s)://HOST:PORT with nothing after the port (etcd's types.NewURLs)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in URL_SCHEMES or parts.path not in ("", "/") or \
                parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(url)
        parse_address(parts.netloc, "peer URL")
    except (ValueError, ServeError):
        raise errors.MEMBER_BAD_URLS.error() from None
    return parts.netloc


def single_peer_address(urls: list[str]) -> str:
    """A kvraft member has one peer address: exactly one URL, as HOST:PORT."""
    if not urls:
        raise errors.MEMBER_BAD_URLS.error()
    if len(urls) > 1:
        raise EtcdError(grpc.StatusCode.INVALID_ARGUMENT,
                        "kvraft: a member has exactly one peer URL")
    return address_of_url(urls[0])


def new_member_id(taken: set[int]) -> int:
    """A random nonzero 64-bit member id that no member has (etcd's ids are random
    64-bit numbers too)."""
    while True:
        member_id = secrets.randbits(MEMBER_ID_BITS)
        if member_id and member_id not in taken:
            return member_id


def quorum(voters: int) -> int:
    return voters // 2 + 1


class EtcdClusterService(etcdpb_grpc.ClusterServicer):
    def __init__(self, node: Node, config: NodeConfig, metrics: NodeMetrics) -> None:
        self.node = node
        self.config = config
        self.metrics = metrics

    # ------------------------------------------------------------------ helpers
    def _records(self) -> dict[int, MemberRecord]:
        return {m.id: m for m in self.node.members()}

    def _members(self) -> list[etcdpb.Member]:
        """Every member, by id (etcd sorts them so)."""
        records = self._records()
        learners = self.node.learner_ids()
        out = []
        for member_id in sorted(self.node.member_ids()):
            r = records.get(member_id)
            out.append(etcdpb.Member(
                ID=member_id, name=member_name(r, member_id),
                peerURLs=[url_of_address(r.peer_address)] if r and r.peer_address else [],
                clientURLs=[url_of_address(r.client_address)] if r and r.client_address
                else [],
                isLearner=member_id in learners))
        return out

    def _started(self, member_id: int, records: dict[int, MemberRecord]) -> bool:
        """etcd's Member.IsStarted: the member has published its attributes. This node
        has, since it is serving."""
        r = records.get(member_id)
        return member_id == self.node.id or (r is not None and bool(r.client_address))

    def _voters(self) -> set[int]:
        return self.node.member_ids() - self.node.learner_ids()

    def _check_peer_address_free(self, address: str, member_id: int = 0) -> None:
        for r in self.node.members():
            if r.peer_address == address and r.id != member_id:
                raise errors.PEER_URL_EXIST.error()

    async def _wait_no_pending_change(self, deadline: float) -> None:
        """Raft takes one member change at a time: wait for the one in flight."""
        loop = asyncio.get_running_loop()
        while self.node.pending_conf_change():
            if loop.time() >= deadline:
                raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION,
                                "kvraft: another member change is still in progress")
            await asyncio.sleep(CONF_CHANGE_POLL_S)

    async def _call(self, rpc: str, context: grpc.aio.ServicerContext,
                    body: Callable[[float], Awaitable[T]]) -> T:
        timeout_s = errors.deadline_s(context, self.config.default_deadline_s)

        async def run() -> T:
            if self.node.stopping:
                raise errors.STOPPED.error()
            return await body(timeout_s)

        return await errors.serve_call(f"etcd.Cluster.{rpc}", context, self.metrics, run)

    # ------------------------------------------------------------------ RPCs
    async def MemberAdd(self, request: etcdpb.MemberAddRequest,
                        context: grpc.aio.ServicerContext) -> etcdpb.MemberAddResponse:
        async def body(timeout_s: float) -> etcdpb.MemberAddResponse:
            deadline = asyncio.get_running_loop().time() + timeout_s
            address = single_peer_address(list(request.peerURLs))
            await self._wait_no_pending_change(deadline)
            self._check_peer_address_free(address)
            if not request.isLearner:
                # etcd's IsReadyToAddVotingMember: the started voters stay a quorum.
                records = self._records()
                voters = self._voters()
                started = sum(1 for v in voters if self._started(v, records))
                if started < quorum(len(voters) + 1):
                    raise errors.MEMBER_NOT_ENOUGH_STARTED.error()
            member_id = new_member_id(self.node.member_ids() | set(self._records()))
            cc = sa.member_conf_change(member_id, address, "", request.isLearner, add=True,
                                       cc_id=sa.new_request_id())
            await self.node.propose_conf_change(
                cc, max(0.0, deadline - asyncio.get_running_loop().time()))
            return etcdpb.MemberAddResponse(
                header=etcd_header(self.node),
                member=etcdpb.Member(ID=member_id, peerURLs=[url_of_address(address)],
                                     isLearner=request.isLearner),
                members=self._members())

        return await self._call("MemberAdd", context, body)

    async def MemberRemove(self, request: etcdpb.MemberRemoveRequest,
                           context: grpc.aio.ServicerContext) -> etcdpb.MemberRemoveResponse:
        async def body(timeout_s: float) -> etcdpb.MemberRemoveResponse:
            deadline = asyncio.get_running_loop().time() + timeout_s
            await self._wait_no_pending_change(deadline)
            if request.ID not in self.node.member_ids():
                raise errors.MEMBER_NOT_FOUND.error()
            voters = self._voters()
            if request.ID in voters:
                # etcd's IsReadyToRemoveVotingMember: the started voters that remain
                # are a quorum of the voters that remain.
                records = self._records()
                rest = voters - {request.ID}
                started = sum(1 for v in rest if self._started(v, records))
                if not rest or started < quorum(len(rest)):
                    raise errors.MEMBER_NOT_ENOUGH_STARTED.error()
            cc = sa.member_conf_change(request.ID, "", "", False, add=False,
                                       cc_id=sa.new_request_id())
            await self.node.propose_conf_change(
                cc, max(0.0, deadline - asyncio.get_running_loop().time()))
            return etcdpb.MemberRemoveResponse(header=etcd_header(self.node),
                                               members=self._members())

        return await self._call("MemberRemove", context, body)

    async def MemberUpdate(self, request: etcdpb.MemberUpdateRequest,
                           context: grpc.aio.ServicerContext) -> etcdpb.MemberUpdateResponse:
        async def body(timeout_s: float) -> etcdpb.MemberUpdateResponse:
            if request.ID not in self.node.member_ids():
                raise errors.MEMBER_NOT_FOUND.error()
            address = single_peer_address(list(request.peerURLs))
            self._check_peer_address_free(address, request.ID)
            request_id = sa.new_request_id()
            # A MemberUpdate entry with an empty client address keeps the recorded one;
            # incarnation 0 checks nothing (storage MemberUpdate).
            result = await self.node.propose(
                request_id, sa.publish_self_command(request_id, request.ID, address, "", 0),
                timeout_s)
            if result.error:
                raise EtcdError(grpc.StatusCode.FAILED_PRECONDITION, result.error)
            return etcdpb.MemberUpdateResponse(header=etcd_header(self.node),
                                               members=self._members())

        return await self._call("MemberUpdate", context, body)

    async def MemberList(self, request: etcdpb.MemberListRequest,
                         context: grpc.aio.ServicerContext) -> etcdpb.MemberListResponse:
        async def body(timeout_s: float) -> etcdpb.MemberListResponse:
            if request.linearizable:
                await self.node.read_index(timeout_s)
            return etcdpb.MemberListResponse(header=etcd_header(self.node),
                                             members=self._members())

        return await self._call("MemberList", context, body)

    async def MemberPromote(self, request: etcdpb.MemberPromoteRequest,
                            context: grpc.aio.ServicerContext
                            ) -> etcdpb.MemberPromoteResponse:
        forwarded = any(k == FORWARDED_METADATA_KEY
                        for k, _ in (context.invocation_metadata() or ()))

        async def body(timeout_s: float) -> etcdpb.MemberPromoteResponse:
            deadline = asyncio.get_running_loop().time() + timeout_s
            if request.ID not in self.node.member_ids():
                raise errors.MEMBER_NOT_FOUND.error()
            if request.ID not in self.node.learner_ids():
                raise errors.MEMBER_NOT_LEARNER.error()
            raft = self.node.raw.raft
            if raft.state != StateRole.Leader:
                if forwarded:
                    raise errors.NOT_LEADER.error()
                return await self._forward_promote(request, timeout_s)
            await self._wait_no_pending_change(deadline)
            # etcd's isLearnerReady, on the leader: the learner's log is close enough
            # to the leader's that making it a voter cannot stall commits.
            progress = raft.prs.progress
            learner, leader = progress.get(request.ID), progress.get(self.node.id)
            if learner is None or leader is None or \
                    learner.matched < leader.matched * LEARNER_READY_FRACTION:
                raise errors.LEARNER_NOT_READY.error()
            r = self._records().get(request.ID) or MemberRecord(request.ID)
            cc = sa.member_conf_change(request.ID, r.peer_address, r.client_address, False,
                                       add=True, cc_id=sa.new_request_id())
            await self.node.propose_conf_change(
                cc, max(0.0, deadline - asyncio.get_running_loop().time()))
            return etcdpb.MemberPromoteResponse(header=etcd_header(self.node),
                                                members=self._members())

        return await self._call("MemberPromote", context, body)

    async def _forward_promote(self, request: etcdpb.MemberPromoteRequest,
                               timeout_s: float) -> etcdpb.MemberPromoteResponse:
        """A follower has no view of the learner's progress: ask the leader (etcd
        forwards to the leader's peer URL; kvraft to its peer port, member_calls.py)."""
        leader_id = self.node.raw.raft.leader_id
        record = self._records().get(leader_id) if leader_id else None
        if record is None or not record.peer_address:
            raise errors.NO_LEADER.error()
        async with member_channel(self.config, record.peer_address) as channel:
            stub = etcdpb_grpc.ClusterStub(channel)
            try:
                response: etcdpb.MemberPromoteResponse = await stub.MemberPromote(
                    request, timeout=timeout_s, metadata=((FORWARDED_METADATA_KEY, "1"),))
            except grpc.aio.AioRpcError as e:
                raise EtcdError(e.code(), e.details() or "") from None
        return response
