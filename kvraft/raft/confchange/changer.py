"""Computes the configuration that a membership change leads to, and validates it.

Thesis §4.1 allows changing one voter at a time directly ("simple"); anything larger
goes through a joint configuration C_old,new (§4.3): enter it, and once it is committed
leave it for C_new. The `Changer` never mutates the tracker: it returns the new
`Configuration` and the progress-table edits (`MapChange`), which the caller installs
with `ProgressTracker.apply_conf` when the change entry is applied.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft.errors import ConfChangeError
from kvraft.raft.tracker import Configuration, MapChange, MapChangeType, ProgressTracker

__all__ = ["Changer", "MapChange", "MapChangeType"]


class _ProgressIds:
    """The set of tracked peer ids as edited by a change, over the tracker's table.

    Only the net effect is reported: a peer removed and re-added (e.g. a voter demoted
    to learner) keeps its existing `Progress`.
    """

    def __init__(self, base: Iterable[int]) -> None:
        self._base = frozenset(base)
        self._present = set(self._base)
        self._touched: list[int] = []   # first-touch order, for a stable MapChange

    def __contains__(self, peer_id: int) -> bool:
        return peer_id in self._present

    def add(self, peer_id: int) -> None:
        self._touch(peer_id)
        self._present.add(peer_id)

    def remove(self, peer_id: int) -> None:
        self._touch(peer_id)
        self._present.discard(peer_id)

    def _touch(self, peer_id: int) -> None:
        if peer_id not in self._touched:
            self._touched.append(peer_id)

    def changes(self) -> MapChange:
        changes: MapChange = []
        for peer_id in self._touched:
            now, before = peer_id in self._present, peer_id in self._base
            if now and not before:
                changes.append((peer_id, MapChangeType.Add))
            elif before and not now:
                changes.append((peer_id, MapChangeType.Remove))
        return changes


class Changer:
    """Validates and computes membership changes against a tracker's configuration."""

    def __init__(self, tracker: ProgressTracker) -> None:
        self.tracker = tracker

    def enter_joint(self, auto_leave: bool, ccs: Iterable[eraftpb.ConfChangeSingle],
                    ) -> tuple[Configuration, MapChange]:
        """Thesis §4.3: move to C_old,new. The current voters become the outgoing half;
        `ccs` are applied to the incoming half. With `auto_leave` the leader proposes
        leaving as soon as the joint configuration is committed."""
        cfg, prs = self._check_and_copy()
        if cfg.is_joint():
            raise ConfChangeError("configuration is already joint; leave it first")
        if not cfg.voters.incoming.ids:
            # A joint config with an empty half could never decide anything safely.
            raise ConfChangeError("cannot make a zero-voter configuration joint")
        cfg.voters.outgoing.ids = set(cfg.voters.incoming.ids)
        self._apply(cfg, prs, ccs)
        cfg.auto_leave = auto_leave
        _check_invariants(cfg, prs)
        return cfg, prs.changes()

    def leave_joint(self) -> tuple[Configuration, MapChange]:
        """Thesis §4.3: C_old,new is committed, move to C_new. Voters of C_old that
        were demoted become learners; peers in no configuration are forgotten."""
        cfg, prs = self._check_and_copy()
        if not cfg.is_joint():
            raise ConfChangeError("cannot leave a non-joint configuration")
        cfg.learners |= cfg.learners_next
        cfg.learners_next = set()
        for peer_id in cfg.voters.outgoing.ids:
            if peer_id not in cfg.voters.incoming.ids and peer_id not in cfg.learners:
                prs.remove(peer_id)
        cfg.voters.outgoing.ids = set()
        cfg.auto_leave = False
        _check_invariants(cfg, prs)
        return cfg, prs.changes()

    def simple(self, ccs: Iterable[eraftpb.ConfChangeSingle],
               ) -> tuple[Configuration, MapChange]:
        """Thesis §4.1: a change of at most one voter, applied directly. Any two
        majorities of the old and new voter sets then overlap, so no two leaders can be
        elected for one term; a larger change must use `enter_joint`. Learner
        changes never affect quorums and are unrestricted."""
        cfg, prs = self._check_and_copy()
        if cfg.is_joint():
            raise ConfChangeError("cannot apply a simple change to a joint configuration")
        before = set(cfg.voters.incoming.ids)
        self._apply(cfg, prs, ccs)
        changed = before ^ cfg.voters.incoming.ids
        if len(changed) > 1:
            raise ConfChangeError(
                f"more than one voter changed without joint consensus: {sorted(changed)}")
        _check_invariants(cfg, prs)
        return cfg, prs.changes()

    def _check_and_copy(self) -> tuple[Configuration, _ProgressIds]:
        cfg = self.tracker.conf.clone()
        prs = _ProgressIds(self.tracker.progress.keys())
        _check_invariants(cfg, prs)
        return cfg, prs

    def _apply(self, cfg: Configuration, prs: _ProgressIds,
               ccs: Iterable[eraftpb.ConfChangeSingle]) -> None:
        for cc in ccs:
            if cc.node_id == 0:
                continue  # id 0 is never a node: a no-op, as in etcd/raft-rs
            if cc.change_type == eraftpb.AddNode:
                _make_voter(cfg, prs, cc.node_id)
            elif cc.change_type == eraftpb.AddLearnerNode:
                _make_learner(cfg, prs, cc.node_id)
            elif cc.change_type == eraftpb.RemoveNode:
                _remove(cfg, prs, cc.node_id)
            else:
                raise ConfChangeError(f"unknown conf change type {cc.change_type}")
        if not cfg.voters.incoming.ids:
            raise ConfChangeError("removed all voters")


