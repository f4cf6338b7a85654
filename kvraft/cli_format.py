"""Text output of the `kvraft` command line: escaped bytes and aligned tables."""
from __future__ import annotations

from collections.abc import Sequence

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape_bytes(data: bytes) -> str:
    """Bytes as one printable line: printable UTF-8 text as is; backslash, tab, CR, LF
    and other ASCII controls as \\t \\n \\xNN, bytes that are not UTF-8 as \\xNN, other
    unprintable characters (C1 controls, separators) as \\uNNNN.

    Used where records share a line (scan); `get` prints the raw value instead."""
    out: list[str] = []
    for ch in data.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80 and not ch.isprintable():
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():  # C1 controls, line and paragraph separators, ...
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, separated by two spaces."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    for row in cells:
        assert len(row) == len(header), "every row has one cell per column"
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)
