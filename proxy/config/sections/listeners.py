"""The `listeners:` section: each listener, its socket file, its TLS, its routes and their matches.

A route names an upstream of `upstreams:` or gives an address, which makes a one-server
upstream of its own (with the upstream defaults). The checks across listeners (address
clashes, routes that never match, ...) are in proxy/config/checks.py.
"""

from __future__ import annotations

import grp
import pwd
import re
from dataclasses import replace
from typing import Any

import yaml

from proxy.config.checks import Bound, ListenerPlaces, listener_warnings
from proxy.config.reader import INVALID, Fields, Invalid, Reader, Section, at_least_one
from proxy.config.schema import (
    MATCH_PROTOCOLS,
    MAX_PREFIX,
    ListenerConfig,
    ListenerTlsConfig,
    MatchConfig,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
)
from proxy.config.sections.files import ca_file, certificate
from proxy.config.sections.inspection import dump_only, faults, pcap
from proxy.config.sections.upstreams import UPSTREAM, tcp_only
from proxy.config.sockets import MAX_BACKLOG, somaxconn
from proxy.config.units import IPNetwork, SocketAddress, did_you_mean, parse_address, whole_number


def listener(reader: Reader, node: yaml.Node) -> ListenerConfig | None:
    fields = reader.fields_with(node, "listener", LISTENER, "listen", "listener needs a 'listen:' address")
    if fields is None:
        return None
    listen = reader.address(fields["listen"][1], "listen", listener=True)
    options = {"name": None, **reader.inherited(LISTENER.parsers), **reader.options(fields, LISTENER)}
    if "accept_proxy_protocol" in options:
        options["accept_proxy_protocol"], options["proxy_trusted"] = options["accept_proxy_protocol"]
    routes = listener_routes(reader, node, fields)
    if isinstance(listen, Invalid):
        return None
    listen = socket_file(reader, listen, fields)
    if listen.is_unix:
        unix_client_rules(reader, fields, routes or [])
        tcp_only(reader, fields, ("keepalive", "user_timeout"), "listener", [listen])
    reader.bound.append(Bound(reader.place(node), options["name"], listen))
    if routes is None:
        return None
    listener = ListenerConfig(listen=listen, routes=tuple(route for _, route in routes), **options)
    places = ListenerPlaces(
        listener=reader.place(node),
        routes=tuple(reader.place(item) for item, _ in routes),
        allow_or_deny=reader.place(fields.get("allow", fields.get("deny", (node, node)))[1]),
        accept_proxy_protocol=reader.place(fields.get("accept_proxy_protocol", (node, node))[0]),
        dump_only=reader.place(fields["dump_only"][1]) if "dump_only" in fields else None,
    )
    for finding in listener_warnings(listener, places, reader.names):
        reader.report(finding)
    if "peek_timeout" in fields and not any(route.match.reads_first_bytes for route in listener.routes):
        why = "no route matches on the first bytes (protocol, alpn, host, prefix), so none are waited for"
        reader.warn(fields["peek_timeout"][0], f"peek_timeout: {why}")
    return listener


def socket_file(reader: Reader, listen: SocketAddress, fields: Fields) -> SocketAddress:
    """`listen` with the `mode`, `owner` and `group` its socket file gets (reported unless it is one)."""
    given = [key for key in _SOCKET_FILE_KEYS if key in fields]
    if not given:
        return listen
    if not listen.is_unix or listen.abstract:
        what = "an abstract UNIX socket has no file" if listen.is_unix else f"{listen} is not a UNIX socket"
        for key in given:
            reader.error(fields[key][0], f"{key} applies to a listener on a socket file (unix:/PATH): {what}")
        return listen
    values = {"mode": file_mode, "owner": account, "group": account}
    found = {key: values[key](reader, fields[key][1], key) for key in given}
    return replace(listen, **{key: value for key, value in found.items() if not isinstance(value, Invalid)})


def file_mode(reader: Reader, node: yaml.Node, what: str) -> int | Invalid:
    """Octal, as chmod reads it: `"0660"`, `0660` or `660`."""

    def parse(value: Any) -> int:
        # From the text as written: YAML would read 0660 as octal but 660 as decimal.
        if isinstance(node, yaml.ScalarNode) and _OCTAL_MODE.match(node.value):
            return int(node.value, 8)
        raise ValueError(f'must be an octal file mode such as "0660", got {value!r}')

    return reader.parsed(node, what, parse)


def account(reader: Reader, node: yaml.Node, what: str) -> int | Invalid:
    """A user (`owner`) or group (`group`) by name or number, as the id the system knows it by."""
    lookup, kind = (pwd.getpwnam, "user") if what == "owner" else (grp.getgrnam, "group")

    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and (number := whole_number(value)) is not None:
            return number
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a {kind} name or number, got {value!r}")
        try:
            entry = lookup(value)
        except KeyError:
            raise ValueError(f"no {kind} named {value!r} on this system") from None
        return entry[2]

    return reader.parsed(node, what, parse)


