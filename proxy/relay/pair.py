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

Connecting: a Connector walks the pool's candidates until one accepts TCP. Toward a TLS
upstream, the server counts as reached only once its handshake is done: a failed or timed-out
handshake is a failed connect like a refusal (logged, backed off from), and a fresh Connector
goes on with the candidates not tried yet.

Backpressure: when a side's SendBuffer reaches its high watermark (`buffer_size`), the side
feeding it stops reading; when `handle_write` drains it to the low watermark, reading resumes.
One read is at most `buffer_size` bytes, so each direction holds at most twice `buffer_size`.
The same holds for the process as a whole: every buffer counts against one Budget
(`max_buffered`), and past it a side whose bytes had to be queued stops reading until the total
has drained to three quarters; bytes a socket takes at once are never counted.

Half-close: a read of 0 bytes marks that side's EOF; the other side shuts its writing half once
its buffer has drained. When both writing halves are shut, the pair is finished (`closed`).
A reset (or any "peer gone" errno) on either side aborts both, and the other side is closed
with SO_LINGER 0 so that its peer sees a reset too (`reset`).

Faults on purpose: a listener with toxics has a FaultPlan; once open, a pair that drew some
puts them between its sides (faults.py), and copies rather than splices.

Every way a pair ends goes through `finish(result, reason)`, which writes the access-log line.

Sides report to the pair through side.py's `SideOwner` (end of stream, write half shut, peer
gone, failed, handshake done or failed); the pair decides what follows. The pair's phase
(checked: any other move is a StateError, a bug that ends the connection with result=error):

    ADMITTING --connect--> CONNECTING --plain upstream--> RELAYING --an end of stream--> DRAINING
    ADMITTING --TLS with the client--> HANDSHAKING --done--> ADMITTING (routing goes on)
    CONNECTING --TLS upstream--> HANDSHAKING --done--> RELAYING;  --failed--> CONNECTING (next)
    any phase --finish--> CLOSED
"""

from __future__ import annotations

import errno
import itertools
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from proxy.config.schema import DEFAULT_MAX_BUFFERED
from proxy.config.units import Address, SocketAddress, format_sockaddr, parse_address
from proxy.errors import StateError, describe_os_error
from proxy.log import EventLog
from proxy.loop.connector import ConnectAttempt, Connector
from proxy.loop.reactor import Reactor, Timer
from proxy.loop.resolver import Resolver
from proxy.policy.faults import FaultPlan
from proxy.policy.upstreams import Pool, ServerState
from proxy.protocol.tls import TlsSession
from proxy.relay.buffer import Budget
from proxy.relay.capture import ConnectionCapture, RecordingSocket
from proxy.relay.dumping import DumpPlan, Facts
from proxy.relay.faults import Toxics
from proxy.relay.side import _MSG_MORE, _SHUT, Side, StateEnum
from proxy.relay.tap import HexdumpWriter, SnappedDump
from proxy.relay.tls_side import TlsSide

if TYPE_CHECKING:
    from proxy.relay.preamble import PreambleReader

SCRATCH_SIZE = 256 * 1024


class Runtime:
    """What every pair in one process shares: the loop, the resolver, the outputs."""

    def __init__(
        self,
        reactor: Reactor,
        resolver: Resolver,
        log: EventLog,
        worker: tuple[int, int] = (0, 1),
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.log = log
        self.log_access = log.enabled("info")  # when off (warning and up), no access record is built
        self.timeline = log.debugging  # each pair logs its `conn_event` lines
        # One read buffer for the whole process: the loop is single-threaded and every read is
        # forwarded (or copied into a SendBuffer) before the next one.
        self.scratch = memoryview(bytearray(SCRATCH_SIZE))
        # What every SendBuffer and pipe of the process holds, against `max_buffered`.
        self.budget = Budget(max_buffered)
        self.pairs: set[Pair] = set()
        self.rng = random.Random()  # which connections get a toxic with a `toxicity` below 1, and their jitter
        # Under `--workers N`, worker i numbers its connections i+1, i+1+N, ...: unique across workers.
        self._next_conn = worker[0] + 1 - worker[1]
        self._conn_step = worker[1]

    def next_conn_id(self) -> int:
        self._next_conn += self._conn_step
        return self._next_conn


@dataclass(frozen=True)
class PairSettings:
    """What one listener's pairs have in common, prepared once per listener."""

    listener: str
    connect_timeout: float  # the listener's: how long a client may take to send a preamble
    idle_timeout: float
    buffer_size: int
    dump: DumpPlan | None = None  # None: no connection of this listener is dumped or captured
    splice: bool = False  # move bytes with os.splice where neither side is TLS
    faults: FaultPlan | None = None  # None: no connection of this listener gets a toxic


