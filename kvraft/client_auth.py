"""Authentication and etcd's Auth service for `kvraft.client.Client` (SPEC §8).

`Client(endpoints, user=..., password=...)` wraps each member's channel with
`TokenAuth`: before the first call on that channel it calls etcd's Authenticate there
and then sends the token in the `token` metadata key of every call. Tokens are a
member's own (kvraft's are etcd's simple tokens), so each endpoint has its own. A call
answered "invalid auth token" (expired, or the member restarted) or "user name is empty"
(auth was enabled after the client connected) authenticates again and is sent once more.
If the cluster has auth disabled, the client sends no token until it is told otherwise.

`AuthCalls` (Client.auth) holds etcd's Auth RPCs: users, roles, permissions and the
auth switch, with the client's failover.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from kvraft.proto import authpb_pb2 as authpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc

TOKEN_METADATA_KEY = "token"
AUTHENTICATE_TIMEOUT_S = 5.0
MSG_INVALID_TOKEN = "etcdserver: invalid auth token"
MSG_USER_EMPTY = "etcdserver: user name is empty"
MSG_NOT_ENABLED = "etcdserver: authentication is not enabled"
PERMISSIONS = {"read": authpb.Permission.READ, "write": authpb.Permission.WRITE,
               "readwrite": authpb.Permission.READWRITE}
PERMISSION_NAMES = {v: k.upper() for k, v in PERMISSIONS.items()}


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails,
                 metadata: list[tuple[str, str | bytes]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class TokenAuth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """The token of one user on one member's channel (the module's doc). Thread-safe."""

    def __init__(self, raw: grpc.Channel, credentials: Credentials) -> None:
        self._auth = etcdpb_grpc.AuthStub(raw)
        self._credentials = credentials
        self._lock = threading.Lock()
        self._token: str | None = None
        self._auth_off = False       # the member said auth is disabled

    def _authenticate(self, timeout: float | None) -> None:
        """Get a token (raises the member's refusal, e.g. a wrong password)."""
        request = etcdpb.AuthenticateRequest(name=self._credentials.user,
                                             password=self._credentials.password)
        try:
            response = self._auth.Authenticate(
                request, timeout=min(timeout or AUTHENTICATE_TIMEOUT_S,
                                     AUTHENTICATE_TIMEOUT_S))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION and \
                    err.details() == MSG_NOT_ENABLED:
                with self._lock:
                    self._token, self._auth_off = None, True
                return
            raise
        with self._lock:
            self._token, self._auth_off = response.token, False

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        with self._lock:
            need = self._token is None and not self._auth_off
        if need:
            self._authenticate(details.timeout)
        metadata = [m for m in details.metadata or () if m[0] != TOKEN_METADATA_KEY]
        with self._lock:
            if self._token is not None:
                metadata.append((TOKEN_METADATA_KEY, self._token))
        return _Details(details, metadata)

    def _refused_for_token(self, outcome: Any) -> bool:
        """The call failed for want of a (valid) token: forget ours."""
        try:
            code, message = outcome.code(), outcome.details()
        except Exception:
            return False
        stale = (code == grpc.StatusCode.UNAUTHENTICATED and message == MSG_INVALID_TOKEN) or \
            (code == grpc.StatusCode.INVALID_ARGUMENT and message == MSG_USER_EMPTY)
        if stale:
            with self._lock:
                self._token, self._auth_off = None, False
        return stale

    def intercept_unary_unary(self, continuation: Callable[..., Any],
                              details: grpc.ClientCallDetails, request: Any) -> Any:
        started = time.monotonic()
        outcome = continuation(self._details(details), request)
        if self._refused_for_token(outcome):
            if details.timeout is not None:
                left = details.timeout - (time.monotonic() - started)
                if left <= 0:
                    return outcome
                details = _Details(details, list(details.metadata or ()))
                details.timeout = left
            outcome = continuation(self._details(details), request)
        return outcome

    def intercept_unary_stream(self, continuation: Callable[..., Any],
                               details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any],
                               details: grpc.ClientCallDetails,
                               request_iterator: Iterator[Any]) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable[..., Any],
                                details: grpc.ClientCallDetails,
                                request_iterator: Iterator[Any]) -> Any:
        return continuation(self._details(details), request_iterator)


def authenticated_channel(raw: grpc.Channel, credentials: Credentials | None) -> grpc.Channel:
    """`raw` as is without credentials; else with TokenAuth on every call."""
    if credentials is None:
        return raw
    return grpc.intercept_channel(raw, TokenAuth(raw, credentials))


def parse_user(text: str) -> tuple[str, str | None]:
    """USER[:PASSWORD] (etcdctl's --user) -> (user, password or None)."""
    user, sep, password = text.partition(":")
    if not user:
        raise ValueError("the user name is empty")
    return user, password if sep else None


@dataclass(frozen=True)
class AuthStatus:
    enabled: bool
    auth_revision: int


@dataclass(frozen=True)
class Permission:
    kind: str          # "READ", "WRITE", "READWRITE"
    key: bytes
    range_end: bytes


class _Client(Protocol):
    """What AuthCalls uses of kvraft.client.Client (not imported: client imports us)."""

    def _deadline(self, timeout: float | None) -> float: ...
    def _order(self) -> list[str]: ...
    def _channel(self, endpoint: str) -> Any: ...
    def _classify(self, err: grpc.RpcError, endpoint: str, write: bool,
                  deadline: float) -> tuple[Exception, bool]: ...


