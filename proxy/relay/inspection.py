"""What looks at one connection's bytes or bends them: its hex dump, its capture, its toxics.

A pair holds one `Inspection` only when something may look (its listener's dump plan may want
the connection, a `dump on` rule came at run time) or its listener's toxics drew some for it;
a plain connection holds None, and its only cost is that one attribute test, per connection.

The inspection is asked at accept (a capture must record the client's leg from its handshake
on), at the connect (the upstream's leg), once routed and connected (`opening`: the dump's final
decision, the toxics drawn), and at the end (`ending` before the sides close, `closed` after the
access line). Everything it does to the bytes goes through the seams a side declares (side.py):
a hex dump is an outlet in front of the consumer (`Dumped`), a faulted direction is a
FaultedStream plugged into both sides (faults.py), and a capture watches the sockets
themselves (capture.py), which are unwrapped again when the connection turns out not to be
captured.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from proxy.config.schema import FaultConfig
from proxy.config.units import Address, parse_address
from proxy.log import logfmt_value
from proxy.relay.capture import ConnectionCapture, RecordingSocket
from proxy.relay.dumping import DumpPlan, Facts
from proxy.relay.faults import Toxics
from proxy.relay.seams import Outlet
from proxy.relay.side import Side

if TYPE_CHECKING:
    import socket

    from proxy.output.tap import HexdumpWriter, SnappedDump
    from proxy.relay.pair import Pair


class Dumped:
    """An outlet that writes what `side` passes on to the hex dump, then hands it to `then`."""

    __slots__ = ("tap", "side", "then", "offset")

    def __init__(self, tap: HexdumpWriter | SnappedDump, side: Side, then: Outlet, offset: int) -> None:
        self.tap = tap
        self.side = side
        self.then = then
        self.offset = offset  # of the next byte in the direction's stream

    def __call__(self, data: memoryview, flags: int = 0) -> None:
        side = self.side
        self.tap.chunk(side.conn, side.direction, self.offset, data, side.address, side.peer.address)
        self.offset += len(data)
        self.then(data, flags)


def detected(pair: Pair) -> str:
    """What a peek at the first bytes found, as the dump's open line and a capture's comment end:
    ` protocol=... alpn=... host=...` (each escaped, as a client chose it), or nothing."""
    if pair.protocol is None:
        return ""
    seen = (("protocol", pair.protocol), ("alpn", pair.alpn), ("host", pair.host))
    return "".join(f" {key}={logfmt_value(value)}" for key, value in seen if value is not None)


class Inspection:
    """The dump, the capture and the toxics of one pair (see the module)."""

    tap: HexdumpWriter | SnappedDump | None = None
    dump_events: HexdumpWriter | None = None  # where this connection's open and close lines go
    capture: ConnectionCapture | None = None
    toxics: Toxics | None = None
    opened = False  # its dump's open line is written

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        plan = pair.settings.dump
        self.pending = plan is not None and plan.may_dump(pair.conn)  # a dump plan may still want it
        if self.pending and plan.captures:
            self.capture = ConnectionCapture(pair.conn, pair.settings.listener)

    @property
    def fault_names(self) -> str | None:
        """The toxics the connection drew, for the access line (`faults=latency,slicer`)."""
        return None if self.toxics is None else self.toxics.names

    @property
    def looks(self) -> bool:
        """Something reads the bytes in Python (a dump or a capture): no splicing."""
        return self.tap is not None or self.capture is not None

    # -- the sockets ---------------------------------------------------------------------

    def client_leg(self, sock: socket.socket, address: tuple) -> socket.socket:
        if self.capture is None:
            return sock
        return self.capture.client_leg(sock, address)  # type: ignore[return-value]

    def upstream_leg(self, sock: socket.socket) -> socket.socket:
        if self.capture is None:
            return sock
        return self.capture.upstream_leg(sock)  # type: ignore[return-value]

    def _unwrap_sockets(self) -> None:
        """Not captured (any more): the plain sockets again."""
        pair = self.pair
        for side in (pair.client, pair.upstream):
            if side is not None and isinstance(side.socket, RecordingSocket):
                side.swap_socket(side.socket.raw)

    # -- deciding ------------------------------------------------------------------------

    def facts(self) -> Facts:
        """What a dump filter may ask about this connection."""
        pair = self.pair
        servers = () if pair.server is None else (pair.server,)
        if pair.upstream is not None:
            try:
                servers += (parse_address(pair.upstream.address),)
            except ValueError:
                pass  # an address no filter can name (an IPv6 zone)
        try:
            client = parse_address(pair.client.address)
        except ValueError:
            client = None
        client_host = client.host if isinstance(client, Address) else ""  # a UNIX client has no address
        return Facts(pair.conn, pair.settings.listener, pair.route, client_host, servers)

    def _decide(self) -> None:
        """Whether this connection is dumped and captured, now that what the filters ask is known."""
        self.pending = False
        plan = self.pair.settings.dump
        decision = plan.decide(self.facts())
        self.tap = decision.tap
        if decision.tap is not None:
            self.dump_events = plan.writer
        capture = self.capture
        if capture is None:
            return
        if decision.sink is None:
            self._drop_capture()  # not captured: the fast path
            return
        pair = self.pair
        route = "-" if pair.route is None else pair.route
        comment = f"conn={pair.conn} listener={pair.settings.listener} route={route}{detected(pair)}"
        capture.commit(decision.sink, comment, decision.snaplen)

    def _drop_capture(self) -> None:
        self.capture.discard()
        self.capture = None
        self._unwrap_sockets()

    def replan(self, plan: DumpPlan | None) -> None:
        """The run-time rules changed before the connection decided: it decides with `plan`."""
        pair = self.pair
        pair.settings = replace(pair.settings, dump=plan)
        self.pending = plan is not None and plan.may_dump(pair.conn)

    # -- the open connection -------------------------------------------------------------

    def opening(self, faults: tuple[FaultConfig, ...]) -> None:
        """Routed and connected: the dump's final answer, and the toxics the pair drew."""
        if self.pending:
            self._decide()
        if faults:
            self.toxics = Toxics(self.pair, faults, self.pair.runtime.rng)

    def join(self, client: Side, upstream: Side, *, splice: bool, merge_end: bool) -> None:
        """Join the two sides with what looks at them plugged into their seams."""
        streams = {} if self.toxics is None else self.toxics.streams
        for side, peer in ((client, upstream), (upstream, client)):
            stream, feeding = streams.get(side), streams.get(peer)
            if stream is None:
                side.join(peer, splice=splice, merge_end=merge_end, producer=feeding)
            else:
                side.join(
                    peer, splice=splice, merge_end=merge_end, bytes_to=stream.take, end_to=stream.end, producer=feeding
                )
        if self.tap is not None:
            self._plug_dump(self.tap)
            self._open_line()

    def _open_line(self) -> None:
        pair = self.pair
        self.dump_events.opened(pair.conn, pair.client.address, pair.upstream.address, detected(pair))
        self.opened = True

    def _plug_dump(self, tap: HexdumpWriter | SnappedDump | None) -> None:
        """Dump both directions through `tap` from now on (None: stop): where a toxic holds a
        direction, at its release (the dump shows what the consumer was given, and when)."""
        pair = self.pair
        streams = {} if self.toxics is None else self.toxics.streams
        for side, peer in ((pair.client, pair.upstream), (pair.upstream, pair.client)):
            stream = streams.get(side)
            if stream is not None:
                stream.plug(peer.forward if tap is None else Dumped(tap, side, peer.forward, stream.released))
            else:
                pair.plug(side, peer.forward if tap is None else Dumped(tap, side, peer.forward, side.bytes_read))

    def set_dumped(self, tap: HexdumpWriter | SnappedDump | None, events: HexdumpWriter | None) -> None:
        """Start the hex dump of the open connection through `tap` (its lines to `events`), or
        stop its dump and capture (None)."""
        if tap is not None:
            if self.tap is None:
                self.tap, self.dump_events = tap, events
                self._open_line()
                self._plug_dump(tap)
            return
        self.tap = None
        self._plug_dump(None)
        if self.capture is not None:
            self._drop_capture()

    # -- the end -------------------------------------------------------------------------

    def ending(self) -> None:
        """The pair ends, its sides still open: the dump decides if it has not (the capture
        then holds their close), and the toxics stop and give back what they held."""
        if self.pending:
            self._decide()
        if self.toxics is not None:
            self.toxics.stop()

    def closed(self, result: str) -> None:
        """The pair has ended (its access line is written): the dump's close line."""
        if self.dump_events is None:
            return
        pair = self.pair
        if not self.opened:  # decided at the end: the connection never opened
            self.dump_events.opened(pair.conn, pair.client.address, pair.settings.listener, detected(pair))
        self.dump_events.closed(pair.conn, result)
