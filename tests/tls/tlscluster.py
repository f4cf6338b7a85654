"""Clusters of real `kvraft serve` processes with TLS (tests/cluster/harness.py's
LocalCluster, each node given its certificate flags before it starts)."""
from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from tests.cluster.harness import LocalCluster


@dataclass(frozen=True)
class CertDir:
    """A directory written by kvraft.devcerts."""

    root: Path

    def path(self, name: str) -> str:
        return str(self.root / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    def client_port_flags(self, member_id: int, *, client_cert_auth: bool = False
                          ) -> list[str]:
        flags = ["--cert-file", self.path(f"member-{member_id}.crt"),
                 "--key-file", self.path(f"member-{member_id}.key")]
        if client_cert_auth:
            flags += ["--trusted-ca-file", self.ca, "--client-cert-auth"]
        return flags

    def peer_flags(self, member_id: int, *, trusted_ca: str | None = None) -> list[str]:
        """Member `member_id`'s peer certificate (its files: peer-ID.crt/.key)."""
        return ["--peer-cert-file", self.path(f"peer-{member_id}.crt"),
                "--peer-key-file", self.path(f"peer-{member_id}.key"),
                "--peer-trusted-ca-file", trusted_ca or self.ca]

    def client_kwargs(self, *, with_cert: bool = True) -> dict[str, str]:
        """Client(...) keywords: the CA, and the client certificate."""
        kwargs = {"cacert": self.ca}
        if with_cert:
            kwargs.update(cert=self.path("client.crt"), key=self.path("client.key"))
        return kwargs

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=(self.root / "ca.crt").read_bytes(),
            private_key=(self.root / "client.key").read_bytes(),
            certificate_chain=(self.root / "client.crt").read_bytes())


@contextlib.contextmanager
def tls_cluster(n: int, flags: Callable[[int], list[str]],
                credentials: grpc.ChannelCredentials | None,
                start: list[int] | None = None) -> Iterator[LocalCluster]:
    """A cluster of `n` members, member i started with `flags(i)`; the harness reaches
    the client ports with `credentials` (None: plaintext). `start`: the members to
    launch and wait for (default all)."""
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="kvraft-tls-")))
    try:
        for node_id in range(1, n + 1):
            node = cluster.define(node_id)
            node.extra_args = flags(node_id)
            node.credentials = credentials
        cluster.initial_cluster = {i: nd.peer_address for i, nd in cluster.nodes.items()}
        chosen = start if start is not None else list(cluster.nodes)
        for node_id in chosen:
            cluster.launch(node_id)
        for node_id in chosen:
            cluster.wait_serving(node_id)
        yield cluster
    finally:
        cluster.close()


def metric_value(text: str, name: str, labels: str = "") -> float:
    """A sample's value in Prometheus text (0 when absent); `labels` as in the text,
    e.g. 'reason="identity"'."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + \
        r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
