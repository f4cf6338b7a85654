"""The lazyfs model without FUSE: reads see the volatile layer exactly, fsync makes it
durable, a reboot finds the durable layer, and the store forgets what nothing names."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from .model import ROOT_ID, LazyStore, Mode


def reference_apply(content: bytearray, op: tuple) -> None:
    if op[0] == "write":
        _, offset, data = op
        if offset > len(content):
            content.extend(bytes(offset - len(content)))
        content[offset:offset + len(data)] = data
    else:
        del content[op[1]:]
        if op[1] > len(content):
            content.extend(bytes(op[1] - len(content)))


@pytest.mark.parametrize("seed", range(8))
def test_reads_and_fsyncs_match_a_plain_byte_array(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = LazyStore(tmp_path, Mode.EXT4)
    node = store.create(ROOT_ID, b"f", 0o644)
    content = bytearray()
    for _ in range(300):
        roll = rng.random()
        if roll < 0.7:
            op = ("write", rng.randrange(0, 3000), rng.randbytes(rng.randrange(1, 300)))
            store.write(node.id, op[1], op[2])
        elif roll < 0.85:
            op = ("truncate", rng.randrange(0, 3000))
            store.truncate(node.id, op[1])
        else:
            store.fsync(node.id)
            assert (tmp_path / "objects" / str(node.id)).read_bytes() == content
            continue
        reference_apply(content, op)
        assert node.size == len(content)
        offset = rng.randrange(0, 3200)
        size = rng.randrange(0, 1000)
        assert store.read(node.id, offset, size) == bytes(content[offset:offset + size])


def test_a_reboot_finds_exactly_the_durable_layer(tmp_path: Path) -> None:
    store = LazyStore(tmp_path, Mode.POSIX)
    d = store.mkdir(ROOT_ID, b"d", 0o755)
    f = store.create(d.id, b"f", 0o644)
    store.write(f.id, 0, b"synced")
    store.fsync(f.id)
    store.fsyncdir(d.id)     # f's name inside d is durable ...
    store.write(f.id, 6, b"+lost")
    store.create(ROOT_ID, b"lost", 0o644)
    store.cut(random.Random(0), 0.0)
    rebooted = LazyStore(tmp_path, Mode.POSIX)
    assert rebooted.listdir(ROOT_ID) == []  # ... but d's own name never was
    store = LazyStore(tmp_path, Mode.POSIX)
    d = store.mkdir(ROOT_ID, b"d", 0o755)
    f = store.create(d.id, b"f", 0o644)
    store.write(f.id, 0, b"synced")
    store.fsync(f.id)
    store.fsyncdir(d.id)
    store.fsyncdir(ROOT_ID)
    store.write(f.id, 6, b"+lost")
    store.cut(random.Random(0), 0.0)
    rebooted = LazyStore(tmp_path, Mode.POSIX)
    (name, d2), = rebooted.listdir(ROOT_ID)
    (fname, f2), = rebooted.listdir(d2.id)
    assert (name, fname) == (b"d", b"f")
    assert rebooted.read(f2.id, 0, 100) == b"synced"


def test_ext4_fsync_makes_the_names_up_to_the_root_durable(tmp_path: Path) -> None:
    store = LazyStore(tmp_path, Mode.EXT4)
    a = store.mkdir(ROOT_ID, b"a", 0o755)
    b = store.mkdir(a.id, b"b", 0o755)
    f = store.create(b.id, b"f", 0o644)
    store.write(f.id, 0, b"x")
    store.fsync(f.id)
    store.create(b.id, b"other", 0o644)  # not fsynced: not durable
    store.cut(random.Random(0), 0.0)
    rebooted = LazyStore(tmp_path, Mode.EXT4)
    a2 = rebooted.lookup(ROOT_ID, b"a")
    b2 = rebooted.lookup(a2.id, b"b")
    assert [n for n, _ in rebooted.listdir(b2.id)] == [b"f"]


def test_objects_of_files_nothing_names_are_removed(tmp_path: Path) -> None:
    store = LazyStore(tmp_path, Mode.POSIX)
    f = store.create(ROOT_ID, b"f", 0o644)
    store.write(f.id, 0, b"x" * 100)
    store.fsync(f.id)
    store.fsyncdir(ROOT_ID)
    objects = tmp_path / "objects"
    assert [p.name for p in objects.iterdir()] == [str(f.id)]
    store.unlink(ROOT_ID, b"f")
    assert [p.name for p in objects.iterdir()] == [str(f.id)]  # still durably named
    store.fsyncdir(ROOT_ID)
    assert list(objects.iterdir()) == []
    assert f.id not in store.nodes


def test_a_rename_moves_the_durable_name(tmp_path: Path) -> None:
    store = LazyStore(tmp_path, Mode.EXT4)
    f = store.create(ROOT_ID, b"tmp", 0o644)
    store.write(f.id, 0, b"new")
    store.fsync(f.id)                       # durable as "tmp"
    store.rename(ROOT_ID, b"tmp", ROOT_ID, b"CURRENT")
    store.fsync(f.id)                       # ext4: now durable as "CURRENT" only
    store.cut(random.Random(0), 0.0)
    rebooted = LazyStore(tmp_path, Mode.EXT4)
    assert [n for n, _ in rebooted.listdir(ROOT_ID)] == [b"CURRENT"]
