"""Snapshots on the node: staging the ones received, streaming the ones sent.

A follower receives a snapshot as a stream of chunks (peer_service.py), which the
storage writes to a staged file beside the database; the MsgSnapshot that goes with it
is then queued to be stepped like any message. Raft decides when it steps the message
whether to restore the snapshot (thesis §5.3: only one beyond its commit index), and
the Ready that carries a restored snapshot hands it to the persister, which installs
the staged file. Between those points the file is kept here.

Several snapshots may be delivered before one round steps them (issue 11, item 2): a
snapshot at 100 from the term-5 leader, then one at 90 from the term-6 leader. Raft
restores the first and ignores the second, so every file whose message has not been
stepped must be kept — not only the newest — and those stepped but not restored are
deleted once the round's Ready has been taken.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.storage import StagedSnapshot

from . import storage_adapter as sa

log = logging.getLogger("kvraft.server.node")

# Staged snapshots whose MsgSnapshot waits to be stepped. Each new leader (one per term)
# sends at most one at a time, so a few cover every leader change between two rounds;
# beyond that a snapshot is refused (its sender retries, as for any lost message).
STAGED_SNAPSHOTS_MAX = 4

SnapshotKey = tuple[int, int]   # (index, term) of a snapshot's metadata


def snapshot_key(snapshot: eraftpb.Snapshot) -> SnapshotKey:
    return snapshot.metadata.index, snapshot.metadata.term


class SnapshotStaging:
    """Staged snapshot files by (index, term), from delivery to install or discard.

    Holds, always:
    * `_pending`: delivered, their MsgSnapshot is in the node's inbound messages, not
      yet stepped (Raft may still restore any of them); at most STAGED_SNAPSHOTS_MAX.
    * `_stepped`: only during a round (between `begin_round` and `end_round`): those
      whose message this round stepped. Raft restored at most one of them, which the
      round's Ready carries (`take`); the others were ignored (older than the commit
      index, or from a stale term) and are deleted by `end_round`. Empty between
      rounds.
    Every staged file is in exactly one of them, installed (taken), or deleted.
    """

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._pending: dict[SnapshotKey, StagedSnapshot] = {}
        self._stepped: dict[SnapshotKey, StagedSnapshot] = {}

    def stage(self, msg: eraftpb.Message, staged: StagedSnapshot) -> bool:
        """Keep `staged` for `msg` (a MsgSnapshot about to be queued); False (file
        deleted) when too many wait already — the leader sends it again later."""
        meta = msg.snapshot.metadata
        key = (meta.index, meta.term)
        previous = self._pending.pop(key, None)
        if previous is not None:
            # The same snapshot twice (a retry): Raft restores it at most once, from
            # either message; keep the newer file.
            sa.discard_staged(previous)
        elif len(self._pending) >= STAGED_SNAPSHOTS_MAX:
            log.warning("node %d: refused snapshot at index %d term %d: %d snapshots "
                        "already wait to be stepped", self.node_id, meta.index, meta.term,
                        len(self._pending))
            sa.discard_staged(staged)
            return False
        self._pending[key] = staged
        return True

    def begin_round(self) -> None:
        """The round is about to step every inbound message, so every pending one."""
        assert not self._stepped, "a round began before the last one ended"
        self._stepped, self._pending = self._pending, {}

    def take(self, snapshot: eraftpb.Snapshot) -> StagedSnapshot:
        """The staged file of the snapshot Raft restored (this round's Ready carries it)."""
        key = snapshot_key(snapshot)
        staged = self._stepped.pop(key, None)
        assert staged is not None, f"snapshot {key} in Ready was never staged"
        return staged

    def end_round(self) -> None:
        """After the round's Ready was taken: the snapshots whose messages it stepped
        and Raft did not restore can never be restored (their messages are gone)."""
        for staged in self._stepped.values():
            sa.discard_staged(staged)
        self._stepped.clear()


def snapshot_chunks(store: sa.Store, msg: eraftpb.Message, chunk_bytes: int
                    ) -> Iterator[bytes]:
    """The image of the snapshot a MsgSnapshot names, in chunks (leader side)."""
    meta = msg.snapshot.metadata
    handle = store.sm.snapshot_handle(meta.index, meta.term)
    if handle is None:
        raise RuntimeError(f"no snapshot image at index {meta.index} term {meta.term}")
    return iter(handle.chunks(chunk_bytes))
