"""The hex dump lines: the contract's example, row edges, parsing back, and `hexdump -C` itself."""

from __future__ import annotations

import io
import itertools
import os
import random
import shutil
import subprocess
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

import proxy.output.tap
from proxy.output.tap import HexdumpWriter, SnappedDump, timestamp_us
from proxy.protocol.hexdump import dump_lines, dump_size, dump_text, parse_dump_line

CONTRACT_INPUT = b"GET / HTTP/1.1\r\n\r\n"
CONTRACT_LINES = [
    "00000000  47 45 54 20 2f 20 48 54  54 50 2f 31 2e 31 0d 0a  |GET / HTTP/1.1..|",
    "00000010  0d 0a                                             |..|",
]
# Where the "|" opening the ASCII column sits on every line: 8 offset digits, 2 spaces,
# 16 "xx " cells, 1 extra space between the groups of eight, 1 space.
ASCII_COLUMN = 8 + 2 + 16 * 3 + 1 + 1


def test_the_contract_example_exactly():
    assert dump_lines(CONTRACT_INPUT) == CONTRACT_LINES


def test_empty_input_gives_no_lines():
    assert dump_lines(b"") == []
    assert dump_lines(memoryview(b"")) == []


def test_exactly_sixteen_bytes_is_one_line():
    lines = dump_lines(b"0123456789abcdef")
    assert lines == ["00000000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|"]


def test_seventeen_bytes_is_two_lines():
    lines = dump_lines(b"0123456789abcdefg")
    assert len(lines) == 2
    assert lines[1] == "00000010  67" + " " * 48 + "|g|"


@pytest.mark.parametrize("size", range(1, 17))
def test_a_partial_row_keeps_the_ascii_column_where_a_full_row_has_it(size):
    data = bytes(range(0x41, 0x41 + 16)) + bytes(range(0x61, 0x61 + size))
    full, partial = dump_lines(data)
    assert full.index("|") == ASCII_COLUMN
    assert partial.index("|") == ASCII_COLUMN
    assert partial[ASCII_COLUMN:] == "|" + data[16:].decode() + "|"
    assert len(partial) == ASCII_COLUMN + size + 2


def test_the_two_groups_of_eight_are_split_by_an_extra_space():
    line = dump_lines(bytes(range(16)))[0]
    assert line[10:].startswith("00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |")


def test_offsets_are_eight_lowercase_hex_digits():
    lines = dump_lines(bytes(16 * 0x1B0))
    assert lines[0xAB].startswith("00000ab0  ")
    assert lines[-1].startswith("00001af0  ")


def test_printable_ascii_shows_itself_and_everything_else_is_a_dot():
    lines = dump_lines(bytes(range(256)))
    column = "".join(line[ASCII_COLUMN + 1 : -1] for line in lines)
    expected = "".join(chr(b) if 0x20 <= b <= 0x7E else "." for b in range(256))
    assert column == expected
    assert column[0x20] == " " and column[0x7E] == "~"
    assert set(column[:0x20] + column[0x7F:]) == {"."}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(memoryview, id="memoryview"),
        pytest.param(bytearray, id="bytearray"),
        pytest.param(lambda data: memoryview(b"xyz" + data)[3:], id="memoryview-slice"),
        pytest.param(lambda data: memoryview(bytearray(data)), id="memoryview-of-bytearray"),
    ],
)
def test_other_byte_buffers_dump_like_bytes(make):
    data = CONTRACT_INPUT + bytes(range(40))
    assert dump_lines(make(data)) == dump_lines(data)


def test_a_memoryview_of_wider_items_dumps_its_bytes():
    words = array("I", [0x01020304, 0x05060708, 0x090A0B0C, 0x0D0E0F10, 0x11121314])
    assert dump_lines(memoryview(words)) == dump_lines(words.tobytes())


@given(st.binary(max_size=600))
def test_parsing_every_line_back_gives_the_bytes_and_offsets_step_by_sixteen(data):
    lines = dump_lines(data)
    parsed = [parse_dump_line(line) for line in lines]
    assert [offset for offset, _ in parsed] == list(range(0, len(data), 16))
    assert b"".join(chunk for _, chunk in parsed) == data
    assert all(len(line) == ASCII_COLUMN + len(chunk) + 2 for line, (_, chunk) in zip(lines, parsed, strict=True))


@pytest.mark.parametrize(
    "line",
    [
        "2026-11-25T10:00:00.123456+00:00 conn=7 client->upstream offset=0 len=18 a -> b",
        "2026-11-25T10:00:00.123456+00:00 conn=7 open 127.0.0.1:1 -> 127.0.0.1:2",
        "",
        "0000000  47 45",
    ],
)
def test_parse_rejects_lines_that_are_not_dump_lines(line):
    with pytest.raises(ValueError):
        parse_dump_line(line)


# -- against the real thing --------------------------------------------------------------

HEXDUMP = shutil.which("hexdump")


def _rows_repeat(data: bytes) -> bool:
    rows = [data[i : i + 16] for i in range(0, len(data) - len(data) % 16, 16)]
    return any(a == b for a, b in itertools.pairwise(rows))


def _random_inputs() -> list[bytes]:
    rng = random.Random(20261125)
    inputs = [CONTRACT_INPUT, bytes(range(256)), bytes(range(255, -1, -1))[:100]]
    for size in [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 200, 1000]:
        inputs.append(rng.randbytes(size))
    return [data for data in inputs if not _rows_repeat(data)]


