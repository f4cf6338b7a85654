"""State-machine snapshots: a streamed image of the data at one applied index.

Sending side: `SnapshotHandle` wraps a LevelDB snapshot (a consistent, point-in-time
view that costs nothing to take and lets applies continue) and produces the image as
a stream of byte chunks of a bounded size — never the data set in memory.

Receiving side: `SnapshotReceiver` writes the chunks to a file in `<data-dir>/snap/`,
checking the stream as it arrives; `finish()` fsyncs it and returns a `StagedSnapshot`.

Installing a staged snapshot — replacing the state machine and the Raft log by it,
atomically across crashes — is snapshot_install.py's.

Stream format (version 1):
    header   MAGIC, u32 length, SnapshotMetadata
    record   u8 tag (1 = key/value, 2 = member, 3 = MVCC), u32 key length, u32 value
             length, key, value   (a member's key is its 8-byte id, its value a
             MemberInfo; an MVCC record's key is its LevelDB key without the V)
An older kvraft reads tags 1 and 2 only; tag 3 records exist only once the cluster
version is 2 (mvcc_apply.py), which every member must know before it is raised.
    trailer  u8 0xFF, u64 record count, u32 crc32 of every byte before the trailer
"""
from __future__ import annotations

import contextlib
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import plyvel

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage import keys
from kvraft.storage.apply_buffer import FrozenView
from kvraft.storage.datadir import DataDir, fsync_dir
from kvraft.storage.mvcc import layout as mvcc_layout

MAGIC = b"KVRSNAP\x01"
TAG_KV = 1
TAG_MEMBER = 2
TAG_MVCC = 3
# Each tag's LevelDB prefix (a record's key is its LevelDB key without the prefix).
TAG_PREFIXES = {TAG_KV: keys.KV_PREFIX, TAG_MEMBER: keys.MEMBER_PREFIX,
                TAG_MVCC: mvcc_layout.PREFIX}
TAG_END = 0xFF
_LEN = struct.Struct(">I")
_RECORD = struct.Struct(">BII")
_TRAILER = struct.Struct(">BQI")
METADATA_BYTES_MAX = 1 << 20
RECORD_KEY_BYTES_MAX = 1 << 20
RECORD_VALUE_BYTES_MAX = 256 << 20
DEFAULT_CHUNK_BYTES = 1 << 20
READ_BLOCK_BYTES = 1 << 20
STAGED_SUFFIX = ".snap"
PARTIAL_SUFFIX = ".part"


class SnapshotStreamError(ValueError):
    """The bytes received are not a well-formed snapshot stream for this metadata."""


# --- sending ----------------------------------------------------------------------------
class SnapshotHandle:
    """A consistent image of the state machine at `metadata.index`.

    Holds a frozen view (a LevelDB snapshot plus the applies still buffered when it was
    taken, `ApplyBuffer.freeze`) until `close()`; any number of `chunks()` streams may
    be read from it (one per follower being sent the snapshot). Closing while streams
    are still being read releases the view when the last of them ends.
    """

    def __init__(self, source: FrozenView | plyvel.DB) -> None:
        self._lock = threading.Lock()
        self._active_streams = 0
        self._released = False
        self._snapshot = source if isinstance(source, FrozenView) else FrozenView(
            source.snapshot(), {})
        raw = self._snapshot.get(keys.APPLIED)
        index, term = keys.unpack_index_term(raw) if raw is not None else (0, 0)
        self.metadata = eraftpb.SnapshotMetadata(index=index, term=term)
        raw = self._snapshot.get(keys.CONF_STATE)
        if raw is not None:
            self.metadata.conf_state.ParseFromString(raw)
        self._closed = False

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
        """The stream, as chunks of exactly `chunk_bytes` (the last one shorter).

        Lazy: the stream holds the image from its first chunk on; if the handle was
        closed (evicted) before that, the first next() raises SnapshotStreamError.
        """
        assert chunk_bytes > 0
        with self._lock:
            if self._closed:  # evicted or closed before this stream started
                raise SnapshotStreamError("the snapshot image was closed")
            self._active_streams += 1
        try:
            yield from self._stream(chunk_bytes)
        finally:
            with self._lock:
                self._active_streams -= 1
            self._release_if_done()

    def _stream(self, chunk_bytes: int) -> Iterator[bytes]:
        meta = self.metadata.SerializeToString()
        out = bytearray(MAGIC + _LEN.pack(len(meta)) + meta)
        crc = zlib.crc32(out)
        count = 0
        for tag, prefix in TAG_PREFIXES.items():
            strip = len(prefix)
            with self._snapshot.iterator(prefix=prefix) as it:
                for key, value in it:
                    record = _RECORD.pack(tag, len(key) - strip, len(value)) + key[strip:] + value
                    crc = zlib.crc32(record, crc)
                    out += record
                    count += 1
                    while len(out) >= chunk_bytes:
                        yield bytes(out[:chunk_bytes])
                        del out[:chunk_bytes]
        out += _TRAILER.pack(TAG_END, count, crc)
        while out:
            yield bytes(out[:chunk_bytes])
            del out[:chunk_bytes]

    def close(self) -> None:
        """No new streams; the LevelDB snapshot goes once running streams end."""
        with self._lock:
            self._closed = True
        self._release_if_done()

    def _release_if_done(self) -> None:
        with self._lock:
            if not self._closed or self._active_streams or self._released:
                return
            self._released = True
        self._snapshot.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SnapshotHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- parsing ----------------------------------------------------------------------------
