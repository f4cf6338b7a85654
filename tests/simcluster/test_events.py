"""The simulation's event-order check fails on the histories it exists to catch."""
from __future__ import annotations

from kvraft.raft import eraftpb
from kvraft.storage import ApplyResult, mvcc
from tests.simcluster.events import EventOrder


class _Node:
    def __init__(self) -> None:
        self.apply_listeners: list = []


def put_result(index: int, revision: int, key: bytes, value: bytes) -> ApplyResult:
    event = mvcc.Event(mvcc.EventType.PUT, mvcc.KeyValue(key, revision, revision, 1, value))
    return ApplyResult(index, 1, 0, "put", events=(event,), revision=revision)


def feed(order: EventOrder, node: _Node, results: list[ApplyResult]) -> None:
    entries = [eraftpb.Entry(index=r.index) for r in results]
    for listener in node.apply_listeners:
        listener(entries, results)


def test_the_same_history_on_two_members_passes() -> None:
    failures: list[str] = []
    order, a, b = EventOrder(failures.append), _Node(), _Node()
    order.attach(1, a)  # type: ignore[arg-type]
    order.attach(2, b)  # type: ignore[arg-type]
    history = [put_result(i, i + 1, b"k", b"v%d" % i) for i in range(1, 5)]
    feed(order, a, history)
    feed(order, b, history[:2])
    feed(order, b, history[2:])
    assert failures == [] and order.events_seen == 8


def test_a_gap_in_one_members_stream_fails() -> None:
    failures: list[str] = []
    order, a = EventOrder(failures.append), _Node()
    order.attach(1, a)  # type: ignore[arg-type]
    feed(order, a, [put_result(1, 2, b"k", b"1"), put_result(3, 4, b"k", b"3")])
    assert failures and "revision 4 right after revision 2" in failures[0]


def test_two_members_disagreeing_on_a_revision_fails() -> None:
    failures: list[str] = []
    order, a, b = EventOrder(failures.append), _Node(), _Node()
    order.attach(1, a)  # type: ignore[arg-type]
    order.attach(2, b)  # type: ignore[arg-type]
    feed(order, a, [put_result(1, 2, b"k", b"1")])
    feed(order, b, [put_result(1, 2, b"k", b"other")])
    assert failures and "revision 2" in failures[0]


def test_a_snapshot_install_starts_a_new_run() -> None:
    failures: list[str] = []
    order, a = EventOrder(failures.append), _Node()
    order.attach(1, a)  # type: ignore[arg-type]
    feed(order, a, [put_result(1, 2, b"k", b"1")])
    for listener in a.apply_listeners:
        listener([], [])
    feed(order, a, [put_result(9, 7, b"k", b"7")])
    assert failures == []
