"""Checks across the whole route table, once it is built: findings located in the file.

Pure functions over the schema's dataclasses and the places (FILE:LINE:COLUMN) each part was
written at: listeners that cannot all bind, routes that can never match (their conditions exclude
each other, or a route before matches all they do), SNI routes no
certificate covers, allow/deny lists that leave nobody, trusted-proxy warnings and unused
upstreams, dump filters that can never hold, dumps that would share standard output, and
outputs that would write one file. The loader reads the file and reports what these return;
nothing here reads a file (what a path names on disk comes as a function, `identity`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.config.certificates import name_matches
from proxy.config.schema import Config, DumpCondition, ListenerConfig, MatchConfig, PcapConfig
from proxy.config.units import IPAddress, IPNetwork, SocketAddress, canonical_ip, join_host_port


@dataclass(frozen=True, order=True)
class Place:
    """Where something is written: 0-based line and column, shown 1-based."""

    line: int
    column: int
    source: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line + 1}:{self.column + 1}"


@dataclass(frozen=True)
class Finding:
    place: Place
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Bound:
    """A listener's address and own name as written, whether or not the rest of it is valid."""

    place: Place
    name: str | None
    listen: SocketAddress


@dataclass(frozen=True)
class ListenerPlaces:
    """Where the parts of a built listener are written: what its findings point at."""

    listener: Place
    routes: tuple[Place, ...]  # one per route of the listener
    allow_or_deny: Place  # the allow: value, else the deny: one, else the listener
    accept_proxy_protocol: Place  # its key, else the listener
    dump_only: Place | None = None  # its own dump_only: value (None: absent or from defaults:)


def listener_clashes(bound: Sequence[Bound]) -> list[Finding]:
    """Errors: names must be unique; no two listeners may want the same port on the same address."""
    findings = []
    names: dict[str, Place] = {}
    by_port: dict[int, list[Bound]] = {}
    for listener in bound:
        name = listener.name or str(listener.listen)
        first = names.get(name)
        if first is None:
            names[name] = listener.place
        else:
            if listener.name is None and listener.listen.port == 0:
                message = (
                    f"two listeners on {listener.listen} without a 'name:': give listeners on port 0 distinct names"
                    f" (first at {first})"
                )
            else:
                message = f"listener name {name!r} is used twice (first at {first})"
            findings.append(Finding(listener.place, message))
        if listener.listen.port == 0:
            continue
        same_port = by_port.setdefault(listener.listen.port, [])  # only listeners on one port can clash
        for earlier in same_port:
            clash = _clash(earlier.listen, listener.listen)
            if clash is not None:
                findings.append(Finding(listener.place, f"{clash} (first at {earlier.place})"))
                break
        same_port.append(listener)
    return findings


def listener_warnings(
    listener: ListenerConfig, places: ListenerPlaces, names: Mapping[str, Sequence[str]]
) -> list[Finding]:
    """Warnings about one listener; `names` holds the DNS names of each certificate file it uses."""
    findings = route_coverage(listener, places) + dump_filter_warnings(listener, places)
    if listener.tls is not None:
        findings += sni_coverage(listener, places, names)
    if listener.allow is not None and not _leaves_any_source(listener.allow, listener.deny):
        findings.append(Finding(places.allow_or_deny, "allow and deny leave no source allowed", warning=True))
    if listener.accept_proxy_protocol and listener.proxy_trusted is None and _looks_at_source(listener):
        message = (
            "accept_proxy_protocol: true trusts every peer, so any client can claim any source address"
            " (name the proxies in front with {trusted: [...]})"
        )
        findings.append(Finding(places.accept_proxy_protocol, message, warning=True))
    return findings


