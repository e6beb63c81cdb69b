"""The send buffer: order, partial consumption, watermarks, and a model it must agree with; the
process-wide budget the buffers count against."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.relay.buffer import Budget, SendBuffer


def take(buffer: SendBuffer, count: int) -> bytes:
    """What a sender would do: look at the front chunk, send up to `count` of it, consume that."""
    front = buffer.front()
    taken = bytes(front[: min(count, len(front))])
    buffer.consume(len(taken))
    return taken


def drain(buffer: SendBuffer, step: int) -> bytes:
    out = bytearray()
    while buffer:
        out += take(buffer, step)
    return bytes(out)


def test_a_new_buffer_is_empty():
    buffer = SendBuffer(high=100)
    assert buffer.size == len(buffer) == 0
    assert not buffer


def test_append_front_consume_size():
    buffer = SendBuffer(high=100)
    buffer.append(b"hello")
    buffer.append(b" world")
    assert buffer.size == len(buffer) == 11
    assert buffer
    assert bytes(buffer.front()) == b"hello", "chunks are kept as they came, the first at the front"
    buffer.consume(5)
    assert buffer.size == 6
    assert bytes(buffer.front()) == b" world"
    buffer.consume(6)
    assert buffer.size == 0
    assert not buffer


def test_a_partial_consume_leaves_the_rest_of_the_chunk_in_front():
    buffer = SendBuffer(high=100)
    buffer.append(b"abcdef")
    buffer.consume(2)
    assert bytes(buffer.front()) == b"cdef"
    assert len(buffer) == 4


def test_consume_across_chunk_boundaries():
    buffer = SendBuffer(high=100)
    for chunk in (b"abc", b"defgh", b"ij", b"klmn"):
        buffer.append(chunk)
    buffer.consume(4)  # all of "abc" and the "d" of the second chunk
    assert bytes(buffer.front()) == b"efgh"
    assert len(buffer) == 10
    buffer.consume(6)  # "efgh" and "ij" exactly: a chunk boundary
    assert bytes(buffer.front()) == b"klmn"
    assert len(buffer) == 4
    assert drain(buffer, 3) == b"klmn"


def test_consume_zero_changes_nothing():
    buffer = SendBuffer(high=100)
    buffer.consume(0)
    buffer.append(b"abc")
    buffer.consume(0)
    assert bytes(buffer.front()) == b"abc" and len(buffer) == 3


@pytest.mark.parametrize("held", [b"", b"abc"])
def test_consuming_more_than_held_raises_and_keeps_the_bytes(held):
    buffer = SendBuffer(high=10)
    buffer.append(held)
    with pytest.raises(ValueError, match=f"{len(held) + 1} bytes from a buffer of {len(held)}"):
        buffer.consume(len(held) + 1)
    assert len(buffer) == len(held)
    assert drain(buffer, 100) == held


def test_a_negative_consume_is_refused():
    buffer = SendBuffer(high=10)
    buffer.append(b"abc")
    with pytest.raises(ValueError):
        buffer.consume(-1)
    assert len(buffer) == 3 and bytes(buffer.front()) == b"abc"


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b""), memoryview(b"abc")[3:]])
def test_empty_appends_are_ignored(empty):
    buffer = SendBuffer(high=10)
    buffer.append(empty)
    assert not buffer and len(buffer) == 0
    buffer.append(b"x")
    buffer.append(empty)
    buffer.consume(1)
    assert not buffer, "no empty chunk was queued behind the real one"
    with pytest.raises(IndexError):
        buffer.front()


def test_memoryview_chunks_are_kept_without_copying():
    payload = b"0123456789"
    buffer = SendBuffer(high=100)
    buffer.append(memoryview(payload)[2:8])
    assert bytes(buffer.front()) == b"234567"
    assert buffer.front().obj is payload


def test_default_low_watermark_is_a_quarter_of_high():
    assert SendBuffer(high=100).low == 25
    assert SendBuffer(high=262144).low == 65536
    assert SendBuffer(high=3).low == 0


def test_explicit_low_watermark_is_kept_and_capped_at_high():
    assert SendBuffer(high=100, low=10).low == 10
    assert SendBuffer(high=100, low=0).low == 0
    assert SendBuffer(high=100, low=500).low == 100


@pytest.mark.parametrize("high", [0, -1])
def test_high_watermark_must_be_positive(high):
    with pytest.raises(ValueError, match="positive"):
        SendBuffer(high=high)


def test_full_at_high_and_drained_at_low():
    buffer = SendBuffer(high=100)
    assert buffer.drained and not buffer.full
    buffer.append(b"x" * 25)
    assert buffer.drained, "at the low watermark a paused reader may read again"
    buffer.append(b"x")
    assert not buffer.drained and not buffer.full
    buffer.append(b"x" * 73)
    assert len(buffer) == 99 and not buffer.full
    buffer.append(b"x")
    assert buffer.full, "at the high watermark the reader must stop"
    buffer.append(b"x" * 50)
    assert buffer.full and not buffer.drained
    buffer.consume(51)
    assert not buffer.full and not buffer.drained
    buffer.consume(74)
    assert len(buffer) == 25 and buffer.drained


def test_clear_empties_it():
    buffer = SendBuffer(high=10)
    buffer.append(b"x" * 20)
    buffer.clear()
    assert not buffer and len(buffer) == 0 and buffer.drained and not buffer.full


def test_send_with_keeps_what_a_real_socket_did_not_take():
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.settimeout(5)
        buffer = SendBuffer(high=1 << 30)
        payload = bytes(range(256)) * 32768  # 8 MiB: more than a socket takes at once
        for start in range(0, len(payload), 100_000):
            buffer.append(payload[start : start + 100_000])
        buffer.send_with(left.send)  # the socket fills up: BlockingIOError is absorbed
        assert 0 < len(buffer) < len(payload)
        received = bytearray()
        while len(received) < len(payload):
            data = right.recv(1 << 20)
            assert data, "the peer saw EOF before all the bytes"
            received += data
            buffer.send_with(left.send)
        assert bytes(received) == payload
        assert not buffer


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=40)),
        st.tuples(st.just("take"), st.integers(0, 60)),
        st.tuples(st.just("consume"), st.integers(0, 100)),
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(_OPS, st.integers(1, 200), st.integers(1, 20))
def test_behaves_like_a_bytearray(ops, high, step):
    budget = Budget(1 << 30)
    buffer = SendBuffer(high=high, budget=budget)
    model = bytearray()
    for op, arg in ops:
        if op == "append":
            buffer.append(arg)
            model += arg
        elif op == "take":
            if not model:
                continue
            front = bytes(buffer.front())
            assert front and model.startswith(front), "the front chunk is the oldest bytes"
            taken = take(buffer, arg)
            assert taken == model[: len(taken)]
            del model[: len(taken)]
        else:  # consume any count up to the size, across chunk boundaries
            count = min(arg, len(model))
            buffer.consume(count)
            del model[:count]
        assert len(buffer) == buffer.size == len(model)
        assert bool(buffer) == bool(model)
        assert buffer.full == (len(model) >= high)
        assert buffer.drained == (len(model) <= high // 4)
        assert budget.held == len(model)
    assert drain(buffer, step) == bytes(model)
    assert not buffer and budget.held == 0


# -- the budget ----------------------------------------------------------------------------


class Reader:
    def __init__(self, name: str, released: list[str]) -> None:
        self.name, self.released = name, released

    def budget_released(self) -> None:
        self.released.append(self.name)


def test_buffers_count_against_a_shared_budget_with_hysteresis():
    budget = Budget(100)
    assert budget.low == 75
    one, two = SendBuffer(1000, budget=budget), SendBuffer(1000, budget=budget)
    one.append(b"x" * 60)
    two.append(b"y" * 40)
    assert budget.held == 100 and not budget.over  # at the limit is not past it
    two.append(b"y")
    assert budget.over
    released: list[str] = []
    first, second, gone = Reader("first", released), Reader("second", released), Reader("gone", released)
    for reader in (first, second, gone, first):
        budget.hold(reader)
    budget.forget(gone)
    one.consume(20)
    assert budget.held == 81 and budget.over and released == []  # still above the low mark
    two.clear()
    assert budget.held == 40 and not budget.over
    assert released == ["first", "second"]  # each once, in the order they were held
    one.consume(40)
    assert budget.held == 0 and released == ["first", "second"]


@pytest.mark.parametrize("limit", [0, -1])
def test_a_budget_must_be_positive(limit):
    with pytest.raises(ValueError):
        Budget(limit)
