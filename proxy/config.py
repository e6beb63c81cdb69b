"""The configuration: its schema as frozen dataclasses, and the YAML route table loader.

There is one schema: `pairproxy forward` builds the same objects a route table file does.
The loader walks PyYAML's node tree (not plain dicts) so that every error carries the
FILE:LINE:COLUMN of the node at fault, and it reports all errors of a file in one pass.
This is the only module that imports yaml.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.errors import UsageError
from proxy.tls import CertificatePair, certificate_names, check_ca_file, check_certificate, name_matches
from proxy.units import Address, IPNetwork, parse_address, parse_duration, parse_size

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
class MatchConfig:
    """Conditions of a route; all given ones must hold. Empty tuples match everything."""

    sni: tuple[str, ...] = ()
    source: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class RouteConfig:
    upstream: str
    match: MatchConfig = MatchConfig()
    name: str | None = None


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


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_buffered: int = DEFAULT_MAX_BUFFERED  # bytes all connections together may hold in buffers


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


# -- loading the YAML route table ---------------------------------------------------------


class ConfigError(UsageError):
    """One or more located configuration errors, one `FILE:LINE:COLUMN: message` per line."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...]


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a route table file; ConfigError lists every mistake found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {(exc.strerror or str(exc)).lower()}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return parse_config(text, str(path), path.parent)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> LoadedConfig:
    """Validate route table text; `source` names it in messages, `base_dir` anchors relative paths."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError([f"{where}: YAML syntax error: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML error: {exc}"]) from None
    reader = _Reader(source, base_dir or Path.cwd())
    config = reader.config(root)
    if reader.errors or config is None:
        raise ConfigError(reader.errors or [f"{source}: no configuration"])
    return LoadedConfig(config, tuple(reader.warnings))


_DEFAULT_KEYS = ("connect_timeout", "idle_timeout", "max_connections", "buffer_size", "shutdown_grace", "hexdump")
_UPSTREAM_KEYS = ("servers", "balance", "connect_timeout", "retries", "proxy_protocol", "health_check", "tls")
_UPSTREAM_TLS_KEYS = ("ca", "server_name", "verify", "cert", "key")
_LISTENER_TLS_KEYS = ("cert", "key", "client_ca", "certificates")
_SERVER_KEYS = ("address", "weight", "backup")
_HEALTH_KEYS = ("interval", "timeout", "rise", "fall")
_LISTENER_KEYS = (
    "name",
    "listen",
    "upstream",
    "routes",
    "allow",
    "deny",
    "accept_proxy_protocol",
    "tls",
    "idle_timeout",
    "connect_timeout",
    "max_connections",
    "buffer_size",
    "hexdump",
)
_ROUTE_KEYS = ("name", "match", "upstream")
_MATCH_KEYS = ("sni", "source")
_SNI_PATTERN = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Reader:
    """Walks the YAML node tree, building dataclasses and collecting every located error."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self._errors: list[tuple[int, int, str]] = []
        self._warnings: list[tuple[int, int, str]] = []
        self.declared: set[str] = set()  # upstream names in the file, valid or not
        self.bound: list[tuple[yaml.Node, str | None, Address]] = []  # each listener's own name and address
        self._constructor = yaml.constructor.SafeConstructor()

    # -- reporting -----------------------------------------------------------------------

    def where(self, node: yaml.Node) -> str:
        mark = node.start_mark
        return f"{self.source}:{mark.line + 1}:{mark.column + 1}"

    def error(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self._errors.append((mark.line, mark.column, f"{self.where(node)}: {message}"))

    def warn(self, node: yaml.Node, message: str) -> None:
        mark = node.start_mark
        self._warnings.append((mark.line, mark.column, f"{self.where(node)}: warning: {message}"))

    @property
    def errors(self) -> list[str]:
        """Every error, in the order of the file."""
        return [message for *_, message in sorted(self._errors)]

    @property
    def warnings(self) -> list[str]:
        return [message for *_, message in sorted(self._warnings)]

    # -- shapes --------------------------------------------------------------------------

    def mapping(self, node: yaml.Node, what: str, keys: Sequence[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{key: (key node, value node)} of a mapping, reporting unknown and repeated keys."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping of keys, got {self._kind(node)}")
            return {}
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.error(key_node, f"{what} keys must be names")
            elif key in found:
                self.error(key_node, f"{key!r} is given twice in {what}")
            elif key in keys:
                found[key] = (key_node, value_node)
            else:
                self.error(key_node, f"unknown key {key!r} in {what}{_did_you_mean(key, keys)}")
        return found

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        self.error(node, f"{what} must be a list, got {self._kind(node)}")
        return []

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{what} must be a single value, got {self._kind(node)}")
            return _INVALID
        return self._constructor.construct_object(node)

    @staticmethod
    def _kind(node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        return repr(node.value)

    # -- values --------------------------------------------------------------------------

    def parsed(self, node: yaml.Node, what: str, parse: Callable[[Any], Any]) -> Any:
        value = self.scalar(node, what)
        if value is _INVALID:
            return _INVALID
        try:
            return parse(value)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return _INVALID

    def duration(self, node: yaml.Node, what: str) -> Any:
        return self.parsed(node, what, parse_duration)

    def size(self, node: yaml.Node, what: str) -> Any:
        return self.parsed(node, what, lambda value: _at_least(parse_size(value), 1, "size"))

    def integer(self, node: yaml.Node, what: str, minimum: int) -> Any:
        def parse(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be a whole number, got {value!r}")
            return _at_least(value, minimum, "value")

        return self.parsed(node, what, parse)

    def boolean(self, node: yaml.Node, what: str) -> Any:
        def parse(value: Any) -> bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
            return value

        return self.parsed(node, what, parse)

    def text(self, node: yaml.Node, what: str) -> Any:
        def parse(value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise ValueError(f"must be a non-empty string, got {value!r}")
            return value

        return self.parsed(node, what, parse)

    def choice(self, node: yaml.Node, what: str, options: Sequence[str]) -> Any:
        def parse(value: Any) -> str:
            if value not in options:
                raise ValueError(f"{value!r} is not one of {', '.join(options)}{_did_you_mean(str(value), options)}")
            return value

        return self.parsed(node, what, parse)

    def address(self, node: yaml.Node, what: str, *, listener: bool) -> Any:
        return self.parsed(node, what, lambda value: parse_address(value, allow_port_zero=listener))

    def networks(self, node: yaml.Node, what: str) -> tuple[IPNetwork, ...]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        found = []
        for item in items:
            network = self.parsed(item, what, _network)
            if network is not _INVALID:
                found.append(network)
        return tuple(found)

    # -- the document --------------------------------------------------------------------

    def config(self, root: yaml.Node | None) -> Config | None:
        if root is None:
            self._errors.append((0, 0, f"{self.source}:1:1: the file is empty; it needs at least 'listeners:'"))
            return None
        top = self.mapping(root, "the file", ("defaults", "upstreams", "listeners"))
        defaults = self.defaults(top["defaults"][1]) if "defaults" in top else {}
        upstreams: dict[str, UpstreamConfig] = {}
        upstream_nodes: dict[str, yaml.Node] = {}
        if "upstreams" in top:
            upstreams_node = top["upstreams"][1]
            for key_node, value_node in self.mapping(upstreams_node, "upstreams", _AnyKey()).values():
                name = key_node.value
                self.declared.add(name)
                upstream = self.upstream(name, value_node, defaults)
                if upstream is not None:
                    upstreams[name] = upstream
                    upstream_nodes[name] = key_node
        if "listeners" not in top:
            if isinstance(root, yaml.MappingNode):
                self.error(root, "no 'listeners:' in the file: nothing would be served")
            return None
        used: set[str] = set()
        listeners = []
        listeners_node = top["listeners"][1]
        if isinstance(listeners_node, yaml.SequenceNode) and not listeners_node.value:
            self.error(listeners_node, "listeners is empty: nothing would be served")
        for item in self.sequence(listeners_node, "listeners"):
            listener = self.listener(item, defaults, upstreams, used)
            if listener is not None:
                listeners.append((item, listener))
        self.check_listeners()
        for name, key_node in upstream_nodes.items():
            if name not in used:
                self.warn(key_node, f"upstream {name!r} is not used by any route")
        return Config(
            listeners=tuple(listener for _, listener in listeners),
            upstreams=upstreams,
            shutdown_grace=defaults.get("shutdown_grace", DEFAULT_SHUTDOWN_GRACE),
        )

    def defaults(self, node: yaml.Node) -> dict[str, Any]:
        fields = self.mapping(node, "defaults", _DEFAULT_KEYS)
        values: dict[str, Any] = {}
        for key, (_, value_node) in fields.items():
            if key in ("connect_timeout", "idle_timeout", "shutdown_grace"):
                value = self.duration(value_node, key)
            elif key == "max_connections":
                value = self.integer(value_node, key, 1)
            elif key == "buffer_size":
                value = self.size(value_node, key)
            else:
                value = self.boolean(value_node, key)
            if value is not _INVALID:
                values[key] = value
        return values

    def upstream(self, name: str, node: yaml.Node, defaults: dict[str, Any]) -> UpstreamConfig | None:
        what = f"upstream {name!r}"
        fields = self.mapping(node, what, _UPSTREAM_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        options: dict[str, Any] = {"connect_timeout": defaults.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)}
        for key, (_, value_node) in fields.items():
            if key == "servers":
                continue
            if key == "balance":
                value = self.choice(value_node, "balance", BALANCE_STRATEGIES)
            elif key == "connect_timeout":
                value = self.duration(value_node, key)
            elif key == "retries":
                value = self.integer(value_node, key, 0)
            elif key == "proxy_protocol":
                value = self.choice(value_node, key, PROXY_PROTOCOL_VERSIONS)
            elif key == "tls":
                value = self.upstream_tls(value_node)
            else:
                value = self.health_check(value_node)
            if value is not _INVALID:
                options[key] = value
        if "servers" not in fields:
            self.error(node, f"{what} has no 'servers:' list")
            return None
        servers_node = fields["servers"][1]
        servers = [s for s in map(self.server, self.sequence(servers_node, "servers")) if s is not None]
        if isinstance(servers_node, yaml.SequenceNode) and not servers_node.value:
            self.error(servers_node, f"{what} has an empty server list")
        if not servers:
            return None
        return UpstreamConfig(name=name, servers=tuple(servers), **options)

    def server(self, node: yaml.Node) -> ServerConfig | None:
        if not isinstance(node, yaml.MappingNode):
            address = self.address(node, "server", listener=False)
            return None if address is _INVALID else ServerConfig(address)
        fields = self.mapping(node, "server", _SERVER_KEYS)
        if "address" not in fields:
            self.error(node, "server needs an 'address:'")
            return None
        address = self.address(fields["address"][1], "address", listener=False)
        weight = self.integer(fields["weight"][1], "weight", 1) if "weight" in fields else 1
        backup = self.boolean(fields["backup"][1], "backup") if "backup" in fields else False
        if _INVALID in (address, weight, backup):
            return None
        return ServerConfig(address, weight, backup)

    def health_check(self, node: yaml.Node) -> Any:
        fields = self.mapping(node, "health_check", _HEALTH_KEYS)
        values: dict[str, Any] = {}
        for key, (_, value_node) in fields.items():
            if key in ("interval", "timeout"):
                values[key] = self.duration(value_node, key)
            else:
                values[key] = self.integer(value_node, key, 1)
        if not isinstance(node, yaml.MappingNode) or _INVALID in values.values():
            return _INVALID
        return HealthCheckConfig(**values)

    def path(self, node: yaml.Node, what: str) -> Any:
        """A readable file, relative to the configuration file's folder."""
        text = self.text(node, what)
        if text is _INVALID:
            return _INVALID
        path = (self.base_dir / text).resolve()
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            self.error(node, f"{what}: cannot read {text!r}: {(exc.strerror or str(exc)).lower()}")
            return _INVALID
        return str(path)

    def certificate(self, node: yaml.Node, fields: dict[str, tuple[yaml.Node, yaml.Node]]) -> Any:
        """cert + key from a mapping, checked to load and to belong together."""
        missing = [key for key in ("cert", "key") if key not in fields]
        for key in missing:
            self.error(node, f"TLS needs both 'cert:' and 'key:' (missing {key!r})")
        cert = self.path(fields["cert"][1], "cert") if "cert" in fields else _INVALID
        key = self.path(fields["key"][1], "key") if "key" in fields else _INVALID
        if _INVALID in (cert, key):
            return _INVALID
        pair = CertificatePair(cert, key)
        try:
            check_certificate(pair)
        except ValueError as exc:
            self.error(fields["cert"][1], f"cert: {exc}")
            return _INVALID
        return pair

    def ca_file(self, node: yaml.Node, what: str) -> Any:
        path = self.path(node, what)
        if path is _INVALID:
            return _INVALID
        try:
            check_ca_file(path)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return _INVALID
        return path

    def listener_tls(self, node: yaml.Node) -> Any:
        fields = self.mapping(node, "tls", _LISTENER_TLS_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return _INVALID
        certificate = self.certificate(node, fields)
        client_ca = self.ca_file(fields["client_ca"][1], "client_ca") if "client_ca" in fields else None
        others = []
        if "certificates" in fields:
            for item in self.sequence(fields["certificates"][1], "certificates"):
                other = self.certificate(item, self.mapping(item, "certificate", ("cert", "key")))
                if other is not _INVALID:
                    others.append(other)
        if _INVALID in (certificate, client_ca):
            return _INVALID
        return ListenerTlsConfig(certificate, client_ca, tuple(others))

    def upstream_tls(self, node: yaml.Node) -> Any:
        fields = self.mapping(node, "tls", _UPSTREAM_TLS_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return _INVALID
        ca = self.ca_file(fields["ca"][1], "ca") if "ca" in fields else None
        server_name = self.sni_name(fields["server_name"][1]) if "server_name" in fields else None
        verify = self.boolean(fields["verify"][1], "verify") if "verify" in fields else True
        client_cert = None
        if "cert" in fields or "key" in fields:
            client_cert = self.certificate(node, fields)
        if _INVALID in (ca, server_name, verify, client_cert):
            return _INVALID
        if not verify:
            self.warn(fields["verify"][1], "verify: false accepts any server certificate")
        return UpstreamTlsConfig(ca, server_name, verify, client_cert)

    def sni_name(self, node: yaml.Node, *, wildcard: bool = False) -> Any:
        def parse(value: Any) -> str:
            name = str(value).lower().rstrip(".") if isinstance(value, str) else None
            if not name or not _SNI_PATTERN.match(name) or (name.startswith("*") and not wildcard):
                raise ValueError(f"{value!r} is not a valid server name")
            return name

        return self.parsed(node, "sni" if wildcard else "server_name", parse)

    def sni_patterns(self, node: yaml.Node) -> tuple[str, ...]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        names = (self.sni_name(item, wildcard=True) for item in items)
        return tuple(name for name in names if name is not _INVALID)

    def check_sni_coverage(self, listener: ListenerConfig, routes_node: yaml.Node) -> None:
        tls = listener.tls
        names = [name.lower() for pair in (tls.certificate, *tls.others) for name in certificate_names(pair.cert)]
        items = routes_node.value if isinstance(routes_node, yaml.SequenceNode) else []
        if len(items) != len(listener.routes):
            items = [routes_node] * len(listener.routes)
        for route, item in zip(listener.routes, items, strict=True):
            for pattern in route.match.sni:
                exact = not pattern.startswith("*.")
                if not any(name == pattern or (exact and name_matches(name, pattern)) for name in names):
                    self.warn(item, f"sni {pattern!r} is not covered by the listener's certificates")

    def listener(
        self, node: yaml.Node, defaults: dict[str, Any], upstreams: dict[str, UpstreamConfig], used: set[str]
    ) -> ListenerConfig | None:
        fields = self.mapping(node, "listener", _LISTENER_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        if "listen" not in fields:
            self.error(node, "listener needs a 'listen:' address")
            return None
        options: dict[str, Any] = {
            key: defaults[key]
            for key in ("idle_timeout", "connect_timeout", "max_connections", "buffer_size", "hexdump")
            if key in defaults
        }
        listen = self.address(fields["listen"][1], "listen", listener=True)
        for key, (_, value_node) in fields.items():
            if key in ("listen", "upstream", "routes"):
                continue
            if key == "name":
                value = self.text(value_node, key)
            elif key in ("idle_timeout", "connect_timeout"):
                value = self.duration(value_node, key)
            elif key == "max_connections":
                value = self.integer(value_node, key, 1)
            elif key == "buffer_size":
                value = self.size(value_node, key)
            elif key in ("hexdump", "accept_proxy_protocol"):
                value = self.boolean(value_node, key)
            elif key == "tls":
                value = self.listener_tls(value_node)
            else:
                value = self.networks(value_node, key)
            if value is not _INVALID:
                options[key] = value
        routes = self.listener_routes(node, fields, defaults, upstreams, used)
        if listen is _INVALID:
            return None
        self.bound.append((node, options.get("name"), listen))
        if routes is None:
            return None
        listener = ListenerConfig(name=options.pop("name", None), listen=listen, routes=routes, **options)
        if listener.tls is not None:
            self.check_sni_coverage(listener, fields["routes"][1] if "routes" in fields else node)
        if listener.allow is not None and not _leaves_any_source(listener.allow, listener.deny):
            self.warn(
                fields.get("allow", fields.get("deny", (node, node)))[1], "allow and deny leave no source allowed"
            )
        return listener

    def listener_routes(
        self,
        node: yaml.Node,
        fields: dict[str, tuple[yaml.Node, yaml.Node]],
        defaults: dict[str, Any],
        upstreams: dict[str, UpstreamConfig],
        used: set[str],
    ) -> tuple[RouteConfig, ...] | None:
        if "upstream" in fields and "routes" in fields:
            self.error(fields["routes"][0], "give either 'upstream:' or 'routes:' on a listener, not both")
            return None
        if "upstream" in fields:
            upstream = self.route_target(fields["upstream"][1], defaults, upstreams, used)
            return None if upstream is None else (RouteConfig(upstream),)
        if "routes" not in fields:
            self.error(node, "listener needs 'upstream:' or 'routes:'")
            return None
        routes: list[tuple[yaml.Node, RouteConfig]] = []
        for item in self.sequence(fields["routes"][1], "routes"):
            route = self.route(item, defaults, upstreams, used)
            if route is not None:
                routes.append((item, route))
        if isinstance(fields["routes"][1], yaml.SequenceNode) and not fields["routes"][1].value:
            self.error(fields["routes"][1], "routes is empty: every client would be refused")
        for index, (item, route) in enumerate(routes):
            for earlier_index, (_, earlier) in enumerate(routes[:index]):
                if _covers(earlier.match, route.match):
                    label = earlier.name or f"#{earlier_index + 1}"
                    self.warn(item, f"this route can never match: route {label} before it matches all it does")
                    break
        return tuple(route for _, route in routes) if routes else None

    def route(
        self, node: yaml.Node, defaults: dict[str, Any], upstreams: dict[str, UpstreamConfig], used: set[str]
    ) -> RouteConfig | None:
        fields = self.mapping(node, "route", _ROUTE_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        if "upstream" not in fields:
            self.error(node, "route needs an 'upstream:'")
            return None
        name = self.text(fields["name"][1], "name") if "name" in fields else None
        match = MatchConfig()
        if "match" in fields:
            match_fields = self.mapping(fields["match"][1], "match", _MATCH_KEYS)
            source = self.networks(match_fields["source"][1], "source") if "source" in match_fields else ()
            sni = self.sni_patterns(match_fields["sni"][1]) if "sni" in match_fields else ()
            match = MatchConfig(sni=sni, source=source)
        upstream = self.route_target(fields["upstream"][1], defaults, upstreams, used)
        if upstream is None or name is _INVALID:
            return None
        return RouteConfig(upstream=upstream, match=match, name=name)

    def route_target(
        self, node: yaml.Node, defaults: dict[str, Any], upstreams: dict[str, UpstreamConfig], used: set[str]
    ) -> str | None:
        """The upstream name a route uses; an address makes a one-server upstream named after it."""
        value = self.scalar(node, "upstream")
        if value is _INVALID:
            return None
        name = str(value)
        if name in upstreams:
            used.add(name)
            return name
        if name in self.declared:
            used.add(name)
            return None  # defined but invalid: its own errors are reported already
        if isinstance(value, int) or ":" in name:
            try:
                address = parse_address(value, allow_port_zero=False)
            except ValueError as exc:
                self.error(node, f"upstream: {exc}")
                return None
            key = str(address)
            if key not in upstreams:
                upstreams[key] = UpstreamConfig(
                    name=key,
                    servers=(ServerConfig(address),),
                    connect_timeout=defaults.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
                )
            return key
        self.error(node, f"upstream {name!r} is not defined{_did_you_mean(name, self.declared)}")
        return None

    def check_listeners(self) -> None:
        """Names must be unique; no two listeners may want the same port on the same address."""
        names: dict[str, yaml.Node] = {}
        addresses: list[tuple[yaml.Node, Address]] = []
        for node, given_name, listen in self.bound:
            name = given_name or str(listen)
            if name not in names:
                names[name] = node
            elif given_name is None and listen.port == 0:
                self.error(
                    node,
                    f"two listeners on {listen} without a 'name:': give listeners on port 0 distinct names"
                    f" (first at {self.where(names[name])})",
                )
            else:
                self.error(node, f"listener name {name!r} is used twice (first at {self.where(names[name])})")
            if listen.port == 0:
                continue
            for first_node, first in addresses:
                clash = _clash(first, listen)
                if clash is not None:
                    self.error(node, f"{clash} (first at {self.where(first_node)})")
                    break
            addresses.append((node, listen))


class _AnyKey(tuple):
    """The key set that admits every name (upstream names are the user's own)."""

    def __contains__(self, key: object) -> bool:
        return True


_INVALID = object()  # a value already reported as an error


def _at_least(value: int, minimum: int, what: str) -> int:
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return value


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"expected an address or CIDR block such as 10.0.0.0/8, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR block") from None


def _network_within(inner: IPNetwork, outers: Iterable[IPNetwork]) -> bool:
    return any(inner.version == outer.version and inner.subnet_of(outer) for outer in outers)


def _leaves_any_source(allow: tuple[IPNetwork, ...], deny: tuple[IPNetwork, ...]) -> bool:
    return any(not _network_within(network, deny) for network in allow)


def _clash(first: Address, later: Address) -> str | None:
    """Why two listeners cannot both bind, or None when they can (or cannot be told without DNS).

    A wildcard takes the port on every address of its family, and `[::]` is dual-stack (Linux's
    default, which the server keeps), so it takes every IPv4 address too.
    """
    if first.port != later.port:
        return None
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


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a listener host is, an IPv4-mapped IPv6 one as IPv4; None for a host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


def _sni_covers(earlier: str, later: str) -> bool:
    """True when every name the `later` pattern matches, the `earlier` one matches too."""
    if later.startswith("*."):
        return earlier == later
    return name_matches(earlier, later)


def _covers(earlier: MatchConfig, later: MatchConfig) -> bool:
    """True when every client that `later` matches is taken by `earlier` first."""
    if earlier.sni and not (later.sni and all(any(_sni_covers(e, n) for e in earlier.sni) for n in later.sni)):
        return False
    if not earlier.source:
        return True
    return bool(later.source) and all(_network_within(network, earlier.source) for network in later.source)
