"""The configuration schema: frozen dataclasses that the YAML file and the command line fill.

There is one schema: `pairproxy forward` builds the same objects a route table file does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.units import Address

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 15 * 60.0
DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_BUFFER_SIZE = 256 * 1024
DEFAULT_SHUTDOWN_GRACE = 30.0


@dataclass(frozen=True)
class ServerConfig:
    address: Address
    weight: int = 1
    backup: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    servers: tuple[ServerConfig, ...]
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT


@dataclass(frozen=True)
class RouteConfig:
    upstream: str


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


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE


def forward_config(
    listen: Address,
    upstream: Address,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    hexdump: bool = False,
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
            ),
        ),
        upstreams={name: UpstreamConfig(name=name, servers=(ServerConfig(upstream),), connect_timeout=connect_timeout)},
    )
