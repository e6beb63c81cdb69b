"""The `upstreams:` section: pools of servers, their health checks, the TLS spoken to them and the
socket options toward them (keepalive, user_timeout, source; the listeners share the first two)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from proxy.config.reader import INVALID, Fields, Invalid, Reader, Section, at_least_one
from proxy.config.schema import (
    BALANCE_STRATEGIES,
    MAX_MAX_SERVERS,
    PROXY_PROTOCOL_VERSIONS,
    RESOLVE_MODES,
    DiscoverConfig,
    HealthCheckConfig,
    KeepaliveConfig,
    ServerConfig,
    SourceConfig,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from proxy.config.sections.files import ca_file, certificate
from proxy.config.sockets import keepalive_count, keepalive_seconds, parse_source, source_mismatch, user_timeout
from proxy.config.units import SocketAddress


def upstream(reader: Reader, name: str, node: yaml.Node) -> UpstreamConfig | None:
    what = f"upstream {name!r}"
    fields = reader.mapping(node, what, UPSTREAM.keys)
    if not isinstance(node, yaml.MappingNode):
        return None
    options = {**reader.inherited(UPSTREAM.parsers), **reader.options(fields, UPSTREAM)}
    if "servers" not in fields and "discover" not in fields:
        reader.error(node, f"{what} has no 'servers:' list (nor 'discover:')")
        return None
    servers: list[ServerConfig] = []
    if "servers" in fields:
        servers_node = fields["servers"][1]
        listed = (server(reader, item) for item in reader.sequence(servers_node, "servers"))
        servers = [s for s in listed if not isinstance(s, Invalid)]
        if isinstance(servers_node, yaml.SequenceNode) and not servers_node.value:
            reader.error(servers_node, f"{what} has an empty server list")
        if not servers:
            return None
    elif "discover" not in options:
        return None
    tcp_only(reader, fields, _TCP_KEYS, what, [s.address for s in servers])
    source = options.get("source")
    if source is not None:
        source_family(reader, fields["source"][1], source, [s.address for s in servers if s.source is None])
    tls = options.get("tls")
    if tls is not None and tls.verify and tls.server_name is None and any(s.address.is_unix for s in servers):
        message = "TLS to a UNIX socket server needs 'server_name:', the name its certificate is checked for"
        reader.error(fields["tls"][0], f"{what}: {message}")
    return UpstreamConfig(name=name, servers=tuple(servers), **options)


def server(reader: Reader, node: yaml.Node) -> ServerConfig | Invalid:
    if not isinstance(node, yaml.MappingNode):
        address = reader.address(node, "server", listener=False)
        return address if isinstance(address, Invalid) else ServerConfig(address)
    fields = reader.fields_with(node, "server", SERVER, "address", "server needs an 'address:'")
    if fields is None:
        return INVALID
    built = reader.built(node, fields, SERVER, ServerConfig)
    if not isinstance(built, Invalid) and built.source is not None:
        tcp_only(reader, fields, ("source",), "server", [built.address])
        source_family(reader, fields["source"][1], built.source, [built.address])
    if (
        not isinstance(built, Invalid)
        and built.resolve is not None
        and (built.address.is_unix or built.address.is_literal)
    ):
        reader.error(
            fields["resolve"][1], f"resolve: {built.resolve} needs a server named by a DNS name, not {built.address}"
        )
        return INVALID
    return built


def tcp_only(reader: Reader, fields: Fields, keys: tuple[str, ...], what: str, addresses: list[SocketAddress]) -> None:
    """Report the TCP socket options `fields` gives where one of `addresses` is a UNIX socket."""
    unix = next((address for address in addresses if address.is_unix), None)
    for key in keys:
        if key in fields and unix is not None:
            reader.error(fields[key][0], f"{what}: {key} applies to TCP only, and {unix} is a UNIX socket")


def source_family(reader: Reader, node: yaml.Node, source: SourceConfig, addresses: list[SocketAddress]) -> None:
    """Report a source of the other IP family than a server's address (a name is checked when resolved)."""
    for address in addresses:
        if (mismatch := source_mismatch(source, address)) is not None:
            reader.error(node, mismatch)
            return


