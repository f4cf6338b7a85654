"""The 5-node compose cluster (deploy/docker-compose.yml) against the real Docker engine.

One cluster serves the scenarios of this module, in order; each scenario first heals
whatever an earlier one may have left broken (a stopped or disconnected member), and the
module fixture removes the project's containers, network and volumes at the end, also
when a scenario fails. `acked` collects every write the cluster acknowledged; the last
scenario checks all of them survive `compose down` + `up`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvraft.client import Client
from tests.docker.harness import NODE_IDS, ComposeCluster, compose_cluster, run, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

KVRAFT_CLI = Path(sys.executable).with_name("kvraft")
CLI_TIMEOUT_S = 30.0
# Inside a container, on the node's own client port: Put with no client deadline, so the
# server's default request deadline (5 s, SPEC §2) decides; prints the outcome.
ISOLATED_PUT = """
import sys, time, grpc
from kvraft.proto import kvraft_pb2 as pb, kvraft_pb2_grpc as rpc
key, value = sys.argv[1].encode(), sys.argv[2].encode()
with grpc.insecure_channel("127.0.0.1:2379") as channel:
    started = time.monotonic()
    try:
        rpc.KVStub(channel).Put(pb.PutRequest(key=key, value=value))
        print("OK", round(time.monotonic() - started, 1))
    except grpc.RpcError as e:
        print(e.code().name, round(time.monotonic() - started, 1))
"""


@pytest.fixture(scope="module")
def cluster(kvraft_image, compose_cmd):
    with compose_cluster(kvraft_image, compose_cmd) as c:
        yield c
    # compose_cluster removed the project's containers, network and volumes.
    assert c.leftovers() == [], f"project {c.project} left resources behind"


@pytest.fixture(scope="module")
def acked() -> dict[bytes, bytes]:
    return {}


@pytest.fixture
def healthy(cluster: ComposeCluster) -> ComposeCluster:
    cluster.heal()
    cluster.wait_for_leader(timeout_s=60.0)
    return cluster


def cli(cluster: ComposeCluster, n: int, *args: str) -> subprocess.CompletedProcess[str]:
    assert KVRAFT_CLI.exists(), f"the kvraft CLI is not installed next to {sys.executable}"
    return subprocess.run(
        [str(KVRAFT_CLI), *args, "--endpoints", cluster.endpoint(n)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )


def put_all(client: Client, acked: dict[bytes, bytes], items: dict[bytes, bytes]) -> None:
    for key, value in items.items():
        client.put(key, value)
        acked[key] = value


def serves(cluster: ComposeCluster, n: int, items: dict[bytes, bytes]) -> bool:
    """Node n's own state (SERIALIZABLE, no ReadIndex round) holds every item."""
    client = cluster.client(n)
    return all(client.get(k, serializable=True) == v for k, v in items.items())


def test_put_and_get_through_every_published_port(healthy, acked):
    cluster = healthy
    written: dict[bytes, bytes] = {}
    for n in NODE_IDS:
        key, value = f"cli/{n}", f"written through node {n} by the CLI"
        out = cli(cluster, n, "put", key, value)
        assert out.returncode == 0, out.stderr
        written[key.encode()] = value.encode()
        with Client([cluster.endpoint(n)], timeout=10.0) as client:
            put_all(client, written, {f"client/{n}".encode(): f"node {n}, Python".encode()})
    acked.update(written)

    for n in NODE_IDS:
        # Linearizable reads through every port see every acknowledged write.
        client = cluster.client(n)
        for key, value in written.items():
            assert client.get(key) == value, (n, key)
        # The CLI reads a write made through the next node.
        other = n % len(NODE_IDS) + 1
        out = cli(cluster, n, "get", f"client/{other}")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"node {other}, Python"
    missing = cli(cluster, 1, "get", "never/written")
    assert missing.returncode == 1
    assert missing.stdout == ""


