"""Reports read only a node's current start (the victim's previous one ends in the EIO
of its frozen mount, which says nothing about why the restarted cluster failed)."""
from __future__ import annotations

from pathlib import Path

from .nodelog import address_taken, current_start, last_error

FIRST_START = """=== start #1: kvraft serve --id 1
plyvel._plyvel.IOError: b'IO error: data/db/000005.log: Input/output error'
"""


def test_only_the_current_start_is_read(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    log.write_text(FIRST_START + "=== start #2: kvraft serve --id 1\nINFO serving\n")
    assert current_start(log) == ["INFO serving"]
    assert last_error(log) == "it logged no error"
    assert address_taken(log) is None


def test_the_last_error_and_a_taken_address_are_found(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    taken = "error: cannot listen on --peer-listen 127.0.0.1:4000: address already in use"
    log.write_text(FIRST_START + f"=== start #2: kvraft serve --id 1\n{taken}\n")
    assert last_error(log) == f"it said: {taken}"
    assert address_taken(log) == taken
    assert last_error(tmp_path / "missing.log") == "it logged no error"
