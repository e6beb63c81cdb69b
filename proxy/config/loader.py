"""The YAML route table loader: text in, the schema's frozen dataclasses (or every error) out.

The loader walks PyYAML's node tree (not plain dicts) so that every error carries the
FILE:LINE:COLUMN of the node at fault, and it reports all errors of a file in one pass.
Whatever the file holds, the outcome is a table or a ConfigError: nothing of PyYAML's
constructors runs but the plain scalar ones, nesting and alias expansion are bounded while the
tree is composed (so the work grows with the file's size), and merge keys are applied here.
This is the only module that imports yaml.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.config.certificates import CertificatePair, certificate_names, check_ca_file, check_certificate, name_matches
from proxy.config.schema import (
    BALANCE_STRATEGIES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_BUFFERED,
    DEFAULT_SHUTDOWN_GRACE,
    MIN_MAX_BUFFERED,
    PROXY_PROTOCOL_VERSIONS,
    Config,
    HealthCheckConfig,
    ListenerConfig,
    ListenerTlsConfig,
    MatchConfig,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from proxy.config.units import (
    Address,
    IPNetwork,
    canonical_network,
    parse_address,
    parse_duration,
    parse_positive_duration,
    parse_size,
)
from proxy.errors import UsageError

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
    """Read and validate a route table file; ConfigError lists every mistake found.

    ConfigError is the only exception this raises, whatever the file holds: a reload relies on it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {(exc.strerror or str(exc)).lower()}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError([f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x})"]) from None
    return parse_config(text, str(path), path.parent)


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> LoadedConfig:
    """Validate route table text; `source` names it in messages, `base_dir` anchors relative paths."""
    root = _compose(text, source)
    reader = _Reader(source, base_dir or Path.cwd())
    config = reader.config(root)
    if reader.errors or config is None:
        raise ConfigError(reader.errors or [f"{source}:1:1: no configuration"])
    return LoadedConfig(config, tuple(reader.warnings))


# The schema needs seven levels; a limit keeps PyYAML's recursive composer far from Python's.
MAX_NESTING = 64
# What the tree may hold counting every alias in full: a fixed allowance plus a multiple of the
# text, so that the work of reading a file grows with its size, not with how its aliases nest.
EXPANSION_ALLOWANCE = 20_000
EXPANSION_PER_CHARACTER = 8


class _Refused(yaml.MarkedYAMLError):
    """YAML that is valid but that the loader will not take (too deep, too large, a loop)."""


class _Composer(yaml.SafeLoader):
    """PyYAML's SafeLoader composing nodes, with the limits above and no alias inside its anchor.

    Aliases share nodes, so composing is linear; walking the tree afterwards is not, since a
    shared node is walked once per use. So each anchored node's size when expanded is kept,
    every alias adds its target's size to the total, and the total is bounded.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._expanded = 0
        self._characters = len(text)
        self._budget = EXPANSION_ALLOWANCE + EXPANSION_PER_CHARACTER * len(text)
        self._sizes: dict[int, int] = {}  # id(anchored node) -> its size expanded, once complete

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                size = self._sizes.get(id(node))
                if size is None:
                    problem = f"YAML alias *{event.anchor} refers to a node that contains it"
                    raise _Refused(problem=problem, problem_mark=event.start_mark)
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_NESTING:
            raise _Refused(problem=f"YAML nested deeper than {MAX_NESTING} levels", problem_mark=event.start_mark)
        self._depth += 1
        before = self._expanded
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, nodes: int, mark: yaml.Mark) -> None:
        self._expanded += nodes
        if self._expanded > self._budget:
            raise _Refused(
                problem=f"YAML aliases expand to too much: more than {self._budget} nodes from"
                f" {self._characters} characters",
                problem_mark=mark,
            )


def _compose(text: str, source: str) -> yaml.Node | None:
    """The document's node tree, or ConfigError located at what PyYAML could not take."""
    try:
        composer = _Composer(text)
    except yaml.reader.ReaderError as exc:  # a character YAML forbids, found before any parsing
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - before.rfind("\n")
        message = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise ConfigError([f"{source}:{line}:{column}: YAML syntax error: {message}"]) from None
    try:
        return composer.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}:1:1"
        kind = "" if isinstance(exc, _Refused) else "YAML syntax error: "
        raise ConfigError([f"{where}: {kind}{exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}:1:1: YAML error: {' '.join(str(exc).split())}"]) from None
    finally:
        composer.dispose()


