"""A linearizability checker for a key-value store seen as one register per key.

The algorithm is Wing & Gong's search for a linearization, with the improvements of
Lowe ("Testing for linearizability", 2017) that make it practical:

* P-compositionality: a history is linearizable iff its restriction to each key is
  (Herlihy & Wing, locality), so every key is checked on its own;
* the history is a doubly linked list of call and return entries sorted by time; an
  operation is linearized by lifting both of its entries out of the list, and undone
  by putting them back, so the search never copies the history;
* a cache of the configurations already explored — (set of linearized operations as a
  bitset, register state) — prunes every branch that reaches a configuration twice.

An operation whose outcome is unknown (a write that timed out or was refused with
UNAVAILABLE) is *indeterminate*: it has no completion, so it may take effect at any
point after its invocation or never. It is modelled, as in Porcupine and Knossos, by a
return at time +infinity: the search may linearize it anywhere after its call, and a
linearization that leaves it to the very end is one where it never happened. A read
whose outcome is unknown tells nothing and is dropped.

When a key's history cannot be linearized, the checker narrows it to the smallest
window that still cannot be: the earliest completion time T such that the history up to
T fails, then the latest start T0 such that the operations around [T0, T] fail from an
arbitrary initial state. Both searches are binary searches on monotone properties (see
`_prefix` and `_window`), so the window is a genuine witness, not a heuristic.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

# Limits: the search is exponential in the worst case; give up loudly rather than hang.
SEARCH_STEPS_MAX = 20_000_000
# Narrowing a failure runs ~2 log2(n) searches; one that runs past this is taken as
# "not proven to fail", which only makes the reported window larger, never wrong.
NARROW_STEPS_MAX = 200_000


class Kind(enum.Enum):
    PUT = "put"
    GET = "get"
    CAS = "cas"


@dataclasses.dataclass(frozen=True)
class Op:
    """One client operation on one key, as recorded by the workload.

    `complete_s` is None for an indeterminate operation. For a GET `result` is the value
    read (bytes, or None for a missing key); for a CAS it is whether it succeeded; for a
    PUT it is unused.
    """

    id: int
    client: int
    key: bytes
    kind: Kind
    invoke_s: float
    complete_s: float | None
    value: bytes | None = None  # PUT: the value written; CAS: the new value
    expected: bytes | None = None  # CAS: the expected value, None = "key absent"
    result: bytes | bool | None = None
    # CAS that failed: the value the server reported as current (SPEC §2), when known.
    # A failed CAS then also reads the register, atomically with its comparison.
    current: bytes | None = None
    current_known: bool = False

    @property
    def indeterminate(self) -> bool:
        return self.complete_s is None

    def describe(self, t0_s: float = 0.0) -> str:
        end = "   open  " if self.complete_s is None else f"{self.complete_s - t0_s:9.4f}"
        if self.kind is Kind.PUT:
            what = f"put({_show(self.value)})"
            out = "?" if self.indeterminate else "ok"
        elif self.kind is Kind.GET:
            what = "get()"
            out = "?" if self.indeterminate else _show(self.result)  # type: ignore[arg-type]
        else:
            what = f"cas({_show(self.expected)} -> {_show(self.value)})"
            out = "?" if self.indeterminate else ("ok" if self.result else "failed")
            if self.current_known and not self.result:
                out += f" (current {_show(self.current)})"
        return (
            f"[{self.invoke_s - t0_s:9.4f} .. {end}] client {self.client:<3} op {self.id:<6}"
            f" {what} -> {out}"
        )


def _show(value: bytes | None) -> str:
    return "nil" if value is None else repr(value)[1:]


class _Token:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The register's state at the start of a window: any value, not yet observed.
UNKNOWN = _Token("<unknown>")
# A value that no operation ever observes: what a ghost write (below) leaves behind.
UNOBSERVED = _Token("<unobserved>")


class _Ghosts:
    """Indeterminate writes whose value nobody observed ("ghost writes").

    With unique values, a ghost write is only ever seen through its one possible
    consequence: the register briefly holds a value that no read returns, so a CAS
    expecting the old value fails. Keeping ghosts in the search as ordinary pending
    operations doubles the configurations with each one (it stays linearizable until
    the end), which makes a failing history of a long chaos run impossible to exhaust.
    So they leave the search: a failed CAS that found the value it expected is legal
    iff a ghost that could overwrite that value was invoked before the CAS completed and
    not yet spent on this path, and the register then holds UNOBSERVED. The count of
    spent ghosts is part of the search state. (Matching ghosts to uses by count rather
    than one by one is the only approximation, and it is permissive: it can miss only
    an anomaly whose sole evidence is failed CASes outnumbering the lost writes.)
    """

    def __init__(self, ghosts: Sequence[Op]) -> None:
        self._put_invokes = sorted(op.invoke_s for op in ghosts if op.kind is Kind.PUT)
        self._cas_invokes: dict[bytes | None, list[float]] = defaultdict(list)
        for op in ghosts:
            if op.kind is Kind.CAS:
                self._cas_invokes[op.expected].append(op.invoke_s)
        for invokes in self._cas_invokes.values():
            invokes.sort()

    def available(self, overwriting: object, before_s: float) -> int:
        count = bisect.bisect_left(self._put_invokes, before_s)
        if overwriting in self._cas_invokes:
            count += bisect.bisect_left(self._cas_invokes[overwriting], before_s)  # type: ignore[index]
        return count


def _split_ghosts(ops: Sequence[Op]) -> tuple[list[Op], list[Op]]:
    observed: set[bytes | None] = set()
    for op in ops:
        if op.kind is Kind.GET:
            observed.add(op.result)  # type: ignore[arg-type]
        elif op.kind is Kind.CAS:
            observed.add(op.expected)
            if op.current_known:
                observed.add(op.current)
    real: list[Op] = []
    ghosts: list[Op] = []
    for op in ops:
        if op.indeterminate and op.kind is not Kind.GET and op.value not in observed:
            ghosts.append(op)
        else:
            real.append(op)
    return real, ghosts


State = tuple[object, int]  # (register value, ghosts spent)


def _step(
    state: State, op: Op, possible: frozenset[bytes | None], ghosts: _Ghosts
) -> tuple[bool, State]:
    """The sequential specification of the register: is `op` legal in `state`, and
    the state after it. UNKNOWN (used only for windows) stands for any value in
    `possible` (the key's initial value and every value written to it); it is
    permissive, which keeps a failing window a genuine witness."""
    value, spent = state
    if op.kind is Kind.PUT:
        return True, (op.value, spent)
    if op.kind is Kind.GET:
        if value is UNKNOWN:
            return op.result in possible, (op.result, spent)
        return value == op.result, state
    # CAS
    if op.indeterminate:
        if value is UNKNOWN:
            return True, state
        return True, ((op.value if value == op.expected else value), spent)
    if op.result:
        if value == op.expected or (value is UNKNOWN and op.expected in possible):
            return True, (op.value, spent)
        return False, state
    if op.current_known:
        if op.current == op.expected:
            return False, state  # a failed CAS cannot have found what it expected
        if value is UNKNOWN:
            return op.current in possible, (op.current, spent)
        return value == op.current, state
    if value is UNKNOWN or value != op.expected:
        return True, state
    assert op.complete_s is not None
    if spent < ghosts.available(value, op.complete_s):
        return True, (UNOBSERVED, spent + 1)
    return False, state


class SearchLimitExceeded(RuntimeError):
    pass


def _linearizable(
    all_ops: Sequence[Op],
    initial: object,
    possible: frozenset[bytes | None] = frozenset(),
    steps_max: int = SEARCH_STEPS_MAX,
) -> bool:
    """Lowe's WGL search over one key's operations (reads of unknown outcome removed)."""
    ops, ghost_ops = _split_ghosts(all_ops)
    ghosts = _Ghosts(ghost_ops)
    n = len(ops)
    if n == 0:
        return True
    # Entries: 2*i is the call of ops[i], 2*i+1 its return; node index 2n is the head.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke_s, 0, 2 * i))
        end = math.inf if op.complete_s is None else op.complete_s
        # Calls sort before returns at equal times: treating touching operations as
        # concurrent can only admit more linearizations, never report a false violation.
        events.append((end, 1, 2 * i + 1))
    events.sort()
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for _, _, node in events:
        nxt[last] = node
        prv[node] = last
        last = node
    nxt[last] = -1

    determinate_left = sum(1 for op in ops if not op.indeterminate)
    cache: set[tuple[int, State]] = set()
    stack: list[tuple[int, State]] = []  # (call node, state before it)
    linearized = 0
    state: State = (initial, 0)
    entry = nxt[head]
    steps = 0
    while determinate_left > 0:
        steps += 1
        if steps > steps_max:
            raise SearchLimitExceeded(f"more than {steps_max} search steps")
        assert entry != -1, "the list ends with returns, which end or backtrack the search"
        i = entry >> 1
        if entry & 1 == 0:  # a call: try to linearize ops[i] now
            op = ops[i]
            ok, new_state = _step(state, op, possible, ghosts)
            if ok:
                new_linearized = linearized | (1 << i)
                config = (new_linearized, new_state)
                if config not in cache:
                    cache.add(config)
                    stack.append((entry, state))
                    linearized, state = new_linearized, new_state
                    if not op.indeterminate:
                        determinate_left -= 1
                    # lift the call and the return out of the list
                    ret = entry + 1
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    nxt[prv[ret]] = nxt[ret]
                    if nxt[ret] != -1:
                        prv[nxt[ret]] = prv[ret]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            # A return whose call is not linearized: every choice so far is wrong.
            if ops[i].indeterminate:
                # Only +inf returns are left, so every determinate op is linearized.
                return True
            if not stack:
                return False
            call, state = stack.pop()
            j = call >> 1
            linearized &= ~(1 << j)
            if not ops[j].indeterminate:
                determinate_left += 1
            # unlift in reverse order of the lift
            ret = call + 1
            nxt[prv[ret]] = ret
            if nxt[ret] != -1:
                prv[nxt[ret]] = ret
            nxt[prv[call]] = call
            prv[nxt[call]] = call
            entry = nxt[call]
    return True


def _prefix(ops: Sequence[Op], t_s: float) -> list[Op]:
    """The history as it stood at time t: operations invoked by then, those still open
    at t made indeterminate (reads dropped). Linearizable whenever the whole history is
    (restrict its linearization), so 'prefix fails' is monotone in t."""
    out: list[Op] = []
    for op in ops:
        if op.invoke_s > t_s:
            continue
        if op.complete_s is not None and op.complete_s <= t_s:
            out.append(op)
        elif op.kind is not Kind.GET:
            out.append(dataclasses.replace(op, complete_s=None, result=None))
    return out


def _window(ops: Sequence[Op], t0_s: float, t_s: float) -> list[Op]:
    """The operations that can take effect after t0 in the prefix at t: those invoked
    at or after t0, and those open at t0 made indeterminate. Checked from an UNKNOWN
    initial state, it is linearizable whenever the prefix is (start from the state
    the prefix's linearization has at t0), so 'window fails' is monotone in t0."""
    out: list[Op] = []
    for op in _prefix(ops, t_s):
        if op.invoke_s >= t0_s:
            out.append(op)
        elif (op.complete_s is None or op.complete_s > t0_s) and op.kind is not Kind.GET:
            out.append(dataclasses.replace(op, complete_s=None, result=None))
    return out


@dataclasses.dataclass
class Violation:
    key: bytes
    window: list[Op]  # the smallest window that cannot be linearized, as recorded
    window_start_s: float
    window_end_s: float
    # ops of the window the check treated as open (still running at its start or end)
    treated_open: set[int] = dataclasses.field(default_factory=set)

    def describe(self, t0_s: float = 0.0) -> str:
        lines = [
            f"key {_show(self.key)}: no linearization of {len(self.window)} operations in "
            f"[{self.window_start_s - t0_s:.4f} s, {self.window_end_s - t0_s:.4f} s] "
            "(from any initial value):"
        ]
        observed: set[bytes | None] = set()
        for op in self.window:
            if op.kind is Kind.GET and op.id not in self.treated_open:
                observed.add(op.result)  # type: ignore[arg-type]
            elif op.kind is Kind.CAS:
                observed.update((op.expected, op.current))
        omitted = 0
        for op in sorted(self.window, key=_by_invoke):
            if (op.invoke_s < self.window_start_s and op.kind is not Kind.GET
                    and op.value not in observed):
                omitted += 1  # a write still open at the start, never seen in the window
                continue
            note = "   (open at the window's edge)" if op.id in self.treated_open else ""
            lines.append("  " + op.describe(t0_s) + note)
        if omitted:
            lines.append(f"  (+ {omitted} earlier writes still open at the window's start, "
                         "whose values nothing in the window reads: not shown)")
        return "\n".join(lines)


@dataclasses.dataclass
class Result:
    ok: bool
    keys_checked: int
    ops_checked: int
    violations: list[Violation]

    def describe(self, t0_s: float = 0.0) -> str:
        if self.ok:
            return f"linearizable: {self.ops_checked} operations on {self.keys_checked} keys"
        return "NOT linearizable\n" + "\n".join(v.describe(t0_s) for v in self.violations)


def _by_invoke(op: Op) -> tuple[float, int]:
    return (op.invoke_s, op.id)


def _fails(ops: Sequence[Op], initial: object, possible: frozenset[bytes | None]) -> bool:
    """Proven not linearizable within NARROW_STEPS_MAX search steps."""
    try:
        return not _linearizable(ops, initial, possible, NARROW_STEPS_MAX)
    except SearchLimitExceeded:
        return False


def _smallest_window(key: bytes, ops: Sequence[Op], initial: bytes | None) -> Violation:
    """Narrow a failing key history; see the module docstring."""
    ends = sorted({op.complete_s for op in ops if op.complete_s is not None})
    lo, hi = 0, len(ends) - 1  # the prefix at ends[hi] fails (it is the whole history)
    while lo < hi:
        mid = (lo + hi) // 2
        if _fails(_prefix(ops, ends[mid]), initial, frozenset()):
            hi = mid
        else:
            lo = mid + 1
    t_s = ends[hi]
    possible = frozenset([initial, *(op.value for op in ops if op.kind is not Kind.GET)])
    starts = sorted({op.invoke_s for op in ops if op.invoke_s <= t_s})
    # The window from the first invocation may pass from an UNKNOWN start (the known
    # initial value matters); then the witness is the whole prefix.
    if not _fails(_window(ops, starts[0], t_s), UNKNOWN, possible):
        return _violation(key, ops, _prefix(ops, t_s), starts[0], t_s)
    lo, hi = 0, len(starts) - 1  # find the latest start whose window still fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fails(_window(ops, starts[mid], t_s), UNKNOWN, possible):
            lo = mid
        else:
            hi = mid - 1
    t0_s = starts[lo]
    return _violation(key, ops, _window(ops, t0_s, t_s), t0_s, t_s)


def _violation(
    key: bytes, ops: Sequence[Op], window: Sequence[Op], t0_s: float, t_s: float
) -> Violation:
    recorded = {op.id: op for op in ops}
    treated_open = {op.id for op in window if op != recorded[op.id]}
    return Violation(key, [recorded[op.id] for op in window], t0_s, t_s, treated_open)


def check(history: Iterable[Op], initial: bytes | None = None) -> Result:
    """Check a whole history: every key starts absent (or at `initial`)."""
    by_key: dict[bytes, list[Op]] = defaultdict(list)
    for op in history:
        if op.kind is Kind.GET and op.indeterminate:
            continue  # a read of unknown outcome has no effect and tells nothing
        by_key[op.key].append(op)
    violations: list[Violation] = []
    ops_checked = 0
    for key in sorted(by_key):
        ops = by_key[key]
        ops_checked += len(ops)
        if not _linearizable(ops, initial):
            violations.append(_smallest_window(key, ops, initial))
    return Result(not violations, len(by_key), ops_checked, violations)
