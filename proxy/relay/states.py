"""The relay's state machines: their states, their move tables, and their members as constants.

Each machine is an enum with a checked table of moves (any other move is a StateError, a bug
that ends exactly its connection with result=error). The members are also module constants
here, under public names, for the per-event and per-connection paths: on Python 3.11 reading a
member off its Enum class goes through the metaclass's __getattr__ hook, about four times what
reading a global costs. This is the one place those constants are made; the relay's modules
import them from here.

  a side's reading:   IDLE --TLS--> HANDSHAKING --done--> IDLE --pair open--> READING <--> PAUSED
                      READING or PAUSED --end of stream--> EOF;  any --closed--> CLOSED
  a side's writing:   OPEN --peer's EOF, bytes still queued--> DRAINING_TO_SHUT --drained--> SHUT
                      OPEN --peer's EOF, nothing queued--> SHUT
  a side's splicing:  OFF --plain pair opens--> COUNTING --SPLICE_AFTER bulk bytes--> READY
                      READY --the peer's buffer drained--> ON;  READY --no descriptor for a pipe--> OFF
"""

from __future__ import annotations

import socket

from proxy.errors import StateEnum, refused_move
from proxy.loop.poller import READ


def check_move(moves: dict, old: StateEnum, new: StateEnum, what: str) -> StateEnum:
    """`new`, if `moves` allows the move from `old`; else the StateError that names `what` moved.
    (The per-connection paths test the table inline instead: a call costs as much as the test.)"""
    if new not in moves[old]:
        raise refused_move(what, old, new)
    return new


class Reading(StateEnum):
    IDLE = "idle"  # not read: the pair is not open (no one to take the bytes yet)
    HANDSHAKING = "handshaking"  # a TLS side reads its handshake before the pair is open
    READING = "reading"
    PAUSED = "paused"  # the peer's buffer (or the process's budget) is full
    EOF = "eof"  # this socket's peer shut its writing half
    CLOSED = "closed"  # the side is closed: nothing it was doing goes on


class Writing(StateEnum):
    OPEN = "open"
    DRAINING_TO_SHUT = "draining_to_shut"  # shut our writing half once `outgoing` drains
    SHUT = "shut"


class Splice(StateEnum):
    OFF = "off"  # copying through Python, for good (TLS, a dump, or no splicing)
    COUNTING = "counting"  # copying, counting big reads toward SPLICE_AFTER
    READY = "ready"  # bulk: splice as soon as the peer's buffer has drained
    ON = "on"  # reads go socket -> the peer's pipe -> the peer's socket


IDLE, HANDSHAKING, READING, PAUSED, EOF = (
    Reading.IDLE, Reading.HANDSHAKING, Reading.READING, Reading.PAUSED, Reading.EOF
)  # fmt: skip
READ_CLOSED = Reading.CLOSED
OPEN, DRAINING_TO_SHUT, SHUT = Writing.OPEN, Writing.DRAINING_TO_SHUT, Writing.SHUT
SPLICE_OFF, SPLICE_COUNTING, SPLICE_READY, SPLICE_ON = Splice.OFF, Splice.COUNTING, Splice.READY, Splice.ON
MSG_MORE = getattr(socket, "MSG_MORE", 0)  # a send flag: more follows at once (the end of the stream)

_EVERY_READING = frozenset(Reading)
READ_MOVES: dict[Reading, frozenset[Reading]] = {
    Reading.IDLE: frozenset({Reading.HANDSHAKING, Reading.READING, Reading.CLOSED}),
    Reading.HANDSHAKING: frozenset({Reading.IDLE, Reading.CLOSED}),
    Reading.READING: frozenset({Reading.PAUSED, Reading.EOF, Reading.CLOSED}),
    Reading.PAUSED: frozenset({Reading.READING, Reading.EOF, Reading.CLOSED}),  # a read already due may find the end
    Reading.EOF: frozenset({Reading.CLOSED}),
    Reading.CLOSED: frozenset({Reading.CLOSED}),  # closing twice is closing once
}
WRITE_MOVES: dict[Writing, frozenset[Writing]] = {
    Writing.OPEN: frozenset({Writing.DRAINING_TO_SHUT, Writing.SHUT}),
    Writing.DRAINING_TO_SHUT: frozenset({Writing.SHUT}),
    Writing.SHUT: frozenset(),
}
SPLICE_MOVES: dict[Splice, frozenset[Splice]] = {
    Splice.OFF: frozenset({Splice.COUNTING}),
    Splice.COUNTING: frozenset({Splice.READY}),
    Splice.READY: frozenset({Splice.ON, Splice.OFF}),
    Splice.ON: frozenset(),
}

# Which reading states ask the poller for reads: a side's `interest()` reads its READ bit here.
# A plain side reads only while READING; a TLS side also while it shakes hands.
PLAIN_READS: dict[Reading, int] = {state: READ if state is Reading.READING else 0 for state in _EVERY_READING}
TLS_READS: dict[Reading, int] = {**PLAIN_READS, Reading.HANDSHAKING: READ}


class Phase(StateEnum):
    """A pair's phase (pair.py)."""

    ADMITTING = "admitting"  # accepted: a preamble, allow/deny, routing
    CLIENT_HANDSHAKE = "client_handshake"  # TLS with the client, while admitting
    CONNECTING = "connecting"  # a Connector walks the candidates
    UPSTREAM_HANDSHAKE = "upstream_handshake"  # TLS with the upstream that accepted TCP
    RELAYING = "relaying"  # both sides open, bytes flow both ways
    DRAINING = "draining"  # one direction has ended; the other still flows
    CLOSED = "closed"  # finished: the access line is written

    @property
    def shown(self) -> str:
        """The phase as the admin pages show it: either handshake is `handshaking`."""
        return "handshaking" if self in _HANDSHAKES else self.value


_HANDSHAKES = frozenset({Phase.CLIENT_HANDSHAKE, Phase.UPSTREAM_HANDSHAKE})
ADMITTING, CLIENT_HANDSHAKE, CONNECTING, UPSTREAM_HANDSHAKE = (
    Phase.ADMITTING, Phase.CLIENT_HANDSHAKE, Phase.CONNECTING, Phase.UPSTREAM_HANDSHAKE
)  # fmt: skip
RELAYING, DRAINING, CLOSED = Phase.RELAYING, Phase.DRAINING, Phase.CLOSED

PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.ADMITTING: frozenset({Phase.CONNECTING, Phase.CLIENT_HANDSHAKE, Phase.CLOSED}),
    Phase.CLIENT_HANDSHAKE: frozenset({Phase.ADMITTING, Phase.CLOSED}),
    Phase.CONNECTING: frozenset({Phase.UPSTREAM_HANDSHAKE, Phase.RELAYING, Phase.CLOSED}),
    Phase.UPSTREAM_HANDSHAKE: frozenset({Phase.CONNECTING, Phase.RELAYING, Phase.CLOSED}),
    Phase.RELAYING: frozenset({Phase.DRAINING, Phase.CLOSED}),
    Phase.DRAINING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}

# How the two sides' writing halves end a pair, across the two machines (as h11's
# STATE_TRIGGERED_TRANSITIONS): when a side shuts its writing half, the pair looks up the pair
# of states and finishes with that result. One row today: both halves shut, the pair is closed.
PAIR_ENDS: dict[tuple[Writing, Writing], str] = {
    (Writing.SHUT, Writing.SHUT): "closed",
}
