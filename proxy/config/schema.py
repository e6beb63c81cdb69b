"""The configuration's schema: frozen dataclasses, their defaults, and the forward-mode table.

There is one schema: `pairproxy forward` builds the same objects a route table file does
(`forward_config`), and everything that serves reads only these. Pure: no files, no sockets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from proxy.config.certificates import CertificatePair
from proxy.config.units import Address, IPNetwork, SocketAddress

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 15 * 60.0
DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_BUFFER_SIZE = 256 * 1024
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_BACKLOG = 1024  # the kernel takes at most net.core.somaxconn of it
DEFAULT_PEEK_TIMEOUT = 2.0  # as sslh's: SSH clients wait this long for a server that speaks first


def _default_max_buffered() -> int:
    """A quarter of physical memory, at least 64 MiB: what all connections together may hold."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 4 * 1024**3
    return max(memory // 4, 64 * 1024**2)


DEFAULT_MAX_BUFFERED = _default_max_buffered()
MIN_MAX_BUFFERED = 1024**2  # below this a few connections would starve all the others


BALANCE_STRATEGIES = ("round_robin", "least_conn", "random", "first", "source_hash")
PROXY_PROTOCOL_VERSIONS = ("v1", "v2")
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class KeepaliveConfig:
    """TCP keepalive: a probe after `idle` seconds of silence, then every `interval`; `count`
    unanswered probes end the connection. None: the kernel's default (net.ipv4.tcp_keepalive_*)."""

    idle: int | None = None
    interval: int | None = None
    count: int | None = None


@dataclass(frozen=True)
class SourceConfig:
    """The local address connects to the servers leave from: bound before the connect."""

    host: str  # an IP address, canonical
    ports: tuple[int, int] | None = None  # (first, last): the local ports to take one from; None: any


@dataclass(frozen=True)
class ServerConfig:
    address: SocketAddress
    weight: int = 1
    backup: bool = False
    source: SourceConfig | None = None  # None: the upstream's
    resolve: str | None = None  # "all": every A/AAAA record of the name is a server (RESOLVE_MODES)


@dataclass(frozen=True)
class HealthCheckConfig:
    """Active TCP checks: `fall` failures in a row mark a server down, `rise` successes up."""

    interval: float = 5.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True)
class UpstreamTlsConfig:
    """Originate TLS to the servers. Paths are absolute by the time they are here."""

    ca: str | None = None  # None: the system's trust store
    server_name: str | None = None  # None: each server's host
    verify: bool = True
    client_cert: CertificatePair | None = None


@dataclass(frozen=True)
class ListenerTlsConfig:
    """Terminate TLS from clients: `certificate` unless the client's SNI picks one of `others`."""

    certificate: CertificatePair
    client_ca: str | None = None
    others: tuple[CertificatePair, ...] = ()


# Servers from DNS (docs/discovery.md).
RESOLVE_MODES = ("all",)
DEFAULT_MAX_SERVERS = 256
DNS_PORT = 53  # the port a nameserver is asked on unless one is given
MAX_MAX_SERVERS = 10000


@dataclass(frozen=True)
class DiscoverConfig:
    """Servers a pool finds in DNS beside those it lists: each SRV target and port of `srv`."""

    srv: str


@dataclass(frozen=True)
class ResolversConfig:
    """The DNS client's nameservers and how long answers hold. `nameservers` None: /etc/resolv.conf's."""

    nameservers: tuple[Address, ...] | None = None
    timeout: float = 1.0  # per try, one nameserver
    attempts: int = 2  # times the list of nameservers is tried
    hold_valid: float = 10.0  # an answer is asked again after its TTL, at most this
    hold_obsolete: float = 30.0  # while lookups fail the last good answer is kept this long


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    balance: str = "round_robin"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retries: int = DEFAULT_RETRIES  # other servers tried after the first connect fails
    proxy_protocol: str | None = None  # "v1" | "v2"
    health_check: HealthCheckConfig | None = None
    tls: UpstreamTlsConfig | None = None
    keepalive: KeepaliveConfig | None = None  # None: no keepalive probes toward the servers
    user_timeout: float | None = None  # TCP_USER_TIMEOUT, seconds; None: the kernel's
    source: SourceConfig | None = None  # None: the kernel picks the local address
    discover: DiscoverConfig | None = None
    max_servers: int = DEFAULT_MAX_SERVERS  # at most this many servers from DNS (and `add server`)

    @property
    def from_dns(self) -> bool:
        """Whether DNS answers make some of its servers."""
        return self.discover is not None or any(server.resolve is not None for server in self.servers)


# What `match.protocol` may name: a protocol detected in the client's first bytes, or `silent`.
MATCH_PROTOCOLS = ("tls", "ssh", "http", "http2", "socks5", "openvpn", "xmpp", "proxy", "silent")
MAX_PREFIX = 16 * 1024  # a ClientHello's limit: a longer prefix could never be read


