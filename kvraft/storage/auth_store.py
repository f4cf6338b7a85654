"""etcd's authentication and role-based access, replicated in the state machine (SPEC §8).

The records (mvcc/layout.py; under the MVCC prefix, so snapshots carry them):

    Vu <name>   authpb.User: its roles, and its password only as a salted slow hash
    Vr <name>   authpb.Role: its key permissions
    Vz          the auth-enabled flag and the auth revision (two int64)

Every change — enable, disable, a user's or a role's — is one replicated command
(command.proto, fields 16-26) applied here the same way on every member, and raises the
auth revision by one. A request is admitted by the client port (server/auth) under the
auth state it saw there; its entry carries that auth revision (command.proto
AuthContext), and `VersionedApply` checks the request again with `command_needs` when
the store's auth revision has moved since, so a permission revoked while the request was
in flight is never used (etcd refuses such a request outright with "revision of auth
store is old"; kvraft re-checks instead, and refuses only what the new rules forbid).

Passwords: hashed with scrypt (N=2**14, r=8, p=1, a 16-byte random salt) by the member
that takes the request, BEFORE it is proposed: the log, snapshots and the LevelDB hold
only `scrypt$N$r$p$salt$digest`. Hashing is random (the salt), so it never happens at
apply time, which must be the same on every member.

Permissions are etcd's: READ, WRITE or READWRITE on a key (range_end empty), a range
[key, range_end), or every key from key on (range_end "\\0"; etcdctl's --prefix sends
the prefix's end). A request on a range is permitted when the union of the user's
permissions of that kind covers it. The `root` role grants everything; the `root` user
must exist and hold it before auth can be enabled.

`AuthState` is an immutable image of all of it; the state machine keeps the current one
in memory (state_machine.py `auth`), replaced after every apply that changed it.
"""
from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import ClassVar

from kvraft.proto import authpb_pb2 as authpb
from kvraft.proto import command_pb2 as cpb
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.storage.mvcc import layout
from kvraft.storage.mvcc.errors import MVCCError, StatusCode
from kvraft.storage.mvcc.keyrange import KeyRange
from kvraft.storage.mvcc.view import Reader

ROOT = "root"
READ, WRITE, READWRITE = 0, 1, 2     # authpb.Permission.Type
FIRST_AUTH_REVISION = 1
# scrypt's cost: about 16 MiB and some tens of milliseconds per hash on one core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
SCRYPT_N_MAX = 1 << 20               # a stored hash asking for more is refused, not run
SALT_BYTES, DIGEST_BYTES = 16, 32
USER_NAME_BYTES_MAX = ROLE_NAME_BYTES_MAX = 256


# --- etcd's errors (api/v3rpc/rpctypes) ---------------------------------------------------
class AuthError(MVCCError):
    """An auth request the store refuses (or a permission it does not grant)."""


class RootUserNotExistError(AuthError):
    code: ClassVar[StatusCode] = StatusCode.FAILED_PRECONDITION
    message: ClassVar[str] = "etcdserver: root user does not exist"


class RootRoleNotExistError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: root user does not have root role"


class UserAlreadyExistError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: user name already exists"


