"""lazyfs: a FUSE file system that forgets what was never fsynced (after Jepsen's LazyFS).

    python -m tests.powerloss.lazyfs --backing DIR --mount DIR --control SOCK \\
        [--mode ext4|posix]

Mounts a `LazyStore` (model.py) at --mount, keeping its durable layer in --backing,
and serves a control channel on the unix socket --control: one JSON request per
connection, one JSON line back.

    {"op": "ping"}                       -> {"ok": true, "mode": "ext4", "pid": ...}
    {"op": "counters"}                   -> {"ok": true, "counters": {...}}
    {"op": "cut", "seed": S, "torn_probability": P}
                                         -> {"ok": true, "report": {...}}; then unmounts
                                            and exits: the power cut (see model.py)
    {"op": "stop"}                       -> {"ok": true}; makes everything durable,
                                            unmounts and exits: a clean shutdown
    {"op": "journal"}                    -> {"ok": true, "syncs": [path, ...]}: the
                                            first fsyncs, in order ("dir/" for dirs)
    {"op": "arm", "syncs": N}            -> {"ok": true}; the power fails right after
                                            the N-th next fsync: every later call fails
                                            with EIO (counters say "frozen"); then cut
    {"op": "arm", "wal_writes": N}       -> the same, right after the N-th next write
                                            to a *.log file (before its fsync)
    {"op": "arm", "volatile_wal_syncs": N} -> the same, right after the N-th next
                                            fsync of a *.log file whose name it left
                                            volatile (posix mode only)

The programs using the mount must be dead before a cut (the harness SIGKILLs them);
after it every file-system call fails with EIO until the process has unmounted.
SIGTERM or SIGINT unmounts without making anything durable (like a cut with no torn
writes), so an interrupted test never leaves a mount behind. Mounting a new lazyfs on
the same backing directory is the reboot.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pyfuse3
import pyfuse3.asyncio

from tests.powerloss.model import FsError, LazyStore, Mode, Node

log = logging.getLogger("lazyfs")
T = TypeVar("T")

# Attributes and names are cached by the kernel for this long: this process is the
# only one that changes the tree, and a cut ends the mount (so its caches).
CACHE_TIMEOUT_S = 5.0
CONTROL_REQUEST_BYTES_MAX = 64 << 10
BLOCK_BYTES = 4096


def _fuse_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Model errors (FsError, StoreDead) reach the kernel as their errno."""

    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


class LazyOperations(pyfuse3.Operations):
    """The FUSE requests, each a call on the store. Handlers never await, so they run
    one at a time: the store needs no lock."""

    supports_dot_lookup = True
    enable_writeback_cache = False  # every write() must reach the store at once

    def __init__(self, store: LazyStore) -> None:
        super().__init__()
        self.store = store
        self._file_handles: dict[int, int] = {}            # fh -> node id
        self._dir_handles: dict[int, list[tuple[bytes, int]]] = {}  # fh -> listing
        self._next_fh = 1

    # --- helpers -------------------------------------------------------------------
    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.id
        attrs.generation = 0
        attrs.entry_timeout = CACHE_TIMEOUT_S
        attrs.attr_timeout = CACHE_TIMEOUT_S
        attrs.st_mode = node.mode
        attrs.st_nlink = (2 if node.is_dir else 1) if node.link or node.id == 1 else 0
        attrs.st_uid = os.getuid()
        attrs.st_gid = os.getgid()
        attrs.st_rdev = 0
        attrs.st_size = 0 if node.is_dir else node.size
        attrs.st_blksize = BLOCK_BYTES
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_atime_ns = node.mtime_ns
        attrs.st_mtime_ns = node.mtime_ns
        attrs.st_ctime_ns = node.ctime_ns
        return attrs

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _file_of(self, fh: int) -> int:
        try:
            return self._file_handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    # --- names ---------------------------------------------------------------------
    @_fuse_errors
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.store.lookup(parent_inode, name)
        if name not in (b".", b".."):
            self.store.ref(node)
        return self._attrs(node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.store.forget(inode, count)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self.store.node(inode))

    @_fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.store.node(inode)
        if fields.update_size:
            self.store.truncate(inode, attr.st_size)
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self._attrs(node)

    @_fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.store.mkdir(parent_inode, name, mode & ~ctx.umask)
        self.store.ref(node)
        return self._attrs(node)

    @_fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self.store.create(parent_inode, name, mode & ~ctx.umask)
        self.store.ref(node)
        self.store.opened(node)
        fh = self._new_fh()
        self._file_handles[fh] = node.id
        return pyfuse3.FileInfo(fh=fh), self._attrs(node)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.store.unlink(parent_inode, name)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.store.rmdir(parent_inode, name)

    @_fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FsError(errno.EINVAL)  # no user of these mounts exchanges names
        self.store.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                          noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    @_fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise FsError(errno.EPERM)  # one name per file keeps the model simple

    # --- files ---------------------------------------------------------------------
    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.store.node(inode)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if flags & os.O_TRUNC:  # libfuse asks for atomic O_TRUNC: it comes with open
            self.store.truncate(inode, 0)
        self.store.opened(node)
        fh = self._new_fh()
        self._file_handles[fh] = node.id
        return pyfuse3.FileInfo(fh=fh)

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.store.read(self._file_of(fh), off, size)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.store.write(self._file_of(fh), off, buf)

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        self._file_of(fh)  # close() makes nothing durable

    async def release(self, fh: int) -> None:
        node_id = self._file_handles.pop(fh, None)
        if node_id is not None:
            self.store.released(node_id)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.store.fsync(self._file_of(fh))

    # --- directories -----------------------------------------------------------------
    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        listing = [(name, node.id) for name, node in self.store.listdir(inode)]
        fh = self._new_fh()
        # A listing fixed at opendir: entries added or removed meanwhile are neither
        # skipped nor repeated (readdir's contract).
        self._dir_handles[fh] = [(b"", inode), *listing]
        return fh

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dir_handles[fh]
        for position in range(max(start_id, 1), len(listing)):
            name, node_id = listing[position]
            node = self.store.nodes.get(node_id)
            if node is None:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, name, self._attrs(node), position + 1):
                return
            self.store.ref(node)

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    @_fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.store.fsyncdir(self._dir_handles[fh][0][1])

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self.store.node(1)
        real = os.statvfs(self.store.backing)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(real, name))
        return data


