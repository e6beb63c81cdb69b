"""The HTTP admin listener: GET /metrics, /ready, /status and /conns on the serving reactor.

One request per connection, answered whole and closed. Whoever reaches the port can send
anything, so nothing a client does may stall the loop or hold memory or a place it chose: a
request head is read up to MAX_HEAD (431 past it) and must be whole within HEAD_TIMEOUT of the
accept, however slowly it trickles (408 then); a client whose answer does not move for
IDLE_TIMEOUT is closed; at most MAX_CLIENTS are served at once, and a new client past them takes
the place of the oldest one still sending its head or being sent its answer SHED_AFTER after its
accept (closed), so slow clients cannot keep a load balancer's /ready out; with none that slow
(a flood of new connections), the new client is closed instead, so a flood cannot push out a
probe accepted before it that the loop has not read yet. Each client holds at most its one answer,
whose size the configuration bounds (the connections listed, the listeners, the servers). After
answering, what a client still sends is read and dropped for a moment (LINGER) before closing,
so that a reset does not destroy the answer on its way.

An answer may come later (under `run --workers` the supervisor asks its workers first: an
admin.Later); /ready never waits for one: what `unready()` says decides it at once. A snapshot
refused (a worker's error) is a 503 saying why; a bug behind a page is logged (`admin_failed`)
and answered 500.
"""

from __future__ import annotations

import enum
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
from proxy.serve.admin import Later
from proxy.serve.status_page import render_conns, render_status

HEAD_TIMEOUT = 5.0  # seconds from the accept to the end of the request head
IDLE_TIMEOUT = 10.0  # seconds an answer may wait for its first byte to go, or for the next
LINGER = 2.0  # seconds an answered client's leftover input is read and dropped
MAX_CLIENTS = 64
SHED_AFTER = 1.0  # seconds a client must have been slow before a full house closes it for a new one
READ_SIZE = 16 * 1024
HTML = "text/html; charset=utf-8"


def _status_page(snapshot: Snapshot) -> bytes:
    return render_status(snapshot).encode()


# The paths drawn from a snapshot -> (the body made of it, its content type).
PAGES: dict[str, tuple[Callable[[Snapshot], bytes], str]] = {
    "/metrics": (lambda snapshot: prometheus.render(snapshot).encode(), prometheus.CONTENT_TYPE),
    "/status": (_status_page, HTML),
    "/": (_status_page, HTML),
    "/conns": (render_conns, "application/json"),
}


class AdminHttp:
    """The admin HTTP listener: `snapshot()` is what it shows; `unready()` is why /ready says 503
    (`draining`, say), or None while it says 200."""

    def __init__(
        self,
        reactor: Reactor,
        log: EventLog,
        address: Address,
        snapshot: Callable[[], Snapshot | Later[Snapshot]],
        unready: Callable[[], str | None],
    ) -> None:
        """Binds at once: a StartupError says why it could not."""
        self.reactor = reactor
        self.log = log
        self.snapshot = snapshot
        self.unready = unready
        self.clients: dict[AdminClient, None] = {}  # in the order accepted: the oldest first
        self.dispatcher = Listener(reactor, bind_listening_socket(address), "admin", self.accept)
        log.info("admin_listening", address=self.dispatcher.address)

    @property
    def address(self) -> str:
        return self.dispatcher.address

    def accept(self, sock: socket.socket, _peer: tuple) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            oldest = next((client for client in self.clients if client.sheddable), None)
            if oldest is None:  # all new, or being answered, or lingering: each ends within its bound
                sock.close()
                return
            oldest.close()
        self.clients[AdminClient(self, sock)] = None

    def answer(self, request: Request) -> Later[bytes]:
        """The whole response to one well-formed request, now or once the snapshot is there."""
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return Later.of(format_response(405, b"only GET and HEAD\n", extra=(("Allow", "GET, HEAD"),)))
        path = request.path
        if path == "/ready":
            reason = self.unready()
            if reason is not None:
                return Later.of(format_response(503, f"{reason}\n".encode(), head_only=head_only))
            return Later.of(format_response(200, b"ready\n", head_only=head_only))
        page = PAGES.get(path)
        if page is None:
            return Later.of(
                format_response(404, b"not found: try /metrics, /ready, /status or /conns\n", head_only=head_only)
            )
        body, kind = page

        def failed(exc: Exception) -> bytes:
            self.log.failure("admin_failed", exc, path=path)
            return format_response(500, b"internal error\n", head_only=head_only)

        return (
            Later.calling(self.snapshot)
            .then(lambda snapshot: format_response(200, body(snapshot), kind, head_only=head_only))
            .otherwise(lambda refusal: format_response(503, f"{refusal}\n".encode(), head_only=head_only), failed)
        )

    def close(self) -> None:
        self.dispatcher.close()
        for client in list(self.clients):
            client.close()


class Phase(enum.Enum):
    HEAD = "head"  # reading the request head, until HEAD_TIMEOUT
    ANSWERING = "answering"  # the head is whole; the answer is still to come
    SENDING = "sending"  # the answer goes out, while it moves
    LINGERING = "lingering"  # answered: leftover input read and dropped for LINGER


class AdminClient(PeerDispatcher):
    """One admin HTTP client: read a head, answer, linger a moment, close."""

    def __init__(self, admin: AdminHttp, sock: socket.socket) -> None:
        super().__init__(admin.reactor, sock)
        self.admin = admin
        self.phase = Phase.HEAD
        self.received = bytearray()
        self.outgoing = memoryview(b"")
        self.accepted = self.last_active = self.reactor.now
        self.timer: Timer = self.reactor.call_later(HEAD_TIMEOUT, self._head_late)
        self.interest_changed()

    @property
    def sheddable(self) -> bool:
        """Whether the client is what a full house closes for a new one: slow to ask or to read,
        for SHED_AFTER already (one just accepted has not had its turn to be read yet)."""
        slow = self.phase is Phase.HEAD or self.phase is Phase.SENDING
        return slow and self.reactor.now - self.accepted > SHED_AFTER

    def readable(self) -> bool:
        return self.phase is Phase.HEAD or self.phase is Phase.LINGERING

    def writable(self) -> bool:
        return self.phase is Phase.SENDING

    def handle_read(self) -> None:
        data = self.socket.recv(READ_SIZE)
        if not data:
            self.close()  # gone, before asking anything whole or after the answer
            return
        if self.phase is Phase.LINGERING:
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
        self._await_answer()
        self.admin.answer(request).then(self.respond)

    def _head_late(self) -> None:
        self.respond(format_response(408, f"request head not complete within {HEAD_TIMEOUT:g} s\n".encode()))

    def _await_answer(self) -> None:
        """The head is whole: no more reading, and the idle bound from now (a bug that never
        answers must not hold the place for good)."""
        self.phase = Phase.ANSWERING
        self.interest_changed()
        self.timer.cancel()
        self.last_active = self.reactor.now
        self.timer = self.reactor.call_later(IDLE_TIMEOUT, self._idle_check)

    def respond(self, response: bytes) -> None:
        """Queue the answer for the loop to send. It may come from anywhere (a deferred answer
        from the supervisor's settling of an ask), so it touches no socket here: a send that
        fails is the loop's to hand to this client's own `handle_error`."""
        if self.closed:  # shed, or the listener closed, while the answer was on its way
            return
        if self.phase is Phase.HEAD:
            self._await_answer()
        self.received = bytearray()
        self.outgoing = memoryview(response)
        self.phase = Phase.SENDING
        self.interest_changed()

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
        self.phase = Phase.LINGERING
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
        self.admin.clients.pop(self, None)
        super().close()
