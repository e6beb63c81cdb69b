"""The send buffer: order, partial sends, watermarks."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.buffer import SendBuffer


def drain(buffer: SendBuffer, step: int) -> bytes:
    out = bytearray()
    while buffer:
        front = buffer.front()
        take = min(step, len(front))
        out += front[:take]
        buffer.consume(take)
    return bytes(out)


def test_order_and_partial_consumption_across_chunks():
    buffer = SendBuffer(high=100)
    for chunk in (b"abc", b"", b"defgh", b"ij"):
        buffer.append(chunk)
    assert len(buffer) == 10
    buffer.consume(4)
    assert bytes(buffer.front()) == b"efgh"
    assert drain(buffer, 3) == b"efghij"
    assert not buffer


def test_consuming_more_than_held_is_an_error():
    buffer = SendBuffer(high=10)
    buffer.append(b"abc")
    with pytest.raises(ValueError):
        buffer.consume(4)


def test_watermarks():
    buffer = SendBuffer(high=100)
    assert buffer.low == 25
    buffer.append(b"x" * 99)
    assert not buffer.full and not buffer.drained
    buffer.append(b"x")
    assert buffer.full
    buffer.consume(75)
    assert buffer.drained
    with pytest.raises(ValueError):
        SendBuffer(high=0)


def test_send_with_a_real_socket_keeps_what_did_not_fit():
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        buffer = SendBuffer(high=1 << 30)
        payload = bytes(range(256)) * 40000  # ~10 MB: more than the socket takes at once
        buffer.append(payload)
        buffer.send_with(left.send)
        assert 0 < len(buffer) < len(payload)
        received = bytearray()
        right.settimeout(5)
        while len(received) < len(payload):
            received += right.recv(1 << 20)
            buffer.send_with(left.send)
        assert bytes(received) == payload and not buffer


@given(st.lists(st.binary(max_size=50), max_size=30), st.integers(1, 40))
def test_matches_a_plain_bytearray(chunks, step):
    buffer = SendBuffer(high=10_000)
    for chunk in chunks:
        buffer.append(chunk)
    assert len(buffer) == sum(map(len, chunks))
    assert drain(buffer, step) == b"".join(chunks)
