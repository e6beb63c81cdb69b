"""The hex dump formatter: the contract's example, edge lengths, and parsing back."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.hexdump import dump_lines, parse_dump_line

CONTRACT_EXAMPLE = [
    "00000000  47 45 54 20 2f 20 48 54  54 50 2f 31 2e 31 0d 0a  |GET / HTTP/1.1..|",
    "00000010  0d 0a                                             |..|",
]


def test_the_contract_example():
    assert dump_lines(b"GET / HTTP/1.1\r\n\r\n") == CONTRACT_EXAMPLE


def test_lengths_around_a_line():
    assert dump_lines(b"") == []
    assert len(dump_lines(b"x" * 16)) == 1
    assert len(dump_lines(b"x" * 17)) == 2
    for size in range(1, 17):
        line = dump_lines(bytes(range(size)))[0]
        assert line.index("|") == 60, "the ASCII column stays put for short lines"


def test_non_printable_bytes_are_dots_and_memoryviews_work():
    data = bytes([0, 31, 32, 126, 127, 255])
    assert dump_lines(memoryview(data)) == dump_lines(data)
    assert dump_lines(data)[0].endswith("|.. ~..|")


@given(st.binary(max_size=2000))
def test_parsing_the_lines_back_gives_the_bytes(data):
    lines = dump_lines(data)
    parsed = [parse_dump_line(line) for line in lines]
    assert [offset for offset, _ in parsed] == list(range(0, len(data), 16))
    assert b"".join(chunk for _, chunk in parsed) == data


def test_parse_rejects_other_lines():
    with pytest.raises(ValueError):
        parse_dump_line("2026-11-25T10:00:00 conn=1 open a -> b")


@pytest.mark.skipif(shutil.which("hexdump") is None, reason="hexdump is not installed")
@pytest.mark.parametrize("size", [1, 15, 16, 17, 100])
def test_same_as_hexdump_minus_c(size):
    data = bytes((i * 37 + 11) % 256 for i in range(size))  # no two rows alike, so no '*' folding
    output = subprocess.run(["hexdump", "-C"], input=data, capture_output=True, check=True).stdout.decode()
    assert dump_lines(data) == output.splitlines()[:-1]  # hexdump ends with the total length
