"""The outcome of an election as far as the votes received so far tell (thesis §3.4)."""

from __future__ import annotations

import enum


class VoteResult(enum.Enum):
    # Neither a quorum of grants nor enough rejections to rule one out: keep waiting.
    Pending = 1
    # A quorum can no longer be reached: the election cannot be won.
    Lost = 2
    # A quorum granted: the candidate becomes leader (thesis §3.4).
    Won = 3
