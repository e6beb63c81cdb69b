"""The pcapng writer and the synthesised TCP conversations: blocks and padding, IP and TCP headers
and checksums checked by a parser of the test's own, sequence numbers and segment limits, any mix
of sends, half-closes and a reset reassembling to what was sent, and tshark reading the file as a
Wireshark user would (follow each stream, no analysis warning, the comments)."""

from __future__ import annotations

import ipaddress
import random
import re
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.protocol.pcapng import (
    LINKTYPE_RAW,
    MAX_PAYLOAD_IPV4,
    MAX_PAYLOAD_IPV6,
    SNAPLEN,
    WINDOW,
    ConversationState,
    ConversationStateError,
    Direction,
    Packet,
    PcapngWriter,
    Peer,
    TcpConversation,
)
from tests.support import EPB, IDB, SHB, parse_blocks
from tests.support.wireshark import find_tshark, follow, run_tshark

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
V4 = (("192.0.2.10", 51000), ("198.51.100.7", 8443))
V6 = (("2001:db8::10", 51001), ("2001:db8:1::7", 8443))

# -- an independent reading of what the module writes ---------------------------------------


def ones_complement_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: add the 16-bit words, fold the carries, complement."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass
class Segment:
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    direction: Direction | None = None


def parse_ip(packet: bytes) -> Segment:
    """One IP packet carrying TCP, every length and checksum checked on the way."""
    version = packet[0] >> 4
    if version == 4:
        ihl, _, total, _, frag, ttl, proto, checksum = struct.unpack("!BBHHHBBH", packet[:12])
        assert ihl == 0x45 and total == len(packet) and frag == 0x4000 and ttl == 64 and proto == 6
        assert checksum == ones_complement_checksum(packet[:10] + b"\0\0" + packet[12:20])
        src, dst, segment = packet[12:16], packet[16:20], packet[20:]
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(segment))
    else:
        assert version == 6
        first, length, next_header, hops = struct.unpack("!IHBB", packet[:8])
        assert first == 6 << 28 and length == len(packet) - 40 and next_header == 6 and hops == 64
        src, dst, segment = packet[8:24], packet[24:40], packet[40:]
        pseudo = src + dst + struct.pack("!I3xB", len(segment), 6)
    sport, dport, seq, ack, offset, flags, window, checksum, urgent = struct.unpack("!HHIIBBHHH", segment[:20])
    assert offset == 5 << 4 and urgent == 0
    assert checksum == ones_complement_checksum(pseudo + segment[:16] + b"\0\0" + segment[18:])
    host = ipaddress.ip_address
    return Segment((str(host(src)), sport), (str(host(dst)), dport), seq, ack, flags, window, segment[20:])


def parse_options(data: bytes) -> list[tuple[int, bytes]]:
    options = []
    while True:
        code, length = struct.unpack("<HH", data[:4])
        if code == 0:
            assert length == 0 and len(data) == 4, "opt_endofopt ends the options"
            return options
        options.append((code, data[4 : 4 + length]))
        data = data[4 + length + (-length % 4) :]


def parse_epb(body: bytes) -> tuple[int, int, bytes, list[tuple[int, bytes]]]:
    """The interface, the timestamp, the packet and the options of an Enhanced Packet Block."""
    interface, high, low, captured, original = struct.unpack("<IIIII", body[:20])
    assert captured == original
    end = 20 + captured + (-captured % 4)
    assert body[20 + captured : end] == b"\0" * (end - 20 - captured)
    return interface, high << 32 | low, body[20 : 20 + captured], parse_options(body[end:])


def ip(packet: Packet) -> bytes:
    """The whole IP packet."""
    return packet.header + bytes(packet.payload)


def packet_block(writer: PcapngWriter, interface: int, timestamp: int, data: bytes, direction: Direction, **options):
    """One Enhanced Packet Block of `data`, whose length the writer says."""
    pieces: list = []
    size = writer.packet(pieces, interface, timestamp, Packet(b"", data, direction), **options)
    block = b"".join(pieces)
    assert len(block) == size
    return block