def unix_client_rules(reader: Reader, fields: Fields, routes: list[tuple[yaml.Node, RouteConfig]]) -> None:
    """Report the rules that need a client's IP address: a UNIX socket's clients have none."""
    why = "clients of a UNIX socket listener have no IP address"
    for key in ("allow", "deny"):
        if key in fields:
            reader.error(fields[key][0], f"{key}: {why}; use the socket file's mode, owner and group")
    proxy_node = fields.get("accept_proxy_protocol", (None, None))[1]
    if isinstance(proxy_node, yaml.MappingNode):
        reader.error(proxy_node, f"accept_proxy_protocol: trusted: {why} to trust")
    for item, route in routes:
        if route.match.source:
            reader.error(item, f"route matches on source, but {why}")


def backlog(reader: Reader, node: yaml.Node, what: str) -> int | Invalid:
    """The listen backlog; above net.core.somaxconn it is kept, with a warning: the kernel takes somaxconn."""
    value = reader.integer(node, what, 1, MAX_BACKLOG)
    cap = somaxconn()
    if not isinstance(value, Invalid) and cap is not None and value > cap:
        reader.warn(node, f"{what}: {value} is above net.core.somaxconn ({cap}): the kernel takes {cap}")
    return value


def listener_routes(reader: Reader, node: yaml.Node, fields: Fields) -> list[tuple[yaml.Node, RouteConfig]] | None:
    """The valid routes of a listener, each with its node: from `upstream:` (one route) or `routes:`."""
    if "upstream" in fields and "routes" in fields:
        reader.error(fields["routes"][0], "give either 'upstream:' or 'routes:' on a listener, not both")
        return None
    if "upstream" in fields:
        upstream = route_target(reader, fields["upstream"][1])
        return None if isinstance(upstream, Invalid) else [(node, RouteConfig(upstream))]
    if "routes" not in fields:
        reader.error(node, "listener needs 'upstream:' or 'routes:'")
        return None
    routes_node = fields["routes"][1]
    routes = []
    for item in reader.sequence(routes_node, "routes"):
        read = route(reader, item)
        if not isinstance(read, Invalid):
            routes.append((item, read))
    if isinstance(routes_node, yaml.SequenceNode) and not routes_node.value:
        reader.error(routes_node, "routes is empty: every client would be refused")
    return routes or None


def route(reader: Reader, node: yaml.Node) -> RouteConfig | Invalid:
    fields = reader.fields_with(node, "route", ROUTE, "upstream", "route needs an 'upstream:'")
    if fields is None:
        return INVALID
    options = reader.options(fields, ROUTE)
    upstream = route_target(reader, fields["upstream"][1])
    if isinstance(upstream, Invalid) or not reader.all_valid(options, fields, ROUTE):
        return INVALID
    return RouteConfig(upstream=upstream, **options)


def match(reader: Reader, node: yaml.Node, what: str) -> MatchConfig:
    """The conditions of a route; invalid ones are reported and left out."""
    return MatchConfig(**reader.options(reader.mapping(node, what, MATCH.keys), MATCH))


def protocols(reader: Reader, node: yaml.Node, what: str) -> tuple[str, ...]:
    """`match.protocol`: one name of MATCH_PROTOCOLS or a list of them."""
    names = (reader.choice(item, what, MATCH_PROTOCOLS) for item in reader.items(node, what))
    return tuple(dict.fromkeys(name for name in names if not isinstance(name, Invalid)))


def alpn_names(reader: Reader, node: yaml.Node, what: str) -> tuple[str, ...]:
    """`match.alpn`: ALPN protocol names (RFC 7301: 1 to 255 bytes), one or a list.

    Printable ASCII only: a terminating listener hands them to `SSLContext.set_alpn_protocols`,
    which cannot encode anything else, and every registered name is."""

    def parse(value: Any) -> str:
        if not isinstance(value, str) or not 1 <= len(value.encode()) <= 255:
            raise ValueError(f"must be an ALPN protocol name such as h2 or acme-tls/1, got {value!r}")
        if not (value.isascii() and value.isprintable()):
            raise ValueError(f"{value!r}: an ALPN protocol name here is printable ASCII, such as h2 or acme-tls/1")
        return value

    names = (reader.parsed(item, what, parse) for item in reader.items(node, what))
    return tuple(dict.fromkeys(name for name in names if not isinstance(name, Invalid)))


def prefixes(reader: Reader, node: yaml.Node, what: str) -> tuple[bytes, ...]:
    """`match.prefix`: text, or `hex:` and hex digits, that the stream starts with; one or a list."""

    def parse(value: Any) -> bytes:
        if not isinstance(value, str) or not value:
            raise ValueError(f'must be text or "hex:..." bytes, got {value!r}')
        if value.startswith("hex:"):
            try:
                data = bytes.fromhex(value.removeprefix("hex:"))
            except ValueError:
                raise ValueError(f"{value!r}: hex: takes pairs of hex digits, such as hex:16030100") from None
        else:
            data = value.encode()
        if not data or len(data) > MAX_PREFIX:
            raise ValueError(f"a prefix is 1 to {MAX_PREFIX} bytes, got {len(data)}")
        return data

    found = (reader.parsed(item, what, parse) for item in reader.items(node, what))
    return tuple(dict.fromkeys(data for data in found if not isinstance(data, Invalid)))


