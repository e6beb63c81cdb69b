"""Addresses, durations and sizes, spelled the ways the contract lets users spell them."""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.config.units import (
    Address,
    UnixAddress,
    canonical_ip,
    canonical_network,
    escape_name,
    format_sockaddr,
    parse_address,
    parse_duration,
    parse_positive_duration,
    parse_size,
    unix_peer,
)

# -- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3:443", Address("10.1.2.3", 443)),
        ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
        ("[::1]:8080", Address("::1", 8080)),
        ("[2001:db8::17]:53", Address("2001:db8::17", 53)),
        ("[::ffff:10.0.0.1]:1", Address("::ffff:10.0.0.1", 1)),
        ("0.0.0.0:8080", Address("0.0.0.0", 8080)),
        ("[::]:8080", Address("::", 8080)),
        ("8080", Address("127.0.0.1", 8080)),
        (":8080", Address("127.0.0.1", 8080)),
        (8080, Address("127.0.0.1", 8080)),
        (" 8080 ", Address("127.0.0.1", 8080)),
        ("65535", Address("127.0.0.1", 65535)),
        ("example.org:80", Address("example.org", 80)),
        ("localhost:6379", Address("localhost", 6379)),
        ("my-host_1.internal:5432", Address("my-host_1.internal", 5432)),
        ("example.org.:53", Address("example.org.", 53)),
        ("xn--bcher-kva.example:443", Address("xn--bcher-kva.example", 443)),
        ("a" * 63 + ".example:1", Address("a" * 63 + ".example", 1)),
    ],
)
def test_address_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["0", ":0", 0, "0.0.0.0:0", "[::]:0", "127.0.0.1:0", "localhost:0"])
def test_port_zero_is_allowed_for_listeners(text):
    assert parse_address(text).port == 0


@pytest.mark.parametrize("text", ["0", ":0", 0, "0.0.0.0:0", "[::]:0", "example.org:0"])
def test_port_zero_is_refused_where_a_real_port_is_needed(text):
    with pytest.raises(ValueError) as info:
        parse_address(text, allow_port_zero=False)
    message = str(info.value)
    assert "port 0" in message
    assert str(text).strip() in message


def test_a_nonzero_port_is_fine_where_a_real_port_is_needed():
    assert parse_address("example.org:80", allow_port_zero=False) == Address("example.org", 80)
    assert parse_address("9000", allow_port_zero=False) == Address("127.0.0.1", 9000)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("host:65536", "out of range"),
        ("host:99999", "out of range"),
        (65536, "out of range"),
        ("[::1]:70000", "out of range"),
        ("host:http", "not a number"),
        ("host:", "not a number"),
        (":", "not a number"),
        ("host:+80", "not a number"),
        ("host:-1", "not a number"),
        (-1, "not a number"),
        ("host:8 0", "not a number"),
        ("localhost", "not a number"),
        ("::1", "[IPv6]:PORT"),
        ("::1:80", "[IPv6]:PORT"),
        ("2001:db8::1:443", "[IPv6]:PORT"),
        ("[::1]80", "[IPv6]:PORT"),
        ("[::1", "[IPv6]:PORT"),
        ("[::1]", "[IPv6]:PORT"),
        ("[1.2.3.4]:80", "not an IPv6 address"),
        ("[example.org]:80", "not an IPv6 address"),
        ("[]:80", "not an IPv6 address"),
        ("999.1.1.1:80", "not a valid IPv4"),
        ("256.0.0.1:80", "not a valid IPv4"),
        ("1.2.3:80", "not a valid IPv4"),
        ("1.2.3.4.5:80", "not a valid IPv4"),
        ("bad host:80", "not a host name"),
        ("-bad:80", "not a host name"),
        ("bad-:80", "not a host name"),
        ("a..b:80", "not a host name"),
        ("a" * 64 + ".example:80", "not a host name"),
        (".".join(["abcdefghi"] * 26) + ":80", "not a host name"),  # 259 characters
        ("caf\u00e9.example:80", "not a host name"),
        ("host/path:80", "not a host name"),
    ],
)
def test_bad_addresses_name_the_value_and_what_is_wrong(text, reason):
    with pytest.raises(ValueError) as info:
        parse_address(text)
    message = str(info.value)
    assert reason in message
    assert repr(str(text).strip()) in message, "the message quotes what the user typed"


@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_address_is_refused(text):
    with pytest.raises(ValueError, match="empty"):
        parse_address(text)


@pytest.mark.parametrize("value", [True, False, None, 1.5, b"80", ["127.0.0.1:80"]])
def test_addresses_must_be_text_or_a_port_number(value):
    with pytest.raises(ValueError) as info:
        parse_address(value)
    assert repr(value) in str(info.value)


def test_a_port_of_odd_unicode_digits_gets_the_usual_message():
    with pytest.raises(ValueError, match=r"bad address '1\.2\.3\.4:\u00b2'"):
        parse_address("1.2.3.4:\u00b2")


