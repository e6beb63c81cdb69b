"""One socket of a pair: reading into the peer, sending what the peer read, half-closing.

`Side` moves bytes as they are. `TlsSide` puts a TlsSession between the socket and the pair:
it reads ciphertext and delivers plaintext, encrypts what it is given, runs the handshake first
and turns close_notify into the same end-of-stream a plain side gets from a TCP FIN.
See pair.py for how two sides are joined.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.buffer import Budget, SendBuffer
from proxy.dispatcher import OUT_OF_DESCRIPTORS, PEER_GONE, Dispatcher
from proxy.tls import TlsError, TlsSession

if TYPE_CHECKING:
    from proxy.pair import Pair

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


class TlsSide(Side):
    """A side whose socket speaks TLS; the pair sees only plaintext.

    It reads during the handshake even before the pair is open (the handshake is not payload),
    then calls `on_handshake(self)` once, and delivers plaintext only once `reading` is on.
    """

    def __init__(
        self,
        pair: Pair,
        sock: socket.socket,
        name: str,
        address: str,
        direction: str,
        session: TlsSession,
        on_handshake: Callable[[TlsSide], None],
    ) -> None:
        super().__init__(pair, sock, name, address, direction)
        self.session = session
        self.on_handshake = on_handshake
        self.handshaking = True

    def readable(self) -> bool:
        return (self.handshaking or self.reading) and not self.paused and not self.eof

    def start(self) -> None:
        """Begin the handshake (a client sends its ClientHello now) and start reading."""
        self._advance_handshake()
        self.interest_changed()

    def handle_read(self) -> None:
        count = self.receive()
        if count is None:
            return
        self.session.receive(self.pair.runtime.scratch[:count])
        if self.handshaking and not self._advance_handshake():
            if not count and not self.closed:
                self.pair.handshake_failed(self, "tls_error", "connection closed during the handshake")
            return
        if self.reading:
            self.drain_plaintext()

    def _advance_handshake(self) -> bool:
        try:
            done = self.session.handshake()
        except TlsError as exc:
            self._send_ciphertext()  # the alert tells the peer why
            self.pair.handshake_failed(self, "tls_error", str(exc))
            return False
        self._send_ciphertext()
        if done:
            self.handshaking = False
            self.interest_changed()
            self.on_handshake(self)
        return done

    def drain_plaintext(self) -> None:
        """Deliver the plaintext the session holds, until it needs more or the peer is full."""
        session = self.session
        while not self.paused and not self.closed:
            try:
                data = session.read(self.read_size)
            except TlsError as exc:
                self.pair.finish("tls_error", f"{self.name}: {exc}")
                return
            if data is None:
                break
            if not data:
                self.pair.end_of_stream(self)
                break
            self.deliver(memoryview(data))
        if not self.closed:
            self._send_ciphertext()  # reading can answer too (TLS 1.3 key updates)

    def resume(self) -> None:
        super().resume()
        # Plaintext may be waiting inside the session with no socket event left to announce it.
        self.reactor.call_soon(self._resume_plaintext)

    def start_reading(self) -> None:
        super().start_reading()
        self.reactor.call_soon(self._resume_plaintext)

    def _resume_plaintext(self) -> None:
        if self.reading and not self.closed:
            self.drain_plaintext()

    def forward(self, data: memoryview) -> None:
        try:
            self.session.write(data)
        except TlsError as exc:
            self.pair.finish("tls_error", f"{self.name}: {exc}")
            return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        ciphertext = self.session.pending_ciphertext()
        if ciphertext:
            Side.forward(self, memoryview(ciphertext))

    def shutdown_write(self, last: bool) -> bool:
        if not self.session.write_closed:
            try:
                self.session.close_write()
            except TlsError:
                pass  # the session is broken; the TCP half-close below still ends our direction
            self._send_ciphertext()
            if self.outgoing.size:
                return False
        return super().shutdown_write(last)

    def release(self) -> None:
        super().release()
        self.on_handshake = None  # a callback bound to the pair

    def truncated(self) -> bool:
        return self.session.truncated

    def log_fields(self) -> dict[str, object]:
        session = self.session
        fields: dict[str, object] = {f"{self.name}_tls": session.version}
        if self.name == "client":
            fields["sni"] = session.server_name
            fields["client_cert"] = "yes" if session.peer_certificate_presented else "no"
        return fields


# -- splicing: bytes that never enter Python ------------------------------------------------

SPLICE_AVAILABLE = hasattr(os, "splice")
SPLICE_AFTER = 1024 * 1024  # bytes in big reads one direction copies before it switches to splicing
BULK_READ = 32 * 1024  # a read at least this big: the sender is ahead of us, a bulk flow
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class PipeBuffer:
    """Bytes on their way to a socket, held in a kernel pipe, for a direction that splices.

    The pipe is sized to the listener's `buffer_size` where the system allows; `high` is the
    size it really got. Making one can fail (OSError) when descriptors run out. Bytes that wait
    in it count against `budget`, but only when the caller `settle`s (not per splice).
    """

    def __init__(self, wanted: int, budget: Budget) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_fd, _F_SETPIPE_SZ, wanted)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default size still works
        self.budget = budget
        self.counted = 0  # of `size`, what the budget knows about
        self.size = 0
        self.high = fcntl.fcntl(self.write_fd, _F_GETPIPE_SZ)
        self.low = self.high // 4

    def fill_from(self, fd: int, count: int) -> int:
        """Move up to `count` bytes from socket `fd` into the pipe; 0 means end of stream."""
        moved = os.splice(fd, self.write_fd, count, flags=_SPLICE_FLAGS)
        self.size += moved
        return moved

    def splice_to(self, fd: int) -> None:
        """Move what the pipe holds to socket `fd` until empty or the socket is full."""
        try:
            while self.size:
                self.size -= os.splice(self.read_fd, fd, self.size, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            pass

    def settle(self) -> Budget:
        """Bring the budget up to date with what the pipe holds now; returns the budget."""
        budget, change = self.budget, self.size - self.counted
        self.counted = self.size
        if change > 0:
            budget.add(change)
        elif change < 0:
            budget.remove(-change)
        return budget

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1
        self.size = 0
        self.settle()
