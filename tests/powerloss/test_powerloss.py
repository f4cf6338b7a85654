"""The short power-loss run of `make test`: a 3-node cluster on lazyfs (ext4 mode, the
mode that must pass), a few power cuts of one member and of all members under a write
load, every check of tests/powerloss/run.py after each. `make powerloss` is the long
run. KVRAFT_POWERLOSS_SEED replays another plan; a failure prints its seed and keeps
its directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from .run import PowerLossRun, RunConfig

pytestmark = [pytest.mark.powerloss, pytest.mark.cluster, pytest.mark.slow]

SEED = int(os.environ.get("KVRAFT_POWERLOSS_SEED", "20261201"))


# Ten cuts (16 members cut in all). The run must tear at least one WAL file, and as the
# storage syncs every write, a cut at a random moment finds unsynced WAL data in about
# one member cut in eight: so 0.7 of the one-member cuts land inside a WAL write (before
# its fsync), and a WAL file with unsynced data is torn with probability 0.9. No torn
# WAL in a run then has a probability of about (1 - 0.7 * 0.9) ** 7, under 0.1%.
ONE_MEMBER_CUTS, ALL_MEMBER_CUTS = 7, 3
TORN_PROBABILITY = 0.9
MID_WRITE_PROBABILITY = 0.7


@pytest.mark.timeout(420)
def test_power_cuts_lose_no_acknowledged_write(fuse_available: None, tmp_path: Path) -> None:
    report = PowerLossRun(RunConfig(
        seed=SEED, one_member_cuts=ONE_MEMBER_CUTS, all_member_cuts=ALL_MEMBER_CUTS,
        mode="ext4", torn_probability=TORN_PROBABILITY,
        mid_write_probability=MID_WRITE_PROBABILITY, root=tmp_path / "run")).run()
    assert report.cuts == ONE_MEMBER_CUTS + ALL_MEMBER_CUTS
    assert report.wal_files_torn > 0  # run() fails before this otherwise; stated here too
    assert report.acked_checks > report.acked_writes > 0
    print(report.line())