@given(st.integers(min_value=65536, max_value=10**12))
def test_ports_past_65535_are_always_refused(port):
    with pytest.raises(ValueError, match="out of range"):
        parse_address(f"example.org:{port}")


@given(st.integers(0, 65535))
def test_a_bare_port_means_loopback(port):
    assert parse_address(port) == parse_address(str(port)) == parse_address(f":{port}") == Address("127.0.0.1", port)


def test_str_writes_ipv6_in_brackets():
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("10.0.0.1", 80)) == "10.0.0.1:80"
    assert str(Address("example.org", 443)) == "example.org:443"


@given(st.ip_addresses(), st.integers(0, 65535))
def test_any_ip_address_and_port_formats_and_parses_back(ip, port):
    address = Address(str(ip), port)
    text = str(address)
    assert parse_address(text) == address
    assert address.is_literal
    assert text.startswith("[") == (ip.version == 6)


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,20}[a-z0-9])?", fullmatch=True)


@given(st.lists(_LABEL, min_size=1, max_size=5), st.integers(1, 65535))
def test_host_names_format_and_parse_back(labels, port):
    assume(not all(label.isdigit() for label in labels))
    address = Address(".".join(labels), port)
    assert parse_address(str(address)) == address
    assert not address.is_literal


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("10.0.0.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("::", True),
        ("2001:db8::1", True),
        ("fe80::1%eth0", True),
        ("localhost", False),
        ("example.org", False),
        ("db-1.internal", False),
    ],
)
def test_is_literal(host, literal):
    address = Address(host, 80)
    assert address.is_literal is literal
    assert address.is_literal is literal  # cached: asking again gives the same answer
    # Caching the answer must not change what the address equals or where it hashes.
    assert address == Address(host, 80)
    assert address in {Address(host, 80)}


def test_parsed_addresses_know_whether_they_need_resolving():
    assert parse_address("[::1]:1").is_literal
    assert parse_address("8080").is_literal
    assert not parse_address("example.org:80").is_literal


# -- names someone else chose --------------------------------------------------------------


@given(st.binary(max_size=120))
def test_an_escaped_name_is_printable_ascii_without_a_space(name):
    text = escape_name(name)
    assert text.isascii() and text.isprintable() and " " not in text
    assert not any(quote in text for quote in "\"'")


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_distinct_names_give_distinct_texts(one, other):
    assume(one != other)
    assert escape_name(one) != escape_name(other)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (b"plain-name_1.sock", "plain-name_1.sock"),
        (b"\0e\xff", "\\x00e\\xff"),
        (b"a\nb c", "a\\x0ab\\x20c"),
        (b"q\"'\\", "q\\x22\\x27\\x5c"),
        ("caf\u00e9".encode(), "caf\\xc3\\xa9"),
    ],
)
def test_a_name_keeps_its_printable_bytes_and_escapes_the_rest(name, text):
    assert escape_name(name) == text


def test_unix_addresses_are_written_with_their_names_escaped_wherever_they_come_from():
    assert format_sockaddr(unix_peer(b"\0\0e\xff\n")) == "unix:@\\x00e\\xff\\x0a"  # as accept gives it
    assert format_sockaddr(unix_peer("/run/a b.sock")) == "unix:/run/a\\x20b.sock"
    assert str(UnixAddress("/run/a b.sock")) == "unix:/run/a\\x20b.sock", "as the listener's socket names itself"
    assert str(UnixAddress(os.fsdecode(b"e\xff"), abstract=True)) == "unix:@e\\xff"
    assert format_sockaddr(("10.0.0.1", 80)) == "10.0.0.1:80"


def accepted_from(abstract: bool, name: bytes) -> str | bytes:
    """A UNIX client's address as accept gives it: an abstract name after a NUL, a path as text."""
    return b"\0" + name if abstract else os.fsdecode(name)


# (abstract, name): a path holds no NUL (the kernel ends it at the first), an abstract name may.
unix_names = st.tuples(st.booleans(), st.binary(min_size=1, max_size=40)).filter(
    lambda kind_name: kind_name[0] or b"\0" not in kind_name[1]
)


@given(unix_names, unix_names)
def test_distinct_unix_names_of_either_kind_give_distinct_texts(one, other):
    assume(one != other)
    assert format_sockaddr(unix_peer(accepted_from(*one))) != format_sockaddr(unix_peer(accepted_from(*other)))


@given(st.binary(min_size=1, max_size=40).filter(lambda name: b"\0" not in name))
def test_names_that_differ_by_an_at_sign_or_its_escape_give_distinct_texts(name):
    # Random pairs seldom fall this close: the abstract `name`, and paths that spell its `@`.
    kinds = [(True, name), (False, name), (False, b"@" + name), (False, b"\\x40" + name), (True, b"@" + name)]
    assert len({format_sockaddr(unix_peer(accepted_from(*kind))) for kind in kinds}) == len(kinds)


