"""Bytes to `hexdump -C` style lines, and back.

Unlike `hexdump -C`, repeated lines are never folded into `*` and no trailing offset line is
written: every dump line stands on its own, so a dump can be parsed back into the bytes.

A chunk's whole rows are formatted in one pass of C-level operations, not row by row: the hex
of the whole chunk at once (`binascii.hexlify`), cut into groups of eight bytes by one
`struct` unpack, its ASCII column by one `translate`, and the lines joined from those pieces and
a table of offset columns. Only a last partial row is formatted on its own. A person debugging
an application turns the dump on; the application should not slow to a crawl for it.
"""

from __future__ import annotations

import binascii
import struct

ROW = 16  # bytes per dump line
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))
_HEX_WIDTH = ROW * 3 + 1  # "xx " per byte plus the gap between the two groups of eight
_ASCII_START = 8 + 2 + _HEX_WIDTH + 1  # where a line's |ascii| column opens
FULL_LINE = _ASCII_START + 1 + ROW + 2  # the bytes of a whole row's line, with its newline
_PARTIAL_LINE = _ASCII_START + 3  # a partial row's line without its ASCII characters

# Rows are cut from the chunk's hex in blocks of _BLOCK by one unpack: a Struct per block length
# below _BLOCK, and one for _BLOCK, so the cache stays small whatever the chunk sizes.
_BLOCK = 64
_GROUP = 24  # the hex of eight bytes with their separating spaces: "xx xx xx xx xx xx xx xx "
_HEX_GROUPS = [struct.Struct("")] + [struct.Struct(f"{_GROUP}s" * (2 * rows)) for rows in range(1, _BLOCK + 1)]
_ASCII_ROWS = [struct.Struct("")] + [struct.Struct(f"{ROW}s" * rows) for rows in range(1, _BLOCK + 1)]
_offset_columns: list[bytes] = []  # "%08x  " of row 0, 1, 2 ...: grows to the largest chunk seen


def dump_size(size: int) -> int:
    """The bytes `dump_text` makes of a chunk of `size` bytes, without making them."""
    whole, rest = divmod(size, ROW)
    return whole * FULL_LINE + (_PARTIAL_LINE + rest if rest else 0)


def dump_text(data: bytes | bytearray | memoryview) -> bytes:
    """The chunk's dump lines, each ended by a newline: per 16 bytes, the offset in hex, two
    groups of eight hex bytes, then |ascii|."""
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else data
    size = len(view)
    whole = size // ROW
    text = _whole_rows(view[: whole * ROW], whole) if whole else b""
    if size % ROW:
        text += _partial_row(bytes(view[whole * ROW :]), whole * ROW)
    return text


def _whole_rows(body: bytes | bytearray | memoryview, rows: int) -> bytes:
    hexed = binascii.hexlify(body, b" ") + b" "  # every byte is "xx ": groups of eight are 24 bytes
    printable = bytes(body).translate(_PRINTABLE)
    if rows <= _BLOCK:
        groups = _HEX_GROUPS[rows].unpack(hexed)
        ascii_rows = _ASCII_ROWS[rows].unpack(printable)
    else:
        groups, ascii_rows = [], []
        for first in range(0, rows, _BLOCK):
            count = min(_BLOCK, rows - first)
            groups.extend(_HEX_GROUPS[count].unpack_from(hexed, first * 2 * _GROUP))
            ascii_rows.extend(_ASCII_ROWS[count].unpack_from(printable, first * ROW))
    while len(_offset_columns) < rows:
        _offset_columns.append(b"%08x  " % (len(_offset_columns) * ROW))
    pieces: list[bytes] = [b" "] * (7 * rows)  # offset, group, " ", group, " |", ascii, "|\n"
    pieces[0::7] = _offset_columns[:rows]
    pieces[1::7] = groups[0::2]
    pieces[3::7] = groups[1::2]
    pieces[4::7] = [b" |"] * rows
    pieces[5::7] = ascii_rows
    pieces[6::7] = [b"|\n"] * rows
    return b"".join(pieces)


def _partial_row(row: bytes, offset: int) -> bytes:
    cells = binascii.hexlify(row, b" ") + b" "
    if len(row) > 8:
        cells = cells[:_GROUP] + b" " + cells[_GROUP:]
    return b"%08x  %b |%b|\n" % (offset, cells.ljust(_HEX_WIDTH), row.translate(_PRINTABLE))


def dump_lines(data: bytes | bytearray | memoryview) -> list[str]:
    """The chunk's dump lines as text, without their newlines."""
    return dump_text(data).decode("ascii").splitlines()


def parse_dump_line(line: str) -> tuple[int, bytes]:
    """The offset and bytes of one dump line; ValueError if the line is not a dump line."""
    offset_text, sep, rest = line.partition("  ")
    if len(offset_text) != 8 or not sep:
        raise ValueError(f"not a dump line: {line!r}")
    hex_part = rest[:_HEX_WIDTH]
    return int(offset_text, 16), bytes.fromhex(hex_part)
