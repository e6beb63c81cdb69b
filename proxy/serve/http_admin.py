"""The HTTP admin listener: GET /metrics, /ready, /status and /conns on the serving reactor.

One request per connection, answered whole and closed. Whoever reaches the port can send
anything, so nothing a client does may stall the loop or hold memory it chose: a request head
is read up to MAX_HEAD (431 past it), a client idle for IDLE_TIMEOUT is closed, at most
MAX_CLIENTS are served at once (more are closed at accept), and each holds at most its one
answer, whose size the configuration bounds (the connections listed, the listeners, the
servers). After answering, what a client still sends is read and dropped for a moment
(LINGER) before closing, so that a reset does not destroy the answer on its way.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from proxy.config.units import Address
from proxy.log import EventLog
from proxy.loop.dispatcher import PeerDispatcher
from proxy.loop.listener import Listener, bind_listening_socket
from proxy.loop.reactor import Reactor, Timer
from proxy.protocol import prometheus
from proxy.protocol.http import MAX_HEAD, Request, format_response, head_end, parse_request
from proxy.protocol.snapshots import Snapshot
from proxy.serve.status_page import render_conns, render_status

IDLE_TIMEOUT = 10.0  # seconds without a byte read or written
LINGER = 2.0  # seconds an answered client's leftover input is read and dropped
MAX_CLIENTS = 64
READ_SIZE = 16 * 1024
HTML = "text/html; charset=utf-8"


class AdminHttp:
    """The admin HTTP listener: `snapshot()` is what it shows, `draining()` what /ready says."""

    def __init__(
        self,
        reactor: Reactor,
        log: EventLog,
        address: Address,
        snapshot: Callable[[], Snapshot],
        draining: Callable[[], bool],
    ) -> None:
        """Binds at once: a StartupError says why it could not."""
        self.reactor = reactor
        self.snapshot = snapshot
        self.draining = draining
        self.clients: set[AdminClient] = set()
        self.dispatcher = Listener(reactor, bind_listening_socket(address), "admin", self.accept)
        log.info("admin_listening", address=self.dispatcher.address)

    @property
    def address(self) -> str:
        return self.dispatcher.address

    def accept(self, sock: socket.socket, _peer: tuple) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            sock.close()
            return
        self.clients.add(AdminClient(self, sock))

    def answer(self, request: Request) -> bytes:
        """The whole response to one well-formed request."""
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return format_response(405, b"only GET and HEAD\n", extra=(("Allow", "GET, HEAD"),))
        path = request.path
        if path == "/ready":
            if self.draining():
                return format_response(503, b"draining\n", head_only=head_only)
            return format_response(200, b"ready\n", head_only=head_only)
        if path == "/metrics":
            text = prometheus.render(self.snapshot())
            return format_response(200, text.encode(), prometheus.CONTENT_TYPE, head_only=head_only)
        if path in ("/status", "/"):
            return format_response(200, render_status(self.snapshot()).encode(), HTML, head_only=head_only)
        if path == "/conns":
            return format_response(200, render_conns(self.snapshot()), "application/json", head_only=head_only)
        return format_response(404, b"not found: try /metrics, /ready, /status or /conns\n", head_only=head_only)

    def close(self) -> None:
        self.dispatcher.close()
        for client in list(self.clients):
            client.close()


class AdminClient(PeerDispatcher):
    """One admin HTTP client: read a head, answer, linger a moment, close."""

    def __init__(self, admin: AdminHttp, sock: socket.socket) -> None:
        super().__init__(admin.reactor, sock)
        self.admin = admin
        self.received = bytearray()
        self.outgoing: memoryview | None = None  # the answer, once there is one
        self.lingering = False
        self.last_active = self.reactor.now
        self.timer: Timer = self.reactor.call_later(IDLE_TIMEOUT, self._idle_check)
        self.interest_changed()

    def readable(self) -> bool:
        return self.outgoing is None or self.lingering

    def writable(self) -> bool:
        return self.outgoing is not None and not self.lingering

    def handle_read(self) -> None:
        data = self.socket.recv(READ_SIZE)
        self.last_active = self.reactor.now
        if self.lingering:
            if not data:
                self.close()
            return
        if not data:
            self.close()  # gone before asking anything whole
            return
        self.received += data
        end = head_end(self.received)
        if end > MAX_HEAD or (end < 0 and len(self.received) > MAX_HEAD):
            self.respond(format_response(431, b"request head larger than 8 KiB\n"))
            return
        if end < 0:
            return
        try:
            request = parse_request(bytes(self.received[:end]))
        except ValueError as exc:
            self.respond(format_response(400, f"{exc}\n".encode()))
            return
        self.respond(self.admin.answer(request))

    def respond(self, response: bytes) -> None:
        self.received = bytearray()
        self.outgoing = memoryview(response)
        self.interest_changed()
        self.handle_write()

    def handle_write(self) -> None:
        sent = self.socket.send(self.outgoing)
        self.last_active = self.reactor.now
        self.outgoing = self.outgoing[sent:]
        if self.outgoing:
            return
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.lingering = True
        self.interest_changed()
        self.timer.cancel()
        self.timer = self.reactor.call_later(LINGER, self.close)

    def _idle_check(self) -> None:
        if self.closed:
            return
        left = self.last_active + IDLE_TIMEOUT - self.reactor.now
        if left > 0:
            self.timer = self.reactor.call_later(left, self._idle_check)
        else:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.timer.cancel()
        self.admin.clients.discard(self)
        super().close()