@given(st.binary(min_size=1, max_size=40))
def test_an_abstract_listener_and_its_clients_are_written_alike(name):
    assert str(UnixAddress(os.fsdecode(name), abstract=True)) == format_sockaddr(unix_peer(b"\0" + name))


def test_a_path_that_starts_with_an_at_sign_is_not_shown_as_an_abstract_name():
    assert format_sockaddr(unix_peer("@victim")) == "unix:\\x40victim"  # a relative path a client bound
    assert format_sockaddr(unix_peer(b"\0victim")) == "unix:@victim"
    assert format_sockaddr(unix_peer("a@b")) == "unix:a@b", "only the leading one could be taken for abstract"


# -- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (0.25, 0.25),
        ("5", 5.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("250ms", 0.25),
        ("1ms", 0.001),
        ("5s", 5.0),
        ("2m", 120.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (" 3 s ", 3.0),
    ],
)
def test_durations(value, seconds):
    result = parse_duration(value)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    [
        "5 parsecs",
        "1d",
        "5x",
        "5S",
        "ms",
        "s5",
        "",
        "   ",
        "-1",
        "-5s",
        "1e3",
        -1,
        -0.5,
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        [5],
    ],
)
def test_bad_durations_name_the_value(value):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [0, 0.0, "0", "0s", "0ms", " 0.0 h "])
def test_a_timeout_of_zero_is_refused(value):
    with pytest.raises(ValueError) as info:
        parse_positive_duration(value)
    assert str(info.value) == f"must be above 0, got {value!r}"


@pytest.mark.parametrize(("value", "seconds"), [("1ms", 0.001), (0.0001, 0.0001), ("5s", 5.0)])
def test_a_timeout_above_zero_is_a_duration(value, seconds):
    assert parse_positive_duration(value) == pytest.approx(seconds)


def test_a_timeout_that_is_no_duration_gets_the_duration_message():
    with pytest.raises(ValueError, match="bad duration '5x'"):
        parse_positive_duration("5x")


def test_a_huge_integer_duration_is_a_value_error():
    with pytest.raises(ValueError):
        parse_duration(10**400)


# -- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (65536, 65536),
        ("65536", 65536),
        ("512B", 512),
        ("64KiB", 64 * 1024),
        ("256KiB", 256 * 1024),
        ("1MiB", 1024 * 1024),
        ("2GiB", 2 * 1024**3),
        ("10KB", 10_000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("64kib", 64 * 1024),
        ("1.5KiB", 1536),
        (" 4 KiB ", 4096),
    ],
)
def test_sizes(value, size):
    result = parse_size(value)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize("value", ["12 bananas", "64KiBs", "1TiB", "64Ki"])
def test_an_unknown_size_unit_is_named(value):
    with pytest.raises(ValueError) as info:
        parse_size(value)
    message = str(info.value)
    assert repr(value) in message
    assert "unknown unit" in message


def test_the_unknown_unit_message_lists_every_unit():
    with pytest.raises(ValueError) as info:
        parse_size("1TiB")
    assert str(info.value) == "bad size '1TiB': unknown unit 'TiB' (use KiB, MiB, GiB, KB, MB, GB)"


@pytest.mark.parametrize("value", ["KiB", "", "-1", "-64KiB", -1, 1.5, True, False, None, [1]])
def test_bad_sizes_name_the_value(value):
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert repr(value) in str(info.value)


def test_a_huge_size_string_is_a_value_error():
    with pytest.raises(ValueError):
        parse_size("9" * 400 + "KiB")


@given(st.integers(0, 10**6), st.sampled_from([("B", 1), ("KiB", 1024), ("MiB", 1024**2), ("KB", 1000), ("MB", 10**6)]))
def test_whole_sizes_in_any_unit(number, unit):
    suffix, factor = unit
    assert parse_size(f"{number}{suffix}") == number * factor


@given(st.integers(0, 10**6), st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]))
def test_whole_durations_in_any_unit(number, unit):
    suffix, factor = unit
    assert parse_duration(f"{number}{suffix}") == pytest.approx(number * factor)


# -- IP addresses and networks ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:10.1.2.3", "10.1.2.3/32"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        (" 10.1.2.3/8 ", "10.0.0.0/8"),
        ("::/0", "::/0"),
        ("::ffff:0:0/95", "::fffe:0:0/95"),
        ("2001:db8::/32", "2001:db8::/32"),
    ],
)
def test_networks_have_one_canonical_form(text, expected):
    assert canonical_network(text) == ipaddress.ip_network(expected)


@pytest.mark.parametrize(
    ("text", "expected"), [("::ffff:10.1.2.3", "10.1.2.3"), ("10.1.2.3", "10.1.2.3"), ("fe80::1%eth0", "fe80::1")]
)
def test_addresses_have_one_canonical_form(text, expected):
    assert canonical_ip(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("text", ["10.0.0.300", "example.com", "10.0.0.0/33", ""])
def test_what_is_no_network_is_a_value_error(text):
    with pytest.raises(ValueError):
        canonical_network(text)
