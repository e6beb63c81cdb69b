"""Connecting to an upstream: non-blocking connect, one server after another.

A Connector walks the candidates it is given (the route's pool decides their order and how many
retries there are): opaque objects to it but for their `.address`. It resolves each off the
loop, and tries each resolved address in turn with a non-blocking connect. `connect_timeout`
bounds the whole attempt on one server, its name lookup and all its addresses together: one
timer per server, started before resolution.

The outcome is reported to an observer, naming the candidate object itself: `connected` with the
attempt that worked, `attempt_failed` for each candidate that could not be reached (so health
tracking can learn from it), and `unreachable` when the list is exhausted, or at once with
`local=True` when this process itself is short of descriptors or ports (no server is to blame).
A connector given `prepare` has it set up each socket before its connect (proxy/loop/sockopts.py);
a socket it cannot prepare is a failed connect to that address, with its reason.
The observer owns the connected attempt: it hands the socket to a dispatcher of its own
(`hand_over`, which keeps the poller registration) or closes it. Whatever the observer raises
goes to its `handle_error`, once the connector has stopped and closed any socket it still held.

States (checked: any other move is a StateError, a bug):

    READY -> TRYING         `start`
    TRYING -> CONNECTED     an attempt worked (the observer is told `connected`)
    TRYING -> UNREACHABLE   no server is left to try, or this process is short (`unreachable`)
    READY, TRYING -> CANCELLED   `cancel`, or something raised: no observer call follows

Each of the last three is final; `cancel` in one of them has nothing left to stop.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from proxy.config.units import SocketAddress
from proxy.errors import OUT_OF_DESCRIPTORS, StateEnum, StateError
from proxy.loop.dispatcher import CONNECTING, Dispatcher
from proxy.loop.reactor import Reactor, Timer
from proxy.loop.resolver import Lane, Lookup, Resolution, TooManyLookups


class Candidate(Protocol):
    """A server to try, as whoever chose it knows it; the connector needs only its address."""

    @property
    def address(self) -> SocketAddress: ...


class ConnectObserver(Protocol):
    def connected(self, attempt: ConnectAttempt, server: Candidate) -> None: ...

    def attempt_failed(self, server: Candidate, reason: str) -> None: ...

    def unreachable(self, reason: str, *, local: bool = False) -> None: ...

    def handle_error(self, exc: Exception) -> None: ...


# Makes a new socket ready to connect to a candidate (options, a source bound); why it cannot, or None.
Prepare = Callable[[socket.socket, Candidate], str | None]


# Non-blocking from birth where the platform allows: one system call fewer on every connect.
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_NONBLOCKING_STREAM = socket.SOCK_STREAM | _SOCK_NONBLOCK


# Out of descriptors or of local ports: our shortage, not the server's fault (no passive back-off).
_LOCAL_SHORTAGE = OUT_OF_DESCRIPTORS | {errno.EADDRNOTAVAIL}


class ConnectorState(StateEnum):
    READY = "ready"  # made, not started
    TRYING = "trying"  # a server's name lookup or connect is under way
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"
    CANCELLED = "cancelled"


_MOVES: dict[ConnectorState, frozenset[ConnectorState]] = {
    ConnectorState.READY: frozenset({ConnectorState.TRYING, ConnectorState.CANCELLED}),
    ConnectorState.TRYING: frozenset({ConnectorState.CONNECTED, ConnectorState.UNREACHABLE, ConnectorState.CANCELLED}),
    ConnectorState.CONNECTED: frozenset(),
    ConnectorState.UNREACHABLE: frozenset(),
    ConnectorState.CANCELLED: frozenset(),
}


def _reason(code: int) -> str:
    return os.strerror(code).lower()


class ConnectAttempt(Dispatcher):
    """One non-blocking connect; the first writability tells how it went: a connect that worked
    when the poller reports nothing more, else whatever SO_ERROR says."""

    def __init__(self, reactor: Reactor, sock: socket.socket, sockaddr: tuple, connector: Connector) -> None:
        super().__init__(reactor, sock, CONNECTING)
        self.sockaddr = sockaddr  # the address connected to, as resolved
        self.connector = connector
        self.interest_changed()

    def writable(self) -> bool:
        return self.state is CONNECTING

    def handle_connect(self, events: int) -> None:
        failed = events & self.reactor.poller.failure_events
        code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if failed else 0
        self.connector.attempt_finished(self, code)

    def handle_error(self, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            self.connector.attempt_finished(self, exc.errno or errno.EIO)
            return
        self.close()
        self.connector.handle_error(exc)


class Connector:
    """Tries the candidates `servers` in order until one accepts a TCP connection."""

    def __init__(
        self,
        reactor: Reactor,
        resolver: Lane,
        servers: Iterator[Candidate],
        timeout: float,
        observer: ConnectObserver,
        prepare: Prepare | None = None,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.servers = servers
        self.timeout = timeout
        self.observer = observer
        self.prepare = prepare
        self.server: Candidate | None = None
        self.last_reason = "no server to try"
        self._sockaddrs: list[tuple[int, tuple]] = []
        # The work on the current server: its deadline, then its lookup or one connect.
        self._timer: Timer | None = None
        self._lookup: Lookup | None = None
        self._attempt: ConnectAttempt | None = None
        self.state = ConnectorState.READY

    def _move(self, new: ConnectorState) -> None:
        if new not in _MOVES[self.state]:
            raise StateError(f"connector cannot go from {self.state.value} to {new.value}")
        self.state = new

    def start(self) -> None:
        self._move(ConnectorState.TRYING)
        self._next_server()

    def cancel(self) -> None:
        """Stop trying; no observer call follows. Once it has connected, or told that nothing
        could be reached, there is nothing left to stop."""
        if ConnectorState.CANCELLED in _MOVES[self.state]:
            self._move(ConnectorState.CANCELLED)
            self._end_server()

    def handle_error(self, exc: Exception) -> None:
        """Something raised while connecting (the observer, or this connector): stop, and let
        the observer end its connection."""
        self.cancel()
        self.observer.handle_error(exc)

    def _tell(self, report: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            report(*args, **kwargs)
        except Exception as exc:
            self.handle_error(exc)

    def _next_server(self) -> None:
        server = next(self.servers, None)
        if server is None:
            self._move(ConnectorState.UNREACHABLE)
            self._tell(self.observer.unreachable, self.last_reason)
            return
        self.server = server
        self._sockaddrs = []
        self._timer = self.reactor.call_later(self.timeout, self._timed_out)
        lookup = self.resolver.resolve(server.address, self._resolved)
        if not lookup.done:  # else the answer came at once, and we may be on a later server already
            self._lookup = lookup

    def _resolved(self, result: Resolution) -> None:
        self._lookup = None
        if isinstance(result, OSError):
            if isinstance(result, TooManyLookups):
                self._give_up(f"cannot resolve {self.server.address.host}: {result}")
                return
            if result.errno in _LOCAL_SHORTAGE:  # getaddrinfo could not get a socket
                self._give_up(_reason(result.errno))
                return
            self._server_failed(f"cannot resolve {self.server.address.host}: {result.strerror or result}")
            return
        self._sockaddrs = list(result)
        self._next_sockaddr()

    def _next_sockaddr(self) -> None:
        while self._sockaddrs:
            family, sockaddr = self._sockaddrs.pop(0)
            try:
                sock = socket.SocketType(family, _NONBLOCKING_STREAM)  # the C type: see Listener
            except OSError as exc:
                if exc.errno in _LOCAL_SHORTAGE:
                    self._give_up(_reason(exc.errno))
                    return
                self.last_reason = _reason(exc.errno)
                continue
            if not _SOCK_NONBLOCK:
                sock.setblocking(False)
            if self.prepare is not None and (reason := self.prepare(sock, self.server)) is not None:
                sock.close()
                self.last_reason = reason
                continue
            code = sock.connect_ex(sockaddr)
            if code in (0, errno.EINPROGRESS):
                self._attempt = ConnectAttempt(self.reactor, sock, sockaddr, self)
                return
            sock.close()
            if code in _LOCAL_SHORTAGE:
                self._give_up(_reason(code))
                return
            self.last_reason = _reason(code)
        self._server_failed(self.last_reason)

    def _give_up(self, reason: str) -> None:
        """This process cannot connect anywhere now: no server is to blame, none is tried."""
        self._end_server()
        self.last_reason = reason
        self._move(ConnectorState.UNREACHABLE)
        self._tell(self.observer.unreachable, reason, local=True)

    def attempt_finished(self, attempt: ConnectAttempt, code: int) -> None:
        if attempt is not self._attempt:
            return
        self._attempt = None
        if code:
            attempt.close()
            self.last_reason = _reason(code)
            self._next_sockaddr()
            return
        self._end_server()
        self._move(ConnectorState.CONNECTED)
        try:
            self.observer.connected(attempt, self.server)
        except Exception as exc:
            attempt.close()  # unless it was handed over already: then it is closed, its socket not
            self.handle_error(exc)

    def _timed_out(self) -> None:
        self._timer = None
        self._server_failed("name resolution timed out" if self._lookup is not None else "connect timed out")

    def _server_failed(self, reason: str) -> None:
        self._end_server()
        self.last_reason = reason
        self._tell(self.observer.attempt_failed, self.server, reason)
        if self.state is ConnectorState.TRYING:  # else the observer cancelled, or raised
            self._next_server()

    def _end_server(self) -> None:
        """Stop the work on the current server: its timer, its lookup, its connect."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lookup is not None:
            self._lookup.cancel()
            self._lookup = None
        if self._attempt is not None:
            self._attempt.close()
            self._attempt = None
