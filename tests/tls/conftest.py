"""Fixtures of the TLS tier: certificates made by the test with kvraft.devcerts, the
helper `make certs` runs, in a temp dir. Two unrelated CAs: `certs` (members 1-4 and a
client) and `other_certs`, whose certificates the first CA's holders must refuse."""
from __future__ import annotations

from pathlib import Path

import pytest

from kvraft import devcerts

from .tlscluster import CertDir


@pytest.fixture(scope="package")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertDir:
    out = tmp_path_factory.mktemp("certs")
    devcerts.make_dev_certs(out, [1, 2, 3, 4])
    return CertDir(Path(out))


@pytest.fixture(scope="package")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> CertDir:
    out = tmp_path_factory.mktemp("other-certs")
    devcerts.make_dev_certs(out, [1, 2, 3], common_name="another development CA")
    return CertDir(Path(out))
