"""The model behind lazyfs: what a file system has promised to keep, and what it has not.

A `LazyStore` holds one file system in two layers:

* the durable layer, on a backing directory, is what survives a power cut:
      <backing>/objects/<id>    the durable bytes of file <id>
      <backing>/namespace.json  the durable directory tree (dir id -> {name: id}) and
                                the kind and mode of every durably named node
  It changes only when a program asks for durability: fsync(file) writes the file's
  unsynced writes into its object; fsync(dir) makes the directory's current entries
  durable. In `ext4` mode an fsync of any node also makes that node's own name (and its
  parents' names, up to the root) durable, as ext4 and XFS do; in `posix` mode a name is
  durable only after an fsync of its directory.
* the volatile layer, in memory, is everything since: each file's writes and
  truncations in the order they came (`Node.pending`), each directory's current
  entries. Reads see both layers.

`cut()` is the power cut: every file's unsynced operations are lost, except that for
some files (chosen at random) a prefix of them reaches the disk first (a torn write:
whole operations, the last one possibly cut short); the volatile names are lost. The
store is dead afterwards; `LazyStore(backing)` on the same directory is the reboot.
`sync_all()` is a clean shutdown (everything made durable).

Backing-store writes are not fsynced: the model's durability is "written to the
backing directory", which outlives the lazyfs process (a power cut here is simulated,
the host keeps its page cache).
"""
from __future__ import annotations

import errno
import json
import os
import random
import stat
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

ROOT_ID = 1
NAMESPACE_NAME = "namespace.json"
OBJECTS_NAME = "objects"
NAMESPACE_FORMAT = "lazyfs-namespace"
NAMESPACE_VERSION = 1
# Bytes of unsynced writes held in memory across all files; a write past it fails with
# ENOSPC (LevelDB then reports an I/O error) instead of the lazyfs process growing
# without bound.
UNSYNCED_BYTES_MAX = 1 << 30
# The first fsyncs are named in `LazyStore.sync_journal` (to say where an armed cut
# lands); later ones are only counted.
SYNC_JOURNAL_ENTRIES_MAX = 512
# The suffix of LevelDB's write-ahead log files (NNNNNN.log), counted apart in cuts.
WAL_SUFFIX = b".log"
VANISHED_SHOWN_MAX = 10  # paths of vanished files named in a cut's report


class Mode(StrEnum):
    EXT4 = "ext4"    # an fsync also makes the node's own directory entry durable
    POSIX = "posix"  # directory entries need an fsync of the directory


class FsError(Exception):
    """A file-system call fails with `errno`."""

    def __init__(self, errno_: int) -> None:
        super().__init__(os.strerror(errno_))
        self.errno = errno_


class StoreDead(FsError):
    """The store has been cut (or shut down): every call fails with EIO."""

    def __init__(self) -> None:
        super().__init__(errno.EIO)


@dataclass(slots=True)
class Write:
    offset: int
    data: bytes


@dataclass(slots=True)
class Truncate:
    size: int


Op = Write | Truncate


@dataclass(eq=False)
class Node:
    """A file or directory.

    Files: applying `pending` in order to the object's bytes (`durable_size` long)
    gives the current bytes (`size` long); `pending_bytes` counts the data in it.
    Directories: `entries` is the current view; the durable one is in the store."""

    id: int
    is_dir: bool
    mode: int                          # st_mode, type bits included
    link: tuple[int, bytes] | None     # (parent id, name) now; None once unlinked
    last_name: bytes = b""             # the name it had last, for reports
    entries: dict[bytes, int] = field(default_factory=dict)
    size: int = 0
    durable_size: int = 0
    pending: list[Op] = field(default_factory=list)
    pending_bytes: int = 0
    lookups: int = 0                   # kernel references (FUSE lookup count)
    opens: int = 0                     # open file handles
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)


@dataclass
class CutReport:
    """What one power cut did. Files count only those that still exist afterwards."""

    files_unsynced: int = 0      # files with unsynced writes at the cut
    files_dropped: int = 0       # ... that lost all of them
    files_torn: int = 0          # ... that kept a strict, non-empty prefix
    wal_files_unsynced: int = 0  # the same for LevelDB write-ahead logs (*.log)
    wal_files_dropped: int = 0
    wal_files_torn: int = 0
    bytes_lost: int = 0          # unsynced bytes that did not reach the disk
    wal_bytes_lost: int = 0
    bytes_kept_torn: int = 0     # unsynced bytes a torn write kept
    names_lost: int = 0          # current directory entries that were not durable
    names_revived: int = 0       # durable entries that had been removed, back again
    files_vanished: int = 0      # files that existed but had no durable name
    vanished: list[str] = field(default_factory=list)  # their paths (the first few)

    def as_dict(self) -> dict[str, int | list[str]]:
        return dict(self.__dict__)


