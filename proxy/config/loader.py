"""The YAML route table loader: text in, the schema's frozen dataclasses (or every error) out.

The loader walks PyYAML's node tree (not plain dicts) so that every error carries the
FILE:LINE:COLUMN of the node at fault, and it reports all errors of a file in one pass.
Whatever the file holds, the outcome is a table or a ConfigError: nothing of PyYAML's
constructors runs but the plain scalar ones, nesting and alias expansion are bounded while the
tree is composed (so the work grows with the file's size), and merge keys are applied here.
Each kind of mapping has a `Section`: its keys, each with the parser that reads it into the
schema's field of that name. The checks across the whole table are in proxy/config/checks.py.
This is the only module that imports yaml.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as schema_fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from proxy.config.certificates import CertificatePair, certificate_names, check_ca_file, check_certificate
from proxy.config.checks import (
    ADMIN_SOCKET,
    HEX_DUMP,
    Bound,
    Finding,
    ListenerPlaces,
    OutputFile,
    Place,
    listener_clashes,
    listener_warnings,
    output_clashes,
    standard_output_clash,
    unused_upstreams,
)
from proxy.config.dumping import parse_dump_condition
from proxy.config.faults import check_fault_key, make_fault, parse_fault_type, parse_fault_value
from proxy.config.schema import (
    BALANCE_STRATEGIES,
    MAX_NAME_LENGTH,
    MAX_PCAP_KEEP,
    MIN_MAX_BUFFERED,
    MIN_PCAP_MAX_SIZE,
    PROXY_PROTOCOL_VERSIONS,
    AdminConfig,
    Config,
    DumpCondition,
    FaultConfig,
    HealthCheckConfig,
    ListenerConfig,
    ListenerTlsConfig,
    MatchConfig,
    PcapConfig,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from proxy.config.units import (
    IPNetwork,
    SocketAddress,
    canonical_network,
    did_you_mean,
    parse_address,
    parse_duration,
    parse_positive_duration,
    parse_size,
    whole_number,
)
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
    reader = _Reader(source, path.parent)
    found: str | Invalid | None = None
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in reader.merged(root, 0):
            if key_node.value == "admin":
                fields = reader.mapping(value_node, "admin", ADMIN.keys)
                if "socket" in fields:
                    found = reader.socket_path(fields["socket"][1], "socket")
    if reader.errors:
        raise ConfigError(reader.errors)
    return found if isinstance(found, str) else None


def _path_problem(text: str) -> str | None:
    """Why `text` can name no file, or None."""
    if "\0" in text:
        return "holds a NUL character"
    try:
        os.fsencode(text)
    except UnicodeEncodeError:  # YAML's "\ud800": a character the file system's encoding has no bytes for
        return "holds a lone surrogate, which no file name can"
    return None


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
    reader = _Reader(source, base_dir or Path.cwd())
    config = reader.config(root)
    if reader.errors or config is None:
        raise ConfigError(reader.errors or [f"{source}:1:1: no configuration"])
    return LoadedConfig(config, tuple(reader.warnings), tuple(reader.outputs))


# The schema needs seven levels; a limit keeps PyYAML's recursive composer far from Python's.
MAX_NESTING = 64
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL
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


class Invalid:
    """The type of INVALID: what a reader gives for a value it has already reported as an error."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID = Invalid()

T = TypeVar("T")
Fields = dict[str, tuple[yaml.Node, yaml.Node]]  # key -> (key node, value node)