def segments(packets: list[Packet]) -> list[Segment]:
    parsed = []
    for packet in packets:
        segment = parse_ip(ip(packet))
        segment.direction = packet.direction
        parsed.append(segment)
    return parsed


# -- blocks -------------------------------------------------------------------------------


def test_the_section_header_block():
    [(block_type, body)] = parse_blocks(PcapngWriter().header())
    assert block_type == SHB
    magic, major, minor, section_length = struct.unpack("<IHHq", body[:16])
    assert (magic, major, minor, section_length) == (0x1A2B3C4D, 1, 0, -1)
    assert parse_options(body[16:]) == [(4, b"pairproxy")]  # shb_userappl


@pytest.mark.parametrize("name", ["a", "ab", "abc", "abcd", "web-tls", "écoute"])
def test_an_interface_per_listener_named_after_it(name):
    writer = PcapngWriter()
    writer.header()
    index, block = writer.interface(name)
    [(block_type, body)] = parse_blocks(block)
    assert (index, block_type) == (0, IDB)
    assert struct.unpack("<HHI", body[:8]) == (LINKTYPE_RAW, 0, SNAPLEN)
    assert parse_options(body[8:]) == [(2, name.encode())]  # if_name
    assert writer.interface("other")[0] == 1


def test_a_new_section_numbers_its_interfaces_from_zero():
    writer = PcapngWriter()
    writer.header()
    writer.interface("a")
    writer.interface("b")
    writer.header()
    assert writer.interface("c")[0] == 0
    with pytest.raises(ValueError, match="interface 1 was not declared"):
        packet_block(writer, 1, 0, b"x", Direction.INBOUND)


def test_no_interface_or_packet_before_the_section_header():
    with pytest.raises(ValueError, match="header"):
        PcapngWriter().interface("a")
    with pytest.raises(ValueError, match="interface 0"):
        packet_block(PcapngWriter(), 0, 0, b"x", Direction.INBOUND)


@pytest.mark.parametrize("size", range(9))
@pytest.mark.parametrize("comment", [None, "c", "conn=12 listener=web route=api"])
def test_a_packet_block_is_padded_to_32_bits_with_its_length_at_both_ends(size, comment):
    writer = PcapngWriter()
    writer.header()
    writer.interface("a")
    writer.interface("b")
    data = bytes(range(0x41, 0x41 + size))
    block = packet_block(writer, 1, (7 << 32) + 12345, data, Direction.OUTBOUND, comment=comment)
    assert len(block) % 4 == 0
    [(block_type, body)] = parse_blocks(block)
    assert block_type == EPB
    interface, timestamp, packet, options = parse_epb(body)
    assert (interface, timestamp, packet) == (1, (7 << 32) + 12345, data)
    expected = [(2, struct.pack("<I", 2))]  # epb_flags: outbound
    if comment is not None:
        expected.append((1, comment.encode()))  # opt_comment
    assert options == expected


def test_inbound_is_epb_flags_direction_one():
    writer = PcapngWriter()
    writer.header()
    writer.interface("a")
    [(_, body)] = parse_blocks(packet_block(writer, 0, 0, b"", Direction.INBOUND))
    assert parse_epb(body)[3] == [(2, struct.pack("<I", 1))]


@pytest.mark.parametrize("timestamp", [-1, 1 << 64])
def test_a_timestamp_must_fit_64_bits(timestamp):
    writer = PcapngWriter()
    writer.header()
    writer.interface("a")
    with pytest.raises(ValueError, match="timestamp"):
        packet_block(writer, 0, timestamp, b"", Direction.INBOUND)


# -- the conversation -----------------------------------------------------------------------


