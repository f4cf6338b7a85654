"""The randomized simulation (tests/raft/sim.py) over many seeds: safety after every step,
liveness after healing. A failure names its seed and the command that replays it."""
from __future__ import annotations

import pytest

from tests.raft.sim import CHAOS_STEPS, run_seed

SEEDS_TOTAL = 500
CHUNKS = 10  # separate tests, so a failure report stays short and progress is visible
QUICK_SEEDS = 8


def run_seeds(seeds: range) -> list[str]:
    return [f for f in (run_seed(s, CHAOS_STEPS) for s in seeds) if f is not None]


def test_simulation_quick() -> None:
    """A few seeds of both sizes in the fast tier."""
    failures = run_seeds(range(10_000, 10_000 + QUICK_SEEDS))
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_simulation_seeds(chunk: int) -> None:
    per_chunk = SEEDS_TOTAL // CHUNKS
    failures = run_seeds(range(chunk * per_chunk, (chunk + 1) * per_chunk))
    assert not failures, "\n".join(failures)
