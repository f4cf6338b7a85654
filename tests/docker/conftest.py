"""Fixtures for the Docker tier: skip with the reason when there is no engine, build
the image once per session (cached across sessions by content hash)."""
from __future__ import annotations

import pytest

from tests.docker.harness import build_image, compose_command, docker_unavailable_reason


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(f"Docker tests need a Docker engine: {reason}")
    cmd = compose_command()
    assert cmd is not None
    return cmd


@pytest.fixture(scope="session")
def kvraft_image(compose_cmd) -> str:
    """deploy/scripts/build-image.sh: the no-registry build `make docker-up` uses."""
    return build_image()
