"""lazyfs proves that it loses data: through a real FUSE mount, a cut drops what was
never fsynced, keeps what was, tears some writes to a prefix, and treats directory
entries as the mode says. Skipped (with the reason) where FUSE is not available."""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest

from .mount import LazyMount, mounted

pytestmark = pytest.mark.powerloss

MakeMount = Callable[[str], LazyMount]


def write_file(path: Path, data: bytes, *, fsync: bool) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_file(fs: LazyMount, name: str, data: bytes) -> Path:
    """A file whose data and name are both durable, whatever the mode."""
    path = fs.mountpoint / name
    write_file(path, data, fsync=True)
    fsync_dir(fs.mountpoint)
    return path


def reboot(fs: LazyMount, seed: int = 0, torn_probability: float = 0.0) -> dict[str, int]:
    report = fs.cut(seed=seed, torn_probability=torn_probability)
    assert not mounted(fs.mountpoint)
    fs.start()
    return report


@pytest.mark.parametrize("mode", ["ext4", "posix"])
def test_unsynced_bytes_vanish_and_synced_bytes_survive(lazy_mount: MakeMount, mode: str) -> None:
    fs = lazy_mount(mode)
    path = durable_file(fs, "f", b"synced.")
    write_file(path, b"unsynced", fsync=False)
    assert path.read_bytes() == b"synced.unsynced"  # reads see the volatile layer
    report = reboot(fs)
    assert path.read_bytes() == b"synced."
    assert (report["files_unsynced"], report["files_dropped"], report["bytes_lost"]) == (1, 1, 8)


@pytest.mark.parametrize("mode", ["ext4", "posix"])
def test_a_file_never_fsynced_loses_its_data(lazy_mount: MakeMount, mode: str) -> None:
    fs = lazy_mount(mode)
    path = fs.mountpoint / "f"
    write_file(path, b"x" * 10_000, fsync=False)
    fsync_dir(fs.mountpoint)  # the name is durable, the data is not
    reboot(fs)
    assert path.read_bytes() == b""


@pytest.mark.parametrize(("mode", "survives"), [("ext4", True), ("posix", False)])
def test_a_created_and_fsynced_file_needs_a_directory_fsync_only_in_posix_mode(
        lazy_mount: MakeMount, mode: str, survives: bool) -> None:
    fs = lazy_mount(mode)
    os.mkdir(fs.mountpoint / "d")
    fsync_dir(fs.mountpoint)
    path = fs.mountpoint / "d" / "f"
    write_file(path, b"data", fsync=True)
    reboot(fs)
    assert path.exists() == survives
    if survives:
        assert path.read_bytes() == b"data"
        path.unlink()
    write_file(path, b"data", fsync=True)
    fsync_dir(path.parent)  # now durable in both modes
    reboot(fs)
    assert path.read_bytes() == b"data"


@pytest.mark.parametrize("mode", ["ext4", "posix"])
def test_directory_changes_need_a_directory_fsync(lazy_mount: MakeMount, mode: str) -> None:
    fs = lazy_mount(mode)
    m = fs.mountpoint
    durable_file(fs, "kept", b"old")
    durable_file(fs, "removed", b"gone?")
    tmp = m / "kept.tmp"
    write_file(tmp, b"new", fsync=True)  # ext4: tmp's own name is now durable
    os.replace(tmp, m / "kept")
    os.unlink(m / "removed")
    assert sorted(os.listdir(m)) == ["kept"]
    report = reboot(fs)
    # Neither the rename nor the unlink reached the disk.
    assert (m / "kept").read_bytes() == b"old"
    assert (m / "removed").read_bytes() == b"gone?"
    assert (m / "kept.tmp").exists() == (mode == "ext4")
    assert report["names_revived"] >= 2
    # The same changes followed by a directory fsync are durable.
    tmp.unlink(missing_ok=True)
    write_file(tmp, b"new", fsync=True)
    os.replace(tmp, m / "kept")
    os.unlink(m / "removed")
    fsync_dir(m)
    reboot(fs)
    assert sorted(os.listdir(m)) == ["kept"] and (m / "kept").read_bytes() == b"new"


