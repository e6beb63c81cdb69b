"""What a client speaks, from the first bytes it sent: one detector per protocol, pure and bounded.

Each detector looks at all the bytes seen so far and answers True (it is this protocol), False
(it is not) or None (the bytes so far are a valid start: wait for more). Feeding the bytes one at a
time gives the same answers as all at once, since each answer is a function of the bytes alone.
Every answer is decided by `PEEK_LIMIT` bytes (a ClientHello of `MAX_CLIENT_HELLO` and its record
headers; the other protocols decide within a few KiB): there, an answer still pending is False.

`FirstBytes` holds one client's bytes and whether more may come (`final` is False while the
client may still send within the listener's peek_timeout), and answers what routes ask of them:
a protocol, the TLS ClientHello's server name and ALPN list, a plain HTTP request's Host, a
prefix. Once `final`, nothing is pending: an undecided answer is False.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.protocol import proxyproto
from proxy.protocol.sni import MAX_CLIENT_HELLO, Hello, peek_server_name

SILENT = "silent"  # the client sent nothing within peek_timeout: a server-first protocol
# Detected in this order when the access line names one: the first that says yes.
PROTOCOLS = ("tls", "ssh", "http", "http2", "socks5", "openvpn", "xmpp", "proxy")
PEEK_LIMIT = 2 * MAX_CLIENT_HELLO  # a ClientHello's bytes plus its record headers

Verdict = bool | None  # True: yes; False: no; None: need more bytes


def _starts_as(expected: bytes, data: bytes) -> Verdict:
    """Whether `data` starts with `expected`; None while it is a shorter start of it."""
    if len(data) >= len(expected):
        return data.startswith(expected)
    return None if expected.startswith(data) else False


def is_tls(data: bytes) -> Verdict:
    """A complete ClientHello (a handshake record, as many records as it spans); one too large to
    read still counts, as TLS that no route can look into."""
    hello = peek_server_name(data)
    return None if hello is None else hello.reason != "not_tls"


def is_ssh(data: bytes) -> Verdict:
    """RFC 4253's identification string, `SSH-`."""
    return _starts_as(b"SSH-", data)


HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
_HTTP_VERSION = b" HTTP/1."
_MAX_REQUEST_LINE = 8 * 1024


def is_http(data: bytes) -> Verdict:
    """An HTTP/1.x request line, `METHOD SP target SP HTTP/1.`: a known method, a target of
    visible characters, then the version (decided as soon as `HTTP/1.` is read)."""
    method_end = data.find(b" ", 0, 8)
    if method_end < 0:
        if len(data) >= 8:
            return False
        return None if any(method.startswith(data) for method in HTTP_METHODS) else False
    if data[:method_end] not in HTTP_METHODS:
        return False
    target_end = data.find(b" ", method_end + 1, _MAX_REQUEST_LINE)
    target = data[method_end + 1 : len(data) if target_end < 0 else target_end]
    if not all(0x21 <= byte <= 0x7E for byte in target):
        return False
    if target_end < 0:
        return None if len(data) < _MAX_REQUEST_LINE else False
    if target_end == method_end + 1:
        return False  # no target
    return _starts_as(_HTTP_VERSION, data[target_end:])


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def is_http2(data: bytes) -> Verdict:
    """HTTP/2 with prior knowledge: RFC 9113's connection preface."""
    return _starts_as(HTTP2_PREFACE, data)


def _known_socks5_method(method: int) -> bool:
    return method <= 0x09 or 0x80 <= method <= 0xFE  # IANA's assignments and the private range


def is_socks5(data: bytes) -> Verdict:
    """RFC 1928's greeting: version 5, the number of methods (at least one), each a known method."""
    if not data:
        return None
    if data[0] != 0x05:
        return False
    if len(data) < 2:
        return None
    count = data[1]
    if count == 0:
        return False
    methods = data[2 : 2 + count]
    if not all(_known_socks5_method(method) for method in methods):
        return False
    return True if len(methods) == count else None


# OpenVPN over TCP: a 2-byte length, then the hard reset that opens a session (opcode in the top 5
# bits, key id 0): P_CONTROL_HARD_RESET_CLIENT_V1, _V2 and _V3 (tls-crypt-v2).
_OPENVPN_RESETS = (1 << 3, 7 << 3, 10 << 3)
_OPENVPN_MIN, _OPENVPN_MAX = 14, 4096  # opcode, session id and packet id at least; a bounded key


def is_openvpn(data: bytes) -> Verdict:
    """OpenVPN over TCP's first packet: a plausible length, a client's hard reset, and that many
    bytes (decided once they are in, whatever follows: the same answer however they arrive)."""
    if len(data) < 2:
        return None
    length = int.from_bytes(data[:2], "big")
    if not _OPENVPN_MIN <= length <= _OPENVPN_MAX:
        return False
    if len(data) < 3:
        return None
    if data[2] not in _OPENVPN_RESETS:
        return False
    return True if len(data) >= 2 + length else None


_XML_DECLARATION = b"<?xml"
_STREAM_OPEN = b"<stream:stream"
_MAX_XMPP_OPENING = 4 * 1024


