"""The linearizability checker on hand-written histories and on generated ones.

Hand-written histories name the anomaly they contain; times are seconds. A generated
history comes from a simulated register that is linearizable by construction: each
operation takes effect at a random instant between its invocation and its completion.
"""

from __future__ import annotations

import dataclasses
import random
import time

import pytest

from tests.chaos.linearizability import Kind, Op, check

K = b"k"


class H:
    """A small builder for hand-written histories."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def _add(self, **kw: object) -> None:
        self.ops.append(Op(id=len(self.ops), key=kw.pop("key", K), **kw))  # type: ignore[arg-type]

    def put(self, c: int, t0: float, t1: float | None, v: bytes, key: bytes = K) -> H:
        self._add(client=c, kind=Kind.PUT, invoke_s=t0, complete_s=t1, value=v, key=key)
        return self

    def get(self, c: int, t0: float, t1: float | None, r: bytes | None, key: bytes = K) -> H:
        self._add(client=c, kind=Kind.GET, invoke_s=t0, complete_s=t1, result=r, key=key)
        return self

    def cas(
        self, c: int, t0: float, t1: float | None, e: bytes | None, v: bytes, ok: bool | None
    ) -> H:
        self._add(
            client=c, kind=Kind.CAS, invoke_s=t0, complete_s=t1, expected=e, value=v, result=ok
        )
        return self


# -- linearizable histories ---------------------------------------------------------------


def test_sequential_history_is_linearizable() -> None:
    h = H().get(1, 0, 1, None).put(1, 2, 3, b"a").get(1, 4, 5, b"a").cas(1, 6, 7, b"a", b"b", True)
    h.cas(1, 8, 9, b"a", b"c", False).get(1, 10, 11, b"b").cas(1, 12, 13, b"b", b"d", True)
    assert check(h.ops).ok


def test_overlapping_reads_may_see_either_side_of_a_concurrent_write() -> None:
    # put(b) spans [2, 6]; reads inside it may see a or b, but once one read saw b a
    # read that starts after it must not see a.
    h = H().put(1, 0, 1, b"a").put(1, 2, 6, b"b").get(2, 3, 4, b"a").get(3, 3.5, 5, b"b")
    h.get(2, 5.5, 7, b"b")
    assert check(h.ops).ok


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    h = H().put(1, 0, 5, b"a").put(2, 1, 4, b"b").get(3, 6, 7, b"a")
    assert check(h.ops).ok
    h = H().put(1, 0, 5, b"a").put(2, 1, 4, b"b").get(3, 6, 7, b"b")
    assert check(h.ops).ok


def test_indeterminate_write_may_take_effect_late() -> None:
    # put(b) timed out at 2 but took effect at some point after 5: reads see a, then b.
    h = H().put(1, 0, 1, b"a").put(2, 1.5, None, b"b").get(3, 3, 4, b"a").get(3, 6, 7, b"b")
    assert check(h.ops).ok


def test_indeterminate_write_may_never_take_effect() -> None:
    h = H().put(1, 0, 1, b"a").put(2, 1.5, None, b"b").get(3, 3, 4, b"a").get(3, 60, 61, b"a")
    assert check(h.ops).ok


def test_indeterminate_cas_is_either_applied_or_not() -> None:
    h = H().put(1, 0, 1, b"a").cas(2, 2, None, b"a", b"b", None).get(3, 3, 4, b"b")
    assert check(h.ops).ok
    h = H().put(1, 0, 1, b"a").cas(2, 2, None, b"a", b"b", None).get(3, 3, 4, b"a")
    assert check(h.ops).ok


def test_indeterminate_read_is_ignored() -> None:
    h = H().put(1, 0, 1, b"a").get(2, 2, None, b"zzz")
    assert check(h.ops).ok


def test_cas_on_absent_key() -> None:
    h = H().cas(1, 0, 1, None, b"a", True).cas(2, 2, 3, None, b"b", False).get(1, 4, 5, b"a")
    assert check(h.ops).ok


def test_keys_are_checked_independently() -> None:
    h = H().put(1, 0, 1, b"a", key=b"x").put(1, 2, 3, b"b", key=b"y").get(2, 4, 5, b"a", b"x")
    h.get(2, 6, 7, b"b", key=b"y")
    result = check(h.ops)
    assert result.ok and result.keys_checked == 2 and result.ops_checked == 4


# -- non-linearizable histories ---------------------------------------------------------


def _only_violation(h: H) -> list[int]:
    result = check(h.ops)
    assert not result.ok
    assert len(result.violations) == 1
    v = result.violations[0]
    assert v.key == K
    assert "NOT linearizable" in result.describe()
    return sorted(op.id for op in v.window)


def test_stale_read_is_a_violation() -> None:
    # put(b) was acknowledged at 3; a read that starts at 4 still sees a.
    h = H().put(1, 0, 1, b"a").put(1, 2, 3, b"b").get(2, 4, 5, b"a")
    assert _only_violation(h) == [1, 2]


def test_stale_read_after_a_fresh_read_is_a_violation() -> None:
    # Both reads overlap the write, but the second starts after the first saw b.
    h = H().put(1, 0, 1, b"a").put(1, 2, 10, b"b").get(2, 3, 4, b"b").get(3, 5, 6, b"a")
    assert _only_violation(h) == [1, 2, 3]


def test_lost_acknowledged_write_is_a_violation() -> None:
    h = H().put(1, 0, 1, b"a").put(2, 2, 3, b"b").get(3, 10, 11, None)
    assert _only_violation(h) == [1, 2]


def test_read_of_a_value_never_written_is_a_violation() -> None:
    h = H().put(1, 0, 1, b"a").get(2, 2, 3, b"a").get(2, 4, 5, b"ghost").get(2, 6, 7, b"a")
    assert _only_violation(h) == [2]


def test_cas_that_succeeded_against_a_stale_value_is_a_violation() -> None:
    # put(b) was acknowledged before the CAS started, so a != current.
    h = H().put(1, 0, 1, b"a").put(1, 2, 3, b"b").cas(2, 4, 5, b"a", b"c", True)
    assert _only_violation(h) == [1, 2]


def test_two_successful_cas_from_the_same_value_is_a_violation() -> None:
    h = H().put(1, 0, 1, b"a").cas(2, 2, 5, b"a", b"b", True).cas(3, 2, 5, b"a", b"c", True)
    assert _only_violation(h) == [1, 2]


def test_cas_that_failed_although_the_value_was_current_is_a_violation() -> None:
    h = H().put(1, 0, 1, b"a").cas(2, 2, 3, b"a", b"b", False).get(2, 4, 5, b"a")
    assert _only_violation(h) == [0, 1]


def test_indeterminate_write_cannot_explain_a_read_before_its_invocation() -> None:
    h = H().put(1, 0, 1, b"a").get(2, 2, 3, b"b").put(3, 4, None, b"b")
    assert _only_violation(h) == [0, 1]


def test_window_is_narrowed_to_the_anomaly() -> None:
    # A long correct prefix, then a stale read: the window holds the anomaly only.
    h = H()
    for i in range(50):
        h.put(1, 10 * i, 10 * i + 1, b"v%d" % i).get(2, 10 * i + 2, 10 * i + 3, b"v%d" % i)
    h.get(2, 1000, 1001, b"v48")
    ids = _only_violation(h)
    assert ids == [99, 100], ids  # the read of v49, then the stale read of v48


# -- generated histories -----------------------------------------------------------------


def simulated_history(
    seed: int,
    clients: int = 10,
    keys: int = 5,
    duration_s: float = 60.0,
    indeterminate_ratio: float = 0.05,
) -> list[Op]:
    """A history of a linearizable register: each op takes effect at a uniformly random
    instant of its interval; an indeterminate write takes effect (or not) and never
    completes, its client moving on after a timeout."""
    rng = random.Random(seed)
    planned: list[tuple[float, int, Op]] = []  # (linearization point, id, op)
    next_id = 0
    for c in range(clients):
        t = rng.uniform(0, 0.02)
        while t < duration_s:
            latency = rng.expovariate(1 / 0.02)
            key = b"k%d" % rng.randrange(keys)
            kind = rng.choice([Kind.PUT, Kind.GET, Kind.GET, Kind.CAS])
            lin = t + rng.uniform(0, latency)
            lost = kind is not Kind.GET and rng.random() < indeterminate_ratio
            if lost and rng.random() < 0.5:
                lin = float("inf")  # never takes effect
            op = Op(
                id=next_id,
                client=c,
                key=key,
                kind=kind,
                invoke_s=t,
                complete_s=None if lost else t + latency,
                value=b"c%d-%d" % (c, next_id),
            )
            planned.append((lin, next_id, op))
            next_id += 1
            t += latency + rng.expovariate(1 / 0.005)
    state: dict[bytes, bytes | None] = {}
    history: list[Op] = []
    for lin, _, op in sorted(planned, key=lambda p: (p[0], p[1])):
        current = state.get(op.key)
        if op.kind is Kind.PUT:
            if lin != float("inf"):
                state[op.key] = op.value
            history.append(op)
        elif op.kind is Kind.GET:
            history.append(dataclasses.replace(op, result=current))
        else:
            # CAS: expect the current value half the time so that some succeed
            expected = current if rng.random() < 0.5 else b"c-stale"
            succeeded = current == expected
            if succeeded and lin != float("inf"):
                state[op.key] = op.value
            result = None if op.indeterminate else succeeded
            history.append(dataclasses.replace(op, expected=expected, result=result))
    return sorted(history, key=lambda o: o.id)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_60s_history_is_linearizable_and_checks_fast(seed: int) -> None:
    history = simulated_history(seed)
    assert len(history) > 2000
    started = time.monotonic()
    result = check(history)
    elapsed_s = time.monotonic() - started
    print(f"seed {seed}: {len(history)} ops checked in {elapsed_s:.2f} s")
    assert result.ok, result.describe()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_history_with_a_corrupted_read_is_caught(seed: int) -> None:
    history = simulated_history(seed)
    rng = random.Random(seed)
    reads = [i for i, op in enumerate(history) if op.kind is Kind.GET and not op.indeterminate]
    victim = rng.choice(reads)
    history[victim] = dataclasses.replace(history[victim], result=b"never-written")
    result = check(history)
    assert not result.ok
    assert [v.key for v in result.violations] == [history[victim].key]
    assert history[victim].id in {op.id for op in result.violations[0].window}


def test_failed_cas_explained_by_a_lost_write_is_linearizable() -> None:
    # put(b) timed out and nobody read b, but it took effect: the CAS expecting a fails.
    h = H().put(1, 0, 1, b"a").put(2, 2, None, b"b").cas(3, 3, 4, b"a", b"c", False)
    h.put(1, 5, 6, b"d").get(3, 7, 8, b"d")
    assert check(h.ops).ok


def test_a_lost_write_cannot_be_observed_twice() -> None:
    # After the ghost overwrote a, reading a again is stale: a never comes back.
    h = H().put(1, 0, 1, b"a").put(2, 2, None, b"b").cas(3, 3, 4, b"a", b"c", False)
    h.get(3, 5, 6, b"a")
    assert _only_violation(h) == [0, 1, 2, 3]


def test_a_lost_write_invoked_after_the_failed_cas_cannot_explain_it() -> None:
    h = H().put(1, 0, 1, b"a").cas(3, 3, 4, b"a", b"c", False).put(2, 5, None, b"b")
    assert _only_violation(h) == [0, 1]


@pytest.mark.parametrize("seed", [4, 5])
def test_generated_history_with_many_lost_writes_and_a_stale_read_is_caught(seed: int) -> None:
    history = simulated_history(seed, indeterminate_ratio=0.3, duration_s=20)
    assert check(history).ok
    # Make one late read return the value the key held two writes earlier.
    rng = random.Random(seed)
    by_key = [op for op in history if op.key == b"k0"]
    writes = [op for op in by_key if op.kind is Kind.PUT and not op.indeterminate]
    old, newer = writes[len(writes) // 2], writes[len(writes) // 2 + 2]
    assert newer.complete_s is not None
    stale = Op(
        id=len(history), client=99, key=b"k0", kind=Kind.GET,
        invoke_s=newer.complete_s + rng.uniform(0.001, 0.002),
        complete_s=newer.complete_s + 0.003, result=old.value,
    )
    result = check([*history, stale])
    assert not result.ok
    assert stale.id in {op.id for op in result.violations[0].window}


def test_failed_cas_reporting_the_current_value_reads_the_register() -> None:
    h = H().put(1, 0, 1, b"a").put(1, 2, 3, b"b")
    h.ops.append(Op(id=2, client=2, key=K, kind=Kind.CAS, invoke_s=4, complete_s=5,
                    expected=b"x", value=b"c", result=False, current=b"b", current_known=True))
    assert check(h.ops).ok
    stale = dataclasses.replace(h.ops[2], current=b"a")
    h.ops[2] = stale
    assert _only_violation(h) == [1, 2]
    # reporting the expected value as current while failing is never legal
    h.ops[2] = dataclasses.replace(stale, expected=b"b", current=b"b")
    assert not check(h.ops).ok
