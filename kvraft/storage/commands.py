"""The binary encoding of replicated commands and member contexts (protos/command.proto).

Every encoded value starts with a one-byte encoding version, so a future format can be
introduced while old entries still sit in logs and snapshots: a decoder refuses a
version it does not know instead of misreading the bytes.

Commands are what a node proposes as the data of a normal Raft entry; member contexts
are what it passes as the context of a conf-change entry (`RawNode.propose_conf_change`),
so every node learns each member's addresses from the replicated log.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from kvraft.proto import command_pb2 as pb

COMMAND_VERSION = 1
MEMBERS_VERSION = 1

Command = pb.Command
MemberInfo = pb.MemberInfo


class CommandDecodeError(ValueError):
    """Bytes that are not a command (or member context) this version can read."""


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """What every node knows about one member of the cluster."""

    id: int
    peer_address: str = ""
    client_address: str = ""
    learner: bool = False
    incarnation: int = 0  # of the member's data directory; 0 = not known yet

    def to_proto(self) -> pb.MemberInfo:
        return pb.MemberInfo(id=self.id, peer_address=self.peer_address,
                             client_address=self.client_address, learner=self.learner,
                             incarnation=self.incarnation)

    @classmethod
    def from_proto(cls, info: pb.MemberInfo) -> MemberRecord:
        return cls(info.id, info.peer_address, info.client_address, info.learner,
                   info.incarnation)


# --- commands -------------------------------------------------------------------------
def encode_command(command: pb.Command) -> bytes:
    """Version byte + the Command protobuf: the data of a normal Raft entry."""
    return bytes((COMMAND_VERSION,)) + command.SerializeToString()


def put_command(key: bytes, value: bytes, request_id: int = 0) -> bytes:
    return encode_command(pb.Command(request_id=request_id, put=pb.Put(key=key, value=value)))


def delete_command(key: bytes, request_id: int = 0) -> bytes:
    return encode_command(pb.Command(request_id=request_id, delete=pb.Delete(key=key)))


def cas_command(key: bytes, expected: bytes | None, value: bytes, request_id: int = 0) -> bytes:
    """`expected=None` means "only if the key does not exist" (SPEC §2)."""
    cas = pb.CompareAndSwap(key=key, value=value)
    if expected is not None:
        cas.expected = expected
    return encode_command(pb.Command(request_id=request_id, cas=cas))


def batch_command(ops: list[tuple[bytes, bytes | None]], request_id: int = 0) -> bytes:
    """`ops` in order: (key, value) is a put, (key, None) a delete."""
    batch = pb.Batch()
    for key, value in ops:
        op = batch.ops.add()
        if value is None:
            op.delete.key = key
        else:
            op.put.key = key
            op.put.value = value
    return encode_command(pb.Command(request_id=request_id, batch=batch))


def member_update_command(member_id: int, peer_address: str, client_address: str,
                          request_id: int = 0, incarnation: int = 0) -> bytes:
    """A member's publish of its own addresses and data-directory incarnation: never
    changes its role (command.proto MemberUpdate)."""
    update = pb.MemberUpdate(id=member_id, peer_address=peer_address,
                             client_address=client_address, incarnation=incarnation)
    return encode_command(pb.Command(request_id=request_id, member_update=update))


def batch_command_from_wire(ops_wire: bytes, request_id: int = 0) -> bytes:
    """A batch command from the serialized ops of a client's BatchRequest.

    kvraft.BatchRequest and this Batch have the same wire format (ops = 1; BatchOp's
    put = 1 {key = 1, value = 2}, delete = 2 {key = 1}), so a validated request's bytes
    are parsed straight into the command instead of being rebuilt op by op in Python."""
    command = pb.Command(request_id=request_id)
    command.batch.MergeFromString(ops_wire)
    return encode_command(command)


# The Command fields that hold one of etcd's Auth changes (command.proto, 16-26).
AUTH_OPS = frozenset({"auth_enable", "auth_disable", "auth_user_add", "auth_user_delete",
                      "auth_user_change_password", "auth_user_grant_role",
                      "auth_user_revoke_role", "auth_role_add", "auth_role_delete",
                      "auth_role_grant_permission", "auth_role_revoke_permission"})
# The Command fields that hold one of etcd's requests (command.proto, 7-13, 15-26).
ETCD_OPS = frozenset({"etcd_put", "etcd_delete_range", "etcd_txn", "etcd_compact",
                      "lease_grant", "lease_revoke", "lease_checkpoint", "alarm"}) | AUTH_OPS
AUTH_CONTEXT_VERSION = 1


def etcd_command(request_id: int, op: str, request: Message) -> bytes:
    """A command carrying one of etcd's requests: `op` is its Command field (ETCD_OPS),
    e.g. etcd_command(rid, "etcd_put", etcdserverpb.PutRequest(key=b"k", value=b"v"))."""
    if op not in ETCD_OPS:
        raise ValueError(f"{op!r} is not an etcd operation of a command")
    command = pb.Command(request_id=request_id)
    getattr(command, op).CopyFrom(request)
    return encode_command(command)


def etcd_encoder(op: str, request: Message) -> Callable[[int], bytes]:
    """`etcd_command` with the request id left for later (Node.propose_own)."""
    return lambda request_id: etcd_command(request_id, op, request)


def cluster_version_command(version: int, request_id: int = 0) -> bytes:
    return encode_command(pb.Command(request_id=request_id,
                                     cluster_version=pb.ClusterVersion(version=version)))


def decode_command(data: bytes) -> pb.Command:
    """Parse the data of a normal entry; raises CommandDecodeError on anything else."""
    if not data:
        raise CommandDecodeError("empty command")
    if data[0] != COMMAND_VERSION:
        raise CommandDecodeError(f"unknown command encoding version {data[0]}")
    try:
        command = pb.Command.FromString(data[1:])
    except DecodeError as e:
        raise CommandDecodeError(f"malformed command: {e}") from e
    if command.WhichOneof("op") is None:
        raise CommandDecodeError("command without an operation")
    return command


# --- member contexts of conf-change entries -------------------------------------------
def encode_members(members: list[MemberRecord]) -> bytes:
    """The context of a conf-change entry: the members the change adds or updates."""
    msg = pb.MemberInfoList(members=[m.to_proto() for m in members])
    return bytes((MEMBERS_VERSION,)) + msg.SerializeToString()


def decode_members(context: bytes) -> list[MemberRecord]:
    """Inverse of encode_members; an empty context carries no member information."""
    if not context:
        return []
    if context[0] != MEMBERS_VERSION:
        raise CommandDecodeError(f"unknown member context version {context[0]}")
    try:
        msg = pb.MemberInfoList.FromString(context[1:])
    except DecodeError as e:
        raise CommandDecodeError(f"malformed member context: {e}") from e
    return [MemberRecord.from_proto(m) for m in msg.members]


# --- the auth context of a client's normal entry ---------------------------------------
def encode_auth_context(user: str, auth_revision: int) -> bytes:
    """The context of a client's normal entry (command.proto AuthContext)."""
    msg = pb.AuthContext(user=user, auth_revision=auth_revision)
    return bytes((AUTH_CONTEXT_VERSION,)) + msg.SerializeToString()


def decode_auth_context(context: bytes) -> pb.AuthContext | None:
    """Inverse of encode_auth_context; None for an entry without one (the node's own,
    or written by a kvraft before auth) or one this version cannot read."""
    if not context or context[0] != AUTH_CONTEXT_VERSION:
        return None
    try:
        return pb.AuthContext.FromString(context[1:])
    except DecodeError:
        return None