class Phase(StateEnum):
    ADMITTING = "admitting"  # accepted: a preamble, allow/deny, routing
    CONNECTING = "connecting"  # a Connector walks the candidates
    HANDSHAKING = "handshaking"  # TLS with the client (while admitting) or with the upstream
    RELAYING = "relaying"  # both sides open, bytes flow both ways
    DRAINING = "draining"  # one direction has ended; the other still flows
    CLOSED = "closed"  # finished: the access line is written


# The members as module constants for the per-connection paths (see side.py).
_ADMITTING, _CONNECTING, _HANDSHAKING = Phase.ADMITTING, Phase.CONNECTING, Phase.HANDSHAKING
_RELAYING, _DRAINING, _CLOSED = Phase.RELAYING, Phase.DRAINING, Phase.CLOSED

_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.ADMITTING: frozenset({Phase.CONNECTING, Phase.HANDSHAKING, Phase.CLOSED}),
    Phase.HANDSHAKING: frozenset({Phase.ADMITTING, Phase.CONNECTING, Phase.RELAYING, Phase.CLOSED}),
    Phase.CONNECTING: frozenset({Phase.HANDSHAKING, Phase.RELAYING, Phase.CLOSED}),
    Phase.RELAYING: frozenset({Phase.DRAINING, Phase.CLOSED}),
    Phase.DRAINING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