def is_xmpp(data: bytes) -> Verdict:
    """RFC 6120's stream opening: an optional XML declaration, then `<stream:stream` in the
    `jabber:client` or `jabber:server` namespace (decided when the tag closes)."""
    rest = data
    declared = _starts_as(_XML_DECLARATION, rest)
    if declared:
        end = rest.find(b"?>")
        if end < 0:
            return None if len(rest) < _MAX_XMPP_OPENING else False
        rest = rest[end + 2 :].lstrip(b" \t\r\n")
    elif declared is None and rest:
        return None  # `<` and `<?x` could be either
    opening = _starts_as(_STREAM_OPEN, rest)
    if opening is not True:
        return opening
    tag_end = rest.find(b">")
    if tag_end < 0:
        return None if len(data) < _MAX_XMPP_OPENING else False
    tag = rest[len(_STREAM_OPEN) : tag_end]
    if tag[:1] not in (b" ", b"\t", b"\r", b"\n"):
        return False
    return any(f"{quote}jabber:{kind}{quote}".encode() in tag for quote in "'\"" for kind in ("client", "server"))


def is_proxy(data: bytes) -> Verdict:
    """A complete, valid PROXY protocol header (v1 or v2)."""
    try:
        return None if proxyproto.parse(data) is proxyproto.NEED_MORE else True
    except ValueError:
        return False


DETECTORS: dict[str, Callable[[bytes], Verdict]] = {
    "tls": is_tls,
    "ssh": is_ssh,
    "http": is_http,
    "http2": is_http2,
    "socks5": is_socks5,
    "openvpn": is_openvpn,
    "xmpp": is_xmpp,
    "proxy": is_proxy,
}


def detect(protocol: str, data: bytes) -> Verdict:
    """The verdict of `protocol`'s detector (one of PROTOCOLS) on `data`: decided by PEEK_LIMIT bytes."""
    verdict = DETECTORS[protocol](data[:PEEK_LIMIT])
    return False if verdict is None and len(data) >= PEEK_LIMIT else verdict


def starts_with(prefix: bytes, data: bytes) -> Verdict:
    return _starts_as(prefix, data)


_MAX_HTTP_HEAD = 16 * 1024


def http_host(data: bytes) -> tuple[Verdict, str | None]:
    """(found, host) of a plain HTTP/1.x request: True and the Host header's name (lower case,
    without its port), False when the head ended without one (or is not HTTP/1.x), None while
    the head is still arriving."""
    request = is_http(data)
    if not request:
        return request, None
    head = data[:_MAX_HTTP_HEAD]
    start = head.find(b"\n") + 1
    while start:
        end = head.find(b"\n", start)
        if end < 0:
            return (None if len(head) < _MAX_HTTP_HEAD else False), None
        line = head[start:end].rstrip(b"\r")
        if not line:
            return False, None  # the end of the head
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"host":
            return True, _host_name(value.strip())
        start = end + 1
    return (None if len(head) < _MAX_HTTP_HEAD else False), None


def _host_name(value: bytes) -> str | None:
    text = value.decode("ascii", "replace").lower()
    if text.startswith("["):  # an IPv6 literal, [::1]:8080
        return text[: text.find("]") + 1] or None
    return text.rpartition(":")[0] if text.count(":") == 1 else text.rstrip(".") or None


class FirstBytes:
    """One client's first bytes, and whether more may come; each question answered once.

    `final`: the peek is over (peek_timeout, the client's end of stream, the byte limit), so no
    answer is pending any more.
    """

    __slots__ = ("data", "final", "_verdicts", "_hello", "_host")

    def __init__(self, data: bytes, final: bool) -> None:
        self.data = data
        self.final = final or len(data) >= PEEK_LIMIT
        self._verdicts: dict[str, Verdict] = {}
        self._hello: Hello | None = None
        self._host: tuple[Verdict, str | None] | None = None

    def _settled(self, verdict: Verdict) -> Verdict:
        return False if verdict is None and self.final else verdict

    def speaks(self, protocol: str) -> Verdict:
        """Whether the client speaks `protocol` (one of PROTOCOLS, or SILENT: it sent nothing)."""
        if protocol in self._verdicts:
            return self._verdicts[protocol]
        if protocol == SILENT:
            verdict = False if self.data else (True if self.final else None)
        elif protocol == "tls":  # is_tls, from the ClientHello already read for its name and ALPN
            hello = self.hello
            verdict = self._settled(None if hello is None else hello.reason != "not_tls")
        else:
            verdict = self._settled(detect(protocol, self.data))
        self._verdicts[protocol] = verdict
        return verdict

    @property
    def hello(self) -> Hello | None:
        """What the ClientHello peek answers (a Hello, with a reason when it names no server);
        None while a ClientHello may still be arriving, or never did."""
        if self._hello is None:
            self._hello = peek_server_name(self.data)
        return self._hello

    def server_name(self) -> tuple[Verdict, str | None]:
        hello = self.hello
        if hello is None:
            return self._settled(None), None
        return hello.server_name is not None, hello.server_name

    def alpn(self) -> tuple[Verdict, tuple[str, ...]]:
        hello = self.hello
        return (self._settled(None), ()) if hello is None else (bool(hello.alpn), hello.alpn)

    def host(self) -> tuple[Verdict, str | None]:
        if self._host is None:
            found, name = http_host(self.data)
            self._host = (self._settled(found), name)
        return self._host

    def starts_with(self, prefix: bytes) -> Verdict:
        return self._settled(starts_with(prefix, self.data))

    def protocol(self) -> str | None:
        """The first protocol that says yes (`silent` when nothing came), None when none does yet."""
        if self.final and not self.data:
            return SILENT
        return next((name for name in PROTOCOLS if self.speaks(name)), None)
