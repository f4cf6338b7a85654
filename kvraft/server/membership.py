"""Membership on the node: the configuration, member changes, and addresses.

Two configurations are kept, because a conf change takes effect in two places at two
times. Raft's (`raft_conf_state`) changes when the committed entry is handed out — on
the loop, which owns the RawNode, in log order (`RawNode.apply_conf_change`). The
state machine's (`conf_state`, what the node answers about members) changes when the
apply task has applied the entry, which writes the ConfState Raft reached with the
applied index (`conf_state_of`, on the apply lane).

Addresses: the transport's peers are the member records' peer addresses (replicated),
completed by `--initial-cluster` and by the addresses peers announce in their batches
(a member added later is reachable before its record arrives here). Each member also
publishes its own addresses and data-directory incarnation once a leader exists
(`publish`): a normal entry (storage MemberUpdate), never a conf change, so a publish
proposed before this member was promoted or demoted and applied after cannot change
its role back (issue 11, item 5).
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Protocol

import grpc

from kvraft import raft
from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.raft import RawNode
from kvraft.storage import ApplyResult, MemberRecord

from . import storage_adapter as sa
from .config import NodeConfig
from .waiters import NodeError, Proposal

log = logging.getLogger("kvraft.server.node")


class AddressBook(Protocol):
    """What membership needs of the transport."""

    def set_addresses(self, addresses: dict[int, str]) -> None: ...
    def address_of(self, peer_id: int) -> str | None: ...


def ids_of(cs: eraftpb.ConfState) -> set[int]:
    return set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing) | set(cs.learners_next)


class Membership:
    """This node's view of the members.

    Holds, always:
    * `conf_state`: the configuration the state machine applied last (or the restored
      snapshot's); `_ids` = ids_of(conf_state).
    * `raft_conf_state`: Raft's configuration after the last conf change handed out
      (or restored); it is `conf_state` once the apply task caught up.
    * `_handed_out`: index -> the ConfState Raft reached at that conf-change entry, for
      every conf change handed out whose apply has not completed; the apply lane
      reads it (`conf_state_of`), the loop removes what was applied (`forget_applied`).
    * `_refused`: index -> why Raft refused the conf change at that index (every node
      refuses the same change the same way: it is deterministic), until its apply.
    * `_extra_addresses`: peer addresses not (yet) in a member record.
    * `_published`: this node's record holds its current addresses and incarnation;
      until then a publish is proposed every election timeout or so (jittered), from
      `_next_publish_tick` on.
    """

    def __init__(self, config: NodeConfig, store: sa.Store, addresses: AddressBook,
                 rng: random.Random, new_request_id: Callable[[], int]) -> None:
        self.node_id = config.node_id
        self.config = config
        self.store = store
        self._addresses = addresses
        self._rng = rng
        self._new_request_id = new_request_id
        self.conf_state: eraftpb.ConfState = store.log.initial_state().conf_state
        self._ids = ids_of(self.conf_state)
        self.raft_conf_state: eraftpb.ConfState = self.conf_state
        self._handed_out: dict[int, eraftpb.ConfState] = {}
        self._refused: dict[int, str] = {}
        self._extra_addresses: dict[int, str] = dict(config.initial_cluster)
        self._published = False
        self._next_publish_tick = 0
        self._members_version_seen = store.sm.members_version

    # ----------------------------------------------------------------- queries
    def is_member(self, peer_id: int) -> bool:
        return peer_id in self._ids

    def member_ids(self) -> set[int]:
        return set(self._ids)

    def learner_ids(self) -> set[int]:
        return set(self.conf_state.learners) | set(self.conf_state.learners_next)

    def is_learner(self, peer_id: int) -> bool:
        """`peer_id in learner_ids()`, without building the set (asked by every call
        on the client port: etcd/learner.py)."""
        cs = self.conf_state
        return peer_id in cs.learners or peer_id in cs.learners_next

    def members(self) -> list[MemberRecord]:
        return self.store.sm.members()

    # --------------------------------------------------------------- addresses
    def refresh_addresses(self) -> None:
        addresses = dict(self._extra_addresses)
        for m in self.store.sm.members():
            if m.peer_address:
                addresses[m.id] = m.peer_address
        self._addresses.set_addresses(addresses)

    def learn_address(self, peer_id: int, address: str) -> None:
        if address and self._addresses.address_of(peer_id) is None and \
                peer_id != self.node_id:
            self._extra_addresses[peer_id] = address
            self.refresh_addresses()

    def refresh_if_records_changed(self) -> None:
        """Member records change by normal entries too (a publish), which do not pass
        through `on_conf_change_applied`: hand the transport what others published."""
        version = self.store.sm.members_version
        if version != self._members_version_seen:
            self._members_version_seen = version
            self.refresh_addresses()

    # ---------------------------------------------------- conf changes (loop)
    def hand_out(self, raw: RawNode, entry: eraftpb.Entry) -> None:
        """A committed conf-change entry is handed to the apply task: it takes effect
        in Raft now, in log order."""
        cc: eraftpb.ConfChange | eraftpb.ConfChangeV2
        if entry.entry_type == eraftpb.EntryConfChange:
            cc = eraftpb.ConfChange.FromString(entry.data)
        else:
            cc = eraftpb.ConfChangeV2.FromString(entry.data)
        try:
            self.raft_conf_state = raw.apply_conf_change(cc)
        except raft.RaftError as e:
            self._refused[entry.index] = str(e)
        self._handed_out[entry.index] = self.raft_conf_state

    def conf_state_of(self, entry: eraftpb.Entry) -> eraftpb.ConfState:
        """KVStateMachine.apply's callback (apply lane): the ConfState Raft reached when
        the entry was handed out, written with the applied index."""
        cs = self._handed_out.get(entry.index)
        assert cs is not None, f"conf change at {entry.index} was never handed out"
        return cs

    def forget_applied(self, applied: int) -> None:
        for index in [i for i in self._handed_out if i <= applied]:
            del self._handed_out[index]

    def on_conf_change_applied(self, entry: eraftpb.Entry, result: ApplyResult,
                               p: Proposal | None, term: int) -> None:
        refused = self._refused.pop(entry.index, None)
        if refused is not None:
            log.warning("node %d: member change at index %d refused: %s",
                        self.node_id, entry.index, refused)
            if p is not None:
                p.fail(NodeError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"member change refused: {refused}"))
            return
        cs = result.conf_state if result.conf_state is not None else self.conf_state
        self._set_conf_state(cs)
        self.refresh_addresses()
        if entry.entry_type == eraftpb.EntryConfChange:
            cc = eraftpb.ConfChange.FromString(entry.data)
            what = {eraftpb.AddNode: "voter", eraftpb.RemoveNode: "removed",
                    eraftpb.AddLearnerNode: "learner"}.get(cc.change_type, "changed")
            log.info("node %d: member change at index %d: node %d %s (term %d);"
                     " voters %s learners %s", self.node_id, entry.index, cc.node_id, what,
                     term, sorted(cs.voters), sorted(cs.learners))
            if cc.change_type == eraftpb.RemoveNode and cc.node_id == self.node_id:
                log.warning("node %d: this node was removed from the cluster", self.node_id)
        if p is not None:
            p.resolve(cs)

    def on_snapshot_restored(self, snapshot: eraftpb.Snapshot) -> None:
        """Raft restored a snapshot (its Ready was taken): its configuration is Raft's."""
        self.raft_conf_state = snapshot.metadata.conf_state

    def on_snapshot_installed(self, snapshot: eraftpb.Snapshot) -> None:
        """The persister installed it: the state machine's configuration too."""
        self._set_conf_state(snapshot.metadata.conf_state)
        self.refresh_addresses()

    def _set_conf_state(self, cs: eraftpb.ConfState) -> None:
        self.conf_state = cs
        self._ids = ids_of(cs)

    # -------------------------------------------------------------- publishing
    def publish(self, tick_count: int, election_tick: int) -> Proposal | str | None:
        """Called every tick once a leader is known: a publish of this member's own
        addresses and incarnation to propose (a Proposal), the line to exit with if the
        cluster's records hold another incarnation for this member (issue 11, item 7:
        this directory replaced the member's), or None (nothing to do now)."""
        if self._published or tick_count < self._next_publish_tick:
            return None
        # Founding members publish at once; retries (the publish was lost with a
        # leader) are spread out with jitter so the members do not all retry together.
        self._next_publish_tick = tick_count + election_tick + \
            self._rng.randrange(election_tick)
        if self.node_id not in self._ids:
            return None
        incarnation = self.store.datadir.incarnation
        mine = self.store.sm.member(self.node_id)
        if mine is not None:
            replaced = sa.replaced_member(self.store, self.node_id, incarnation)
            if replaced is not None:
                return replaced
            if (mine.client_address, mine.peer_address, mine.incarnation) == (
                    self.config.client_address, self.config.peer_address, incarnation):
                self._published = True
                return None
        request_id = self._new_request_id()
        return Proposal(request_id=request_id, data=sa.publish_self_command(
            request_id, self.node_id, self.config.peer_address, self.config.client_address,
            incarnation))
