"""One socket of a pair: reading into the peer, sending what the peer read, half-closing.

`Side` moves bytes as they are (copied through Python, or spliced in the kernel once a
direction turns out to be bulk: see splice.py); tls_side.py puts a TLS session in between.
A side forwards bytes straight to its peer side, but everything else it reports to its owner
(the pair) through `SideOwner`, and the owner decides. See pair.py for how two sides are joined.

Its three state machines (reading, writing, splicing) and their checked moves are in
states.py. A side changes its own states only; what another object may ask of it is a public
method (`pause_reading`, `resume`, `shut_write_when_drained`, `plug`, `uncount`).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.errors import OUT_OF_DESCRIPTORS, Meaning, classify, refused_move
from proxy.loop.dispatcher import Dispatcher
from proxy.loop.poller import WRITE
from proxy.relay.buffer import Budget, SendBuffer
from proxy.relay.seams import Outlet, SideOwner
from proxy.relay.splice import BULK_READ, SPLICE_AFTER, PipeBuffer
from proxy.relay.states import (
    DRAINING_TO_SHUT,
    EOF,
    IDLE,
    MSG_MORE,
    OPEN,
    PAUSED,
    PLAIN_READS,
    READ_CLOSED,
    READ_MOVES,
    READING,
    SHUT,
    SPLICE_COUNTING,
    SPLICE_MOVES,
    SPLICE_OFF,
    SPLICE_ON,
    SPLICE_READY,
    WRITE_MOVES,
    Reading,
    Splice,
    Writing,
)

if TYPE_CHECKING:
    from proxy.loop.reactor import Reactor

__all__ = ["Reading", "Side", "Splice", "Writing"]

_LINGER_ZERO = struct.pack("ii", 1, 0)
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # the same request as SIOCOUTQ on a TCP socket (Linux)
_INT = struct.Struct("i")
_INT_ZERO = _INT.pack(0)
_TRY_LATER, _PEER_GONE = Meaning.TRY_LATER, Meaning.PEER_GONE


class Side(Dispatcher):
    """One socket of a pair. `outgoing` holds bytes read from the peer, waiting for this socket.

    `peer` is None until the owner joins two sides (`join`), which also sets the side's seams:
    `bytes_to`, where the bytes it reads go (the peer's `forward`, unless something is plugged
    in between: a hex dump, a toxic, the timeline's first-byte watch); `end_to`, where the end of
    its stream goes (the peer's `shut_write_when_drained`, unless a toxic holds it back); and
    `producer`, what fills its own buffer, told `room_made` as it drains (the peer, or a toxic).
    """

    private_fd = True  # a connection's socket is never shared: closing it leaves epoll by itself
    # Where a new side starts, as class-level defaults (two sides per connection: cheap to make).
    peer: Side | None = None
    bytes_to: Outlet | None = None
    end_to: Callable[[], None] | None = None
    producer: Side | None = None  # or anything with `room_made` (a toxic between the two)
    bytes_read = 0
    last_active = 0.0  # when bytes last moved (never yet); the owner's idle check reads it
    read = IDLE
    write = OPEN
    reads = PLAIN_READS  # each reading state's READ bit, for `interest`
    # Splicing, per direction: once this side has read SPLICE_AFTER bytes in big reads (a bulk
    # flow, not requests and answers however many), what it reads goes socket -> the peer's
    # pipe -> the peer's socket. Small reads gain nothing from a pipe: two splices cost what a
    # recv and a send do.
    splice = SPLICE_OFF
    splice_left = 0  # of SPLICE_AFTER, while COUNTING
    pipe: PipeBuffer | None = None  # on the receiving side: bytes spliced toward this socket
    merge_end = False  # see join

    def __init__(
        self,
        owner: SideOwner,
        reactor: Reactor,
        sock: socket.socket,
        name: str,
        address: str,
        direction: str,
        *,
        scratch: memoryview,
        buffer_size: int,
        budget: Budget,
        conn: int = 0,
    ) -> None:
        super().__init__(reactor, sock)
        self.owner: SideOwner | None = owner
        self.name = name  # "client" or "upstream", for log reasons
        self.address = address
        self.direction = direction  # of the bytes read from this socket, for the hex dump
        self.scratch = scratch  # the process's one read buffer
        self.conn = conn  # the connection's number, for the dump
        self.outgoing = SendBuffer(buffer_size, budget=budget)
        self.buffer_size = buffer_size
        # min() twice, without the calls: two sides a connection.
        self.read_size = read_size = buffer_size if buffer_size < scratch.nbytes else scratch.nbytes
        self.bulk_read = BULK_READ if read_size > BULK_READ else read_size

    # -- state ---------------------------------------------------------------------------

    # The moves test their tables inline (not through states.check_move): they are on every
    # connection's path, where a call costs as much as the test.

    def _read_to(self, new: Reading) -> None:
        if new not in READ_MOVES[self.read]:
            raise refused_move(f"{self.name} side", self.read, new)
        self.read = new
        self.interest_changed()

    def _write_to(self, new: Writing) -> None:
        if new not in WRITE_MOVES[self.write]:
            raise refused_move(f"{self.name} side", self.write, new)
        self.write = new

    def _splice_to(self, new: Splice) -> None:
        if new not in SPLICE_MOVES[self.splice]:
            raise refused_move(f"{self.name} side", self.splice, new)
        self.splice = new

    def join(
        self,
        peer: Side,
        *,
        splice: bool = False,
        merge_end: bool = False,
        bytes_to: Outlet | None = None,
        end_to: Callable[[], None] | None = None,
        producer: object = None,
    ) -> None:
        """`peer` is the side this one forwards to from now on; `splice`: bulk may go by pipe;
        `merge_end`: the last bytes and the end of the stream may leave in one segment (both
        sides plain, nothing between them). `bytes_to`, `end_to` and `producer` are the seams
        (see the class), the peer's own when not given."""
        self.peer = peer
        self.merge_end = merge_end
        self.bytes_to = peer.forward if bytes_to is None else bytes_to
        self.end_to = peer.shut_write_when_drained if end_to is None else end_to
        self.producer = peer if producer is None else producer
        if splice:
            self._splice_to(SPLICE_COUNTING)
            self.splice_left = SPLICE_AFTER

    def plug(self, bytes_to: Outlet) -> None:
        """From now on, the bytes this side reads go to `bytes_to` (a dump turned on or off, a
        first-byte watch that fired)."""
        self.bytes_to = bytes_to

    def pending(self) -> int:
        """Bytes waiting to be sent to this socket, in the buffer and in the pipe."""
        return self.outgoing.size + (self.pipe.size if self.pipe is not None else 0)

    def interest(self) -> int:
        # The one definition of what this side waits for: the reactor asks at every change of state.
        pipe = self.pipe
        waiting = self.outgoing.size or (pipe is not None and pipe.size)
        return self.reads[self.read] | (WRITE if waiting else 0)

    # -- reading -------------------------------------------------------------------------

    def receive(self) -> int | None:
        """One recv into the scratch buffer: the byte count (0 at end of stream), or None when
        there was nothing after all. Any other OSError goes to `handle_error`."""
        try:
            return self.socket.recv_into(self.scratch, self.read_size)
        except (BlockingIOError, InterruptedError):
            return None

    def handle_read(self) -> None:
        if self.splice is SPLICE_ON:
            self.splice_read()
            return
        count = self.receive()
        if not count:
            if count == 0:
                self.end_of_stream()
            return
        self.deliver(self.scratch[:count])
        if count >= self.bulk_read and self.splice is not SPLICE_OFF:
            self._count_bulk(count)

    def handle_last_read(self) -> None:
        """The remote end has shut its writing half. When a second read confirms that the first
        took everything before the end, those bytes go out with MSG_MORE and the end follows at
        once, so the peer's shutdown carries the FIN in the same segment (one packet and one loop
        pass fewer for every connection that ends this way, as a response and a close do)."""
        if not self.merge_end or self.splice is SPLICE_ON or self.peer.pending():
            self.handle_read()
            return
        count = self.receive()
        if not count:  # nothing after all, or the end alone
            if count == 0:
                self.end_of_stream()
            return
        scratch, size = self.scratch, self.read_size
        if count < size:
            try:
                more = self.socket.recv_into(scratch[count:], size - count)
            except (BlockingIOError, InterruptedError):
                more = None
            except OSError:
                self.deliver(scratch[:count])  # a reset came after these bytes: they leave first
                raise
            if more == 0:
                self.deliver(scratch[:count], MSG_MORE)
                if self.read is not READ_CLOSED:  # (the peer may have failed taking them)
                    self.end_of_stream()
                return
            count += more or 0
        self.deliver(scratch[:count])
        if count >= self.bulk_read and self.splice is not SPLICE_OFF:
            self._count_bulk(count)

    def end_of_stream(self) -> None:
        """The remote end shut its writing half: read no more, and tell the owner (which passes
        the end on through `end_to`)."""
        self._read_to(EOF)
        self.owner.end_of_stream(self)

    def _count_bulk(self, count: int) -> None:
        if self.splice is SPLICE_COUNTING:
            self.splice_left -= count
            if self.splice_left > 0:
                return
            self._splice_to(SPLICE_READY)
        self.start_splicing()

    def start_splicing(self) -> None:
        """From the next read on, splice toward the peer (once its buffer has drained)."""
        peer = self.peer
        if peer.outgoing.size or self.read is READ_CLOSED:
            return  # queued bytes go first; try again after the next read
        try:
            peer.pipe = PipeBuffer(self.buffer_size, peer.outgoing.budget)
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                raise
            self._splice_to(SPLICE_OFF)  # no descriptors to spare: this direction keeps copying
            return
        self._splice_to(SPLICE_ON)

    def splice_read(self) -> None:
        peer = self.peer
        pipe = peer.pipe
        lingering = pipe.size
        room = pipe.high - lingering
        if room <= 0:
            self._read_to(PAUSED)
            return
        try:
            count = pipe.fill_from(self.fd, min(room, self.read_size))
        except (BlockingIOError, InterruptedError):
            return
        if not count:
            self.end_of_stream()
            return
        self.last_active = self.reactor.now
        self.bytes_read += count
        try:
            pipe.splice_to(peer.fd)
        except OSError as exc:
            peer.handle_error(exc)  # the peer's socket failed, not ours
            return
        if pipe.size or lingering:  # bytes wait in the pipe, or waited and are gone: count them
            budget = pipe.settle()
            if pipe.size:
                peer.interest_changed()
                if budget.over:
                    self.hold_for_budget()
                elif pipe.size >= pipe.high:
                    self._read_to(PAUSED)

    def deliver(self, data: memoryview, flags: int = 0) -> None:
        """Count and pass on bytes this side received; pause if the peer is full.
        `flags` are for the peer's send (MSG_MORE: the end of the stream follows at once)."""
        self.last_active = self.reactor.now
        self.bytes_read += len(data)
        self.bytes_to(data, flags)
        outgoing = self.peer.outgoing
        if outgoing.size >= outgoing.high and self.read is READING:
            self._read_to(PAUSED)

    def uncount(self, count: int) -> None:
        """`count` bytes read will never be delivered (a toxic dropped or still held them at the
        end): the access line does not count them."""
        self.bytes_read -= count

    # -- writing -------------------------------------------------------------------------

    def forward(self, data: memoryview, flags: int = 0) -> None:
        """Send `data` (a view the caller will reuse) now, with `flags`, buffering what the
        socket refuses."""
        outgoing = self.outgoing
        if outgoing.size:
            self._queue(data.tobytes())  # order: queued bytes go first
            return
        try:
            sent = self.socket.send(data, flags)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.handle_error(exc)  # raised while the peer is served, but this socket failed
            return
        if sent < len(data):
            self._queue(data[sent:].tobytes())
            self.interest_changed()

    def _queue(self, chunk: bytes) -> None:
        """Keep what the socket did not take. Past the process's budget, the producer of these
        bytes stops reading (not a side still in its handshake: it has no producer yet)."""
        outgoing = self.outgoing
        outgoing.append(chunk)
        if outgoing.budget.over and self.peer is not None:
            self.peer.hold_for_budget()

    def flush(self) -> None:
        """Send what is waiting, the buffer first, until all is sent or the socket is full."""
        outgoing = self.outgoing
        outgoing.send_with(self.socket.send)
        if self.pipe is not None and not outgoing.size:
            self.pipe.splice_to(self.fd)
            self.pipe.settle()

    def handle_write(self) -> None:
        self.last_active = self.reactor.now  # a peer that is still taking bytes is not idle
        self.flush()
        waiting = self.pending()
        producer = self.producer
        if producer is not None:
            producer.room_made(waiting <= (self.pipe or self.outgoing).low)
        if not waiting:
            self.interest_changed()
            if self.write is DRAINING_TO_SHUT:
                self._shut_write()

    def room_made(self, drained: bool) -> None:
        """This side's consumer sent bytes; `drained`: its buffer is down to its low watermark."""
        if drained and self.read is PAUSED:
            self.resume()

    def resume(self) -> None:
        """The peer's buffer drained: read again. While the process's budget is spent, only once
        the peer has sent everything: the next read then adds one read at most, and a connection
        whose client keeps reading keeps moving while those that stopped are held."""
        if self.read is not PAUSED:
            return
        budget = self.outgoing.budget
        if budget.over and self.peer.pending():
            budget.hold(self)
            return
        self._read_to(READING)

    def pause_reading(self) -> None:
        """Stop reading for now (something between this side and its peer is full)."""
        if self.read is READING:
            self._read_to(PAUSED)

    def hold_for_budget(self) -> None:
        """The process holds more than `max_buffered`: stop reading until the budget drains."""
        self.pause_reading()
        if self.read is PAUSED:
            self.outgoing.budget.hold(self)

    def budget_released(self) -> None:
        peer = self.peer
        if self.read is PAUSED and peer.pending() <= (peer.pipe or peer.outgoing).low:
            peer.producer.room_made(True)  # else the peer's drain resumes us

    def start_reading(self) -> None:
        """The pair is open: from now on, what this side receives goes to its peer."""
        self._read_to(READING)

    # -- half-close ----------------------------------------------------------------------

    def shut_write_when_drained(self) -> None:
        """The peer's stream ended: shut our writing half once what it sent us has gone out."""
        if self.pending():
            self._write_to(DRAINING_TO_SHUT)
        else:
            self._shut_write()

    def _shut_write(self) -> None:
        try:
            done = self.shutdown_write(last=self.peer.write is SHUT)
        except OSError as exc:
            if classify(exc) is not _PEER_GONE or self.read is not EOF:
                self.handle_error(exc)  # may run while the other side is served, but this socket failed
                return
            # That peer had ended its own sending and then closed outright: nothing of ours
            # was lost but a TLS close_notify it no longer wanted.
            done = True
        if not done:
            if self.write is OPEN:
                self._write_to(DRAINING_TO_SHUT)
            return
        self._write_to(SHUT)
        self.owner.write_shut(self)

    def shutdown_write(self, last: bool) -> bool:
        """Shut our writing half; False when that needs more sending first (try again then).

        `last`: the other direction is over too, so the pair is about to close this socket,
        which sends the same FIN (the receive side is empty: its peer ended first).
        """
        if not last:
            self.socket.shutdown(socket.SHUT_WR)
        return True

    # -- what the owner asks -------------------------------------------------------------

    def log_fields(self) -> dict[str, object]:
        """What this side adds to the access-log line (TLS details, for instance)."""
        return {}

    def tls_details(self) -> dict[str, object]:
        """What its TLS handshake agreed, for the timeline's `tls_done` (nothing on a plain side)."""
        return {}

    def truncated(self) -> bool:
        """The peer's stream ended without the end its protocol requires (a TLS close_notify)."""
        return False

    def swap_socket(self, sock: socket.socket) -> None:
        """Go on with `sock`, the same descriptor seen another way (a capture's recording
        wrapper taken off, when the connection turns out not to be captured)."""
        if sock.fileno() != self.fd:
            raise ValueError("a side keeps its descriptor")
        self.socket = sock

    def release(self) -> None:
        """The pair is over: drop the references that make a cycle with it (see Pair._release)."""
        self.owner = self.peer = self.producer = self.bytes_to = self.end_to = None

    def unsent_in_kernel(self) -> int:
        """Bytes sent to this socket that its peer has not acknowledged yet (0 if unknown)."""
        if self.closed or _SIOCOUTQ is None:
            return 0
        try:
            return _INT.unpack(fcntl.ioctl(self.fd, _SIOCOUTQ, _INT_ZERO))[0]
        except OSError:
            return 0

    def handle_error(self, exc: BaseException) -> None:
        """Every exception raised in work for this socket ends here, once: what it means
        (proxy/errors.py's `classify`) decides what the owner is told."""
        if self.owner is None:
            super().handle_error(exc)  # the pair is released: there is no connection left to end
            return
        meaning = classify(exc)
        if meaning is _TRY_LATER:
            return
        if meaning is _PEER_GONE:
            self.owner.peer_gone(self, exc)
        else:
            self.owner.failed(self, exc)

    def close(self) -> None:
        self.read = READ_CLOSED  # whatever it was doing ends here (every state may close)
        super().close()
        outgoing = self.outgoing
        budget = outgoing.budget
        if budget.over:  # it holds producers only while over
            budget.forget(self)
        if outgoing.size:
            outgoing.clear()  # what it held no longer counts against the budget
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