@pytest.mark.skipif(HEXDUMP is None, reason="the hexdump program is not installed")
@pytest.mark.parametrize("data", _random_inputs(), ids=lambda data: f"{len(data)}B")
def test_same_lines_as_hexdump_minus_c(data):
    env = {**os.environ, "LC_ALL": "C"}  # bytes past 0x7e are dots only in the C locale
    result = subprocess.run([HEXDUMP, "-C"], input=data, capture_output=True, check=True, env=env, timeout=10)
    lines = result.stdout.decode("ascii").splitlines()
    # hexdump ends with a line holding only the total length; we do not write it.
    assert lines[-1] == f"{len(data):08x}"
    assert "*" not in lines, "inputs are chosen without repeated rows, so nothing is folded"
    assert dump_lines(data) == lines[:-1]


# -- the dump cut at a snap length ----------------------------------------------------------


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=12), st.integers(min_value=1, max_value=1000))
def test_a_snapped_dump_keeps_the_first_snaplen_bytes_then_says_truncated_once(sizes, snaplen):
    stream = io.StringIO()
    dump = SnappedDump(HexdumpWriter(stream), snaplen)
    sent = bytes(random.Random(snaplen).randbytes(sum(sizes)))
    offset = 0
    for size in sizes:
        dump.chunk(7, "client->upstream", offset, memoryview(sent[offset : offset + size]), "a:1", "b:2")
        offset += size
    lines = stream.getvalue().splitlines()
    dumped = b"".join(parse_dump_line(line)[1] for line in lines if line[:8].isalnum() and line[8:10] == "  ")
    assert dumped == sent[:snaplen]
    truncated = [line.split(" ", 1)[1] for line in lines if " truncated " in line]
    assert truncated == ([f"conn=7 client->upstream truncated offset={snaplen}"] if len(sent) > snaplen else [])


# -- the whole chunk at once ---------------------------------------------------------------


def _row_by_row(data: bytes) -> bytes:
    """The format as the contract states it, one row at a time: what dump_text must equal."""
    lines = []
    for start in range(0, len(data), 16):
        row = data[start : start + 16]
        cells = "".join(f"{b:02x} " for b in row[:8]) + " " + "".join(f"{b:02x} " for b in row[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{start:08x}  {cells:<49} |{text}|\n")
    return "".join(lines).encode()


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=300))
def test_a_chunk_formatted_at_once_equals_its_rows_formatted_one_by_one(tail, rows):
    # Whole rows are cut in blocks of 64 (1 KiB): sizes around and past those edges.
    data = random.Random(rows).randbytes(16 * rows) + tail
    expected = _row_by_row(data)
    assert dump_text(data) == expected
    assert dump_text(memoryview(data)) == expected
    assert dump_size(len(data)) == len(expected)


@pytest.mark.parametrize("size", [1023, 1024, 1025, 65536, 65536 + 17, 200_000])
def test_large_chunks_dump_row_by_row_too(size):
    data = random.Random(size).randbytes(size)
    assert dump_text(data) == _row_by_row(data)
    assert dump_size(size) == len(dump_text(data))


def test_timestamps_are_iso_8601_utc_to_the_microsecond_and_follow_the_clock():
    import datetime

    before = datetime.datetime.now(datetime.UTC)
    stamps = [timestamp_us() for _ in range(3)]
    after = datetime.datetime.now(datetime.UTC)
    for stamp in stamps:
        assert len(stamp) == len("2026-12-07T23:41:24.123456+00:00")
        moment = datetime.datetime.fromisoformat(stamp)
        assert before - datetime.timedelta(milliseconds=1) <= moment <= after + datetime.timedelta(milliseconds=1)
    assert stamps == sorted(stamps)


def test_a_chunk_the_output_cannot_take_is_dropped_before_it_is_formatted(monkeypatch):
    reader, writer = os.pipe()
    with open(writer, "w", closefd=False) as stream:  # a pipe nobody reads yet
        dump = HexdumpWriter(stream)
        chunk = memoryview(bytes(range(256)) * 64)  # 16 KiB, about 80 KiB of dump
        while not dump.output.dropped_bytes:  # fill the pipe and the queue until a record is dropped
            dump.chunk(1, "client->upstream", 0, chunk, "a:1", "b:2")
        formatted = []
        monkeypatch.setattr(proxy.output.tap, "dump_text", lambda data: formatted.append(data) or b"")
        dropped = dump.output.dropped_bytes
        dump.chunk(9, "client->upstream", 5, chunk, "a:1", "b:2")
        assert formatted == []
        header = len(f"{timestamp_us()} conn=9 client->upstream offset=5 len=16384 a:1 -> b:2\n")
        assert dump.output.dropped_bytes - dropped == header + dump_size(len(chunk))
        os.set_blocking(reader, False)
        seen = b""
        for _ in range(1000):  # the reader catches up: the loss is reported, naming the last dropped record's conn
            try:
                seen = seen[-4096:] + os.read(reader, 1 << 20)
            except BlockingIOError:
                dump.output.drain()
            if b"dump_dropped" in seen:
                break
        assert b"conn=9 dump_dropped bytes=" in seen
        dump.output.close()
    os.close(reader)
    os.close(writer)
