"""The asyncore-shaped dispatcher base: one socket, its interest, its handlers, its state.

A dispatcher never polls its own interest: when something changes what `readable()` or
`writable()` would answer, it calls `interest_changed()` and the reactor re-reads both before
its next wait. `close()` is idempotent and unregisters before it closes the socket.

States (checked: any other move is a StateError, a bug):

    CONNECTING -> OPEN      the connect's first writability (`handle_write_event`)
    CONNECTING -> CLOSED    closed, detached or handed over before it connected
    OPEN -> CLOSED          closed, detached or handed over

CLOSED is final: closing again does nothing, but a dispatcher that is done cannot detach or
hand over its socket a second time.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from proxy.errors import Meaning, StateEnum, StateError, classify
from proxy.loop.poller import READ, WRITE

if TYPE_CHECKING:
    from proxy.loop.reactor import Reactor


class State(StateEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


# The members as module constants for the per-connection paths: on Python 3.11 reading a member
# off its Enum class goes through the metaclass's __getattr__ hook, four times a global's cost.
CONNECTING, OPEN, CLOSED = State.CONNECTING, State.OPEN, State.CLOSED

_MOVES: dict[State, frozenset[State]] = {
    CONNECTING: frozenset({OPEN, CLOSED}),
    OPEN: frozenset({CLOSED}),
    CLOSED: frozenset(),
}


class Dispatcher:
    """Base class: override the `handle_*` methods and the two interest predicates."""

    # True for a socket no other descriptor refers to (a pair's side): closing it takes it out of
    # epoll by itself, so the reactor skips the system call that would. A shared socket (a
    # listener handed to workers) would stay registered, and must be unregistered first.
    private_fd = False
    mask = 0  # the events registered with the poller (none yet); owned by the reactor

    def __init__(self, reactor: Reactor, sock: socket.socket, state: State = OPEN) -> None:
        self.reactor = reactor
        self.socket = sock
        self.fd = sock.fileno()
        self.state = state

    # -- interest ------------------------------------------------------------------------

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def interest(self) -> int:
        """`readable()` and `writable()` as the poller's READ and WRITE bits. A dispatcher on the
        hot path may answer it in one call instead of two (a pair's side does)."""
        return (READ if self.readable() else 0) | (WRITE if self.writable() else 0)

    def _move(self, new: State) -> None:
        if new not in _MOVES[self.state]:
            raise StateError(f"{type(self).__name__} cannot go from {self.state.value} to {new.value}")
        self.state = new

    def interest_changed(self) -> None:
        """Tell the reactor that `readable()` or `writable()` may answer differently now."""
        self.reactor.dirty.add(self)

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    # -- events, as the reactor delivers them --------------------------------------------

    def handle_write_event(self, events: int) -> None:
        """Writable (`events` as the poller gave them): the connect's outcome while connecting."""
        if self.state is CONNECTING:
            self.state = OPEN  # CONNECTING -> OPEN, which the table allows: no call to check it
            self.handle_connect(events)
        else:
            self.handle_write()

    # -- handlers ------------------------------------------------------------------------

    def handle_read(self) -> None:
        """Readable. The reactor calls it directly: a read is the hot path, with no layer between."""

    def handle_last_read(self) -> None:
        """Readable, and the peer has shut its writing half: what is left is the last of its
        stream, then its end. Most dispatchers read it like any other."""
        self.handle_read()

    def handle_write(self) -> None:
        pass

    def handle_connect(self, events: int) -> None:
        pass

    def handle_error(self, exc: BaseException) -> None:
        """An exception escaped a handler: log it and close this dispatcher only."""
        self.reactor.log.failure("dispatcher_error", exc, dispatcher=type(self).__name__)
        self.close()

    def close(self) -> None:
        """Unregister, then close the socket. Safe to call more than once."""
        if self.state is CLOSED:
            return
        self.state = CLOSED  # from CONNECTING or OPEN, which the table allows: no call to check it
        self.reactor.forget(self, closing=True)
        self.socket.close()

    def detach(self) -> socket.socket:
        """Unregister and hand the still-open socket to a new owner; this dispatcher is done."""
        self._move(CLOSED)
        self.reactor.forget(self)
        return self.socket

    def hand_over(self, successor: Dispatcher) -> None:
        """Give this socket and its poller registration to `successor`, a dispatcher made
        for the same socket; this one is done. Cheaper than detach and register again."""
        self._move(CLOSED)
        self.reactor.transfer(self, successor)


class PeerDispatcher(Dispatcher):
    """A dispatcher for one peer's connection (an echo client, an admin client): what an exception
    means (errors.classify) decides, and a peer that went away is closed quietly."""

    def handle_error(self, exc: BaseException) -> None:
        meaning = classify(exc)
        if meaning is Meaning.TRY_LATER:
            return
        if meaning is Meaning.PEER_GONE:
            self.close()
        else:
            super().handle_error(exc)
