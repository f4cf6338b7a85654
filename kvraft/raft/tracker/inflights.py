"""A bounded window of in-flight MsgAppend messages to one follower (flow control).

The leader pipelines appends to a follower in Replicate state (thesis §10.2.1 on
pipelining) but never has more than `cap` of them unacknowledged: that bounds the
memory a slow follower can make the leader hold and the bytes queued in the transport.
Each slot records the last log index carried by one message; an acknowledgement of
index i frees every message whose last index is <= i.
"""

from __future__ import annotations


class Inflights:
    """A ring buffer of the last indexes of unacknowledged appends, oldest first."""

    __slots__ = ("_buffer", "_count", "_start", "cap")

    def __init__(self, cap: int) -> None:
        assert cap > 0, f"inflights capacity must be positive, got {cap}"
        self.cap: int = cap
        self._start = 0   # slot of the oldest in-flight message
        self._count = 0   # messages in flight, 0 <= count <= cap
        # Allocated on first use: most peers of an idle cluster never fill it.
        self._buffer: list[int] = []

    def __repr__(self) -> str:
        return f"Inflights(count={self._count}, cap={self.cap}, indexes={self.indexes()})"

    def indexes(self) -> list[int]:
        """The in-flight last indexes, oldest first (for tests and status)."""
        cap = self.cap
        return [self._buffer[(self._start + i) % cap] for i in range(self._count)]

    def full(self) -> bool:
        """The window is exhausted: the leader must wait for an acknowledgement."""
        return self._count == self.cap

    def count(self) -> int:
        return self._count

    def add(self, inflight: int) -> None:
        """Record a message whose last entry index is `inflight`.

        Indexes must arrive in strictly increasing order: in Replicate state every
        append starts after the previous one ended; any other order means the leader
        lost track of what it sent.
        """
        count = self._count
        assert count < self.cap, f"inflights full ({self.cap}): cannot add {inflight}"
        if not self._buffer:
            self._buffer = [0] * self.cap
        slot = self._start + count
        if slot >= self.cap:
            slot -= self.cap
        if count:
            newest = self._buffer[slot - 1 if slot else self.cap - 1]
            assert inflight > newest, (
                f"inflights must grow: adding {inflight} after {newest}")
        self._buffer[slot] = inflight
        self._count = count + 1

    def free_to(self, to: int) -> None:
        """Free every in-flight message whose last index is <= `to` (an ack of `to`)."""
        count = self._count
        if count == 0:
            return
        buffer = self._buffer
        cap = self.cap
        slot = self._start
        freed = 0
        while freed < count and buffer[slot] <= to:
            freed += 1
            slot += 1
            if slot == cap:
                slot = 0
        if freed == 0:
            return
        self._count = count - freed
        # An empty window restarts at slot 0; either choice is correct.
        self._start = slot if self._count else 0

    def free_first_one(self) -> None:
        """Free the oldest message: a heartbeat response shows the follower alive, so
        let one more append through even though the window was full."""
        if self._count:
            self.free_to(self._buffer[self._start])

    def reset(self) -> None:
        """Forget everything in flight (the peer left Replicate state)."""
        self._count = 0
        self._start = 0
