"""A rolling upgrade from the kvraft before MVCC (data-directory format 1, cluster
version 1) to this one, member by member, under load (issue 12).

The old members are the real old code: the tree of OLD_COMMIT, taken from this
repository's history with `git archive` and run with its protos compiled here. While
any member runs it, the cluster stays at version 1 (every member applies the same
unversioned layout); once the last member runs this kvraft, the leader raises the
version and every member migrates its data at that one entry. The test then stops the
cluster and reads every member's directory: the same keys, the same revisions, every
acknowledged write present.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvraft.proto import kvraft_pb2 as pb
from kvraft.proto import kvraft_pb2_grpc as pb_grpc
from kvraft.storage import mvcc
from kvraft.storage.store import open_store

from .harness import LocalCluster, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# The last commit of main before data-directory format 2 and cluster versions.
OLD_COMMIT = "77a3393"
UPGRADE_TIMEOUT_S = 60.0
# -P: the working directory (this repository) does not come first on sys.path, so
# PYTHONPATH alone says which kvraft runs.
SERVE_FROM_PYTHONPATH = [sys.executable, "-P", "-m", "kvraft", "serve"]


@pytest.fixture(scope="module")
def old_kvraft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old kvraft's source tree, protos compiled, ready for PYTHONPATH."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.fail(f"commit {OLD_COMMIT} is not in this clone's history: the upgrade "
                    "test needs the old kvraft (clone without --depth)")
    root = tmp_path_factory.mktemp("old-kvraft")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "kvraft", "protos"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    subprocess.run([sys.executable, "protos/compile.py"], cwd=root, check=True,
                   capture_output=True)
    return root


class Load:
    """Puts of distinct keys through any member that answers, recording each one
    acknowledged (the upgrade must lose none)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.acked: dict[bytes, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        # The thread's own channels: the test thread closes the harness's channels when
        # it stops a member, and no other thread should be using them then.
        channels: dict[int, grpc.Channel] = {}
        try:
            self._put_until_stopped(channels)
        finally:
            for channel in channels.values():
                channel.close()

    def _put_until_stopped(self, channels: dict[int, grpc.Channel]) -> None:
        n = 0
        while not self._stop.is_set():
            key, value = b"load/%06d" % n, b"v%d" % n
            for node_id in self.cluster.running_ids():
                if node_id not in channels:
                    channels[node_id] = grpc.insecure_channel(
                        self.cluster.nodes[node_id].client_address)
                try:
                    pb_grpc.KVStub(channels[node_id]).Put(
                        pb.PutRequest(key=key, value=value), timeout=2.0)
                except grpc.RpcError:
                    continue
                self.acked[key] = value
                n += 1
                break
            else:
                time.sleep(0.05)


def cluster_version_of(cluster: LocalCluster, node_id: int) -> int:
    for line in cluster.metrics_text(node_id).splitlines():
        if line.startswith("kvraft_cluster_version "):
            return int(float(line.split()[1]))
    return 0   # the old kvraft has no such metric


def state_of(data_dir: Path, node_id: int) -> tuple[int, int, list[mvcc.KeyValue]]:
    store = open_store(data_dir, node_id, create=False)
    try:
        sm = store.sm
        kvs = list(sm.range(mvcc.RangeRequest(b"\0", b"\0")).kvs)
        return sm.cluster_version, sm.revision, kvs
    finally:
        store.close()


@pytest.fixture
def old_cluster(old_kvraft: Path) -> Iterator[LocalCluster]:
    with LocalCluster.start(3, env={"PYTHONPATH": str(old_kvraft)},
                            command=SERVE_FROM_PYTHONPATH) as cluster:
        yield cluster


def test_a_rolling_upgrade_under_load_migrates_every_member_at_one_entry(
        old_cluster: LocalCluster) -> None:
    cluster = old_cluster
    leader = cluster.wait_leader()
    for i in range(200):
        cluster.put(leader, b"before/%04d" % i, b"old-%d" % i)
    assert all(cluster_version_of(cluster, n) == 0 for n in cluster.nodes)  # old code
    new_env = {"PYTHONPATH": str(REPO)}
    with Load(cluster) as load:
        for node_id in sorted(cluster.nodes):
            cluster.terminate(node_id)
            cluster.env = new_env          # the next launches run this kvraft
            cluster.restart(node_id)
            cluster.wait_leader()
            if node_id != max(cluster.nodes):
                # A mixed cluster stays at version 1.
                time.sleep(1.0)
                assert cluster_version_of(cluster, node_id) == 1
        wait_until(lambda: all(cluster_version_of(cluster, n) == 2 for n in cluster.nodes),
                   UPGRADE_TIMEOUT_S, "every member at cluster version 2")
        acked_before_stop = len(load.acked)
        wait_until(lambda: len(load.acked) > acked_before_stop + 20, UPGRADE_TIMEOUT_S,
                   "writes after the upgrade")
    leader = cluster.wait_leader()
    last = cluster.status(leader).header.applied_index
    for node_id in cluster.nodes:
        cluster.wait_applied(node_id, last)
    for node_id in sorted(cluster.nodes):
        cluster.terminate(node_id)
    states = {n: state_of(cluster.nodes[n].data_dir, n) for n in sorted(cluster.nodes)}
    versions = {n: (v, rev) for n, (v, rev, _) in states.items()}
    assert len(set(versions.values())) == 1, f"members disagree: {versions}"
    (version, revision, kvs), *others = states.values()
    assert version == 2 and revision > 2
    for _, _, other_kvs in others:
        assert other_kvs == kvs, "members hold different keys or revisions"
    by_key = {kv.key: kv for kv in kvs}
    for i in range(200):
        kv = by_key[b"before/%04d" % i]
        # Written before the upgrade: migrated at the first revision, as one entry.
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
            b"old-%d" % i, 2, 2, 1)
    missing = [k for k, v in load.acked.items() if k not in by_key or by_key[k].value != v]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
    assert any(kv.mod_revision > 2 for kv in kvs), "no write after the upgrade"


def test_old_kvraft_refuses_a_directory_this_kvraft_opened(old_kvraft: Path,
                                                           tmp_path: Path) -> None:
    """Format 2 is one-way: once this kvraft opened a directory, the old one refuses it
    with one line instead of misapplying a log it cannot read."""
    data = tmp_path / "data"
    store = open_store(data, 1, create=True)
    store.close()
    env = {**os.environ, "PYTHONPATH": str(old_kvraft)}
    peer = free_port()
    env.pop("KVRAFT_DATA_DIR", None)
    out = subprocess.run(
        [*SERVE_FROM_PYTHONPATH, "--id", "1", "--data-dir", str(data),
         "--listen", f"127.0.0.1:{free_port()}", "--peer-listen", f"127.0.0.1:{peer}",
         "--initial-cluster", f"1=127.0.0.1:{peer}"],
        capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0
    assert "unknown format version 2" in out.stderr and "Traceback" not in out.stderr
    shutil.rmtree(data)
