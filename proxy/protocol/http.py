"""Just enough HTTP/1.x for the admin listener: find and parse a request head, format a response.

Pure: bytes in, a `Request` or ValueError out; a status and a body in, bytes out. The parser is
strict and bounded (the caller stops reading at MAX_HEAD), since anyone who can reach the admin
port can send it anything.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 8 * 1024  # request line and headers together, the final blank line included
_END = b"\r\n\r\n"
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in the order sent

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]


def head_end(data: bytes) -> int:
    """Where the head in `data` ends (just past its blank line), or -1 while it is incomplete.

    A bare LF ends lines too, as RFC 9112 lets a server accept.
    """
    crlf = data.find(_END)
    lf = data.find(b"\n\n")
    ends = [found + size for found, size in ((crlf, 4), (lf, 2)) if found >= 0]
    return min(ends) if ends else -1


def _token(text: bytes, what: str) -> str:
    if not text or not all(byte in _TOKEN for byte in text):
        raise ValueError(f"bad {what}")
    return text.decode("ascii")


def parse_request(head: bytes) -> Request:
    """The request in `head` (its bytes up to and including the blank line); ValueError if malformed."""
    if len(head) > MAX_HEAD:
        raise ValueError("request head too large")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError("empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    method = _token(parts[0], "method")
    target = parts[1]
    if not target or any(byte <= 0x20 or byte >= 0x7F for byte in target):
        raise ValueError("bad request target")
    version = parts[2]
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise ValueError("unsupported HTTP version")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError("bad header line")
        if any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in value):
            raise ValueError("bad header value")
        headers.append((_token(name, "header name").lower(), value.strip(b" \t").decode("latin-1")))
    return Request(method, target.decode("ascii"), version.decode("ascii"), tuple(headers))


def format_response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection; `head_only` for HEAD (the
    Content-Length stays that of the body a GET would get)."""
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in extra),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
