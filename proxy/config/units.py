"""Parsing of the value kinds users type: addresses, durations, sizes and whole numbers.

An address is TCP (`HOST:PORT`) or a UNIX socket (`unix:/path`, `unix:@name` for Linux's
abstract namespace).

A UNIX socket's name is any bytes, and a client chooses its own: every output (log, dump, pcap
comment, admin pages, metrics, `ctl`) shows one as `escape_name` writes it, printable ASCII with
no space, so that no name can end a line, break a quote or fail an encoding, and two names never
read alike (a path that starts with `@` shows it as `\x40`: `@` starts an abstract name). The
text is made once, where the address becomes text (`UnixAddress.__str__`, `format_sockaddr`);
the name itself stays as the kernel gave it for whatever goes on the wire (a PROXY header).

Shared by the YAML loader and the command line so both accept exactly the same spellings.
Every parser raises ValueError with a message fit to show a person after a location prefix
(`did_you_mean` names the closest of the right words).
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

DEFAULT_HOST = "127.0.0.1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


@dataclass(frozen=True, order=True)
class Address:
    """A host (IP literal or DNS name) and a port."""

    host: str
    port: int

    @functools.cached_property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @functools.cached_property
    def is_literal(self) -> bool:
        """True when the host is an IP address, so no name resolution is needed."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    is_unix = False

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


UNIX_PREFIX = "unix:"
UNIX_HOST = "unix"  # the host of a UNIX peer as `unix_peer` gives it
UNIX_PATH_MAX = 107  # bytes of sun_path a path may use: 108 with the kernel's terminating NUL


@dataclass(frozen=True, order=True)
class UnixAddress:
    """A UNIX stream socket: a filesystem `path` (absolute), or a name in the abstract namespace.

    `mode`, `owner`, `group` are what a listener sets on the socket file it creates (None: the
    umask's and the process's own). A UNIX address has no port: `port` is None, never 0.
    """

    path: str  # the file's absolute path, or the abstract name without its `@`
    abstract: bool = False
    mode: int | None = None
    owner: int | None = None
    group: int | None = None

    is_unix = True
    is_literal = False  # nothing to resolve, but no IP literal either
    port = None

    @property
    def sockaddr(self) -> str | bytes:
        """What bind() and connect() take: the path, or the name after a NUL byte."""
        return b"\0" + os.fsencode(self.path) if self.abstract else self.path

    def __str__(self) -> str:
        return UNIX_PREFIX + unix_name_text(f"\0{self.path}" if self.abstract else self.path)


SocketAddress = Address | UnixAddress


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the choice closest to a misspelt `word`, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def whole_number(text: str) -> int | None:
    """The number `text` writes in ASCII digits, else None.

    `str.isdigit` alone is not enough: it also passes `²`, which int() refuses, and `٣`, which
    int() reads as 3.
    """
    return int(text) if text.isascii() and text.isdigit() else None


def join_host_port(host: str, port: int) -> str:
    """`127.0.0.1:80`, or `[::1]:80` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_sockaddr(sockaddr: tuple) -> str:
    """`127.0.0.1:80` or `[::1]:80` for a socket address tuple of either family.

    A UNIX peer is passed around as the pair `unix_peer` makes, which this prints as `unix:/path`
    or `unix:@name` (its name escaped: `unix_name_text`).
    """
    if sockaddr[0] == UNIX_HOST:
        return UNIX_PREFIX + unix_name_text(sockaddr[1])
    return join_host_port(sockaddr[0], sockaddr[1])


# The bytes of a name shown as themselves: printable ASCII but the space, the two quotes and the
# backslash, which starts every escape (so that two names never read the same).
_PLAIN_NAME = re.compile(rb"[!#-&(-\[\]-~]*")
_NAME_BYTES = tuple(chr(byte) if _PLAIN_NAME.fullmatch(bytes([byte])) else f"\\x{byte:02x}" for byte in range(256))


def escape_name(raw: bytes) -> str:
    """A name someone else chose (any bytes) as text every output can take as it is: printable
    ASCII without a space, every other byte as `\\xNN`. Distinct names give distinct texts."""
    if _PLAIN_NAME.fullmatch(raw):
        return raw.decode("ascii")
    return "".join([_NAME_BYTES[byte] for byte in raw])


def unix_name_text(name: str) -> str:
    """A UNIX socket's name as `unix_peer` gives it, escaped: an abstract one after `@`
    (`@a\\x0ab\\x20c`), a path as itself but a leading `@`, which is `\\x40`."""
    if name[:1] == "\0":
        return "@" + escape_name(os.fsencode(name[1:]))
    text = escape_name(os.fsencode(name))
    return "\\x40" + text[1:] if text[:1] == "@" else text


def unix_peer(sockaddr: str | bytes) -> tuple[str, str]:
    """A UNIX socket address as the kernel gives it, as ("unix", NAME): NAME is the path, the
    abstract name after its NUL (as the kernel writes it: a path may start with `@` too), or ""."""
    return (UNIX_HOST, os.fsdecode(sockaddr) if isinstance(sockaddr, bytes) else sockaddr)


def format_any_sockaddr(sockaddr: tuple | str | bytes) -> str:
    """`format_sockaddr` for a socket of any family, UNIX ones included (`unix:/path`, `unix:@name`)."""
    return format_sockaddr(sockaddr if isinstance(sockaddr, tuple) else unix_peer(sockaddr))


def parse_address(
    text: str | int, *, allow_port_zero: bool = True, base_dir: str | None = None
) -> Address | UnixAddress:
    """Parse `HOST:PORT`, `[IPv6]:PORT`, `PORT` or `:PORT` (the last two mean 127.0.0.1), or a UNIX
    socket: `unix:PATH` (relative to `base_dir`, the current folder if None) or `unix:@NAME`.

    A bare port binds to loopback so that it never exposes a service by accident.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"address must be HOST:PORT or unix:PATH, got {text!r}")
    raw = str(text).strip()
    if not raw:
        raise ValueError("address is empty")
    if raw.startswith(UNIX_PREFIX):
        return parse_unix_address(raw[len(UNIX_PREFIX) :], base_dir)
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0 or raw[close + 1 : close + 2] != ":":
            raise ValueError(f"bad address {raw!r}: expected [IPv6]:PORT")
        host, port_text = raw[1:close], raw[close + 2 :]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad address {raw!r}: {host!r} is not an IPv6 address") from None
    elif ":" in raw:
        host, _, port_text = raw.rpartition(":")
        if ":" in host:
            raise ValueError(f"bad address {raw!r}: write IPv6 addresses as [IPv6]:PORT")
        host = host or DEFAULT_HOST
        _check_host(raw, host)
    else:
        host, port_text = DEFAULT_HOST, raw
    port = _parse_port(raw, port_text)
    if port == 0 and not allow_port_zero:
        raise ValueError(f"bad address {raw!r}: port 0 is only meaningful for a listener")
    return Address(host, port)


