"""Proxied byte streams as a pcapng capture: synthesised TCP/IP packets and the blocks framing them.

Theory of operation
-------------------
The proxy sees each leg of a connection (client to proxy, proxy to upstream) as two byte streams,
never as packets. For Wireshark to show a leg as TCP all the same, a TcpConversation invents the
packets a capture on the proxy's host could have seen, between the leg's real addresses and
ports: the three-way handshake, each chunk of data cut into segments that the receiver
acknowledges at once, a FIN (acknowledged) at each half-close, an RST at a reset. Sequence and
acknowledgement numbers are exact per direction, so Wireshark's TCP analysis finds no gap, no
retransmission and no full window, and "Follow TCP Stream" gives back each direction byte for
byte. No TCP options are sent, so no window scaling: the window reads as the 65,535 bytes it says,
and a segment (at most 65,495 payload bytes over IPv4, 65,515 over IPv6, so that the IP length
fields fit) never fills it, since everything before it is already acknowledged.

A PcapngWriter frames those IP packets as pcapng: a Section Header Block, an Interface
Description Block per listener (link type raw IP), an Enhanced Packet Block per packet with its
direction as seen by the proxy and an optional comment. Neither reads a clock nor writes a file:
the caller gives the timestamps and writes the bytes, in the order they are returned.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

LINKTYPE_RAW = 101  # each packet starts with its IPv4 or IPv6 header
SNAPLEN = 262_144  # more than the largest packet made here (40 + 65,535 bytes over IPv6): none is cut
WINDOW = 0xFFFF  # every segment advertises this, unscaled

_TCP_HEADER = 20
_IPV4_HEADER = 20
_IPV6_HEADER = 40
MAX_PAYLOAD_IPV4 = 0xFFFF - _IPV4_HEADER - _TCP_HEADER  # the IPv4 total length counts its own header
MAX_PAYLOAD_IPV6 = 0xFFFF - _TCP_HEADER  # the IPv6 payload length does not count the fixed header
_TTL = 64
_PROTO_TCP = 6
_SEQ_MOD = 1 << 32

_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# pcapng block types and option codes (draft-ietf-opsawg-pcapng)
_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_ENDOFOPT, _OPT_COMMENT = 0, 1
_SHB_USERAPPL = 4
_IF_NAME = 2
_EPB_FLAGS = 2


class Direction(enum.IntEnum):
    """A packet's direction as seen by the capturing host, the proxy; the values are epb_flags'."""

    INBOUND = 1
    OUTBOUND = 2


class Peer(enum.Enum):
    """An end of one TCP conversation."""

    CLIENT = "client"  # sent the SYN
    SERVER = "server"  # answered it


@dataclass(frozen=True, slots=True)
class Packet:
    ip: bytes  # one whole IPv4 or IPv6 packet carrying one TCP segment
    direction: Direction


# -- checksums and headers ------------------------------------------------------------------


def _checksum(*parts: bytes | memoryview) -> int:
    """The Internet checksum (RFC 1071) of the parts laid end to end, each but the last of even length."""
    total = 0
    for part in parts:
        value = int.from_bytes(part, "big")
        total += value << 8 if len(part) % 2 else value  # an odd tail is padded with a zero byte
    # 2**16 is 1 modulo 0xFFFF, so the ones' complement sum of the 16-bit words is the number they
    # spell modulo 0xFFFF (0xFFFF, not 0, unless every word is 0): one big-integer remainder
    # instead of a Python loop over tens of thousands of words.
    folded = total % 0xFFFF or (0xFFFF if total else 0)
    return 0xFFFF - folded


def _ipv4(src: bytes, dst: bytes, ident: int, segment: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, _IPV4_HEADER + len(segment), ident, 0x4000, _TTL, _PROTO_TCP, 0, src, dst
    )  # version 4, 5 words of header, don't fragment
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + segment


def _ipv6(src: bytes, dst: bytes, segment: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(segment), _PROTO_TCP, _TTL, src, dst) + segment


def _pseudo_header(src: bytes, dst: bytes, tcp_length: int) -> bytes:
    if len(src) == 4:
        return struct.pack("!4s4sBBH", src, dst, 0, _PROTO_TCP, tcp_length)
    return struct.pack("!16s16sI3xB", src, dst, tcp_length, _PROTO_TCP)


# -- the TCP conversation -------------------------------------------------------------------


class ConversationStateError(Exception):
    """A call the conversation's state does not allow: a bug in the caller, not a peer's doing."""


class ConversationState(enum.Enum):
    NEW = "new"  # nothing sent yet: open() comes first
    OPEN = "open"  # data either way, until each end's FIN
    CLOSED = "closed"  # both FINs went, each acknowledged
    RESET = "reset"  # an RST went: nothing follows it


_MOVES: dict[ConversationState, frozenset[ConversationState]] = {
    ConversationState.NEW: frozenset({ConversationState.OPEN}),
    ConversationState.OPEN: frozenset({ConversationState.CLOSED, ConversationState.RESET}),
    ConversationState.CLOSED: frozenset(),
    ConversationState.RESET: frozenset(),
}


class _Flow:
    """One direction of the conversation, named by its sender."""

    __slots__ = ("direction", "dst", "dst_port", "finished", "ident", "receiver", "seq", "src", "src_port")

    def __init__(
        self, src: tuple[bytes, int], dst: tuple[bytes, int], isn: int, direction: Direction, receiver: Peer
    ) -> None:
        self.src, self.src_port = src
        self.dst, self.dst_port = dst
        self.seq = isn  # the next sequence number this sender uses; what the receiver acknowledges
        self.ident = 0  # the IPv4 identification of the sender's next packet
        self.finished = False  # the sender's FIN went
        self.direction = direction
        # The other direction, by name: a reference to its flow would make a cycle, which only the
        # cycle collector frees, per captured connection.
        self.receiver = receiver


def _endpoint(name: str, address: tuple[str, int]) -> tuple[bytes, int]:
    host, port = address[0], address[1]  # an IPv6 socket address has flowinfo and scope id too
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{name} port {port} is not in 0..65535")
    return ipaddress.ip_address(host.partition("%")[0]).packed, port


class TcpConversation:
    """The packets of one TCP connection between two real endpoints, for the byte streams it carried.

    `local` is the end the proxy is (SERVER on a client's leg, CLIENT on the upstream leg): its
    packets are OUTBOUND, the other end's INBOUND. Each call returns its packets in order, to be
    framed at once. `open()` comes first; `send` and `shutdown` are for an end that has not yet
    half-closed; after both FINs (CLOSED) or an RST (RESET) nothing more may be sent. A call the
    state does not allow raises ConversationStateError and changes nothing.
    """

    def __init__(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        *,
        local: Peer,
        client_isn: int = 0,
        server_isn: int = 0,
    ) -> None:
        client_end, server_end = _endpoint("client", client), _endpoint("server", server)
        if len(client_end[0]) != len(server_end[0]):
            raise ValueError(f"client {client[0]} and server {server[0]} are not of the same IP version")
        for name, isn in (("client", client_isn), ("server", server_isn)):
            if not 0 <= isn < _SEQ_MOD:
                raise ValueError(f"{name} initial sequence number {isn} is not a 32-bit number")
        outbound_from_client = local is Peer.CLIENT
        from_client = _Flow(
            client_end,
            server_end,
            client_isn,
            Direction.OUTBOUND if outbound_from_client else Direction.INBOUND,
            Peer.SERVER,
        )
        from_server = _Flow(
            server_end,
            client_end,
            server_isn,
            Direction.INBOUND if outbound_from_client else Direction.OUTBOUND,
            Peer.CLIENT,
        )
        self._flows = {Peer.CLIENT: from_client, Peer.SERVER: from_server}
        self._ipv4 = len(client_end[0]) == 4
        self.max_payload = MAX_PAYLOAD_IPV4 if self._ipv4 else MAX_PAYLOAD_IPV6
        self.header_size = (_IPV4_HEADER if self._ipv4 else _IPV6_HEADER) + _TCP_HEADER  # before a payload
        self.state = ConversationState.NEW

    def open(self) -> list[Packet]:
        """The three-way handshake: the client's SYN, the server's SYN-ACK, the client's ACK."""
        self._move(ConversationState.OPEN)
        client, server = self._flows[Peer.CLIENT], self._flows[Peer.SERVER]
        return [self._segment(client, _SYN), self._segment(server, _SYN | _ACK), self._segment(client, _ACK)]

    def send(self, sender: Peer, data: bytes | memoryview) -> list[Packet]:
        """`data` from `sender`: segments of at most `max_payload` bytes, each acknowledged at once.

        b"" gives no packets.
        """
        flow, receiver = self._sending(sender, "send")
        view = memoryview(data).cast("B")
        packets = []
        for start in range(0, len(view), self.max_payload):
            packets.append(self._segment(flow, _PSH | _ACK, view[start : start + self.max_payload]))
            packets.append(self._segment(receiver, _ACK))
        return packets

    def shutdown(self, sender: Peer) -> list[Packet]:
        """`sender` half-closes: its FIN, and the other end's ACK of it."""
        flow, receiver = self._sending(sender, "shut down")
        packets = [self._segment(flow, _FIN | _ACK), self._segment(receiver, _ACK)]
        flow.finished = True
        if receiver.finished:
            self._move(ConversationState.CLOSED)
        return packets

    def reset(self, sender: Peer) -> list[Packet]:
        """`sender` aborts the connection: one RST, acknowledging all it received."""
        self._move(ConversationState.RESET)
        return [self._segment(self._flows[sender], _RST | _ACK)]

    # -- inside -------------------------------------------------------------------------

    def _move(self, new: ConversationState) -> None:
        if new not in _MOVES[self.state]:
            raise ConversationStateError(f"TCP conversation cannot go from {self.state.value} to {new.value}")
        self.state = new

    def _sending(self, sender: Peer, operation: str) -> tuple[_Flow, _Flow]:
        if self.state is not ConversationState.OPEN:
            raise ConversationStateError(f"cannot {operation} on a TCP conversation that is {self.state.value}")
        flow = self._flows[sender]
        if flow.finished:
            raise ConversationStateError(f"cannot {operation}: the {sender.value} already sent its FIN")
        return flow, self._flows[flow.receiver]

    def _segment(self, flow: _Flow, flags: int, payload: bytes | memoryview = b"") -> Packet:
        """One segment from `flow`'s sender, acknowledging all the other end sent if `flags` has ACK."""
        ack = self._flows[flow.receiver].seq if flags & _ACK else 0
        header = struct.pack(
            "!HHIIBBHHH", flow.src_port, flow.dst_port, flow.seq, ack, 5 << 4, flags, WINDOW, 0, 0
        )  # 5 words of header: no options
        length = len(header) + len(payload)
        checksum = _checksum(_pseudo_header(flow.src, flow.dst, length), header, payload)
        segment = b"".join((header[:16], struct.pack("!H", checksum), header[18:], payload))
        if self._ipv4:
            ip = _ipv4(flow.src, flow.dst, flow.ident, segment)
            flow.ident = (flow.ident + 1) & 0xFFFF
        else:
            ip = _ipv6(flow.src, flow.dst, segment)
        flow.seq = (flow.seq + len(payload) + (1 if flags & (_SYN | _FIN) else 0)) % _SEQ_MOD
        return Packet(ip, flow.direction)


# -- pcapng ---------------------------------------------------------------------------------


def _padded(value: bytes | memoryview) -> bytes:
    return bytes(value) + b"\0" * (-len(value) % 4)


def _options(*options: tuple[int, bytes]) -> bytes:
    """An options list: each code, length and value padded to 32 bits, then opt_endofopt."""
    return b"".join(struct.pack("<HH", code, len(value)) + _padded(value) for code, value in options) + struct.pack(
        "<HH", _OPT_ENDOFOPT, 0
    )


def _block(block_type: int, body: bytes) -> bytes:
    """A block: its type, its total length (also after the body, to read backwards), the body."""
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """The pcapng blocks of one capture, little-endian, timestamps in microseconds (the default).

    `header()` starts a section; `interface()` declares an interface of that section, before its
    packets; `packet()` frames one packet. Each returns bytes for the caller to write, in order.
    """

    def __init__(self) -> None:
        self._interfaces: int | None = None  # how many the current section declared; None before header()

    def header(self) -> bytes:
        """A Section Header Block (version 1.0, length unknown, written by pairproxy).

        It starts a new section: interfaces are numbered from 0 again.
        """
        self._interfaces = 0
        body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _options((_SHB_USERAPPL, b"pairproxy"))
        return _block(_SHB, body)

    def interface(self, name: str) -> tuple[int, bytes]:
        """An Interface Description Block for the listener `name`: its index and the block."""
        if self._interfaces is None:
            raise ValueError("an interface needs a section: header() comes first")
        index = self._interfaces
        self._interfaces += 1
        body = struct.pack("<HHI", LINKTYPE_RAW, 0, SNAPLEN) + _options((_IF_NAME, name.encode()))
        return index, _block(_IDB, body)

    def withdraw_interface(self) -> None:
        """The block of the last interface declared was not written after all (the caller could
        not): its index is given out again by the next `interface()`."""
        if not self._interfaces:
            raise ValueError("no interface to withdraw")
        self._interfaces -= 1

    def packet(
        self,
        interface: int,
        timestamp_us: int,
        ip_packet: bytes,
        direction: Direction,
        comment: str | None = None,
        captured: int | None = None,
    ) -> bytes:
        """An Enhanced Packet Block: `ip_packet` seen at `timestamp_us` (microseconds since the epoch).

        `captured` keeps only that many of its first bytes (a snap length), the block still
        saying how long the packet was; None keeps it whole.
        """
        if self._interfaces is None or not 0 <= interface < self._interfaces:
            raise ValueError(f"interface {interface} was not declared in this section")
        if not 0 <= timestamp_us < 1 << 64:
            raise ValueError(f"timestamp {timestamp_us} is not a 64-bit count of microseconds")
        options = [(_EPB_FLAGS, struct.pack("<I", direction))]
        if comment is not None:
            options.append((_OPT_COMMENT, comment.encode()))
        size = len(ip_packet)
        kept = ip_packet if captured is None or captured >= size else memoryview(ip_packet)[: max(captured, 0)]
        fixed = struct.pack("<IIIII", interface, timestamp_us >> 32, timestamp_us & 0xFFFFFFFF, len(kept), size)
        return _block(_EPB, fixed + _padded(kept) + _options(*options))
