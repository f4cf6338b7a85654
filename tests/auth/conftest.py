"""Fixtures for access control on real kvraft clusters (real `kvraft serve` processes on
loopback, tests/cluster/harness.py), configured and judged by etcdctl 3.4 (Debian's
etcd-client)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from kvraft.proto import etcdserverpb_pb2 as etcdpb
from kvraft.proto import etcdserverpb_pb2_grpc as etcdpb_grpc
from tests.cluster.harness import LocalCluster, wait_until
from tests.etcd.conftest import ETCDCTL, MEMBERS_TIMEOUT_S, all_published, etcdctl, ok

ROOT_PASSWORD = "root-pw"
ALICE_PASSWORD = "alice-pw"     # read on app/, write on app/rw/
BOB_PASSWORD = "bob-pw"         # no role at all
RPC_TIMEOUT_S = 10.0

SETUP = [
    ("user", "add", f"root:{ROOT_PASSWORD}"),
    ("role", "add", "root"),
    ("user", "grant-role", "root", "root"),
    ("role", "add", "app-reader"),
    ("role", "grant-permission", "app-reader", "read", "app/", "--prefix"),
    ("role", "grant-permission", "app-reader", "readwrite", "app/rw/", "--prefix"),
    ("user", "add", f"alice:{ALICE_PASSWORD}"),
    ("user", "grant-role", "alice", "app-reader"),
    ("user", "add", f"bob:{BOB_PASSWORD}"),
    ("put", "app/config", "v1"),
    ("put", "secret/key", "s1"),
    ("auth", "enable"),
]


@dataclass
class AuthCluster:
    cluster: LocalCluster

    def endpoint(self, node_id: int) -> str:
        return self.cluster.nodes[node_id].client_address

    def etcdctl(self, *args: str, user: str | None = "root", node_id: int | None = None):
        endpoints = self.endpoint(node_id) if node_id else self.cluster.endpoints()
        creds = {"root": ROOT_PASSWORD, "alice": ALICE_PASSWORD, "bob": BOB_PASSWORD}
        prefix = (f"--user={user}:{creds[user]}",) if user else ()
        return etcdctl(endpoints, *prefix, *args)

    def token(self, user: str, password: str, node_id: int = 1) -> str:
        with grpc.insecure_channel(self.endpoint(node_id)) as channel:
            response = etcdpb_grpc.AuthStub(channel).Authenticate(
                etcdpb.AuthenticateRequest(name=user, password=password),
                timeout=RPC_TIMEOUT_S)
        return response.token


@contextlib.contextmanager
def started_auth_cluster(**kwargs: Any) -> Iterator[AuthCluster]:
    """A 3-node cluster (LocalCluster.start's `kwargs`) with SETUP applied, auth enabled."""
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed (Debian: etcd-client)")
    with LocalCluster.start(3, **kwargs) as cluster:
        cluster.wait_leader()
        wait_until(lambda: all_published(cluster), MEMBERS_TIMEOUT_S,
                   "every member to publish its client address", cluster.all_log_tails)
        for args in SETUP:
            ok(etcdctl(cluster.endpoints(), *args))
        yield AuthCluster(cluster)


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[AuthCluster]:
    """A 3-node cluster with auth enabled: root, alice (app-reader), bob (no role)."""
    with started_auth_cluster() as auth:
        yield auth


def metadata(token: str) -> tuple[tuple[str, str]]:
    return (("token", token),)
