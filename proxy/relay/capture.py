"""The pcap tap: a captured connection's two legs, recorded from what their sockets carried.

A captured connection's sockets are wrapped in RecordingSockets, which pass every call through
and tell their leg what went over the wire: bytes received and sent (TLS sides: the
ciphertext), a FIN at end of stream or at shutdown, an RST at a reset or an abortive close. Each
leg (client to proxy, proxy to upstream) is a TcpConversation between the socket's real
addresses, which turns that into packets, and the capture hands them to a PcapSink: the packets
of one call (a chunk's segments and their acknowledgements) in one write, all with the time of
the call. The two legs share one PayloadSums, so that bytes received on one leg and sent on
the other are summed for their checksums once.

Whether a connection is captured is only certain once it is routed and connected (a filter may
name the route or the server), but its first packets (the handshake, a PROXY header, a
ClientHello, TLS) come before that. So the capture holds its packets, bounded, until the pair
decides: `commit` writes them and goes on writing live; `discard` drops them, and the pair puts
its plain sockets back, so a connection that is not captured copies or splices like any other.
A connection that is never wrapped pays nothing at all.

A leg over a UNIX socket has no IP addresses: it is written between made-up loopback ones
(127.0.0.1, a port from the connection's number to 1 on the client's leg, 2 on the upstream's),
and its comment says so with the socket's path (`leg=client unix=/run/app.sock`, escaped as
config/units.py escapes every UNIX socket's name).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from typing import Any

from proxy.config.units import unix_name_text, unix_peer
from proxy.errors import Meaning, classify
from proxy.output.pcap_sink import PcapSink
from proxy.protocol.pcapng import ConversationStateError, Packet, PayloadSums, Peer, TcpConversation
from proxy.relay.states import StateEnum, check_move

PENDING_LIMIT = 1024 * 1024  # bytes of packets held before the decision; beyond, they are not captured
UNREAD_SHOWN = 256 * 1024  # of what a peer sent and the proxy never read, shown at close
_INT = struct.Struct("i")
_INT_ZERO = _INT.pack(0)
_MADE_UP_HOST = "127.0.0.1"  # a UNIX leg's addresses in the capture
_MADE_UP_PORTS = 1024  # the first of the client ports made up from connection numbers


class Leg:
    """One TCP connection of a captured pair, as seen from the proxy's end of it."""

    __slots__ = ("capture", "conversation", "local", "remote", "label", "sent", "received", "abortive", "generation")

    def __init__(self, capture: ConnectionCapture, conversation: TcpConversation, local: Peer, label: str) -> None:
        self.capture = capture
        self.conversation = conversation
        self.local = local
        self.remote = Peer.SERVER if local is Peer.CLIENT else Peer.CLIENT
        self.label = label  # what the leg's comment adds: which leg, and its far end
        self.sent = 0  # payload bytes the proxy sent, then the far end, for the snap length
        self.received = 0
        self.abortive = False  # SO_LINGER 0 was set: closing sends an RST
        self.generation = 0  # the sink section this leg last said who it is in

    @property
    def introduction(self) -> str:
        """Who the leg is, on its first packet in a file (and after packets were lost)."""
        return f"{self.capture.comment} leg={self.label}"

    def data(self, sender: Peer, data: memoryview) -> None:
        try:
            packets = self.conversation.send(sender, data)
        except ConversationStateError:
            return  # as in _call, inlined: this runs for every chunk
        if not packets:
            return
        # Where the packets' payload starts in its sender's stream, for the snap length.
        if sender is self.local:
            offset = self.sent
            self.sent = offset + len(data)
        else:
            offset = self.received
            self.received = offset + len(data)
        self.capture.emit(self, packets, offset)

    def fin(self, sender: Peer) -> None:
        self.capture.emit(self, self._call(self.conversation.shutdown, sender))

    def reset(self, sender: Peer) -> None:
        self.capture.emit(self, self._call(self.conversation.reset, sender))

    def closed(self) -> None:
        """The proxy closed its socket: an RST if it was abortive, else its FIN if not sent yet."""
        if self.abortive:
            self.reset(self.local)
        else:
            self.fin(self.local)

    @staticmethod
    def _call(step: Any, *args: Any) -> list[Packet]:
        # A step the conversation's state does not allow is one that already happened on the
        # wire (a FIN after a reset, say): the capture has nothing to add, and never fails the
        # connection it watches.
        try:
            return step(*args)
        except ConversationStateError:
            return []


