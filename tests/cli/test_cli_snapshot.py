"""`kvraft snapshot status|restore|save` refusals, through the real console script: a
damaged file, a wrong checksum, a non-empty directory, a bad flag, an unreachable
member — each one line on stderr (`error: ...`), its exit code, no traceback, and
nothing left behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvraft.cli_ops import human_bytes
from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.raft import eraftpb
from kvraft.storage import DataDir, KVStateMachine, put_command
from kvraft.storage.commands import cluster_version_command, etcd_command
from kvraft.storage.snapshot_file import SHA256_BYTES
from tests.storage.test_restore import write_snapshot_file

from .helpers import assert_one_error_line, run_kvraft

INITIAL = "4=127.0.0.1:8004,5=127.0.0.1:8005"


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    """A snapshot file of a store with three keys at revision 4."""
    with DataDir.open(tmp_path / "src", 1) as datadir:
        sm = KVStateMachine(datadir)
        commands = [cluster_version_command(2), put_command(b"a", b"1"),
                    etcd_command(1, "etcd_put", etcdpb.PutRequest(key=b"b", value=b"2")),
                    etcd_command(2, "etcd_put", etcdpb.PutRequest(key=b"c", value=b"3"))]
        sm.apply([eraftpb.Entry(index=i, term=1, data=c)
                  for i, c in enumerate(commands, start=1)])
        path = tmp_path / "backup.db"
        write_snapshot_file(sm, path)
    return path


def test_status_prints_the_files_hash_revision_keys_and_size(backup: Path) -> None:
    result = run_kvraft("snapshot", "status", str(backup), "-w", "json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["revision"], status["totalKey"]) == (4, 3)
    assert status["totalSize"] == backup.stat().st_size and status["hash"] > 0
    simple = run_kvraft("snapshot", "status", str(backup), "-w", "simple").stdout.decode()
    assert status["totalSize"] < 1000
    assert simple == f"{status['hash']:08x}, 4, 3, {status['totalSize']} B\n"


@pytest.mark.parametrize("size, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"),
                                        (20_480, "20 kB"), (2_101_248, "2.1 MB"),
                                        (3 << 30, "3.2 GB")])
def test_sizes_print_as_etcdctl_prints_them(size: int, text: str) -> None:
    """etcdctl's snapshot status prints sizes with go-humanize's SI units."""
    assert human_bytes(size) == text


@pytest.mark.parametrize("command", ["status", "restore"])
@pytest.mark.parametrize("damage, reason", [
    ("flip", "is not an intact kvraft snapshot"),
    ("checksum", "fails its SHA-256 checksum"),
    ("truncate", "fails its SHA-256 checksum"),
    ("missing", "cannot be read: No such file or directory"),
])
def test_a_damaged_file_is_refused_with_one_line(backup: Path, tmp_path: Path, command: str,
                                                 damage: str, reason: str) -> None:
    data = bytearray(backup.read_bytes())
    if damage == "flip":
        data[len(data) // 2 - SHA256_BYTES] ^= 0x10
    elif damage == "checksum":
        data[-3] ^= 0xFF
    elif damage == "truncate":
        del data[-1:]
    bad = tmp_path / "bad.db"
    if damage != "missing":
        bad.write_bytes(bytes(data))
    args = ["snapshot", command, str(bad)]
    target = tmp_path / "restored"
    if command == "restore":
        args += ["--data-dir", str(target), "--id", "4", "--initial-cluster", INITIAL]
    line = assert_one_error_line(run_kvraft(*args), exit_code=1)
    assert line.startswith(f"error: snapshot file {bad}: ") and reason in line, line
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if ".restore-" in p.name] == []


def test_restore_refuses_a_non_empty_directory(backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "in-use"
    target.mkdir()
    (target / "META").write_text("someone's")
    line = assert_one_error_line(run_kvraft(
        "snapshot", "restore", str(backup), "--data-dir", str(target), "--id", "4",
        "--initial-cluster", INITIAL), exit_code=1)
    assert line == (f"error: data directory {target} is not empty: restore makes a new "
                    "member's directory (remove it or choose another)")
    assert (target / "META").read_text() == "someone's"


def test_restore_refuses_bad_flags_as_usage_errors(backup: Path, tmp_path: Path) -> None:
    target = str(tmp_path / "d")
    line = assert_one_error_line(run_kvraft(
        "snapshot", "restore", str(backup), "--data-dir", target, "--id", "4",
        "--initial-cluster", "4:127.0.0.1:1"), exit_code=2)
    assert "--initial-cluster" in line and "expected ID=HOST:PORT" in line
    line = assert_one_error_line(run_kvraft(
        "snapshot", "restore", str(backup), "--data-dir", target, "--id", "four",
        "--initial-cluster", INITIAL), exit_code=2)
    assert "--id" in line
    line = assert_one_error_line(run_kvraft(
        "snapshot", "restore", str(backup), "--data-dir", target, "--id", "6",
        "--initial-cluster", INITIAL), exit_code=1)
    assert line == "error: member 6 is not in the initial cluster (4, 5)"
    assert not Path(target).exists()


def test_restore_prints_the_new_member_and_cluster(backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "d"
    result = run_kvraft("snapshot", "restore", str(backup), "--data-dir", str(target),
                        "--id", "5", "--initial-cluster", INITIAL)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith(f"restored {backup} (revision 4, 3 keys) into {target}: "
                          "member 5 of new cluster ") and out.endswith("(members 4, 5)\n")
    assert (target / "META").is_file() and (target / "db" / "CURRENT").is_file()


def test_save_from_an_unreachable_member_fails_with_one_line_and_no_file(
        tmp_path: Path) -> None:
    path = tmp_path / "never.db"
    line = assert_one_error_line(run_kvraft(
        "snapshot", "save", str(path), "--endpoints", "127.0.0.1:1", "--timeout", "1"),
        exit_code=3)
    assert line.startswith("error: 127.0.0.1:1: unavailable")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def big_backup(tmp_path: Path) -> Path:
    """A snapshot file big enough (about 8 MB) that restoring it takes a while."""
    with DataDir.open(tmp_path / "big-src", 1) as datadir:
        sm = KVStateMachine(datadir)
        sm.apply([eraftpb.Entry(index=1, term=1, data=cluster_version_command(2))])
        index = 1
        for start in range(0, BIG_KEYS, 1000):
            entries = []
            for k in range(start, start + 1000):
                index += 1
                entries.append(eraftpb.Entry(index=index, term=1, data=put_command(
                    b"big/%06d" % k, b"%06d" % k * (BIG_VALUE_BYTES // 6))))
            sm.apply(entries)
        path = tmp_path / "big.db"
        write_snapshot_file(sm, path)
    return path


BIG_KEYS, BIG_VALUE_BYTES = 5_000, 1_500


@pytest.mark.slow
def test_a_restore_killed_at_any_moment_leaves_no_directory_or_a_whole_one(
        big_backup: Path, tmp_path: Path) -> None:
    """SIGKILL `kvraft snapshot restore` at moments spread over the building of the
    directory: DIR is then absent (the half-built copy sits beside it, and the next
    restore removes it) or a whole member directory — never a half-restored one that
    `kvraft serve` would take as new."""
    import signal
    import subprocess
    import time

    from kvraft.storage import LevelDBStorage

    from .helpers import KVRAFT, clean_env

    outcomes = []
    for attempt, after_s in enumerate([0.0, 0.03, 0.1, 0.2, 0.4, 0.8]):
        target = tmp_path / f"d{attempt}"

        def building(attempt: int = attempt) -> list[Path]:
            return [p for p in tmp_path.iterdir() if p.name.startswith(f".d{attempt}.")]

        proc = subprocess.Popen(
            [str(KVRAFT), "snapshot", "restore", str(big_backup), "--data-dir", str(target),
             "--id", "4", "--initial-cluster", INITIAL], env=clean_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not building() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(after_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if target.exists():
            outcomes.append("whole")
            assert not building()
        else:
            outcomes.append("mid-build" if building() else "before")
            # The next restore makes it, and clears what the killed one left.
            assert run_kvraft("snapshot", "restore", str(big_backup), "--data-dir",
                              str(target), "--id", "4", "--initial-cluster",
                              INITIAL).returncode == 0
            assert not building()
        with DataDir.open(target, 4, create=False) as datadir:
            sm = KVStateMachine(datadir)
            assert not datadir.is_new and datadir.cluster_id != 0
            assert sm.revision == BIG_KEYS + 1 and sm.applied_index == 2
            assert sm.get(b"big/%06d" % (BIG_KEYS - 1)).startswith(b"%06d" % (BIG_KEYS - 1))
            assert LevelDBStorage(datadir).first_index() == 3
            sm.close()
    assert "mid-build" in outcomes, outcomes   # kills landed while it was being built
