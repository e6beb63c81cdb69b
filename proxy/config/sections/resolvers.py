"""The `resolvers:` section: the nameservers the DNS client asks, and how long answers hold."""

from __future__ import annotations

from typing import Any

import yaml

from proxy.config.reader import INVALID, Invalid, Reader, Section, at_least_one
from proxy.config.schema import DNS_PORT, ResolversConfig
from proxy.config.units import Address, parse_address


def resolvers(reader: Reader, node: yaml.Node, what: str) -> ResolversConfig | Invalid:
    return reader.built(node, reader.mapping(node, what, RESOLVERS.keys), RESOLVERS, ResolversConfig)


def nameserver(value: Any) -> Address:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 unless given): a nameserver is never a name,
    which would need a nameserver to find."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]:{DNS_PORT}"  # a bare IPv6 address
    elif ":" not in text:
        text = f"{text}:{DNS_PORT}"
    try:
        address = parse_address(text, allow_port_zero=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is no nameserver address ({exc})") from None
    if address.is_unix or not address.is_literal:
        raise ValueError(f"{value!r} is no nameserver address: an IP address, with a port if not 53")
    return address


def nameservers(reader: Reader, node: yaml.Node, what: str) -> tuple[Address, ...] | Invalid:
    items = reader.items(node, what)
    found = [reader.parsed(item, what, nameserver) for item in items]
    if not items:
        reader.error(node, f"{what} is empty: leave it out to use /etc/resolv.conf's")
        return INVALID
    if any(isinstance(each, Invalid) for each in found):
        return INVALID
    return tuple(dict.fromkeys(found))


RESOLVERS = Section(
    {
        "nameservers": nameservers,
        "timeout": Reader.timeout,
        "attempts": at_least_one,
        "hold_valid": Reader.timeout,
        "hold_obsolete": Reader.duration,
    }
)
