"""Constants of kvraft's client protocol (docs/wire-protocol.md) that the server and the
client must spell alike, defined once for both.

Pure: importing it pulls in neither grpc nor the server, so `kvraft.client` (and any
other client) can use it without the node's runtime.
"""
from __future__ import annotations

# Trailing metadata a server sets on an UNAVAILABLE answer to a request it rejected
# before proposing it (no leader known, the proposal was dropped, too many in flight,
# shutting down): the request had no effect and never will, so a client may send a
# write again to another member (docs/wire-protocol.md, "When a write may be sent
# again"). The server sends exactly this value; a client accepts it as str or bytes.
RETRY_SAFE_METADATA_KEY = "kvraft-retry-safe"
RETRY_SAFE_METADATA_VALUE = "1"

# The largest gRPC message a member sends (to clients and to peers) and the largest the
# client accepts: a client's receive limit below the server's send limit would turn a
# big Scan page into RESOURCE_EXHAUSTED.
GRPC_MESSAGE_BYTES_MAX = 64 << 20

# Member ids are uint64 on the wire (protos/kvraft.proto); 0 means "none" (no leader).
UINT64_MAX = (1 << 64) - 1
