"""--quota-backend-bytes and --auto-compaction-retention on a real 3-node cluster, judged
by etcdctl: past the quota a member raises NOSPACE, writes that add data fail with
etcd's error on every member while deletes, compaction and defragmentation work, and
`etcdctl alarm disarm` lets writes in again once space is freed; the leader compacts
history on its own by revisions and by time."""
from __future__ import annotations

import shutil
import time

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcd_grpc
from kvraft.proto import kvraft_pb2 as pb
from tests.cluster.harness import LocalCluster, wait_until
from tests.etcd.test_kv_etcdctl import Etcdctl

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("etcdctl") is None,
                       reason="etcdctl is not installed (Debian's etcd-client, .ci/run)"),
]

QUOTA_BYTES = 1 << 20
NOSPACE = "etcdserver: mvcc: database space exceeded"
T = 10.0


def ctl_of(cluster: LocalCluster) -> Etcdctl:
    return Etcdctl([n.client_address for n in cluster.nodes.values()])


def test_nospace_alarm_refuses_writes_until_space_is_freed_and_disarmed() -> None:
    with LocalCluster.start(3, extra_args=["--quota-backend-bytes", str(QUOTA_BYTES)]) as c:
        c.wait_leader()
        ctl = ctl_of(c)
        wait_until(lambda: ctl.run("put", "warm", "1", check=False).returncode == 0, 30,
                   "etcd writes")
        kv = c.nodes[1].stub(etcd_grpc.KVStub)
        value = b"x" * 16_384
        written = 0

        def fill_until_refused() -> bool:
            nonlocal written
            try:
                kv.Put(etcdpb.PutRequest(key=b"fill/%05d" % written, value=value), timeout=T)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e  # type: ignore[attr-defined]
                assert e.details() == NOSPACE  # type: ignore[attr-defined]
                return True
            written += 1
            return False

        wait_until(fill_until_refused, 120, "a write refused for space")
        assert written * len(value) >= QUOTA_BYTES // 2
        alarms = ctl.out("alarm", "list")
        assert "alarm:NOSPACE" in alarms, alarms
        # /metrics of every member shows it (each re-reads the alarms every second):
        # how many members raised NOSPACE, each its own (all three filled up).
        wait_until(lambda: all((_alarm_metric(c, i, "NOSPACE") or 0) >= 1 for i in c.nodes),
                   10, "kvraft_alarms{alarm=NOSPACE} at least 1 on every member")
        assert _alarm_metric(c, 1, "CORRUPT") == 0
        # Every member refuses, through both APIs; reads still work.
        put = ctl.run("put", "more", "data", check=False)
        assert put.returncode != 0 and NOSPACE in put.stderr, put.stderr
        with pytest.raises(grpc.RpcError) as info:
            c.kv(3).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=T)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert ctl.out("get", "warm", "--print-value-only").strip() == "1"
        # Freeing space: delete, compact the history, defragment; then disarm.
        assert ctl.out("del", "fill/", "--prefix").strip() == str(written)
        revision = int(ctl.json("get", "warm")["header"]["revision"])
        assert f"compacted revision {revision}" in ctl.out("compaction", str(revision))
        defrag = ctl.out("defrag", "--cluster")
        assert defrag.count("Finished defragmenting etcd member") == 3, defrag
        ctl.out("alarm", "disarm")

        def writable() -> bool:
            return ctl.run("put", "after", "ok", check=False).returncode == 0

        wait_until(writable, 30, "writes accepted after the disarm")
        assert ctl.out("alarm", "list").strip() == ""
        assert ctl.out("get", "after", "--print-value-only").strip() == "ok"
        wait_until(lambda: all(_alarm_metric(c, i, "NOSPACE") == 0 for i in c.nodes), 10,
                   "kvraft_alarms{alarm=NOSPACE} 0 after the disarm")


def _alarm_metric(cluster: LocalCluster, node_id: int, alarm: str) -> float | None:
    """The member's kvraft_alarms{alarm=...} on /metrics, or None when absent."""
    line = f'kvraft_alarms{{alarm="{alarm}"}} '
    for text in cluster.metrics_text(node_id).splitlines():
        if text.startswith(line):
            return float(text[len(line):])
    return None


@pytest.mark.parametrize("retention", ["5", "2s"])
def test_auto_compaction_keeps_the_retention_and_compacts_the_rest(retention: str) -> None:
    with LocalCluster.start(3, extra_args=["--auto-compaction-retention", retention]) as c:
        c.wait_leader()
        ctl = ctl_of(c)
        wait_until(lambda: ctl.run("put", "k", "0", check=False).returncode == 0, 30,
                   "etcd writes")
        first = int(ctl.json("get", "k")["header"]["revision"])
        for i in range(1, 20):
            ctl.out("put", "k", str(i))
        last = int(ctl.json("get", "k")["header"]["revision"])

        def compacted_below() -> bool:
            got = ctl.run("get", "k", f"--rev={first}", check=False)
            return got.returncode != 0 and "required revision has been compacted" in got.stderr

        wait_until(compacted_below, 30, f"history before revision {first} compacted")
        if retention == "5":
            time.sleep(2.5)   # more checks of the compactor: it must keep 5 revisions
            assert ctl.out("get", "k", f"--rev={last - 4}", "--print-value-only").strip() == "15"
