"""`kvraft serve --leveldb-write-buffer-bytes` (KVRAFT_LEVELDB_WRITE_BUFFER_BYTES) reaches
LevelDB: a small memtable makes LevelDB switch write-ahead log files often, which the
power-loss runs rely on."""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from kvraft.cli import main
from kvraft.server import NodeConfig, ServeError
from kvraft.storage import DataDir


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def captured_config(monkeypatch: pytest.MonkeyPatch) -> list[NodeConfig]:
    import kvraft.server

    configs: list[NodeConfig] = []
    monkeypatch.setattr(kvraft.server, "run_node", lambda config: configs.append(config) or 0)
    for name in list(os.environ):
        if name.startswith("KVRAFT_"):
            monkeypatch.delenv(name)
    return configs


def test_the_flag_and_its_variable_reach_the_node_config(
        captured_config: list[NodeConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["serve", "--listen", _free_address(), "--peer-listen", _free_address()]
    assert main(args) == 0
    assert main([*args, "--leveldb-write-buffer-bytes", "65536"]) == 0
    monkeypatch.setenv("KVRAFT_LEVELDB_WRITE_BUFFER_BYTES", "131072")
    assert main(args) == 0
    assert [c.leveldb_write_buffer_bytes for c in captured_config] == [4 << 20, 65536, 131072]


@pytest.mark.parametrize("value", ["1000", "2000000000", "lots"])
def test_a_write_buffer_outside_what_leveldb_accepts_is_a_usage_error(
        captured_config: list[NodeConfig], value: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--listen", _free_address(), "--peer-listen", _free_address(),
                 "--leveldb-write-buffer-bytes", value])
    assert code == 2 and captured_config == []
    assert "--leveldb-write-buffer-bytes" in capsys.readouterr().err


def test_node_config_validates_the_write_buffer() -> None:
    config = NodeConfig(node_id=1, data_dir="d", listen="127.0.0.1:1", peer_listen="127.0.0.1:2",
                        initial_cluster={1: "127.0.0.1:2"}, leveldb_write_buffer_bytes=1024)
    with pytest.raises(ServeError, match="write buffer"):
        config.validate()


def _log_file_number_after_writes(path: Path, write_buffer_bytes: int | None) -> int:
    with DataDir.open(path, 1, write_buffer_bytes=write_buffer_bytes) as datadir:
        for i in range(8000):  # ~1 MB
            datadir.db.put(b"K%06d" % i, b"v" * 120)
    numbers = [int(m.group(1)) for name in os.listdir(path / "db")
               if (m := re.fullmatch(r"(\d+)\.log", name))]
    return max(numbers)


def test_a_small_write_buffer_switches_leveldb_log_files_often(tmp_path: Path) -> None:
    default = _log_file_number_after_writes(tmp_path / "default", None)
    small = _log_file_number_after_writes(tmp_path / "small", 64 << 10)
    # Each memtable switch starts a new log file (and a table for the old memtable):
    # ~1 MB through a 64 KiB memtable is over a dozen switches, through 4 MiB none.
    assert small >= default + 10, (default, small)