class AuthCalls:
    """etcd's Auth RPCs over a Client (its endpoints, failover and credentials).
    `deadline_error`: the exception for a call whose deadline passed before any member
    was tried (kvraft.client.DeadlineExceeded)."""

    def __init__(self, client: _Client, deadline_error: Callable[[str], Exception]) -> None:
        self._client = client
        self._deadline_error = deadline_error

    def _call(self, method: str, request: Any, *, write: bool,
              timeout: float | None = None) -> Any:
        client = self._client
        deadline = client._deadline(timeout)
        last = None
        for endpoint in client._order():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            stub = etcdpb_grpc.AuthStub(client._channel(endpoint).channel)
            try:
                return getattr(stub, method)(request, timeout=remaining_s)
            except grpc.RpcError as err:
                last, retry = client._classify(err, endpoint, write, deadline)
                if not retry:
                    raise last from None
        if last is None:
            raise self._deadline_error("the deadline passed before any endpoint was tried")
        raise last

    # --- the switch -------------------------------------------------------------------------
    def enable(self, *, timeout: float | None = None) -> None:
        self._call("AuthEnable", etcdpb.AuthEnableRequest(), write=True, timeout=timeout)

    def disable(self, *, timeout: float | None = None) -> None:
        self._call("AuthDisable", etcdpb.AuthDisableRequest(), write=True, timeout=timeout)

    def status(self, *, timeout: float | None = None) -> AuthStatus:
        r = self._call("AuthStatus", etcdpb.AuthStatusRequest(), write=False, timeout=timeout)
        return AuthStatus(r.enabled, r.authRevision)

    # --- users ------------------------------------------------------------------------------
    def user_add(self, name: str, password: str = "", *, no_password: bool = False,
                 timeout: float | None = None) -> None:
        request = etcdpb.AuthUserAddRequest(
            name=name, password=password,
            options=authpb.UserAddOptions(no_password=no_password))
        self._call("UserAdd", request, write=True, timeout=timeout)

    def user_delete(self, name: str, *, timeout: float | None = None) -> None:
        self._call("UserDelete", etcdpb.AuthUserDeleteRequest(name=name), write=True,
                   timeout=timeout)

    def user_change_password(self, name: str, password: str, *,
                             timeout: float | None = None) -> None:
        self._call("UserChangePassword",
                   etcdpb.AuthUserChangePasswordRequest(name=name, password=password),
                   write=True, timeout=timeout)

    def user_grant_role(self, name: str, role: str, *, timeout: float | None = None) -> None:
        self._call("UserGrantRole", etcdpb.AuthUserGrantRoleRequest(user=name, role=role),
                   write=True, timeout=timeout)

    def user_revoke_role(self, name: str, role: str, *, timeout: float | None = None) -> None:
        self._call("UserRevokeRole", etcdpb.AuthUserRevokeRoleRequest(name=name, role=role),
                   write=True, timeout=timeout)

    def user_list(self, *, timeout: float | None = None) -> list[str]:
        r = self._call("UserList", etcdpb.AuthUserListRequest(), write=False, timeout=timeout)
        return list(r.users)

    def user_get(self, name: str, *, timeout: float | None = None) -> list[str]:
        """The user's roles."""
        r = self._call("UserGet", etcdpb.AuthUserGetRequest(name=name), write=False,
                       timeout=timeout)
        return list(r.roles)

    # --- roles ------------------------------------------------------------------------------
    def role_add(self, name: str, *, timeout: float | None = None) -> None:
        self._call("RoleAdd", etcdpb.AuthRoleAddRequest(name=name), write=True, timeout=timeout)

    def role_delete(self, name: str, *, timeout: float | None = None) -> None:
        self._call("RoleDelete", etcdpb.AuthRoleDeleteRequest(role=name), write=True,
                   timeout=timeout)

    def role_list(self, *, timeout: float | None = None) -> list[str]:
        r = self._call("RoleList", etcdpb.AuthRoleListRequest(), write=False, timeout=timeout)
        return list(r.roles)

    def role_get(self, name: str, *, timeout: float | None = None) -> list[Permission]:
        r = self._call("RoleGet", etcdpb.AuthRoleGetRequest(role=name), write=False,
                       timeout=timeout)
        return [Permission(PERMISSION_NAMES.get(p.permType, str(p.permType)), p.key,
                           p.range_end) for p in r.perm]

    def role_grant_permission(self, name: str, kind: str, key: bytes, range_end: bytes = b"",
                              *, timeout: float | None = None) -> None:
        """kind: "read", "write" or "readwrite"; range_end as etcd's (b"": the key alone,
        b"\\0": every key from `key` on)."""
        perm = authpb.Permission(permType=PERMISSIONS[kind.lower()], key=key,
                                 range_end=range_end)
        self._call("RoleGrantPermission",
                   etcdpb.AuthRoleGrantPermissionRequest(name=name, perm=perm),
                   write=True, timeout=timeout)

    def role_revoke_permission(self, name: str, key: bytes, range_end: bytes = b"", *,
                               timeout: float | None = None) -> None:
        self._call("RoleRevokePermission",
                   etcdpb.AuthRoleRevokePermissionRequest(role=name, key=key,
                                                          range_end=range_end),
                   write=True, timeout=timeout)
