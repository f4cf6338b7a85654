"""etcd's simple tokens: what Authenticate hands out and every later call carries in the
`token` metadata key.

A token is random (secrets.token_urlsafe, 144 bits) plus a counter, kept in this member's
memory only — as etcd's simple tokens, it is valid on the member that issued it, not on
the others, and not after that member restarts (etcd's clients authenticate again on
"invalid auth token"; kvraft's Client does too). It expires TOKEN_TTL_S after its last
use, and ends with its user: a token is refused once the user is deleted or its
password changed (it remembers the password hash it was issued under). At most
TOKENS_MAX live at once; past that the least recently used goes first.
"""
from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kvraft.storage.auth_store import AuthState

TOKEN_TTL_S = 300.0          # etcd's --auth-token-ttl default
TOKENS_MAX = 100_000


@dataclass(slots=True)
class _Token:
    user: str
    password: str            # the user's stored hash when issued
    expires_at: float        # monotonic seconds


class TokenStore:
    def __init__(self, ttl_s: float = TOKEN_TTL_S, tokens_max: int = TOKENS_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert ttl_s > 0 and tokens_max >= 1
        self.ttl_s = ttl_s
        self.tokens_max = tokens_max
        self._clock = clock
        # token -> its record, least recently used first. Invariant: len <= tokens_max.
        self._tokens: OrderedDict[str, _Token] = OrderedDict()
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, user: str, password_hash: str) -> str:
        token = f"{secrets.token_urlsafe(18)}.{next(self._counter)}"
        self._tokens[token] = _Token(user, password_hash, self._clock() + self.ttl_s)
        while len(self._tokens) > self.tokens_max:
            self._tokens.popitem(last=False)
        return token

    def user_of(self, token: str, state: AuthState) -> str | None:
        """The user `token` stands for now (its expiry pushed back), or None: unknown,
        expired, or its user deleted or given another password since."""
        record = self._tokens.get(token)
        if record is None:
            return None
        now = self._clock()
        user = state.users.get(record.user)
        if now >= record.expires_at or user is None or user.password != record.password:
            del self._tokens[token]
            return None
        record.expires_at = now + self.ttl_s
        self._tokens.move_to_end(token)
        return record.user

    def clear(self) -> None:
        """Forget every token (auth was disabled: etcd drops them)."""
        self._tokens.clear()
