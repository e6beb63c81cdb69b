"""Who may connect and where each client goes: allow/deny and the ordered route table.

Pure: client addresses and server names in, decisions out. The first route whose every
condition holds wins; a route without conditions is a default and matches everything.

Addresses and networks are compared in one canonical form: an IPv4-mapped IPv6 address or
network (`::ffff:10.0.0.5`, `::ffff:10.0.0.0/104`) is the IPv4 one, however it was stored, so a
dual-stack listener's clients and rules written either way agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from proxy.config.certificates import name_matches
from proxy.config.schema import ListenerConfig, MatchConfig, RouteConfig
from proxy.config.units import IPAddress, IPNetwork, canonical_network


def canonical_networks(networks: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    """`networks` with every IPv4-mapped block as the IPv4 block it covers."""
    return tuple(canonical_network(str(network)) for network in networks)


def first_network(address: IPAddress, networks: tuple[IPNetwork, ...]) -> IPNetwork | None:
    """The first of `networks` that holds `address` (the rule that decides), or None."""
    for network in networks:
        if address in network:
            return network
    return None


def first_pattern(patterns: tuple[str, ...], server_name: str) -> str | None:
    """The first SNI pattern that `server_name` matches, or None."""
    for pattern in patterns:
        if name_matches(pattern, server_name):
            return pattern
    return None


@dataclass(frozen=True)
class AccessPolicy:
    """`deny` is checked first; then, when `allow` is given, only sources in it may connect."""

    allow: tuple[IPNetwork, ...] | None
    deny: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, listener: ListenerConfig) -> AccessPolicy:
        allow = None if listener.allow is None else canonical_networks(listener.allow)
        return cls(allow, canonical_networks(listener.deny))

    def permits(self, address: IPAddress) -> bool:
        if first_network(address, self.deny) is not None:
            return False
        return self.allow is None or first_network(address, self.allow) is not None


def match_holds(match: MatchConfig, address: IPAddress, server_name: str | None) -> bool:
    if match.source and first_network(address, match.source) is None:
        return False
    if match.sni:
        return server_name is not None and first_pattern(match.sni, server_name) is not None
    return True


class RouteTable:
    """A listener's routes in order; `select` gives the first that matches, with its label."""

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self.routes = tuple(
            replace(route, match=replace(route.match, source=canonical_networks(route.match.source)))
            if route.match.source
            else route
            for route in routes
        )

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