def keepalive(reader: Reader, node: yaml.Node, what: str) -> KeepaliveConfig | Invalid | None:
    """`true` (the kernel's times), `false` (none), or `{idle: 60s, interval: 10s, count: 6}`."""
    if isinstance(node, yaml.MappingNode):
        return reader.built(node, reader.mapping(node, what, KEEPALIVE.keys), KEEPALIVE, KeepaliveConfig)
    value = reader.scalar(node, what)
    if isinstance(value, bool):
        return KeepaliveConfig() if value else None
    if not isinstance(value, Invalid):
        reader.error(node, f"{what}: must be true, false or {{idle: 60s, interval: 10s, count: 6}}, got {value!r}")
    return INVALID


def health_check(reader: Reader, node: yaml.Node, what: str) -> HealthCheckConfig | Invalid:
    return reader.built(node, reader.mapping(node, what, HEALTH_CHECK.keys), HEALTH_CHECK, HealthCheckConfig)


def upstream_tls(reader: Reader, node: yaml.Node, what: str) -> UpstreamTlsConfig | Invalid:
    fields = reader.mapping(node, what, UPSTREAM_TLS.keys)
    if not isinstance(node, yaml.MappingNode):
        return INVALID
    options = reader.options(fields, UPSTREAM_TLS)
    client_cert = certificate(reader, node, fields) if "cert" in fields or "key" in fields else None
    if isinstance(client_cert, Invalid) or not reader.all_valid(options, fields, UPSTREAM_TLS):
        return INVALID
    if not options.get("verify", True):
        reader.warn(fields["verify"][1], "verify: false accepts any server certificate")
    return UpstreamTlsConfig(client_cert=client_cert, **options)


# -- servers from DNS (docs/discovery.md) --------------------------------------------------

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def dns_name(reader: Reader, node: yaml.Node, what: str) -> str | Invalid:
    """A DNS name to look up (letters, digits, `-` and `_`, as SRV names have), in lower case."""

    def parse(value: Any) -> str:
        name = value.lower().rstrip(".") if isinstance(value, str) else ""
        if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in name.split(".")):
            raise ValueError(f"{value!r} is not a DNS name")
        return name

    return reader.parsed(node, what, parse)


def discover(reader: Reader, node: yaml.Node, what: str) -> DiscoverConfig | Invalid:
    fields = reader.fields_with(node, what, DISCOVER, "srv", f"{what} needs 'srv:', the SRV name to follow")
    return INVALID if fields is None else reader.built(node, fields, DISCOVER, DiscoverConfig)


def _upstream_address(reader: Reader, node: yaml.Node, key: str) -> SocketAddress | Invalid:
    return reader.address(node, key, listener=False)


def _user_timeout(reader: Reader, node: yaml.Node, key: str) -> float | Invalid:
    return reader.parsed(node, key, user_timeout)


def _source(reader: Reader, node: yaml.Node, key: str) -> SourceConfig | Invalid:
    return reader.parsed(node, key, parse_source)


UPSTREAM = Section(
    {
        "balance": lambda reader, node, key: reader.choice(node, key, BALANCE_STRATEGIES),
        "connect_timeout": Reader.timeout,
        "retries": lambda reader, node, key: reader.integer(node, key, 0),
        "proxy_protocol": lambda reader, node, key: reader.choice(node, key, PROXY_PROTOCOL_VERSIONS),
        "health_check": health_check,
        "tls": upstream_tls,
        "keepalive": keepalive,
        "user_timeout": _user_timeout,
        "source": _source,
        "discover": discover,
        "max_servers": lambda reader, node, key: reader.integer(node, key, 1, MAX_MAX_SERVERS),
    },
    by_hand=("servers",),
)
_TCP_KEYS = ("keepalive", "user_timeout", "source")  # the keys that mean nothing to a UNIX socket
SERVER = Section(
    {
        "address": _upstream_address,
        "weight": at_least_one,
        "backup": Reader.boolean,
        "resolve": lambda reader, node, key: reader.choice(node, key, RESOLVE_MODES),
        "source": _source,
    }
)
KEEPALIVE = Section(
    {
        "idle": lambda reader, node, key: reader.parsed(node, key, keepalive_seconds),
        "interval": lambda reader, node, key: reader.parsed(node, key, keepalive_seconds),
        "count": lambda reader, node, key: reader.parsed(node, key, keepalive_count),
    }
)
DISCOVER = Section({"srv": dns_name})
HEALTH_CHECK = Section(
    {"interval": Reader.timeout, "timeout": Reader.timeout, "rise": at_least_one, "fall": at_least_one}
)
UPSTREAM_TLS = Section(
    {"ca": ca_file, "server_name": Reader.sni_name, "verify": Reader.boolean}, by_hand=("cert", "key")
)
