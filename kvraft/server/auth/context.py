"""Who the request being served was admitted for, carried to its Raft entry.

The interceptor (interceptor.py) sets ADMITTED for the duration of a call: the user
(or "" when auth is off or the call named none) and the auth revision it was checked
under. `Node.propose` puts it into the entry's context (command.proto AuthContext), and
the apply checks the request again if the auth revision moved meanwhile
(storage/mvcc_apply.py). Outside a call — the node's own proposals — it is None and the
entry has no context.
"""
from __future__ import annotations

from contextvars import ContextVar

from kvraft.storage.commands import encode_auth_context

ADMITTED: ContextVar[tuple[str, int] | None] = ContextVar("kvraft_auth_admitted",
                                                          default=None)


def entry_context() -> bytes:
    """The context for an entry proposed now (b"" outside a client's call)."""
    admitted = ADMITTED.get()
    return b"" if admitted is None else encode_auth_context(*admitted)
