"""The MVCC store's refusals: each carries etcd's exact message (str(e)) and the gRPC
status code etcd answers it with, so the server can pass both on unchanged
(`context.abort(grpc.StatusCode[e.code.name], str(e))`) and etcd's clients, which match
on the message, recognise them.

The messages and codes are those of etcd's v3rpc/rpctypes (etcd 3.4 and 3.5). This
module imports no gRPC: storage does not depend on the transport; `StatusCode`'s names
are grpc.StatusCode's.
"""
from __future__ import annotations

import enum
from typing import ClassVar


class StatusCode(enum.Enum):
    """The gRPC status codes the store's errors map to (names as grpc.StatusCode's)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    DATA_LOSS = "DATA_LOSS"


class MVCCError(Exception):
    """A request the store refuses. Nothing of the refused entry is written."""

    code: ClassVar[StatusCode]
    message: ClassVar[str]

    def __init__(self, message: str | None = None) -> None:
        super().__init__(self.message if message is None else message)


class CompactedError(MVCCError):
    """A read, watch or compaction at a revision below the compact revision."""

    code = StatusCode.OUT_OF_RANGE
    message = "etcdserver: mvcc: required revision has been compacted"

    def __init__(self, compact_revision: int) -> None:
        super().__init__()
        self.compact_revision = compact_revision  # what a cancelled watch reports


class FutureRevisionError(MVCCError):
    code = StatusCode.OUT_OF_RANGE
    message = "etcdserver: mvcc: required revision is a future revision"


class EmptyKeyError(MVCCError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: key is not provided"


class KeyNotFoundError(MVCCError):
    """A put with ignore_value or ignore_lease on a key that does not exist."""

    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: key not found"


class ValueProvidedError(MVCCError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: value is provided"


class LeaseProvidedError(MVCCError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: lease is provided"


class LeaseNotFoundError(MVCCError):
    code = StatusCode.NOT_FOUND
    message = "etcdserver: requested lease not found"


class NoSpaceError(MVCCError):
    """A write that adds data while a NOSPACE alarm is raised (--quota-backend-bytes)."""

    code = StatusCode.RESOURCE_EXHAUSTED
    message = "etcdserver: mvcc: database space exceeded"


class CorruptError(MVCCError):
    """A write while a CORRUPT alarm is raised (a member's data differs from the
    others': server/etcd/corrupt_check.py); etcd's ErrGRPCCorrupt."""

    code = StatusCode.DATA_LOSS
    message = "etcdserver: corrupt cluster"


class LeaseExistsError(MVCCError):
    code = StatusCode.FAILED_PRECONDITION
    message = "etcdserver: lease already exists"


class LeaseTTLTooLargeError(MVCCError):
    code = StatusCode.OUT_OF_RANGE
    message = "etcdserver: too large lease TTL"


class ClusterVersionError(MVCCError):
    """An etcd request in a cluster whose members do not all apply them yet (kvraft's:
    the cluster version is below 2 while a rolling upgrade is under way)."""

    code = StatusCode.FAILED_PRECONDITION
    message = ("etcdserver: cluster version too old for this request; "
               "upgrade every member")


class TooManyOpsError(MVCCError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: too many operations in txn request"


class DuplicateKeyError(MVCCError):
    """A txn that puts one key twice, or puts a key that it also deletes."""

    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: duplicate key given in txn request"


class InvalidSortOptionError(MVCCError):
    code = StatusCode.INVALID_ARGUMENT
    message = "etcdserver: invalid sort option"


class RangeTooLargeError(MVCCError):
    """kvraft's own bound (etcd has none but gRPC's message size): a range whose result
    would hold more than the configured entries or bytes. RESOURCE_EXHAUSTED, as gRPC
    answers a message over its size limit."""

    code = StatusCode.RESOURCE_EXHAUSTED
    message = "kvraft: range result too large"

    def __init__(self, entries_max: int, bytes_max: int) -> None:
        super().__init__(f"kvraft: range result over the server's bound of {entries_max} "
                         f"entries or {bytes_max} bytes: use a limit")
