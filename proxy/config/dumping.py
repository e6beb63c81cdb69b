"""The `--dump-only` filters (and `dump_only:` items) as people write them: KEY=VALUE text in,
a DumpCondition out, or ValueError with a message for people.

Shared by the YAML loader and the command line. Values are stored in the one form the matching
(proxy/policy/dump_filter.py) compares: networks and server hosts canonical.
"""

from __future__ import annotations

from proxy.config.schema import DUMP_KEYS, DumpCondition
from proxy.config.units import (
    Address,
    IPNetwork,
    canonical_ip,
    canonical_network,
    did_you_mean,
    parse_address,
    whole_number,
)

_EXAMPLES = "conn=ID, listener=NAME, route=NAME, client=CIDR, server=HOST:PORT"


def parse_dump_condition(text: str) -> DumpCondition:
    """One filter, e.g. `client=10.0.0.0/8`: a bare client IP means that one address."""
    key, equals, raw = text.partition("=")
    key, value = key.strip(), raw.strip()
    if not equals:
        raise ValueError(f"dump filter {text!r} is not KEY=VALUE (one of {_EXAMPLES})")
    if key not in DUMP_KEYS:
        raise ValueError(f"unknown dump filter key {key!r}{did_you_mean(key, DUMP_KEYS)}; keys: {', '.join(DUMP_KEYS)}")
    if not value:
        raise ValueError(f"dump filter {text!r} has no value after '='")
    return DumpCondition(key, text, _VALUE_PARSERS[key](value))


def _conn(value: str) -> int:
    conn = whole_number(value)
    if conn is None or conn < 1:
        raise ValueError(f"conn={value}: a connection id is a whole number of at least 1")
    return conn


def _client(value: str) -> IPNetwork:
    try:
        return canonical_network(value)
    except ValueError:
        raise ValueError(f"client={value}: not an IP address or CIDR block such as 10.0.0.0/8") from None


def _server(value: str) -> Address:
    if value.startswith(":") or ":" not in value:
        raise ValueError(f"server={value}: expected HOST:PORT or [IPv6]:PORT")
    try:
        address = parse_address(value, allow_port_zero=False)
    except ValueError as exc:
        raise ValueError(f"server={value}: {exc}") from None
    return canonical_server(address)


def canonical_server(address: Address) -> Address:
    """The one spelling of a server's address: IP literals compressed (IPv4-mapped as IPv4), names in lower case."""
    if address.is_unix:
        return address
    try:
        host = str(canonical_ip(address.host))
    except ValueError:
        host = address.host.lower().rstrip(".")
    return address if host == address.host else Address(host, address.port)


_VALUE_PARSERS = {"conn": _conn, "listener": str, "route": str, "client": _client, "server": _server}
