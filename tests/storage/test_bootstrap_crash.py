"""A founding member killed at any step of its bootstrap comes back bootstrapped: the
cluster id and the initial Raft state are never left half written (issue 11, item 3).

Before the fix the Raft log was written before the cluster id: a kill between the two
left Raft state with cluster id 0, the restart skipped bootstrap, and every peer was
refused forever."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvraft.server import storage_adapter
from kvraft.server.config import cluster_id_for
from kvraft.storage import keys
from tests.storage.crash_child import BOOTSTRAP_CLUSTER, bootstrap_config

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60.0
KILL_POINTS = ["before:set_cluster_id", "after:set_cluster_id", "before:persist",
               "after:persist"]


def assert_bootstrapped(path: Path) -> None:
    store = storage_adapter.open_store(bootstrap_config(str(path)))
    try:
        assert store.datadir.cluster_id == cluster_id_for(BOOTSTRAP_CLUSTER), (
            "the restarted member has no cluster id: its peers would refuse it forever")
        # One AddNode per founder, then the cluster version.
        bootstrap = len(BOOTSTRAP_CLUSTER) + 1
        assert (store.log.first_index(), store.log.last_index()) == (1, bootstrap)
        assert store.log.hard_state().commit == bootstrap
        entries = store.log.entries(1, bootstrap + 1)
        assert [(e.index, e.term, e.data) for e in entries] == [
            (e.index, e.term, e.data)
            for e in storage_adapter.bootstrap_entries(BOOTSTRAP_CLUSTER)]
    finally:
        store.close()


@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_a_member_killed_during_bootstrap_bootstraps_on_restart(
        tmp_path: Path, kill_point: str) -> None:
    path = tmp_path / "node1"
    child = subprocess.run(
        [sys.executable, "-m", "tests.storage.crash_child", "bootstrap", str(path),
         kill_point], cwd=REPO, capture_output=True, timeout=CHILD_TIMEOUT_S)
    assert child.returncode == -signal.SIGKILL, (
        f"the child was not killed at {kill_point}: rc {child.returncode}, "
        f"{child.stdout.decode()[-500:]} {child.stderr.decode()[-2000:]}")
    assert_bootstrapped(path)
    assert_bootstrapped(path)  # and stays so


def test_a_directory_left_half_bootstrapped_by_an_older_kvraft_is_finished(
        tmp_path: Path) -> None:
    """Raft log written, cluster id never recorded (what the old order left behind)."""
    from kvraft.raft import eraftpb
    from kvraft.storage import DataDir, LevelDBStorage

    path = tmp_path / "node1"
    entries = storage_adapter.bootstrap_entries(BOOTSTRAP_CLUSTER)
    with DataDir.open(path, 1) as dd:
        LevelDBStorage(dd).persist(entries, eraftpb.HardState(
            term=storage_adapter.BOOTSTRAP_TERM, commit=len(entries)))
        assert dd.db.get(keys.HARD_STATE) is not None and dd.cluster_id == 0
    assert_bootstrapped(path)
