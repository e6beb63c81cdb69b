"""One peer's stream, read and written in bytes: the base of the admin socket's clients and of both
ends of a worker's admin pair.

What arrives piles up in `incoming` for `received()`; the peer's end of stream is `ended()`.
What is queued in `outgoing` is sent as the socket takes it, and `drained()` says when all of it
has gone. Handlers raise what the socket raises: `handle_error` acts on what it means
(errors.classify), as every dispatcher does: try later, a peer gone closed quietly, a bug logged
under the channel's own event name and closed.
"""

from __future__ import annotations

import socket
from typing import Any

from proxy.errors import Meaning, classify
from proxy.log import EventLog
from proxy.loop.dispatcher import PeerDispatcher
from proxy.loop.reactor import Reactor


class Channel(PeerDispatcher):
    """Bytes in and out of one socket; the subclass says what they mean."""

    read_size = 8192

    def __init__(self, reactor: Reactor, sock: socket.socket, log: EventLog, failure: str, **context: Any) -> None:
        """A bug behind it is logged as `failure`, with `context`."""
        super().__init__(reactor, sock)
        self.log = log
        self._failure = failure
        self._context = context
        self.incoming = bytearray()
        self.outgoing = bytearray()

    def writable(self) -> bool:
        return bool(self.outgoing)

    def handle_read(self) -> None:
        data = self.socket.recv(self.read_size)
        if not data:
            self.ended()
            return
        self.incoming += data
        self.received()

    def handle_write(self) -> None:
        sent = self.socket.send(self.outgoing)
        del self.outgoing[:sent]
        if not self.outgoing:
            self.interest_changed()
            self.drained()

    def send_now(self) -> None:
        """Send what the socket takes of what is queued, from outside this channel's own events
        (an answer that came later, a request another client's command made): what the socket
        raises is this channel's to handle, never the caller's."""
        try:
            self.handle_write()
        except Exception as exc:
            self.handle_error(exc)

    def received(self) -> None:
        """`incoming` has grown."""

    def ended(self) -> None:
        """The peer has said all it will."""
        self.close()

    def drained(self) -> None:
        """Everything queued has been sent."""

    def handle_error(self, exc: BaseException) -> None:
        if classify(exc) is Meaning.BUG:
            self.log.failure(self._failure, exc, **self._context)
            self.close()
        else:
            super().handle_error(exc)  # try later, or the peer is gone: closed quietly