def _make_voter(cfg: Configuration, prs: _ProgressIds, peer_id: int) -> None:
    """Add a voter to the incoming half, promoting a learner (thesis §4.2.1: a
    learner caught up on the log is promoted without a window of unavailability)."""
    cfg.voters.incoming.ids.add(peer_id)
    cfg.learners.discard(peer_id)
    cfg.learners_next.discard(peer_id)
    prs.add(peer_id)


def _make_learner(cfg: Configuration, prs: _ProgressIds, peer_id: int) -> None:
    """Add a learner (thesis §4.2.1), or demote a voter to one."""
    if peer_id in cfg.learners:
        return
    _remove(cfg, prs, peer_id)
    prs.add(peer_id)  # keep (or create) its progress: it still receives the log
    if peer_id in cfg.voters.outgoing.ids:
        # Still a voter of C_old: it cannot be a learner too until C_old is left.
        cfg.learners_next.add(peer_id)
    else:
        cfg.learners.add(peer_id)


def _remove(cfg: Configuration, prs: _ProgressIds, peer_id: int) -> None:
    cfg.voters.incoming.ids.discard(peer_id)
    cfg.learners.discard(peer_id)
    cfg.learners_next.discard(peer_id)
    # A voter of C_old keeps its progress: the outgoing half still counts its acks.
    if peer_id not in cfg.voters.outgoing.ids:
        prs.remove(peer_id)


def _check_invariants(cfg: Configuration, prs: _ProgressIds) -> None:
    """What every configuration satisfies (raised as ConfChangeError rather than
    asserted: an application can feed us a bad ConfState)."""
    members = cfg.voters.ids() | cfg.learners | cfg.learners_next
    for peer_id in sorted(members):
        if peer_id not in prs:
            raise ConfChangeError(f"no progress for member {peer_id}")
    for peer_id in sorted(cfg.learners_next):
        if peer_id not in cfg.voters.outgoing.ids:
            raise ConfChangeError(f"{peer_id} is in learners_next but not an outgoing voter")
    for peer_id in sorted(cfg.learners):
        if cfg.voters.contains(peer_id):
            raise ConfChangeError(f"{peer_id} is both a learner and a voter")
    # (learners_next outside a joint configuration is caught above: no outgoing voters.)
    if not cfg.is_joint() and cfg.auto_leave:
        raise ConfChangeError("auto_leave is set outside a joint configuration")