def route_coverage(listener: ListenerConfig, places: ListenerPlaces) -> list[Finding]:
    """Warnings: routes that can never match, since their own conditions exclude each other or a
    route before each matches all it does; each route as it is served (on a terminating listener
    that reads first bytes, one without `protocol` is a TLS route, and covers no other protocol)."""
    findings = []
    coverage = _Coverage()
    terminates = listener.tls is not None
    for index, (route, place) in enumerate(zip(listener.served_routes, places.routes, strict=True)):
        why = _contradiction(route.match, terminates)
        if why is not None:
            findings.append(Finding(place, f"this route can never match: {why}", warning=True))
            continue
        cover = coverage.add(route.match, route.name or str(index))  # unnamed: its index, as in the access log
        if cover is not None:
            message = f"this route can never match: route {cover} before it matches all it does"
            findings.append(Finding(place, message, warning=True))
    return findings


def _contradiction(match: MatchConfig, terminates: bool) -> str | None:
    """Why no client can meet all of `match`'s conditions, or None."""
    protocols = set(match.protocol)
    tls_keys = [key for key in ("sni", "alpn") if getattr(match, key)]
    if match.host and terminates and "http" not in protocols:
        return (
            "host is a plain HTTP request's Host, and this listener's HTTP clients speak TLS"
            " (route them by sni; host matches only plain HTTP sent to it)"
        )
    if match.host and tls_keys:
        return f"host is read from plain HTTP, {tls_keys[0]} from TLS"
    if match.host and protocols and "http" not in protocols:
        return "host is read from a plain HTTP/1.x request, which its protocol excludes"
    if tls_keys and protocols and "tls" not in protocols:
        return f"{tls_keys[0]} is read from a TLS ClientHello, which its protocol excludes"
    if protocols == {"silent"} and (tls_keys or match.host or match.prefix):
        return "protocol silent means no bytes came, so nothing in them can match"
    return None


def dump_filter_warnings(listener: ListenerConfig, places: ListenerPlaces) -> list[Finding]:
    """Warnings: a listener's or route's own dump_only naming another listener, or a route not its own.

    Conditions from `defaults:` are left alone: there, naming one listener is the point.
    """
    name = listener.name or _bound_name(listener.listen)
    labels = [route.name if route.name is not None else str(index) for index, route in enumerate(listener.routes)]
    owners: list[tuple[Place, tuple[DumpCondition, ...], str | None]] = [
        (place, route.dump_only, label)
        for place, route, label in zip(places.routes, listener.routes, labels, strict=True)
    ]
    if places.dump_only is not None:
        owners.insert(0, (places.dump_only, listener.dump_only, None))
    findings = []
    for place, conditions, label in owners:
        for condition in conditions:
            if condition.key == "listener" and name is not None and condition.value != name:
                where = f"listener {name!r}"
            elif condition.key == "route" and label is not None and condition.value != label:
                where = f"route {label!r}"
            elif condition.key == "route" and label is None and condition.value not in labels:
                where = f"this listener (its routes: {', '.join(labels)})"
            elif condition.key == "client" and listener.listen.is_unix:
                where = "a UNIX socket listener (its clients have no IP address)"
            else:
                continue
            findings.append(Finding(place, f"dump_only: {condition.text!r} never holds on {where}", warning=True))
    return findings


def sni_coverage(listener: ListenerConfig, places: ListenerPlaces, names: Mapping[str, Sequence[str]]) -> list[Finding]:
    """Warnings: server names a route matches that none of the listener's certificates is for."""
    assert listener.tls is not None
    pairs = (listener.tls.certificate, *listener.tls.others)
    known = [name.lower() for pair in pairs for name in names.get(pair.cert, ())]
    findings = []
    for route, place in zip(listener.routes, places.routes, strict=True):
        for pattern in route.match.sni:
            exact = not pattern.startswith("*.")
            if not any(name == pattern or (exact and name_matches(name, pattern)) for name in known):
                message = f"sni {pattern!r} is not covered by the listener's certificates"
                findings.append(Finding(place, message, warning=True))
    return findings


def unused_upstreams(config: Config, places: Mapping[str, Place]) -> list[Finding]:
    """Warnings: upstreams of the file (those in `places`) that no route uses."""
    used = {route.upstream for listener in config.listeners for route in listener.routes}
    return [
        Finding(place, f"upstream {name!r} is not used by any route", warning=True)
        for name, place in places.items()
        if name not in used
    ]