@pytest.mark.parametrize("endpoints", [V4, V6], ids=["ipv4", "ipv6"])
def test_the_handshake_data_fin_and_their_numbers(endpoints):
    client, server = endpoints
    conversation = TcpConversation(client, server, local=Peer.SERVER, client_isn=1000, server_isn=5000)
    handshake = segments(conversation.open())
    assert [(s.src, s.dst, s.flags, s.seq, s.ack) for s in handshake] == [
        (client, server, SYN, 1000, 0),
        (server, client, SYN | ACK, 5000, 1001),
        (client, server, ACK, 1001, 5001),
    ]
    request = segments(conversation.send(Peer.CLIENT, b"GET / HTTP/1.0\r\n\r\n"))
    assert [(s.src, s.flags, s.seq, s.ack, s.payload) for s in request] == [
        (client, PSH | ACK, 1001, 5001, b"GET / HTTP/1.0\r\n\r\n"),
        (server, ACK, 5001, 1019, b""),
    ]
    closing = segments(conversation.shutdown(Peer.CLIENT))
    assert [(s.src, s.flags, s.seq, s.ack) for s in closing] == [
        (client, FIN | ACK, 1019, 5001),
        (server, ACK, 5001, 1020),
    ]
    response = segments(conversation.send(Peer.SERVER, b"HTTP/1.0 200 OK\r\n\r\nhi"))
    assert [(s.src, s.flags, s.seq, s.ack, len(s.payload)) for s in response] == [
        (server, PSH | ACK, 5001, 1020, 21),
        (client, ACK, 1020, 5022, 0),
    ]
    assert conversation.state is ConversationState.OPEN
    last = segments(conversation.shutdown(Peer.SERVER))
    assert [(s.src, s.flags, s.seq, s.ack) for s in last] == [
        (server, FIN | ACK, 5022, 1020),
        (client, ACK, 1020, 5023),
    ]
    assert conversation.state is ConversationState.CLOSED
    assert all(s.window == WINDOW for s in handshake + request + closing + response + last)


def test_a_reset_is_one_rst_at_the_next_sequence_number_acknowledging_all():
    conversation = TcpConversation(*V4, local=Peer.CLIENT, client_isn=10, server_isn=20)
    conversation.open()
    conversation.send(Peer.SERVER, b"hello")
    conversation.shutdown(Peer.SERVER)
    [rst] = segments(conversation.reset(Peer.SERVER))
    assert (rst.src, rst.flags, rst.seq, rst.ack, rst.payload) == (V4[1], RST | ACK, 27, 11, b"")
    assert conversation.state is ConversationState.RESET


def test_sequence_numbers_wrap_at_32_bits():
    conversation = TcpConversation(*V6, local=Peer.SERVER, client_isn=0xFFFFFFF0, server_isn=0xFFFFFFFF)
    conversation.open()
    data, ack = segments(conversation.send(Peer.CLIENT, bytes(40)))
    assert (data.seq, ack.ack) == (0xFFFFFFF1, 0x19)
    assert data.ack == 0  # the server's SYN took its sequence number 0xFFFFFFFF
    fin, _ = segments(conversation.shutdown(Peer.CLIENT))
    assert fin.seq == 0x19


@pytest.mark.parametrize(("endpoints", "limit"), [(V4, MAX_PAYLOAD_IPV4), (V6, MAX_PAYLOAD_IPV6)], ids=["ipv4", "ipv6"])
def test_segments_are_cut_where_the_ip_length_field_is_full(endpoints, limit):
    assert limit == (65495 if endpoints is V4 else 65515)
    conversation = TcpConversation(*endpoints, local=Peer.SERVER)
    conversation.open()
    data = random.Random(3).randbytes(2 * limit + 1)
    exact = conversation.send(Peer.SERVER, data[:limit])
    assert [len(s.payload) for s in segments(exact)] == [limit, 0]
    longest = ip(exact[0])
    length_field = struct.unpack("!H", longest[2:4] if endpoints is V4 else longest[4:6])[0]
    assert length_field == 0xFFFF
    more = segments(conversation.send(Peer.SERVER, data))
    assert [len(s.payload) for s in more] == [limit, 0, limit, 0, 1, 0]
    assert b"".join(s.payload for s in more) == data
    assert [s.seq for s in more[::2]] == [1 + limit, 1 + 2 * limit, 1 + 3 * limit]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1459, 1460, 65494, 65495])
