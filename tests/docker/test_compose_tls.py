"""`make docker-up TLS=1` against the real Docker engine (docs/security.md): the
5-node compose cluster with deploy/docker-compose.tls.yml laid over it elects a
leader over mutual TLS between the members, its containers' TLS health checks pass,
and the host reaches every member with --cacert and is refused without it."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvraft import devcerts
from kvraft.client import Client, Unavailable
from tests.docker.harness import NODE_IDS, ROOT, free_loopback_ports, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

UP_TIMEOUT_S = 900.0
CALL_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def tls_compose(kvraft_image: str, compose_cmd: list[str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], Path]]:
    """The cluster as docker-up.sh starts it, on free host ports, torn down with its
    volumes at the end."""
    certs = tmp_path_factory.mktemp("compose-certs")
    devcerts.make_dev_certs(certs, NODE_IDS, hosts=["127.0.0.1", "localhost"],
                            member_hosts={n: [f"kvraft{n}"] for n in NODE_IDS})
    ports = free_loopback_ports(len(NODE_IDS))
    env = {**os.environ, "TLS": "1", "CERTS_DIR": str(certs),
           "COMPOSE_PROJECT_NAME": f"kvrafttls{uuid.uuid4().hex[:8]}",
           "DOCKER_COMPOSE": " ".join(compose_cmd), "LEADER_TIMEOUT_S": "180",
           **{f"KVRAFT_HOST_PORT_{n}": str(p) for n, p in zip(NODE_IDS, ports, strict=True)}}
    try:
        up = run(["bash", str(ROOT / "deploy/scripts/docker-up.sh")], env=env,
                 timeout_s=UP_TIMEOUT_S, check=False)
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        assert f"TLS: pass --cacert {certs}/ca.crt" in up.stdout
        yield [f"127.0.0.1:{p}" for p in ports], certs
    finally:
        run(["bash", str(ROOT / "deploy/scripts/docker-down.sh")],
            env={**env, "VOLUMES": "1"}, check=False)


def test_the_tls_compose_cluster_serves_clients_with_the_ca(
        tls_compose: tuple[list[str], Path]) -> None:
    endpoints, certs = tls_compose
    with Client(endpoints, timeout=CALL_TIMEOUT_S, cacert=str(certs / "ca.crt")) as kv:
        kv.put("compose-tls", "hello")
        assert kv.get("compose-tls") == b"hello"
        statuses = [kv.status(e) for e in endpoints]
    # Every member answers over TLS and follows one leader, elected over mutual TLS.
    assert sorted(s.member_id for s in statuses) == list(NODE_IDS)
    assert len({s.leader_id for s in statuses}) == 1 and statuses[0].leader_id in NODE_IDS
    with Client(endpoints[0], timeout=2.0) as plaintext, pytest.raises(Unavailable) as info:
        plaintext.get("compose-tls")
    assert "if it serves TLS, pass --cacert" in str(info.value)
