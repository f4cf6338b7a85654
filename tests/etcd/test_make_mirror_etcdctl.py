"""Moving in from etcd (issue 13): `etcdctl make-mirror` copies a real etcd cluster
(Debian's etcd-server, one member on loopback) into a 3-node kvraft cluster, then keeps
copying while the source changes. etcdctl reads the source's keys at one revision (paged
Gets), Puts each into kvraft, then watches the source from that revision and replays
each revision's events on kvraft as one Txn (puts and deletes together). Keys outside
--prefix stay behind."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench.etcd import EtcdClusterOverKvraftStubs, ensure_installed
from tests.cluster.harness import LocalCluster, wait_until
from tests.etcd.background import etcdctl_background
from tests.etcd.conftest import etcdctl, ok

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("etcdctl") is None,
                       reason="etcdctl is not installed (Debian's etcd-client, .ci/run)"),
]

PREFIX = "/judges/"
BASE_KEYS = 60
MIRROR_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real one-member etcd cluster; its client endpoint."""
    try:
        ensure_installed()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"Debian's etcd-server could not be installed: {e}")
    etcd = EtcdClusterOverKvraftStubs(1, tmp_path_factory.mktemp("etcd"))
    try:
        etcd.start()
        yield etcd.endpoints[0]
    finally:
        etcd.stop()


def prefix_contents(endpoints: str, prefix: str = PREFIX) -> dict[str, str]:
    """key -> value of every key under `prefix` (etcdctl's simple output: key, value)."""
    lines = ok(etcdctl(endpoints, "get", "--prefix", prefix)).splitlines()
    assert len(lines) % 2 == 0, lines
    return dict(zip(lines[0::2], lines[1::2], strict=True))


def txn_puts(endpoints: str, pairs: dict[str, str]) -> None:
    """All the puts in one etcd transaction: one revision, many events."""
    request = "\n" + "".join(f"put {k} {v}\n" for k, v in pairs.items()) + "\n\n"
    assert ok(etcdctl(endpoints, "txn", stdin=request)).startswith("SUCCESS")


def test_make_mirror_copies_etcd_into_kvraft_and_follows_its_changes(
        source: str, etcd_cluster3: LocalCluster, tmp_path: Path) -> None:
    kvraft = etcd_cluster3.endpoints()
    # make-mirror takes one destination endpoint (etcdctl does not split it on commas):
    # a follower, which hands the writes to the leader.
    leader = etcd_cluster3.wait_leader()
    follower = min(i for i in etcd_cluster3.running_ids() if i != leader)
    destination = etcd_cluster3.nodes[follower].client_address
    # The base: many keys in one revision, a few overwritten, one outside the prefix.
    txn_puts(source, {f"{PREFIX}base/{i:03d}": f"v{i}" for i in range(BASE_KEYS)})
    for i in range(0, BASE_KEYS, 7):
        ok(etcdctl(source, "put", f"{PREFIX}base/{i:03d}", f"again{i}"))
    ok(etcdctl(source, "put", "/outside/prefix", "stays in etcd"))
    base = prefix_contents(source)
    assert len(base) == BASE_KEYS

    with etcdctl_background(source, "make-mirror", "--prefix", PREFIX, destination,
                            output=tmp_path / "make-mirror.out") as mirror:
        wait_until(lambda: prefix_contents(kvraft) == base, MIRROR_TIMEOUT_S,
                   "kvraft to hold etcd's base keys", mirror.text)
        # Now the source changes under the running mirror: new keys, overwrites, a
        # delete, a range delete, and a transaction mixing puts with a delete.
        for i in range(10):
            ok(etcdctl(source, "put", f"{PREFIX}live/{i}", f"live{i}"))
        ok(etcdctl(source, "put", f"{PREFIX}base/001", "changed"))
        ok(etcdctl(source, "del", f"{PREFIX}base/002"))
        ok(etcdctl(source, "del", "--prefix", f"{PREFIX}base/01"))
        request = (f"\nput {PREFIX}txn/a 1\nput {PREFIX}txn/b 2\n"
                   f"del {PREFIX}live/3\n\n\n")
        assert ok(etcdctl(source, "txn", stdin=request)).startswith("SUCCESS")
        ok(etcdctl(source, "put", "/outside/later", "also stays"))
        expected = prefix_contents(source)
        assert f"{PREFIX}base/002" not in expected and f"{PREFIX}live/3" not in expected
        wait_until(lambda: prefix_contents(kvraft) == expected, MIRROR_TIMEOUT_S,
                   "kvraft to follow etcd's changes", mirror.text)
        assert mirror.running(), mirror.text()
    assert prefix_contents(kvraft) == expected
    assert prefix_contents(kvraft, "/outside/") == {}
