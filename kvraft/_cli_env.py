"""Imported by kvraft.cli before anything imports grpc: gRPC core reads GRPC_VERBOSITY
once, when it loads. Its default writes an INFO line to stderr for every failed TLS
handshake ("Handshake failed with error SSL_ERROR_SSL ..."), which would put a second
line under the CLI's one-line errors and let anyone flood a node's log with bad
handshakes. Only gRPC's errors are kept; an operator's own GRPC_VERBOSITY wins."""
import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
