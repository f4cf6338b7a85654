"""The access check of every call on the client port (SPEC §8), as one gRPC interceptor.

While auth is enabled (the replicated flag, storage/auth_store.py) every call names its
user — a token from Authenticate in the `token` metadata key, or, with
--client-cert-auth, the common name of its TLS client certificate — and needs what
RULES says its method needs, worked out from its request message:

* etcd's KV: a Range read on its range, a Put write on its key (and read with
  prev_kv), a DeleteRange write on its range, a Txn every permission its compares and
  both branches could use (auth_store.txn_needs), Compact any user;
* Watch: any user to open the stream, then read on the range of each create request;
* Lease: LeaseRevoke write on every key attached to the lease; the others any user;
* Cluster: root for membership changes, MemberList any user;
* Maintenance: root for Defragment, Snapshot, Hash, HashKV, MoveLeader, Downgrade and
  raising or disarming an alarm; Status and listing alarms any user;
* Auth: root, but Authenticate is open, AuthStatus any user, and UserGet and
  UserChangePassword a user may call on itself;
* kvraft.KV: Get and Scan read on their key or range, Put, Delete and Batch write on
  their keys, CompareAndSwap both; kvraft.Cluster as etcd's Cluster;
* health and reflection stay open; any other method needs root (closed by default).

A call without a user is INVALID_ARGUMENT "etcdserver: user name is empty", an unknown
or expired token UNAUTHENTICATED "etcdserver: invalid auth token", a user without the
permission PERMISSION_DENIED "etcdserver: permission denied" — etcd's answers.

Every call, auth enabled or not, runs with auth/context.py ADMITTED set to its user and
the auth revision it was checked under: the entry it proposes carries both, and the
apply checks it again if the auth revision moved in between (storage/mvcc_apply.py).
A read (Range, a read-only Txn, kvraft's Get and Scan) is checked again before its
answer leaves when the auth revision moved while it ran (recheck_read).
"""
from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import kvraft_pb2 as kpb
from kvraft.storage import auth_store
from kvraft.storage.auth_store import READ, WRITE, AuthState, Need, Needs, Rule

from ..node import Node
from .context import ADMITTED
from .tokens import TokenStore

TOKEN_METADATA_KEY = "token"
OPEN = "open"                      # a method anyone may call (Authenticate)
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")

Rules = Callable[[Any, "AccessCheck"], Needs]


def _user(_: Any, __: AccessCheck) -> Needs:
    return Rule.USER


def _root(_: Any, __: AccessCheck) -> Needs:
    return Rule.ROOT


def _open(_: Any, __: AccessCheck) -> Needs:
    return OPEN


def _scan(req: kpb.ScanRequest, _: AccessCheck) -> Needs:
    return [Need(READ, req.start, req.end or b"\x00")]


def _batch(req: kpb.BatchRequest, _: AccessCheck) -> Needs:
    return [Need(WRITE, op.put.key if op.HasField("put") else op.delete.key)
            for op in req.ops]


def _alarm(req: etcdpb.AlarmRequest, _: AccessCheck) -> Needs:
    return Rule.USER if req.action == etcdpb.AlarmRequest.GET else Rule.ROOT


def _lease_revoke(req: etcdpb.LeaseRevokeRequest, check: AccessCheck) -> Needs:
    return auth_store.lease_revoke_needs(check.node.store.sm.keys_with_lease(req.ID))


