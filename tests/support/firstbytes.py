"""What clients of each protocol send first, as they send it: the bytes a multiplexed listener
detects (and sslh, for comparison). TLS is a real ClientHello from Python's ssl."""

from __future__ import annotations

import ssl
import struct


def client_hello(server_name: str | None = None, alpn: tuple[str, ...] = ()) -> bytes:
    """The first flight of a real TLS client, with SNI and ALPN when given."""
    context = ssl.create_default_context()
    if server_name is None:
        context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(list(alpn))
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def openvpn_hard_reset() -> bytes:
    """OpenVPN over TCP: P_CONTROL_HARD_RESET_CLIENT_V2, key id 0, a session id, no tls-auth."""
    packet = bytes([7 << 3]) + bytes(range(1, 9)) + b"\x00" + struct.pack("!I", 0)
    return struct.pack("!H", len(packet)) + packet


FIRST_BYTES: dict[str, bytes] = {
    "tls": client_hello("mux.test", ("h2", "http/1.1")),
    "ssh": b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    "http": b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    "http2": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
    "socks5": b"\x05\x02\x00\x02",
    "openvpn": openvpn_hard_reset(),
    "xmpp": (
        b"<?xml version='1.0'?><stream:stream to='example.com' xmlns='jabber:client'"
        b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    ),
    "proxy": b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n",
}
