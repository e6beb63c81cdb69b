"""The capture's bytes, held exactly: the packets and blocks the proxy writes, compared byte for
byte with a reference that builds them the plain way, as the first release did (every header
packed whole, every checksum summed over the bytes themselves, one block per packet).

The writer frames packets in parts and adds checksums up from per-flow constants, and the
capture writes an emit's packets in one go, keeps a payload's sum for the other leg and applies
the snap length from stream offsets: none of which may show in the output. Random payloads of
many sizes (odd and even, past a segment's limit), over IPv4 and IPv6, either end local, any
initial sequence numbers, with and without a snap length, before and after the decision.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.schema import PcapConfig
from proxy.output.pcap_sink import PcapSink
from proxy.protocol.pcapng import (
    MAX_PAYLOAD_IPV4,
    MAX_PAYLOAD_IPV6,
    Direction,
    PayloadSums,
    Peer,
    TcpConversation,
)
from proxy.relay.capture import PENDING_LIMIT, ConnectionCapture, Leg
from tests.support import EPB, parse_blocks

V4 = (("192.0.2.10", 51000), ("198.51.100.7", 8443))
V6 = (("2001:db8::10", 51001), ("2001:db8:1::7", 8443))
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# -- the reference: packets and blocks built the plain way ----------------------------------


def reference_checksum(*parts: bytes) -> int:
    """RFC 1071 over the parts laid end to end: the words added one by one, carries folded."""
    data = b"".join(parts)
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class ReferenceFlow:
    def __init__(self, src: tuple[str, int], dst: tuple[str, int], isn: int, direction: Direction) -> None:
        self.src, self.src_port = ipaddress.ip_address(src[0]).packed, src[1]
        self.dst, self.dst_port = ipaddress.ip_address(dst[0]).packed, dst[1]
        self.seq, self.ident, self.direction = isn, 0, direction


class ReferenceConversation:
    """The packets of one connection (whole IP packets with their directions), steps assumed valid."""

    def __init__(self, client, server, local: Peer, client_isn: int, server_isn: int) -> None:
        proxy_is_client = local is Peer.CLIENT
        inbound, outbound = Direction.INBOUND, Direction.OUTBOUND
        self.flows = {
            Peer.CLIENT: ReferenceFlow(client, server, client_isn, outbound if proxy_is_client else inbound),
            Peer.SERVER: ReferenceFlow(server, client, server_isn, inbound if proxy_is_client else outbound),
        }
        self.max_payload = MAX_PAYLOAD_IPV4 if ipaddress.ip_address(client[0]).version == 4 else MAX_PAYLOAD_IPV6

    @staticmethod
    def other(peer: Peer) -> Peer:
        return Peer.SERVER if peer is Peer.CLIENT else Peer.CLIENT

    def segment(self, sender: Peer, flags: int, payload: bytes = b"") -> tuple[bytes, Direction]:
        flow = self.flows[sender]
        ack = self.flows[self.other(sender)].seq if flags & ACK else 0
        tcp = struct.pack("!HHIIBBHHH", flow.src_port, flow.dst_port, flow.seq, ack, 5 << 4, flags, 0xFFFF, 0, 0)
        if len(flow.src) == 4:
            pseudo = struct.pack("!4s4sBBH", flow.src, flow.dst, 0, 6, len(tcp) + len(payload))
        else:
            pseudo = struct.pack("!16s16sI3xB", flow.src, flow.dst, len(tcp) + len(payload), 6)
        checksum = reference_checksum(pseudo, tcp, payload)
        segment = tcp[:16] + struct.pack("!H", checksum) + tcp[18:] + payload
        if len(flow.src) == 4:
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), flow.ident, 0x4000, 64, 6, 0, flow.src, flow.dst
            )
            ip = ip[:10] + struct.pack("!H", reference_checksum(ip)) + ip[12:]
            flow.ident = (flow.ident + 1) & 0xFFFF
        else:
            ip = struct.pack("!IHBB16s16s", 6 << 28, len(segment), 6, 64, flow.src, flow.dst)
        flow.seq = (flow.seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) % (1 << 32)
        return ip + segment, flow.direction

    def open(self) -> list[tuple[bytes, Direction]]:
        return [self.segment(Peer.CLIENT, SYN), self.segment(Peer.SERVER, SYN | ACK), self.segment(Peer.CLIENT, ACK)]

    def send(self, sender: Peer, data: bytes) -> list[tuple[bytes, Direction]]:
        packets = []
        for start in range(0, len(data), self.max_payload):
            packets.append(self.segment(sender, PSH | ACK, data[start : start + self.max_payload]))
            packets.append(self.segment(self.other(sender), ACK))
        return packets

    def shutdown(self, sender: Peer) -> list[tuple[bytes, Direction]]:
        return [self.segment(sender, FIN | ACK), self.segment(self.other(sender), ACK)]

    def reset(self, sender: Peer) -> list[tuple[bytes, Direction]]:
        return [self.segment(sender, RST | ACK)]


def reference_options(*options: tuple[int, bytes]) -> bytes:
    out = b""
    for code, value in options:
        out += struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)
    return out + struct.pack("<HH", 0, 0)


def reference_block(interface: int, timestamp: int, ip: bytes, direction: Direction, comment, captured) -> bytes:
    """An Enhanced Packet Block, whole: fixed fields, the packet (cut at `captured`) padded, options."""
    kept = ip if captured is None else ip[:captured]
    options = [(2, struct.pack("<I", direction))]
    if comment is not None:
        options.append((1, comment.encode()))
    fixed = struct.pack("<IIIII", interface, timestamp >> 32, timestamp & 0xFFFFFFFF, len(kept), len(ip))
    body = fixed + kept + b"\0" * (-len(kept) % 4) + reference_options(*options)
    return struct.pack("<II", EPB, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


# -- the comparison -------------------------------------------------------------------------


def test_the_reference_checksum_is_rfc_1071():
    # RFC 1071's own example: the words 0001 f203 f4f5 f6f7 sum to ddf2 (carries folded), complement 220d.
    assert reference_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


sizes = st.one_of(
    st.integers(0, 64),
    st.integers(1400, 1600),
    st.integers(4090, 4100),  # around the piece a payload is read in
    st.sampled_from([MAX_PAYLOAD_IPV4 - 1, MAX_PAYLOAD_IPV4, MAX_PAYLOAD_IPV4 + 1, MAX_PAYLOAD_IPV6 + 1]),
    st.integers(1, 3 * MAX_PAYLOAD_IPV6),
)
steps = st.lists(
    st.tuples(st.sampled_from(["send", "send", "send", "shutdown"]), st.sampled_from(Peer), sizes, st.integers()),
    max_size=10,
)


def run_steps(conversation, reference, steps, reset_by):
    """The same valid steps on both: each returns (ours, reference's) packets per step."""
    pairs = [(conversation.open(), reference.open())]
    finished: set[Peer] = set()
    for action, peer, size, seed in steps:
        if peer in finished:
            continue
        if action == "send":
            data = random.Random(seed).randbytes(size)
            pairs.append((conversation.send(peer, memoryview(bytearray(data))), reference.send(peer, data)))
        else:
            finished.add(peer)
            pairs.append((conversation.shutdown(peer), reference.shutdown(peer)))
        if len(finished) == 2:
            break
    if reset_by is not None and len(finished) < 2:
        pairs.append((conversation.reset(reset_by), reference.reset(reset_by)))
    return pairs


@settings(max_examples=150, deadline=None)
@given(
    endpoints=st.sampled_from([V4, V6]),
    local=st.sampled_from(Peer),
    isns=st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1)),
    steps=steps,
    reset_by=st.one_of(st.none(), st.sampled_from(Peer)),
)
def test_every_packet_is_the_one_built_the_plain_way(endpoints, local, isns, steps, reset_by):
    conversation = TcpConversation(*endpoints, local=local, client_isn=isns[0], server_isn=isns[1])
    reference = ReferenceConversation(*endpoints, local, *isns)
    for ours, theirs in run_steps(conversation, reference, steps, reset_by):
        # a payload is a view of the caller's data: compared before anything reuses it
        assert [(p.header + bytes(p.payload), p.direction) for p in ours] == theirs


