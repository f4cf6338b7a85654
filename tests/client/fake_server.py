"""A fake kvraft cluster: real gRPC servers on loopback over one shared in-memory dict.

It speaks the KV and Cluster services of protos/kvraft.proto so the client and the CLI
can be tested (failover, error mapping, formatting) before — and independently of —
the real node. It validates like SPEC §2 (empty key, key over 4 KiB, value over 1 MiB)
and lets a test make one node misbehave:

- "ok": answer normally;
- "unavailable": UNAVAILABLE without applying (and without the retry-safe mark);
- "unavailable-retry-safe": UNAVAILABLE marked `kvraft-retry-safe: 1`;
- "apply-then-unavailable": apply the write, then answer UNAVAILABLE (outcome unknown);
  "apply-then-unavailable:<details>" does so with those details;
- "hang": hold the call until the client's deadline passes, then apply a write anyway
  (a write whose outcome the client cannot know);
- "error:<CODE>": answer that gRPC status code, e.g. "error:FAILED_PRECONDITION".
"""
from __future__ import annotations

import socket
import threading
from collections import Counter
from concurrent import futures

import grpc

from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc
from kvraft.wire import RETRY_SAFE_METADATA_KEY, RETRY_SAFE_METADATA_VALUE

MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1 << 20
HANG_MAX_S = 30.0  # a hung call never outlives this, whatever its deadline


class FakeCluster:
    """N fake members sharing one store; `leader_id` is what every header reports."""

    def __init__(self, size: int = 3, *, scan_page_max: int = 1000) -> None:
        self.lock = threading.Lock()
        self.store: dict[bytes, bytes] = {}
        self.leader_id = 1
        self.term = 2
        self.applied_index = 0
        self.scan_page_max = scan_page_max
        self.applied_writes: list[tuple[int, str]] = []  # (member id, method) per apply
        self.nodes = [FakeNode(self, i + 1) for i in range(size)]
        self.members = {
            node.member_id: pb.Member(id=node.member_id, peer_address=f"127.0.0.1:{1000 + i}",
                                      client_address=node.endpoint)
            for i, node in enumerate(self.nodes)
        }

    @property
    def endpoints(self) -> list[str]:
        return [node.endpoint for node in self.nodes]

    def node(self, member_id: int) -> FakeNode:
        return self.nodes[member_id - 1]

    def header(self, member_id: int) -> pb.ResponseHeader:
        return pb.ResponseHeader(member_id=member_id, leader_id=self.leader_id,
                                 term=self.term, applied_index=self.applied_index)

    def stop(self) -> None:
        for node in self.nodes:
            node.release()


