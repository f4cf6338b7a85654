"""A power cut right after each fsync of a founding member's first start (issue 11,
item 3): the member must come back and rejoin from whatever its bootstrap had made
durable. About ten cluster starts; tests/powerloss/bootstrap.py has the details."""
from __future__ import annotations

from pathlib import Path

import pytest

from .bootstrap import sweep

pytestmark = [pytest.mark.powerloss, pytest.mark.cluster, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_a_cut_at_any_fsync_of_bootstrap_leaves_a_member_that_rejoins(
        fuse_available: None, tmp_path: Path) -> None:
    report = sweep("ext4", root=tmp_path / "sweep")
    assert report.points >= 5, "bootstrap should make several fsyncs"
    assert not report.failures, (f"{report.line()}:\n" + "\n".join(report.failures))