class StreamParser:
    """Incremental parser of the stream; `feed()` returns the complete records so far."""

    def __init__(self, expected: eraftpb.SnapshotMetadata | None = None, *,
                 keep_extra: bool = False) -> None:
        self._expected = expected
        self._buf = bytearray()
        self._crc = 0
        self.metadata: eraftpb.SnapshotMetadata | None = None
        self.count = 0
        self.done = False
        # keep_extra: bytes after the trailer are kept in `extra` instead of refused (a
        # snapshot file's padding and SHA-256, snapshot_file.py); the caller bounds them.
        self._keep_extra = keep_extra
        self.extra = bytearray()

    @property
    def crc(self) -> int:
        """The crc32 of the stream so far; once `done`, the one its trailer holds."""
        return self._crc

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        if self.done and data:
            if self._keep_extra:
                self.extra += data
                return []
            raise SnapshotStreamError("data after the end of the snapshot stream")
        self._buf += data
        records: list[tuple[int, bytes, bytes]] = []
        buf = self._buf
        pos = 0
        if self.metadata is None:
            head = len(MAGIC) + _LEN.size
            if len(buf) < head:
                return records
            if bytes(buf[: len(MAGIC)]) != MAGIC:
                raise SnapshotStreamError("not a kvraft snapshot stream (bad magic)")
            (meta_len,) = _LEN.unpack_from(buf, len(MAGIC))
            if meta_len > METADATA_BYTES_MAX:
                raise SnapshotStreamError(f"snapshot metadata of {meta_len} bytes")
            if len(buf) < head + meta_len:
                return records
            meta = eraftpb.SnapshotMetadata.FromString(bytes(buf[head: head + meta_len]))
            exp = self._expected
            if exp is not None and (meta.index, meta.term) != (exp.index, exp.term):
                raise SnapshotStreamError(
                    f"stream is of snapshot {meta.index}/{meta.term}, expected "
                    f"{exp.index}/{exp.term}")
            self.metadata = meta
            pos = head + meta_len
            self._crc = zlib.crc32(buf[:pos])
        while not self.done and len(buf) - pos >= _RECORD.size:
            tag = buf[pos]
            if tag == TAG_END:
                if len(buf) - pos < _TRAILER.size:
                    break
                _, count, crc = _TRAILER.unpack_from(buf, pos)
                if count != self.count or crc != self._crc:
                    raise SnapshotStreamError(
                        f"snapshot stream fails its check: {self.count} records, crc "
                        f"{self._crc:08x}; trailer says {count}, {crc:08x}")
                pos += _TRAILER.size
                self.done = True
                break
            if tag not in TAG_PREFIXES:
                raise SnapshotStreamError(f"unknown record tag {tag}")
            _, key_len, value_len = _RECORD.unpack_from(buf, pos)
            if key_len > RECORD_KEY_BYTES_MAX or value_len > RECORD_VALUE_BYTES_MAX:
                raise SnapshotStreamError(f"record of {key_len}+{value_len} bytes")
            end = pos + _RECORD.size + key_len + value_len
            if len(buf) < end:
                break
            self._crc = zlib.crc32(memoryview(buf)[pos:end], self._crc)
            key_start = pos + _RECORD.size
            records.append((tag, bytes(buf[key_start: key_start + key_len]),
                            bytes(buf[key_start + key_len: end])))
            self.count += 1
            pos = end
        del buf[:pos]
        if self.done and buf:
            if not self._keep_extra:
                raise SnapshotStreamError("data after the end of the snapshot stream")
            self.extra += buf
            buf.clear()
        return records


# --- receiving --------------------------------------------------------------------------
@dataclass(frozen=True)
class StagedSnapshot:
    """A complete, checked, durable snapshot file waiting to be installed."""

    path: Path
    metadata: eraftpb.SnapshotMetadata
    record_count: int


class SnapshotReceiver:
    """Stages an incoming snapshot stream in `<data-dir>/snap/`. Bounded memory: the
    parser holds at most one record plus one chunk."""

    def __init__(self, datadir: DataDir, metadata: eraftpb.SnapshotMetadata,
                 *, bytes_max: int = 64 << 30) -> None:
        self._datadir = datadir
        self.metadata = eraftpb.SnapshotMetadata()
        self.metadata.CopyFrom(metadata)
        self._bytes_max = bytes_max
        self._bytes = 0
        name = f"{metadata.index:020d}-{metadata.term:020d}-{uuid.uuid4().hex[:8]}"
        self._partial = datadir.snap_dir / (name + PARTIAL_SUFFIX)
        self._staged = datadir.snap_dir / (name + STAGED_SUFFIX)
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed in finish/abort
        self._parser = StreamParser(expected=metadata)

    def write(self, chunk: bytes) -> None:
        self._bytes += len(chunk)
        if self._bytes > self._bytes_max:
            self.abort()
            raise SnapshotStreamError(f"snapshot larger than {self._bytes_max} bytes")
        try:
            self._parser.feed(chunk)
        except SnapshotStreamError:
            self.abort()
            raise
        self._file.write(chunk)

    def finish(self) -> StagedSnapshot:
        if not self._parser.done:
            self.abort()
            raise SnapshotStreamError("snapshot stream ended before its trailer")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._partial, self._staged)
        fsync_dir(self._staged.parent)
        return StagedSnapshot(self._staged, self.metadata, self._parser.count)

    def abort(self) -> None:
        """Drop what was received (idempotent)."""
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._partial.unlink()


def iter_staged_records(path: Path, expected: eraftpb.SnapshotMetadata
                        ) -> Iterator[tuple[int, bytes, bytes]]:
    parser = StreamParser(expected=expected)
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK_BYTES):
            yield from parser.feed(block)
    if not parser.done:
        raise SnapshotStreamError(f"staged snapshot {path} is truncated")
