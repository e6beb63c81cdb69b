"""One socket of a pair: reading into the peer, sending what the peer read, half-closing.

`Side` moves bytes as they are (copied through Python, or spliced in the kernel once a
direction turns out to be bulk: see splice.py); tls_side.py puts a TLS session in between.
A side forwards bytes straight to its peer side, but everything else it reports to its owner
(the pair) through `SideOwner`, and the owner decides. See pair.py for how two sides are joined.

States (checked: any other move is a StateError, a bug that ends the connection):

  reading:   IDLE --TLS--> HANDSHAKING --done--> IDLE --pair open--> READING <--> PAUSED
             READING --end of stream--> EOF
  writing:   OPEN --peer's EOF, bytes still queued--> DRAINING_TO_SHUT --drained--> SHUT
             OPEN --peer's EOF, nothing queued--> SHUT
  splicing:  OFF --plain pair opens--> COUNTING --SPLICE_AFTER bulk bytes--> READY
             READY --the peer's buffer drained--> ON;  READY --no descriptor for a pipe--> OFF
"""

from __future__ import annotations

import enum
import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from proxy.errors import OUT_OF_DESCRIPTORS, Meaning, StateError, classify
from proxy.loop.dispatcher import Dispatcher
from proxy.loop.poller import READ, WRITE
from proxy.relay.buffer import Budget, SendBuffer
from proxy.relay.splice import BULK_READ, SPLICE_AFTER, PipeBuffer

if TYPE_CHECKING:
    from proxy.loop.reactor import Reactor
    from proxy.relay.tap import HexdumpWriter, SnappedDump

_LINGER_ZERO = struct.pack("ii", 1, 0)
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # the same request as SIOCOUTQ on a TCP socket (Linux)
_INT = struct.Struct("i")
_INT_ZERO = _INT.pack(0)


class StateEnum(enum.Enum):
    """A state of a checked machine. Members are singletons, so their identity is their hash: the
    move tables are then looked up in C, not through Enum's own __hash__, written in Python."""

    __hash__ = object.__hash__


class Reading(StateEnum):
    IDLE = "idle"  # not read: the pair is not open (no one to take the bytes yet)
    HANDSHAKING = "handshaking"  # a TLS side reads its handshake before the pair is open
    READING = "reading"
    PAUSED = "paused"  # the peer's buffer (or the process's budget) is full
    EOF = "eof"  # this socket's peer shut its writing half


class Writing(StateEnum):
    OPEN = "open"
    DRAINING_TO_SHUT = "draining_to_shut"  # shut our writing half once `outgoing` drains
    SHUT = "shut"


class Splice(StateEnum):
    OFF = "off"  # copying through Python, for good (TLS, a dump, or no splicing)
    COUNTING = "counting"  # copying, counting big reads toward SPLICE_AFTER
    READY = "ready"  # bulk: splice as soon as the peer's buffer has drained
    ON = "on"  # reads go socket -> the peer's pipe -> the peer's socket


# The members as module constants for the per-event and per-connection paths: on Python 3.11
# reading a member off its Enum class goes through the metaclass's __getattr__ hook, about four
# times what reading a global costs.
_IDLE, _READING, _PAUSED, _HANDSHAKING, _EOF = (
    Reading.IDLE, Reading.READING, Reading.PAUSED, Reading.HANDSHAKING, Reading.EOF
)  # fmt: skip
_OPEN, _DRAINING_TO_SHUT, _SHUT = Writing.OPEN, Writing.DRAINING_TO_SHUT, Writing.SHUT
_SPLICE_OFF, _SPLICE_COUNTING, _SPLICE_READY, _SPLICE_ON = Splice.OFF, Splice.COUNTING, Splice.READY, Splice.ON
_TRY_LATER, _PEER_GONE = Meaning.TRY_LATER, Meaning.PEER_GONE
_MSG_MORE = getattr(socket, "MSG_MORE", 0)

_READ_MOVES: dict[Reading, frozenset[Reading]] = {
    Reading.IDLE: frozenset({Reading.HANDSHAKING, Reading.READING}),
    Reading.HANDSHAKING: frozenset({Reading.IDLE}),
    Reading.READING: frozenset({Reading.PAUSED, Reading.EOF}),
    Reading.PAUSED: frozenset({Reading.READING, Reading.EOF}),  # a read already due may find the end
    Reading.EOF: frozenset(),
}
_WRITE_MOVES: dict[Writing, frozenset[Writing]] = {
    Writing.OPEN: frozenset({Writing.DRAINING_TO_SHUT, Writing.SHUT}),
    Writing.DRAINING_TO_SHUT: frozenset({Writing.SHUT}),
    Writing.SHUT: frozenset(),
}
_SPLICE_MOVES: dict[Splice, frozenset[Splice]] = {
    Splice.OFF: frozenset({Splice.COUNTING}),
    Splice.COUNTING: frozenset({Splice.READY}),
    Splice.READY: frozenset({Splice.ON, Splice.OFF}),
    Splice.ON: frozenset(),
}


def _illegal(side: Side, old: StateEnum, new: StateEnum) -> StateError:
    return StateError(f"{side.name} side: {type(old).__name__.lower()} cannot go from {old.value} to {new.value}")