@dataclass(frozen=True)
class MatchConfig:
    """Conditions of a route; all given ones must hold, and within one, any of its values.
    Empty tuples match everything.

    `protocol`, `alpn`, `host` and `prefix` are read from the client's first bytes (a peek)."""

    sni: tuple[str, ...] = ()
    source: tuple[IPNetwork, ...] = ()
    protocol: tuple[str, ...] = ()  # of MATCH_PROTOCOLS
    alpn: tuple[str, ...] = ()  # the TLS client offers one of these
    host: tuple[str, ...] = ()  # a plain HTTP/1.x request's Host: names, or *. wildcards
    prefix: tuple[bytes, ...] = ()  # the stream starts with one of these

    @property
    def reads_first_bytes(self) -> bool:
        """True when a condition needs the client's first bytes (beyond a ClientHello's SNI)."""
        return bool(self.protocol or self.alpn or self.host or self.prefix)


# A listener's or route's name goes into each captured connection's comment, a pcapng option of
# at most 65,535 bytes; this many characters of UTF-8 (4 bytes each at most) leave it room.
MAX_NAME_LENGTH = 1000
MIN_PCAP_MAX_SIZE = 64 * 1024  # below this a rotated file would hold little more than its headers
DEFAULT_PCAP_KEEP = 10
MAX_PCAP_KEEP = 1000  # a rotation renames every old file there is: this bounds what it costs the loop


@dataclass(frozen=True)
class PcapConfig:
    """Where a capture goes; paths are absolute by the time they are here."""

    path: str  # absolute path, or "-" for standard output
    max_size: int | None = None  # rotate before a file would pass this many bytes (None: never)
    keep: int = DEFAULT_PCAP_KEEP  # rotated files kept: PATH.1 (newest) ... PATH.keep


DUMP_KEYS = ("conn", "listener", "route", "client", "server")


@dataclass(frozen=True)
class DumpCondition:
    """One `--dump-only` filter: KEY=VALUE."""

    key: str  # one of DUMP_KEYS
    text: str  # as the user wrote it, e.g. "client=10.0.0.0/8" (for messages)
    # conn: int; listener, route: str; client: IPNetwork (canonical); server: Address (canonical
    # host: an IP literal in its compressed form, IPv4-mapped as IPv4, a name in lower case)
    value: object


FAULT_STREAMS = ("downstream", "upstream")  # server to client (Toxiproxy's default), client to server


@dataclass(frozen=True)
class FaultConfig:
    """One toxic, with Toxiproxy's names: only the keys of its `type` mean anything.

    Durations in seconds, sizes in bytes, `rate` in bytes per second; proxy/config/faults.py
    reads and writes them as people spell them.
    """

    type: str  # latency, bandwidth, slicer, slow_close, timeout, reset_peer, limit_data
    stream: str = "downstream"  # one of FAULT_STREAMS
    toxicity: float = 1.0  # the chance, decided once per connection, that it applies
    latency: float = 0.0
    jitter: float = 0.0
    rate: int = 0
    average_size: int = 0
    size_variation: int = 0
    delay: float = 0.0
    timeout: float = 0.0  # timeout: 0 never closes; reset_peer: 0 resets at once
    bytes: int = 0


@dataclass(frozen=True)
class RouteConfig:
    upstream: str
    match: MatchConfig = MatchConfig()
    name: str | None = None
    # None: the listener's value. A route's hexdump, pcap and snaplen replace the listener's;
    # the listener's and the route's dump_only conditions must all hold.
    hexdump: bool | None = None
    pcap: PcapConfig | None = None
    snaplen: int | None = None
    dump_only: tuple[DumpCondition, ...] = ()
    faults: tuple[FaultConfig, ...] = ()  # added to the listener's


@dataclass(frozen=True)
class ListenerConfig:
    name: str | None  # None: named after the address it is bound to
    listen: SocketAddress
    routes: tuple[RouteConfig, ...]
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    # How long a client's first bytes are waited for when a route matches on them.
    peek_timeout: float = DEFAULT_PEEK_TIMEOUT
    buffer_size: int = DEFAULT_BUFFER_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    hexdump: bool = False
    pcap: PcapConfig | None = None
    snaplen: int | None = None  # at most this many bytes of each direction dumped and captured
    dump_only: tuple[DumpCondition, ...] = ()  # all must hold for a connection to be dumped
    allow: tuple[IPNetwork, ...] | None = None  # None: every source may connect
    deny: tuple[IPNetwork, ...] = ()
    accept_proxy_protocol: bool = False
    # With accept_proxy_protocol: the peers whose PROXY header is believed; None trusts every peer.
    proxy_trusted: tuple[IPNetwork, ...] | None = None
    tls: ListenerTlsConfig | None = None
    faults: tuple[FaultConfig, ...] = ()  # toxics for every connection (a route may add more)
    backlog: int | None = None  # the listen backlog; None: DEFAULT_BACKLOG
    keepalive: KeepaliveConfig | None = None  # None: no keepalive probes toward the clients
    user_timeout: float | None = None  # TCP_USER_TIMEOUT, seconds; None: the kernel's

    @property
    def served_routes(self) -> tuple[RouteConfig, ...]:
        """The routes as they are served. On a listener that terminates TLS and reads its clients'
        first bytes, a route naming no `protocol` is for TLS clients (as if it said `protocol:
        tls`): a client speaking anything else reaches only a route that names its protocol, so no
        catch-all takes it past the handshake (and `client_ca`) unencrypted."""
        if self.tls is None or not any(route.match.reads_first_bytes for route in self.routes):
            return self.routes
        return tuple(
            route if route.match.protocol else replace(route, match=replace(route.match, protocol=("tls",)))
            for route in self.routes
        )


