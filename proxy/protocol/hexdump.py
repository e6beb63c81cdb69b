"""Bytes to `hexdump -C` style lines, and back.

Unlike `hexdump -C`, repeated lines are never folded into `*` and no trailing offset line is
written: every dump line stands on its own, so a dump can be parsed back into the bytes.
"""

from __future__ import annotations

_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))
_HEX = [f"{b:02x} " for b in range(256)]
_HEX_WIDTH = 16 * 3 + 1  # "xx " per byte plus the gap between the two groups of eight


def dump_lines(data: bytes | bytearray | memoryview) -> list[str]:
    """One line per 16 bytes: offset in hex, two groups of eight hex bytes, then |ascii|."""
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else data
    lines = []
    for start in range(0, len(view), 16):
        row = bytes(view[start : start + 16])
        cells = "".join([_HEX[b] for b in row[:8]]) + " " + "".join([_HEX[b] for b in row[8:]])
        ascii_column = row.translate(_PRINTABLE).decode("ascii")
        lines.append(f"{start:08x}  {cells:<{_HEX_WIDTH}} |{ascii_column}|")
    return lines


def parse_dump_line(line: str) -> tuple[int, bytes]:
    """The offset and bytes of one dump line; ValueError if the line is not a dump line."""
    offset_text, sep, rest = line.partition("  ")
    if len(offset_text) != 8 or not sep:
        raise ValueError(f"not a dump line: {line!r}")
    hex_part = rest[:_HEX_WIDTH]
    return int(offset_text, 16), bytes.fromhex(hex_part)
