"""Just enough HTTP/2 (RFC 9113) to open a gRPC call and send a TRUNCATED message —
what no gRPC client library lets a test do: the connection preface, an empty SETTINGS
frame, one HEADERS frame (HPACK literals without indexing or Huffman coding, RFC 7541
§6.2.2) and DATA frames, written to a plain socket the caller then closes.
"""
from __future__ import annotations

import contextlib
import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0x0, 0x1, 0x4
END_HEADERS = 0x4
STREAM_ID = 1


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    assert len(payload) < 1 << 14   # the default SETTINGS_MAX_FRAME_SIZE
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream_id) + payload


def _literal(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127   # one-byte lengths
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def grpc_call_start(authority: str, path: str) -> bytes:
    """Preface, settings and the HEADERS of a gRPC call on stream 1."""
    block = b"".join(_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", path),
        (":authority", authority), ("content-type", "application/grpc"),
        ("te", "trailers")))
    return PREFACE + frame(SETTINGS, 0, 0, b"") + frame(HEADERS, END_HEADERS, STREAM_ID, block)


def truncated_message(message: bytes, sent_bytes: int) -> bytes:
    """A DATA frame with gRPC's length prefix for all of `message` but only its first
    `sent_bytes` bytes."""
    body = b"\x00" + struct.pack(">I", len(message)) + message[:sent_bytes]
    return frame(DATA, 0, STREAM_ID, body)


def send_then_close(address: str, data: bytes, timeout_s: float) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):   # the server reads it all before it goes
            while s.recv(1 << 16):
                pass
