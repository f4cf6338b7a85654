"""etcd's request limits on its API: what a service checks before it proposes, and how
large a message the client port takes at all.

* `--max-request-bytes` (etcd's default 1.5 MiB): etcd refuses to propose a request
  whose encoded InternalRaftRequest is larger (etcdserver's
  processInternalRaftRequestOnce), with "etcdserver: request is too large"
  (INVALID_ARGUMENT). kvraft measures the same thing of its own: the encoded command
  (etcd's message and its request id), which is the log entry. Reads (a Range, a
  read-only Txn) are not proposed, and not measured, as in etcd.
* The client port's gRPC receive limit: etcd's is --max-request-bytes plus 512 KiB
  (v3rpc/grpc.go), so that a request somewhat over the limit still reaches the handler
  and gets the error above, and a larger frame is refused by gRPC before it is decoded
  (RESOURCE_EXHAUSTED). The port also serves kvraft's own KV, whose limits
  (kv_service.py) may ask for more: run.py takes the larger of the two.
* `--max-txn-ops` (etcd's default 128): mvcc.check_txn(ops_max=...), etcd's
  checkTxnRequest — the compares, and the ops of each branch, counted apart.
"""
from __future__ import annotations

from .errors import REQUEST_TOO_LARGE

# What etcd adds to --max-request-bytes for the gRPC receive limit (grpcOverheadBytes).
GRPC_OVERHEAD_BYTES = 512 * 1024


def check_request_bytes(command: bytes, max_request_bytes: int) -> None:
    """Refuse, as etcd does, a proposal whose encoded command is over the limit."""
    if len(command) > max_request_bytes:
        raise REQUEST_TOO_LARGE.error()


def receive_bytes_max(max_request_bytes: int) -> int:
    """The gRPC receive limit etcd's API needs with `max_request_bytes`."""
    return max_request_bytes + GRPC_OVERHEAD_BYTES
