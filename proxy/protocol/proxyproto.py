"""The PROXY protocol (HAProxy's, versions 1 and 2): encode a header, parse one strictly.

Pure: addresses in, bytes out; bytes in, an answer out. `parse` answers NEED_MORE only while
the bytes are still a valid beginning of a header, so a client that speaks anything else is
refused at its first wrong byte, not after a timeout.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

from proxy.config.units import UNIX_HOST

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the specification's bound, CRLF included
V2_MAX_PAYLOAD = 4096  # addresses and TLVs; real headers are far smaller
MAX_HEADER = 16 + V2_MAX_PAYLOAD

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_V2_ADDRESS_SIZES = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_UNIX_PATH_SIZE = 108  # each of the two paths of an AF_UNIX address block

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class ProxyInfo:
    """What a header says. `source`/`destination` are None for LOCAL or UNKNOWN headers."""

    source: Endpoint | None
    destination: Endpoint | None


class NeedMore:
    """The type of NEED_MORE: the bytes so far are a valid, incomplete header."""

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = NeedMore()


class ProxyProtocolError(ValueError):
    """The bytes cannot be a PROXY header; the message says why."""


# -- encoding ------------------------------------------------------------------------------


def _same_family(source: Endpoint, destination: Endpoint) -> tuple[ipaddress._BaseAddress, ipaddress._BaseAddress]:
    """Both addresses as one family: IPv4 becomes IPv4-mapped IPv6 when the other is IPv6."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst))
    return src, dst


def encode_v1(source: Endpoint, destination: Endpoint) -> bytes:
    """`PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`."""
    src, dst = _same_family(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {_v1_text(src)} {_v1_text(dst)} {source[1]} {destination[1]}\r\n".encode("ascii")


def _v1_text(address: ipaddress._BaseAddress) -> str:
    """IPv4-mapped IPv6 keeps its dotted quad (`::ffff:10.0.0.1`), as people write it."""
    mapped = getattr(address, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def encode_v2(source: Endpoint, destination: Endpoint) -> bytes:
    """The binary header: signature, version 2 / PROXY, TCP over IPv4 or IPv6, the addresses."""
    src, dst = _same_family(source, destination)
    family = _AF_INET if src.version == 4 else _AF_INET6
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return (
        V2_SIGNATURE
        + bytes([0x20 | _V2_PROXY, (family << 4) | _STREAM])
        + struct.pack("!H", len(addresses))
        + addresses
    )


def encode_unix(version: str, source: str, destination: str) -> bytes:
    """The header for a client of a UNIX socket: `source` and `destination` are names as
    `unix_peer` gives them (a path, or an abstract name after its NUL). An unnamed client (most
    are) is empty, or the listener's own name (what the access log names it by): no client can
    be bound where the listener is.

    v1 has no UNIX form: `PROXY UNKNOWN`. v2 names both sockets (AF_UNIX), or, when the client
    has no name, says LOCAL: the receiver keeps the connection's own endpoints.
    """
    if version == "v1":
        return b"PROXY UNKNOWN\r\n"
    if not source or source == destination:
        return V2_SIGNATURE + bytes([0x20 | _V2_LOCAL, _AF_UNSPEC]) + struct.pack("!H", 0)  # UNSPEC, no addresses
    addresses = _unix_path(source) + _unix_path(destination)
    return (
        V2_SIGNATURE
        + bytes([0x20 | _V2_PROXY, (_AF_UNIX << 4) | _STREAM])
        + struct.pack("!H", len(addresses))
        + addresses
    )


def _unix_path(name: str) -> bytes:
    """A name as sun_path holds it (an abstract one starts with its NUL), NUL-padded to 108 bytes."""
    return os.fsencode(name)[:_UNIX_PATH_SIZE].ljust(_UNIX_PATH_SIZE, b"\0")


def encode(version: str, source: Endpoint, destination: Endpoint) -> bytes:
    """The header of `version` ("v1" or "v2"); a source whose host is `unix` is a UNIX socket's client
    (see proxy/config/units.py's `unix_peer`), and `destination` then the listener's socket."""
    if source[0] == UNIX_HOST:
        return encode_unix(version, source[1], destination[1])
    if version == "v1":
        return encode_v1(source, destination)
    if version == "v2":
        return encode_v2(source, destination)
    raise ValueError(f"unknown PROXY protocol version {version!r}")


# -- parsing -------------------------------------------------------------------------------


def parse(data: bytes | bytearray | memoryview) -> tuple[ProxyInfo, int] | NeedMore:
    """(info, header length), NEED_MORE, or ProxyProtocolError. Payload starts at the length."""
    data = bytes(data)
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if not data:
        return NEED_MORE
    raise ProxyProtocolError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | NeedMore:
    prefix = data[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(prefix):
        raise ProxyProtocolError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("v1 header is not ended by CRLF")
        return NEED_MORE
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    fields = line.split(" ")
    if fields[1:2] == ["UNKNOWN"]:
        return ProxyInfo(None, None), end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"bad v1 header {line!r}")
    version = 4 if fields[1] == "TCP4" else 6
    source = (_v1_address(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return ProxyInfo(source, destination), end + 2


def _v1_address(text: str, version: int) -> str:
    # ip_address takes a zone id (`fe80::1%eth0`); the specification's addresses have none.
    try:
        address = None if "%" in text else ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None:
        raise ProxyProtocolError(f"bad v1 address {text!r}")
    if address.version != version:
        raise ProxyProtocolError(f"v1 address {text!r} is not IPv{version}")
    return str(address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"bad v1 port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | NeedMore:
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyProtocolError("not a PROXY protocol header")
    if len(data) < 16:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyProtocolError(f"unsupported v2 version {data[12] >> 4}")
        return NEED_MORE
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    (length,) = struct.unpack("!H", data[14:16])
    if version != 2:
        raise ProxyProtocolError(f"unsupported v2 version {version}")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError(f"unsupported v2 command {command:#x}")
    if length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError(f"v2 header of {length} bytes is too large")
    total = 16 + length
    if len(data) < total:
        return NEED_MORE
    if command == _V2_LOCAL or family == _AF_UNSPEC:
        return ProxyInfo(None, None), total
    if family not in _V2_ADDRESS_SIZES or transport != _STREAM:
        raise ProxyProtocolError(f"unsupported v2 address family {family:#x} / transport {transport:#x}")
    if length < _V2_ADDRESS_SIZES[family]:
        name = {_AF_INET: "AF_INET", _AF_INET6: "AF_INET6", _AF_UNIX: "AF_UNIX"}[family]
        raise ProxyProtocolError(f"v2 address block too short for {name}")
    if family == _AF_UNIX:
        return ProxyInfo(None, None), total  # a local socket path says nothing about a TCP client
    body = data[16:total]
    size = 4 if family == _AF_INET else 16
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return ProxyInfo((str(src), sport), (str(dst), dport)), total