class Capture:
    """One connection captured to a file: the proxy's two legs over `endpoints`, as the relay
    makes them (what one leg receives, the other sends, from one reused buffer), and beside it
    the reference's packets of both legs in the order they were made."""

    def __init__(self, endpoints) -> None:
        self.capture = ConnectionCapture(7, "edge")
        self.scratch = memoryview(bytearray(256 * 1024))  # the relay's one read buffer
        client, server = endpoints
        self.legs = []
        self.references = []
        self.made: list[tuple[int, bytes, Direction]] = []  # (leg, packet, direction), in order
        for index, local in enumerate((Peer.SERVER, Peer.CLIENT)):  # the client's leg, the upstream's
            conversation = TcpConversation(client, server, local=local, sums=self.capture.sums)
            leg = Leg(self.capture, conversation, local, "client" if index == 0 else "upstream")
            self.capture.emit(leg, conversation.open())
            self.legs.append(leg)
            reference = ReferenceConversation(client, server, local, 0, 0)
            self.made += [(index, ip, direction) for ip, direction in reference.open()]
            self.references.append(reference)

    def relay(self, sender: Peer, data: bytes) -> None:
        """`sender`'s bytes over both legs: received on one, then sent on the other."""
        self.scratch[: len(data)] = data  # over whatever the last chunk left there
        view = self.scratch[: len(data)]
        for index in (0, 1) if sender is Peer.CLIENT else (1, 0):
            self.legs[index].data(sender, view)
            self.made += [(index, ip, direction) for ip, direction in self.references[index].send(sender, data)]