def route_target(reader: Reader, node: yaml.Node) -> str | Invalid:
    """The upstream name a route uses; an address names a one-server upstream, kept in `reader.inline`."""
    value = reader.scalar(node, "upstream")
    if isinstance(value, Invalid):
        return INVALID
    name = str(value)
    if name in reader.upstreams:
        return name
    if name in reader.declared:
        return INVALID  # defined but invalid: its own errors are reported already
    if not (isinstance(value, int) or ":" in name):
        reader.error(node, f"upstream {name!r} is not defined{did_you_mean(name, reader.declared)}")
        return INVALID
    try:
        address = parse_address(value, allow_port_zero=False, base_dir=str(reader.base_dir))
    except ValueError as exc:
        reader.error(node, f"upstream: {exc}")
        return INVALID
    key = str(address)
    if key not in reader.upstreams and key not in reader.inline:
        options = reader.inherited(UPSTREAM.parsers)
        reader.inline[key] = UpstreamConfig(name=key, servers=(ServerConfig(address),), **options)
    return key


def proxy_protocol(reader: Reader, node: yaml.Node, what: str) -> tuple[bool, tuple[IPNetwork, ...] | None] | Invalid:
    """(accepted, trusted peers or None) from `true`, `false` or `{trusted: [CIDR, ...]}`."""
    if isinstance(node, yaml.MappingNode):
        fields = reader.mapping(node, what, ("trusted",))
        if "trusted" not in fields:
            reader.error(node, f"{what} needs 'trusted:', the addresses of the proxies in front")
            return INVALID
        trusted_node = fields["trusted"][1]
        if isinstance(trusted_node, yaml.SequenceNode) and not trusted_node.value:
            reader.error(trusted_node, "trusted is empty: no client could connect")
            return INVALID
        return True, reader.networks(trusted_node, "trusted")
    forms = "must be true, false or {trusted: [...]}"
    if isinstance(node, yaml.SequenceNode):
        reader.error(node, f"{what}: {forms}, got a list")
        return INVALID
    value = reader.scalar(node, what)
    if isinstance(value, bool):
        return value, None
    if not isinstance(value, Invalid):
        reader.error(node, f"{what}: {forms}, got {value!r}")
    return INVALID


def listener_tls(reader: Reader, node: yaml.Node, what: str) -> ListenerTlsConfig | Invalid:
    fields = reader.mapping(node, what, LISTENER_TLS.keys)
    if not isinstance(node, yaml.MappingNode):
        return INVALID
    options = reader.options(fields, LISTENER_TLS)
    default = certificate(reader, node, fields, served=True)
    others = []
    if "certificates" in fields:
        for item in reader.sequence(fields["certificates"][1], "certificates"):
            other = certificate(reader, item, reader.mapping(item, "certificate", ("cert", "key")), served=True)
            if not isinstance(other, Invalid):
                others.append(other)
    if isinstance(default, Invalid) or not reader.all_valid(options, fields, LISTENER_TLS):
        return INVALID
    return ListenerTlsConfig(default, others=tuple(others), **options)


LISTENER = Section(
    {
        "name": Reader.name,
        "allow": Reader.networks,
        "deny": Reader.networks,
        "accept_proxy_protocol": proxy_protocol,  # sets proxy_trusted too
        "tls": listener_tls,
        "idle_timeout": Reader.idle_timeout,
        "connect_timeout": Reader.timeout,
        "peek_timeout": Reader.timeout,
        "max_connections": at_least_one,
        "buffer_size": Reader.size,
        "hexdump": Reader.boolean,
        "pcap": pcap,
        "snaplen": Reader.size,
        "dump_only": dump_only,
        "faults": faults,
        "backlog": backlog,
        "keepalive": UPSTREAM.parsers["keepalive"],
        "user_timeout": UPSTREAM.parsers["user_timeout"],
    },
    by_hand=("listen", "upstream", "routes", "mode", "owner", "group"),
)
_SOCKET_FILE_KEYS = ("mode", "owner", "group")  # a listener's by-hand keys that go into its UnixAddress
_OCTAL_MODE = re.compile(r"0?[0-7]{3,4}\Z")
LISTENER_TLS = Section({"client_ca": ca_file}, by_hand=("cert", "key", "certificates"))
ROUTE = Section(
    {
        "name": Reader.name,
        "match": match,
        **{key: LISTENER.parsers[key] for key in ("hexdump", "pcap", "snaplen", "dump_only", "faults")},
    },
    by_hand=("upstream",),
)
MATCH = Section(
    {
        "sni": Reader.sni_patterns,
        "source": Reader.networks,
        "protocol": protocols,
        "alpn": alpn_names,
        "host": Reader.sni_patterns,  # the same names as SNI's, exact or *. wildcards
        "prefix": prefixes,
    }
)
