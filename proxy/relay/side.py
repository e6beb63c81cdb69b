"""One socket of a pair: reading into the peer, sending what the peer read, half-closing.

`Side` moves bytes as they are (copied through Python, or spliced in the kernel once a
direction turns out to be bulk: see splice.py); tls_side.py puts a TLS session in between.
See pair.py for how two sides are joined.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import TYPE_CHECKING

from proxy.errors import OUT_OF_DESCRIPTORS, PEER_GONE
from proxy.loop.dispatcher import Dispatcher
from proxy.relay.buffer import SendBuffer
from proxy.relay.splice import BULK_READ, PipeBuffer

if TYPE_CHECKING:
    from proxy.relay.pair import Pair

_LINGER_ZERO = struct.pack("ii", 1, 0)
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # the same request as SIOCOUTQ on a TCP socket (Linux)
_INT = struct.Struct("i")
_INT_ZERO = _INT.pack(0)


class Side(Dispatcher):
    """One socket of a pair. `outgoing` holds bytes read from the peer, waiting for this socket."""

    def __init__(self, pair: Pair, sock: socket.socket, name: str, address: str, direction: str) -> None:
        super().__init__(pair.runtime.reactor, sock)
        self.pair = pair
        self.name = name  # "client" or "upstream", for log reasons
        self.address = address
        self.direction = direction  # of the bytes read from this socket, for the hex dump
        self.peer: Side = self
        self.outgoing = SendBuffer(pair.settings.buffer_size, budget=pair.runtime.budget)
        self.read_size = min(pair.settings.buffer_size, len(pair.runtime.scratch))
        self.bytes_read = 0
        self.reading = False  # switched on once both sides exist
        self.paused = False  # the peer's buffer is full
        self.eof = False  # this socket's peer shut its writing half
        self.shutdown_pending = False  # shut our writing half once `outgoing` drains
        self.write_shut = False
        # Splicing, per direction: once this side has read SPLICE_AFTER bytes in big reads (a bulk
        # flow, not requests and answers however many), what it reads goes socket -> the peer's
        # pipe -> the peer's socket. Small reads gain nothing from a pipe: two splices cost what a
        # recv and a send do.
        self.splice_budget = 0  # the pair sets it when both sides are plain and nothing taps the bytes
        self.bulk_read = min(BULK_READ, self.read_size)
        self.splicing = False
        self.pipe: PipeBuffer | None = None  # on the receiving side: bytes spliced toward this socket

    def readable(self) -> bool:
        return self.reading and not self.paused and not self.eof

    def pending(self) -> int:
        """Bytes waiting to be sent to this socket, in the buffer and in the pipe."""
        return self.outgoing.size + (self.pipe.size if self.pipe is not None else 0)

    def writable(self) -> bool:
        return self.pending() > 0

    def receive(self) -> int | None:
        """One recv into the scratch buffer: the byte count (0 at end of stream), or None
        when there was nothing after all or the peer is gone (the pair is ending then)."""
        try:
            return self.socket.recv_into(self.pair.runtime.scratch, self.read_size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno not in PEER_GONE:
                raise
            self.pair.peer_gone(self, exc)
            return None

    def handle_read(self) -> None:
        if self.splicing:
            self.splice_read()
            return
        count = self.receive()
        if count is None:
            return
        if not count:
            self.pair.end_of_stream(self)
            return
        self.deliver(self.pair.runtime.scratch[:count])
        if count >= self.bulk_read and self.splice_budget:
            self.splice_budget = max(1, self.splice_budget - count)  # 1: ready, as soon as it can
            if self.splice_budget == 1:
                self.start_splicing()

    def start_splicing(self) -> None:
        """From the next read on, splice toward the peer (once its buffer has drained)."""
        peer = self.peer
        if peer.outgoing.size or self.closed:
            return  # queued bytes go first; try again after the next read
        self.splice_budget = 0
        try:
            peer.pipe = PipeBuffer(self.pair.settings.buffer_size, peer.outgoing.budget)
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                raise
            return  # no descriptors to spare: this direction keeps copying
        self.splicing = True

    def splice_read(self) -> None:
        peer = self.peer
        pipe = peer.pipe
        lingering = pipe.size
        room = pipe.high - lingering
        if room <= 0:
            self.paused = True
            self.interest_changed()
            return
        try:
            count = pipe.fill_from(self.fd, min(room, self.read_size))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in PEER_GONE:
                raise
            self.pair.peer_gone(self, exc)
            return
        if not count:
            self.pair.end_of_stream(self)
            return
        self.pair.last_active = self.reactor.now
        self.bytes_read += count
        try:
            pipe.splice_to(peer.fd)
        except OSError as exc:
            if exc.errno not in PEER_GONE:
                raise
            self.pair.peer_gone(peer, exc)
            return
        if pipe.size or lingering:  # bytes wait in the pipe, or waited and are gone: count them
            budget = pipe.settle()
            if pipe.size:
                peer.interest_changed()
                if budget.over:
                    self.hold_for_budget()
                elif pipe.size >= pipe.high:
                    self.paused = True
                    self.interest_changed()

    def deliver(self, data: memoryview) -> None:
        """Count, dump and forward bytes this side received; pause if the peer is full."""
        pair = self.pair
        pair.last_active = self.reactor.now
        offset = self.bytes_read
        self.bytes_read = offset + len(data)
        if pair.tap is not None:
            pair.tap.chunk(pair.conn, self.direction, offset, data, self.address, self.peer.address)
        peer = self.peer
        peer.forward(data)
        if peer.outgoing.size >= peer.outgoing.high:
            self.paused = True
            self.interest_changed()

    def forward(self, data: memoryview) -> None:
        """Send `data` (a view the caller will reuse) now, buffering what the socket refuses."""
        outgoing = self.outgoing
        if outgoing.size:
            self._queue(data.tobytes())  # order: queued bytes go first
            return
        try:
            sent = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if exc.errno not in PEER_GONE:
                raise
            self.pair.peer_gone(self, exc)
            return
        if sent < len(data):
            self._queue(data[sent:].tobytes())
            self.interest_changed()

    def _queue(self, chunk: bytes) -> None:
        """Keep what the socket did not take. Past the process's budget, the producer of these
        bytes stops reading (not a side still in its handshake: it has no producer yet)."""
        outgoing = self.outgoing
        outgoing.append(chunk)
        if outgoing.budget.over and self.peer is not self:
            self.peer.hold_for_budget()

    def flush(self) -> None:
        """Send what is waiting, the buffer first, until all is sent or the socket is full."""
        outgoing = self.outgoing
        outgoing.send_with(self.socket.send)
        if self.pipe is not None and not outgoing.size:
            self.pipe.splice_to(self.fd)
            self.pipe.settle()

    def handle_write(self) -> None:
        self.pair.last_active = self.reactor.now  # a peer that is still taking bytes is not idle
        try:
            self.flush()
        except OSError as exc:
            if exc.errno not in PEER_GONE:
                raise
            self.pair.peer_gone(self, exc)
            return
        producer = self.peer
        waiting = self.pending()
        if producer.paused and waiting <= (self.pipe or self.outgoing).low:
            producer.resume()
        if not waiting:
            self.interest_changed()
            if self.shutdown_pending:
                self.pair.shut_write(self)

    def resume(self) -> None:
        """The peer's buffer drained: read again. While the process's budget is spent, only once
        the peer has sent everything: the next read then adds one read at most, and a connection
        whose client keeps reading keeps moving while those that stopped are held."""
        budget = self.outgoing.budget
        if budget.over and self.peer.pending():
            budget.hold(self)
            return
        self.paused = False
        self.interest_changed()

    def hold_for_budget(self) -> None:
        """The process holds more than `max_buffered`: stop reading until the budget drains."""
        self.paused = True
        self.interest_changed()
        self.outgoing.budget.hold(self)

    def budget_released(self) -> None:
        if self.closed:
            return
        peer = self.peer
        if peer.pending() <= (peer.pipe or peer.outgoing).low:  # else the peer's drain resumes us
            self.resume()

    def start_reading(self) -> None:
        """The pair is open: from now on, what this side receives goes to its peer."""
        self.reading = True
        self.interest_changed()

    def shutdown_write(self, last: bool) -> bool:
        """Shut our writing half; False when that needs more sending first (try again then).

        `last`: the other direction is over too, so the pair is about to close this socket,
        which sends the same FIN (the receive side is empty: its peer ended first).
        """
        if not last:
            self.socket.shutdown(socket.SHUT_WR)
        return True

    def log_fields(self) -> dict[str, object]:
        """What this side adds to the access-log line (TLS details, for instance)."""
        return {}

    def truncated(self) -> bool:
        """The peer's stream ended without the end its protocol requires (a TLS close_notify)."""
        return False

    def release(self) -> None:
        """The pair is over: drop the references that make a cycle with it (see Pair._release)."""
        self.pair = self.peer = None

    def unsent_in_kernel(self) -> int:
        """Bytes sent to this socket that its peer has not acknowledged yet (0 if unknown)."""
        if self.closed or _SIOCOUTQ is None:
            return 0
        try:
            return _INT.unpack(fcntl.ioctl(self.fd, _SIOCOUTQ, _INT_ZERO))[0]
        except OSError:
            return 0

    def handle_error(self, exc: BaseException) -> None:
        self.pair.failed(self, exc)

    def close(self) -> None:
        super().close()
        self.outgoing.budget.forget(self)
        self.outgoing.clear()  # what it held no longer counts against the budget
        if self.pipe is not None:
            self.pipe.close()

    def abort(self) -> None:
        """Close so that the remote end sees a reset rather than an orderly end."""
        if not self.closed:
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            except OSError:
                pass  # already dead; plain close is all that is left
        self.close()
