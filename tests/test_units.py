"""Addresses, durations and sizes as users type them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.units import Address, parse_address, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:80", Address("example.org", 80)),
        ("10.1.2.3:443", Address("10.1.2.3", 443)),
        ("[::1]:8080", Address("::1", 8080)),
        ("[::]:0", Address("::", 0)),
        ("0.0.0.0:8080", Address("0.0.0.0", 8080)),
        ("8080", Address("127.0.0.1", 8080)),
        (":8080", Address("127.0.0.1", 8080)),
        (8080, Address("127.0.0.1", 8080)),
        ("0", Address("127.0.0.1", 0)),
        ("my-host_1.internal:5432", Address("my-host_1.internal", 5432)),
    ],
)
def test_address_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("host:99999", "out of range"),
        ("host:http", "not a number"),
        ("::1:80", "[IPv6]:PORT"),
        ("[::1]80", "[IPv6]:PORT"),
        ("[1.2.3.4]:80", "not an IPv6 address"),
        ("999.1.1.1:80", "not a valid IPv4"),
        ("bad host:80", "not a host name"),
        ("-bad:80", "not a host name"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_address(text)


def test_port_zero_only_for_listeners():
    assert parse_address("127.0.0.1:0").port == 0
    with pytest.raises(ValueError, match="port 0"):
        parse_address("127.0.0.1:0", allow_port_zero=False)


@pytest.mark.parametrize("value", [True, None, 1.5, ["a"]])
def test_addresses_must_be_text_or_a_port(value):
    with pytest.raises(ValueError):
        parse_address(value)


def test_literal_and_family():
    assert Address("::1", 1).is_ipv6 and Address("::1", 1).is_literal
    assert Address("10.0.0.1", 1).is_literal and not Address("10.0.0.1", 1).is_ipv6
    assert not Address("localhost", 1).is_literal


@given(st.ip_addresses(), st.integers(0, 65535))
def test_address_round_trip(ip, port):
    address = Address(str(ip), port)
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(5, 5.0), (0.25, 0.25), ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), (" 3 s ", 3)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 parsecs", "-1", "1d", "", True, None, float("inf"), -2])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [(65536, 65536), ("64KiB", 65536), ("1MiB", 1048576), ("10KB", 10000), ("1MB", 1000000), ("2GiB", 2 << 30)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12 bananas", "-1", "KiB", True, None, 1.5])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)