def _encode_name(name: bytes) -> str:
    return os.fsdecode(name)


def _decode_name(name: str) -> bytes:
    return os.fsencode(name)


class LazyStore:
    """One lazy file system over `backing`. Single-threaded: the caller serialises."""

    def __init__(self, backing: str | Path, mode: Mode | str = Mode.EXT4,
                 unsynced_bytes_max: int = UNSYNCED_BYTES_MAX) -> None:
        self.backing = Path(backing)
        self.mode = Mode(mode)
        self.unsynced_bytes_max = unsynced_bytes_max
        self.objects = self.backing / OBJECTS_NAME
        self.objects.mkdir(parents=True, exist_ok=True)
        self.nodes: dict[int, Node] = {}
        # The durable tree: dir id -> {name: id}, what a reboot finds (from the root).
        # Invariants: every node has at most one durable name (a rename moves it);
        # `_durable_names` is the inverse map (id -> (dir id, name)); every directory
        # with a durable name has an entry here.
        self.durable: dict[int, dict[bytes, int]] = {}
        self._durable_names: dict[int, tuple[int, bytes]] = {}
        self.unsynced_bytes = 0
        self.dead = False
        # The power fails right after the N-th next fsync returns (`arm`): from then on
        # every call fails with EIO, so nothing after that point reaches any layer.
        self.syncs_before_freeze: int | None = None
        # ... or right after the N-th next write to a write-ahead log (*.log) returns,
        # before the program can fsync it: a cut in the middle of a synced write.
        self.wal_writes_before_freeze: int | None = None
        # ... or right after the N-th next fsync of a WAL file that leaves the file's
        # own name volatile (posix mode: a file made since its directory's last fsync).
        self.volatile_wal_syncs_before_freeze: int | None = None
        self.frozen = False
        self.sync_journal: list[str] = []  # "path" of each fsync, "path/" of a directory's
        self.counters: dict[str, int] = {
            "writes": 0, "write_bytes": 0, "truncates": 0, "fsyncs": 0, "fsyncdirs": 0,
            "namespace_writes": 0, "objects_reaped": 0,
        }
        self.next_id = ROOT_ID + 1
        self._load()

    # --- loading and persisting the durable layer ------------------------------------
    def _load(self) -> None:
        path = self.backing / NAMESPACE_NAME
        kinds: dict[int, tuple[bool, int]] = {ROOT_ID: (True, stat.S_IFDIR | 0o755)}
        durable: dict[int, dict[bytes, int]] = {ROOT_ID: {}}
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("format") != NAMESPACE_FORMAT or doc.get("version") != NAMESPACE_VERSION:
                raise ValueError(f"{path} is not a lazyfs namespace of version "
                                 f"{NAMESPACE_VERSION}")
            self.next_id = int(doc["next_id"])
            for key, (is_dir, mode) in doc["nodes"].items():
                kinds[int(key)] = (bool(is_dir), int(mode))
            for key, entries in doc["entries"].items():
                durable[int(key)] = {_decode_name(n): int(i) for n, i in entries.items()}
        # Rebuild the nodes from what is reachable from the root; anything else (files
        # whose names never became durable) is gone, like an orphan inode after fsck.
        self.nodes[ROOT_ID] = Node(ROOT_ID, True, kinds[ROOT_ID][1], link=None)
        stack = [ROOT_ID]
        while stack:
            dir_id = stack.pop()
            entries = durable.get(dir_id, {})
            self.durable[dir_id] = dict(entries)
            self.nodes[dir_id].entries = dict(entries)
            for name, child_id in entries.items():
                is_dir, mode = kinds[child_id]
                node = Node(child_id, is_dir, mode, link=(dir_id, name), last_name=name)
                if not is_dir:
                    obj = self._object_path(child_id)
                    node.size = node.durable_size = obj.stat().st_size if obj.exists() else 0
                self.nodes[child_id] = node
                self._durable_names[child_id] = (dir_id, name)
                if is_dir:
                    stack.append(child_id)
        for obj in self.objects.iterdir():
            obj_id = int(obj.name)
            self.next_id = max(self.next_id, obj_id + 1)
            if obj_id not in self.nodes or self.nodes[obj_id].is_dir:
                obj.unlink()
        self.next_id = max(self.next_id, *self.nodes) + 1
        self._persist_namespace()

    def _persist_namespace(self) -> None:
        kinds = {str(i): [self.nodes[i].is_dir, self.nodes[i].mode]
                 for i in self._durable_names}
        doc = {
            "format": NAMESPACE_FORMAT, "version": NAMESPACE_VERSION,
            "next_id": self.next_id, "nodes": kinds,
            "entries": {str(d): {_encode_name(n): i for n, i in sorted(e.items())}
                        for d, e in self.durable.items()},
        }
        path = self.backing / NAMESPACE_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, sort_keys=True))
        os.replace(tmp, path)  # atomic: a lazyfs killed mid-write keeps the old tree
        self.counters["namespace_writes"] += 1

    def _object_path(self, node_id: int) -> Path:
        return self.objects / str(node_id)

    # --- helpers ---------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.dead or self.frozen:
            raise StoreDead()

    def arm(self, syncs: int | None = None, wal_writes: int | None = None,
            volatile_wal_syncs: int | None = None) -> None:
        """Freeze the store right after `syncs` more fsyncs (of files or directories):
        a power cut at an exact point of a program's sequence of durable writes; or
        right after `wal_writes` more writes to a WAL file, which then holds data its
        program never saw synced (LevelDB writes a record, then fsyncs it); or right
        after `volatile_wal_syncs` more fsyncs of WAL files whose names that fsync did
        not make durable (the worst moment for a program that forgets the directory)."""
        triggers = [t for t in (syncs, wal_writes, volatile_wal_syncs) if t is not None]
        assert len(triggers) == 1 and triggers[0] >= 1, "arm one trigger, at 1 or more"
        self.syncs_before_freeze = syncs
        self.wal_writes_before_freeze = wal_writes
        self.volatile_wal_syncs_before_freeze = volatile_wal_syncs

    def path_of(self, node: Node) -> str:
        """The node's current path from the root ("" for the root), for reports."""
        parts: list[bytes] = []
        while node.link is not None:
            parts.append(node.link[1])
            node = self.nodes[node.link[0]]
        if node.id != ROOT_ID:
            parts.append(b"(unlinked)")
        return "/".join(os.fsdecode(p) for p in reversed(parts))

    def _synced(self, node: Node) -> None:
        if len(self.sync_journal) < SYNC_JOURNAL_ENTRIES_MAX:
            self.sync_journal.append(self.path_of(node) + ("/" if node.is_dir else ""))
        if self.syncs_before_freeze is not None:
            self.syncs_before_freeze -= 1
            if self.syncs_before_freeze == 0:
                self.frozen = True
        if self.volatile_wal_syncs_before_freeze is not None and not node.is_dir and \
                node.last_name.endswith(WAL_SUFFIX) and node.id not in self.durably_reachable():
            self.volatile_wal_syncs_before_freeze -= 1
            if self.volatile_wal_syncs_before_freeze == 0:
                self.frozen = True

    def node(self, node_id: int) -> Node:
        self._check_alive()
        try:
            return self.nodes[node_id]
        except KeyError:
            raise FsError(errno.ENOENT) from None

    def _dir(self, node_id: int) -> Node:
        node = self.node(node_id)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    def _new_node(self, parent: Node, name: bytes, is_dir: bool, mode: int) -> Node:
        if name in parent.entries:
            raise FsError(errno.EEXIST)
        node = Node(self.next_id, is_dir, mode, link=(parent.id, name), last_name=name)
        self.next_id += 1
        self.nodes[node.id] = node
        parent.entries[name] = node.id
        parent.mtime_ns = parent.ctime_ns = time.time_ns()
        return node

    def _unlink_current(self, parent: Node, name: bytes) -> None:
        child = self.nodes[parent.entries.pop(name)]
        child.link = None
        parent.mtime_ns = parent.ctime_ns = time.time_ns()
        self._maybe_reap(child)

    def _maybe_reap(self, node: Node) -> None:
        """Forget a node nobody can reach any more: not named now, not durably named,
        not known to the kernel, not open. A reaped directory's durable entries go
        with it, which may free its children in turn."""
        if (node.id == ROOT_ID or node.link is not None or node.id in self._durable_names
                or node.lookups > 0 or node.opens > 0):
            return
        self.unsynced_bytes -= node.pending_bytes
        node.pending.clear()
        node.pending_bytes = 0
        del self.nodes[node.id]
        if node.is_dir:
            for name, child_id in self.durable.pop(node.id, {}).items():
                if self._durable_names.get(child_id) == (node.id, name):
                    del self._durable_names[child_id]
                    self._maybe_reap(self.nodes[child_id])
        else:
            try:
                self._object_path(node.id).unlink()
                self.counters["objects_reaped"] += 1
            except FileNotFoundError:
                pass

    def durably_reachable(self) -> set[int]:
        """Ids a reboot would find: durably named, in durably named directories."""
        reachable = {ROOT_ID}
        stack = [ROOT_ID]
        while stack:
            for child_id in self.durable.get(stack.pop(), {}).values():
                reachable.add(child_id)
                if self.nodes[child_id].is_dir:
                    stack.append(child_id)
        return reachable

    # --- namespace -------------------------------------------------------------------
    def lookup(self, parent_id: int, name: bytes) -> Node:
        parent = self._dir(parent_id)
        if name == b".":
            return parent
        if name == b"..":
            return self.nodes[parent.link[0]] if parent.link else parent
        try:
            return self.nodes[parent.entries[name]]
        except KeyError:
            raise FsError(errno.ENOENT) from None

    def create(self, parent_id: int, name: bytes, mode: int) -> Node:
        return self._new_node(self._dir(parent_id), name, False, stat.S_IFREG | (mode & 0o7777))

    def mkdir(self, parent_id: int, name: bytes, mode: int) -> Node:
        node = self._new_node(self._dir(parent_id), name, True, stat.S_IFDIR | (mode & 0o7777))
        return node

    def unlink(self, parent_id: int, name: bytes) -> None:
        parent = self._dir(parent_id)
        child = self.lookup(parent_id, name)
        if child.is_dir:
            raise FsError(errno.EISDIR)
        self._unlink_current(parent, name)

    def rmdir(self, parent_id: int, name: bytes) -> None:
        parent = self._dir(parent_id)
        child = self.lookup(parent_id, name)
        if not child.is_dir:
            raise FsError(errno.ENOTDIR)
        if child.entries:
            raise FsError(errno.ENOTEMPTY)
        self._unlink_current(parent, name)

    def rename(self, old_parent_id: int, old_name: bytes, new_parent_id: int,
               new_name: bytes, *, noreplace: bool = False) -> None:
        old_parent = self._dir(old_parent_id)
        new_parent = self._dir(new_parent_id)
        moved = self.lookup(old_parent_id, old_name)
        if old_parent_id == new_parent_id and old_name == new_name:
            return
        if moved.is_dir:  # no directory may move below itself
            ancestor: Node | None = new_parent
            while ancestor is not None:
                if ancestor.id == moved.id:
                    raise FsError(errno.EINVAL)
                ancestor = self.nodes[ancestor.link[0]] if ancestor.link else None
        target_id = new_parent.entries.get(new_name)
        if target_id is not None:
            if noreplace:
                raise FsError(errno.EEXIST)
            target = self.nodes[target_id]
            if target.is_dir and not moved.is_dir:
                raise FsError(errno.EISDIR)
            if moved.is_dir and not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if target.is_dir and target.entries:
                raise FsError(errno.ENOTEMPTY)
            self._unlink_current(new_parent, new_name)
        del old_parent.entries[old_name]
        new_parent.entries[new_name] = moved.id
        moved.link = (new_parent.id, new_name)
        moved.last_name = new_name
        now = time.time_ns()
        old_parent.mtime_ns = new_parent.mtime_ns = moved.ctime_ns = now

    def listdir(self, dir_id: int) -> list[tuple[bytes, Node]]:
        directory = self._dir(dir_id)
        return [(name, self.nodes[i]) for name, i in sorted(directory.entries.items())]

    # --- file data -------------------------------------------------------------------
    def _file(self, node_id: int) -> Node:
        node = self.node(node_id)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        return node

    def _hold(self, node: Node, op: Op, data_bytes: int) -> None:
        if self.unsynced_bytes + data_bytes > self.unsynced_bytes_max:
            raise FsError(errno.ENOSPC)
        node.pending.append(op)
        node.pending_bytes += data_bytes
        self.unsynced_bytes += data_bytes
        node.mtime_ns = node.ctime_ns = time.time_ns()

    def write(self, node_id: int, offset: int, data: bytes) -> int:
        node = self._file(node_id)
        if data:
            self._hold(node, Write(offset, bytes(data)), len(data))
            node.size = max(node.size, offset + len(data))
            self.counters["writes"] += 1
            self.counters["write_bytes"] += len(data)
            if self.wal_writes_before_freeze is not None and \
                    node.last_name.endswith(WAL_SUFFIX):
                self.wal_writes_before_freeze -= 1
                if self.wal_writes_before_freeze == 0:
                    self.frozen = True  # this write returns; nothing after it does
        return len(data)

    def truncate(self, node_id: int, size: int) -> None:
        node = self._file(node_id)
        if size < 0:
            raise FsError(errno.EINVAL)
        self._hold(node, Truncate(size), 0)
        node.size = size
        self.counters["truncates"] += 1

    def read(self, node_id: int, offset: int, size: int) -> bytes:
        node = self._file(node_id)
        end = min(offset + size, node.size)
        if end <= offset:
            return b""
        buf = bytearray(end - offset)
        durable_end = min(end, node.durable_size)
        if offset < durable_end:
            with open(self._object_path(node.id), "rb") as f:
                f.seek(offset)
                base = f.read(durable_end - offset)
            buf[: len(base)] = base
        # Replay the unsynced operations over the window [offset, end). A truncation
        # zeroes what it cut off, so bytes it removed read as zeros if the file grows
        # again; bytes past the durable end start as zeros.
        current = node.durable_size
        for op in node.pending:
            if isinstance(op, Truncate):
                low = max(op.size, offset)
                if op.size < current and low < end:
                    buf[low - offset: end - offset] = bytes(end - low)
                current = op.size
            else:
                low, high = max(op.offset, offset), min(op.offset + len(op.data), end)
                if low < high:
                    buf[low - offset: high - offset] = op.data[low - op.offset: high - op.offset]
                current = max(current, op.offset + len(op.data))
        return bytes(buf)

    def _apply_to_object(self, node: Node, ops: list[Op]) -> None:
        if not ops and self._object_path(node.id).exists():
            return
        fd = os.open(self._object_path(node.id), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for op in ops:
                if isinstance(op, Truncate):
                    os.ftruncate(fd, op.size)
                else:
                    os.pwrite(fd, op.data, op.offset)
            node.durable_size = os.fstat(fd).st_size
        finally:
            os.close(fd)

    # --- durability ------------------------------------------------------------------
    def fsync(self, node_id: int) -> None:
        """fsync/fdatasync of a file or directory."""
        node = self.node(node_id)
        if node.is_dir:
            self.fsyncdir(node_id)
            return
        self.counters["fsyncs"] += 1
        self._apply_to_object(node, node.pending)
        self.unsynced_bytes -= node.pending_bytes
        node.pending = []
        node.pending_bytes = 0
        assert node.durable_size == node.size, (node.id, node.durable_size, node.size)
        if self.mode is Mode.EXT4 and self._make_name_durable(node):
            self._settle_durable_changes()
        self._synced(node)

    def fsyncdir(self, dir_id: int) -> None:
        """fsync of a directory: its current entries become its durable entries."""
        directory = self._dir(dir_id)
        self.counters["fsyncdirs"] += 1
        changed = False
        if self.durable.get(dir_id) != directory.entries:
            self._set_durable_entries(directory, dict(directory.entries))
            changed = True
        if self.mode is Mode.EXT4:
            changed |= self._make_name_durable(directory)
        if changed:
            self._settle_durable_changes()
        self._synced(directory)

    def _set_durable_entries(self, directory: Node, entries: dict[bytes, int]) -> None:
        old = self.durable.get(directory.id, {})
        for name, child_id in old.items():
            if entries.get(name) != child_id and self._durable_names.get(child_id) == (
                    directory.id, name):
                del self._durable_names[child_id]
        for name, child_id in entries.items():
            previous = self._durable_names.get(child_id)
            if previous is not None and previous[0] != directory.id:
                # A rename is atomic on disk: the node's old durable name goes.
                del self.durable[previous[0]][previous[1]]
            self._durable_names[child_id] = (directory.id, name)
            child = self.nodes[child_id]
            if child.is_dir:
                self.durable.setdefault(child_id, {})
        self.durable[directory.id] = entries

    def _make_name_durable(self, node: Node) -> bool:
        """ext4: the node's current name, and its parents' up to the root, become
        durable (and a durable name it no longer has goes). True if anything changed."""
        changed = False
        while node.id != ROOT_ID:
            current = node.link
            durable = self._durable_names.get(node.id)
            if current == durable:
                if current is None:
                    return changed
            elif current is None:
                del self.durable[durable[0]][durable[1]]
                del self._durable_names[node.id]
                return True
            else:
                parent_id, name = current
                entries = dict(self.durable.get(parent_id, {}))
                if durable is not None and durable[0] == parent_id:
                    del entries[durable[1]]  # renamed within the directory
                entries[name] = node.id
                self._set_durable_entries(self.nodes[parent_id], entries)
                changed = True
            node = self.nodes[current[0]]
        return changed

    def _settle_durable_changes(self) -> None:
        """Reap nodes that lost their last durable name, and write the durable tree.

        Durable entries of a directory that is not durably named itself are kept: they
        were fsynced, and become reachable when the directory's own name does."""
        for node in list(self.nodes.values()):
            if node.id in self.nodes:
                self._maybe_reap(node)
        self._persist_namespace()

    # --- kernel references -----------------------------------------------------------
    def ref(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, node_id: int, count: int) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.lookups = max(0, node.lookups - count)
            if not self.dead:
                self._maybe_reap(node)

    def opened(self, node: Node) -> None:
        node.opens += 1

    def released(self, node_id: int) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.opens = max(0, node.opens - 1)
            if not self.dead:
                self._maybe_reap(node)

    # --- the end of the world ----------------------------------------------------------
    def sync_all(self) -> None:
        """A clean shutdown: every file's data and every directory's entries durable."""
        self._check_alive()
        for node in list(self.nodes.values()):
            if not node.is_dir and node.pending:
                self.fsync(node.id)
        for node in list(self.nodes.values()):
            if node.is_dir and node.id in self.nodes:
                self.fsyncdir(node.id)
        self._settle_durable_changes()
        self.dead = True

    def cut(self, rng: random.Random, torn_probability: float) -> CutReport:
        """The power cut: lose the volatile layer, tearing some files' unsynced writes.

        A torn file keeps its unsynced operations up to a random point (whole ones,
        the last maybe cut short) and loses the rest; the other files lose all."""
        if self.dead:
            raise StoreDead()
        report = CutReport()
        for node in self.nodes.values():
            if node.is_dir:
                durable = self.durable.get(node.id, {})
                report.names_lost += sum(1 for n, i in node.entries.items()
                                         if durable.get(n) != i)
                report.names_revived += sum(1 for n, i in durable.items()
                                            if node.entries.get(n) != i)
        reachable = self.durably_reachable()
        vanished = [n for n in self.nodes.values()
                    if not n.is_dir and n.link is not None and n.id not in reachable]
        report.files_vanished = len(vanished)
        report.vanished = sorted(self.path_of(n) for n in vanished)[:VANISHED_SHOWN_MAX]
        for node_id in sorted(reachable):
            node = self.nodes[node_id]
            if node.is_dir or not node.pending:
                continue
            name = self._durable_names[node_id][1]
            is_wal = name.endswith(WAL_SUFFIX)
            kept = self._torn_prefix(node.pending, rng) if rng.random() < torn_probability else []
            kept_bytes = sum(len(op.data) for op in kept if isinstance(op, Write))
            lost = node.pending_bytes - kept_bytes
            report.files_unsynced += 1
            report.wal_files_unsynced += is_wal
            report.bytes_lost += lost
            report.wal_bytes_lost += lost if is_wal else 0
            report.bytes_kept_torn += kept_bytes
            if kept:
                report.files_torn += 1
                report.wal_files_torn += is_wal
                self._apply_to_object(node, kept)
            else:
                report.files_dropped += 1
                report.wal_files_dropped += is_wal
        self.dead = True
        self._persist_namespace()
        return report

    @staticmethod
    def _torn_prefix(pending: list[Op], rng: random.Random) -> list[Op]:
        """A strict prefix of `pending`: the first `whole` operations, then maybe the
        start of the next one — always when `whole` is 0, so that a torn file keeps
        something whenever it can (a file with ONE unsynced write, as LevelDB's log
        has between a record's write and its fsync, is then torn inside that write;
        it is empty only when that write is a truncation or a single byte)."""
        whole = rng.randrange(len(pending))
        kept = list(pending[:whole])
        nxt = pending[whole]
        if isinstance(nxt, Write) and len(nxt.data) > 1 and (whole == 0 or rng.random() < 0.5):
            kept.append(Write(nxt.offset, nxt.data[: rng.randrange(1, len(nxt.data))]))
        return kept