def parse_unix_address(text: str, base_dir: str | None = None) -> UnixAddress:
    """`/path`, `relative/path` (from `base_dir`, else the current folder) or `@name` (abstract).

    The kernel silently cuts a longer path short, so a path or name that does not fit sun_path
    is refused here, after it is made absolute.
    """
    if not text or text == "@":
        raise ValueError(f"bad address 'unix:{text}': expected unix:/PATH or unix:@NAME")
    if "\0" in text:
        raise ValueError(f"bad address 'unix:{text}': the path holds a NUL character")
    abstract = text.startswith("@")
    path = text[1:] if abstract else os.path.abspath(os.path.join(base_dir or "", text))
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        what = "name" if abstract else "path"
        raise ValueError(
            f"bad address 'unix:{text}': the {what} is {size} bytes, over the {UNIX_PATH_MAX} of a UNIX socket"
        )
    return UnixAddress(path, abstract)


def _check_host(raw: str, host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError(f"bad address {raw!r}: {host!r} is not a host name or IP address")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"bad address {raw!r}: {host!r} is not a valid IPv4 address")


def _parse_port(raw: str, port_text: str) -> int:
    port = whole_number(port_text)
    if port is None:
        raise ValueError(f"bad address {raw!r}: port {port_text!r} is not a number")
    if port > 65535:
        raise ValueError(f"bad address {raw!r}: port {port} is out of range 0-65535")
    return port


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*\Z", re.ASCII)


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number of seconds or a string such as `250ms`, `5s`, `2m`, `1h`."""
    if isinstance(value, bool):
        raise ValueError(f"duration must be a number of seconds or like '5s', got {value!r}")
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION.match(value)):
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
        else:
            raise ValueError(f"bad duration {value!r}: use seconds or a unit, e.g. 250ms, 5s, 2m, 1h")
    except OverflowError:
        seconds = float("inf")  # refused below, with the same message as any other infinity
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"bad duration {value!r}: must be a finite number >= 0")
    return seconds


def parse_positive_duration(value: str | int | float) -> float:
    """A duration above 0, for timeouts: one of 0 would end every attempt before it began."""
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError(f"must be above 0, got {value!r}")
    return seconds


MAX_SIZE = 1024**4  # far past any sane buffer; keeps what follows in machine integers
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*\Z", re.ASCII)


def parse_size(value: str | int) -> int:
    """Bytes from a number or a string such as `64KiB`, `1MiB`, `10KB` (powers of ten)."""
    if isinstance(value, bool):
        raise ValueError(f"size must be a number of bytes or like '64KiB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = match.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(f"bad size {value!r}: unknown unit {match.group(2)!r} (use KiB, MiB, GiB, KB, MB, GB)")
        size = int(Fraction(match.group(1)) * _SIZE_UNITS[unit])  # exact: no float rounding or overflow
    else:
        raise ValueError(f"bad size {value!r}: use bytes or a unit, e.g. 64KiB, 1MiB")
    if size < 0:
        raise ValueError(f"bad size {value!r}: must be >= 0")
    if size > MAX_SIZE:
        raise ValueError(f"bad size {value!r}: larger than 1TiB")
    return size


# -- IP addresses and networks, one spelling each ---------------------------------------------
#
# IPv4 and IPv4-mapped IPv6 (`::ffff:10.0.0.5`) are the same addresses everywhere: a dual-stack
# listener sees IPv4 clients in the mapped form, and people write rules either way. Everything
# that compares client addresses (allow, deny, match.source, source_hash) goes through these two.

_MAPPED_PREFIX = ipaddress.IPv6Network("::ffff:0:0/96")


def canonical_ip(host: str) -> IPAddress:
    """The address `host` names, IPv4-mapped IPv6 as plain IPv4; ValueError if it is none.

    A zone id (`fe80::1%eth0`) is dropped: rules cannot name zones.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical_network(text: str) -> IPNetwork:
    """A CIDR block (or one address), an IPv4-mapped IPv6 block as the IPv4 block it covers.

    `::ffff:10.0.0.0/104` is `10.0.0.0/8`. A block wider than the mapped range (`::/0`) stays
    IPv6 and so matches no IPv4 client; `check` can warn about that. ValueError if not a network.
    """
    network = ipaddress.ip_network(text.strip(), strict=False)
    if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(_MAPPED_PREFIX):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network