def standard_output_clash(config: Config, workers: int = 1) -> str | None:
    """Why the table's dumps cannot go where it says, or None: standard output takes one stream, once."""
    captures = [pcap for listener in config.listeners for pcap in _in_effect(listener, "pcap")]
    if not any(pcap is not None and pcap.path == "-" for pcap in captures):
        return None
    if workers > 1:
        return "a capture to standard output (pcap -) cannot be shared by workers; give a file"
    hexdumps = [hexdump for listener in config.listeners for hexdump in _in_effect(listener, "hexdump")]
    if config.dump_file in (None, "-") and any(hexdumps):
        return (
            "the capture (pcap -) and the hex dump would both go to standard output;"
            " give the hex dump a file (dump_file, --dump-file)"
        )
    return None


# The kinds of file the proxy writes, as people call them.
HEX_DUMP, CAPTURE, KEY_LOG, ADMIN_SOCKET = "hex dump", "capture", "TLS key log", "admin socket"


@dataclass(frozen=True)
class OutputFile:
    """A file the proxy writes or makes, and who asks for it: a place in the file, or a flag."""

    kind: str  # HEX_DUMP, CAPTURE, KEY_LOG or ADMIN_SOCKET
    path: str  # absolute
    origin: Place | str
    rotated: int = 0  # the older copies kept beside it by rotation: PATH.1 to PATH.N

    @classmethod
    def capture(cls, pcap: PcapConfig, origin: Place | str) -> OutputFile:
        return cls(CAPTURE, pcap.path, origin, pcap.keep if pcap.max_size is not None else 0)

    def paths(self) -> tuple[str, ...]:
        return (self.path, *(f"{self.path}.{index}" for index in range(1, self.rotated + 1)))


def output_clashes(outputs: Sequence[OutputFile], identity: Callable[[str], Hashable]) -> list[tuple[OutputFile, str]]:
    """Each output that would write a file an earlier one writes, with why, in the earlier one's terms.

    `identity` tells which paths are one file (links resolved), None for one that any number of
    outputs may write (a character device such as /dev/null). One output asked for in several
    places (listeners sharing a capture) is one output: the same kind on the same path.
    """
    writers: dict[Hashable, OutputFile] = {}
    clashes = []
    for output in outputs:
        own = (output.kind, identity(output.path))
        for path in output.paths():
            shared = identity(path)
            if shared is None:
                continue
            first = writers.setdefault(shared, output)
            if (first.kind, identity(first.path)) != own:
                message = f"the {output.kind} {path} is also the {first.kind}'s file ({first.origin})"
                clashes.append((output, f"{message}; give each output its own file"))
                break
    return clashes


def _in_effect(listener: ListenerConfig, key: str) -> list[Any]:
    """The values of `key` that some route of the listener uses: its own, else the listener's."""
    values = [getattr(route, key) for route in listener.routes]
    if None in values:
        values.append(getattr(listener, key))
    return [value for value in values if value is not None]


def _bound_name(listen: SocketAddress) -> str | None:
    """The name a listener without one gets (the address it is bound to), when it is known before binding."""
    if listen.is_unix:
        return str(listen)
    if listen.port == 0 or not listen.is_literal:
        return None  # the port, or the address a host name resolves to, is only known once bound
    return join_host_port(str(ipaddress.ip_address(listen.host)), listen.port)


def _network_within(inner: IPNetwork, outers: Iterable[IPNetwork]) -> bool:
    return any(inner.version == outer.version and inner.subnet_of(outer) for outer in outers)


def _leaves_any_source(allow: tuple[IPNetwork, ...], deny: tuple[IPNetwork, ...]) -> bool:
    return any(not _network_within(network, deny) for network in allow)


def _looks_at_source(listener: ListenerConfig) -> bool:
    return listener.allow is not None or bool(listener.deny) or any(route.match.source for route in listener.routes)


