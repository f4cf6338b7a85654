"""Snapshot files: a backup of the store, as `kvraft snapshot save` and `etcdctl
snapshot save` write it (SPEC §7), read and checked.

A file is what etcd's Maintenance.Snapshot streams (kvraft/server/etcd/maintenance.py):

    image     the state machine's snapshot stream (snapshot.py), with its own crc32
    padding   zero bytes up to a multiple of PAGE_BYTES (etcdctl checks the size)
    checksum  SHA-256 of every byte before it (SHA256_BYTES)

Reading checks all three: the stream's structure, record count and crc32 (its
trailer), the padding (zeros, shorter than a page), and the SHA-256 — unless the caller
skips the SHA-256 (a file without one, like etcdutl's --skip-hash-check). Every refusal
is a SnapshotFileError whose message is one line naming the file.

`iter_snapshot_file` yields the records as it reads, and raises at the end if the
file fails a check: a caller that writes them somewhere (restore.py) must treat what
it wrote as garbage until the iteration has ended without an error.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from kvraft.proto import command_pb2 as cpb
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage.commands import MemberRecord
from kvraft.storage.mvcc import layout as mvcc_layout
from kvraft.storage.mvcc_apply import CLUSTER_VERSION_LEGACY, CLUSTER_VERSION_MVCC
from kvraft.storage.snapshot import (
    READ_BLOCK_BYTES,
    TAG_KV,
    TAG_MEMBER,
    TAG_MVCC,
    SnapshotStreamError,
    StreamParser,
)

SHA256_BYTES = 32
PAGE_BYTES = 512


class SnapshotFileError(ValueError):
    """A snapshot file that cannot be used. str(e) is one line: the file and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"snapshot file {self.path}: {self.reason}")


@dataclass
class SnapshotFileInfo:
    """What `kvraft snapshot status` prints about a checked file.

    `revision` is the store's MVCC revision (etcd's 1 for an empty store; 0 for an
    image from before MVCC, which has none);
    `total_keys` counts the live keys (a deleted key's tombstone and older revisions
    are not keys); `crc32` is the image's own checksum (its trailer's), `sha256` the
    file's (empty when the file has none and the check was skipped)."""

    path: Path
    metadata: eraftpb.SnapshotMetadata
    size_bytes: int = 0
    record_count: int = 0
    crc32: int = 0
    sha256: bytes = b""
    revision: int = 0
    compact_revision: int = 0
    total_keys: int = 0
    cluster_version: int = CLUSTER_VERSION_LEGACY
    lease_count: int = 0
    members: list[MemberRecord] = field(default_factory=list)


def _account(info: SnapshotFileInfo, tag: int, key: bytes, value: bytes) -> None:
    """Add one record to what `info` says about the image."""
    if tag == TAG_KV:
        info.total_keys += 1
    elif tag == TAG_MEMBER:
        info.members.append(MemberRecord.from_proto(cpb.MemberInfo.FromString(value)))
    elif tag == TAG_MVCC:
        full = mvcc_layout.PREFIX + key
        if full.startswith(mvcc_layout.LATEST_PREFIX):
            if mvcc_layout.record_live(value):
                info.total_keys += 1
        elif full.startswith(mvcc_layout.GRANT_PREFIX):
            info.lease_count += 1
        elif full == mvcc_layout.META_REVISION:
            info.revision = mvcc_layout.unpack_int(value)
        elif full == mvcc_layout.META_COMPACT:
            info.compact_revision = mvcc_layout.unpack_int(value)
        elif full == mvcc_layout.CLUSTER_VERSION:
            info.cluster_version = mvcc_layout.unpack_int(value)


def iter_snapshot_file(path: str | Path, info: SnapshotFileInfo | None = None, *,
                       verify_hash: bool = True) -> Iterator[tuple[int, bytes, bytes]]:
    """The (tag, key, value) records of the file's image, in order; `info` (if given)
    is filled in as they pass. Raises SnapshotFileError — at the end, for a checksum —
    if the file is not a whole, intact snapshot file (module docstring)."""
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as e:
        raise SnapshotFileError(path, f"cannot be read: {e.strerror}") from None
    try:
        size = os.fstat(f.fileno()).st_size
        hashed_bytes = size - SHA256_BYTES if verify_hash else size
        if hashed_bytes < 0:
            raise SnapshotFileError(path, f"is too short to be a snapshot ({size} bytes)")
        digest = hashlib.sha256()
        parser = StreamParser(keep_extra=True)
        offset = 0
        while block := f.read(READ_BLOCK_BYTES):
            if offset < hashed_bytes:
                digest.update(block[: hashed_bytes - offset])
            offset += len(block)
            try:
                records = parser.feed(block)
            except SnapshotStreamError as e:
                raise SnapshotFileError(path, f"is not an intact kvraft snapshot: {e}") from None
            for tag, key, value in records:
                if info is not None:
                    try:
                        _account(info, tag, key, value)
                    except (ValueError, DecodeError) as e:
                        raise SnapshotFileError(path, f"holds an unreadable record: {e}") from None
                yield tag, key, value
            if len(parser.extra) > PAGE_BYTES + SHA256_BYTES:
                raise SnapshotFileError(path, "has data after the end of its snapshot image")
        if offset != size:
            raise SnapshotFileError(path, "changed while it was being read")
        if not parser.done or parser.metadata is None:
            raise SnapshotFileError(path, "is truncated: its snapshot image has no end")
        extra = bytes(parser.extra)
        if verify_hash:
            if len(extra) < SHA256_BYTES:
                raise SnapshotFileError(path, "has no SHA-256 checksum after its image "
                                              "(skip the check to read it anyway)")
            padding, stored = extra[:-SHA256_BYTES], extra[-SHA256_BYTES:]
            if stored != digest.digest():
                raise SnapshotFileError(path, "fails its SHA-256 checksum")
        else:
            padding, stored = extra, b""
        if padding.strip(b"\0") and verify_hash:
            raise SnapshotFileError(path, "has data after the end of its snapshot image")
        if info is not None:
            if info.cluster_version >= CLUSTER_VERSION_MVCC and info.revision == 0:
                info.revision = mvcc_layout.FIRST_REVISION   # no write yet
            info.metadata = parser.metadata
            info.size_bytes = size
            info.record_count = parser.count
            info.crc32 = parser.crc
            info.sha256 = stored
    finally:
        f.close()


def read_snapshot_file(path: str | Path, *, verify_hash: bool = True) -> SnapshotFileInfo:
    """Read and check the whole file; what it holds (SnapshotFileInfo)."""
    info = SnapshotFileInfo(Path(path), eraftpb.SnapshotMetadata())
    for _ in iter_snapshot_file(path, info, verify_hash=verify_hash):
        pass
    return info