_UPSTREAM_TLS_KEYS = ("ca", "server_name", "verify", "cert", "key")
_LISTENER_TLS_KEYS = ("cert", "key", "client_ca", "certificates")
_SERVER_KEYS = ("address", "weight", "backup")
_ROUTE_KEYS = ("name", "match", "upstream")
_MATCH_KEYS = ("sni", "source")
_SNI_PATTERN = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")


_YAML_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = f"{_YAML_TAG}merge"
# The tags plain YAML gives values, and so the only ones the schema can take; a scalar tagged
# `!!merge` or `!!value` is a `<<` or `=` written where a value goes, and means that text.
_SCALAR_CONSTRUCTORS = {
    f"{_YAML_TAG}{name}": getattr(yaml.constructor.SafeConstructor, f"construct_yaml_{name}")
    for name in ("str", "int", "float", "bool", "null", "timestamp")
}
_PLAIN_TAGS = {
    yaml.ScalarNode: {*_SCALAR_CONSTRUCTORS, _MERGE_TAG, f"{_YAML_TAG}value"},
    yaml.SequenceNode: {f"{_YAML_TAG}seq"},
    yaml.MappingNode: {f"{_YAML_TAG}map"},
}


def _short_tag(tag: str) -> str:
    """A tag as it is written in YAML: `!!int`, `!local`."""
    return f"!!{tag.removeprefix(_YAML_TAG)}" if tag.startswith(_YAML_TAG) else tag


