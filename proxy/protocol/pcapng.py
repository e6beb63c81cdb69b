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

A packet comes in two parts, its IP and TCP headers and its payload, a view of the data given:
the payload is copied once, into the block that frames it. The checksums are added up from
numbers (see "checksums and headers"): per flow, what never changes; per segment, a few fields
and the payload's sum, which a PayloadSums shared by a proxy's two legs computes once for bytes
received on one and sent on the other.

A PcapngWriter frames those IP packets as pcapng: a Section Header Block, an Interface
Description Block per listener (link type raw IP), an Enhanced Packet Block per packet with its
direction as seen by the proxy and an optional comment, in parts for the caller to join (many
packets' blocks in one write). Neither reads a clock nor writes a file: the caller gives the
timestamps and writes the bytes, in the order they are returned.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

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


class Packet(NamedTuple):
    """One IPv4 or IPv6 packet carrying one TCP segment, in two parts: the IP and TCP headers,
    then the payload (b"" but for data)."""

    header: bytes
    payload: bytes | memoryview
    direction: Direction


# -- checksums and headers ------------------------------------------------------------------
#
# The Internet checksum (RFC 1071) is the ones' complement of the ones' complement sum of the
# 16-bit words. 2**16 is 1 modulo 0xFFFF, so that sum is the number the words spell modulo
# 0xFFFF (0xFFFF, not 0, unless every word is 0), and any field may be added as a number of
# its own: a 32-bit sequence number as itself rather than as two words, an address as the
# number it spells. So a segment's checksum is a per-flow constant (addresses, ports, protocol,
# window) plus a few numbers per segment plus its payload's sum, computed once; its complement
# is 0xFFFF - (sum % 0xFFFF or 0xFFFF), the sum never being 0 (the protocol number is in it).

_PIECE = 4096  # bytes of a payload read as one number


def _payload_sum(payload: bytes | memoryview) -> int:
    """A number congruent modulo 0xFFFF to the sum of `payload`'s big-endian 16-bit words (an odd
    tail padded with a zero byte)."""
    # Read little-endian, each word is byte-swapped, which multiplies it by 2**8 modulo 0xFFFF;
    # 2**8 is its own inverse there, so shifting by 8 bits again gives the big-endian sum.
    if len(payload) <= _PIECE:
        return (int.from_bytes(payload, "little") % 0xFFFF) << 8
    # A remainder divides digit by digit, slower than reading the bytes; pieces starting at even
    # offsets add up to the same sum, and their sum is a number of only one piece's size.
    from_bytes = int.from_bytes
    pieces = [from_bytes(payload[start : start + _PIECE], "little") for start in range(0, len(payload), _PIECE)]
    return (sum(pieces) % 0xFFFF) << 8


class PayloadSums:
    """Payload sums kept from what a proxy received, for when it sends the same bytes on.

    A proxy's two legs carry the same bytes: what it reads from one end it usually sends to the
    other at once and whole, cut into the same segments. The conversations of both legs share
    one PayloadSums: a large payload received (INBOUND) is summed and kept, and the same payload
    sent (OUTBOUND) takes its sum instead of reading it again. Sending consumes what is kept (a
    payload that does not match, sent in part, say, drops it), so at most one read's segments
    (KEPT) are held, until the connection next sends.
    """

    __slots__ = ("_kept",)
    KEPT = 4  # segments: a read of up to 256 KiB
    FROM = 4096  # payload bytes below which summing again costs less than comparing

    def __init__(self) -> None:
        self._kept: deque[tuple[bytes, int]] = deque(maxlen=self.KEPT)

    def received(self, payload: bytes | memoryview) -> int:
        """The sum of a payload the proxy received."""
        if len(payload) < self.FROM:
            return _payload_sum(payload)
        copy = bytes(payload)  # what the caller's buffer holds now may be gone when it is sent
        total = _payload_sum(copy)
        self._kept.append((copy, total))
        return total

    def sent(self, payload: bytes | memoryview) -> int:
        """The sum of a payload the proxy sent."""
        kept = self._kept
        if kept and len(payload) >= self.FROM:
            copy = bytes(payload)  # compared whole (memcmp); a view would compare byte by byte
            while kept:
                earlier, total = kept.popleft()
                if earlier == copy:
                    return total
        return _payload_sum(payload)


# A Packet made in C: a NamedTuple's own constructor is a Python function, called twice a chunk.
_new_packet = partial(tuple.__new__, Packet)

# One struct per header layout, fields in wire order: IP then TCP (20 bytes, no options).
_IPV4_TCP = struct.Struct("!HHHHHH4s4sHHIIHHHH")
_IPV6_TCP = struct.Struct("!IHBB16s16sHHIIHHHH")
_IPV4_FIRST_WORD = 0x4500  # version 4, 5 words of header, no type of service
_DONT_FRAGMENT = 0x4000
_TTL_PROTO = _TTL << 8 | _PROTO_TCP
_IPV6_FIRST_WORD = 6 << 28  # version 6, no traffic class, no flow label
_TCP_OFFSET = 5 << 12  # 5 words of header: no options


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

    __slots__ = (
        "direction", "dst", "dst_port", "finished", "ident", "ip_sum", "payload_sum", "seq", "src", "src_port",
        "tcp_sum",
    )  # fmt: skip

    def __init__(
        self,
        src: tuple[bytes, int],
        dst: tuple[bytes, int],
        isn: int,
        direction: Direction,
        payload_sum: Callable[[bytes | memoryview], int],
    ) -> None:
        self.src, self.src_port = src
        self.dst, self.dst_port = dst
        self.seq = isn  # the next sequence number this sender uses; what the receiver acknowledges
        self.ident = 0  # the IPv4 identification of the sender's next packet
        self.finished = False  # the sender's FIN went
        self.direction = direction
        self.payload_sum = payload_sum  # _payload_sum, or what a PayloadSums shared with another leg says
        addresses = int.from_bytes(self.src, "big") + int.from_bytes(self.dst, "big")
        # What every segment's checksums add up the same: the pseudo-header's addresses and
        # protocol, the ports and the window; and the IPv4 header's fixed words and addresses.
        self.tcp_sum = addresses + _PROTO_TCP + self.src_port + self.dst_port + WINDOW
        self.ip_sum = addresses + _IPV4_FIRST_WORD + _DONT_FRAGMENT + _TTL_PROTO


def _endpoint(name: str, address: tuple[str, int]) -> tuple[bytes, int]:
    host, port = address[0], address[1]  # an IPv6 socket address has flowinfo and scope id too
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{name} port {port} is not in 0..65535")
    return ipaddress.ip_address(host.partition("%")[0]).packed, port


class TcpConversation:
    """The packets of one TCP connection between two real endpoints, for the byte streams it carried.

    `local` is the end the proxy is (SERVER on a client's leg, CLIENT on the upstream leg): its
    packets are OUTBOUND, the other end's INBOUND. Each call returns its packets in order, to be
    framed at once: a data packet's payload is a view of the data given, valid as long as that
    is. `open()` comes first; `send` and `shutdown` are for an end that has not yet half-closed;
    after both FINs (CLOSED) or an RST (RESET) nothing more may be sent. A call the state does
    not allow raises ConversationStateError and changes nothing.
    """

    def __init__(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        *,
        local: Peer,
        client_isn: int = 0,
        server_isn: int = 0,
        sums: PayloadSums | None = None,
    ) -> None:
        client_end, server_end = _endpoint("client", client), _endpoint("server", server)
        if len(client_end[0]) != len(server_end[0]):
            raise ValueError(f"client {client[0]} and server {server[0]} are not of the same IP version")
        for name, isn in (("client", client_isn), ("server", server_isn)):
            if not 0 <= isn < _SEQ_MOD:
                raise ValueError(f"{name} initial sequence number {isn} is not a 32-bit number")
        outbound_from_client = local is Peer.CLIENT
        inbound = (Direction.INBOUND, _payload_sum if sums is None else sums.received)
        outbound = (Direction.OUTBOUND, _payload_sum if sums is None else sums.sent)
        # Two attributes rather than a table by Peer: Enum hashes in Python, twice a packet.
        self._from_client = _Flow(client_end, server_end, client_isn, *(outbound if outbound_from_client else inbound))
        self._from_server = _Flow(server_end, client_end, server_isn, *(inbound if outbound_from_client else outbound))
        self._ipv4 = len(client_end[0]) == 4
        self.max_payload = MAX_PAYLOAD_IPV4 if self._ipv4 else MAX_PAYLOAD_IPV6
        self.header_size = (_IPV4_HEADER if self._ipv4 else _IPV6_HEADER) + _TCP_HEADER  # before a payload
        self.state = ConversationState.NEW

    def open(self) -> list[Packet]:
        """The three-way handshake: the client's SYN, the server's SYN-ACK, the client's ACK."""
        self._move(ConversationState.OPEN)
        client, server = self._from_client, self._from_server
        syn = self._segment(client, _SYN, 0)
        syn_ack = self._segment(server, _SYN | _ACK, client.seq)
        return [syn, syn_ack, self._segment(client, _ACK, server.seq)]

    def send(self, sender: Peer, data: bytes | memoryview) -> list[Packet]:
        """`data` from `sender`: segments of at most `max_payload` bytes, each acknowledged at once.

        b"" gives no packets.
        """
        flow, receiver = self._sending(sender, "send")
        view = memoryview(data).cast("B")
        size = self.max_payload
        if 0 < len(view) <= size:  # one segment, as most chunks are: no slicing, no loop
            data_segment = self._segment(flow, _PSH | _ACK, receiver.seq, view, flow.payload_sum(view))
            return [data_segment, self._segment(receiver, _ACK, flow.seq)]
        packets = []
        for start in range(0, len(view), size):
            payload = view[start : start + size]
            packets.append(self._segment(flow, _PSH | _ACK, receiver.seq, payload, flow.payload_sum(payload)))
            packets.append(self._segment(receiver, _ACK, flow.seq))
        return packets

    def shutdown(self, sender: Peer) -> list[Packet]:
        """`sender` half-closes: its FIN, and the other end's ACK of it."""
        flow, receiver = self._sending(sender, "shut down")
        fin = self._segment(flow, _FIN | _ACK, receiver.seq)
        packets = [fin, self._segment(receiver, _ACK, flow.seq)]
        flow.finished = True
        if receiver.finished:
            self._move(ConversationState.CLOSED)
        return packets

    def reset(self, sender: Peer) -> list[Packet]:
        """`sender` aborts the connection: one RST, acknowledging all it received."""
        self._move(ConversationState.RESET)
        flow, receiver = self._flows(sender)
        return [self._segment(flow, _RST | _ACK, receiver.seq)]

    # -- inside -------------------------------------------------------------------------

    def _move(self, new: ConversationState) -> None:
        if new not in _MOVES[self.state]:
            raise ConversationStateError(f"TCP conversation cannot go from {self.state.value} to {new.value}")
        self.state = new

    def _flows(self, sender: Peer) -> tuple[_Flow, _Flow]:
        """The flow `sender` sends on, and the one it receives on."""
        if sender is Peer.CLIENT:
            return self._from_client, self._from_server
        return self._from_server, self._from_client

    def _sending(self, sender: Peer, operation: str) -> tuple[_Flow, _Flow]:
        if self.state is not ConversationState.OPEN:
            raise ConversationStateError(f"cannot {operation} on a TCP conversation that is {self.state.value}")
        # _flows(sender), without a call: this runs for every chunk.
        if sender is Peer.CLIENT:
            flow, receiver = self._from_client, self._from_server
        else:
            flow, receiver = self._from_server, self._from_client
        if flow.finished:
            raise ConversationStateError(f"cannot {operation}: the {sender.value} already sent its FIN")
        return flow, receiver

    def _segment(
        self, flow: _Flow, flags: int, ack: int, payload: bytes | memoryview = b"", payload_sum: int = 0
    ) -> Packet:
        """One segment from `flow`'s sender acknowledging `ack` (0 without ACK in `flags`);
        `payload_sum` is `_payload_sum(payload)`."""
        seq = flow.seq
        size = len(payload)
        tcp_length = _TCP_HEADER + size
        control = _TCP_OFFSET | flags
        tcp_sum = flow.tcp_sum + tcp_length + seq + ack + control + payload_sum
        tcp_checksum = 0xFFFF - (tcp_sum % 0xFFFF or 0xFFFF)  # see "checksums and headers"
        if self._ipv4:
            ident = flow.ident
            total = _IPV4_HEADER + tcp_length
            ip_sum = flow.ip_sum + total + ident
            header = _IPV4_TCP.pack(
                _IPV4_FIRST_WORD, total, ident, _DONT_FRAGMENT, _TTL_PROTO, 0xFFFF - (ip_sum % 0xFFFF or 0xFFFF),
                flow.src, flow.dst, flow.src_port, flow.dst_port, seq, ack, control, WINDOW, tcp_checksum, 0,
            )  # fmt: skip
            flow.ident = (ident + 1) & 0xFFFF
        else:
            header = _IPV6_TCP.pack(
                _IPV6_FIRST_WORD, tcp_length, _PROTO_TCP, _TTL,
                flow.src, flow.dst, flow.src_port, flow.dst_port, seq, ack, control, WINDOW, tcp_checksum, 0,
            )  # fmt: skip
        flow.seq = (seq + size + (1 if flags & (_SYN | _FIN) else 0)) % _SEQ_MOD
        return _new_packet((header, payload, flow.direction))


# -- pcapng ---------------------------------------------------------------------------------

_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total length, interface, timestamp (high, low), captured, length
# After a packet: its padding to 32 bits, epb_flags (the direction), opt_endofopt, the total
# length again; one layout per length of padding. A block without a comment is then two packs.
_EPB_TAILS = [struct.Struct(f"<{padding}xHHIHHI") for padding in range(4)]
_EPB_FIXED = _EPB_HEAD.size + 4  # the head and the closing total length
_EPB_FLAGS_ONLY = 12  # epb_flags and opt_endofopt


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
    packets; `packet()` frames one packet. The caller writes them, in order.
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
        pieces: list[bytes | memoryview],
        interface: int,
        timestamp_us: int,
        packet: Packet,
        comment: str | None = None,
        kept: int | None = None,
    ) -> int:
        """An Enhanced Packet Block: `packet` seen at `timestamp_us` (microseconds since the epoch).

        The block goes onto `pieces` in parts, to be joined (its payload is not copied here); it
        returns the block's length. `kept` keeps at most that many bytes of the payload (a snap
        length), the block still saying how long the packet was; None keeps it whole.
        """
        if self._interfaces is None or not 0 <= interface < self._interfaces:
            raise ValueError(f"interface {interface} was not declared in this section")
        if not 0 <= timestamp_us < 1 << 64:
            raise ValueError(f"timestamp {timestamp_us} is not a 64-bit count of microseconds")
        header, payload, direction = packet
        size = captured = len(header) + len(payload)
        if kept is not None and kept < len(payload):
            payload = payload[: max(kept, 0)]
            captured = len(header) + len(payload)
        padding = -captured % 4
        if comment is None:
            total = _EPB_FIXED + captured + padding + _EPB_FLAGS_ONLY
            tail = _EPB_TAILS[padding].pack(_EPB_FLAGS, 4, direction, _OPT_ENDOFOPT, 0, total)
        else:
            options = _options((_EPB_FLAGS, struct.pack("<I", direction)), (_OPT_COMMENT, comment.encode()))
            total = _EPB_FIXED + captured + padding + len(options)
            tail = b"".join((b"\0" * padding, options, struct.pack("<I", total)))
        high, low = timestamp_us >> 32, timestamp_us & 0xFFFFFFFF
        pieces += (_EPB_HEAD.pack(_EPB, total, interface, high, low, captured, size), header, payload, tail)
        return total
