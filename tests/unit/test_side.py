"""A side's state tables (relay/side.py) and its one error path: an illegal move is a bug that
ends exactly its connection with result=error, logged once, leaving nothing registered."""

from __future__ import annotations

import io
import socket

import pytest

from proxy.config.loader import load_config
from proxy.errors import StateError
from proxy.log import EventLog
from proxy.loop.poller import READ
from proxy.loop.reactor import Reactor
from proxy.relay import states
from proxy.relay.buffer import Budget
from proxy.relay.side import Reading, Side, Splice, Writing
from tests.support import WAIT, echo_handler, recv_exactly, serving, wait_until, write


class Owner:
    """A SideOwner that writes down what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __getattr__(self, event: str):
        return lambda side, *args: self.events.append((event, side.name))


@pytest.fixture
def side():
    reactor = Reactor(EventLog(stream=io.StringIO()))
    mine, theirs = socket.socketpair()
    mine.setblocking(False)
    made = Side(
        Owner(), reactor, mine, "client", "here", "client->upstream", scratch=memoryview(bytearray(1024)),
        buffer_size=1024, budget=Budget(1 << 20),
    )  # fmt: skip
    yield made
    made.close()
    theirs.close()
    reactor.close()


def test_a_side_starts_idle_and_open_and_not_splicing(side):
    assert (side.read, side.write, side.splice) == (Reading.IDLE, Writing.OPEN, Splice.OFF)
    assert not side.interest() & READ


@pytest.mark.parametrize("move", [Reading.PAUSED, Reading.EOF])
def test_an_idle_side_cannot_pause_or_end(side, move):
    with pytest.raises(StateError, match=f"reading cannot go from idle to {move.value}"):
        side._read_to(move)


def test_an_ended_stream_never_reads_again(side):
    side.start_reading()
    assert side.interest() & READ
    side._read_to(Reading.EOF)
    assert not side.interest() & READ
    with pytest.raises(StateError):
        side._read_to(Reading.READING)


def test_a_shut_writing_half_stays_shut(side):
    side._write_to(Writing.SHUT)
    with pytest.raises(StateError):
        side._write_to(Writing.DRAINING_TO_SHUT)


def test_an_illegal_move_ends_exactly_its_connection_as_an_error(tmp_path, start_upstream, monkeypatch):
    # A bug planted in the reading table: a client side may not see its stream end. The client's
    # half-close must then end that connection (result=error, one connection_error line, no
    # traceback), leave nothing of it registered, and the listener keeps serving.
    monkeypatch.setitem(states.READ_MOVES, Reading.READING, frozenset({Reading.PAUSED}))
    upstream = start_upstream(echo_handler)
    config = load_config(
        write(tmp_path, f'listeners:\n  - {{listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n')
    ).config
    with serving(config) as (server, lines):
        registered = len(server.listeners)
        (listener,) = server.listeners.values()
        address = listener.dispatcher.socket.getsockname()[:2]
        for number in range(2):
            with socket.create_connection(address, timeout=WAIT) as client:
                client.sendall(b"ping")
                assert recv_exactly(client, 4) == b"ping"
                client.shutdown(socket.SHUT_WR)
                assert wait_until(lambda done=number + 1: len(lines.events("access")) == done)
            assert wait_until(lambda: len(server.reactor.map) == registered), server.reactor.map
            assert not server.runtime.pairs
    errors = lines.events("connection_error")
    assert [error["side"] for error in errors] == ["client", "client"]
    assert errors[0]["error"] == "StateError: client side: reading cannot go from reading to eof"
    for access in lines.events("access"):
        assert (access["result"], access["reason"]) == ("error", errors[0]["error"])
    assert "Traceback" not in lines.text()


def test_a_paused_side_whose_read_event_was_already_due_can_see_the_end_of_stream(side):
    # The reactor delivers a batch's events without asking readable() again: a side paused by
    # an earlier handler of the same batch (its peer's buffer, or the process budget, filled)
    # still gets its read, and the remote end may have closed.
    side._read_to(Reading.READING)
    side._read_to(Reading.PAUSED)
    side.owner.events.clear()
    side.socket.shutdown(socket.SHUT_RD)  # what the remote end's FIN does to our reads
    side.handle_read()
    assert side.read is Reading.EOF
    assert side.owner.events == [("end_of_stream", "client")]