@pytest.mark.parametrize("endpoints", [V4, V6], ids=["ipv4", "ipv6"])
def test_checksums_hold_for_payloads_of_odd_and_even_length(endpoints, size):
    conversation = TcpConversation(*endpoints, local=Peer.CLIENT, client_isn=123456789, server_isn=987654321)
    packets = conversation.open() + conversation.send(Peer.CLIENT, random.Random(size).randbytes(size))
    assert len(segments(packets)) == (3 if size == 0 else 5)  # parse_ip checks every checksum


def test_a_segment_whose_words_already_sum_to_all_ones_carries_checksum_zero():
    """The one case where the RFC 1071 sum must fold to 0xFFFF, not 0, before its complement."""

    def first_data_segment(payload: bytes) -> bytes:
        conversation = TcpConversation(*V4, local=Peer.SERVER, client_isn=77, server_isn=99)
        conversation.open()
        return ip(conversation.send(Peer.CLIENT, payload)[0])

    probe = first_data_segment(b"abcd\0\0")
    rest = ~struct.unpack("!H", probe[36:38])[0] & 0xFFFF  # the sum of all words but the last
    packet = first_data_segment(b"abcd" + struct.pack("!H", 0xFFFF - rest))
    assert struct.unpack("!H", packet[36:38])[0] == 0
    parse_ip(packet)


@pytest.mark.parametrize(
    ("local", "client_direction"), [(Peer.SERVER, Direction.INBOUND), (Peer.CLIENT, Direction.OUTBOUND)]
)
def test_what_the_proxy_sends_is_outbound(local, client_direction):
    conversation = TcpConversation(*V4, local=local)
    packets = segments(conversation.open() + conversation.send(Peer.SERVER, b"x") + conversation.reset(Peer.CLIENT))
    server_direction = Direction.INBOUND if client_direction is Direction.OUTBOUND else Direction.OUTBOUND
    assert [s.direction for s in packets] == [
        client_direction,
        server_direction,
        client_direction,
        server_direction,
        client_direction,
        client_direction,
    ]


def test_ipv4_identification_counts_per_sender():
    conversation = TcpConversation(*V4, local=Peer.SERVER)
    packets = conversation.open() + conversation.send(Peer.CLIENT, b"a") + conversation.send(Peer.SERVER, b"b")
    idents = [(parse_ip(ip(p)).src, struct.unpack("!H", p.header[4:6])[0]) for p in packets]
    assert idents == [(V4[0], 0), (V4[1], 0), (V4[0], 1), (V4[0], 2), (V4[1], 1), (V4[1], 2), (V4[0], 3)]


def test_an_ipv6_address_with_a_scope_and_a_four_part_socket_address():
    conversation = TcpConversation(("fe80::1%eth0", 5000, 0, 2), ("fe80::2", 80), local=Peer.SERVER)
    syn = segments(conversation.open())[0]
    assert (syn.src, syn.dst) == (("fe80::1", 5000), ("fe80::2", 80))


@pytest.mark.parametrize(
    ("client", "server", "isn", "message"),
    [
        (("192.0.2.1", 1), ("2001:db8::1", 2), 0, "same IP version"),
        (("192.0.2.1", 65536), ("192.0.2.2", 2), 0, "client port 65536"),
        (("192.0.2.1", 1), ("192.0.2.2", -1), 0, "server port -1"),
        (("192.0.2.1", 1), ("192.0.2.2", 2), 1 << 32, "32-bit"),
    ],
)
def test_endpoints_and_initial_numbers_are_checked(client, server, isn, message):
    with pytest.raises(ValueError, match=message):
        TcpConversation(client, server, local=Peer.SERVER, client_isn=isn)


