"""Reading the server name from a TLS ClientHello without terminating TLS (for passthrough).

Pure and bounded: `peek_server_name(data)` looks at the bytes a client sent so far. It
reassembles the ClientHello from as many handshake records as it spans (post-quantum key shares
make it larger than one TCP segment, sometimes than one record) up to `MAX_CLIENT_HELLO`, and
answers one of: need more bytes (None), or a Hello with the server name (or none, with why) and
the ALPN protocols the client offers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_CLIENT_HELLO = 16 * 1024
_RECORD_HANDSHAKE = 0x16
_HANDSHAKE_CLIENT_HELLO = 0x01
_EXTENSION_SERVER_NAME = 0x0000
_EXTENSION_ALPN = 0x0010
_NAME_TYPE_HOST = 0x00
_EXTENSION_HEADER = struct.Struct("!HH")  # extension_type, the length of its data
_MAX_RECORD = 2**14 + 2048  # TLSCiphertext's limit; anything larger is not TLS


@dataclass(frozen=True)
class Hello:
    """The outcome: `server_name` when the ClientHello named one, else `reason` says why not.

    reason: `no_sni` (a valid ClientHello without the extension), `not_tls`,
    `clienthello_too_large`. `alpn`: the protocols a valid ClientHello offers, in its order.
    """

    server_name: str | None
    reason: str | None = None
    alpn: tuple[str, ...] = ()


def peek_server_name(data: bytes, limit: int = MAX_CLIENT_HELLO) -> Hello | None:
    """None while a valid ClientHello may still be arriving, else what it says."""
    message = bytearray()
    offset = 0
    while True:
        header = data[offset : offset + 5]
        if len(header) >= 1 and header[0] != _RECORD_HANDSHAKE:
            return Hello(None, "not_tls")
        if len(header) >= 2 and header[1] != 0x03:
            return Hello(None, "not_tls")
        if len(header) < 5:
            return None
        (length,) = struct.unpack("!H", header[3:5])
        if length == 0 or length > _MAX_RECORD:
            return Hello(None, "not_tls")
        fragment = data[offset + 5 : offset + 5 + length]
        message += fragment
        offset += 5 + length
        if message[:1] and message[0] != _HANDSHAKE_CLIENT_HELLO:
            return Hello(None, "not_tls")
        if len(message) >= 4:
            body_length = int.from_bytes(message[1:4], "big")
            if body_length + 4 > limit:
                return Hello(None, "clienthello_too_large")
            if len(message) >= body_length + 4:
                return _parse_client_hello(bytes(message[4 : 4 + body_length]))
        if len(fragment) < length:
            return None  # the rest of this record is still on its way


def _parse_client_hello(body: bytes) -> Hello:
    reader = _Reader(body)
    named = Hello(None, "no_sni")
    alpn: tuple[str, ...] = ()
    try:
        reader.take(2 + 32)  # legacy_version, random
        reader.take(reader.number(1))  # legacy_session_id
        reader.take(reader.number(2))  # cipher_suites
        reader.take(reader.number(1))  # legacy_compression_methods
        if reader.remaining == 0:
            return Hello(None, "no_sni")  # no extensions at all
        extensions = reader.take(reader.number(2))
        # Walked by offsets, not through a _Reader: a ClientHello has a dozen extensions or more,
        # and this runs for every client of a listener that peeks.
        end, position = len(extensions), 0
        while position < end:
            if position + 4 > end:
                raise ValueError("truncated")
            kind, size = _EXTENSION_HEADER.unpack_from(extensions, position)
            start, position = position + 4, position + 4 + size
            if position > end:
                raise ValueError("truncated")
            if kind == _EXTENSION_SERVER_NAME:
                named = _server_name(extensions[start:position])
                if alpn:
                    break
            elif kind == _EXTENSION_ALPN:
                alpn = _protocol_names(extensions[start:position])
                if named.reason != "no_sni":
                    break  # both found: what follows is not read, as it never was after the name
    except ValueError:
        if named.server_name is None:
            return Hello(None, "not_tls")
        return Hello(named.server_name, None, alpn)  # a name read before the damage still routes, as it did
    if named.reason == "not_tls":
        return named
    return Hello(named.server_name, named.reason, alpn)


def _server_name(content: bytes) -> Hello:
    names = _Reader(_Reader(content).take_prefixed(2))
    while names.remaining:
        name_type = names.number(1)
        name = names.take(names.number(2))
        if name_type == _NAME_TYPE_HOST:
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                return Hello(None, "not_tls")
            if not text or any(c.isspace() or c in "/\\" for c in text):
                return Hello(None, "not_tls")
            return Hello(text.lower().rstrip("."))
    return Hello(None, "no_sni")


def _protocol_names(content: bytes) -> tuple[str, ...]:
    """RFC 7301's ProtocolNameList; ValueError (not TLS) when it is malformed or names an empty protocol."""
    end = len(content)
    if end < 2 or int.from_bytes(content[:2], "big") != end - 2:
        raise ValueError("a malformed ALPN list")
    offered, position = [], 2
    while position < end:
        start = position + 1
        position = start + content[position]
        if position == start or position > end:
            raise ValueError("a malformed ALPN protocol name")
        offered.append(content[start:position].decode("ascii", "backslashreplace"))  # shown, never trusted
    return tuple(offered)


class _Reader:
    """Length-checked reads from a byte string; ValueError when it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.position

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            raise ValueError("truncated")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def take_prefixed(self, size: int) -> bytes:
        return self.take(self.number(size))