class UserEmptyError(AuthError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: user name is empty"


class UserNotFoundError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: user name not found"


class RoleAlreadyExistError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: role name already exists"


class RoleNotFoundError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: role name not found"


class RoleEmptyError(AuthError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: role name is empty"


class AuthFailedError(AuthError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: authentication failed, invalid user ID or password"


class PermissionDeniedError(AuthError):
    code = StatusCode.PERMISSION_DENIED
    message = "etcdserver: permission denied"


class RoleNotGrantedError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: role is not granted to the user"


class PermissionNotGrantedError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: permission is not granted to the role"


class PermissionNotGivenError(AuthError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: permission not given"


class AuthNotEnabledError(AuthError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: authentication is not enabled"


class InvalidAuthTokenError(AuthError):
    code = StatusCode.UNAUTHENTICATED
    message = "etcdserver: invalid auth token"


class InvalidAuthMgmtError(AuthError):
    """Deleting root, or taking the root role from it, while auth is enabled."""

    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: invalid auth management"


class NameTooLongError(AuthError):
    code = StatusCode.INVALID_ARGUMENT
    message = "kvraft: user or role name too long"


# --- passwords ----------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password`, with its parameters (never the password)."""
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=DIGEST_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` hashes to `stored` (constant-time comparison). Slow by design:
    call it off the event loop."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4]), base64.b64decode(parts[5])
    except ValueError:
        return False
    if not (1 < n <= SCRYPT_N_MAX and 0 < r <= 32 and 0 < p <= 16):
        return False
    try:
        ours = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                              dklen=len(digest), maxmem=256 << 20)
    except ValueError:
        return False
    return hmac.compare_digest(ours, digest)


# --- the state ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Permission:
    kind: int            # READ, WRITE, READWRITE
    key: bytes
    range_end: bytes     # b"": key alone; b"\0": every key >= key

    @property
    def keys(self) -> KeyRange:
        return KeyRange.of(self.key, self.range_end)

    def grants(self, kind: int) -> bool:
        return self.kind == READWRITE or self.kind == kind

    def to_pb(self) -> authpb.Permission:
        return authpb.Permission(permType=self.kind,  # type: ignore[arg-type]
                                 key=self.key, range_end=self.range_end)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password: str                     # the stored hash; "" for none
    roles: tuple[str, ...] = ()       # sorted
    no_password: bool = False


@dataclass(frozen=True, slots=True)
class AuthState:
    """Every auth record at one applied index. Invariant: `revision` identifies the
    state — two members at the same auth revision hold the same users and roles."""

    enabled: bool = False
    revision: int = FIRST_AUTH_REVISION
    users: Mapping[str, User] = field(default_factory=dict)
    roles: Mapping[str, tuple[Permission, ...]] = field(default_factory=dict)
    # (user, kind) -> the user's grants of that kind merged into disjoint, non-adjacent
    # ranges: (their starts, their stops (None: unbounded)), both sorted. Filled on
    # first use (at most two entries per user); the state itself never changes.
    _merged: dict[tuple[str, int], tuple[list[bytes], list[bytes | None]]] = field(
        default_factory=dict, compare=False, repr=False)

    def is_root(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and ROOT in u.roles

    def permitted(self, user: str, kind: int, key: bytes, range_end: bytes) -> bool:
        """Whether `user` may read (kind READ) or write (WRITE) [key, range_end)."""
        u = self.users.get(user)
        if u is None:
            return False
        if ROOT in u.roles:
            return True
        merged = self._merged.get((user, kind))
        if merged is None:
            merged = self._merged[(user, kind)] = merge(
                p.keys for role in u.roles for p in self.roles.get(role, ()) if p.grants(kind))
        wanted = KeyRange.of(key, range_end)
        if wanted.empty:
            return True
        starts, stops = merged
        # merged ranges are disjoint and not adjacent: one of them must hold it all
        i = bisect.bisect_right(starts, wanted.start) - 1
        if i < 0:
            return False
        stop = stops[i]
        return stop is None or (wanted.stop is not None and wanted.stop <= stop)


def merge(grants: Iterable[KeyRange]) -> tuple[list[bytes], list[bytes | None]]:
    """`grants` as disjoint, non-adjacent ranges in order: (starts, stops)."""
    starts: list[bytes] = []
    stops: list[bytes | None] = []
    for g in sorted((g for g in grants if not g.empty), key=lambda g: g.start):
        if starts and (stops[-1] is None or g.start <= stops[-1]):   # overlaps or touches
            last = stops[-1]
            if last is not None and (g.stop is None or g.stop > last):
                stops[-1] = g.stop
            continue
        starts.append(g.start)
        stops.append(g.stop)
    return starts, stops


def covers(grants: Iterable[KeyRange], wanted: KeyRange) -> bool:
    """Whether the union of `grants` holds every key of `wanted`."""
    if wanted.empty:
        return True
    reach: bytes | None = wanted.start     # every key in [wanted.start, reach) is granted
    for g in sorted((g for g in grants if not g.empty), key=lambda g: g.start):
        if reach is None:
            break
        if g.start > reach:
            break
        if g.stop is None or g.stop > reach:
            reach = g.stop
    if reach is None:
        return True
    return wanted.stop is not None and wanted.stop <= reach


def load_state(view: Reader) -> AuthState:
    raw = view.get(layout.AUTH_META)
    enabled, revision = (False, FIRST_AUTH_REVISION) if raw is None else _unpack_meta(raw)
    users: dict[str, User] = {}
    with closing(view.iterator(start=layout.USER_PREFIX, stop=layout.USER_END)) as it:
        while (item := next(it, None)) is not None:
            u = authpb.User.FromString(item[1])
            name = u.name.decode("utf-8", "replace")
            users[name] = User(name, u.password.decode("ascii", "replace"),
                               tuple(sorted(u.roles)), u.options.no_password)
    roles: dict[str, tuple[Permission, ...]] = {}
    with closing(view.iterator(start=layout.ROLE_PREFIX, stop=layout.ROLE_END)) as it:
        while (item := next(it, None)) is not None:
            r = authpb.Role.FromString(item[1])
            roles[r.name.decode("utf-8", "replace")] = tuple(
                Permission(int(p.permType), p.key, p.range_end) for p in r.keyPermission)
    return AuthState(enabled, revision, users, roles)


def _pack_meta(enabled: bool, revision: int) -> bytes:
    return layout.pack_int(int(enabled)) + layout.pack_int(revision)


def _unpack_meta(raw: bytes) -> tuple[bool, int]:
    if len(raw) != 16:
        raise ValueError(f"auth meta record of {len(raw)} bytes, expected 16")
    return bool(layout.unpack_int(raw[:8])), layout.unpack_int(raw[8:])


# --- applying the changes -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuthChange:
    """The apply's answer to an auth change: the auth revision after it."""

    auth_revision: int


class AuthApply:
    """The auth changes of one apply call, over its view and its pending writes."""

    def __init__(self, view: Reader, writes: MutableMapping[bytes, bytes | None]) -> None:
        self._view = view
        self._writes = writes
        self._state: AuthState | None = None
        self.changed = False      # some change applied in this call

    @property
    def state(self) -> AuthState:
        """The auth state after the entries applied so far in this call."""
        if self._state is None:
            self._state = load_state(self._view)
        return self._state

    def apply(self, op: str, request: object) -> AuthChange:
        """Apply one auth command (its Command field `op`); raises an AuthError and
        writes nothing if etcd would refuse it."""
        state = self.state
        handler = _APPLIERS[op]
        handler(self, state, request)
        revision = state.revision + 1
        self._writes[layout.AUTH_META] = _pack_meta(
            self._enabled_after(op, state), revision)
        self._state = None
        self.changed = True
        return AuthChange(revision)

    @staticmethod
    def _enabled_after(op: str, state: AuthState) -> bool:
        if op == "auth_enable":
            return True
        if op == "auth_disable":
            return False
        return state.enabled

    # each one checks, then writes its records (the meta record is apply's)
    def _enable(self, state: AuthState, _: etcdpb.AuthEnableRequest) -> None:
        root = state.users.get(ROOT)
        if root is None:
            raise RootUserNotExistError()
        if ROOT not in root.roles:
            raise RootRoleNotExistError()

    def _disable(self, state: AuthState, _: etcdpb.AuthDisableRequest) -> None:
        pass

    def _user_add(self, state: AuthState, req: etcdpb.AuthUserAddRequest) -> None:
        _check_name(req.name, UserEmptyError)
        if req.name in state.users:
            raise UserAlreadyExistError()
        no_password = req.options.no_password
        self._put_user(User(req.name, "" if no_password else req.hashedPassword, (),
                            no_password))

    def _user_delete(self, state: AuthState, req: etcdpb.AuthUserDeleteRequest) -> None:
        if state.enabled and req.name == ROOT:
            raise InvalidAuthMgmtError()
        if req.name not in state.users:
            raise UserNotFoundError()
        self._writes[layout.USER_PREFIX + req.name.encode()] = None

    def _user_change_password(self, state: AuthState,
                              req: etcdpb.AuthUserChangePasswordRequest) -> None:
        user = state.users.get(req.name)
        if user is None:
            raise UserNotFoundError()
        self._put_user(User(user.name, req.hashedPassword, user.roles, False))

    def _user_grant_role(self, state: AuthState, req: etcdpb.AuthUserGrantRoleRequest) -> None:
        user = state.users.get(req.user)
        if user is None:
            raise UserNotFoundError()
        if req.role != ROOT and req.role not in state.roles:
            raise RoleNotFoundError()
        if req.role in user.roles:
            return      # etcd: granting a role held already changes nothing, and succeeds
        self._put_user(User(user.name, user.password, tuple(sorted((*user.roles, req.role))),
                            user.no_password))

    def _user_revoke_role(self, state: AuthState,
                          req: etcdpb.AuthUserRevokeRoleRequest) -> None:
        if state.enabled and req.name == ROOT and req.role == ROOT:
            raise InvalidAuthMgmtError()
        user = state.users.get(req.name)
        if user is None:
            raise UserNotFoundError()
        if req.role not in user.roles:
            raise RoleNotGrantedError()
        self._put_user(User(user.name, user.password,
                            tuple(r for r in user.roles if r != req.role), user.no_password))

    def _role_add(self, state: AuthState, req: etcdpb.AuthRoleAddRequest) -> None:
        _check_name(req.name, RoleEmptyError)
        if req.name in state.roles:
            raise RoleAlreadyExistError()
        self._put_role(req.name, ())

    def _role_delete(self, state: AuthState, req: etcdpb.AuthRoleDeleteRequest) -> None:
        if state.enabled and req.role == ROOT:
            raise InvalidAuthMgmtError()
        if req.role not in state.roles:
            raise RoleNotFoundError()
        self._writes[layout.ROLE_PREFIX + req.role.encode()] = None
        for user in state.users.values():   # etcd revokes a deleted role from every user
            if req.role in user.roles:
                self._put_user(User(user.name, user.password,
                                    tuple(r for r in user.roles if r != req.role),
                                    user.no_password))

    def _role_grant_permission(self, state: AuthState,
                               req: etcdpb.AuthRoleGrantPermissionRequest) -> None:
        if req.name not in state.roles:
            raise RoleNotFoundError()
        if not req.HasField("perm"):
            raise PermissionNotGivenError()
        perm = Permission(int(req.perm.permType), req.perm.key, req.perm.range_end)
        # etcd: a permission on the same key and range_end is replaced (its type updated)
        kept = [p for p in state.roles[req.name]
                if (p.key, p.range_end) != (perm.key, perm.range_end)]
        self._put_role(req.name, tuple(sorted((*kept, perm),
                                              key=lambda p: (p.key, p.range_end))))

    def _role_revoke_permission(self, state: AuthState,
                                req: etcdpb.AuthRoleRevokePermissionRequest) -> None:
        perms = state.roles.get(req.role)
        if perms is None:
            raise RoleNotFoundError()
        kept = tuple(p for p in perms if (p.key, p.range_end) != (req.key, req.range_end))
        if len(kept) == len(perms):
            raise PermissionNotGrantedError()
        self._put_role(req.role, kept)

    def _put_user(self, user: User) -> None:
        record = authpb.User(name=user.name.encode(), password=user.password.encode(),
                             roles=list(user.roles),
                             options=authpb.UserAddOptions(no_password=user.no_password))
        self._writes[layout.USER_PREFIX + user.name.encode()] = record.SerializeToString()

    def _put_role(self, name: str, perms: tuple[Permission, ...]) -> None:
        record = authpb.Role(name=name.encode(), keyPermission=[p.to_pb() for p in perms])
        self._writes[layout.ROLE_PREFIX + name.encode()] = record.SerializeToString()


def _check_name(name: str, empty: type[AuthError]) -> None:
    if not name:
        raise empty()
    if len(name.encode()) > USER_NAME_BYTES_MAX:
        raise NameTooLongError()


_Applier = Callable[[AuthApply, AuthState, object], None]
_APPLIERS: dict[str, _Applier] = {
    "auth_enable": AuthApply._enable,            # type: ignore[dict-item]
    "auth_disable": AuthApply._disable,          # type: ignore[dict-item]
    "auth_user_add": AuthApply._user_add,        # type: ignore[dict-item]
    "auth_user_delete": AuthApply._user_delete,  # type: ignore[dict-item]
    "auth_user_change_password": AuthApply._user_change_password,  # type: ignore[dict-item]
    "auth_user_grant_role": AuthApply._user_grant_role,            # type: ignore[dict-item]
    "auth_user_revoke_role": AuthApply._user_revoke_role,          # type: ignore[dict-item]
    "auth_role_add": AuthApply._role_add,                          # type: ignore[dict-item]
    "auth_role_delete": AuthApply._role_delete,                    # type: ignore[dict-item]
    "auth_role_grant_permission": AuthApply._role_grant_permission,  # type: ignore[dict-item]
    "auth_role_revoke_permission": AuthApply._role_revoke_permission,  # type: ignore[dict-item]
}


# --- what a request needs -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Need:
    """Read (READ) or write (WRITE) access to [key, range_end) (KeyRange.of's form)."""

    kind: int
    key: bytes
    range_end: bytes = b""


class Rule:
    """What a request needs besides key permissions (Needs as a str)."""

    ROOT = "root"                   # the root role
    USER = "user"                   # any authenticated user

    @staticmethod
    def self_or_root(name: str) -> str:
        """The user `name` itself, or root (changing one's own password)."""
        return "self:" + name


Needs = list[Need] | str            # key permissions, or a Rule


def range_needs(req: etcdpb.RangeRequest) -> list[Need]:
    return [Need(READ, req.key, req.range_end)]


def put_needs(req: etcdpb.PutRequest) -> list[Need]:
    needs = [Need(WRITE, req.key)]
    if req.prev_kv:
        needs.append(Need(READ, req.key))
    return needs


def delete_range_needs(req: etcdpb.DeleteRangeRequest) -> list[Need]:
    needs = [Need(WRITE, req.key, req.range_end)]
    if req.prev_kv:
        needs.append(Need(READ, req.key, req.range_end))
    return needs


def txn_needs(req: etcdpb.TxnRequest) -> list[Need]:
    """Every permission the txn could use, whichever branches it takes (etcd's
    checkTxnAuth): read on each compare's keys, and each op of both branches."""
    needs = [Need(READ, c.key, c.range_end) for c in req.compare]
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            needs.extend(range_needs(op.request_range))
        elif which == "request_put":
            needs.extend(put_needs(op.request_put))
        elif which == "request_delete_range":
            needs.extend(delete_range_needs(op.request_delete_range))
        elif which == "request_txn":
            needs.extend(txn_needs(op.request_txn))
    return needs


def lease_revoke_needs(lease_keys: Iterable[bytes]) -> list[Need]:
    """etcd: revoking a lease needs write on every key attached to it."""
    return [Need(WRITE, k) for k in lease_keys]


LeaseKeys = Callable[[int], Iterable[bytes]]


def command_needs(command: cpb.Command, op: str, lease_keys: LeaseKeys) -> Needs | None:
    """What applying `command` needs of its proposer; None: nothing (the node's own
    bookkeeping: member publishes, cluster versions, checkpoints)."""
    if op == "put":
        return [Need(WRITE, command.put.key)]
    if op == "delete":
        return [Need(WRITE, command.delete.key)]
    if op == "cas":
        return [Need(READ, command.cas.key), Need(WRITE, command.cas.key)]
    if op == "batch":
        return [Need(WRITE, o.put.key if o.HasField("put") else o.delete.key)
                for o in command.batch.ops]
    if op == "etcd_put":
        return put_needs(command.etcd_put)
    if op == "etcd_delete_range":
        return delete_range_needs(command.etcd_delete_range)
    if op == "etcd_txn":
        return txn_needs(command.etcd_txn)
    if op == "lease_revoke":
        return lease_revoke_needs(lease_keys(command.lease_revoke.ID))
    if op in ("etcd_compact", "lease_grant"):
        return Rule.USER
    if op == "alarm":
        return Rule.ROOT
    if op == "auth_user_change_password":
        return Rule.self_or_root(command.auth_user_change_password.name)
    if op.startswith("auth_"):
        return Rule.ROOT
    return None


def allowed(state: AuthState, user: str, needs: Needs) -> bool:
    """Whether `user` may make a request that needs `needs` under `state` (enabled)."""
    if user not in state.users:
        return False
    if isinstance(needs, str):
        if needs == Rule.USER:
            return True
        if needs.startswith("self:"):
            return needs[5:] == user or state.is_root(user)
        return state.is_root(user)
    return all(state.permitted(user, n.kind, n.key, n.range_end) for n in needs)


def iter_users(state: AuthState) -> Iterator[User]:
    return iter(sorted(state.users.values(), key=lambda u: u.name))
