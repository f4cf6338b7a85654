"""etcd's `Auth` service (SPEC §8): users, roles, permissions, enable/disable, tokens.

Changes (AuthEnable, AuthDisable, UserAdd, UserDelete, UserChangePassword, UserGrantRole,
UserRevokeRole, RoleAdd, RoleDelete, RoleGrantPermission, RoleRevokePermission) are
proposed as commands embedding etcd's request and applied by storage/auth_store.py,
which refuses them with etcd's errors. UserAdd and UserChangePassword hash the password
here, on a thread, before proposing: the request that enters the log carries the salted
hash in `hashedPassword` and no password. A client's own `hashedPassword` is ignored
(etcd 3.5 trusts a bcrypt hash there; kvraft stores scrypt hashes only).

Reads (AuthStatus, UserGet, UserList, RoleGet, RoleList) and Authenticate run after a
read barrier, on the member's applied auth state, so a user just added can authenticate
on any member. Authenticate issues a simple token (server/auth/tokens.py), valid on
this member. Who may call what is the interceptor's (server/auth/interceptor.py): root
for everything here but Authenticate, AuthStatus and a user's own UserGet and
UserChangePassword.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.storage import auth_store, commands, mvcc
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_MVCC

from .. import storage_adapter as sa
from ..auth.tokens import TokenStore
from ..config import NodeConfig
from ..metrics import NodeMetrics
from ..node import Node
from .errors import TOO_MANY_REQUESTS, EtcdError, deadline_s, serve_call
from .header import etcd_header
from .limits import check_request_bytes

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext
# Password hashing is slow by design (scrypt, tens of milliseconds of one core): it runs
# on threads of its own, never the default executor that reads use, and at most this
# many hashes wait or run at once; past it a call is refused as etcd refuses overload
# ("etcdserver: too many requests"), so a flood of Authenticate calls cannot stall reads.
HASH_THREADS = 2
HASHES_IN_FLIGHT_MAX = 32
# Verified when the named user does not exist, so that a wrong name costs the same time
# as a wrong password (no user enumeration by timing).
_DUMMY_HASH = auth_store.hash_password("kvraft: no such user")


class EtcdAuthService(etcdpb_grpc.AuthServicer):
    def __init__(self, node: Node, config: NodeConfig, metrics: NodeMetrics,
                 tokens: TokenStore) -> None:
        self.node = node
        self.config = config
        self.metrics = metrics
        self.tokens = tokens
        self._hashing = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="kvraft-auth-hash")
        self._hashes_in_flight = 0

    async def _hash(self, work: Callable[..., T], *args: Any) -> T:
        """Run a password hash on the hashing threads (bounded: the module's doc)."""
        if self._hashes_in_flight >= HASHES_IN_FLIGHT_MAX:
            raise TOO_MANY_REQUESTS.error()
        self._hashes_in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._hashing, work, *args)
        finally:
            self._hashes_in_flight -= 1

    def close(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)

    # --- changes ------------------------------------------------------------------------------
    async def AuthEnable(self, request: etcdpb.AuthEnableRequest, context: Ctx
                         ) -> etcdpb.AuthEnableResponse:
        return await self._change("AuthEnable", "auth_enable", request, context,
                                  etcdpb.AuthEnableResponse)

    async def AuthDisable(self, request: etcdpb.AuthDisableRequest, context: Ctx
                          ) -> etcdpb.AuthDisableResponse:
        return await self._change("AuthDisable", "auth_disable", request, context,
                                  etcdpb.AuthDisableResponse)

    async def UserAdd(self, request: etcdpb.AuthUserAddRequest, context: Ctx
                      ) -> etcdpb.AuthUserAddResponse:
        async def replicated() -> etcdpb.AuthUserAddRequest:
            if not request.name:
                raise auth_store.UserEmptyError()
            hashed = "" if request.options.no_password else \
                await self._hash(auth_store.hash_password, request.password)
            return etcdpb.AuthUserAddRequest(name=request.name, options=request.options,
                                             hashedPassword=hashed)

        return await self._change("UserAdd", "auth_user_add", replicated, context,
                                  etcdpb.AuthUserAddResponse)

    async def UserDelete(self, request: etcdpb.AuthUserDeleteRequest, context: Ctx
                         ) -> etcdpb.AuthUserDeleteResponse:
        return await self._change("UserDelete", "auth_user_delete", request, context,
                                  etcdpb.AuthUserDeleteResponse)

    async def UserChangePassword(self, request: etcdpb.AuthUserChangePasswordRequest,
                                 context: Ctx) -> etcdpb.AuthUserChangePasswordResponse:
        async def replicated() -> etcdpb.AuthUserChangePasswordRequest:
            hashed = await self._hash(auth_store.hash_password, request.password)
            return etcdpb.AuthUserChangePasswordRequest(name=request.name,
                                                        hashedPassword=hashed)

        return await self._change("UserChangePassword", "auth_user_change_password",
                                  replicated, context, etcdpb.AuthUserChangePasswordResponse)

    async def UserGrantRole(self, request: etcdpb.AuthUserGrantRoleRequest, context: Ctx
                            ) -> etcdpb.AuthUserGrantRoleResponse:
        return await self._change("UserGrantRole", "auth_user_grant_role", request, context,
                                  etcdpb.AuthUserGrantRoleResponse)

    async def UserRevokeRole(self, request: etcdpb.AuthUserRevokeRoleRequest, context: Ctx
                             ) -> etcdpb.AuthUserRevokeRoleResponse:
        return await self._change("UserRevokeRole", "auth_user_revoke_role", request,
                                  context, etcdpb.AuthUserRevokeRoleResponse)

    async def RoleAdd(self, request: etcdpb.AuthRoleAddRequest, context: Ctx
                      ) -> etcdpb.AuthRoleAddResponse:
        return await self._change("RoleAdd", "auth_role_add", request, context,
                                  etcdpb.AuthRoleAddResponse)

    async def RoleDelete(self, request: etcdpb.AuthRoleDeleteRequest, context: Ctx
                         ) -> etcdpb.AuthRoleDeleteResponse:
        return await self._change("RoleDelete", "auth_role_delete", request, context,
                                  etcdpb.AuthRoleDeleteResponse)

    async def RoleGrantPermission(self, request: etcdpb.AuthRoleGrantPermissionRequest,
                                  context: Ctx) -> etcdpb.AuthRoleGrantPermissionResponse:
        return await self._change("RoleGrantPermission", "auth_role_grant_permission",
                                  request, context, etcdpb.AuthRoleGrantPermissionResponse)

    async def RoleRevokePermission(self, request: etcdpb.AuthRoleRevokePermissionRequest,
                                   context: Ctx) -> etcdpb.AuthRoleRevokePermissionResponse:
        return await self._change("RoleRevokePermission", "auth_role_revoke_permission",
                                  request, context, etcdpb.AuthRoleRevokePermissionResponse)

    # --- reads --------------------------------------------------------------------------------
    async def AuthStatus(self, request: etcdpb.AuthStatusRequest, context: Ctx
                         ) -> etcdpb.AuthStatusResponse:
        async def body() -> etcdpb.AuthStatusResponse:
            state = await self._read_state(context)
            return etcdpb.AuthStatusResponse(header=etcd_header(self.node),
                                             enabled=state.enabled,
                                             authRevision=state.revision)

        return await serve_call("etcd.Auth.AuthStatus", context, self.metrics, body)

    async def Authenticate(self, request: etcdpb.AuthenticateRequest, context: Ctx
                           ) -> etcdpb.AuthenticateResponse:
        async def body() -> etcdpb.AuthenticateResponse:
            state = await self._read_state(context)
            if not state.enabled:
                raise auth_store.AuthNotEnabledError()
            user = state.users.get(request.name)
            stored = user.password if user is not None and user.password else _DUMMY_HASH
            ok = await self._hash(auth_store.verify_password, stored, request.password)
            if not ok or user is None or not user.password or not request.password:
                raise auth_store.AuthFailedError()
            token = self.tokens.issue(user.name, user.password)
            return etcdpb.AuthenticateResponse(header=etcd_header(self.node), token=token)

        return await serve_call("etcd.Auth.Authenticate", context, self.metrics, body)

    async def UserGet(self, request: etcdpb.AuthUserGetRequest, context: Ctx
                      ) -> etcdpb.AuthUserGetResponse:
        async def body() -> etcdpb.AuthUserGetResponse:
            user = (await self._read_state(context)).users.get(request.name)
            if user is None:
                raise auth_store.UserNotFoundError()
            return etcdpb.AuthUserGetResponse(header=etcd_header(self.node),
                                              roles=list(user.roles))

        return await serve_call("etcd.Auth.UserGet", context, self.metrics, body)

    async def UserList(self, request: etcdpb.AuthUserListRequest, context: Ctx
                       ) -> etcdpb.AuthUserListResponse:
        async def body() -> etcdpb.AuthUserListResponse:
            state = await self._read_state(context)
            return etcdpb.AuthUserListResponse(header=etcd_header(self.node),
                                               users=sorted(state.users))

        return await serve_call("etcd.Auth.UserList", context, self.metrics, body)

    async def RoleGet(self, request: etcdpb.AuthRoleGetRequest, context: Ctx
                      ) -> etcdpb.AuthRoleGetResponse:
        async def body() -> etcdpb.AuthRoleGetResponse:
            perms = (await self._read_state(context)).roles.get(request.role)
            if perms is None:
                raise auth_store.RoleNotFoundError()
            return etcdpb.AuthRoleGetResponse(header=etcd_header(self.node),
                                              perm=[p.to_pb() for p in perms])

        return await serve_call("etcd.Auth.RoleGet", context, self.metrics, body)

    async def RoleList(self, request: etcdpb.AuthRoleListRequest, context: Ctx
                       ) -> etcdpb.AuthRoleListResponse:
        async def body() -> etcdpb.AuthRoleListResponse:
            state = await self._read_state(context)
            return etcdpb.AuthRoleListResponse(header=etcd_header(self.node),
                                               roles=sorted(state.roles))

        return await serve_call("etcd.Auth.RoleList", context, self.metrics, body)

    # --- helpers ------------------------------------------------------------------------------
    async def _read_state(self, context: Ctx) -> auth_store.AuthState:
        await self.node.read_index(deadline_s(context, self.config.default_deadline_s))
        return self.node.store.sm.auth

    async def _change(self, rpc: str, field: str, request: Any, context: Ctx,
                      answer: Any) -> Any:
        """Propose etcd's `request` (or what the coroutine function `request` makes: a
        password hashed first) as the command's `field`; `answer` with a header."""
        async def body() -> Any:
            if self.node.store.sm.cluster_version < CLUSTER_VERSION_MVCC:
                raise mvcc.ClusterVersionError()
            message = await request() if callable(request) else request
            request_id = sa.new_request_id()
            data = commands.etcd_command(request_id, field, message)
            check_request_bytes(data, self.config.max_request_bytes)
            result = await self.node.propose(
                request_id, data, deadline_s(context, self.config.default_deadline_s))
            if result.mvcc_error is not None:
                raise result.mvcc_error
            if not isinstance(result.response, auth_store.AuthChange):
                raise EtcdError(grpc.StatusCode.INTERNAL,
                                f"kvraft: {field} applied as {result.kind}: {result.error}")
            if field == "auth_disable":
                self.tokens.clear()
            return answer(header=etcd_header(self.node))

        return await serve_call(f"etcd.Auth.{rpc}", context, self.metrics, body)


def add_auth_service(server: grpc.aio.Server, node: Node, config: NodeConfig,
                     metrics: NodeMetrics, tokens: TokenStore) -> str:
    etcdpb_grpc.add_AuthServicer_to_server(EtcdAuthService(node, config, metrics, tokens),
                                           server)
    return etcdpb.DESCRIPTOR.services_by_name["Auth"].full_name
