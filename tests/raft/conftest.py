"""Fixtures for the Raft core tests: small clusters on the deterministic network.

The harness is imported inside the fixtures so that the unit tests of the lower layers
(quorum, tracker, …) in this directory collect even while the RawNode is incomplete.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.raft.network import Network


@pytest.fixture
def cluster3() -> Network:
    """Three voters 1, 2, 3, no faults, seed 0, election_tick 10, heartbeat_tick 1."""
    from tests.raft.network import Network

    return Network([1, 2, 3])


@pytest.fixture
def cluster5() -> Network:
    """Five voters 1..5, no faults, seed 0, election_tick 10, heartbeat_tick 1."""
    from tests.raft.network import Network

    return Network([1, 2, 3, 4, 5])


@pytest.fixture
def make_net() -> Callable[..., Network]:
    """Build a Network with custom members / Config fields: make_net([1, 2, 3], pre_vote=True)."""
    from tests.raft.network import Network

    return Network