def test_calls_the_state_does_not_allow_are_refused_and_change_nothing():
    conversation = TcpConversation(*V4, local=Peer.SERVER)
    with pytest.raises(ConversationStateError, match="new"):
        conversation.send(Peer.CLIENT, b"early")
    with pytest.raises(ConversationStateError, match="new to reset"):
        conversation.reset(Peer.CLIENT)
    conversation.open()
    with pytest.raises(ConversationStateError, match="open to open"):
        conversation.open()
    conversation.shutdown(Peer.CLIENT)
    with pytest.raises(ConversationStateError, match="client already sent its FIN"):
        conversation.send(Peer.CLIENT, b"late")
    with pytest.raises(ConversationStateError, match="client already sent its FIN"):
        conversation.shutdown(Peer.CLIENT)
    [data, _] = segments(conversation.send(Peer.SERVER, b"still"))
    assert data.seq == 1 and data.ack == 2  # nothing above moved a sequence number
    conversation.shutdown(Peer.SERVER)
    for call in (lambda: conversation.send(Peer.SERVER, b"x"), lambda: conversation.reset(Peer.SERVER)):
        with pytest.raises(ConversationStateError, match="closed"):
            call()
    reset = TcpConversation(*V4, local=Peer.SERVER)
    reset.open()
    reset.reset(Peer.CLIENT)
    with pytest.raises(ConversationStateError, match="reset"):
        reset.send(Peer.SERVER, b"x")


# -- any conversation reassembles to what was sent ------------------------------------------


def reassemble(packets: list[Packet]) -> dict[tuple[str, int], bytes]:
    """Each sender's bytes, read the way a receiver would: strictly in order, never past the window."""
    parsed = segments(packets)
    client, server = parsed[0].src, parsed[0].dst
    next_seq: dict[tuple[str, int], int] = {}
    acked: dict[tuple[str, int], int] = {}  # what the other end last acknowledged of this sender
    received = {client: b"", server: b""}
    for segment in parsed:
        sender, receiver = segment.src, segment.dst
        if segment.flags & SYN:
            next_seq[sender] = segment.seq
        assert segment.seq == next_seq[sender], "a gap or an overlap"
        if segment.flags & ACK:
            assert segment.ack == next_seq[receiver], "an ACK that does not keep up"
            acked[receiver] = segment.ack
        if segment.payload:
            assert segment.flags == PSH | ACK
            in_flight = (segment.seq + len(segment.payload) - acked[sender]) % (1 << 32)
            assert in_flight < WINDOW, "the window would read as full"
            received[sender] += segment.payload
        length = len(segment.payload) + (1 if segment.flags & (SYN | FIN) else 0)
        next_seq[sender] = (segment.seq + length) % (1 << 32)
    return received


def big_chunk(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


chunks = st.one_of(
    st.binary(max_size=200),
    st.builds(big_chunk, st.integers(MAX_PAYLOAD_IPV4 - 2, MAX_PAYLOAD_IPV6 * 2 + 2), st.integers()),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(Peer), chunks),
        st.tuples(st.just("shutdown"), st.sampled_from(Peer), st.just(b"")),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    endpoints=st.sampled_from([V4, V6]),
    local=st.sampled_from(Peer),
    isns=st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1)),
    steps=steps,
    reset_by=st.one_of(st.none(), st.sampled_from(Peer)),
)
def test_any_conversation_reassembles_to_what_each_end_sent(endpoints, local, isns, steps, reset_by):
    conversation = TcpConversation(*endpoints, local=local, client_isn=isns[0], server_isn=isns[1])
    packets = conversation.open()
    sent = {Peer.CLIENT: b"", Peer.SERVER: b""}
    finished: set[Peer] = set()
    for action, peer, data in steps:
        if peer in finished:
            continue
        if action == "send":
            packets += conversation.send(peer, data)
            sent[peer] += data
        else:
            packets += conversation.shutdown(peer)
            finished.add(peer)
    if reset_by is not None and len(finished) < 2:
        packets += conversation.reset(reset_by)
    received = reassemble(packets)
    assert received == {endpoints[0]: sent[Peer.CLIENT], endpoints[1]: sent[Peer.SERVER]}
    fins = [s.src for s in segments(packets) if s.flags & FIN]
    assert sorted(fins) == sorted(endpoints[peer is Peer.SERVER] for peer in finished)
    assert sum(1 for p in packets if parse_ip(ip(p)).flags & RST) == (reset_by is not None and len(finished) < 2)


