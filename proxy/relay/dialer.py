"""The dialer: how one pair reaches its upstream, from the first candidate to a side ready to relay.

A `Connector` (proxy/loop/connector.py) walks the pool's candidates until one accepts TCP; the
dialer is its observer. Toward a TLS upstream the server counts as reached only once its
handshake is done: a failed or timed-out handshake is a failed connect like a refusal (logged,
backed off from), and a fresh Connector goes on with the candidates not tried yet. A PROXY
header (`preface`) goes first, uncounted; with a plain upstream it leaves in one segment with
the client's first bytes when they are already here.

The dialer reports to its pair: `upstream_connected(side)` as soon as a server accepted (the
pair owns that side from then on, and closes it however it ends), `upstream_ready()` once it
can relay, `upstream_handshaking()` while a TLS one shakes hands (the pair then routes that side's
`handshake_done` and `handshake_failed` here), and `finish` when no candidate is left. It also
holds the pool's count of the connection to the server it reached (`close`).
"""

from __future__ import annotations

import errno
import itertools
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING

from proxy.config.units import format_sockaddr
from proxy.loop.connector import ConnectAttempt, Connector
from proxy.loop.reactor import Timer
from proxy.policy.upstreams import Pool, ServerState
from proxy.protocol.tls import TlsSession
from proxy.relay.side import Side
from proxy.relay.states import MSG_MORE
from proxy.relay.tls_side import TlsSide

if TYPE_CHECKING:
    from proxy.relay.pair import Pair


