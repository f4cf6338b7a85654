"""Per-peer progress: Probe / Replicate / Snapshot transitions and backtracking
(thesis §3.5 nextIndex/matchIndex, §5.3 snapshots, flow control as in etcd/raft-rs)."""

from __future__ import annotations

import pytest

from kvraft.raft.tracker import INVALID_INDEX, Progress, ProgressState

CAP = 256


def progress(state: ProgressState = ProgressState.Probe, matched: int = 0,
             next_idx: int = 1, paused: bool = False, pending_snapshot: int = 0,
             ins: list[int] = ()) -> Progress:
    pr = Progress(next_idx, CAP)
    pr.state = state
    pr.matched = matched
    pr.paused = paused
    pr.pending_snapshot = pending_snapshot
    for index in ins:
        pr.ins.add(index)
    return pr


def test_new_progress_probes_from_next_idx():
    pr = Progress(5, 4)
    assert (pr.state, pr.matched, pr.next_idx, pr.paused) == (ProgressState.Probe, 0, 5, False)
    assert pr.ins.cap == 4 and pr.ins.count() == 0
    assert not pr.recent_active and pr.pending_request_snapshot == INVALID_INDEX


# (from state, matched, pending_snapshot, expected next_idx after become_probe)
BECOME_PROBE = [
    (ProgressState.Replicate, 1, 0, 2),
    # Leaving Snapshot: continue after the snapshot if that is further than matched.
    (ProgressState.Snapshot, 1, 10, 11),
    (ProgressState.Snapshot, 12, 10, 13),
    (ProgressState.Probe, 7, 0, 8),
]


@pytest.mark.parametrize(("state", "matched", "pending", "next_idx"), BECOME_PROBE)
def test_become_probe(state, matched, pending, next_idx):
    pr = progress(state, matched=matched, next_idx=5, paused=True, pending_snapshot=pending)
    pr.become_probe()
    assert pr.state is ProgressState.Probe
    assert pr.next_idx == next_idx
    assert not pr.paused and pr.pending_snapshot == 0


def test_become_replicate_streams_after_matched_with_empty_window():
    pr = progress(matched=1, next_idx=5, paused=True)
    pr.ins.add(3)
    pr.become_replicate()
    assert (pr.state, pr.next_idx, pr.paused, pr.ins.count()) == (
        ProgressState.Replicate, 2, False, 0)


def test_become_snapshot_records_the_snapshot_index():
    pr = progress(ProgressState.Replicate, matched=1, next_idx=5, ins=[2, 3])
    pr.become_snapshot(10)
    assert (pr.state, pr.matched, pr.pending_snapshot, pr.ins.count()) == (
        ProgressState.Snapshot, 1, 10, 0)
    assert pr.is_paused()
    assert not pr.is_snapshot_caught_up()
    pr.matched = 10
    assert pr.is_snapshot_caught_up()
    pr.snapshot_failure()
    assert pr.pending_snapshot == 0


def test_snapshot_caught_up_only_in_snapshot_state():
    pr = progress(ProgressState.Probe, matched=10, pending_snapshot=5)
    assert not pr.is_snapshot_caught_up()


# (state, paused flag, inflights full, expected is_paused)
IS_PAUSED = [
    (ProgressState.Probe, False, False, False),
    (ProgressState.Probe, True, False, True),
    (ProgressState.Replicate, False, False, False),
    (ProgressState.Replicate, True, False, False),   # the flag is Probe-only
    (ProgressState.Replicate, False, True, True),    # a full window pauses
    (ProgressState.Snapshot, False, False, True),
]


@pytest.mark.parametrize(("state", "paused", "full", "expected"), IS_PAUSED)
def test_is_paused(state, paused, full, expected):
    pr = Progress(1, 2)
    pr.state = state
    pr.paused = paused
    if full:
        pr.ins.add(1)
        pr.ins.add(2)
    assert pr.is_paused() is expected


def test_pause_and_resume():
    pr = Progress(1, CAP)
    pr.pause()
    assert pr.is_paused()
    pr.resume()
    assert not pr.is_paused()


# (matched, next_idx, ack, expected return, matched after, next_idx after)
MAYBE_UPDATE = [
    (5, 10, 4, False, 5, 10),    # stale ack
    (5, 10, 5, False, 5, 10),    # repeated ack
    (5, 10, 6, True, 6, 10),     # matched advances, next_idx already ahead
    (5, 10, 9, True, 9, 10),
    (5, 10, 10, True, 10, 11),   # next_idx follows the ack
    (5, 10, 12, True, 12, 13),
]


@pytest.mark.parametrize(("matched", "next_idx", "ack", "ok", "matched_after", "next_after"),
                         MAYBE_UPDATE)
