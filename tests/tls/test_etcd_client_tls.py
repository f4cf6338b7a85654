"""etcd's API through kvraft.client and the CLI over TLS (SPEC §6 and §8): the etcd
calls use the client's channels, so `cacert=` / `--cacert` reach them too."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator

import grpc
import pytest

from kvraft.client import Client, Compare, KvraftError, PutOp, RangeOp
from tests.cli.helpers import KVRAFT, clean_env, run_kvraft
from tests.cluster.harness import LocalCluster

from .tlscluster import CertDir, tls_cluster

pytestmark = pytest.mark.cluster

CALL_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def tls_node(certs: CertDir) -> Iterator[LocalCluster]:
    creds = grpc.ssl_channel_credentials(root_certificates=(certs.root / "ca.crt").read_bytes())
    with tls_cluster(1, lambda i: certs.client_port_flags(i), creds) as cluster:
        cluster.wait_leader()
        yield cluster


def test_txn_lease_and_lock_over_tls(tls_node: LocalCluster, certs: CertDir) -> None:
    with Client(tls_node.endpoints(), timeout=CALL_TIMEOUT_S,
                **certs.client_kwargs(with_cert=False)) as kv:
        with kv.lease(10) as lease:
            result = kv.txn([Compare.create("tls/etcd") == 0],
                            [PutOp("tls/etcd", "v", lease=lease.id), RangeOp("tls/etcd")], [])
            assert result.succeeded
            assert result.responses[1].kvs[0].lease == lease.id
            assert kv.lease_keep_alive_once(lease.id) == 10
        assert kv.get("tls/etcd") is None  # revoked with its lease
        with kv.lock("tls/lock", ttl=10) as held:
            assert held.fencing_token > result.revision


def test_etcd_calls_without_the_ca_fail_with_the_tls_cause(tls_node: LocalCluster) -> None:
    with Client(tls_node.endpoints(), timeout=CALL_TIMEOUT_S) as plain, \
            pytest.raises(KvraftError) as refused:
        plain.range("tls/etcd")
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_cli_lease_and_txn_with_cacert(tls_node: LocalCluster, certs: CertDir) -> None:
    endpoint = tls_node.endpoints()
    granted = run_kvraft("lease", "grant", "30", "--endpoints", endpoint, "--cacert", certs.ca)
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.endswith(b" granted with TTL(30s)\n")
    txn = subprocess.run([str(KVRAFT), "txn", "--endpoints", endpoint, "--cacert", certs.ca],
                         input=b"", capture_output=True, env=clean_env(), timeout=120,
                         check=False)
    assert txn.returncode == 0, txn.stderr  # no input: an empty txn, which succeeds
    assert txn.stdout == b"SUCCESS\n"