class SideOwner(Protocol):
    """What a side reports to the pair that owns it; the owner decides what happens next."""

    def end_of_stream(self, side: Side) -> None:
        """`side` read the end of its stream (its read state is EOF already)."""

    def write_shut(self, side: Side) -> None:
        """`side` shut its writing half, as the owner asked with `shut_write_when_drained`."""

    def peer_gone(self, side: Side, exc: OSError) -> None:
        """The remote end of `side` is gone (a reset, say): the connection is over."""

    def failed(self, side: Side, exc: BaseException) -> None:
        """An unexpected exception (a bug) in work for `side`."""

    def protocol_failed(self, side: Side, result: str, reason: str) -> None:
        """The protocol on `side` broke (a TLS error): the connection ends with `result`."""

    def handshake_done(self, side: Side) -> None:
        """`side`'s TLS handshake is complete; it reads no plaintext until `start_reading`."""

    def handshake_failed(self, side: Side, result: str, reason: str) -> None:
        """`side`'s TLS handshake failed."""


class Side(Dispatcher):
    """One socket of a pair. `outgoing` holds bytes read from the peer, waiting for this socket.

    `peer` is None until the owner joins two sides (`join`).
    """

    private_fd = True  # a connection's socket is never shared: closing it leaves epoll by itself
    # Where a new side starts, as class-level defaults (two sides per connection: cheap to make).
    peer: Side | None = None
    tap: HexdumpWriter | SnappedDump | None = None  # set by the owner when the pair is dumped
    bytes_read = 0
    last_active = 0.0  # when bytes last moved (never yet); the owner's idle check reads it
    read = _IDLE
    write = _OPEN
    # Splicing, per direction: once this side has read SPLICE_AFTER bytes in big reads (a bulk
    # flow, not requests and answers however many), what it reads goes socket -> the peer's
    # pipe -> the peer's socket. Small reads gain nothing from a pipe: two splices cost what a
    # recv and a send do.
    splice = _SPLICE_OFF
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
        self.read_size = read_size = min(buffer_size, len(scratch))
        self.bulk_read = min(BULK_READ, read_size)

    # -- state ---------------------------------------------------------------------------

    def _read_to(self, new: Reading) -> None:
        if new not in _READ_MOVES[self.read]:
            raise _illegal(self, self.read, new)
        self.read = new
        self.interest_changed()

    def _write_to(self, new: Writing) -> None:
        if new not in _WRITE_MOVES[self.write]:
            raise _illegal(self, self.write, new)
        self.write = new

    def _splice_to(self, new: Splice) -> None:
        if new not in _SPLICE_MOVES[self.splice]:
            raise _illegal(self, self.splice, new)
        self.splice = new

    def join(self, peer: Side, *, splice: bool = False, merge_end: bool = False) -> None:
        """`peer` is the side this one forwards to from now on; `splice`: bulk may go by pipe;
        `merge_end`: the last bytes and the end of the stream may leave in one segment (both
        sides plain, nothing between them)."""
        self.peer = peer
        self.merge_end = merge_end
        if splice:
            self._splice_to(_SPLICE_COUNTING)
            self.splice_left = SPLICE_AFTER

    def readable(self) -> bool:
        return self.read is _READING

    def pending(self) -> int:
        """Bytes waiting to be sent to this socket, in the buffer and in the pipe."""
        return self.outgoing.size + (self.pipe.size if self.pipe is not None else 0)

    def writable(self) -> bool:
        return self.pending() > 0

    def interest(self) -> int:
        # readable() and writable() in one call: the reactor asks at every change of state.
        pipe = self.pipe
        waiting = self.outgoing.size or (pipe is not None and pipe.size)
        return (READ if self.read is _READING else 0) | (WRITE if waiting else 0)

    # -- reading -------------------------------------------------------------------------

    def receive(self) -> int | None:
        """One recv into the scratch buffer: the byte count (0 at end of stream), or None when
        there was nothing after all. Any other OSError goes to `handle_error`."""
        try:
            return self.socket.recv_into(self.scratch, self.read_size)
        except (BlockingIOError, InterruptedError):
            return None

    def handle_read(self) -> None:
        if self.splice is _SPLICE_ON:
            self.splice_read()
            return
        try:  # receive(), inlined: this is the per-chunk path
            count = self.socket.recv_into(self.scratch, self.read_size)
        except (BlockingIOError, InterruptedError):
            return
        if not count:
            self.end_of_stream()
            return
        self.deliver(self.scratch[:count])
        if count >= self.bulk_read and self.splice is not _SPLICE_OFF:
            self._count_bulk(count)

    def handle_last_read(self) -> None:
        """The remote end has shut its writing half. When a second read confirms that the first
        took everything before the end, those bytes go out with MSG_MORE and the end follows at
        once, so the peer's shutdown carries the FIN in the same segment (one packet and one loop
        pass fewer for every connection that ends this way, as a response and a close do)."""
        if not self.merge_end or self.splice is _SPLICE_ON or self.peer.pending():
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
                self.deliver(scratch[:count], _MSG_MORE)
                if not self.closed:
                    self.end_of_stream()
                return
            count += more or 0
        self.deliver(scratch[:count])
        if count >= self.bulk_read and self.splice is not _SPLICE_OFF:
            self._count_bulk(count)

    def end_of_stream(self) -> None:
        """The remote end shut its writing half: read no more, and tell the owner."""
        self._read_to(_EOF)
        self.owner.end_of_stream(self)

    def _count_bulk(self, count: int) -> None:
        if self.splice is _SPLICE_COUNTING:
            self.splice_left -= count
            if self.splice_left > 0:
                return
            self._splice_to(_SPLICE_READY)
        self.start_splicing()

    def start_splicing(self) -> None:
        """From the next read on, splice toward the peer (once its buffer has drained)."""
        peer = self.peer
        if peer.outgoing.size or self.closed:
            return  # queued bytes go first; try again after the next read
        try:
            peer.pipe = PipeBuffer(self.buffer_size, peer.outgoing.budget)
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                raise
            self._splice_to(_SPLICE_OFF)  # no descriptors to spare: this direction keeps copying
            return
        self._splice_to(_SPLICE_ON)

    def splice_read(self) -> None:
        peer = self.peer
        pipe = peer.pipe
        lingering = pipe.size
        room = pipe.high - lingering
        if room <= 0:
            self._read_to(_PAUSED)
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
                    self._read_to(_PAUSED)

    def deliver(self, data: memoryview, flags: int = 0) -> None:
        """Count, dump and forward bytes this side received; pause if the peer is full.
        `flags` are for the peer's send (MSG_MORE: the end of the stream follows at once)."""
        self.last_active = self.reactor.now
        offset = self.bytes_read
        self.bytes_read = offset + len(data)
        peer = self.peer
        if self.tap is not None:
            self.tap.chunk(self.conn, self.direction, offset, data, self.address, peer.address)
        peer.forward(data, flags)
        if peer.outgoing.size >= peer.outgoing.high and self.read is _READING:
            self._read_to(_PAUSED)

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
        producer = self.peer
        waiting = self.pending()
        if producer is not None and producer.read is _PAUSED and waiting <= (self.pipe or self.outgoing).low:
            producer.resume()
        if not waiting:
            self.interest_changed()
            if self.write is _DRAINING_TO_SHUT:
                self._shut_write()

    def resume(self) -> None:
        """The peer's buffer drained: read again. While the process's budget is spent, only once
        the peer has sent everything: the next read then adds one read at most, and a connection
        whose client keeps reading keeps moving while those that stopped are held."""
        budget = self.outgoing.budget
        if budget.over and self.peer.pending():
            budget.hold(self)
            return
        if self.read is _PAUSED:
            self._read_to(_READING)

    def hold_for_budget(self) -> None:
        """The process holds more than `max_buffered`: stop reading until the budget drains."""
        if self.read is _READING:
            self._read_to(_PAUSED)
        self.outgoing.budget.hold(self)

    def budget_released(self) -> None:
        if self.closed:
            return
        peer = self.peer
        if peer.pending() <= (peer.pipe or peer.outgoing).low:  # else the peer's drain resumes us
            self.resume()

    def set_tap(self, tap: HexdumpWriter | SnappedDump | None) -> None:
        """Dump what this side delivers from now on through `tap` (None: stop)."""
        self.tap = tap

    def start_reading(self) -> None:
        """The pair is open: from now on, what this side receives goes to its peer."""
        self._read_to(_READING)

    def watch_first_byte(self, seen: Callable[[Side], None]) -> None:
        """Call `seen(self)` once, before the first bytes this side delivers (for the timeline).

        The watch shadows `deliver` with an instance attribute until it fires, so an unwatched
        side pays nothing per chunk. A spliced direction has delivered bytes before it splices.
        """

        def first(data: memoryview, flags: int = 0) -> None:
            del self.deliver  # the class's deliver again, from now on
            seen(self)
            self.deliver(data, flags)

        self.deliver = first  # type: ignore[method-assign]

    # -- half-close ----------------------------------------------------------------------

    def shut_write_when_drained(self) -> None:
        """The peer's stream ended: shut our writing half once what it sent us has gone out."""
        if self.pending():
            self._write_to(_DRAINING_TO_SHUT)
        else:
            self._shut_write()

    def _shut_write(self) -> None:
        try:
            done = self.shutdown_write(last=self.peer.write is _SHUT)
        except OSError as exc:
            if classify(exc) is not _PEER_GONE or self.read is not _EOF:
                self.handle_error(exc)  # may run while the other side is served, but this socket failed
                return
            # That peer had ended its own sending and then closed outright: nothing of ours
            # was lost but a TLS close_notify it no longer wanted.
            done = True
        if not done:
            if self.write is _OPEN:
                self._write_to(_DRAINING_TO_SHUT)
            return
        self._write_to(_SHUT)
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

    def release(self) -> None:
        """The pair is over: drop the references that make a cycle with it (see Pair._release)."""
        self.owner = self.peer = None
        self.__dict__.pop("deliver", None)  # a first-byte watch that never fired refers to this side

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
