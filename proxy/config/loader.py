"""The YAML route table loader: text in, the schema's frozen dataclasses (or every error) out.

Whatever the file holds, the outcome is a table or a ConfigError: nothing of PyYAML's
constructors runs but the plain scalar ones, and nesting and alias expansion are bounded while
the tree is composed here (so the work grows with the file's size). A `Reader`
(proxy/config/reader.py) then walks the tree, every error located at its node; each part of
the table is read by its section in proxy/config/sections/, and the whole table is assembled
here, top-level keys and `defaults:` included. The checks across the whole table are in
proxy/config/checks.py. Only this module, the reader and the sections import yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as schema_fields
from pathlib import Path
from typing import Any

import yaml

from proxy.config.checks import (
    HEX_DUMP,
    Finding,
    OutputFile,
    Place,
    listener_clashes,
    output_clashes,
    standard_output_clash,
    unused_upstreams,
)
from proxy.config.reader import MAX_NESTING, Invalid, Reader, Section
from proxy.config.schema import (
    MIN_MAX_BUFFERED,
    AdminConfig,
    Config,
    DiscoverConfig,
    HealthCheckConfig,
    KeepaliveConfig,
    ListenerConfig,
    ListenerTlsConfig,
    MatchConfig,
    PcapConfig,
    ResolversConfig,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from proxy.config.sections.admin import ADMIN, admin, socket_path
from proxy.config.sections.files import output_path
from proxy.config.sections.inspection import PCAP
from proxy.config.sections.listeners import LISTENER, LISTENER_TLS, MATCH, ROUTE, listener
from proxy.config.sections.resolvers import RESOLVERS, resolvers
from proxy.config.sections.upstreams import DISCOVER, HEALTH_CHECK, KEEPALIVE, SERVER, UPSTREAM, UPSTREAM_TLS, upstream
from proxy.errors import UsageError, describe_os_error
from proxy.output import file_identity

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
    outputs: tuple[OutputFile, ...] = ()  # the files the table writes, for the checks with the flags


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a route table file; ConfigError lists every mistake found.

    ConfigError is the only exception this raises, whatever the file holds: a reload relies on it.
    """
    path = Path(path)
    return parse_config(_read_text(path), str(path), path.parent)


def load_admin_socket(path: str | Path) -> str | None:
    """Only `admin.socket` of a route table file, for `pairproxy ctl`: the rest is not looked at,
    so a file broken elsewhere (being edited, before a `reload`) still names its socket.
    ConfigError when that part itself is wrong."""
    path = Path(path)
    source = str(path)
    root = _compose(_read_text(path), source)
    reader = Reader(source, path.parent)
    found: str | Invalid | None = None
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in reader.merged(root, 0):
            if key_node.value == "admin":
                fields = reader.mapping(value_node, "admin", ADMIN.keys)
                if "socket" in fields:
                    found = socket_path(reader, fields["socket"][1], "socket")
    if reader.errors:
        raise ConfigError(reader.errors)
    return found if isinstance(found, str) else None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {describe_os_error(exc)}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError([f"{path}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x})"]) from None
    return text


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> LoadedConfig:
    """Validate route table text; `source` names it in messages, `base_dir` anchors relative paths."""
    root = _compose(text, source)
    reader = Reader(source, base_dir or Path.cwd())
    config = _table(reader, root)
    if reader.errors or config is None:
        raise ConfigError(reader.errors or [f"{source}:1:1: no configuration"])
    return LoadedConfig(config, tuple(reader.warnings), tuple(reader.outputs))


# What the tree may hold counting every alias in full: a fixed allowance plus a multiple of the
# text, so that the work of reading a file grows with its size, not with how its aliases nest.
EXPANSION_ALLOWANCE = 20_000
EXPANSION_PER_CHARACTER = 8


class _Refused(yaml.MarkedYAMLError):
    """YAML that is valid but that the loader will not take (too deep, too large, a loop)."""