def test_maybe_update(matched, next_idx, ack, ok, matched_after, next_after):
    pr = progress(matched=matched, next_idx=next_idx, paused=True)
    assert pr.maybe_update(ack) is ok
    assert (pr.matched, pr.next_idx) == (matched_after, next_after)
    # Progress resumes a paused probe.
    assert pr.paused is (not ok)


def test_update_committed_never_regresses():
    pr = Progress(1, CAP)
    pr.update_committed(5)
    pr.update_committed(3)
    assert pr.committed_index == 5


def test_update_state_in_replicate_sends_optimistically():
    pr = progress(ProgressState.Replicate, matched=5, next_idx=6)
    pr.update_state(9)
    pr.update_state(12)
    assert pr.next_idx == 13
    assert pr.ins.indexes() == [9, 12]


def test_update_state_in_probe_pauses():
    pr = progress(ProgressState.Probe, matched=5, next_idx=6)
    pr.update_state(9)
    assert pr.paused and pr.next_idx == 6


def test_update_state_in_snapshot_is_a_bug():
    pr = progress(ProgressState.Snapshot, pending_snapshot=5)
    with pytest.raises(AssertionError):
        pr.update_state(9)


def test_optimistic_update():
    pr = progress(ProgressState.Replicate, matched=5, next_idx=6)
    pr.optimistic_update(20)
    assert pr.next_idx == 21


# (state, matched, next_idx, rejected, match_hint, expected return, next_idx after)
MAYBE_DECR_TO = [
    # Replicate: a rejection at or below matched answers an old message: stale.
    (ProgressState.Replicate, 5, 10, 5, 5, False, 10),
    (ProgressState.Replicate, 5, 10, 4, 4, False, 10),
    # Replicate: a rejection past matched sends us back to matched + 1.
    (ProgressState.Replicate, 5, 10, 9, 9, True, 6),
    # Probe: only the answer to the outstanding probe (next_idx - 1) counts.
    (ProgressState.Probe, 0, 10, 8, 8, False, 10),
    (ProgressState.Probe, 0, 10, 10, 10, False, 10),
    # Probe: back off to the follower's hint...
    (ProgressState.Probe, 0, 10, 9, 9, True, 9),
    (ProgressState.Probe, 0, 10, 9, 2, True, 3),
    # ...but never forward past the rejected index...
    (ProgressState.Probe, 0, 10, 9, 20, True, 9),
    # ...and never below 1.
    (ProgressState.Probe, 0, 1, 0, 0, True, 1),
]


@pytest.mark.parametrize(("state", "matched", "next_idx", "rejected", "hint", "ok", "next_after"),
                         MAYBE_DECR_TO)
def test_maybe_decr_to(state, matched, next_idx, rejected, hint, ok, next_after):
    """Thesis §3.5: after a rejection the leader decrements nextIndex and retries."""
    pr = progress(state, matched=matched, next_idx=next_idx, paused=True)
    assert pr.maybe_decr_to(rejected, hint, INVALID_INDEX) is ok
    assert pr.next_idx == next_after
    if state is ProgressState.Probe:
        # A rejection that counts unpauses the probe so the retry goes out at once.
        assert pr.paused is (not ok)
    assert pr.pending_request_snapshot == INVALID_INDEX


def test_maybe_decr_to_request_snapshot_in_replicate():
    pr = progress(ProgressState.Replicate, matched=5, next_idx=10)
    # Even a rejection of matched counts when it requests a snapshot.
    assert pr.maybe_decr_to(5, 5, 7)
    assert pr.pending_request_snapshot == 7
    assert pr.next_idx == 10   # next_idx is not decreased for a snapshot request


def test_maybe_decr_to_request_snapshot_in_probe():
    pr = progress(ProgressState.Probe, matched=0, next_idx=10, paused=True)
    # Not the outstanding probe, but a snapshot request is never stale.
    assert pr.maybe_decr_to(3, 3, 7)
    assert pr.pending_request_snapshot == 7 and pr.next_idx == 10 and not pr.paused
    # A pending request is not overwritten.
    assert pr.maybe_decr_to(3, 3, 8)
    assert pr.pending_request_snapshot == 7


def test_reset_starts_over_as_a_new_leader():
    pr = progress(ProgressState.Replicate, matched=7, next_idx=9, ins=[8])
    pr.recent_active = True
    pr.pending_request_snapshot = 3
    pr.reset(20)
    assert (pr.state, pr.matched, pr.next_idx, pr.ins.count()) == (
        ProgressState.Probe, 0, 20, 0)
    assert not pr.recent_active and pr.pending_request_snapshot == INVALID_INDEX


def test_repr_names_state_and_indexes():
    text = repr(progress(ProgressState.Replicate, matched=3, next_idx=4))
    assert "Replicate" in text and "matched=3" in text and "next_idx=4" in text