# -- with tshark, as a Wireshark user would ---------------------------------------------------

EPOCH_US = 1_764_100_000_000_000


@pytest.fixture(scope="module")
def tshark():
    return find_tshark()


@dataclass
class Leg:
    listener: str
    local: Peer
    comment: str
    calls: list  # each returns a list of packets
    sent: dict[Peer, bytes]


def odd_chunks(rng: random.Random, total: int) -> list[bytes]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.choice([1, 3, 517, 1459, 4097, 16383, 65497, 70001]), total - sum(sizes)))
    return [rng.randbytes(size) for size in sizes]


def leg(listener, client, server, local, conn, script) -> Leg:
    """A leg whose calls follow `script`: ("send", peer, data), ("shutdown", peer) or ("reset", peer)."""
    conversation = TcpConversation(client, server, local=local, client_isn=conn * 0x3C000000, server_isn=0xFFFF0000)
    sent = {Peer.CLIENT: b"", Peer.SERVER: b""}
    calls = [conversation.open]
    for action, peer, *data in script:
        if action == "send":
            calls.append(lambda peer=peer, data=data[0]: conversation.send(peer, data))
            sent[peer] += data[0]
        else:
            calls.append(lambda action=action, peer=peer: getattr(conversation, action)(peer))
    return Leg(listener, local, f"conn={conn} listener={listener} route=r{conn}", calls, sent)


def capture(legs: list[Leg]) -> bytes:
    """Each leg's calls interleaved with the others', as the proxy would make them."""
    writer = PcapngWriter()
    out = [writer.header()]
    interfaces: dict[str, int] = {}
    for item in legs:
        if item.listener not in interfaces:
            interfaces[item.listener], block = writer.interface(item.listener)
            out.append(block)
    clock = EPOCH_US
    for step in range(max(len(item.calls) for item in legs)):
        for item in legs:
            if step < len(item.calls):
                for index, packet in enumerate(item.calls[step]()):
                    clock += 7
                    comment = item.comment if step == 0 and index == 0 else None
                    writer.packet(out, interfaces[item.listener], clock, packet, comment)
    return b"".join(out)


@pytest.fixture(scope="module")
def wireshark_file(tmp_path_factory):
    rng = random.Random(20261126)
    client_to_upstream = odd_chunks(rng, 200 * 1024)
    upstream_to_client = odd_chunks(rng, 200 * 1024)
    # the two directions interleaved at random, each in its own order
    order = [Peer.CLIENT] * len(client_to_upstream) + [Peer.SERVER] * len(upstream_to_client)
    rng.shuffle(order)
    queues = {Peer.CLIENT: iter(client_to_upstream), Peer.SERVER: iter(upstream_to_client)}
    bulk = [("send", peer, next(queues[peer])) for peer in order]
    legs = [
        # a client's leg over IPv4, then the same connection's leg to the upstream over IPv6
        leg(
            "web",
            ("192.0.2.10", 51000),
            ("192.0.2.1", 8080),
            Peer.SERVER,
            1,
            [*bulk, ("shutdown", Peer.CLIENT), ("shutdown", Peer.SERVER)],
        ),
        leg(
            "web",
            ("2001:db8::1", 40000),
            ("2001:db8:1::7", 80),
            Peer.CLIENT,
            1,
            [*bulk, ("shutdown", Peer.CLIENT), ("shutdown", Peer.SERVER)],
        ),
        # a small exchange on another listener, the server closing first
        leg(
            "api",
            ("198.51.100.9", 61000),
            ("192.0.2.1", 9000),
            Peer.SERVER,
            2,
            [
                ("send", Peer.CLIENT, b"ping\n"),
                ("send", Peer.SERVER, b"pong\n"),
                ("shutdown", Peer.SERVER),
                ("send", Peer.CLIENT, b"bye\n"),
                ("shutdown", Peer.CLIENT),
            ],
        ),
        # one that ends in a reset after a half-close
        leg(
            "api",
            ("2001:db8::9", 61001),
            ("2001:db8::1", 9000),
            Peer.SERVER,
            3,
            [
                ("send", Peer.CLIENT, b"x" * 3001),
                ("shutdown", Peer.CLIENT),
                ("send", Peer.SERVER, b"partial"),
                ("reset", Peer.SERVER),
            ],
        ),
    ]
    path = tmp_path_factory.mktemp("pcapng") / "capture.pcapng"
    path.write_bytes(capture(legs))
    return str(path), legs