RULES: dict[str, Rules] = {
    "/etcdserverpb.KV/Range": lambda r, _: auth_store.range_needs(r),
    "/etcdserverpb.KV/Put": lambda r, _: auth_store.put_needs(r),
    "/etcdserverpb.KV/DeleteRange": lambda r, _: auth_store.delete_range_needs(r),
    "/etcdserverpb.KV/Txn": lambda r, _: auth_store.txn_needs(r),
    "/etcdserverpb.KV/Compact": _user,
    "/etcdserverpb.Watch/Watch": _user,          # and each create request: _watch_needs
    "/etcdserverpb.Lease/LeaseGrant": _user,
    "/etcdserverpb.Lease/LeaseRevoke": _lease_revoke,
    "/etcdserverpb.Lease/LeaseKeepAlive": _user,
    "/etcdserverpb.Lease/LeaseTimeToLive": _user,
    "/etcdserverpb.Lease/LeaseLeases": _user,
    "/etcdserverpb.Cluster/MemberAdd": _root,
    "/etcdserverpb.Cluster/MemberRemove": _root,
    "/etcdserverpb.Cluster/MemberUpdate": _root,
    "/etcdserverpb.Cluster/MemberPromote": _root,
    "/etcdserverpb.Cluster/MemberList": _user,
    "/etcdserverpb.Maintenance/Alarm": _alarm,
    "/etcdserverpb.Maintenance/Status": _user,
    "/etcdserverpb.Maintenance/Defragment": _root,
    "/etcdserverpb.Maintenance/Hash": _root,
    "/etcdserverpb.Maintenance/HashKV": _root,
    "/etcdserverpb.Maintenance/Snapshot": _root,
    "/etcdserverpb.Maintenance/MoveLeader": _root,
    "/etcdserverpb.Maintenance/Downgrade": _root,
    "/etcdserverpb.Auth/Authenticate": _open,
    "/etcdserverpb.Auth/AuthStatus": _user,
    "/etcdserverpb.Auth/UserGet": lambda r, _: Rule.self_or_root(r.name),
    "/etcdserverpb.Auth/UserChangePassword": lambda r, _: Rule.self_or_root(r.name),
    "/kvraft.KV/Get": lambda r, _: [Need(READ, r.key)],
    "/kvraft.KV/Scan": _scan,
    "/kvraft.KV/Put": lambda r, _: [Need(WRITE, r.key)],
    "/kvraft.KV/Delete": lambda r, _: [Need(WRITE, r.key)],
    "/kvraft.KV/CompareAndSwap": lambda r, _: [Need(READ, r.key), Need(WRITE, r.key)],
    "/kvraft.KV/Batch": _batch,
    "/kvraft.Cluster/Status": _user,
    "/kvraft.Cluster/AddMember": _root,
    "/kvraft.Cluster/RemoveMember": _root,
    "/kvraft.Cluster/TransferLeader": _root,
}
_WATCH = "/etcdserverpb.Watch/Watch"
# No metadata admits a call without a user: the calls members make to each other (a
# follower's lease keep-alives and MemberPromote forwarded to the leader, the corruption
# check's HashKV) ride the peer port, served there by etcd/member_calls.py, never this
# interceptor's port; a call marked as forwarded on the client port is checked as any.
# Reads checked again once served when the auth revision moved meanwhile (recheck_read).
_READS = frozenset({"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn", "/kvraft.KV/Get",
                    "/kvraft.KV/Scan"})


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _refusal(error: auth_store.AuthError) -> _Refused:
    return _Refused(grpc.StatusCode[error.code.name], str(error))


