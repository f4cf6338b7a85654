"""The corruption check's decision (server/etcd/corrupt_check.py `find_corrupt`) and
`--corrupt-check-time`'s durations: pure functions, no cluster."""
from __future__ import annotations

import pytest

from kvraft.server.config import (
    AutoCompaction,
    ServeError,
    parse_corrupt_check_time,
    parse_duration_s,
    parse_retention,
)
from kvraft.server.etcd.corrupt_check import UNKNOWN_MEMBER, HashAnswer, find_corrupt

A, B, C = 0xAAAA, 0xBBBB, 0xCCCC


def answers(*pairs: tuple[int, int], compact: int = 0) -> dict[int, HashAnswer]:
    return {member: HashAnswer(h, compact) for member, h in pairs}


@pytest.mark.parametrize(("given", "corrupt", "majority"), [
    # Every member agrees: nothing to raise.
    (answers((1, A), (2, A), (3, A)), set(), A),
    # A follower differs from the other two: it is named.
    (answers((1, A), (2, A), (3, B)), {3}, A),
    # The leader (1, asking) differs from its followers: the leader is named.
    (answers((1, B), (2, A), (3, A)), {1}, A),
    # Five members, two differ alike: still the minority.
    (answers((1, A), (2, A), (3, A), (4, C), (5, C)), {4, 5}, A),
    # One member unreachable (not among the answers): the two left agree.
    (answers((1, A), (2, A)), set(), A),
    # Two answers that disagree, or three hashes: no majority says which member it is.
    (answers((1, A), (2, B)), {UNKNOWN_MEMBER}, None),
    (answers((1, A), (2, B), (3, C)), {UNKNOWN_MEMBER}, None),
    # The leader alone (every other member skipped).
    (answers((1, A)), set(), A),
])
def test_the_members_whose_hash_differs_from_the_majority_are_named(
        given: dict[int, HashAnswer], corrupt: set[int], majority: int | None) -> None:
    verdict = find_corrupt(0, given)
    assert verdict.corrupt == corrupt
    assert verdict.majority == majority
    assert verdict.compared == set(given)


def test_answers_at_another_compact_revision_are_not_compared() -> None:
    """etcd's rule: HashKV at R covers the history after the compact revision, so a
    member that has not applied the leader's compaction yet differs without being
    corrupt; it is left out, not flagged, and does not make a majority."""
    given = {1: HashAnswer(A, 10), 2: HashAnswer(B, 5), 3: HashAnswer(A, 10)}
    verdict = find_corrupt(10, given)
    assert (verdict.corrupt, verdict.compared) == (frozenset(), {1, 3})
    given[3] = HashAnswer(C, 10)
    assert find_corrupt(10, given).corrupt == {UNKNOWN_MEMBER}


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
    ("500ms", 0.5), (" 2m10s ", 130.0),
])
def test_durations_are_etcds(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds
    assert parse_corrupt_check_time(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "m", "1h-5m", "-1s", "5 m", "1e3s"])
def test_a_bad_corrupt_check_time_is_one_line(text: str) -> None:
    with pytest.raises(ServeError) as refused:
        parse_corrupt_check_time(text)
    assert str(refused.value) == (f"--corrupt-check-time {text.strip()!r}: expected a "
                                  "duration such as 30s, 5m or 1h (0 is off)")


def test_auto_compaction_retention_takes_the_same_durations() -> None:
    assert parse_retention("0") is None and parse_retention("") is None
    assert parse_retention("100") == AutoCompaction(revisions=100)
    assert parse_retention("1h30m") == AutoCompaction(period_s=5400.0)
    with pytest.raises(ServeError, match="--auto-compaction-retention '5x'"):
        parse_retention("5x")