def _shortened(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _key_of(node: yaml.Node) -> object:
    """What makes two mapping keys the same key: the name, or for a key that is no name, the node."""
    return node.value if isinstance(node, yaml.ScalarNode) else id(node)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"))
    kinds += ((stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


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
        """Every error once (a node used through several aliases is read as often), in the order of the file."""
        return [message for *_, message in sorted(set(self._errors))]

    @property
    def warnings(self) -> list[str]:
        return [message for *_, message in sorted(set(self._warnings))]

    # -- shapes --------------------------------------------------------------------------

    def mapping(self, node: yaml.Node, what: str, keys: Collection[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{key: (key node, value node)} of a mapping, merge keys applied, reporting unknown and repeated keys."""
        self.check_tag(node, what)
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping of keys, got {self._kind(node)}")
            return {}
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in self.merged(node, 0):
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

    def merged(self, node: yaml.MappingNode, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """The pairs of a mapping with its merge keys (`<<: *a`, `<<: [*a, *b]`) replaced by what they merge.

        A key given in the mapping itself wins over a merged one, and of merged mappings the first
        wins; a key repeated within one mapping stays repeated, to be reported.
        """
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        sources: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG and isinstance(key_node, yaml.ScalarNode):
                sources.extend(self.merge_sources(value_node))
            else:
                pairs.append((key_node, value_node))
        if sources and depth >= MAX_NESTING:
            self.error(node, f"merge keys nested deeper than {MAX_NESTING} levels")
            return pairs
        taken = {_key_of(key_node) for key_node, _ in pairs}
        for source in sources:
            added = [pair for pair in self.merged(source, depth + 1) if _key_of(pair[0]) not in taken]
            pairs.extend(added)
            taken.update(_key_of(key_node) for key_node, _ in added)
        return pairs

    def merge_sources(self, node: yaml.Node) -> list[yaml.MappingNode]:
        if isinstance(node, yaml.SequenceNode):
            self.check_tag(node, "<<")
        sources = []
        for item in node.value if isinstance(node, yaml.SequenceNode) else [node]:
            if isinstance(item, yaml.MappingNode):
                self.check_tag(item, "<<")
                sources.append(item)
            else:
                self.error(item, f"'<<' merges a mapping or a list of mappings, got {self._kind(item)}")
        return sources

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        self.check_tag(node, what)
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        self.error(node, f"{what} must be a list, got {self._kind(node)}")
        return []

    def items(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        """The items of a list, or a single value as a list of one."""
        return self.sequence(node, what) if isinstance(node, yaml.SequenceNode) else [node]

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not self.check_tag(node, what):
            return _INVALID
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{what} must be a single value, got {self._kind(node)}")
            return _INVALID
        construct = _SCALAR_CONSTRUCTORS.get(node.tag)
        if construct is None:  # `<<` or `=` where a value is expected: the text itself
            return node.value
        try:
            return construct(self._constructor, node)
        except (ValueError, KeyError, IndexError, AttributeError, OverflowError):
            self.error(node, f"{what}: {_shortened(node.value)!r} is not a valid {_short_tag(node.tag)}")
            return _INVALID

    def check_tag(self, node: yaml.Node, what: str) -> bool:
        """False (and an error) for a YAML tag that would give a value no key here takes."""
        if node.tag in _PLAIN_TAGS[type(node)]:
            return True
        self.error(node, f"{what}: unsupported YAML tag {_short_tag(node.tag)!r}")
        return False

    @staticmethod
    def _kind(node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        return repr(_shortened(node.value))

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

    def timeout(self, node: yaml.Node, what: str) -> Any:
        """A duration above 0: a timer that fires at once would end every attempt."""
        return self.parsed(node, what, parse_positive_duration)

    def idle_timeout(self, node: yaml.Node, what: str) -> Any:
        seconds = self.duration(node, what)
        if seconds == 0:
            self.warn(node, f"{what}: 0 means no idle timeout: idle connections stay open for ever")
        return seconds

    def size(self, node: yaml.Node, what: str, minimum: int = 1) -> Any:
        return self.parsed(node, what, lambda value: _at_least(parse_size(value), minimum, "size"))

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
        """Addresses and CIDR blocks, IPv4-mapped ones as IPv4, each once."""
        found = (self.parsed(item, what, _network) for item in self.items(node, what))
        return tuple(dict.fromkeys(network for network in found if network is not _INVALID))

    # -- the document --------------------------------------------------------------------

    def config(self, root: yaml.Node | None) -> Config | None:
        if root is None:
            self._errors.append((0, 0, f"{self.source}:1:1: the file is empty; it needs at least 'listeners:'"))
            return None
        top = self.mapping(root, "the file", _TOP_KEYS)
        defaults = self.defaults(top["defaults"][1]) if "defaults" in top else {}
        upstreams: dict[str, UpstreamConfig] = {}
        upstream_nodes: dict[str, yaml.Node] = {}
        if "upstreams" in top:
            upstreams_node = top["upstreams"][1]
            for key_node, value_node in self.mapping(upstreams_node, "upstreams", _Names((), "")).values():
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
            max_buffered=defaults.get("max_buffered", DEFAULT_MAX_BUFFERED),
        )

    def defaults(self, node: yaml.Node) -> dict[str, Any]:
        return self.options(self.mapping(node, "defaults", _DEFAULT_PARSERS), _DEFAULT_PARSERS)

    def options(self, fields: dict[str, tuple[yaml.Node, yaml.Node]], parsers: dict[str, _Parser]) -> dict[str, Any]:
        """The valid values of the keys that `parsers` reads, each parsed by its own parser."""
        values = {}
        for key, (_, value_node) in fields.items():
            parse = parsers.get(key)
            value = _INVALID if parse is None else parse(self, value_node, key)
            if value is not _INVALID:
                values[key] = value
        return values

    def upstream(self, name: str, node: yaml.Node, defaults: dict[str, Any]) -> UpstreamConfig | None:
        what = f"upstream {name!r}"
        fields = self.mapping(node, what, (*_UPSTREAM_PARSERS, "servers"))
        if not isinstance(node, yaml.MappingNode):
            return None
        options: dict[str, Any] = {"connect_timeout": defaults.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)}
        options.update(self.options(fields, _UPSTREAM_PARSERS))
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

    def health_check(self, node: yaml.Node, what: str) -> Any:
        fields = self.mapping(node, what, _HEALTH_PARSERS)
        values = self.options(fields, _HEALTH_PARSERS)
        if not isinstance(node, yaml.MappingNode) or len(values) < len(fields):
            return _INVALID
        return HealthCheckConfig(**values)

    def path(self, node: yaml.Node, what: str) -> Any:
        """A readable regular file, relative to the configuration file's folder.

        Looked at before it is opened: opening a FIFO waits for a writer, and a device may do
        something on open.
        """
        text = self.text(node, what)
        if text is _INVALID:
            return _INVALID
        if "\0" in text:
            self.error(node, f"{what}: cannot read {text!r}: the path holds a NUL character")
            return _INVALID
        path = os.path.realpath(self.base_dir / text)
        try:
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                self.error(node, f"{what}: cannot read {text!r}: not a regular file ({_file_kind(mode)})")
                return _INVALID
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # readable by us, and never waits
        except OSError as exc:
            self.error(node, f"{what}: cannot read {text!r}: {(exc.strerror or str(exc)).lower()}")
            return _INVALID
        return path

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
        names = (self.sni_name(item, wildcard=True) for item in self.items(node, "sni"))
        return tuple(dict.fromkeys(name for name in names if name is not _INVALID))

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
        options: dict[str, Any] = {key: defaults[key] for key in _LISTENER_PARSERS if key in defaults}
        listen = self.address(fields["listen"][1], "listen", listener=True)
        options.update(self.options(fields, _LISTENER_PARSERS))
        if "accept_proxy_protocol" in options:
            options["accept_proxy_protocol"], options["proxy_trusted"] = options["accept_proxy_protocol"]
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
        if listener.accept_proxy_protocol and listener.proxy_trusted is None and _looks_at_source(listener):
            self.warn(
                fields["accept_proxy_protocol"][0],
                "accept_proxy_protocol: true trusts every peer, so any client can claim any source address"
                " (name the proxies in front with {trusted: [...]})",
            )
        return listener

    def proxy_protocol(self, node: yaml.Node, what: str) -> Any:
        """(accepted, trusted peers or None) from `true`, `false` or `{trusted: [CIDR, ...]}`."""
        if isinstance(node, yaml.MappingNode):
            fields = self.mapping(node, what, ("trusted",))
            if "trusted" not in fields:
                self.error(node, f"{what} needs 'trusted:', the addresses of the proxies in front")
                return _INVALID
            trusted_node = fields["trusted"][1]
            if isinstance(trusted_node, yaml.SequenceNode) and not trusted_node.value:
                self.error(trusted_node, "trusted is empty: no client could connect")
                return _INVALID
            return True, self.networks(trusted_node, "trusted")
        forms = "must be true, false or {trusted: [...]}"
        if isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what}: {forms}, got a list")
            return _INVALID
        value = self.scalar(node, what)
        if isinstance(value, bool):
            return value, None
        if value is not _INVALID:
            self.error(node, f"{what}: {forms}, got {value!r}")
        return _INVALID

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
        coverage = _Coverage()
        for index, (item, route) in enumerate(routes):
            cover = coverage.add(route.match, route.name or f"#{index + 1}")
            if cover is not None:
                self.warn(item, f"this route can never match: route {cover} before it matches all it does")
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
        by_port: dict[int, list[tuple[yaml.Node, Address]]] = {}
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
            same_port = by_port.setdefault(listen.port, [])  # only listeners on one port can clash
            for first_node, first in same_port:
                clash = _clash(first, listen)
                if clash is not None:
                    self.error(node, f"{clash} (first at {self.where(first_node)})")
                    break
            same_port.append((node, listen))


class _Names(tuple):
    """Key names, and besides them every name that starts with `prefix` ("": every name at all)."""

    prefix: str

    def __new__(cls, names: Iterable[str], prefix: str) -> _Names:
        self = super().__new__(cls, names)
        self.prefix = prefix
        return self

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and key.startswith(self.prefix))


# `x-` keys at the top are the user's own, a place for anchors that listeners merge (as in Compose files).
_TOP_KEYS = _Names(("defaults", "upstreams", "listeners"), "x-")

_Parser = Callable[[_Reader, yaml.Node, str], Any]


def _at_least_one(reader: _Reader, node: yaml.Node, key: str) -> Any:
    return reader.integer(node, key, 1)


_DEFAULT_PARSERS: dict[str, _Parser] = {
    "connect_timeout": _Reader.timeout,
    "idle_timeout": _Reader.idle_timeout,
    "max_connections": _at_least_one,
    "buffer_size": _Reader.size,
    "max_buffered": lambda reader, node, key: reader.size(node, key, MIN_MAX_BUFFERED),
    "shutdown_grace": _Reader.duration,
    "hexdump": _Reader.boolean,
}
_UPSTREAM_PARSERS: dict[str, _Parser] = {
    "balance": lambda reader, node, key: reader.choice(node, key, BALANCE_STRATEGIES),
    "connect_timeout": _Reader.timeout,
    "retries": lambda reader, node, key: reader.integer(node, key, 0),
    "proxy_protocol": lambda reader, node, key: reader.choice(node, key, PROXY_PROTOCOL_VERSIONS),
    "health_check": _Reader.health_check,
    "tls": lambda reader, node, _key: reader.upstream_tls(node),
}
_HEALTH_PARSERS: dict[str, _Parser] = {
    "interval": _Reader.timeout,
    "timeout": _Reader.timeout,
    "rise": _at_least_one,
    "fall": _at_least_one,
}
_LISTENER_PARSERS: dict[str, _Parser] = {
    "name": _Reader.text,
    "allow": _Reader.networks,
    "deny": _Reader.networks,
    "accept_proxy_protocol": _Reader.proxy_protocol,
    "tls": lambda reader, node, _key: reader.listener_tls(node),
    "idle_timeout": _Reader.idle_timeout,
    "connect_timeout": _Reader.timeout,
    "max_connections": _at_least_one,
    "buffer_size": _Reader.size,
    "hexdump": _Reader.boolean,
}
_LISTENER_KEYS = (*_LISTENER_PARSERS, "listen", "upstream", "routes")

_INVALID = object()  # a value already reported as an error


def _at_least(value: int, minimum: int, what: str) -> int:
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return value


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f"expected an address or CIDR block such as 10.0.0.0/8, got {value!r}")
    try:
        return canonical_network(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR block") from None


def _network_within(inner: IPNetwork, outers: Iterable[IPNetwork]) -> bool:
    return any(inner.version == outer.version and inner.subnet_of(outer) for outer in outers)


def _leaves_any_source(allow: tuple[IPNetwork, ...], deny: tuple[IPNetwork, ...]) -> bool:
    return any(not _network_within(network, deny) for network in allow)


def _looks_at_source(listener: ListenerConfig) -> bool:
    return listener.allow is not None or bool(listener.deny) or any(route.match.source for route in listener.routes)


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
    if earlier.sni:
        patterns = frozenset(earlier.sni)
        if not (later.sni and all(_sni_covered(name, patterns) for name in later.sni)):
            return False
    if not earlier.source:
        return True
    return bool(later.source) and all(_network_within(network, earlier.source) for network in later.source)
