"""Who may connect and where each client goes: allow/deny and the ordered route table.

Pure: client addresses, server names and what a client's first bytes show in, decisions out.
The first route whose every condition holds wins; a route without conditions is a default and
matches everything. On first bytes still arriving, a condition may be undecided: the table then
waits (`WAIT`) while a route before any that matches could still match, never longer.

Addresses and networks are compared in one canonical form: an IPv4-mapped IPv6 address or
network (`::ffff:10.0.0.5`, `::ffff:10.0.0.0/104`) is the IPv4 one, however it was stored, so a
dual-stack listener's clients and rules written either way agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

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


Verdict = bool | None  # True: holds; False: does not; None: not known until more bytes come


class FirstBytesView(Protocol):
    """What routes ask of a client's first bytes (proxy/protocol/detect.py's `FirstBytes`, or a
    client described by hand to `pairproxy route`); each answer None while it is not known yet."""

    def speaks(self, protocol: str) -> Verdict: ...

    def server_name(self) -> tuple[Verdict, str | None]: ...

    def alpn(self) -> tuple[Verdict, tuple[str, ...]]: ...

    def host(self) -> tuple[Verdict, str | None]: ...

    def starts_with(self, prefix: bytes) -> Verdict: ...


@dataclass(frozen=True)
class Described:
    """A client described by what it sends first rather than by its bytes: a protocol (else TLS
    when a server name or ALPN is given, plain HTTP when a Host is), ALPN names, a Host, an SNI.
    It sends no bytes a prefix could match. `pairproxy route` describes clients so, and a
    terminating listener the client whose handshake ran before a route was picked (what the
    handshake showed: TLS, its server name)."""

    given_protocol: str | None = None
    offered: tuple[str, ...] = ()
    host_name: str | None = None
    sni: str | None = None

    def protocol(self) -> str | None:
        if self.given_protocol is not None:
            return self.given_protocol
        if self.sni is not None or self.offered:
            return "tls"
        return "http" if self.host_name is not None else None

    def speaks(self, protocol: str) -> Verdict:
        return protocol == self.protocol()

    def server_name(self) -> tuple[Verdict, str | None]:
        return self.sni is not None, self.sni

    def alpn(self) -> tuple[Verdict, tuple[str, ...]]:
        return bool(self.offered), self.offered

    def host(self) -> tuple[Verdict, str | None]:
        return self.host_name is not None, self.host_name

    def starts_with(self, prefix: bytes) -> Verdict:
        return False


def any_of(verdicts: Iterable[Verdict]) -> Verdict:
    """Three-valued or: True if one holds, else None if one is not known, else False."""
    pending = False
    for verdict in verdicts:
        if verdict:
            return True
        pending = pending or verdict is None
    return None if pending else False


def byte_conditions(match: MatchConfig, first: FirstBytesView) -> Iterable[tuple[str, Verdict]]:
    """Each condition of `match` on the first bytes (SNI included), with its verdict, in order."""
    if match.protocol:
        yield "protocol", any_of(first.speaks(name) for name in match.protocol)
    if match.sni:
        found, name = first.server_name()
        yield "sni", found and first_pattern(match.sni, name) is not None
    if match.alpn:
        found, offered = first.alpn()
        yield "alpn", found and any(name in offered for name in match.alpn)
    if match.host:
        found, host = first.host()
        yield "host", found and first_pattern(match.host, host) is not None
    if match.prefix:
        yield "prefix", any_of(first.starts_with(prefix) for prefix in match.prefix)


def match_verdict(match: MatchConfig, address: IPAddress, first: FirstBytesView) -> Verdict:
    """Three-valued and of the conditions: False at the first that fails, asking no further."""
    if match.source and first_network(address, match.source) is None:
        return False
    pending = False
    for _kind, verdict in byte_conditions(match, first):
        if verdict is False:
            return False
        pending = pending or verdict is None
    return None if pending else True


class Wait:
    """The type of WAIT: the bytes so far do not decide, and more may come."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = Wait()


class RouteTable:
    """A listener's routes in order; `select` gives the first that matches, with its label, and
    `decide` the same from a client's first bytes.

    What its routes look at: `needs_source` (the client's address), `needs_server_name` (SNI,
    so a ClientHello has to be read first), `reads_first_bytes` (a protocol, ALPN, a Host or a
    prefix: the first bytes decide)."""

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self.routes = tuple(
            replace(route, match=replace(route.match, source=canonical_networks(route.match.source)))
            if route.match.source
            else route
            for route in routes
        )
        # Asked per connection: answered once.
        self.needs_source = any(route.match.source for route in self.routes)
        self.needs_server_name = any(route.match.sni for route in self.routes)
        self.reads_first_bytes = any(route.match.reads_first_bytes for route in self.routes)

    def select(self, address: IPAddress, server_name: str | None = None) -> tuple[str | int, RouteConfig] | None:
        """(label, route) of the first matching route, or None (the client gets `no_route`).

        The label is the route's name, or its index counted from 0.
        """
        for index, route in enumerate(self.routes):
            if match_holds(route.match, address, server_name):
                return (route.name if route.name is not None else index), route
        return None

    def decide(self, address: IPAddress, first: FirstBytesView) -> tuple[str | int, RouteConfig] | Wait | None:
        """(label, route) of the first route that matches the client's first bytes, WAIT while a
        route before it is undecided, or None (`no_route`). Once `first` is final, nothing waits."""
        for index, route in enumerate(self.routes):
            verdict = match_verdict(route.match, address, first)
            if verdict is None:
                return WAIT
            if verdict:
                return (route.name if route.name is not None else index), route
        return None