class RecordingSocket:
    """A socket of a captured connection: every call goes to the real socket, and what it
    carried goes to the leg. Anything not recorded is the real socket's own attribute."""

    __slots__ = ("raw", "leg")

    def __init__(self, raw: socket.socket, leg: Leg) -> None:
        self.raw = raw
        self.leg = leg

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def fileno(self) -> int:
        return self.raw.fileno()

    def _failed(self, exc: OSError) -> None:
        if classify(exc) is Meaning.PEER_GONE:
            self.leg.reset(self.leg.remote)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        try:
            count = self.raw.recv_into(buffer, nbytes, flags)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            self._failed(exc)
            raise
        self._received(memoryview(buffer)[:count])
        return count

    def recv(self, size: int, flags: int = 0) -> bytes:
        try:
            data = self.raw.recv(size, flags)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            self._failed(exc)
            raise
        self._received(memoryview(data))
        return data

    def _received(self, data: memoryview) -> None:
        leg = self.leg
        if data:
            leg.data(leg.remote, data)
        else:
            leg.fin(leg.remote)

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            sent = self.raw.send(data, flags)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            self._failed(exc)
            raise
        if sent:
            self.leg.data(self.leg.local, memoryview(data)[:sent])
        return sent

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)
        if how != socket.SHUT_RD:
            self.leg.fin(self.leg.local)

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.raw.setsockopt(level, option, value)
        abortive = level == socket.SOL_SOCKET and option == socket.SO_LINGER and value[:4] == b"\x01\0\0\0"
        if abortive and self.raw.family != socket.AF_UNIX:  # a UNIX socket has no reset: its peer reads an end
            self.leg.abortive = True

    def close(self) -> None:
        leg = self.leg
        try:
            unread = _INT.unpack(fcntl.ioctl(self.raw.fileno(), termios.FIONREAD, _INT_ZERO))[0]
            if unread:
                # The kernel acknowledged these bytes and the proxy never read them: closing now
                # sends an RST. Show both, as a capture on the host would.
                leg.data(leg.remote, memoryview(self.raw.recv(min(unread, UNREAD_SHOWN), socket.MSG_PEEK)))
                leg.abortive = True
        except OSError:
            pass  # the socket is already broken: its end was recorded when it broke
        self.raw.close()
        leg.closed()


class Recording(StateEnum):
    HOLDING = "holding"  # packets are held (bounded) until the pair decides
    WRITING = "writing"  # committed: what was held and everything after goes to the sink
    DROPPED = "dropped"  # not captured: nothing is recorded any more


_HOLDING, _WRITING, _DROPPED = Recording.HOLDING, Recording.WRITING, Recording.DROPPED
_RECORDING_MOVES: dict[Recording, frozenset[Recording]] = {
    Recording.HOLDING: frozenset({Recording.WRITING, Recording.DROPPED}),
    Recording.WRITING: frozenset({Recording.DROPPED}),  # `dump off` at run time
    Recording.DROPPED: frozenset(),
}