class Dialer:
    """One pair's way to its upstream: the ConnectObserver of its Connectors, then the upstream
    TLS handshake, then the PROXY header."""

    connector: Connector | None = None
    server_state: ServerState | None = None  # the server reached, counted by the pool until `close`
    handshake_timer: Timer | None = None

    def __init__(
        self,
        pair: Pair,
        pool: Pool,
        candidates: list[ServerState],
        preface: bytes,
        payload: bytes,
        upstream_tls: tuple[ssl.SSLContext, str | None] | None,
    ) -> None:
        self.pair = pair
        self.pool = pool
        self.untried: Iterator[ServerState] = iter(candidates)
        self.preface = preface
        self.payload = payload  # client bytes already read; `_send_preface` may add the first ones
        self.upstream_tls = upstream_tls
        self.started = pair.runtime.reactor.now

    def start(self) -> None:
        self._connect_next(self.untried)

    def _connect_next(self, servers: Iterator[ServerState]) -> None:
        runtime = self.pair.runtime
        timeout = self.pool.config.connect_timeout
        self.connector = Connector(runtime.reactor, runtime.resolver, servers, timeout, self, self.pool.prepare)
        self.connector.start()

    # -- the ConnectObserver protocol ----------------------------------------------------

    def connected(self, attempt: ConnectAttempt, server: ServerState) -> None:
        pair = self.pair
        self.connector = None
        pair.server = server.address
        self.pool.connection_started(server)
        self.server_state = server
        sock = attempt.socket
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = format_sockaddr(attempt.sockaddr)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            address = str(server.address)  # a UNIX socket: no Nagle to turn off, and a path for an address
        if pair.inspection is not None:
            sock = pair.inspection.upstream_leg(sock)
        if pair.timeline:
            connect_ms = (pair.runtime.reactor.now - self.started) * 1000
            pair.event("connected", server=address, connect_ms=f"{connect_ms:.3f}")
        if self.upstream_tls is None:
            upstream = pair.make_side(Side, sock, "upstream", address, "upstream->client")
            attempt.hand_over(upstream)
            pair.upstream_connected(upstream)
            if self.preface and not self._send_preface(pair.client, upstream):
                return
            pair.upstream_ready()
            return
        context, server_name = self.upstream_tls
        hostname = server_name or server.name
        session = TlsSession(context, server_side=False, server_hostname=hostname)
        upstream = pair.make_side(TlsSide, sock, "upstream", address, "upstream->client", session=session)
        attempt.hand_over(upstream)
        pair.upstream_connected(upstream)
        upstream.outgoing.append(self.preface)  # a PROXY header goes before the ClientHello
        self.handshake_timer = pair.runtime.reactor.call_later(
            self.pool.config.connect_timeout, self._handshake_timed_out, upstream
        )
        pair.upstream_handshaking()
        upstream.start()

    def attempt_failed(self, server: ServerState, reason: str) -> None:
        pair = self.pair
        self.pool.connect_failed(server, pair.runtime.reactor.now)
        pair.runtime.log.warning("connect_failed", conn=pair.conn, server=server.address, reason=reason)
        if pair.timeline:
            pair.event("connect_failed", server=server.address, reason=reason)

    def unreachable(self, reason: str, *, local: bool = False) -> None:
        # Out of descriptors here (`local`) or no server reachable: the client's answer is the same.
        self.connector = None
        self.pair.finish("upstream_unreachable", reason, by="proxy" if local else "upstream")

    def handle_error(self, exc: Exception) -> None:
        """An exception escaped the connect or a timer of it: end the pair only."""
        self.pair.handle_error(exc)

    # -- the PROXY header ----------------------------------------------------------------

    def _send_preface(self, client: Side, upstream: Side) -> bool:
        """Send the PROXY header now, to the upstream that just connected. When the client's
        first bytes are here already (read now, unless a preamble left some), the header goes
        with MSG_MORE and the pair's open sends them at once: one segment for both, as the
        upstream expects them. A client that waits for the server to speak first has sent
        nothing, and the header leaves on its own. False when the pair ended meanwhile: the
        upstream did not take the header, or the client's read failed (reported once the header
        is out: the upstream knows whose reset it gets)."""
        error: OSError | None = None
        if not self.payload and type(client) is Side:
            try:
                count = client.receive()
            except OSError as exc:
                count, error = 0, exc
            if count:  # (an end of stream stays for the side's first read to find)
                self.payload = client.scratch[:count].tobytes()
        upstream.forward(memoryview(self.preface), MSG_MORE if self.payload else 0)
        if self.pair.finished:
            return False
        if error is not None:
            client.handle_error(error)
            return False
        return True

    # -- the upstream handshake ----------------------------------------------------------

    def handshake_done(self) -> None:
        self._stop_handshake_timer()

    def _handshake_timed_out(self, side: Side) -> None:
        self.handshake_timer = None
        self.pair.handshake_failed(side, "timeout", "TLS handshake not complete in time")

    def handshake_failed(self, side: Side, result: str, reason: str, by: str) -> None:
        """The upstream's handshake failed: a failed connect. The server is backed off from and
        the next candidate is tried; the pair ends only when none is left."""
        self._stop_handshake_timer()
        self.pair.upstream_lost()
        side.close()
        state, self.server_state = self.server_state, None
        self.pool.connection_ended(state)
        self.attempt_failed(state, reason)
        server = next(self.untried, None)
        if server is None:
            self.pair.finish(result, f"{side.name}: {reason}", by=by)  # the access line still names the server
            return
        self._connect_next(itertools.chain((server,), self.untried))

    def _stop_handshake_timer(self) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None

    # -- the end -------------------------------------------------------------------------

    def succeeded(self) -> float:
        """The upstream is ready (for TLS, its handshake worked): tell the pool; the connect's
        time in ms, from its start to now."""
        now = self.pair.runtime.reactor.now
        if self.server_state is not None:
            self.pool.connect_succeeded(self.server_state, now, now - self.started)
        return (now - self.started) * 1000

    def close(self) -> None:
        """The pair ends: stop connecting, and the pool no longer counts it on its server."""
        self._stop_handshake_timer()
        if self.connector is not None:
            self.connector.cancel()
            self.connector = None
        if self.server_state is not None:
            self.pool.connection_ended(self.server_state)
            self.server_state = None
