"""`kvraft serve --corrupt-check-time` on a real 3-node cluster, one member's data
changed for real in its LevelDB while it was stopped; judged by etcdctl 3.4 (alarm
list, put, endpoint hashkv) and by Maintenance.Hash over gRPC (etcdctl has no command
for it)."""
from __future__ import annotations

import dataclasses
import json
import re

import grpc
import plyvel
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from kvraft.storage.datadir import DB_NAME
from kvraft.storage.mvcc import layout
from tests.cluster.harness import LocalCluster, retry_unavailable, wait_until

from .conftest import ETCDCTL, MEMBERS_TIMEOUT_S, all_published, etcdctl, failed, ok

pytestmark = pytest.mark.cluster

CHECK_TIME = "200ms"
ALARM_TIMEOUT_S = 30
KEYS = 10
# The corrupt-check line of the leader's log (kvraft/server/etcd/corrupt_check.py).
CHECK_LINE = re.compile(r"corruption check at revision (\d+) \(compact revision \d+\): "
                        r"member\(s\) (\S+) differ from the majority; hashes (.*): "
                        r"raising the CORRUPT alarm")


def member_hashes(cluster: LocalCluster) -> dict[int, etcdpb.HashResponse]:
    out = {}
    for node_id, node in cluster.nodes.items():
        stub = node.stub(etcdpb_grpc.MaintenanceStub)
        out[node_id] = stub.Hash(etcdpb.HashRequest(), timeout=10)
    return out


def tamper(cluster: LocalCluster, node_id: int, key: bytes, value: bytes) -> None:
    """Change the value of `key`'s latest record in the member's LevelDB, through the
    store's key layout (kvraft/storage/mvcc/layout.py), as a bad disk or a hand would."""
    db = plyvel.DB(str(cluster.nodes[node_id].data_dir / DB_NAME))
    try:
        raw = db.get(layout.latest_key(key))
        assert raw is not None, "the key's record is not in LevelDB"
        record = layout.decode_record(raw)
        db.put(layout.latest_key(key), dataclasses.replace(record, value=value).encode(),
               sync=True)
    finally:
        db.close()


def refused_put(cluster: LocalCluster, node_id: int) -> str | None:
    """The last line of etcdctl's refusal of a put through the member; None while the
    put finds no leader (an election on a loaded machine: ask again)."""
    stderr = failed(etcdctl(cluster.nodes[node_id].client_address, "put", "k", "v"))
    last = stderr.splitlines()[-1]
    return None if "code = Unavailable" in last else last


def ctl(endpoints: str, *args: str) -> str:
    """etcdctl's stdout once it succeeds; asked again while it finds no leader (an
    election on a loaded machine), any other failure fails the test."""
    def attempt() -> str | None:
        result = etcdctl(endpoints, *args)
        if result.returncode != 0 and "code = Unavailable" in result.stderr:
            return None
        return ok(result) or " "

    return wait_until(attempt, ALARM_TIMEOUT_S, f"etcdctl {' '.join(args)}").strip(" ")


def alarms(cluster: LocalCluster) -> list[str]:
    return ctl(cluster.endpoints(cluster.running_ids()), "alarm", "list").split()


def test_a_member_whose_data_changed_is_named_corrupt_and_writes_stop() -> None:
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed (Debian: etcd-client)")
    with LocalCluster.start(3, extra_args=["--corrupt-check-time", CHECK_TIME]) as cluster:
        leader = cluster.wait_leader()
        wait_until(lambda: all_published(cluster), MEMBERS_TIMEOUT_S,
                   "every member to publish its client address", cluster.all_log_tails)
        endpoints = cluster.endpoints()
        for i in range(KEYS):
            ctl(endpoints, "put", f"corrupt/{i}", f"value-{i}")
        commit = cluster.status(leader).commit_index
        for node_id in cluster.nodes:
            cluster.wait_applied(node_id, commit)
        healthy = member_hashes(cluster)
        assert len({h.hash for h in healthy.values()}) == 1, healthy
        assert {h.header.revision for h in healthy.values()} == {KEYS + 1}
        assert alarms(cluster) == []

        # A follower's data changes while it is stopped; it restarts on it.
        victim = next(i for i in sorted(cluster.nodes) if i != leader)
        assert cluster.terminate(victim) == 0
        tamper(cluster, victim, b"corrupt/3", b"value-X")
        cluster.restart(victim)
        assert cluster.get(victim, b"corrupt/3", serializable=True) == b"value-X"

        wait_until(lambda: alarms(cluster) == [f"memberID:{victim}", "alarm:CORRUPT"],
                   ALARM_TIMEOUT_S, "the CORRUPT alarm naming the changed member",
                   cluster.all_log_tails)
        # The leader that raised it logged the line (whichever member leads by now).
        logs = "".join(n.log_path.read_text(errors="replace") for n in cluster.nodes.values())
        line = CHECK_LINE.search(logs)
        assert line is not None, cluster.all_log_tails()
        assert (int(line.group(1)), line.group(2)) == (KEYS + 1, str(victim))
        named = dict(part.split("=") for part in line.group(3).split(", "))
        assert sorted(named) == ["1", "2", "3"]
        assert len({h for m, h in named.items() if m != str(victim)}) == 1
        assert named[str(victim)] != named[str(leader)]

        # Writes are refused on every member with etcd's error; reads go on.
        for node_id in cluster.nodes:
            # (before it, clientv3's retry interceptor logs the DataLoss status it got)
            last = wait_until(lambda n=node_id: refused_put(cluster, n), ALARM_TIMEOUT_S,
                              f"member {node_id}'s answer to a put")
            assert last == "Error: etcdserver: corrupt cluster"
        with pytest.raises(grpc.RpcError) as refused:
            retry_unavailable(lambda: cluster.nodes[leader].stub(etcdpb_grpc.KVStub)
                              .Put(etcdpb.PutRequest(key=b"k", value=b"v"), timeout=10))
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
        assert ctl(endpoints, "get", "corrupt/0", "--print-value-only") == "value-0\n"

        # etcdctl shows the differing hash; Hash (the whole state) differs as well.
        rows = json.loads(ctl(cluster.nodes[leader].client_address, "endpoint", "hashkv",
                              "--cluster", "-w", "json"))
        by_member = {r["HashKV"]["header"]["member_id"]: r["HashKV"]["hash"] for r in rows}
        assert sorted(by_member) == [1, 2, 3]
        assert f"{by_member[victim]:#010x}" == named[str(victim)]
        assert len({h for m, h in by_member.items() if m != victim}) == 1
        assert by_member[victim] != by_member[leader]
        hashes = member_hashes(cluster)
        assert hashes[victim].hash != hashes[leader].hash
        # (the raised alarm is part of the state: the others' hash moved, together)
        assert len({h.hash for m, h in hashes.items() if m != victim}) == 1

        # The operator stops the member (the check skips a member it cannot reach) and
        # disarms the alarm: writes go through again.
        assert cluster.terminate(victim) == 0
        ctl(cluster.endpoints(cluster.running_ids()), "alarm", "disarm")
        ctl(cluster.endpoints(cluster.running_ids()), "put", "after", "fine")
        assert alarms(cluster) == []