class FakeNode(pb_grpc.KVServicer, pb_grpc.ClusterServicer):
    def __init__(self, cluster: FakeCluster, member_id: int) -> None:
        self.cluster = cluster
        self.member_id = member_id
        self.mode = "ok"
        self.calls: Counter[str] = Counter()
        self._released = threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_KVServicer_to_server(self, self._server)
        pb_grpc.add_ClusterServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        assert self.port > 0
        self.endpoint = f"127.0.0.1:{self.port}"
        self._server.start()
        self._running = True
        self._port_holder: socket.socket | None = None

    def stop(self) -> None:
        """Stop serving; the port then refuses connections. It stays bound (not
        listening) until release(), so no other process can take it meanwhile and
        receive requests meant for this member."""
        if self._running:
            self._running = False
            self._released.set()
            self._server.stop(grace=0).wait(timeout=5)
            holder = socket.socket()
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                holder.bind(("127.0.0.1", self.port))
            except OSError:
                holder.close()
            else:
                self._port_holder = holder

    def release(self) -> None:
        self.stop()
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None

    # ------------------------------------------------------------------ helpers

    def _enter(self, method: str, context: grpc.ServicerContext, write: bool,
               apply) -> object:
        """Count the call, act out the mode, run `apply` (under the store lock)."""
        self.calls[method] += 1
        mode = self.mode
        if mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "no leader (fake)")
        if mode == "unavailable-retry-safe":
            context.set_trailing_metadata(
                ((RETRY_SAFE_METADATA_KEY, RETRY_SAFE_METADATA_VALUE),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "no leader, not proposed (fake)")
        if mode.startswith("error:"):
            code = getattr(grpc.StatusCode, mode.split(":", 1)[1])
            context.abort(code, f"injected {code.name.lower()} (fake)")
        if mode == "hang":
            remaining_s = context.time_remaining() or HANG_MAX_S
            self._released.wait(timeout=min(remaining_s + 0.2, HANG_MAX_S))
            if write:
                self._apply(method, apply)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "hung (fake)")
        result = self._apply(method, apply) if write else apply()
        if mode == "apply-then-unavailable" or mode.startswith("apply-then-unavailable:"):
            details = mode.partition(":")[2] or "connection lost after apply (fake)"
            context.abort(grpc.StatusCode.UNAVAILABLE, details)
        return result

    def _apply(self, method: str, apply):
        with self.cluster.lock:
            result = apply()
            self.cluster.applied_index += 1
            self.cluster.applied_writes.append((self.member_id, method))
            return result

    def _header(self) -> pb.ResponseHeader:
        return self.cluster.header(self.member_id)

    @staticmethod
    def _check_key(key: bytes, context: grpc.ServicerContext) -> None:
        if not key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty key")
        if len(key) > MAX_KEY_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"key of {len(key)} bytes exceeds {MAX_KEY_BYTES}")

    @staticmethod
    def _check_value(value: bytes, context: grpc.ServicerContext) -> None:
        if len(value) > MAX_VALUE_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES}")

    # ------------------------------------------------------------------ KV

    def Put(self, request, context):
        self._check_key(request.key, context)
        self._check_value(request.value, context)
        store = self.cluster.store
        self._enter("Put", context, True, lambda: store.__setitem__(request.key, request.value))
        return pb.PutResponse(header=self._header())

    def Get(self, request, context):
        self._check_key(request.key, context)
        value = self._enter("Get", context, False, lambda: self.cluster.store.get(request.key))
        return pb.GetResponse(header=self._header(), found=value is not None,
                              value=value or b"")

    def Delete(self, request, context):
        self._check_key(request.key, context)
        store = self.cluster.store
        existed = self._enter("Delete", context, True,
                              lambda: store.pop(request.key, None) is not None)
        return pb.DeleteResponse(header=self._header(), deleted=existed)

    def Scan(self, request, context):
        def page():
            keys = sorted(k for k in self.cluster.store
                          if k >= request.start and (not request.end or k < request.end))
            cap = self.cluster.scan_page_max
            if request.limit:
                cap = min(cap, request.limit)
            return keys[:cap], len(keys) > cap

        keys, more = self._enter("Scan", context, False, page)
        kvs = [pb.KeyValue(key=k, value=self.cluster.store[k]) for k in keys]
        return pb.ScanResponse(header=self._header(), kvs=kvs, more=more)

    def CompareAndSwap(self, request, context):
        self._check_key(request.key, context)
        self._check_value(request.value, context)
        store = self.cluster.store

        def cas():
            current = store.get(request.key)
            expected = request.expected if request.HasField("expected") else None
            ok = current == expected
            if ok:
                store[request.key] = request.value
            return ok, store.get(request.key)

        ok, current = self._enter("CompareAndSwap", context, True, cas)
        return pb.CompareAndSwapResponse(header=self._header(), succeeded=ok,
                                         found=current is not None, current=current or b"")

    def Batch(self, request, context):
        for op in request.ops:
            inner = op.put if op.HasField("put") else op.delete
            self._check_key(inner.key, context)
        store = self.cluster.store

        def batch():
            deleted = []
            for op in request.ops:
                if op.HasField("put"):
                    store[op.put.key] = op.put.value
                else:
                    deleted.append(store.pop(op.delete.key, None) is not None)
            return deleted

        deleted = self._enter("Batch", context, True, batch)
        return pb.BatchResponse(header=self._header(), deleted=deleted)

    # ------------------------------------------------------------------ Cluster

    def Status(self, request, context):
        self._enter("Status", context, False, lambda: None)
        role = "leader" if self.member_id == self.cluster.leader_id else "follower"
        return pb.StatusResponse(header=self._header(), role=role,
                                 commit_index=self.cluster.applied_index,
                                 last_index=self.cluster.applied_index,
                                 members=list(self.cluster.members.values()))

    def AddMember(self, request, context):
        if not request.id or not request.peer_address:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member id and peer address needed")
        members = self.cluster.members

        def add():
            existing = members.get(request.id)
            if existing is not None and not (existing.learner and not request.learner):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"member {request.id} already exists")
            members[request.id] = pb.Member(id=request.id, peer_address=request.peer_address,
                                            client_address=request.client_address,
                                            learner=request.learner)

        self._enter("AddMember", context, True, add)
        return pb.MembersResponse(header=self._header(), members=list(members.values()))

    def RemoveMember(self, request, context):
        members = self.cluster.members

        def remove():
            if request.id not in members:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"member {request.id} is not in the cluster")
            del members[request.id]

        self._enter("RemoveMember", context, True, remove)
        return pb.MembersResponse(header=self._header(), members=list(members.values()))

    def TransferLeader(self, request, context):
        def transfer():
            if request.to not in self.cluster.members:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"member {request.to} is not in the cluster")
            self.cluster.leader_id = request.to

        self._enter("TransferLeader", context, True, transfer)
        return pb.TransferLeaderResponse(header=self._header())
