"""Pure parts of kvraft.server: configuration checks, the cluster id, the bootstrap
entries, and how queued Readys merge into one write."""
from __future__ import annotations

import asyncio

import pytest

from kvraft.proto import eraftpb_pb2 as eraftpb
from kvraft.server import NodeConfig, ServeError
from kvraft.server.config import (
    cluster_id_for,
    parse_address,
    parse_duration_s,
    parse_warning_apply_duration,
)
from kvraft.server.metrics import NodeMetrics
from kvraft.server.persist import PersistJob, merge_jobs
from kvraft.server.proposals import Proposals
from kvraft.server.storage_adapter import bootstrap_entries, member_conf_change
from kvraft.server.waiters import Proposal, unavailable, wait_expired
from kvraft.storage import commands


def config(**overrides: object) -> NodeConfig:
    base: dict[str, object] = dict(node_id=1, data_dir="/tmp/x", listen="127.0.0.1:1",
                                   peer_listen="127.0.0.1:2",
                                   initial_cluster={1: "127.0.0.1:2"})
    base.update(overrides)
    return NodeConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:2379", ("127.0.0.1", 2379)),
    ("localhost:1", ("localhost", 1)),
    ("[::1]:65535", ("::1", 65535)),
])
def test_well_formed_addresses_parse(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "host", "host:", ":80", "h:0", "h:65536", "h:x",
                                     "a b:1", "[zz]:1"])
def test_malformed_addresses_are_one_line_errors(address: str) -> None:
    with pytest.raises(ServeError) as info:
        parse_address(address, "--listen address")
    assert "\n" not in str(info.value) and "--listen address" in str(info.value)


@pytest.mark.parametrize("overrides, reason", [
    (dict(node_id=0), "positive"),
    (dict(listen="127.0.0.1:2"), "must differ"),
    (dict(initial_cluster={2: "127.0.0.1:2"}), "does not list this node"),
    (dict(initial_cluster={}), "empty"),
    (dict(initial_cluster={1: "nope"}), "malformed"),
    (dict(metrics_listen="x"), "malformed"),
    (dict(election_tick=2, heartbeat_tick=2), "election ticks"),
    (dict(read_mode="fast"), "unknown read mode"),
    (dict(read_mode="lease", election_tick=5, heartbeat_tick=2), "would not outlast"),
    (dict(warning_apply_duration_s=0.0), "--warning-apply-duration must be positive"),
])
def test_bad_configs_are_refused(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(ServeError, match=reason):
        config(**overrides).validate()


@pytest.mark.parametrize("text, seconds", [
    ("100ms", 0.1), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("1h30m", 5400.0), (".5s", 0.5),
    ("0", 0.0),
])
def test_durations_parse_as_etcd_flags_take_them(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0.25", "ms", "1x", "1.2.3s", "1 s", "s1", "1s2", "abc"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text)


@pytest.mark.parametrize("text", ["0", "0ms", "1x", ""])
def test_a_bad_warning_apply_duration_is_a_one_line_error(text: str) -> None:
    with pytest.raises(ServeError) as info:
        parse_warning_apply_duration(text)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--warning-apply-duration {text!r}:")


def test_a_joining_node_needs_no_initial_cluster() -> None:
    config(join=True, initial_cluster={}).validate()


def test_cluster_id_is_the_same_for_every_founding_member_and_differs_per_cluster() -> None:
    a = {1: "h:1", 2: "h:2", 3: "h:3"}
    assert cluster_id_for(a) == cluster_id_for(dict(reversed(list(a.items()))))
    assert cluster_id_for(a) != cluster_id_for({1: "h:1", 2: "h:2", 3: "h:4"})
    assert 0 < cluster_id_for(a) < 1 << 64


def test_bootstrap_entries_add_every_founding_member_then_set_the_cluster_version() -> None:
    entries = bootstrap_entries({3: "h:3", 1: "h:1"})
    assert [(e.index, e.term) for e in entries] == [(1, 1), (2, 1), (3, 1)]
    assert commands.decode_command(entries[2].data).cluster_version.version == 2
    assert [(e.index, e.term) for e in bootstrap_entries({3: "h:3", 1: "h:1"},
                                                         cluster_version=False)] == [
        (1, 1), (2, 1)]
    added = [eraftpb.ConfChange.FromString(e.data) for e in entries[:2]]
    assert [(c.change_type, c.node_id) for c in added] == [(eraftpb.AddNode, 1),
                                                           (eraftpb.AddNode, 3)]
    assert commands.decode_members(entries[1].context)[0].peer_address == "h:3"


def test_member_conf_changes() -> None:
    learner = member_conf_change(4, "h:4", "c:4", True, add=True, cc_id=9)
    assert (learner.change_type, learner.id) == (eraftpb.AddLearnerNode, 9)
    assert commands.decode_members(learner.context)[0].client_address == "c:4"
    remove = member_conf_change(4, "", "", False, add=False, cc_id=10)
    assert remove.change_type == eraftpb.RemoveNode and remove.context == b""


def job(number: int, first: int, count: int, term: int = 1,
        commit: int | None = None) -> PersistJob:
    entries = [eraftpb.Entry(index=first + i, term=term) for i in range(count)]
    hs = None if commit is None else eraftpb.HardState(term=term, commit=commit)
    return PersistJob(number, entries, hs, None, None, [])


def test_queued_readys_merge_into_one_write() -> None:
    entries, hs = merge_jobs([job(1, 1, 2, commit=0), job(2, 3, 2), job(3, 5, 1, commit=3)])
    assert [e.index for e in entries] == [1, 2, 3, 4, 5]
    assert hs is not None and hs.commit == 3


def test_a_later_ready_replaces_the_suffix_it_overlaps() -> None:
    """Thesis §5.3: a conflicting suffix is replaced by the new leader's entries."""
    entries, _ = merge_jobs([job(1, 5, 4, term=2), job(2, 7, 1, term=3)])
    assert [(e.index, e.term) for e in entries] == [(5, 2), (6, 2), (7, 3)]
    entries, _ = merge_jobs([job(1, 5, 2, term=2), job(2, 4, 1, term=3)])
    assert [(e.index, e.term) for e in entries] == [(4, 3)]


def test_a_write_that_ends_in_an_error_counts_once_as_a_failed_proposal() -> None:
    """kvraft_proposals_failed_total (etcd_server_proposals_failed_total) counts the
    accepted writes whose wait ended in an error — not those applied, nor those whose
    client went away — and each once, however often its end is reported."""
    async def scenario() -> float | None:
        metrics = NodeMetrics()
        proposals = Proposals(1, config(), metrics)
        lost, expired, applied, abandoned = (Proposal(request_id=i) for i in range(1, 5))
        for p in (lost, expired, applied, abandoned):
            proposals.add_write(p)
        lost.fail(unavailable("lost the leader"))
        expired.fail(wait_expired())
        applied.resolve(object())
        abandoned.future.cancel()
        for p in (lost, expired, applied, abandoned, lost):
            proposals.forget(p)
        assert not proposals.writes
        return metrics.registry.get_sample_value("kvraft_proposals_failed_total")

    assert asyncio.run(scenario()) == 2


def test_metrics_carry_the_process_resident_memory_as_etcds_do() -> None:
    """`etcdctl check datascale` reads process_resident_memory_bytes from /metrics."""
    resident = NodeMetrics().registry.get_sample_value("process_resident_memory_bytes")
    assert resident is not None and resident > 0