def _clash(first: SocketAddress, later: SocketAddress) -> str | None:
    """Why two listeners cannot both bind, or None when they can (or cannot be told without DNS).

    A wildcard takes the port on every address of its family, and `[::]` is dual-stack (Linux's
    default, which the server keeps), so it takes every IPv4 address too.
    """
    if first.port != later.port:
        return None
    if first.is_unix:  # both are: only UNIX addresses have no port
        return f"two listeners on {later}" if str(first) == str(later) else None
    if first == later:
        return f"two listeners on {later}"
    first_ip, later_ip = _ip(first.host), _ip(later.host)
    if first_ip is None or later_ip is None:
        return None  # a host name: it could only be compared by resolving it
    for wildcard, wild, other, ip in ((first, first_ip, later, later_ip), (later, later_ip, first, first_ip)):
        if wild.is_unspecified and (wild.version == 6 or ip.version == 4):
            scope = "IPv6 and IPv4" if wild.version == 6 else "IPv4"
            return f"two listeners on port {later.port}: {wildcard} listens on every {scope} address, {other} included"
    return None


def _ip(host: str) -> IPAddress | None:
    """The IP a listener host is, an IPv4-mapped IPv6 one as IPv4; None for a host name."""
    try:
        return canonical_ip(host)
    except ValueError:
        return None


def _sni_covered(name: str, patterns: frozenset[str]) -> bool:
    """True when every server name the pattern `name` matches, one of `patterns` matches too."""
    if name in patterns:
        return True
    head, dot, parent = name.partition(".")
    return head not in ("", "*") and bool(dot) and f"*.{parent}" in patterns


class _Coverage:
    """Which earlier route of a listener matches every client a later one does.

    Without comparing every pair: a route the same as an earlier one is covered by whatever
    covered that one, or else by it; and a route with server names covers a later one only if it
    has the later's first name or the wildcard one level above it, so only those are compared
    (with the routes without names).
    """

    def __init__(self) -> None:
        self.labels: dict[MatchConfig, str] = {}  # each match so far, in order -> its first route's label
        self.covered_by: dict[MatchConfig, str | None] = {}
        self.order: dict[MatchConfig, int] = {}
        self.with_pattern: dict[str, list[MatchConfig]] = {}
        self.without_sni: list[MatchConfig] = []

    def add(self, match: MatchConfig, label: str) -> str | None:
        """The label of the first route before this one that covers it, if any."""
        if match in self.labels:
            return self.covered_by[match] or self.labels[match]
        candidates = list(self.without_sni)
        if match.sni:
            name = match.sni[0]
            candidates += self.with_pattern.get(name, [])
            candidates += self.with_pattern.get(f"*.{name.partition('.')[2]}", [])
        covers = [earlier for earlier in candidates if _covers(earlier, match)]
        cover = min(covers, key=self.order.__getitem__, default=None)
        self.covered_by[match] = None if cover is None else self.labels[cover]
        self.labels[match] = label
        self.order[match] = len(self.order)
        for pattern in match.sni:
            self.with_pattern.setdefault(pattern, []).append(match)
        if not match.sni:
            self.without_sni.append(match)
        return self.covered_by[match]


def _covers(earlier: MatchConfig, later: MatchConfig) -> bool:
    """True when every client that `later` matches is taken by `earlier` first."""
    for names in ("sni", "host"):
        patterns = frozenset(getattr(earlier, names))
        if patterns and not (getattr(later, names) and all(_sni_covered(n, patterns) for n in getattr(later, names))):
            return False
    for values in ("protocol", "alpn"):
        held = frozenset(getattr(earlier, values))
        if held and not (getattr(later, values) and held.issuperset(getattr(later, values))):
            return False
    if earlier.prefix and not (
        later.prefix and all(any(data.startswith(start) for start in earlier.prefix) for data in later.prefix)
    ):
        return False
    if not earlier.source:
        return True
    return bool(later.source) and all(_network_within(network, earlier.source) for network in later.source)
