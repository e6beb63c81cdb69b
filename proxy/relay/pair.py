"""The pair: a client socket and an upstream socket joined, each one the other's producer.

Theory of operation
-------------------
A Pair starts with only its client side, which is not read until the upstream connects (so a
client cannot fill memory while nobody can take its bytes). The one exception is a preamble the
routing decision needs (a PROXY header from a trusted load balancer): a PreambleReader reads
just that, bounded in size and time, and the bytes after it are the first payload. Once connected, each side's
`handle_read` reads one chunk into the process's scratch buffer and hands it to the other side's
`forward`, which sends what the socket takes at once and copies only the rest into its
SendBuffer (then asks for write interest).

Connecting is the dialer's (dialer.py): candidates, upstream TLS, the PROXY header; it hands
the pair an upstream side ready to relay, or finishes it.

Backpressure: when a side's SendBuffer reaches its high watermark (`buffer_size`), the side
feeding it stops reading; when `handle_write` drains it to the low watermark, reading resumes.
One read is at most `buffer_size` bytes, so each direction holds at most twice `buffer_size`.
The same holds for the process as a whole: every buffer counts against one Budget
(`max_buffered`), and past it a side whose bytes had to be queued stops reading until the total
has drained to three quarters; bytes a socket takes at once are never counted.

Half-close: a read of 0 bytes marks that side's EOF; the other side shuts its writing half once
its buffer has drained. When both writing halves are shut, the pair is finished (`closed`: the
row of states.py's PAIR_ENDS).
A reset (or any "peer gone" errno) on either side aborts both, and the other side is closed
with SO_LINGER 0 so that its peer sees a reset too (`reset`).

Dumps, captures and faults on purpose are the pair's `inspection` (inspection.py), None for a
plain connection; what it does to the bytes it plugs into the sides' seams at `join`. A pair
with toxics or a dump copies rather than splices.

Every way a pair ends goes through `finish(result, reason)`, which writes the access-log line.
An exception while closing a side (a capture's recording socket, say) still closes the other
and writes that line; it is logged as the bug it is.

Sides report to the pair through seams.py's `SideOwner` (end of stream, write half shut, peer
gone, failed, handshake done or failed); the pair decides what follows. The pair's phase
(checked: any other move is a StateError, a bug that ends the connection with result=error):

    ADMITTING --connect--> CONNECTING --plain upstream--> RELAYING --an end of stream--> DRAINING
    ADMITTING --TLS with the client--> CLIENT_HANDSHAKE --done--> ADMITTING (routing goes on)
    CONNECTING --TLS upstream--> UPSTREAM_HANDSHAKE --done--> RELAYING;  --failed--> CONNECTING (next)
    any phase --finish--> CLOSED
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.config.units import SocketAddress, format_sockaddr
from proxy.errors import describe_os_error, refused_move
from proxy.loop.reactor import Timer
from proxy.policy.upstreams import Pool, ServerState
from proxy.protocol.tls import TlsSession
from proxy.relay.access import access_fields
from proxy.relay.dialer import Dialer
from proxy.relay.dumping import DumpPlan, Facts
from proxy.relay.inspection import Inspection
from proxy.relay.runtime import PairSettings, Runtime
from proxy.relay.seams import Outlet
from proxy.relay.side import Side
from proxy.relay.states import (
    ADMITTING,
    CLIENT_HANDSHAKE,
    CLOSED,
    CONNECTING,
    DRAINING,
    PAIR_ENDS,
    PHASE_MOVES,
    RELAYING,
    UPSTREAM_HANDSHAKE,
    Phase,
)
from proxy.relay.tls_side import TlsSide

if TYPE_CHECKING:
    from proxy.output.tap import HexdumpWriter, SnappedDump
    from proxy.relay.preamble import PreambleReader

__all__ = ["Pair", "Phase"]


class FirstByte:
    """The timeline's first-byte watch: an outlet in front of a side's own, until it fires."""

    __slots__ = ("pair", "side", "then")

    def __init__(self, pair: Pair, side: Side) -> None:
        self.pair = pair
        self.side = side
        self.then = side.bytes_to

    def __call__(self, data: memoryview, flags: int = 0) -> None:
        side = self.side
        side.plug(self.then)  # this side's own outlet again, from now on
        self.pair.event("first_byte", direction=side.direction)
        self.then(data, flags)


class Pair:
    """A client and its upstream: the forwarding, the end, and the access log.

    It is the owner (seams.py's SideOwner) of both its sides.
    """

    # What a connection has not reached yet, as class-level defaults: a pair sets each only when
    # it gets there, which keeps making one (per accept) cheap.
    route: str | int | None = None
    result: str | None = None
    upstream: Side | None = None
    server: SocketAddress | None = None  # the server the dialer reached (or last tried over TLS)
    preamble: PreambleReader | None = None
    dialer: Dialer | None = None
    inspection: Inspection | None = None  # None: nothing dumps, captures or faults this connection
    connect_ms: float | None = None  # from the start of the connect to the upstream ready
    sni: str | None = None  # the server name a passthrough peek found
    protocol: str | None = None  # what a peek at the first bytes found them to be
    alpn: str | None = None  # the ALPN protocols a peeked ClientHello offers, comma-separated
    host: str | None = None  # the Host of a peeked plain HTTP request
    note: str | None = None  # why routing fell back, when it did (for `reason=`)
    credentials: dict[str, int] | None = None  # a UNIX client's peer_uid and peer_pid, for the access line
    _first_eof: str | None = None  # the side whose end of stream came first
    _on_client_tls: Callable[[Pair], None] | None = None
    _handshake_timer: Timer | None = None  # the client's handshake
    _idle_timer: Timer | None = None  # an idle_timeout of 0 means none
    _kernel_queued: tuple[int, ...] = ()  # send-queue sizes at the last idle check

    def __init__(
        self,
        runtime: Runtime,
        settings: PairSettings,
        client_sock: socket.socket,
        client_address: tuple,
        on_finish: Callable[[Pair], None] | None = None,
    ) -> None:
        reactor = runtime.reactor
        self.runtime = runtime
        self.settings = settings
        self.conn = runtime.next_conn_id()
        self.on_finish = on_finish
        plan = settings.dump
        if plan is not None and plan.may_dump(self.conn):
            self.inspection = Inspection(self)
            client_sock = self.inspection.client_leg(client_sock, client_address)
        self.started = reactor.now
        self._idle_from = self.started  # besides the sides' own last_active: when admission ended
        self.phase = ADMITTING
        # Taken once: below debug level, no timeline event costs more than this test.
        self.timeline = runtime.timeline
        self.client = self.make_side(Side, client_sock, "client", format_sockaddr(client_address), "client->upstream")
        runtime.pairs.add(self)
        if settings.idle_timeout:
            self._idle_timer = reactor.call_later(settings.idle_timeout, self._check_idle)
        if self.timeline:
            self.event("accepted", client=self.client.address, listener=settings.listener)

    def event(self, name: str, **fields: object) -> None:
        """One step of this connection's timeline, `t_ms` after the accept (call it only when `timeline`)."""
        t_ms = (time.monotonic() - self.started) * 1000
        fields = {"conn": self.conn, "event": name, "t_ms": f"{t_ms:.3f}", **fields}
        self.runtime.log.write("debug", "conn_event", fields)

    def _to(self, phase: Phase) -> None:
        if phase not in PHASE_MOVES[self.phase]:  # inline, as a side's moves: on every connection's path
            raise refused_move("a pair", self.phase, phase)
        self.phase = phase

    def make_side(
        self, kind: type[Side], sock: socket.socket, name: str, address: str, direction: str, **extra: object
    ) -> Side:
        """A side of this pair, given what it needs when made (it never reaches through the pair)."""
        runtime, settings = self.runtime, self.settings
        return kind(
            self,
            runtime.reactor,
            sock,
            name,
            address,
            direction,
            scratch=runtime.scratch,
            buffer_size=settings.buffer_size,
            budget=runtime.budget,
            conn=self.conn,
            **extra,
        )

    # -- admission -----------------------------------------------------------------------

    def preamble_started(self, reader: PreambleReader) -> None:
        self.preamble = reader

    def preamble_stopped(self) -> None:
        self.preamble = None
        self._idle_from = self.runtime.reactor.now  # the idle clock did not run while it read

    def set_client_address(self, sockaddr: tuple) -> None:
        """The client as the log should name it (a PROXY header may say who it really is)."""
        self.client.address = format_sockaddr(sockaddr)

    def terminate_tls(self, context: ssl.SSLContext, on_ready: Callable[[Pair], None], initial: bytes = b"") -> None:
        """Run the server side of a TLS handshake with the client, then call `on_ready(pair)`.

        The handshake must finish within the listener's `connect_timeout`. `initial` is
        ciphertext a preamble reader already took from the socket.
        """
        self._to(CLIENT_HANDSHAKE)
        plain = self.client
        session = TlsSession(context, server_side=True)
        if initial:
            session.receive(initial)
        self._on_client_tls = on_ready
        self.client = self.make_side(TlsSide, plain.socket, "client", plain.address, plain.direction, session=session)
        self._handshake_timer = self.runtime.reactor.call_later(
            self.settings.connect_timeout, self._handshake_timed_out, self.client
        )
        self.client.start()

    def _handshake_timed_out(self, side: Side) -> None:
        self._handshake_timer = None
        self.handshake_failed(side, "timeout", "TLS handshake not complete in time")

    # -- connecting: the dialer's reports -----------------------------------------------

    def connect(
        self,
        pool: Pool,
        candidates: list[ServerState],
        *,
        preface: bytes = b"",
        payload: bytes = b"",
        upstream_tls: tuple[ssl.SSLContext, str | None] | None = None,
    ) -> None:
        """Connect to the first reachable of `candidates` (dialer.py).

        `preface` (a PROXY header) goes to the upstream first, uncounted; `payload` is client
        bytes already read (after a preamble), counted and dumped like any other.
        `upstream_tls` (context, server name) makes the upstream side speak TLS.
        """
        self._to(CONNECTING)
        self.dialer = Dialer(self, pool, candidates, preface, payload, upstream_tls)
        self.dialer.start()

    @property
    def finished(self) -> bool:
        return self.phase is CLOSED

    def upstream_connected(self, upstream: Side) -> None:
        """A server accepted: `upstream` is this pair's (its end closes it), not joined yet."""
        self.upstream = upstream

    def upstream_handshaking(self) -> None:
        self._to(UPSTREAM_HANDSHAKE)

    def upstream_lost(self) -> None:
        """The upstream's handshake failed and the dialer tries the next candidate."""
        self._to(CONNECTING)
        self.upstream = None

    def upstream_ready(self) -> None:
        """The upstream is ready: join both sides and start forwarding."""
        self._to(RELAYING)
        client, upstream, dialer = self.client, self.upstream, self.dialer
        self.connect_ms = dialer.succeeded()
        faults = self.settings.faults
        applied = () if faults is None else faults.decide(self.route, self.runtime.rng)
        inspection = self.inspection
        if applied and inspection is None:
            inspection = self.inspection = Inspection(self)
        plain = type(client) is Side and type(upstream) is Side
        if inspection is None:
            # Bulk bytes can skip Python when nothing looks at them and neither side is TLS.
            splice = plain and self.settings.splice
            client.join(upstream, splice=splice, merge_end=plain)
            upstream.join(client, splice=splice, merge_end=plain)
        else:
            inspection.opening(applied)
            plain = plain and not applied
            splice = plain and self.settings.splice and not inspection.looks
            inspection.join(client, upstream, splice=splice, merge_end=plain)
        if self.timeline:
            client.plug(FirstByte(self, client))
            upstream.plug(FirstByte(self, upstream))
        client.start_reading()
        if dialer.payload:
            client.deliver(memoryview(dialer.payload))
        dialer.payload = dialer.preface = b""
        upstream.start_reading()

    def plug(self, side: Side, outlet: Outlet) -> None:
        """`side`'s bytes go to `outlet` from now on, behind a first-byte watch still waiting."""
        current = side.bytes_to
        if isinstance(current, FirstByte):
            current.then = outlet
        else:
            side.plug(outlet)

    def handle_error(self, exc: Exception) -> None:
        """An exception escaped work done for this pair (a timer, the dialer): end this pair only."""
        self._failed(exc)

    # -- dumps and captures, through the inspection --------------------------------------

    def facts(self) -> Facts:
        """What a dump filter may ask about this connection."""
        return (self.inspection or Inspection(self)).facts()

    def replan_dump(self, plan: DumpPlan | None) -> bool:
        """Decide the dump with `plan` (the run-time rules changed) if this connection has not
        decided yet, and say so; a capture can only start at accept, so none starts here."""
        if self.phase is RELAYING or self.phase is DRAINING or self.phase is CLOSED:
            return False
        if self.inspection is None:
            self.inspection = Inspection(self)
        self.inspection.replan(plan)
        return True

    def set_dumped(self, tap: HexdumpWriter | SnappedDump | None, events: HexdumpWriter | None = None) -> bool:
        """Start the hex dump of this open connection from now on through `tap` (its open and close
        lines to `events`), or stop its dump and capture (None); False if it is not relaying. A
        direction already spliced is not dumped."""
        if self.phase is not RELAYING and self.phase is not DRAINING:
            return False
        if self.inspection is None:
            if tap is None:
                return True
            self.inspection = Inspection(self)
        self.inspection.set_dumped(tap, events)
        return True

    # -- events from the sides (the SideOwner protocol) ----------------------------------

    def handshake_done(self, side: Side) -> None:
        if self.timeline:
            self.event("tls_done", side=side.name, **side.tls_details())
        if self.phase is UPSTREAM_HANDSHAKE:
            self.dialer.handshake_done()
            self.upstream_ready()
            return
        self._to(ADMITTING)  # routing goes on; the client reads no plaintext until then
        self._handshake_timer.cancel()
        self._handshake_timer = None
        on_ready, self._on_client_tls = self._on_client_tls, None
        on_ready(self)

    def handshake_failed(self, side: Side, result: str, reason: str) -> None:
        """A TLS handshake failed. With the upstream, that is a failed connect (the dialer's);
        with the client, the end."""
        by = "proxy" if result == "timeout" else side.name
        if self.phase is UPSTREAM_HANDSHAKE:
            self.dialer.handshake_failed(side, result, reason, by)
            return
        self.finish(result, f"{side.name}: {reason}", by=by)

    def end_of_stream(self, side: Side) -> None:
        if self._first_eof is None:
            self._first_eof = side.name
        if self.timeline:
            self.event("half_close", by=side.name)
        if self.phase is RELAYING:
            self._to(DRAINING)
        side.end_to()

    def write_shut(self, side: Side) -> None:
        result = PAIR_ENDS.get((side.write, side.peer.write))
        if result is not None:
            self.finish(result)

    def peer_gone(self, side: Side, exc: OSError) -> None:
        reason = f"{side.name}: {describe_os_error(exc)}"
        self.finish("reset", reason, abort=True, by=side.name)

    def failed(self, side: Side, exc: BaseException) -> None:
        self._failed(exc, side=side.name)

    def protocol_failed(self, side: Side, result: str, reason: str) -> None:
        self.finish(result, f"{side.name}: {reason}", by=side.name)

    def _failed(self, exc: BaseException, **where: str) -> None:
        """A bug (an unexpected exception, a StateError): logged once, and this connection alone ends."""
        self.runtime.log.failure("connection_error", exc, conn=self.conn, **where)
        self.finish("error", f"{type(exc).__name__}: {exc}", abort=True)

    # -- idleness ------------------------------------------------------------------------

    def _check_idle(self) -> None:
        self._idle_timer = None
        phase = self.phase
        if phase is CLOSED:
            return
        now = self.runtime.reactor.now
        if phase is not RELAYING and phase is not DRAINING:
            # Still being admitted or connected: that step's own timeout bounds it, and its
            # reason is the one to log. The idle clock starts over when it is done.
            self._idle_timer = self.runtime.reactor.call_later(self.settings.idle_timeout, self._check_idle)
            return
        remaining = self.settings.idle_timeout - (now - self.last_active())
        if remaining <= 0 and self._kernel_still_sending():
            self._idle_from = now
            remaining = self.settings.idle_timeout
        if remaining > 0:
            self._idle_timer = self.runtime.reactor.call_later(remaining, self._check_idle)
        else:
            self.finish("timeout", "idle")

    def last_active(self) -> float:
        """When bytes last moved either way (or admission ended, if none have since)."""
        upstream = self.upstream
        return max(self._idle_from, self.client.last_active, upstream.last_active if upstream else 0.0)

    def _kernel_still_sending(self) -> bool:
        """True when bytes we wrote are still leaving the kernel's send queues toward a peer.

        The proxy may have handed everything to the kernel long ago while a slow peer is still
        reading it: that is traffic, not idleness. Progress is a change in the queued amounts
        since the last check, so a peer that stopped reading times out one interval later.
        """
        queued = tuple(side.unsent_in_kernel() for side in (self.client, self.upstream) if side is not None)
        moving = any(queued) and queued != self._kernel_queued
        self._kernel_queued = queued
        return moving

    # -- the end -------------------------------------------------------------------------

    def finish(self, result: str, reason: str | None = None, *, abort: bool = False, by: str = "proxy") -> None:
        """End the pair once: close both sides, write the access log and the hex dump's close.

        `by` is the side whose reset or error ended it ("client" or "upstream"); "proxy" for
        what the proxy decided (timeouts, limits, denials, no route, shutdown, its own errors).
        An orderly close was ended by the side whose end of stream came first.
        """
        if self.phase is CLOSED:
            return
        self._to(CLOSED)
        self.result = result
        close_by = (self._first_eof or by) if result == "closed" else by
        for timer in (self._idle_timer, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._handshake_timer = None
        if self.dialer is not None:
            self.dialer.close()
        if self.preamble is not None:
            self.preamble.stop()
        inspection = self.inspection
        failures = []
        if inspection is not None:
            try:
                inspection.ending()
            except Exception as exc:
                failures.append(exc)
        for side in (self.client, self.upstream):
            if side is None:
                continue
            try:  # one side failing to close must not leave the other open
                if abort:
                    side.abort()
                else:
                    side.close()
            except Exception as exc:
                failures.append(exc)
        self.runtime.pairs.discard(self)
        for exc in failures:
            self.runtime.log.failure("connection_error", exc, conn=self.conn)
        if failures and result != "error":
            result, reason = "error", f"{type(failures[0]).__name__}: {failures[0]}"
            self.result = result
        if self.timeline:
            self.event("closed", result=result, reason=reason, close_by=close_by)
        if self.runtime.log_access:
            self.runtime.log.write("info", "access", access_fields(self, result, reason, close_by))
        if inspection is not None:
            inspection.closed(result)
        if self.on_finish is not None:
            self.on_finish(self)
        self.runtime.reactor.call_soon(self._release)

    def _release(self) -> None:
        """Break the sides' references back to the pair and to each other, after the pass in
        which the pair finished (frames of that pass may still use them): reference counting
        then frees the connection at once, instead of the cycle collector later. The dialer and
        the inspection point back at the pair too."""
        for side in (self.client, self.upstream):
            if side is not None:
                side.release()
        self.dialer = self.inspection = None
