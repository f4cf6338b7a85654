"""The data directory refuses what it cannot safely use, with ONE line naming the
directory and the reason — never a silent reset (issue: durable storage)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvraft.raft import eraftpb
from kvraft.storage import DataDir, DataDirError, LevelDBStorage, keys


def refusal(path: Path, node_id: int = 1, **kw: object) -> str:
    with pytest.raises(DataDirError) as info:
        DataDir.open(path, node_id, **kw)
    message = str(info.value)
    assert "\n" not in message
    assert str(path.absolute()) in message
    return message


def make_dir(path: Path, node_id: int = 1) -> None:
    with DataDir.open(path, node_id) as dd:
        LevelDBStorage(dd).initialize(eraftpb.ConfState(voters=[node_id]))


def test_fresh_directory_is_created_new_and_reopens_with_state(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    with DataDir.open(path, 7) as dd:
        assert dd.is_new and dd.node_id == 7 and dd.cluster_id == 0
        LevelDBStorage(dd).initialize(eraftpb.ConfState(voters=[7]))
        dd.set_cluster_id(0xABC)
    with DataDir.open(path, 7) as dd:
        assert not dd.is_new
        assert dd.cluster_id == 0xABC
        assert list(LevelDBStorage(dd).initial_state().conf_state.voters) == [7]


def test_another_nodes_directory(tmp_path: Path) -> None:
    make_dir(tmp_path / "d", node_id=1)
    assert "belongs to node 1, not node 2" in refusal(tmp_path / "d", node_id=2)


def test_another_clusters_directory(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "d", 1) as dd:
        dd.set_cluster_id(0x111)
    with DataDir.open(tmp_path / "d", 1) as dd:
        with pytest.raises(DataDirError) as info:
            dd.set_cluster_id(0x222)
        assert "belongs to cluster 111, not cluster 222" in str(info.value)
        assert dd.cluster_id == 0x111


def test_unknown_format_version(tmp_path: Path) -> None:
    make_dir(tmp_path / "d")
    meta_path = tmp_path / "d" / "META"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 99
    meta_path.write_text(json.dumps(meta))
    assert "unknown format version 99" in refusal(tmp_path / "d")


def test_unreadable_meta(tmp_path: Path) -> None:
    make_dir(tmp_path / "d")
    (tmp_path / "d" / "META").write_bytes(b"\x00garbage{")
    assert "is damaged: META is unreadable" in refusal(tmp_path / "d")


def test_meta_failing_its_checksum(tmp_path: Path) -> None:
    make_dir(tmp_path / "d", node_id=1)
    meta_path = tmp_path / "d" / "META"
    meta = json.loads(meta_path.read_text())
    meta["node_id"] = 2  # edited by hand, crc not updated
    meta_path.write_text(json.dumps(meta))
    assert "META fails its checksum" in refusal(tmp_path / "d", node_id=2)


def test_database_without_meta(tmp_path: Path) -> None:
    make_dir(tmp_path / "d")
    (tmp_path / "d" / "META").unlink()
    assert "a database is present but META is missing" in refusal(tmp_path / "d")


def remove_database(path: Path) -> None:
    for f in sorted((path / "db").iterdir()):
        f.unlink()
    (path / "db").rmdir()


def test_meta_without_database(tmp_path: Path) -> None:
    """A directory of a cluster (its id recorded) whose database is gone is damaged."""
    with DataDir.open(tmp_path / "d", 1) as dd:
        LevelDBStorage(dd).initialize(eraftpb.ConfState(voters=[1]))
        dd.set_cluster_id(0xABC)
    remove_database(tmp_path / "d")
    assert "the database db/ is missing" in refusal(tmp_path / "d")


def test_a_directory_cut_short_before_its_database_is_finished(tmp_path: Path) -> None:
    """A power cut after META but before the database was in place (no cluster id yet,
    so nothing was ever stored): the next open finishes making it, whatever a staged
    db.new/ holds, instead of refusing the member for good."""
    with DataDir.open(tmp_path / "d", 1):
        pass
    remove_database(tmp_path / "d")
    (tmp_path / "d" / "db.new").mkdir()
    (tmp_path / "d" / "db.new" / "MANIFEST-000001").write_bytes(b"")  # never fsync'd
    with DataDir.open(tmp_path / "d", 1) as dd:
        assert dd.is_new and dd.cluster_id == 0
        LevelDBStorage(dd).initialize(eraftpb.ConfState(voters=[1]))
    assert not (tmp_path / "d" / "db.new").exists()
    with DataDir.open(tmp_path / "d", 1) as dd:
        assert not dd.is_new


def test_leveldb_corruption(tmp_path: Path) -> None:
    make_dir(tmp_path / "d")
    (tmp_path / "d" / "db" / "CURRENT").write_bytes(b"MANIFEST-999999")  # no newline
    assert "is damaged: LevelDB reports corruption" in refusal(tmp_path / "d")


def test_torn_raft_log_is_reported(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "d", 1) as dd:
        store = LevelDBStorage(dd)
        store.persist([eraftpb.Entry(index=i, term=1) for i in range(1, 6)], None)
        dd.db.delete(keys.log_key(3), sync=True)
    with DataDir.open(tmp_path / "d", 1) as dd, pytest.raises(DataDirError) as info:
        LevelDBStorage(dd)
    assert "the Raft log has a gap: entry 3 is missing" in str(info.value)


def test_unreadable_hard_state_is_reported(tmp_path: Path) -> None:
    with DataDir.open(tmp_path / "d", 1) as dd:
        dd.db.put(keys.HARD_STATE, b"\xff\xff\xff", sync=True)
    with DataDir.open(tmp_path / "d", 1) as dd, pytest.raises(DataDirError) as info:
        LevelDBStorage(dd)
    assert "hard state record is unreadable" in str(info.value)


def test_missing_directory_without_create(tmp_path: Path) -> None:
    assert "does not exist" in refusal(tmp_path / "nope", create=False)


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert "exists but is not a directory" in refusal(tmp_path / "f")


def test_directory_locked_in_this_process(datadir: DataDir) -> None:
    message = refusal(datadir.path)
    assert "is locked by another running process" in message


def test_directory_locked_by_another_process(tmp_path: Path) -> None:
    """The lock holder is a real process; its pid is named; the lock frees on exit."""
    path = tmp_path / "d"
    make_dir(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from kvraft.storage import DataDir
            dd = DataDir.open({str(path)!r}, 1)
            print("locked", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert f"locked by another running process (pid {holder.pid})" in refusal(path)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with DataDir.open(path, 1) as dd:  # the kernel released the flock with the process
        assert not dd.is_new


def test_closing_releases_the_lock(tmp_path: Path) -> None:
    dd = DataDir.open(tmp_path / "d", 1)
    dd.close()
    dd.close()  # idempotent
    with DataDir.open(tmp_path / "d", 1) as again:
        assert again.is_new


def test_every_directory_has_a_stable_incarnation(tmp_path: Path) -> None:
    """Issue 11, item 7: a random incarnation in META names this copy of the state."""
    with DataDir.open(tmp_path / "a", 1) as a, DataDir.open(tmp_path / "b", 1) as b:
        assert a.incarnation > 0 and b.incarnation > 0 and a.incarnation != b.incarnation
        first = a.incarnation
        a.set_cluster_id(0x77)
    with DataDir.open(tmp_path / "a", 1) as a:
        assert (a.incarnation, a.cluster_id) == (first, 0x77)


def test_a_meta_without_incarnation_gets_one_that_older_readers_still_accept(
        tmp_path: Path) -> None:
    """The incarnation was an addition to format version 1: a directory written before
    it gets one at open (written atomically, with its own crc), and the original crc
    still covers the original fields. Opening it also raises it to format version 2."""
    from kvraft.storage.datadir import FORMAT_NAME, FORMAT_VERSION, _meta_crc

    make_dir(tmp_path / "d")
    meta_path = tmp_path / "d" / "META"
    meta = json.loads(meta_path.read_text())
    old = {k: v for k, v in meta.items() if not k.startswith("incarnation")}
    old.update(version=1, crc32=_meta_crc(1, 0, 1))
    meta_path.write_text(json.dumps(old) + "\n")  # as an older kvraft wrote it
    with DataDir.open(tmp_path / "d", 1) as dd:
        incarnation = dd.incarnation
        assert incarnation > 0
    meta = json.loads(meta_path.read_text())
    assert meta["incarnation"] == incarnation and meta["version"] == FORMAT_VERSION == 2
    assert meta["crc32"] == _meta_crc(1, 0, FORMAT_VERSION) and meta["format"] == FORMAT_NAME
    with DataDir.open(tmp_path / "d", 1) as dd:
        assert dd.incarnation == incarnation
    meta["incarnation"] += 1  # damaged: its own crc no longer matches
    meta_path.write_text(json.dumps(meta) + "\n")
    assert "incarnation fails its checksum" in refusal(tmp_path / "d")


def test_a_format_version_1_directory_is_raised_to_2_at_open(tmp_path: Path) -> None:
    """An older kvraft's directory (format 1, with an incarnation) opens and is marked
    version 2, with its identity unchanged; an older kvraft then refuses it."""
    from kvraft.storage.datadir import _incarnation_crc, _meta_crc

    make_dir(tmp_path / "d")
    meta_path = tmp_path / "d" / "META"
    meta = json.loads(meta_path.read_text())
    meta.update(version=1, crc32=_meta_crc(1, 0, 1),
                incarnation_crc32=_incarnation_crc(1, 0, 1, meta["incarnation"]))
    meta_path.write_text(json.dumps(meta) + "\n")
    with DataDir.open(tmp_path / "d", 1) as dd:
        assert dd.incarnation == meta["incarnation"]
    raised = json.loads(meta_path.read_text())
    assert raised["version"] == 2 and raised["incarnation"] == meta["incarnation"]
    assert raised["crc32"] == _meta_crc(1, 0, 2)