def test_tshark_follows_each_stream_back_byte_for_byte(tshark, wireshark_file):
    path, legs = wireshark_file
    assert len(legs[0].sent[Peer.CLIENT]) == len(legs[0].sent[Peer.SERVER]) == 200 * 1024
    for stream, item in enumerate(legs):
        assert follow(tshark, path, stream) == (item.sent[Peer.CLIENT], item.sent[Peer.SERVER]), f"stream {stream}"


def test_tshark_finds_no_lost_segment_full_window_or_bad_checksum(tshark, wireshark_file):
    path, _ = wireshark_file
    checks = ["-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"]
    flagged = "tcp.analysis.flags or tcp.checksum.status == 0 or ip.checksum.status == 0"
    assert run_tshark(tshark, "-r", path, *checks, "-Y", flagged) == ""
    # The filter can only find what tshark looked at: every checksum was checked, and found good.
    statuses = run_tshark(
        tshark, "-r", path, *checks, "-T", "fields", "-e", "tcp.checksum.status", "-e", "ip.checksum.status"
    )
    assert {line.split("\t")[0] for line in statuses.splitlines()} == {"1"}
    assert {line.split("\t")[1] for line in statuses.splitlines()} == {"1", ""}  # "" for IPv6: no header checksum
    # Nor any warning of TCP's or IP's own but the one reset (the random payloads may upset HTTP).
    expert = run_tshark(tshark, "-r", path, "-q", "-z", "expert,warn")
    rows = re.findall(r"^\s+(\d+)\s+\S+\s+(TCP|IPv4|IPv6)\s+(.*)$", expert, re.MULTILINE)
    assert rows == [("1", "TCP", "Connection reset (RST)")], expert


def test_tshark_shows_the_comment_the_listener_and_the_direction(tshark, wireshark_file):
    path, legs = wireshark_file
    fields = ["-e", "tcp.stream", "-e", "tcp.flags.syn", "-e", "tcp.flags.ack", "-e", "frame.comment"]
    fields += ["-e", "frame.interface_name", "-e", "frame.p2p_dir", "-e", "ip.src", "-e", "ipv6.src"]
    rows = [line.split("\t") for line in run_tshark(tshark, "-r", path, "-T", "fields", *fields).splitlines()]
    commented = [(int(row[0]), row[3]) for row in rows if row[3]]
    assert commented == [(stream, item.comment) for stream, item in enumerate(legs)]
    assert all(row[1] == "1" and row[2] == "0" for row in rows if row[3]), "the comment is on each SYN"
    for stream, item in enumerate(legs):
        mine = [row for row in rows if int(row[0]) == stream]
        assert {row[4] for row in mine} == {item.listener}
        client = mine[0][6] or mine[0][7]  # the SYN's source
        for row in mine:
            proxy_sent = ((row[6] or row[7]) == client) == (item.local is Peer.CLIENT)
            assert row[5] == ("0" if proxy_sent else "1"), f"stream {stream}"  # p2p_dir: 0 sent, 1 received
