"""The protocol detectors: each protocol's real first bytes, every other protocol's bytes refused,
random bytes answered without an exception, a decision within the byte limit, and the same answer
however the bytes are split. The ClientHello's ALPN list and a plain request's Host."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.schema import MATCH_PROTOCOLS
from proxy.protocol.detect import (
    PEEK_LIMIT,
    PROTOCOLS,
    SILENT,
    FirstBytes,
    detect,
    http_host,
    starts_with,
)
from proxy.protocol.sni import MAX_CLIENT_HELLO, Hello, peek_server_name
from tests.support import FIRST_BYTES, client_hello

PROPERTIES = settings(max_examples=200, deadline=None)


def first_decision(protocol: str, data: bytes) -> tuple[bool | None, int]:
    """The verdict as the bytes arrive one at a time: the first decided one and its length."""
    for end in range(len(data) + 1):
        verdict = detect(protocol, data[:end])
        if verdict is not None:
            return verdict, end
    return None, len(data)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_protocol_is_recognised_by_its_detector_alone(protocol):
    data = FIRST_BYTES[protocol]
    assert {name for name in PROTOCOLS if detect(name, data)} == {protocol}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fed_a_byte_at_a_time_each_protocol_is_decided_by_its_own_bytes(protocol):
    data = FIRST_BYTES[protocol]
    verdict, at = first_decision(protocol, data)
    assert verdict is True and at <= len(data)
    assert all(detect(protocol, data[:end]) is None for end in range(at))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("other", PROTOCOLS)
def test_no_detector_says_yes_to_any_start_of_another_protocol(protocol, other):
    if protocol == other:
        return
    data = FIRST_BYTES[other]
    assert not any(detect(protocol, data[:end]) for end in range(len(data) + 1))


def test_ssh_waits_on_a_start_of_its_banner_and_refuses_a_wrong_byte():
    assert [detect("ssh", b"SSH-"[:n]) for n in range(5)] == [None, None, None, None, True]
    assert detect("ssh", b"SSX") is False


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"GET / HTTP/1.0\r\n", True),
        (b"OPTIONS * HTTP/1.1\r\n", True),
        (b"GET /a HTTP/2.0\r\n", False),  # not HTTP/1.x
        (b"GET  HTTP/1.1", False),  # no target
        (b"BREW /pot HTTP/1.1", False),  # not a method
        (b"get / HTTP/1.1", False),  # methods are case-sensitive
        (b"GET /\x00 HTTP/1.1", False),
        (b"POS", None),
        (b"GET /long/target/still/arriving", None),
        (b"GET / HTTP/", None),
        (b"GET /" + b"a" * 9000, False),  # a request line longer than 8 KiB
    ],
)
def test_an_http_request_line(data, verdict):
    assert detect("http", data) is verdict


@pytest.mark.parametrize(
    ("data", "found", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: API.Example.com:8080\r\n\r\n", True, "api.example.com"),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\nhost:web.test\r\n\r\n", True, "web.test"),
        (b"GET / HTTP/1.1\nHost: [::1]:80\n\n", True, "[::1]"),
        (b"GET / HTTP/1.1\r\nHost: example.com.\r\n\r\n", True, "example.com"),
        (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", False, None),  # no Host before the head's end
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n", None, None),  # the head goes on
        (b"SSH-2.0-x\r\n", False, None),
    ],
)
def test_the_host_of_a_plain_http_request(data, found, host):
    assert http_host(data) == (found, host)


def test_socks5_needs_every_method_its_greeting_announces():
    assert [detect("socks5", b"\x05\x02\x00\x02"[:n]) for n in range(5)] == [None, None, None, None, True]
    assert detect("socks5", b"\x05\x00") is False  # no method
    assert detect("socks5", b"\x05\x01\x42") is False  # not a method anyone assigned
    assert detect("socks5", b"\x04\x01\x00\x50") is False  # SOCKS4


def test_openvpn_is_a_hard_reset_of_the_announced_length():
    packet = FIRST_BYTES["openvpn"]
    assert detect("openvpn", packet[:-1]) is None
    assert detect("openvpn", packet) is True
    assert detect("openvpn", packet[:2] + b"\x20" + packet[3:]) is False  # P_DATA, not a reset
    assert detect("openvpn", b"\x00\x05\x38") is False  # too short for a reset


def test_xmpp_is_decided_when_the_stream_tag_closes():
    opening = b"<stream:stream xmlns='jabber:server' to='a.test'>"
    assert detect("xmpp", opening[:-1]) is None
    assert detect("xmpp", opening) is True
    assert detect("xmpp", b"<stream:stream xmlns='urn:other'>") is False
    assert detect("xmpp", b"<?xml version='1.0'?>\n<html>") is False


def test_a_prefix_in_bytes():
    assert [starts_with(b"\x00\x01", data) for data in (b"", b"\x00", b"\x00\x01\x02", b"\x01")] == [
        None,
        None,
        True,
        False,
    ]


def test_the_client_hello_gives_its_alpn_list_in_order_with_its_server_name():
    hello = peek_server_name(client_hello("mux.test", ("acme-tls/1", "h2")))
    assert hello == Hello("mux.test", None, ("acme-tls/1", "h2"))
    assert peek_server_name(client_hello(None, ("h2",))) == Hello(None, "no_sni", ("h2",))


def test_a_client_hello_split_into_one_byte_records_keeps_its_alpn():
    from tests.support import in_records

    record = client_hello("split.test", ("h2", "http/1.1"))
    assert peek_server_name(in_records(record[5:], 1)) == Hello("split.test", None, ("h2", "http/1.1"))


def test_first_bytes_once_final_leave_nothing_pending():
    waiting = FirstBytes(b"SS", final=False)
    assert (waiting.speaks("ssh"), waiting.speaks(SILENT), waiting.protocol()) == (None, False, None)
    over = FirstBytes(b"SS", final=True)
    assert (over.speaks("ssh"), over.starts_with(b"SSH"), over.host(), over.protocol()) == (
        False,
        False,
        (False, None),
        None,
    )
    silent = FirstBytes(b"", final=True)
    assert (silent.speaks(SILENT), silent.speaks("tls"), silent.protocol()) == (True, False, SILENT)
    assert FirstBytes(b"", final=False).speaks(SILENT) is None


def test_the_byte_limit_is_final():
    assert FirstBytes(b"\x16\x03\x01\xff\xff" + b"\x01" * (PEEK_LIMIT - 5), final=False).final


# -- properties ----------------------------------------------------------------------------

# Random bytes, and random bytes after a start of each protocol (to reach deep into each parser).
starts = st.sampled_from(sorted(FIRST_BYTES.values())).flatmap(
    lambda data: st.integers(0, len(data)).map(lambda end: data[:end])
)
inputs = st.one_of(st.binary(max_size=600), st.builds(bytes.__add__, starts, st.binary(max_size=200)))


@PROPERTIES
@given(inputs, st.sampled_from(PROTOCOLS))
def test_any_bytes_get_an_answer_and_no_exception(data, protocol):
    assert detect(protocol, data) in (True, False, None)
    assert http_host(data)[0] in (True, False, None)
    first = FirstBytes(data, final=True)
    assert first.speaks(protocol) in (True, False)
    assert first.protocol() in (*PROTOCOLS, SILENT, None)


@PROPERTIES
@given(inputs, st.sampled_from(PROTOCOLS))
def test_a_byte_at_a_time_gives_the_answer_all_at_once_gives(data, protocol):
    whole = detect(protocol, data)
    verdict, _ = first_decision(protocol, data)
    assert verdict == whole


@settings(max_examples=30, deadline=None)
@given(starts, st.binary(min_size=1, max_size=64), st.sampled_from(PROTOCOLS))
def test_every_detector_decides_within_the_byte_limit(start, filler, protocol):
    data = (start + filler * PEEK_LIMIT)[:PEEK_LIMIT]
    assert detect(protocol, data) is not None
    assert http_host(data)[0] is not None
    assert PEEK_LIMIT == 2 * MAX_CLIENT_HELLO


def test_the_names_a_route_may_match_are_the_detectors_and_silent():
    assert (*PROTOCOLS, SILENT) == MATCH_PROTOCOLS
