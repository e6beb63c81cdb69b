"""PROXY protocol v1 and v2: the specification's examples, round trips, strict rejection."""

from __future__ import annotations

import pytest

from proxy.config.units import unix_peer
from proxy.protocol.proxyproto import (
    NEED_MORE,
    ProxyInfo,
    ProxyProtocolError,
    encode,
    encode_v1,
    encode_v2,
    parse,
)

SIGNATURE = bytes.fromhex("0d0a0d0a000d0a515549540a")


def test_v1_examples_from_the_specification():
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert parse(line + b"GET /") == (ProxyInfo(("192.168.0.1", 56324), ("192.168.0.11", 443)), len(line))
    line6 = b"PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    with pytest.raises(ProxyProtocolError):
        parse(line6)  # the specification's placeholder is not an address
    line6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 65535\r\n"
    assert parse(line6) == (ProxyInfo(("2001:db8::1", 65535), ("2001:db8::2", 65535)), len(line6))
    assert parse(b"PROXY UNKNOWN\r\n") == (ProxyInfo(None, None), 15)
    unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse(unknown) == (ProxyInfo(None, None), len(unknown))


def test_v1_encoding_byte_for_byte():
    assert (
        encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_v1(("::1", 1), ("::2", 2)) == b"PROXY TCP6 ::1 ::2 1 2\r\n"
    assert encode("v1", ("10.0.0.1", 5), ("::1", 6)) == b"PROXY TCP6 ::ffff:10.0.0.1 ::1 5 6\r\n"


V2_IPV4 = SIGNATURE + bytes.fromhex("21 11 000cc0a80001c0a8000bdc0401bb")
V2_IPV6 = SIGNATURE + bytes.fromhex(
    "21 21 002420010db800000000000000000000000120010db800000000000000000000000200010002"
)
V2_LOCAL = SIGNATURE + bytes.fromhex("20 00 0000")
V2_WITH_TLV = SIGNATURE + bytes.fromhex("21 11 00137f0000017f0000020050005104 0004 deadbeef")


def test_v2_encoding_byte_for_byte():
    assert encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443)) == V2_IPV4
    assert encode("v2", ("2001:db8::1", 1), ("2001:db8::2", 2)) == V2_IPV6


def test_v2_parsing_of_hand_built_headers():
    assert parse(V2_IPV4 + b"payload") == (ProxyInfo(("192.168.0.1", 56324), ("192.168.0.11", 443)), 28)
    assert parse(V2_IPV6) == (ProxyInfo(("2001:db8::1", 1), ("2001:db8::2", 2)), 52)
    assert parse(V2_LOCAL) == (ProxyInfo(None, None), 16)
    assert parse(V2_WITH_TLV + b"x") == (ProxyInfo(("127.0.0.1", 80), ("127.0.0.2", 81)), len(V2_WITH_TLV))


@pytest.mark.parametrize("header", [V2_IPV4, V2_IPV6, V2_LOCAL, V2_WITH_TLV, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
def test_every_strict_prefix_needs_more(header):
    for end in range(len(header)):
        assert parse(header[:end]) is NEED_MORE
    assert parse(header)[1] == len(header)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"G", "not a PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXZ", "not a PROXY protocol header"),
        (b"\r\n\r\n\x00\r\nQUIX", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "bad v1 port"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad v1 address"),
        (b"PROXY TCP4 ::1 ::2 1 2\r\n", "is not IPv4"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad v1 address 'fe80::1%eth0'"),
        (b"PROXY TCP6 ::1 fe80::2%1 1 2\r\n", "bad v1 address 'fe80::2%1'"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "bad v1 header"),
        (b"PROXY " + b"1" * 200, "longer than 107"),
        (SIGNATURE + bytes.fromhex("11 11 000c") + bytes(12), "unsupported v2 version"),
        (SIGNATURE + bytes.fromhex("23 11 000c") + bytes(12), "unsupported v2 command"),
        (SIGNATURE + bytes.fromhex("21 11 ffff"), "too large"),
        (SIGNATURE + bytes.fromhex("21 11 0004") + bytes(4), "too short for AF_INET"),
        (SIGNATURE + bytes.fromhex("21 21 000c") + bytes(12), "too short for AF_INET6"),
    ],
)
def test_rejections_say_why(data, message):
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data)


def test_v1_needs_its_crlf_within_107_bytes():
    assert parse(b"PROXY TCP4 " + b"1" * 90) is NEED_MORE
    with pytest.raises(ProxyProtocolError):
        parse(b"PROXY TCP4 " + b"1" * 96)


def test_a_unix_client_bound_to_a_path_is_sent_as_that_path_whatever_its_first_character():
    listener = unix_peer("/run/front.sock")
    header = encode("v2", unix_peer("@victim"), listener)  # a path relative to the client's folder
    assert header[16:124] == b"@victim".ljust(108, b"\0"), "not the abstract name victim"
    header = encode("v2", unix_peer(b"\0victim"), listener)
    assert header[16:124] == b"\0victim".ljust(108, b"\0")
    assert header[124:232] == b"/run/front.sock".ljust(108, b"\0")