def expected_blocks(capture: Capture, comment: str, snaplen, held: int | None, timestamps: list[int]) -> list[bytes]:
    """The blocks the first release wrote for the same calls: the first `held` packets (all if
    None), the comment on each leg's first one, the snap length counted per leg and sender."""
    blocks = []
    sent = [{Peer.CLIENT: 0, Peer.SERVER: 0}, {Peer.CLIENT: 0, Peer.SERVER: 0}]
    introduced = set()
    for (index, ip, direction), timestamp in zip(capture.made[:held], timestamps, strict=True):
        reference = capture.references[index]
        header = 40 if len(reference.flows[Peer.CLIENT].src) == 4 else 60
        sender = Peer.CLIENT if reference.flows[Peer.CLIENT].direction is direction else Peer.SERVER
        payload = len(ip) - header
        captured = None
        if snaplen is not None and payload and sent[index][sender] + payload > snaplen:
            captured = header + max(0, snaplen - sent[index][sender])
        sent[index][sender] += payload
        text = None
        if index not in introduced:
            introduced.add(index)
            text = f"{comment} leg={'client' if index == 0 else 'upstream'}"
        blocks.append(reference_block(0, timestamp, ip, direction, text, captured))
    return blocks


def written_packets(path) -> tuple[list[bytes], list[int]]:
    """Each Enhanced Packet Block of the file, whole, and its timestamp (the one field the
    reference cannot know)."""
    blocks, timestamps = [], []
    for kind, body in parse_blocks(path.read_bytes()):
        if kind == EPB:
            blocks.append(struct.pack("<II", EPB, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))
            high, low = struct.unpack("<II", body[4:12])
            timestamps.append(high << 32 | low)
    return blocks, timestamps