class Pair:
    """A client and its upstream: the connect, the forwarding, the end, and the access log.

    It is the owner (side.py's SideOwner) of both its sides.
    """

    # What a connection has not reached yet, as class-level defaults: a pair sets each only when
    # it gets there, which keeps making one (per accept) cheap.
    route: str | int | None = None
    result: str | None = None
    upstream: Side | None = None
    server: SocketAddress | None = None
    preamble: PreambleReader | None = None
    pool: Pool | None = None
    connector: Connector | None = None
    connect_ms: float | None = None  # from the start of the connect to the upstream ready
    sni: str | None = None  # the server name a passthrough peek found
    note: str | None = None  # why routing fell back, when it did (for `reason=`)
    credentials: dict[str, int] | None = None  # a UNIX client's peer_uid and peer_pid, for the access line
    _first_eof: str | None = None  # the side whose end of stream came first
    _connect_from = 0.0
    _untried: Iterator[ServerState] = iter(())  # candidates the connector has not reached yet
    _on_client_tls: Callable[[Pair], None] | None = None
    _server_state: ServerState | None = None
    _preface = b""
    _payload = b""
    _upstream_tls: tuple[ssl.SSLContext, str | None] | None = None
    _handshake_timer: Timer | None = None
    _idle_timer: Timer | None = None  # an idle_timeout of 0 means none
    _kernel_queued: tuple[int, ...] = ()  # send-queue sizes at the last idle check
    # The dump and the capture, decided once routed and connected (or at the end).
    tap: HexdumpWriter | SnappedDump | None = None
    dump_events: HexdumpWriter | None = None  # where this connection's open and close lines go
    capture: ConnectionCapture | None = None
    _dump_pending = False  # a dump plan may still want this connection
    fault_names: str | None = None  # the toxics this connection drew, for the access line (`faults=latency,slicer`)

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
            self._dump_pending = True
            if plan.captures:
                self.capture = ConnectionCapture(self.conn, settings.listener)
                client_sock = self.capture.client_leg(client_sock, client_address)  # type: ignore[assignment]
        self.started = reactor.now
        self._idle_from = self.started  # besides the sides' own last_active: when admission ended
        self.phase = _ADMITTING
        # Taken once: below debug level, no timeline event costs more than this test.
        self.timeline = runtime.timeline
        self.client = self._side(Side, client_sock, "client", format_sockaddr(client_address), "client->upstream")
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
        if phase not in _MOVES[self.phase]:
            raise StateError(f"a pair cannot go from {self.phase.value} to {phase.value}")
        self.phase = phase

    def _side(
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

    # -- connecting (the ConnectObserver protocol) ---------------------------------------

    def connect(
        self,
        pool: Pool,
        candidates: list[ServerState],
        *,
        preface: bytes = b"",
        payload: bytes = b"",
        upstream_tls: tuple[ssl.SSLContext, str | None] | None = None,
    ) -> None:
        """Connect to the first reachable of `candidates`.

        `preface` (a PROXY header) goes to the upstream first, uncounted; `payload` is client
        bytes already read (after a preamble), counted and dumped like any other.
        `upstream_tls` (context, server name) makes the upstream side speak TLS.
        """
        self._to(_CONNECTING)
        self._connect_from = self.runtime.reactor.now
        self.pool = pool
        self._preface, self._payload = preface, payload
        self._upstream_tls = upstream_tls
        self._untried = iter(candidates)
        self._connect_next(self._untried)

    def _connect_next(self, servers: Iterator[ServerState]) -> None:
        runtime = self.runtime
        self.connector = Connector(runtime.reactor, runtime.resolver, servers, self.pool.config.connect_timeout, self)
        self.connector.start()

    def set_client_address(self, sockaddr: tuple) -> None:
        """The client as the log should name it (a PROXY header may say who it really is)."""
        self.client.address = format_sockaddr(sockaddr)

    def connected(self, attempt: ConnectAttempt, server: ServerState) -> None:
        self.connector = None
        self.server = server.address
        self.pool.connection_started(server)
        self._server_state = server
        sock = attempt.socket
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = format_sockaddr(attempt.sockaddr)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            address = str(server.address)  # a UNIX socket: no Nagle to turn off, and a path for an address
        if self.capture is not None:
            sock = self.capture.upstream_leg(sock)  # type: ignore[assignment]
        if self.timeline:
            connect_ms = (self.runtime.reactor.now - self._connect_from) * 1000
            self.event("connected", server=address, connect_ms=f"{connect_ms:.3f}")
        if self._upstream_tls is None:
            self.upstream = self._side(Side, sock, "upstream", address, "upstream->client")
            attempt.hand_over(self.upstream)
            if self._preface:
                self._send_preface()
                if self.phase is _CLOSED:
                    return  # the client or the upstream failed meanwhile, and ended the pair
            self._open()
            return
        self._to(_HANDSHAKING)
        context, server_name = self._upstream_tls
        hostname = server_name or (None if server.address.is_unix else server.address.host)
        session = TlsSession(context, server_side=False, server_hostname=hostname)
        upstream = self._side(TlsSide, sock, "upstream", address, "upstream->client", session=session)
        self.upstream = upstream
        attempt.hand_over(upstream)
        upstream.outgoing.append(self._preface)  # a PROXY header goes before the ClientHello
        self._handshake_timer = self.runtime.reactor.call_later(
            self.pool.config.connect_timeout, self._handshake_timed_out, upstream
        )
        upstream.start()

    def _send_preface(self) -> None:
        """Send the PROXY header now, to the upstream that just connected. When the client's
        first bytes are here already (read now, unless a preamble left some), the header goes
        with MSG_MORE and `_open` sends them at once: one segment for both, as the upstream
        expects them. A client that waits for the server to speak first has sent nothing, and
        the header leaves on its own."""
        client = self.client
        error: OSError | None = None
        if not self._payload and type(client) is Side:
            try:
                count = client.receive()
            except OSError as exc:  # a reset, say: it ends the pair once the header is out
                count, error = 0, exc
            if count:  # (an end of stream stays for the side's first read to find)
                self._payload = client.scratch[:count].tobytes()
        self.upstream.forward(memoryview(self._preface), _MSG_MORE if self._payload else 0)
        if error is not None and self.phase is not _CLOSED:
            client.handle_error(error)  # the upstream has the header: it knows whose reset it gets

    def _open(self) -> None:
        """Both sides are ready: join them and start forwarding."""
        self._to(_RELAYING)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        now = self.runtime.reactor.now
        self.connect_ms = (now - self._connect_from) * 1000
        if self._server_state is not None:  # for TLS, only once its handshake worked
            self.pool.connect_succeeded(self._server_state, now, now - self._connect_from)
        client, upstream = self.client, self.upstream
        if self._dump_pending:
            self._decide_dump()
        faults = self.settings.faults
        applied = () if faults is None else faults.decide(self.route, self.runtime.rng)
        plain = not applied and type(client) is Side and type(upstream) is Side
        # Bulk bytes can skip Python when nothing looks at them and neither side is TLS.
        splice = plain and self.settings.splice and self.tap is None and self.capture is None
        client.join(upstream, splice=splice, merge_end=plain)
        upstream.join(client, splice=splice, merge_end=plain)
        if self.tap is not None:
            client.set_tap(self.tap)
            upstream.set_tap(self.tap)
            self.dump_events.opened(self.conn, client.address, upstream.address)
        if applied:
            self.fault_names = Toxics(self, applied, self.runtime.rng).names  # it lives on the sides it shadows
        if self.timeline:
            client.watch_first_byte(self._first_byte)
            upstream.watch_first_byte(self._first_byte)
        client.start_reading()
        if self._payload:
            client.deliver(memoryview(self._payload))
        self._preface = self._payload = b""
        upstream.start_reading()

    # -- TLS toward the client -----------------------------------------------------------

    def terminate_tls(self, context: ssl.SSLContext, on_ready: Callable[[Pair], None], initial: bytes = b"") -> None:
        """Run the server side of a TLS handshake with the client, then call `on_ready(pair)`.

        The handshake must finish within the listener's `connect_timeout`. `initial` is
        ciphertext a preamble reader already took from the socket.
        """
        self._to(_HANDSHAKING)
        plain = self.client
        session = TlsSession(context, server_side=True)
        if initial:
            session.receive(initial)
        self._on_client_tls = on_ready
        self.client = self._side(TlsSide, plain.socket, "client", plain.address, plain.direction, session=session)
        self._handshake_timer = self.runtime.reactor.call_later(
            self.settings.connect_timeout, self._handshake_timed_out, self.client
        )
        self.client.start()

    def _decide_dump(self) -> None:
        """Whether this connection is dumped and captured, now that what the filters ask is known."""
        self._dump_pending = False
        plan = self.settings.dump
        decision = plan.decide(self.facts())
        self.tap = decision.tap
        if decision.tap is not None:
            self.dump_events = plan.writer
        capture = self.capture
        if capture is None:
            return
        if decision.sink is None:
            capture.discard()
            self.capture = None
            self._unwrap_sockets()  # not captured: the fast path
            return
        route = "-" if self.route is None else self.route
        capture.commit(
            decision.sink, f"conn={self.conn} listener={self.settings.listener} route={route}", decision.snaplen
        )

    def facts(self) -> Facts:
        """What a dump filter may ask about this connection."""
        servers = () if self.server is None else (self.server,)
        for side in (self.upstream,) if self.upstream is not None else ():
            try:
                servers += (parse_address(side.address),)
            except ValueError:
                pass  # an address no filter can name (an IPv6 zone)
        try:
            client = parse_address(self.client.address)
        except ValueError:
            client = None
        client_host = client.host if isinstance(client, Address) else ""  # a UNIX client has no address
        return Facts(self.conn, self.settings.listener, self.route, client_host, servers)

    def replan_dump(self, plan: DumpPlan | None) -> bool:
        """Decide the dump with `plan` (the run-time rules changed) if this connection has not
        decided yet, and say so; a capture can only start at accept, so none starts here."""
        if self.phase is _RELAYING or self.phase is _DRAINING or self.phase is _CLOSED:
            return False
        self.settings = replace(self.settings, dump=plan)
        self._dump_pending = plan is not None and plan.may_dump(self.conn)
        return True

    def set_dumped(self, tap: HexdumpWriter | SnappedDump | None, events: HexdumpWriter | None = None) -> bool:
        """Start the hex dump of this open connection from now on through `tap` (its open and close
        lines to `events`), or stop its dump and capture (None); False if it is not relaying. A
        direction already spliced is not dumped."""
        if self.phase is not _RELAYING and self.phase is not _DRAINING:
            return False
        client, upstream = self.client, self.upstream
        if tap is not None:
            if self.tap is None:
                self.tap, self.dump_events = tap, events
                events.opened(self.conn, client.address, upstream.address)
                client.set_tap(tap)
                upstream.set_tap(tap)
            return True
        self.tap = None
        client.set_tap(None)
        upstream.set_tap(None)
        if self.capture is not None:
            self.capture.discard()
            self.capture = None
            self._unwrap_sockets()
        return True

    def _unwrap_sockets(self) -> None:
        """Not captured (any more): the plain sockets again."""
        for side in (self.client, self.upstream):
            if side is not None and isinstance(side.socket, RecordingSocket):
                side.socket = side.socket.raw

    def _first_byte(self, side: Side) -> None:
        self.event("first_byte", direction=side.direction)

    def handshake_done(self, side: Side) -> None:
        if self.timeline:
            self.event("tls_done", side=side.name, **side.tls_details())
        if side is self.upstream:
            self._open()
            return
        self._to(_ADMITTING)  # routing goes on; the client reads no plaintext until then
        self._handshake_timer.cancel()
        self._handshake_timer = None
        on_ready, self._on_client_tls = self._on_client_tls, None
        on_ready(self)

    def _handshake_timed_out(self, side: Side) -> None:
        self._handshake_timer = None
        self.handshake_failed(side, "timeout", "TLS handshake not complete in time")

    def handshake_failed(self, side: Side, result: str, reason: str) -> None:
        """A TLS handshake failed. With the upstream, that is a failed connect: the server is
        backed off from and the next candidate is tried; the client ends only when none is left."""
        by = "proxy" if result == "timeout" else side.name
        if side is not self.upstream:
            self.finish(result, f"{side.name}: {reason}", by=by)
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.upstream = None
        side.close()
        state, self._server_state = self._server_state, None
        self.pool.connection_ended(state)
        self.attempt_failed(state, reason)
        server = next(self._untried, None)
        if server is None:
            self.finish(result, f"{side.name}: {reason}", by=by)  # the access line still names self.server
            return
        self._to(_CONNECTING)
        self._connect_next(itertools.chain((server,), self._untried))

    def attempt_failed(self, server: ServerState, reason: str) -> None:
        self.pool.connect_failed(server, self.runtime.reactor.now)
        self.runtime.log.warning("connect_failed", conn=self.conn, server=server.address, reason=reason)
        if self.timeline:
            self.event("connect_failed", server=server.address, reason=reason)

    def unreachable(self, reason: str, *, local: bool = False) -> None:
        # Out of descriptors here (`local`) or no server reachable: the client's answer is the same.
        self.connector = None
        self.finish("upstream_unreachable", reason, by="proxy" if local else "upstream")

    def handle_error(self, exc: Exception) -> None:
        """An exception escaped work done for this pair (a timer, the connector): end this pair only."""
        self._failed(exc)

    # -- events from the sides (the SideOwner protocol) ----------------------------------

    def end_of_stream(self, side: Side) -> None:
        if self._first_eof is None:
            self._first_eof = side.name
        if self.timeline:
            self.event("half_close", by=side.name)
        if self.phase is _RELAYING:
            self._to(_DRAINING)
        side.peer.shut_write_when_drained()

    def write_shut(self, side: Side) -> None:
        if side.peer.write is _SHUT:
            self.finish("closed")

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
        if phase is _CLOSED:
            return
        now = self.runtime.reactor.now
        if phase is _ADMITTING or phase is _HANDSHAKING:
            # Still being admitted: that step's own timeout bounds it, and its reason is the one
            # to log. The idle clock starts over when it is done.
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
        if self.phase is _CLOSED:
            return
        self._to(_CLOSED)
        self.result = result
        close_by = (self._first_eof or by) if result == "closed" else by
        for timer in (self._idle_timer, self._handshake_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._handshake_timer = None
        if self.connector is not None:
            self.connector.cancel()
            self.connector = None
        if self.preamble is not None:
            self.preamble.stop()
        if self._dump_pending:
            self._decide_dump()
        if self._server_state is not None:
            self.pool.connection_ended(self._server_state)
        for side in (self.client, self.upstream):
            if side is None:
                continue
            if abort:
                side.abort()
            else:
                side.close()
        self.runtime.pairs.discard(self)
        if self.timeline:
            self.event("closed", result=result, reason=reason, close_by=close_by)
        if self.runtime.log_access:
            self._log_access(result, reason, close_by)
        if self.dump_events is not None:
            if self.upstream is None or self.upstream.peer is None:  # never opened
                self.dump_events.opened(self.conn, self.client.address, self.settings.listener)
            self.dump_events.closed(self.conn, result)
        if self.on_finish is not None:
            self.on_finish(self)
        self.runtime.reactor.call_soon(self._release)

    def _release(self) -> None:
        """Break the sides' references back to the pair and to each other, after the pass in
        which the pair finished (frames of that pass may still use them): reference counting
        then frees the connection at once, instead of the cycle collector later."""
        for side in (self.client, self.upstream):
            if side is not None:
                side.release()

    def _log_access(self, result: str, reason: str | None, close_by: str) -> None:
        upstream = self.upstream
        if reason is None:
            truncated = (side.name for side in (self.client, upstream) if side is not None and side.truncated())
            reason = next((f"{name}: no close_notify" for name in truncated), self.note)
        tls_fields = {"sni": self.sni, **self.client.log_fields()}
        if upstream is not None:
            tls_fields.update(upstream.log_fields())
        if self.credentials is not None:
            tls_fields.update(self.credentials)
        self.runtime.log.info(
            "access",
            conn=self.conn,
            listener=self.settings.listener,
            route=self.route,
            client=self.client.address,
            server=upstream.address if upstream is not None else self.server,
            bytes_up=self.client.bytes_read,
            bytes_down=upstream.bytes_read if upstream is not None else 0,
            duration_ms=int((self.runtime.reactor.now - self.started) * 1000),
            result=result,
            reason=reason,
            close_by=close_by,
            connect_ms=None if self.connect_ms is None else f"{self.connect_ms:.3f}",
            faults=self.fault_names,
            **tls_fields,
        )