class ConnectionCapture:
    """The capture of one connection: its legs, and its packets before and after the decision."""

    __slots__ = ("conn", "listener", "snaplen", "sink", "comment", "state", "pending", "pending_size", "sums")

    def __init__(self, conn: int, listener: str) -> None:
        self.conn = conn
        self.listener = listener
        self.snaplen: int | None = None
        self.sink: PcapSink | None = None  # while WRITING
        self.comment = ""
        self.state = _HOLDING
        self.pending: list[tuple[Leg, int, list[Packet], int]] = []  # a list of packets an emit
        self.pending_size = 0
        self.sums = PayloadSums()  # both legs': what one receives, the other usually sends

    def _to(self, new: Recording) -> None:
        self.state = check_move(_RECORDING_MOVES, self.state, new, f"the capture of conn {self.conn}")

    def client_leg(self, sock: socket.socket, peer: tuple) -> RecordingSocket:
        """Record the accepted socket `sock` from `peer`; its handshake has just happened."""
        if sock.family == socket.AF_UNIX:
            return self._record_unix(sock, sock.getsockname(), Peer.SERVER, "client")
        conversation = TcpConversation(peer, sock.getsockname(), local=Peer.SERVER, sums=self.sums)
        return self._record(sock, conversation, Peer.SERVER, "client")

    def upstream_leg(self, sock: socket.socket) -> RecordingSocket:
        """Record the socket the proxy connected to an upstream server with."""
        if sock.family == socket.AF_UNIX:
            return self._record_unix(sock, sock.getpeername(), Peer.CLIENT, "upstream")
        conversation = TcpConversation(sock.getsockname(), sock.getpeername(), local=Peer.CLIENT, sums=self.sums)
        return self._record(sock, conversation, Peer.CLIENT, "upstream")

    def _record_unix(self, sock: socket.socket, path: str | bytes, local: Peer, label: str) -> RecordingSocket:
        """Record a UNIX leg between made-up loopback addresses; `path` is the socket file it reached."""
        made_up_client = (_MADE_UP_HOST, _MADE_UP_PORTS + self.conn % (65536 - _MADE_UP_PORTS))
        made_up_server = (_MADE_UP_HOST, 1 if label == "client" else 2)
        conversation = TcpConversation(made_up_client, made_up_server, local=local, sums=self.sums)
        return self._record(sock, conversation, local, f"{label} unix={unix_name_text(unix_peer(path)[1])}")

    def _record(self, sock: socket.socket, conversation: TcpConversation, local: Peer, label: str) -> RecordingSocket:
        leg = Leg(self, conversation, local, label)
        self.emit(leg, conversation.open())
        return RecordingSocket(sock, leg)

    def emit(self, leg: Leg, packets: list[Packet], offset: int = 0) -> None:
        """Write `packets` of `leg` (held until the decision); their payload starts at `offset`
        in its sender's stream. A payload may be a view of a buffer the caller reuses: it is
        written at once, or copied to be held."""
        state = self.state
        if state is _DROPPED:
            return
        now = time.time_ns() // 1000
        if state is _WRITING:
            self._write(leg, now, packets, offset)
            return
        held = []
        for header, payload, direction in packets:
            if self.pending_size >= PENDING_LIMIT:
                break
            held.append(Packet(header, bytes(payload), direction))
            self.pending_size += len(header) + len(payload)
        if held:
            self.pending.append((leg, now, held, offset))

    def _write(self, leg: Leg, timestamp_us: int, packets: list[Packet], offset: int) -> None:
        snaplen = self.snaplen
        kept = None if snaplen is None else snaplen - offset  # past `snaplen` bytes, headers only
        self.sink.write(self.listener, timestamp_us, packets, leg, kept)  # type: ignore[union-attr]

    def commit(self, sink: PcapSink, comment: str, snaplen: int | None) -> None:
        """Capture this connection to `sink`: what was held, then everything that follows.

        `comment` names the connection (`conn=ID listener=... route=...`); each leg's first
        packet in a file carries it, with the leg's name. Past `snaplen` bytes of a direction of
        a leg, packets keep their headers only.
        """
        self._to(_WRITING)
        self.sink, self.comment, self.snaplen = sink, comment, snaplen
        pending, self.pending = self.pending, []
        self.pending_size = 0
        for leg, timestamp_us, packets, offset in pending:
            self._write(leg, timestamp_us, packets, offset)

    def discard(self) -> None:
        """Not captured after all: drop what was held and record nothing more."""
        self._to(_DROPPED)
        self.sink = None
        self.pending.clear()
        self.pending_size = 0
