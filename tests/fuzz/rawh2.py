"""Just enough HTTP/2 (RFC 9113) to open a gRPC call and send a TRUNCATED message —
what no gRPC client library lets a test do: the connection preface, an empty SETTINGS
frame, one HEADERS frame (HPACK literals without indexing or Huffman coding, RFC 7541
§6.2.2) and DATA frames, written to a plain socket the caller then closes.
"""
from __future__ import annotations

import contextlib
import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS = 0x0, 0x1, 0x3, 0x4
END_STREAM, END_HEADERS, SETTINGS_ACK = 0x1, 0x4, 0x1
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
    """Garbage: write it all, half-close, read until the server closes (or timeout)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):   # the server reads it all before it goes
            while s.recv(1 << 16):
                pass


def exchange(address: str, data: bytes, wait_s: float) -> bool:
    """Write `data` (a call started with grpc_call_start), acknowledge the server's
    SETTINGS, and read frames until the server ends stream 1 (True) or `wait_s`
    passes (False); then close the socket, mid-call if it is still open."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + wait_s
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(data)
        buffer = b""
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                return False
            if not chunk:
                return False
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags = buffer[3], buffer[4]
                stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFF_FFFF
                buffer = buffer[9 + length:]
                if kind == SETTINGS and not flags & SETTINGS_ACK:
                    s.sendall(frame(SETTINGS, SETTINGS_ACK, 0, b""))
                if kind == HEADERS and flags & END_STREAM and stream_id == STREAM_ID:
                    return True
                if kind == RST_STREAM and stream_id == STREAM_ID:
                    return True
    return False