class _Composer(yaml.SafeLoader):
    """PyYAML's SafeLoader composing nodes, with MAX_NESTING, the limits above and no alias inside its anchor.

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


def _table(reader: Reader, root: yaml.Node | None) -> Config | None:
    """The whole table from the document's root: its top-level keys, then the checks across its parts."""
    if root is None:
        reader.report(Finding(Place(0, 0, reader.source), "the file is empty; it needs at least 'listeners:'"))
        return None
    # `x-` keys at the top are the user's own, a place for anchors that listeners merge (as in Compose files).
    top = reader.mapping(
        root, "the file", ("defaults", "upstreams", "listeners", "dump_file", "admin", "resolvers"), user_prefix="x-"
    )
    if "defaults" in top:
        reader.defaults = reader.options(reader.mapping(top["defaults"][1], "defaults", DEFAULTS.keys), DEFAULTS)
    upstream_places: dict[str, Place] = {}
    if "upstreams" in top:
        for key_node, value_node in reader.mapping(top["upstreams"][1], "upstreams", any_name=True).values():
            name = key_node.value
            reader.declared.add(name)
            if not reader.fit_name(key_node, "upstream name", name):
                continue
            read = upstream(reader, name, value_node)
            if read is not None:
                reader.upstreams[name] = read
                upstream_places[name] = reader.place(key_node)
    if "listeners" not in top:
        if isinstance(root, yaml.MappingNode):
            reader.error(root, "no 'listeners:' in the file: nothing would be served")
        return None
    listeners = []
    listeners_node = top["listeners"][1]
    if isinstance(listeners_node, yaml.SequenceNode) and not listeners_node.value:
        reader.error(listeners_node, "listeners is empty: nothing would be served")
    for item in reader.sequence(listeners_node, "listeners"):
        read = listener(reader, item)
        if read is not None:
            listeners.append(read)
    for finding in listener_clashes(reader.bound):
        reader.report(finding)
    dump_file = output_path(reader, top["dump_file"][1], "dump_file") if "dump_file" in top else None
    if isinstance(dump_file, str) and dump_file != "-":
        reader.outputs.append(OutputFile(HEX_DUMP, dump_file, reader.place(top["dump_file"][1])))
    admin_config = admin(reader, top["admin"][1], "admin") if "admin" in top else None
    resolvers_config = resolvers(reader, top["resolvers"][1], "resolvers") if "resolvers" in top else None
    config = Config(
        listeners=tuple(listeners),
        upstreams={**reader.upstreams, **reader.inline},
        admin=None if isinstance(admin_config, Invalid) else admin_config,
        **reader.inherited(_CONFIG_FIELDS),
        dump_file=None if isinstance(dump_file, Invalid) else dump_file,
        **(
            {} if resolvers_config is None or isinstance(resolvers_config, Invalid) else {"resolvers": resolvers_config}
        ),
    )
    for finding in unused_upstreams(config, upstream_places):
        reader.report(finding)
    clash = standard_output_clash(config)
    if clash is not None and reader.stdout_capture is not None:
        reader.report(Finding(reader.stdout_capture, clash))
    in_the_file = sorted(reader.outputs, key=lambda output: output.origin)  # a clash is told where it comes second
    for output, message in output_clashes(in_the_file, file_identity):
        assert isinstance(output.origin, Place)
        reader.report(Finding(output.origin, message))
    return config


# What every listener, upstream or the whole table takes unless it says otherwise.
DEFAULTS = Section(
    {
        **{
            key: LISTENER.parsers[key] for key in ("connect_timeout", "idle_timeout", "peek_timeout", "max_connections")
        },
        **{key: LISTENER.parsers[key] for key in ("buffer_size", "hexdump", "pcap", "snaplen", "dump_only")},
        "max_buffered": lambda reader, node, key: reader.size(node, key, MIN_MAX_BUFFERED),
        "shutdown_grace": Reader.duration,
    }
)
# The sections of the file, each with the dataclass its keys are fields of.
SECTIONS: dict[str, tuple[Section, type]] = {
    "listener": (LISTENER, ListenerConfig),
    "listener tls": (LISTENER_TLS, ListenerTlsConfig),
    "route": (ROUTE, RouteConfig),
    "pcap": (PCAP, PcapConfig),
    "match": (MATCH, MatchConfig),
    "upstream": (UPSTREAM, UpstreamConfig),
    "server": (SERVER, ServerConfig),
    "health_check": (HEALTH_CHECK, HealthCheckConfig),
    "keepalive": (KEEPALIVE, KeepaliveConfig),
    "upstream tls": (UPSTREAM_TLS, UpstreamTlsConfig),
    "admin": (ADMIN, AdminConfig),
    "discover": (DISCOVER, DiscoverConfig),
    "resolvers": (RESOLVERS, ResolversConfig),
}
_CONFIG_FIELDS = tuple(field.name for field in schema_fields(Config) if field.name in DEFAULTS.parsers)
