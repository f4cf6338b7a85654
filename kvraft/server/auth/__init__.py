"""Authentication and access on the client port (SPEC §8): tokens, the check of every
call (interceptor.py) and who a proposed entry was admitted for (context.py)."""
