"""Bytes to `hexdump -C` style lines, and back.

Unlike `hexdump -C`, repeated lines are never folded into `*` and no trailing offset line is
written: every dump line stands on its own, so a dump can be parsed back into the bytes.

A chunk's whole rows are formatted by a few C-level operations over the whole chunk, never by
Python code per row, so that a person who turns the dump on does not slow the application they
debug to a crawl. A few rows (a request, a response) are joined from pieces: the chunk's hex at
once (`binascii.hexlify`), cut into groups of eight bytes by one `struct` unpack, its ASCII
column by one `translate`, and a table of offset columns. Many rows (bulk data) are scattered
into a block of blank lines: each of a row's 56 columns (offset digits, hex digits, ASCII
characters) is one strided slice assignment over every row at once. Only a last partial row is
formatted on its own.
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

_JOINED_ROWS = 64  # up to this many rows are joined from pieces; more are scattered
_GROUP = 24  # the hex of eight bytes with their separating spaces: "xx xx xx xx xx xx xx xx "
_hex_groups: dict[int, struct.Struct] = {}  # rows: a Struct cutting their hex into groups
_ascii_rows: dict[int, struct.Struct] = {}  # rows: a Struct cutting their ASCII column into rows
_offset_columns = [b"%08x  " % (row * ROW) for row in range(_JOINED_ROWS)]

_BLANK_LINE = b" " * _ASCII_START + b"|" + b"." * ROW + b"|\n"
_HEX_COLUMNS = [10 + 3 * index + (index >= 8) for index in range(ROW)]  # of each byte's first digit


def dump_size(size: int) -> int:
    """The bytes `dump_text` makes of a chunk of `size` bytes, without making them."""
    whole, rest = divmod(size, ROW)
    return whole * FULL_LINE + (_PARTIAL_LINE + rest if rest else 0)


def dump_text(data: bytes | bytearray | memoryview) -> bytes:
    """The chunk's dump lines, each ended by a newline: per 16 bytes, the offset in hex, two
    groups of eight hex bytes, then |ascii|."""
    if isinstance(data, memoryview):
        data = data.cast("B")
    size = len(data)
    rows = -(-size // ROW)
    if rows <= _JOINED_ROWS:
        return _joined_rows(data, size, rows) if size else b""
    whole = size // ROW
    text = _scattered_rows(data[: whole * ROW], whole)
    if whole < rows:
        text += _partial_row(bytes(data[whole * ROW :]), whole * ROW)
    return text


def _joined_rows(data: bytes | bytearray | memoryview, size: int, rows: int) -> bytes:
    # Every byte is "xx ", and a last partial row is padded with spaces: each row is two groups
    # of eight bytes' hex, 24 characters each.
    hexed = binascii.hexlify(data, b" ").ljust(rows * 2 * _GROUP)
    cut_groups = _hex_groups.get(rows) or _hex_groups.setdefault(rows, struct.Struct(f"{_GROUP}s" * 2 * rows))
    groups = cut_groups.unpack(hexed)
    whole = size // ROW
    cut_rows = _ascii_rows.get(whole) or _ascii_rows.setdefault(whole, struct.Struct(f"{ROW}s" * whole))
    printable = bytes(data).translate(_PRINTABLE)
    ascii_rows = cut_rows.unpack_from(printable)
    pieces: list[bytes] = [b" "] * (7 * rows)  # offset, group, " ", group, " |", ascii, "|\n"
    pieces[0::7] = _offset_columns[:rows]
    pieces[1::7] = groups[0::2]
    pieces[3::7] = groups[1::2]
    pieces[4::7] = [b" |"] * rows
    pieces[5::7] = ascii_rows if whole == rows else (*ascii_rows, printable[whole * ROW :])
    pieces[6::7] = [b"|\n"] * rows
    return b"".join(pieces)


def _scattered_rows(body: bytes | bytearray | memoryview, rows: int) -> bytes:
    lines = bytearray(_BLANK_LINE * rows)
    width = FULL_LINE
    offsets = binascii.hexlify(struct.pack(f">{rows}I", *range(0, rows * ROW, ROW)))
    for digit in range(8):
        lines[digit::width] = offsets[digit::8]
    hexed = binascii.hexlify(body)
    for index, column in enumerate(_HEX_COLUMNS):
        lines[column::width] = hexed[2 * index :: 2 * ROW]
        lines[column + 1 :: width] = hexed[2 * index + 1 :: 2 * ROW]
    printable = bytes(body).translate(_PRINTABLE)
    for index in range(ROW):
        lines[_ASCII_START + 1 + index :: width] = printable[index::ROW]
    return bytes(lines)


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
