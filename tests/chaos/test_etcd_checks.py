"""Each chaos checker of the etcd workloads fails on a broken history and passes a
correct one."""
from __future__ import annotations

from tests.chaos.etcd_checks import (
    KeepAlive,
    LeaseLog,
    WatcherLog,
    WatchEvent,
    check_fencing,
    check_leases,
    check_watchers,
)

HISTORY = [WatchEvent(r, b"k%d" % (r % 2), b"v%d" % r, r % 5 == 0) for r in range(2, 12)]


def watcher(events: list[WatchEvent]) -> WatcherLog:
    return WatcherLog("w", list(events), [0.0] * len(events))


def test_a_watcher_that_saw_a_contiguous_part_of_the_history_passes() -> None:
    assert check_watchers(HISTORY, [watcher(HISTORY), watcher(HISTORY[3:7]),
                                    watcher([])]) == []


def test_a_gap_is_found() -> None:
    [problem] = check_watchers(HISTORY, [watcher(HISTORY[:3] + HISTORY[4:])])
    assert "missed 1 events" in problem


def test_a_duplicate_is_found() -> None:
    [problem] = check_watchers(HISTORY, [watcher(HISTORY[:4] + HISTORY[3:])])
    assert "again or out of order" in problem


def test_a_reordering_is_found() -> None:
    swapped = [*HISTORY[:2], HISTORY[3], HISTORY[2], *HISTORY[4:]]
    assert check_watchers(HISTORY, [watcher(swapped)])


def test_an_event_that_never_happened_is_found() -> None:
    forged = [*HISTORY[:2], WatchEvent(4, b"k0", b"forged", False), *HISTORY[3:]]
    [problem] = check_watchers(HISTORY, [watcher(forged)])
    assert "not in the history" in problem


def test_a_kept_lease_deleted_before_its_promise_is_found() -> None:
    kept = LeaseLog(1, b"l1", ttl=6, keepalives=[KeepAlive(10.0, 10.1, 6)])
    assert check_leases([kept], {b"l1": 17.0}, 5.0, 30.0) == []   # after 10 + 6: fine
    [problem] = check_leases([kept], {b"l1": 14.0}, 5.0, 30.0)
    assert "alive until at least 16.00 s" in problem


def test_an_abandoned_lease_that_outlives_its_bound_is_found() -> None:
    abandoned = LeaseLog(2, b"l2", ttl=6, abandoned_s=10.0)
    assert check_leases([abandoned], {b"l2": 18.0}, 5.0, 30.0) == []
    assert "due by 21.00 s" in check_leases([abandoned], {b"l2": 22.0}, 5.0, 30.0)[0]
    assert "never" in check_leases([abandoned], {}, 5.0, 30.0)[0]
    assert check_leases([abandoned], {}, 5.0, 20.0) == []   # not due yet when watching ended
    # Abandoned during the faults: the bound counts from their end.
    assert check_leases([abandoned], {b"l2": 30.0}, 5.0, 40.0, faults_end_s=20.0) == []
    assert check_leases([abandoned], {b"l2": 32.0}, 5.0, 40.0, faults_end_s=20.0)


def test_a_stale_token_write_after_a_newer_one_is_found() -> None:
    assert check_fencing([(5, 10), (7, 10), (9, 12)]) == []
    [problem] = check_fencing([(5, 10), (9, 12), (11, 10)])
    assert "revision 11 with token 10" in problem