@dataclass(frozen=True)
class AdminConfig:
    """Where an operator asks the running proxy: a UNIX socket for commands, an HTTP listener."""

    socket: str | None = None  # an absolute path by the time it is here
    http: Address | None = None


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=lambda: MappingProxyType({}))
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_buffered: int = DEFAULT_MAX_BUFFERED  # bytes all connections together may hold in buffers
    dump_file: str | None = None  # where the hex dump goes: None or "-": standard output; else absolute
    admin: AdminConfig | None = None
    resolvers: ResolversConfig = ResolversConfig()

    def __post_init__(self) -> None:
        # Frozen all through: a copy of what was given, read-only.
        if not isinstance(self.upstreams, MappingProxyType):
            object.__setattr__(self, "upstreams", MappingProxyType(dict(self.upstreams)))


def listener_key(listener: ListenerConfig) -> str:
    """What makes a listener 'the same' across reloads: its address (or, on port 0, its name too)."""
    listen = listener.listen
    return str(listen) if listen.port or listen.is_unix else f"{listener.name}@{listen}"


@dataclass(frozen=True)
class DumpOverrides:
    """The dump flags of `forward` and `run`: the same keys given on every listener, over the file's
    (and `--fault`, whose toxics are added to every listener's)."""

    hexdump: bool = False
    pcap: PcapConfig | None = None
    snaplen: int | None = None
    dump_only: tuple[DumpCondition, ...] = ()
    dump_file: str | None = None
    faults: tuple[FaultConfig, ...] = ()


NO_OVERRIDES = DumpOverrides()


def with_overrides(config: Config, overrides: DumpOverrides) -> Config:
    """`config` as the dump flags change it; applying the same overrides twice changes nothing more.

    hexdump, pcap and snaplen given are set on every listener and cleared on its routes (a route's
    None is the listener's value), so every route takes them; dump_only conditions and faults are
    added to every listener's; dump_file replaces the file's.
    """
    if overrides == NO_OVERRIDES:
        return config
    given = {"hexdump": overrides.hexdump or None, "pcap": overrides.pcap, "snaplen": overrides.snaplen}
    listener_changes = {key: value for key, value in given.items() if value is not None}
    route_changes = dict.fromkeys(listener_changes)
    listeners = []
    for listener in config.listeners:
        routes = tuple(replace(route, **route_changes) for route in listener.routes)
        dump_only = tuple(dict.fromkeys((*listener.dump_only, *overrides.dump_only)))
        faults = tuple(dict.fromkeys((*listener.faults, *overrides.faults)))
        listeners.append(replace(listener, routes=routes, dump_only=dump_only, faults=faults, **listener_changes))
    dump_file = config.dump_file if overrides.dump_file is None else overrides.dump_file
    return replace(config, listeners=tuple(listeners), dump_file=dump_file)


def forward_config(
    listen: SocketAddress,
    upstream: SocketAddress,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    tls: ListenerTlsConfig | None = None,
    upstream_tls: UpstreamTlsConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
    source: SourceConfig | None = None,
    backlog: int | None = None,
) -> Config:
    """The one-listener, one-server table that `pairproxy forward LISTEN UPSTREAM` means.

    `keepalive` is asked on both sides, the client's and the server's, where they speak TCP. Its dump flags are applied
    afterwards, by `with_overrides`, as for `run`.
    """
    name = str(upstream)
    return Config(
        listeners=(
            ListenerConfig(
                name=None,
                listen=listen,
                routes=(RouteConfig(upstream=name),),
                idle_timeout=idle_timeout,
                connect_timeout=connect_timeout,
                buffer_size=buffer_size,
                tls=tls,
                backlog=backlog,
                keepalive=None if listen.is_unix else keepalive,
            ),
        ),
        upstreams={
            name: UpstreamConfig(
                name=name,
                servers=(ServerConfig(upstream),),
                connect_timeout=connect_timeout,
                tls=upstream_tls,
                keepalive=None if upstream.is_unix else keepalive,
                source=source,
            )
        },
    )