class Control:
    """The control channel: cut, stop, counters."""

    def __init__(self, store: LazyStore, path: Path) -> None:
        self.store = store
        self.path = path
        self.cuts_requested = 0

    async def serve(self) -> asyncio.AbstractServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return await asyncio.start_unix_server(self._handle, path=str(self.path),
                                               limit=CONTROL_REQUEST_BYTES_MAX)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        terminate = False
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                reply, terminate = self._dispatch(request)
            except (ValueError, KeyError, TypeError, FsError) as e:
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()
            if terminate:
                pyfuse3.terminate()

    def _dispatch(self, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        op = request["op"]
        if op == "ping":
            return {"ok": True, "mode": self.store.mode.value, "pid": os.getpid()}, False
        if op == "counters":
            counters = dict(self.store.counters, unsynced_bytes=self.store.unsynced_bytes,
                            frozen=int(self.store.frozen))
            return {"ok": True, "counters": counters}, False
        if op == "cut":
            rng = random.Random(int(request["seed"]))
            report = self.store.cut(rng, float(request.get("torn_probability", 0.5)))
            log.info("cut: %s", report.as_dict())
            return {"ok": True, "report": report.as_dict()}, True
        if op == "journal":
            return {"ok": True, "syncs": list(self.store.sync_journal)}, False
        if op == "arm":
            if "wal_writes" in request:
                self.store.arm(wal_writes=int(request["wal_writes"]))
            elif "volatile_wal_syncs" in request:
                self.store.arm(volatile_wal_syncs=int(request["volatile_wal_syncs"]))
            else:
                self.store.arm(syncs=int(request["syncs"]))
            return {"ok": True}, False
        if op == "stop":
            self.store.sync_all()
            log.info("clean stop")
            return {"ok": True}, True
        raise ValueError(f"unknown op {op!r}")


async def _serve(store: LazyStore, mountpoint: Path, control_path: Path) -> None:
    control = Control(store, control_path)
    server = await control.serve()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    try:
        await pyfuse3.main()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            control_path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.powerloss.lazyfs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--backing", type=Path, required=True)
    parser.add_argument("--mount", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.EXT4.value)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s lazyfs[%(process)d] %(message)s")
    store = LazyStore(args.backing, Mode(args.mode))
    ops = LazyOperations(store)
    options = set(pyfuse3.default_options) | {"fsname=lazyfs", "subtype=lazyfs"}
    pyfuse3.asyncio.enable()
    try:
        pyfuse3.init(ops, str(args.mount), options)
    except RuntimeError as e:
        print(f"lazyfs: cannot mount {args.mount}: {e}", file=sys.stderr)
        return 1
    log.info("mounted %s on %s (%s mode)", args.backing, args.mount, args.mode)
    try:
        asyncio.run(_serve(store, args.mount, args.control))
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", args.mount)
    return 0


if __name__ == "__main__":
    sys.exit(main())