def captured_file(path, capture: Capture, comment: str, snaplen, after) -> tuple[list[bytes], list[int]]:
    sink = PcapSink(PcapConfig(str(path)), str(path), lambda *_args, **_fields: None)
    capture.capture.commit(sink, comment, snaplen)
    for sender, size, seed in after:
        capture.relay(sender, random.Random(seed).randbytes(size))
    sink.close()
    return written_packets(path)


@settings(max_examples=40, deadline=None)
@given(
    endpoints=st.sampled_from([V4, V6]),
    before=st.lists(st.tuples(st.sampled_from(Peer), sizes, st.integers()), max_size=3),
    after=st.lists(st.tuples(st.sampled_from(Peer), sizes, st.integers()), max_size=4),
    snaplen=st.one_of(st.none(), st.integers(0, 3000), st.integers(60_000, 140_000)),
)
def test_a_captured_connection_is_written_as_the_plain_way_writes_it(
    tmp_path_factory, endpoints, before, after, snaplen
):
    capture = Capture(endpoints)
    for sender, size, seed in before:  # held until the decision: copies, not views of the buffer
        capture.relay(sender, random.Random(seed).randbytes(size))
    path = tmp_path_factory.mktemp("golden") / "capture.pcapng"
    written, timestamps = captured_file(path, capture, "conn=7 listener=edge", snaplen, after)
    assert written == expected_blocks(capture, "conn=7 listener=edge", snaplen, None, timestamps)


@pytest.mark.parametrize("size", [65_441, 65_411], ids=["limit-at-an-end", "limit-within-a-packet"])
def test_what_is_held_before_the_decision_stops_where_it_always_did(tmp_path, size):
    """Past PENDING_LIMIT bytes held, packets are not captured: the packet that reaches or
    crosses the limit is the last one held, wherever it falls in an emit's packets."""
    capture = Capture(V4)
    # 6 handshake packets of 40 bytes, then per chunk a data packet and an ACK on each leg:
    # 240 + 8 * 2 * (80 + 65,441) is PENDING_LIMIT exactly.
    for seed in range(9):
        capture.relay(Peer.CLIENT, random.Random(seed).randbytes(size))
    held = total = 0
    while total < PENDING_LIMIT:
        total += len(capture.made[held][1])
        held += 1
    assert held == (6 + 8 * 4 if size == 65_441 else 6 + 8 * 4 + 1)
    written, timestamps = captured_file(tmp_path / "capture.pcapng", capture, "conn=7", None, [])
    assert written == expected_blocks(capture, "conn=7", None, held, timestamps)


@pytest.mark.parametrize("endpoints", [V4, V6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_the_snap_length_cuts_at_its_byte(tmp_path, endpoints, offset):
    """A payload that ends one byte before, at or one byte after the snap length, after others."""
    capture = Capture(endpoints)
    sizes = [1000, 2001, 3000]
    snaplen = 1000 + 2001 + offset
    written, timestamps = captured_file(
        tmp_path / "capture.pcapng", capture, "conn=7", snaplen, [(Peer.CLIENT, size, size) for size in sizes]
    )
    assert written == expected_blocks(capture, "conn=7", snaplen, None, timestamps)


def test_a_payload_sent_is_summed_for_what_it_is():
    """What a leg sends takes the sum kept from what the other received only if it is the same
    bytes: not another payload of the same length, nor one sent twice."""
    sums = PayloadSums()
    received = random.Random(1).randbytes(5000)
    other = random.Random(2).randbytes(5000)
    assert sums.received(received) == sums.sent(memoryview(bytearray(received)))
    sums.received(received)
    assert sums.sent(other) % 0xFFFF == reference_sum(other)
    sums.received(received)
    assert sums.sent(received) % 0xFFFF == reference_sum(received)
    assert sums.sent(other) % 0xFFFF == reference_sum(other), "what was kept is consumed"


def reference_sum(data: bytes) -> int:
    """The ones' complement sum of `data` (an odd tail padded), modulo 0xFFFF."""
    return (0xFFFF - reference_checksum(data)) % 0xFFFF
