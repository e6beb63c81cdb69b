"""Who may connect and where each client goes: allow/deny and the ordered route table.

Pure: client addresses and server names in, decisions out. The first route whose every
condition holds wins; a route without conditions is a default and matches everything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from proxy.config import IPNetwork, ListenerConfig, MatchConfig, RouteConfig
from proxy.tls import name_matches

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(host: str) -> IPAddress:
    """The client's address as an ip_address; IPv4-mapped IPv6 counts as the IPv4 address."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in_any(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks)


@dataclass(frozen=True)
class AccessPolicy:
    """`deny` is checked first; then, when `allow` is given, only sources in it may connect."""

    allow: tuple[IPNetwork, ...] | None
    deny: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, listener: ListenerConfig) -> AccessPolicy:
        return cls(listener.allow, listener.deny)

    def permits(self, address: IPAddress) -> bool:
        if _in_any(address, self.deny):
            return False
        return self.allow is None or _in_any(address, self.allow)


def match_holds(match: MatchConfig, address: IPAddress, server_name: str | None) -> bool:
    if match.source and not _in_any(address, match.source):
        return False
    if match.sni:
        return server_name is not None and any(name_matches(p, server_name) for p in match.sni)
    return True


class RouteTable:
    """A listener's routes in order; `select` gives the first that matches, with its label."""

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self.routes = routes

    def select(self, address: IPAddress, server_name: str | None = None) -> tuple[str | int, RouteConfig] | None:
        """(label, route) of the first matching route, or None (the client gets `no_route`).

        The label is the route's name, or its index counted from 0.
        """
        for index, route in enumerate(self.routes):
            if match_holds(route.match, address, server_name):
                return (route.name if route.name is not None else index), route
        return None

    @property
    def needs_source(self) -> bool:
        """True when some route matches on the client's address."""
        return any(route.match.source for route in self.routes)

    @property
    def needs_server_name(self) -> bool:
        """True when some route matches on SNI, so the ClientHello has to be read first."""
        return any(route.match.sni for route in self.routes)
