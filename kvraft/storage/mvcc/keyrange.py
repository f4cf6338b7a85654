"""etcd's key ranges: a request's (key, range_end) as a half-open interval.

range_end b"" means the key alone; b"\\0" means every key >= key (etcd's
mkGteRange); anything else is [key, range_end), empty when range_end <= key.
"""
from __future__ import annotations

from dataclasses import dataclass

ALL_FROM_KEY = b"\x00"


@dataclass(frozen=True, slots=True)
class KeyRange:
    """[start, stop) of user keys; stop None: no upper bound. `single`: just `start`."""

    start: bytes
    stop: bytes | None
    single: bool = False

    @classmethod
    def of(cls, key: bytes, range_end: bytes) -> KeyRange:
        if not range_end:
            return cls(key, key + b"\x00", single=True)
        if range_end == ALL_FROM_KEY:
            return cls(key, None)
        return cls(key, range_end)

    def __contains__(self, key: bytes) -> bool:
        return self.start <= key and (self.stop is None or key < self.stop)

    @property
    def empty(self) -> bool:
        return self.stop is not None and self.stop <= self.start

    def overlaps(self, other: KeyRange) -> bool:
        if self.empty or other.empty:
            return False
        return ((other.stop is None or self.start < other.stop)
                and (self.stop is None or other.start < self.stop))
