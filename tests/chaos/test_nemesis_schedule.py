"""The nemesis schedule is a pure function of the seed and covers every fault kind."""

from __future__ import annotations

import itertools

import pytest

from tests.chaos.nemesis import FAULT_KINDS, schedule


@pytest.mark.parametrize("seed", range(50))
def test_a_60s_run_applies_every_fault_kind_before_its_quiet_period(seed: int) -> None:
    faults, quiet_from_s = schedule(seed, 60.0, 5)
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    assert quiet_from_s <= 52.0
    for earlier, later in itertools.pairwise(faults):
        assert earlier.start_s + earlier.duration_s < later.start_s  # healed in between
    assert faults[-1].start_s + faults[-1].duration_s <= quiet_from_s


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert schedule(7, 300.0, 5) == schedule(7, 300.0, 5)
    assert schedule(7, 300.0, 5) != schedule(8, 300.0, 5)


def test_a_long_run_repeats_the_kinds() -> None:
    faults, quiet_from_s = schedule(3, 600.0, 5)
    assert len(faults) > 2 * len(FAULT_KINDS)
    assert quiet_from_s == pytest.approx(600.0 * 0.88)


def test_overlap_leaves_some_faults_unhealed_and_keeps_the_same_faults() -> None:
    plain, _ = schedule(9, 300.0, 5)
    piled, _ = schedule(9, 300.0, 5, overlap=True)
    assert all(f.heal_after for f in plain)
    assert any(not f.heal_after for f in piled) and any(f.heal_after for f in piled)
    assert [f.kind for f in plain] == [f.kind for f in piled]