def test_members_run_as_the_image_user_and_turn_healthy(healthy, kvraft_image):
    """The image's contract: non-root, data on the volume, HEALTHCHECK via gRPC health."""
    cluster = healthy
    config = json.loads(run(["docker", "image", "inspect", kvraft_image]).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert "/var/lib/kvraft" in config["Volumes"]
    assert config["Entrypoint"] == ["kvraft-entrypoint"]
    assert config["Healthcheck"]["Test"] == ["CMD", "kvraft-healthcheck"]
    assert config["StopSignal"] == "SIGTERM"

    def all_healthy() -> bool:
        return all(info["State"]["Health"]["Status"] == "healthy"
                   for info in cluster.inspect().values())

    wait_for("every member's HEALTHCHECK to pass", all_healthy, timeout_s=90.0)
    for n in NODE_IDS:
        out = cluster.exec(n, "sh", "-c", 'id -u; ls "$KVRAFT_DATA_DIR"')
        assert out.returncode == 0, out.stderr
        uid, *data_files = out.stdout.split()
        assert uid == "10001"
        assert data_files, f"node {n} wrote nothing to its data directory"


def test_killed_leader_writes_continue_then_it_catches_up(healthy, acked):
    cluster = healthy
    old = cluster.wait_for_leader()
    cluster.kill(old)
    others = [n for n in NODE_IDS if n != old]
    new = cluster.wait_for_leader(among=others, not_=old, timeout_s=60.0)
    assert new != old

    during = {f"while-{old}-down/{i}".encode(): f"v{i}".encode() for i in range(20)}
    with Client(cluster.endpoints(others), timeout=15.0) as client:
        put_all(client, acked, during)
        assert all(client.get(k) == v for k, v in during.items())

    if not cluster.is_running(old):  # `unless-stopped` may already have restarted it
        cluster.start(old)
    started = time.monotonic()
    wait_for(f"node {old} to catch up", lambda: serves(cluster, old, during), timeout_s=60.0)
    print(f"restarted node {old} served the {len(during)} writes it missed after "
          f"{time.monotonic() - started:.1f} s")
    # Caught up means the same data as everyone, through its own port, linearizably too.
    client = cluster.client(old)
    assert all(client.get(k) == v for k, v in acked.items())


def test_isolated_leader_cannot_commit_and_majority_moves_on(healthy, acked):
    cluster = healthy
    old = cluster.wait_for_leader()
    cluster.disconnect(old)
    try:
        # The cut-off leader has no quorum: the write is refused as UNAVAILABLE within
        # the server's default deadline, never acknowledged.
        out = cluster.exec(old, "python", "-c", ISOLATED_PUT, "isolated/key", "lost",
                           timeout_s=60.0)
        assert out.returncode == 0, out.stderr
        # No client deadline was set, so an UNAVAILABLE answer came from the server
        # within its own default deadline (a hang would have hit the exec timeout).
        code, seconds = out.stdout.split()
        assert code == "UNAVAILABLE", out.stdout
        print(f"isolated leader {old} refused the write with {code} after {seconds} s")

        others = [n for n in NODE_IDS if n != old]
        new = cluster.wait_for_leader(among=others, not_=old, timeout_s=60.0)
        assert new != old
        majority_writes = {f"after-isolating-{old}/{i}".encode(): b"kept" for i in range(10)}
        with Client(cluster.endpoints(others), timeout=15.0) as client:
            put_all(client, acked, majority_writes)
    finally:
        cluster.connect(old)

    # One leader, one term, one commit index on all five ...
    cluster.wait_converged(timeout_s=90.0)
    # ... and one history: the majority's writes everywhere, the isolated write nowhere.
    wait_for(f"node {old} to take the majority's history",
             lambda: serves(cluster, old, majority_writes), timeout_s=60.0)
    for n in NODE_IDS:
        client = cluster.client(n)
        assert client.get(b"isolated/key", serializable=True) is None, n
        assert client.get(b"isolated/key") is None, n
        assert serves(cluster, n, majority_writes), n


def test_sigterm_stop_then_down_and_up_keeps_every_acknowledged_write(healthy, acked):
    cluster = healthy
    assert acked, "the earlier scenarios acknowledged no write"
    volumes_before = sorted(cluster.volumes())
    assert len(volumes_before) == len(NODE_IDS)

    # `compose stop` sends SIGTERM (the image's STOPSIGNAL) and waits the grace period:
    # every node must exit 0 on its own, not be killed (137) after the grace period.
    cluster.compose("stop", timeout_s=180.0)
    exit_codes = {n: info["State"]["ExitCode"] for n, info in cluster.inspect().items()}
    assert exit_codes == dict.fromkeys(NODE_IDS, 0)

    cluster.down(volumes=False)
    assert cluster.project_containers() == []
    assert sorted(cluster.volumes()) == volumes_before

    cluster.up()
    cluster.wait_for_leader(timeout_s=90.0)
    with Client(cluster.endpoints(), timeout=15.0) as client:
        lost = {k: v for k, v in acked.items() if client.get(k) != v}
    assert lost == {}
    out = cli(cluster, 3, "get", "cli/1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == acked[b"cli/1"].decode()