class _Reader:
    """Walks the YAML node tree, building dataclasses and collecting every located error."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self._errors: list[tuple[int, int, str]] = []
        self._warnings: list[tuple[int, int, str]] = []
        self.defaults: dict[str, Any] = {}  # the valid values under `defaults:`
        self.declared: set[str] = set()  # upstream names in the file, valid or not
        self.upstreams: dict[str, UpstreamConfig] = {}  # the valid ones, read before any route
        self.bound: list[Bound] = []  # each listener's own name and address, for the clash check
        self.inline: dict[str, UpstreamConfig] = {}  # the one-server upstreams that routes name by address
        self.names: dict[str, list[str]] = {}  # the DNS names of each served certificate file, read once
        self.stdout_capture: Place | None = None  # the first `pcap: "-"`, where a clash on stdout is reported
        self.outputs: list[OutputFile] = []  # every file the table writes, where it is written
        self._constructor = yaml.constructor.SafeConstructor()

    # -- reporting -----------------------------------------------------------------------

    def place(self, node: yaml.Node) -> Place:
        return Place(node.start_mark.line, node.start_mark.column, self.source)

    def error(self, node: yaml.Node, message: str) -> None:
        self.report(Finding(self.place(node), message))

    def warn(self, node: yaml.Node, message: str) -> None:
        self.report(Finding(self.place(node), message, warning=True))

    def report(self, finding: Finding) -> None:
        at = finding.place
        if finding.warning:
            self._warnings.append((at.line, at.column, f"{at}: warning: {finding.message}"))
        else:
            self._errors.append((at.line, at.column, f"{at}: {finding.message}"))

    @property
    def errors(self) -> list[str]:
        """Every error once (a node used through several aliases is read as often), in the order of the file."""
        return [message for *_, message in sorted(set(self._errors))]

    @property
    def warnings(self) -> list[str]:
        return [message for *_, message in sorted(set(self._warnings))]

    # -- shapes --------------------------------------------------------------------------

    def mapping(
        self,
        node: yaml.Node,
        what: str,
        keys: Collection[str] = (),
        *,
        any_name: bool = False,
        user_prefix: str | None = None,
    ) -> Fields:
        """The keys of a mapping, merge keys applied, reporting unknown and repeated keys.

        Known keys are `keys`, every name with `any_name`, and names starting with `user_prefix`.
        """
        self.check_tag(node, what)
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping of keys, got {self._kind(node)}")
            return {}
        found: Fields = {}
        for key_node, value_node in self.merged(node, 0):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.error(key_node, f"{what} keys must be names")
            elif key in found:
                self.error(key_node, f"{key!r} is given twice in {what}")
            elif any_name or key in keys or (user_prefix is not None and key.startswith(user_prefix)):
                found[key] = (key_node, value_node)
            else:
                self.error(key_node, f"unknown key {key!r} in {what}{did_you_mean(key, keys)}")
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

    def scalar(self, node: yaml.Node, what: str) -> object:
        if not self.check_tag(node, what):
            return INVALID
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{what} must be a single value, got {self._kind(node)}")
            return INVALID
        construct = _SCALAR_CONSTRUCTORS.get(node.tag)
        if construct is None:  # `<<` or `=` where a value is expected: the text itself
            return node.value
        try:
            return construct(self._constructor, node)
        except (ValueError, KeyError, IndexError, AttributeError, OverflowError):
            self.error(node, f"{what}: {_shortened(node.value)!r} is not a valid {_short_tag(node.tag)}")
            return INVALID

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

    # -- sections ------------------------------------------------------------------------

    def options(self, fields: Fields, section: Section) -> dict[str, Any]:
        """The valid values of the section's table keys that `fields` holds, each read by its parser."""
        values = {}
        for key, parse in section.parsers.items():
            if key in fields:
                value = parse(self, fields[key][1], key)
                if not isinstance(value, Invalid):
                    values[key] = value
        return values

    def fields_with(self, node: yaml.Node, what: str, section: Section, key: str, missing: str) -> Fields | None:
        """The keys of a mapping of `section` that must have `key`; None (reported) if it is no such mapping."""
        fields = self.mapping(node, what, section.keys)
        if not isinstance(node, yaml.MappingNode):
            return None
        if key not in fields:
            self.error(node, missing)
            return None
        return fields

    @staticmethod
    def all_valid(values: dict[str, Any], fields: Fields, section: Section) -> bool:
        return len(values) == sum(key in fields for key in section.parsers)

    def built(self, node: yaml.Node, fields: Fields, section: Section, build: Callable[..., T]) -> T | Invalid:
        """`build` given the section's values, unless the node is no mapping or a value is invalid."""
        values = self.options(fields, section)
        if not isinstance(node, yaml.MappingNode) or not self.all_valid(values, fields, section):
            return INVALID
        return build(**values)

    # -- values --------------------------------------------------------------------------

    def parsed(self, node: yaml.Node, what: str, parse: Callable[[Any], T]) -> T | Invalid:
        value = self.scalar(node, what)
        if isinstance(value, Invalid):
            return INVALID
        try:
            return parse(value)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return INVALID

    def duration(self, node: yaml.Node, what: str) -> float | Invalid:
        return self.parsed(node, what, parse_duration)

    def timeout(self, node: yaml.Node, what: str) -> float | Invalid:
        """A duration above 0: a timer that fires at once would end every attempt."""
        return self.parsed(node, what, parse_positive_duration)

    def idle_timeout(self, node: yaml.Node, what: str) -> float | Invalid:
        seconds = self.duration(node, what)
        if seconds == 0:
            self.warn(node, f"{what}: 0 means no idle timeout: idle connections stay open for ever")
        return seconds

    def size(self, node: yaml.Node, what: str, minimum: int = 1) -> int | Invalid:
        return self.parsed(node, what, lambda value: _at_least(parse_size(value), minimum, "size"))

    def integer(self, node: yaml.Node, what: str, minimum: int, maximum: int | None = None) -> int | Invalid:
        def parse(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be a whole number, got {value!r}")
            if maximum is not None and value > maximum:
                raise ValueError(f"value must be at most {maximum}, got {value}")
            return _at_least(value, minimum, "value")

        return self.parsed(node, what, parse)

    def boolean(self, node: yaml.Node, what: str) -> bool | Invalid:
        def parse(value: Any) -> bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
            return value

        return self.parsed(node, what, parse)

    def text(self, node: yaml.Node, what: str) -> str | Invalid:
        def parse(value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise ValueError(f"must be a non-empty string, got {value!r}")
            return value

        return self.parsed(node, what, parse)

    def name(self, node: yaml.Node, what: str) -> str | Invalid:
        """A listener's or route's name: printable text without spaces, of at most MAX_NAME_LENGTH
        characters. Names are written as they are into logs, the hex dump, captures, metrics and
        `ctl`'s lines, where a newline or a space could end a record and begin a forged one."""
        text = self.text(node, what)
        if isinstance(text, Invalid):
            return INVALID
        if len(text) > MAX_NAME_LENGTH:
            self.error(node, f"{what}: at most {MAX_NAME_LENGTH} characters, got {len(text)}")
            return INVALID
        unfit = next((character for character in text if character.isspace() or not character.isprintable()), None)
        if unfit is not None:
            kind = _UNFIT_KINDS.get(unicodedata.category(unfit), "a character that is not printable")
            self.error(
                node, f"{what}: {text!r} holds U+{ord(unfit):04X} ({kind}); a name is printable text without spaces"
            )
            return INVALID
        return text

    def choice(self, node: yaml.Node, what: str, options: Sequence[str]) -> str | Invalid:
        def parse(value: Any) -> str:
            if value not in options:
                raise ValueError(f"{value!r} is not one of {', '.join(options)}{did_you_mean(str(value), options)}")
            return value

        return self.parsed(node, what, parse)

    def address(self, node: yaml.Node, what: str, *, listener: bool) -> SocketAddress | Invalid:
        """`HOST:PORT`, or `unix:PATH` with a relative PATH taken from the configuration file's folder."""
        base_dir = str(self.base_dir)
        return self.parsed(node, what, lambda value: parse_address(value, allow_port_zero=listener, base_dir=base_dir))

    def file_mode(self, node: yaml.Node, what: str) -> int | Invalid:
        """Octal, as chmod reads it: `"0660"`, `0660` or `660`."""

        def parse(value: Any) -> int:
            # From the text as written: YAML would read 0660 as octal but 660 as decimal.
            if isinstance(node, yaml.ScalarNode) and _OCTAL_MODE.match(node.value):
                return int(node.value, 8)
            raise ValueError(f'must be an octal file mode such as "0660", got {value!r}')

        return self.parsed(node, what, parse)

    def account(self, node: yaml.Node, what: str) -> int | Invalid:
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

        return self.parsed(node, what, parse)

    def networks(self, node: yaml.Node, what: str) -> tuple[IPNetwork, ...]:
        """Addresses and CIDR blocks, IPv4-mapped ones as IPv4, each once."""
        found = (self.parsed(item, what, _network) for item in self.items(node, what))
        return tuple(dict.fromkeys(network for network in found if not isinstance(network, Invalid)))

    def sni_name(self, node: yaml.Node, what: str, *, wildcard: bool = False) -> str | Invalid:
        def parse(value: Any) -> str:
            name = str(value).lower().rstrip(".") if isinstance(value, str) else None
            if not name or not _SNI_PATTERN.match(name) or (name.startswith("*") and not wildcard):
                raise ValueError(f"{value!r} is not a valid server name")
            return name

        return self.parsed(node, what, parse)

    def sni_patterns(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        names = (self.sni_name(item, what, wildcard=True) for item in self.items(node, what))
        return tuple(dict.fromkeys(name for name in names if not isinstance(name, Invalid)))

    def path(self, node: yaml.Node, what: str) -> str | Invalid:
        """A readable regular file, relative to the configuration file's folder.

        Looked at before it is opened: opening a FIFO waits for a writer, and a device may do
        something on open.
        """
        text = self.text(node, what)
        if isinstance(text, Invalid):
            return INVALID
        if "\0" in text:
            self.error(node, f"{what}: cannot read {text!r}: the path holds a NUL character")
            return INVALID
        path = os.path.realpath(self.base_dir / text)
        try:
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                self.error(node, f"{what}: cannot read {text!r}: not a regular file ({_file_kind(mode)})")
                return INVALID
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # readable by us, and never waits
        except OSError as exc:
            self.error(node, f"{what}: cannot read {text!r}: {describe_os_error(exc)}")
            return INVALID
        return path

    def output_path(self, node: yaml.Node, what: str) -> str | Invalid:
        """A file to write, relative to the configuration file's folder; `-` is standard output.

        Not opened here: `check` must not create files, and the serving side opens it.
        """
        text = self.text(node, what)
        if isinstance(text, Invalid):
            return INVALID
        problem = _path_problem(text)
        if problem is not None:
            self.error(node, f"{what}: cannot write {text!r}: the path {problem}")
            return INVALID
        return text if text == "-" else os.path.abspath(self.base_dir / text)

    def pcap(self, node: yaml.Node, what: str) -> PcapConfig | Invalid:
        """`pcap: PATH` or `pcap: {file: PATH, max_size: SIZE, keep: N}`."""
        fields: Fields | None = {}
        if isinstance(node, yaml.MappingNode):
            fields = self.fields_with(node, what, PCAP, "file", f"{what} needs 'file:', the capture's path")
            if fields is None:
                return INVALID
        path_node = fields["file"][1] if fields else node
        path = self.output_path(path_node, "file" if fields else what)
        options = self.options(fields, PCAP)
        if isinstance(path, Invalid) or not self.all_valid(options, fields, PCAP):
            return INVALID
        if path == "-" and "max_size" in options:
            self.error(fields["max_size"][0], "max_size: rotation needs a file, not '-' (standard output)")
            return INVALID
        if "keep" in options and "max_size" not in options:
            self.error(fields["keep"][0], "keep: needs max_size (files are only rotated by size)")
            return INVALID
        pcap = PcapConfig(path, **options)
        if path == "-":
            self.stdout_capture = self.stdout_capture or self.place(path_node)
        else:
            self.outputs.append(OutputFile.capture(pcap, self.place(path_node)))
        return pcap

    def dump_only(self, node: yaml.Node, what: str) -> tuple[DumpCondition, ...]:
        """Filters such as `client=10.0.0.0/8`, each once; invalid ones are reported and left out."""

        def parse(value: Any) -> DumpCondition:
            if not isinstance(value, str):
                raise ValueError(f"expected a filter such as 'client=10.0.0.0/8', got {value!r}")
            return parse_dump_condition(value)

        found = (self.parsed(item, what, parse) for item in self.items(node, what))
        return tuple(dict.fromkeys(condition for condition in found if not isinstance(condition, Invalid)))

    def faults(self, node: yaml.Node, what: str) -> tuple[FaultConfig, ...]:
        """Toxics such as `{type: latency, latency: 100ms}`; invalid ones are reported and left out."""
        found = (self.fault(item) for item in self.sequence(node, what))
        return tuple(dict.fromkeys(fault for fault in found if not isinstance(fault, Invalid)))

    def fault(self, node: yaml.Node) -> FaultConfig | Invalid:
        fields = self.mapping(node, "fault", any_name=True)
        if not isinstance(node, yaml.MappingNode):
            return INVALID
        if "type" not in fields:
            self.error(node, "fault needs a 'type:' (latency, bandwidth, slicer, slow_close, timeout, ...)")
            return INVALID
        kind = self.parsed(fields.pop("type")[1], "type", parse_fault_type)
        if isinstance(kind, Invalid):
            return INVALID
        values, valid = {}, True
        for key, (key_node, value_node) in fields.items():
            try:
                check_fault_key(kind, key)
            except ValueError as exc:
                self.error(key_node, str(exc))
                valid = False
                continue
            value = self.parsed(value_node, key, lambda value, key=key: parse_fault_value(key, value))
            valid = valid and not isinstance(value, Invalid)
            values[key] = value
        if not valid:
            return INVALID
        try:
            return make_fault(kind, values)
        except ValueError as exc:
            self.error(node, str(exc))
            return INVALID

    def certificate(self, node: yaml.Node, fields: Fields, *, served: bool = False) -> CertificatePair | Invalid:
        """cert + key from a mapping, checked to load and to belong together.

        A `served` certificate is shown to clients: the names it is for are read too, for the SNI checks.
        """
        missing = [key for key in ("cert", "key") if key not in fields]
        for key in missing:
            self.error(node, f"TLS needs both 'cert:' and 'key:' (missing {key!r})")
        cert = self.path(fields["cert"][1], "cert") if "cert" in fields else INVALID
        key = self.path(fields["key"][1], "key") if "key" in fields else INVALID
        if isinstance(cert, Invalid) or isinstance(key, Invalid):
            return INVALID
        pair = CertificatePair(cert, key)
        try:
            check_certificate(pair)
            if served:
                self.names[cert] = certificate_names(cert)
        except ValueError as exc:
            self.error(fields["cert"][1], f"cert: {exc}")
            return INVALID
        return pair

    def ca_file(self, node: yaml.Node, what: str) -> str | Invalid:
        path = self.path(node, what)
        if isinstance(path, Invalid):
            return INVALID
        try:
            check_ca_file(path)
        except ValueError as exc:
            self.error(node, f"{what}: {exc}")
            return INVALID
        return path

    def proxy_protocol(self, node: yaml.Node, what: str) -> tuple[bool, tuple[IPNetwork, ...] | None] | Invalid:
        """(accepted, trusted peers or None) from `true`, `false` or `{trusted: [CIDR, ...]}`."""
        if isinstance(node, yaml.MappingNode):
            fields = self.mapping(node, what, ("trusted",))
            if "trusted" not in fields:
                self.error(node, f"{what} needs 'trusted:', the addresses of the proxies in front")
                return INVALID
            trusted_node = fields["trusted"][1]
            if isinstance(trusted_node, yaml.SequenceNode) and not trusted_node.value:
                self.error(trusted_node, "trusted is empty: no client could connect")
                return INVALID
            return True, self.networks(trusted_node, "trusted")
        forms = "must be true, false or {trusted: [...]}"
        if isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what}: {forms}, got a list")
            return INVALID
        value = self.scalar(node, what)
        if isinstance(value, bool):
            return value, None
        if not isinstance(value, Invalid):
            self.error(node, f"{what}: {forms}, got {value!r}")
        return INVALID

    # -- the document --------------------------------------------------------------------

    def config(self, root: yaml.Node | None) -> Config | None:
        if root is None:
            self._errors.append((0, 0, f"{self.source}:1:1: the file is empty; it needs at least 'listeners:'"))
            return None
        # `x-` keys at the top are the user's own, a place for anchors that listeners merge (as in Compose files).
        top = self.mapping(
            root, "the file", ("defaults", "upstreams", "listeners", "dump_file", "admin"), user_prefix="x-"
        )
        if "defaults" in top:
            self.defaults = self.options(self.mapping(top["defaults"][1], "defaults", DEFAULTS.keys), DEFAULTS)
        upstream_places: dict[str, Place] = {}
        if "upstreams" in top:
            for key_node, value_node in self.mapping(top["upstreams"][1], "upstreams", any_name=True).values():
                name = key_node.value
                self.declared.add(name)
                upstream = self.upstream(name, value_node)
                if upstream is not None:
                    self.upstreams[name] = upstream
                    upstream_places[name] = self.place(key_node)
        if "listeners" not in top:
            if isinstance(root, yaml.MappingNode):
                self.error(root, "no 'listeners:' in the file: nothing would be served")
            return None
        listeners = []
        listeners_node = top["listeners"][1]
        if isinstance(listeners_node, yaml.SequenceNode) and not listeners_node.value:
            self.error(listeners_node, "listeners is empty: nothing would be served")
        for item in self.sequence(listeners_node, "listeners"):
            listener = self.listener(item)
            if listener is not None:
                listeners.append(listener)
        for finding in listener_clashes(self.bound):
            self.report(finding)
        dump_file = self.output_path(top["dump_file"][1], "dump_file") if "dump_file" in top else None
        if isinstance(dump_file, str) and dump_file != "-":
            self.outputs.append(OutputFile(HEX_DUMP, dump_file, self.place(top["dump_file"][1])))
        admin = self.admin(top["admin"][1], "admin") if "admin" in top else None
        config = Config(
            listeners=tuple(listeners),
            upstreams={**self.upstreams, **self.inline},
            admin=None if isinstance(admin, Invalid) else admin,
            **_inherited(self.defaults, _CONFIG_FIELDS),
            dump_file=None if isinstance(dump_file, Invalid) else dump_file,
        )
        for finding in unused_upstreams(config, upstream_places):
            self.report(finding)
        clash = standard_output_clash(config)
        if clash is not None and self.stdout_capture is not None:
            self.report(Finding(self.stdout_capture, clash))
        in_the_file = sorted(self.outputs, key=lambda output: output.origin)  # a clash is told where it comes second
        for output, message in output_clashes(in_the_file, file_identity):
            assert isinstance(output.origin, Place)
            self.report(Finding(output.origin, message))
        return config

    def admin(self, node: yaml.Node, what: str) -> AdminConfig | Invalid:
        return self.built(node, self.mapping(node, what, ADMIN.keys), ADMIN, AdminConfig)

    def socket_path(self, node: yaml.Node, what: str) -> str | Invalid:
        """Where the admin socket is to be made, relative to the configuration file's folder, made
        absolute; one of the files the table writes."""
        text = self.text(node, what)
        if isinstance(text, Invalid):
            return INVALID
        problem = _path_problem(text)
        if problem is not None:
            self.error(node, f"{what}: {text!r} {problem}")
            return INVALID
        path = os.path.abspath(self.base_dir / text)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            self.error(node, f"{what}: {path!r} is too long for a UNIX socket (at most {MAX_SOCKET_PATH} bytes)")
            return INVALID
        self.outputs.append(OutputFile(ADMIN_SOCKET, path, self.place(node)))
        return path

    def upstream(self, name: str, node: yaml.Node) -> UpstreamConfig | None:
        what = f"upstream {name!r}"
        fields = self.mapping(node, what, UPSTREAM.keys)
        if not isinstance(node, yaml.MappingNode):
            return None
        options = {**_inherited(self.defaults, UPSTREAM.parsers), **self.options(fields, UPSTREAM)}
        if "servers" not in fields:
            self.error(node, f"{what} has no 'servers:' list")
            return None
        servers_node = fields["servers"][1]
        servers = [s for s in map(self.server, self.sequence(servers_node, "servers")) if not isinstance(s, Invalid)]
        if isinstance(servers_node, yaml.SequenceNode) and not servers_node.value:
            self.error(servers_node, f"{what} has an empty server list")
        if not servers:
            return None
        tls = options.get("tls")
        if tls is not None and tls.verify and tls.server_name is None and any(s.address.is_unix for s in servers):
            message = "TLS to a UNIX socket server needs 'server_name:', the name its certificate is checked for"
            self.error(fields["tls"][0], f"{what}: {message}")
        return UpstreamConfig(name=name, servers=tuple(servers), **options)

    def server(self, node: yaml.Node) -> ServerConfig | Invalid:
        if not isinstance(node, yaml.MappingNode):
            address = self.address(node, "server", listener=False)
            return address if isinstance(address, Invalid) else ServerConfig(address)
        fields = self.fields_with(node, "server", SERVER, "address", "server needs an 'address:'")
        if fields is None:
            return INVALID
        return self.built(node, fields, SERVER, ServerConfig)

    def health_check(self, node: yaml.Node, what: str) -> HealthCheckConfig | Invalid:
        return self.built(node, self.mapping(node, what, HEALTH_CHECK.keys), HEALTH_CHECK, HealthCheckConfig)

    def upstream_tls(self, node: yaml.Node, what: str) -> UpstreamTlsConfig | Invalid:
        fields = self.mapping(node, what, UPSTREAM_TLS.keys)
        if not isinstance(node, yaml.MappingNode):
            return INVALID
        options = self.options(fields, UPSTREAM_TLS)
        client_cert = self.certificate(node, fields) if "cert" in fields or "key" in fields else None
        if isinstance(client_cert, Invalid) or not self.all_valid(options, fields, UPSTREAM_TLS):
            return INVALID
        if not options.get("verify", True):
            self.warn(fields["verify"][1], "verify: false accepts any server certificate")
        return UpstreamTlsConfig(client_cert=client_cert, **options)

    def listener_tls(self, node: yaml.Node, what: str) -> ListenerTlsConfig | Invalid:
        fields = self.mapping(node, what, LISTENER_TLS.keys)
        if not isinstance(node, yaml.MappingNode):
            return INVALID
        options = self.options(fields, LISTENER_TLS)
        certificate = self.certificate(node, fields, served=True)
        others = []
        if "certificates" in fields:
            for item in self.sequence(fields["certificates"][1], "certificates"):
                other = self.certificate(item, self.mapping(item, "certificate", ("cert", "key")), served=True)
                if not isinstance(other, Invalid):
                    others.append(other)
        if isinstance(certificate, Invalid) or not self.all_valid(options, fields, LISTENER_TLS):
            return INVALID
        return ListenerTlsConfig(certificate, others=tuple(others), **options)

    def listener(self, node: yaml.Node) -> ListenerConfig | None:
        fields = self.fields_with(node, "listener", LISTENER, "listen", "listener needs a 'listen:' address")
        if fields is None:
            return None
        listen = self.address(fields["listen"][1], "listen", listener=True)
        options = {"name": None, **_inherited(self.defaults, LISTENER.parsers), **self.options(fields, LISTENER)}
        if "accept_proxy_protocol" in options:
            options["accept_proxy_protocol"], options["proxy_trusted"] = options["accept_proxy_protocol"]
        routes = self.listener_routes(node, fields)
        if isinstance(listen, Invalid):
            return None
        listen = self.socket_file(listen, fields)
        if listen.is_unix:
            self.unix_client_rules(fields, routes or [])
        self.bound.append(Bound(self.place(node), options["name"], listen))
        if routes is None:
            return None
        listener = ListenerConfig(listen=listen, routes=tuple(route for _, route in routes), **options)
        places = ListenerPlaces(
            listener=self.place(node),
            routes=tuple(self.place(item) for item, _ in routes),
            allow_or_deny=self.place(fields.get("allow", fields.get("deny", (node, node)))[1]),
            accept_proxy_protocol=self.place(fields.get("accept_proxy_protocol", (node, node))[0]),
            dump_only=self.place(fields["dump_only"][1]) if "dump_only" in fields else None,
        )
        for finding in listener_warnings(listener, places, self.names):
            self.report(finding)
        return listener

    def socket_file(self, listen: SocketAddress, fields: Fields) -> SocketAddress:
        """`listen` with the `mode`, `owner` and `group` its socket file gets (reported unless it is one)."""
        given = [key for key in _SOCKET_FILE_KEYS if key in fields]
        if not given:
            return listen
        if not listen.is_unix or listen.abstract:
            what = "an abstract UNIX socket has no file" if listen.is_unix else f"{listen} is not a UNIX socket"
            for key in given:
                self.error(fields[key][0], f"{key} applies to a listener on a socket file (unix:/PATH): {what}")
            return listen
        values = {"mode": self.file_mode, "owner": self.account, "group": self.account}
        found = {key: values[key](fields[key][1], key) for key in given}
        return replace(listen, **{key: value for key, value in found.items() if not isinstance(value, Invalid)})

    def unix_client_rules(self, fields: Fields, routes: list[tuple[yaml.Node, RouteConfig]]) -> None:
        """Report the rules that need a client's IP address: a UNIX socket's clients have none."""
        why = "clients of a UNIX socket listener have no IP address"
        for key in ("allow", "deny"):
            if key in fields:
                self.error(fields[key][0], f"{key}: {why}; use the socket file's mode, owner and group")
        proxy_node = fields.get("accept_proxy_protocol", (None, None))[1]
        if isinstance(proxy_node, yaml.MappingNode):
            self.error(proxy_node, f"accept_proxy_protocol: trusted: {why} to trust")
        for item, route in routes:
            if route.match.source:
                self.error(item, f"route matches on source, but {why}")

    def listener_routes(self, node: yaml.Node, fields: Fields) -> list[tuple[yaml.Node, RouteConfig]] | None:
        """The valid routes of a listener, each with its node: from `upstream:` (one route) or `routes:`."""
        if "upstream" in fields and "routes" in fields:
            self.error(fields["routes"][0], "give either 'upstream:' or 'routes:' on a listener, not both")
            return None
        if "upstream" in fields:
            upstream = self.route_target(fields["upstream"][1])
            return None if isinstance(upstream, Invalid) else [(node, RouteConfig(upstream))]
        if "routes" not in fields:
            self.error(node, "listener needs 'upstream:' or 'routes:'")
            return None
        routes_node = fields["routes"][1]
        routes = []
        for item in self.sequence(routes_node, "routes"):
            route = self.route(item)
            if not isinstance(route, Invalid):
                routes.append((item, route))
        if isinstance(routes_node, yaml.SequenceNode) and not routes_node.value:
            self.error(routes_node, "routes is empty: every client would be refused")
        return routes or None

    def route(self, node: yaml.Node) -> RouteConfig | Invalid:
        fields = self.fields_with(node, "route", ROUTE, "upstream", "route needs an 'upstream:'")
        if fields is None:
            return INVALID
        options = self.options(fields, ROUTE)
        upstream = self.route_target(fields["upstream"][1])
        if isinstance(upstream, Invalid) or not self.all_valid(options, fields, ROUTE):
            return INVALID
        return RouteConfig(upstream=upstream, **options)

    def match(self, node: yaml.Node, what: str) -> MatchConfig:
        """The conditions of a route; invalid ones are reported and left out."""
        return MatchConfig(**self.options(self.mapping(node, what, MATCH.keys), MATCH))

    def route_target(self, node: yaml.Node) -> str | Invalid:
        """The upstream name a route uses; an address names a one-server upstream, kept in `self.inline`."""
        value = self.scalar(node, "upstream")
        if isinstance(value, Invalid):
            return INVALID
        name = str(value)
        if name in self.upstreams:
            return name
        if name in self.declared:
            return INVALID  # defined but invalid: its own errors are reported already
        if not (isinstance(value, int) or ":" in name):
            self.error(node, f"upstream {name!r} is not defined{did_you_mean(name, self.declared)}")
            return INVALID
        try:
            address = parse_address(value, allow_port_zero=False, base_dir=str(self.base_dir))
        except ValueError as exc:
            self.error(node, f"upstream: {exc}")
            return INVALID
        key = str(address)
        if key not in self.upstreams and key not in self.inline:
            options = _inherited(self.defaults, UPSTREAM.parsers)
            self.inline[key] = UpstreamConfig(name=key, servers=(ServerConfig(address),), **options)
        return key


_Parser = Callable[[_Reader, yaml.Node, str], Any]


@dataclass(frozen=True)
class Section:
    """The keys of one kind of mapping in the file.

    Each key of `parsers` is read by its parser into the schema's field of the same name (absent,
    the field keeps the dataclass's default); the `by_hand` keys are read by the reader's own code.
    """

    parsers: Mapping[str, _Parser]
    by_hand: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.parsers, *self.by_hand)


def _at_least_one(reader: _Reader, node: yaml.Node, key: str) -> int | Invalid:
    return reader.integer(node, key, 1)


def _upstream_address(reader: _Reader, node: yaml.Node, key: str) -> SocketAddress | Invalid:
    return reader.address(node, key, listener=False)


LISTENER = Section(
    {
        "name": _Reader.name,
        "allow": _Reader.networks,
        "deny": _Reader.networks,
        "accept_proxy_protocol": _Reader.proxy_protocol,  # sets proxy_trusted too
        "tls": _Reader.listener_tls,
        "idle_timeout": _Reader.idle_timeout,
        "connect_timeout": _Reader.timeout,
        "max_connections": _at_least_one,
        "buffer_size": _Reader.size,
        "hexdump": _Reader.boolean,
        "pcap": _Reader.pcap,
        "snaplen": _Reader.size,
        "dump_only": _Reader.dump_only,
        "faults": _Reader.faults,
    },
    by_hand=("listen", "upstream", "routes", "mode", "owner", "group"),
)
_SOCKET_FILE_KEYS = ("mode", "owner", "group")  # a listener's by-hand keys that go into its UnixAddress
_OCTAL_MODE = re.compile(r"0?[0-7]{3,4}\Z")

# What a character a name may not hold is, by its Unicode category, for the error that names it.
_UNFIT_KINDS = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zs": "a space",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
LISTENER_TLS = Section({"client_ca": _Reader.ca_file}, by_hand=("cert", "key", "certificates"))
ROUTE = Section(
    {
        "name": _Reader.name,
        "match": _Reader.match,
        **{key: LISTENER.parsers[key] for key in ("hexdump", "pcap", "snaplen", "dump_only", "faults")},
    },
    by_hand=("upstream",),
)
PCAP = Section(
    {
        "max_size": lambda reader, node, key: reader.size(node, key, MIN_PCAP_MAX_SIZE),
        "keep": lambda reader, node, key: reader.integer(node, key, 1, MAX_PCAP_KEEP),
    },
    by_hand=("file",),
)
MATCH = Section({"sni": _Reader.sni_patterns, "source": _Reader.networks})
UPSTREAM = Section(
    {
        "balance": lambda reader, node, key: reader.choice(node, key, BALANCE_STRATEGIES),
        "connect_timeout": _Reader.timeout,
        "retries": lambda reader, node, key: reader.integer(node, key, 0),
        "proxy_protocol": lambda reader, node, key: reader.choice(node, key, PROXY_PROTOCOL_VERSIONS),
        "health_check": _Reader.health_check,
        "tls": _Reader.upstream_tls,
    },
    by_hand=("servers",),
)
SERVER = Section({"address": _upstream_address, "weight": _at_least_one, "backup": _Reader.boolean})
HEALTH_CHECK = Section(
    {"interval": _Reader.timeout, "timeout": _Reader.timeout, "rise": _at_least_one, "fall": _at_least_one}
)
UPSTREAM_TLS = Section(
    {"ca": _Reader.ca_file, "server_name": _Reader.sni_name, "verify": _Reader.boolean}, by_hand=("cert", "key")
)
ADMIN = Section(
    {"socket": _Reader.socket_path, "http": lambda reader, node, key: reader.address(node, key, listener=True)}
)
# What every listener, upstream or the whole table takes unless it says otherwise.
DEFAULTS = Section(
    {
        **{key: LISTENER.parsers[key] for key in ("connect_timeout", "idle_timeout", "max_connections")},
        **{key: LISTENER.parsers[key] for key in ("buffer_size", "hexdump", "pcap", "snaplen", "dump_only")},
        "max_buffered": lambda reader, node, key: reader.size(node, key, MIN_MAX_BUFFERED),
        "shutdown_grace": _Reader.duration,
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
    "upstream tls": (UPSTREAM_TLS, UpstreamTlsConfig),
    "admin": (ADMIN, AdminConfig),
}
_CONFIG_FIELDS = tuple(field.name for field in schema_fields(Config) if field.name in DEFAULTS.parsers)


def _inherited(defaults: dict[str, Any], keys: Collection[str]) -> dict[str, Any]:
    """The values of `defaults` that something taking `keys` inherits."""
    return {key: value for key, value in defaults.items() if key in keys}


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
