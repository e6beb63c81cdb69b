"""The configuration's schema: frozen dataclasses, their defaults, and the forward-mode table.

There is one schema: `pairproxy forward` builds the same objects a route table file does
(`forward_config`), and everything that serves reads only these. Pure: no files, no sockets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.config.certificates import CertificatePair
from proxy.config.units import Address, IPNetwork

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 15 * 60.0
DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_BUFFER_SIZE = 256 * 1024
DEFAULT_SHUTDOWN_GRACE = 30.0


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
class ServerConfig:
    address: Address
    weight: int = 1
    backup: bool = False


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


@dataclass(frozen=True)
class PcapConfig:
    path: str  # absolute path, or "-" for standard output
    max_size: int | None = None  # rotate before a file would pass this many bytes (None: never)
    keep: int = 10  # rotated files kept: PATH.1 (newest) ... PATH.keep


@dataclass(frozen=True)
class DumpCondition:
    """One `--dump-only` filter: KEY=VALUE."""

    key: str  # "conn" | "listener" | "route" | "client" | "server"
    text: str  # as the user wrote it, e.g. "client=10.0.0.0/8" (for messages)
    value: object  # conn: int; listener, route: str; client: IPNetwork; server: Address


@dataclass(frozen=True)
class MatchConfig:
    """Conditions of a route; all given ones must hold. Empty tuples match everything."""

    sni: tuple[str, ...] = ()
    source: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class RouteConfig:
    upstream: str
    match: MatchConfig = MatchConfig()
    name: str | None = None
    hexdump: bool | None = None  # None: the listener's
    pcap: PcapConfig | None = None
    snaplen: int | None = None
    dump_only: tuple[DumpCondition, ...] = ()


@dataclass(frozen=True)
class ListenerConfig:
    name: str | None  # None: named after the address it is bound to
    listen: Address
    routes: tuple[RouteConfig, ...]
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    buffer_size: int = DEFAULT_BUFFER_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    hexdump: bool = False
    allow: tuple[IPNetwork, ...] | None = None  # None: every source may connect
    deny: tuple[IPNetwork, ...] = ()
    accept_proxy_protocol: bool = False
    # With accept_proxy_protocol: the peers whose PROXY header is believed; None trusts every peer.
    proxy_trusted: tuple[IPNetwork, ...] | None = None
    tls: ListenerTlsConfig | None = None
    pcap: PcapConfig | None = None
    snaplen: int | None = None
    dump_only: tuple[DumpCondition, ...] = ()


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
    dump_file: str | None = None  # None or "-": standard output
    admin: AdminConfig | None = None

    def __post_init__(self) -> None:
        # Frozen all through: a copy of what was given, read-only.
        if not isinstance(self.upstreams, MappingProxyType):
            object.__setattr__(self, "upstreams", MappingProxyType(dict(self.upstreams)))


def listener_key(listener: ListenerConfig) -> str:
    """What makes a listener 'the same' across reloads: its address (or, on port 0, its name too)."""
    return str(listener.listen) if listener.listen.port else f"{listener.name}@{listener.listen}"


def forward_config(
    listen: Address,
    upstream: Address,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    hexdump: bool = False,
    tls: ListenerTlsConfig | None = None,
    upstream_tls: UpstreamTlsConfig | None = None,
) -> Config:
    """The one-listener, one-server table that `pairproxy forward LISTEN UPSTREAM` means."""
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
                hexdump=hexdump,
                tls=tls,
            ),
        ),
        upstreams={
            name: UpstreamConfig(
                name=name, servers=(ServerConfig(upstream),), connect_timeout=connect_timeout, tls=upstream_tls
            )
        },
    )
