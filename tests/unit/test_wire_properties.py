"""Properties of the wire parsers over any input: the PROXY header, the ClientHello peek, the
hex dump and the admin listener's HTTP request head. Each answers within its contract (decide,
wait, or its own error) for any bytes, and gives back exactly what its encoder put in, however
the bytes are split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.units import canonical_ip
from proxy.protocol.hexdump import dump_lines, parse_dump_line
from proxy.protocol.http import MAX_HEAD, head_end, parse_request
from proxy.protocol.proxyproto import MAX_HEADER, NEED_MORE, V1_PREFIX, V2_SIGNATURE, ProxyProtocolError, encode, parse
from proxy.protocol.sni import Hello, peek_server_name
from tests.support import in_records, synthetic_client_hello

PROPERTIES = settings(max_examples=200, deadline=None)

# -- PROXY protocol ------------------------------------------------------------------------

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
ports = st.integers(0, 65535)
endpoints = st.tuples(addresses, ports)
versions = st.sampled_from(["v1", "v2"])
# Bytes that reach deep into the parser: its own prefixes, then anything.
v1_text = st.text(alphabet="PROXYTCP46UNKOW0123456789abcdef.:% \r\n", max_size=120).map(str.encode)
proxy_inputs = st.one_of(
    st.binary(max_size=MAX_HEADER + 64),
    st.builds(lambda tail: V1_PREFIX + tail, v1_text),
    st.builds(
        lambda head, tail: V2_SIGNATURE + head + tail, st.binary(min_size=4, max_size=4), st.binary(max_size=300)
    ),
)


def _answers_within_contract(data: bytes) -> None:
    try:
        result = parse(data)
    except ProxyProtocolError:
        return
    if result is NEED_MORE:
        assert len(data) < MAX_HEADER
    else:
        info, length = result
        assert 0 < length <= len(data)
        assert (info.source is None) == (info.destination is None)


@PROPERTIES
@given(proxy_inputs)
def test_proxy_parse_waits_decides_or_raises_its_own_error(data):
    _answers_within_contract(data)


@PROPERTIES
@given(versions, endpoints, endpoints, st.binary(max_size=64))
def test_proxy_encode_then_parse_gives_the_endpoints_back(version, source, destination, payload):
    header = encode(version, source, destination)
    info, length = parse(header + payload)
    assert length == len(header)
    # Mixed families travel as IPv6 with the IPv4 side mapped: the same addresses, canonically.
    assert [(canonical_ip(host), port) for host, port in (info.source, info.destination)] == [
        (canonical_ip(host), port) for host, port in (source, destination)
    ]


@PROPERTIES
@given(versions, endpoints, endpoints)
def test_proxy_every_prefix_of_a_header_needs_more(version, source, destination):
    header = encode(version, source, destination)
    for end in range(len(header)):
        assert parse(header[:end]) is NEED_MORE
    assert parse(header)[1] == len(header)


@PROPERTIES
@given(st.ip_addresses(v=6), st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), ports)
def test_proxy_v1_refuses_zone_ids(address, zone, port):
    line = f"PROXY TCP6 {address}%{zone} ::1 {port} 80\r\n".encode()
    try:
        parse(line)
    except ProxyProtocolError:
        return
    raise AssertionError(f"accepted {line!r}")


# -- the ClientHello peek ------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?(\.[a-z0-9]{1,20}){0,3}", fullmatch=True)
hello_inputs = st.one_of(
    st.binary(max_size=600),
    # Handshake records with random contents: past the first checks into the message parser.
    st.builds(
        lambda body, version: b"\x16\x03" + bytes([version]) + len(body).to_bytes(2, "big") + body,
        st.builds(lambda rest: b"\x01" + rest, st.binary(max_size=300)),
        st.integers(0, 4),
    ),
)


@PROPERTIES
@given(hello_inputs)
def test_sni_peek_waits_or_answers_and_never_raises(data):
    result = peek_server_name(data)
    assert result is None or isinstance(result, Hello)
    if isinstance(result, Hello) and result.server_name is None:
        assert result.reason in ("not_tls", "no_sni", "clienthello_too_large")


@PROPERTIES
@given(names, st.integers(1, 300), st.data())
def test_sni_peek_finds_the_name_at_any_split(name, record_size, data):
    wire = in_records(synthetic_client_hello(name), record_size)
    split = data.draw(st.integers(0, len(wire) - 1), label="split")
    assert peek_server_name(wire[:split]) is None
    assert peek_server_name(wire) == Hello(name)


# -- the hex dump --------------------------------------------------------------------------


@PROPERTIES
@given(st.binary(max_size=600))
def test_hexdump_lines_parse_back_to_the_bytes_sixteen_a_line(data):
    lines = dump_lines(data)
    parsed = [parse_dump_line(line) for line in lines]
    assert b"".join(chunk for _, chunk in parsed) == data
    assert [offset for offset, _ in parsed] == list(range(0, len(data), 16))
    assert all(len(chunk) == 16 for _, chunk in parsed[:-1])
    for line, (_, chunk) in zip(lines, parsed, strict=True):
        ascii_column = line[line.index("|") + 1 : -1]
        assert line.endswith("|") and len(ascii_column) == len(chunk)
        assert all(0x20 <= ord(char) < 0x7F for char in ascii_column)
        assert ascii_column == "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)


# -- the admin listener's HTTP request head -------------------------------------------------

# Heads that reach past the request line: its pieces, spaces and line ends, then anything.
http_pieces = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"/metrics", b"/status?x=1", b"HTTP/1.1", b"HTTP/1.0", b"Host:", b"a: b", b"\xff"]
)
http_heads = st.one_of(
    st.binary(max_size=MAX_HEAD + 64),
    st.lists(st.one_of(http_pieces, st.sampled_from([b" ", b"\r\n", b"\n", b":", b"\t"]), st.binary(max_size=8))).map(
        b"".join
    ),
)


@PROPERTIES
@given(http_heads)
def test_http_parse_request_answers_a_request_or_value_error(data):
    try:
        request = parse_request(data)
    except ValueError:
        return
    assert len(data) <= MAX_HEAD
    assert request.version in ("HTTP/1.0", "HTTP/1.1") and request.method and request.target.isprintable()
    assert all(name == name.lower() and name for name, _ in request.headers)


@PROPERTIES
@given(st.binary(max_size=300))
def test_http_head_end_is_past_a_blank_line_or_not_found(data):
    end = head_end(data)
    assert end == -1 or data[:end].endswith((b"\r\n\r\n", b"\n\n"))