class AccessCheck:
    """Who a call is and whether it may do what it asks (the module's doc)."""

    def __init__(self, node: Node, tokens: TokenStore, client_cert_auth: bool) -> None:
        self.node = node
        self.tokens = tokens
        self.client_cert_auth = client_cert_auth

    def admit(self, rule: Rules, request: Any,
              context: grpc.aio.ServicerContext) -> tuple[str, int]:
        """(user, auth revision) the call is admitted for; raises _Refused."""
        state = self.node.store.sm.auth
        if not state.enabled:
            if len(self.tokens):
                self.tokens.clear()
            return "", state.revision
        needs = rule(request, self)
        if needs == OPEN:
            return "", state.revision
        user = self.user(state, context)
        if not auth_store.allowed(state, user, needs):
            raise _refusal(auth_store.PermissionDeniedError())
        return user, state.revision

    def recheck_read(self, rule: Rules, request: Any, admitted: tuple[str, int]) -> None:
        """After a read was served: if the auth revision moved while it ran (its read
        barrier waited for entries that may have revoked the permission), check it
        again under the rules it read at; raises _Refused. Writes are re-checked at
        apply instead (storage/mvcc_apply.py)."""
        user, revision = admitted
        state = self.node.store.sm.auth
        if not user or not state.enabled or state.revision == revision:
            return
        needs = rule(request, self)
        if isinstance(needs, str) or any(n.kind != READ for n in needs):
            return    # not a read (a txn that writes was re-checked at apply)
        if not auth_store.allowed(state, user, needs):
            raise _refusal(auth_store.PermissionDeniedError())

    def user(self, state: AuthState, context: grpc.aio.ServicerContext) -> str:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == TOKEN_METADATA_KEY:
                token = value if isinstance(value, str) else value.decode("ascii", "replace")
                break
        if token:
            user = self.tokens.user_of(token, state)
            if user is None:
                raise _refusal(auth_store.InvalidAuthTokenError())
            return user
        if self.client_cert_auth:
            names = list((context.auth_context() or {}).get("x509_common_name") or ())
            if names:
                name = names[0]
                return name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        raise _refusal(auth_store.UserEmptyError())

    def check_watch(self, request: etcdpb.WatchRequest,
                    context: grpc.aio.ServicerContext) -> None:
        """A watch stream's create request needs read on what it watches."""
        if request.WhichOneof("request_union") != "create_request":
            return
        state = self.node.store.sm.auth
        if not state.enabled:
            return
        create = request.create_request
        user = self.user(state, context)
        if not auth_store.allowed(state, user, [Need(READ, create.key, create.range_end)]):
            raise _refusal(auth_store.PermissionDeniedError())


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler of the client port but health's and reflection's with the
    access check (AccessCheck); install it first, on the client server only."""

    def __init__(self, check: AccessCheck) -> None:
        self.check = check

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        rule = RULES.get(method, _root)
        return _wrap(handler, method, rule, self.check)


async def _abort(context: grpc.aio.ServicerContext, refused: _Refused) -> None:
    await context.abort(refused.code, refused.message)


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], method: str, rule: Rules,
          check: AccessCheck) -> grpc.RpcMethodHandler[Any, Any]:
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}

    if not handler.request_streaming and not handler.response_streaming:
        behavior: Any = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                admitted = check.admit(rule, request, context)
            except _Refused as e:
                await _abort(context, e)
            token = ADMITTED.set(admitted)
            try:
                response = await behavior(request, context)
            finally:
                ADMITTED.reset(token)
            if method in _READS:
                try:
                    check.recheck_read(rule, request, admitted)
                except _Refused as e:
                    await _abort(context, e)
            return response

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)

    streaming: Any
    if handler.request_streaming:
        streaming = handler.stream_stream if handler.response_streaming \
            else handler.stream_unary
    else:
        streaming = handler.unary_stream

    def arguments(request: Any, context: grpc.aio.ServicerContext) -> tuple[Any, Any]:
        """(what the rule sees, what the handler gets): a stream's requests are checked
        one by one (a watch's creates), its opening by the rule alone."""
        if not handler.request_streaming:
            return request, request
        return None, _checked(request, context)

    async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[Any]:
        async for request in requests:
            if method == _WATCH:
                check.check_watch(request, context)
            yield request

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        seen, given = arguments(request, context)
        try:
            admitted = check.admit(rule, seen, context)
        except _Refused as e:
            await _abort(context, e)
        token = ADMITTED.set(admitted)
        try:
            return await streaming(given, context)
        except _Refused as e:
            await _abort(context, e)
        finally:
            ADMITTED.reset(token)

    async def generate(request: Any, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[Any]:
        seen, given = arguments(request, context)
        try:
            admitted = check.admit(rule, seen, context)
        except _Refused as e:
            await _abort(context, e)
        token = ADMITTED.set(admitted)
        try:
            async for response in streaming(given, context):
                yield response
        except _Refused as e:
            await _abort(context, e)
        finally:
            ADMITTED.reset(token)

    # A handler that yields its responses is wrapped by one that yields them; one that
    # writes them (context.write) by a coroutine: grpc.aio refuses to mix the two.
    wrapped = generate if inspect.isasyncgenfunction(streaming) else call
    if not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(wrapped, **kwargs)
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrapped, **kwargs)
    return grpc.stream_unary_rpc_method_handler(call, **kwargs)
