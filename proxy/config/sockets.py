"""The socket options people write, checked: TCP keepalive, TCP_USER_TIMEOUT, a source address,
the listen backlog; the same values for the YAML keys and for `forward`'s flags.

Bounds are the kernel's: keepalive times are whole seconds from 1 to 32767 and a probe count
goes from 1 to 127 (tcp(7)); TCP_USER_TIMEOUT is whole milliseconds. A source address is an IP
address, optionally with the local ports to take one from (`10.0.0.5:20000-29999`).
"""

from __future__ import annotations

import ipaddress

from proxy.config.schema import DEFAULT_BACKLOG, KeepaliveConfig, ListenerConfig, SourceConfig
from proxy.config.units import SocketAddress, parse_positive_duration, whole_number

MAX_KEEPALIVE_SECONDS = 32767  # MAX_TCP_KEEPIDLE and MAX_TCP_KEEPINTVL
MAX_KEEPALIVE_COUNT = 127  # MAX_TCP_KEEPCNT
MAX_USER_TIMEOUT = (2**31 - 1) / 1000  # an int of milliseconds
MAX_BACKLOG = 2**31 - 1  # listen() takes an int; the kernel takes at most net.core.somaxconn of it
SOMAXCONN_FILE = "/proc/sys/net/core/somaxconn"


def keepalive_seconds(value: str | int | float) -> int:
    """A keepalive time (`60s`, `2m`, `60`): whole seconds from 1 to 32767."""
    seconds = parse_positive_duration(value)
    if seconds != int(seconds) or seconds > MAX_KEEPALIVE_SECONDS:
        raise ValueError(f"must be whole seconds from 1s to {MAX_KEEPALIVE_SECONDS}s, got {value!r}")
    return int(seconds)


def keepalive_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_KEEPALIVE_COUNT:
        raise ValueError(f"must be a whole number from 1 to {MAX_KEEPALIVE_COUNT}, got {value!r}")
    return value


def user_timeout(value: str | int | float) -> float:
    """TCP_USER_TIMEOUT: a duration above 0, whole milliseconds, at most about 24.8 days."""
    seconds = parse_positive_duration(value)
    milliseconds = seconds * 1000
    if seconds > MAX_USER_TIMEOUT or abs(milliseconds - round(milliseconds)) > 1e-6:
        raise ValueError(f"must be whole milliseconds from 1ms to {MAX_USER_TIMEOUT:.0f}s, got {value!r}")
    return seconds


def parse_keepalive_flag(text: str) -> KeepaliveConfig:
    """`--keepalive`: `on` (the kernel's times), or IDLE:INTERVAL:COUNT as nginx's so_keepalive
    writes it, where an empty field keeps the kernel's (`30m::10`)."""
    if text == "on":
        return KeepaliveConfig()
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"must be 'on' or IDLE:INTERVAL:COUNT such as 60s:10s:6, got {text!r}")
    idle, interval, count = parts
    number = whole_number(count)
    return KeepaliveConfig(
        idle=keepalive_seconds(idle) if idle else None,
        interval=keepalive_seconds(interval) if interval else None,
        count=keepalive_count(count if number is None else number) if count else None,
    )


def parse_source(text: object) -> SourceConfig:
    """`10.0.0.5`, `2001:db8::5`, or with a port range: `10.0.0.5:20000-29999`, `[2001:db8::5]:20000-29999`."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"must be an IP address, optionally with a port range (10.0.0.5:20000-29999), got {text!r}")
    host, ports = text, None
    if text.startswith("[") and "]:" in text:
        host, _, ports = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, _, ports = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (a source is bound, never resolved)") from None
    return SourceConfig(address.compressed, None if ports is None else _port_range(ports))


def source_mismatch(source: SourceConfig, address: SocketAddress) -> str | None:
    """Why no connect from `source` reaches `address`: an IP literal of the other family (a name
    is checked when resolved); None when it can."""
    v6 = ":" in source.host
    if address.is_unix or not address.is_literal or address.is_ipv6 == v6:
        return None
    return f"source {source.host} is {'IPv6' if v6 else 'IPv4'} and server {address} is not: no connect from there"


def _port_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    low, high = whole_number(first), whole_number(last or first)
    if low is None or high is None or not 1 <= low <= high <= 65535:
        raise ValueError(f"ports must be FIRST-LAST between 1 and 65535, got {text!r}")
    return low, high


def somaxconn(path: str = SOMAXCONN_FILE) -> int | None:
    """The kernel's cap on a listen backlog (net.core.somaxconn); None where it cannot be read."""
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read())
    except (OSError, ValueError):
        return None


def effective_backlog(listener: ListenerConfig) -> int:
    """The backlog the kernel gives `listener`: what it asks (or the default), at most somaxconn."""
    cap = somaxconn()
    asked = listener.backlog or DEFAULT_BACKLOG
    return asked if cap is None else min(asked, cap)