@pytest.mark.parametrize("mode", ["ext4", "posix"])
def test_torn_writes_keep_a_prefix_of_the_unsynced_writes(lazy_mount: MakeMount,
                                                          mode: str) -> None:
    fs = lazy_mount(mode)
    files = {f"{n:06d}.log": f"{n:06d}.log".encode() + b":" for n in range(12)}
    unsynced: dict[str, bytes] = {}
    for name, head in files.items():
        durable_file(fs, name, head)
        tail = b"".join(b"<%s-%03d>" % (name.encode(), i) for i in range(40))
        for i in range(0, len(tail), 37):  # many small appends, never fsynced
            write_file(fs.mountpoint / name, tail[i:i + 37], fsync=False)
        unsynced[name] = tail
    report = reboot(fs, seed=11, torn_probability=1.0)
    strictly_torn = 0
    for name, head in files.items():
        after = (fs.mountpoint / name).read_bytes()
        assert after.startswith(head), name
        kept = after[len(head):]
        assert unsynced[name].startswith(kept), f"{name}: {kept!r} is not a prefix"
        assert len(kept) < len(unsynced[name]), f"{name}: a torn write kept everything"
        strictly_torn += len(kept) > 0
    assert strictly_torn >= 3, "a dozen torn files should keep some partial data"
    assert report["wal_files_torn"] == report["files_torn"] == strictly_torn
    assert report["wal_files_unsynced"] == 12
    assert report["wal_bytes_lost"] == sum(map(len, unsynced.values())) - report[
        "bytes_kept_torn"]


def test_leveldb_keeps_every_synced_write_across_cuts(lazy_mount: MakeMount) -> None:
    """LevelDB on lazyfs with a tiny memtable (many log switches): after a cut every
    key up to the last synced put is there; an unsynced tail may be lost."""
    fs = lazy_mount("ext4")
    path = str(fs.mountpoint / "db")
    must_survive: list[int] = []  # each round's keys up to its last synced put
    for round_ in range(3):
        db = plyvel.DB(path, create_if_missing=True, paranoid_checks=True,
                       write_buffer_size=64 << 10)
        first = round_ * 3000
        last_synced = first - 1
        try:
            for i in range(first, first + 3000):
                sync = i % 7 == 0
                db.put(b"k%06d" % i, b"v" * 100, sync=sync)
                if sync:
                    last_synced = i
        finally:
            db.close()
        must_survive.extend(range(first, last_synced + 1))
        reboot(fs, seed=round_, torn_probability=0.5)
        db = plyvel.DB(path, paranoid_checks=True)
        try:
            missing = [i for i in must_survive if db.get(b"k%06d" % i) is None]
        finally:
            db.close()
        assert not missing, f"round {round_}: synced keys lost: {missing[:10]}"
    assert fs.mounts == 4


def test_a_killed_lazyfs_leaves_no_mount_behind(tmp_path: Path, fuse_available: None) -> None:
    fs = LazyMount(tmp_path / "fs")
    with fs:
        assert mounted(fs.mountpoint)
        os.kill(fs.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        fs.proc.wait(timeout=10)  # type: ignore[union-attr]
    assert not mounted(fs.mountpoint)


def test_an_armed_cut_freezes_right_after_the_nth_fsync(lazy_mount: MakeMount) -> None:
    fs = lazy_mount("ext4")
    fs.arm(2)
    path = fs.mountpoint / "f"
    write_file(path, b"one", fsync=True)   # fsync 1
    write_file(path, b"two", fsync=True)   # fsync 2: the power fails as it returns
    assert fs.counters()["frozen"] == 1
    with pytest.raises(OSError):
        write_file(path, b"three", fsync=False)
    reboot(fs)
    assert path.read_bytes() == b"onetwo"


def test_a_cut_armed_at_a_wal_write_tears_that_write(lazy_mount: MakeMount) -> None:
    """Armed at the next write to a *.log file, the power fails as that write returns:
    its fsync fails, and a torn cut keeps a strict, non-empty prefix of it (the record
    LevelDB wrote but never saw synced)."""
    fs = lazy_mount("ext4")
    other = durable_file(fs, "data", b"d")
    wal = durable_file(fs, "000003.log", b"synced:")
    fs.arm_wal_write()
    write_file(other, b"not a log", fsync=True)  # does not count: not a WAL file
    assert fs.counters()["frozen"] == 0
    record = b"r" * 200
    with open(wal, "ab") as f:
        f.write(record)
        f.flush()  # the write itself succeeds...
        with pytest.raises(OSError):
            os.fsync(f.fileno())  # ...and the power fails before its fsync
    assert fs.counters()["frozen"] == 1
    report = reboot(fs, seed=3, torn_probability=1.0)
    kept = wal.read_bytes()[len(b"synced:"):]
    assert 0 < len(kept) < len(record) and record.startswith(kept)
    assert report["wal_files_torn"] == 1
    assert other.read_bytes() == b"dnot a log"
