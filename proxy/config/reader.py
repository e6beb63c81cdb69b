"""The reader of the YAML node tree: shapes, plain values and located errors, for every section.

A `Reader` walks PyYAML's nodes (not plain dicts) so that every error carries the
FILE:LINE:COLUMN of the node at fault, and it collects all errors of a file in one pass. It
reads the shapes (mappings with their merge keys applied, lists, scalars of plain tags only)
and the values every section uses (durations, sizes, whole numbers, names, addresses,
networks, server names). A `Section` is the table of one kind of mapping: each key with the
parser that reads it into the schema's field of that name; the sections themselves are in
proxy/config/sections/. Nothing here runs PyYAML's constructors but the plain scalar ones.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from proxy.config.checks import Bound, Finding, OutputFile, Place
from proxy.config.schema import MAX_NAME_LENGTH, UpstreamConfig
from proxy.config.units import (
    IPNetwork,
    SocketAddress,
    canonical_network,
    did_you_mean,
    parse_address,
    parse_duration,
    parse_positive_duration,
    parse_size,
)

# The schema needs seven levels; a limit keeps PyYAML's recursive composer far from Python's.
MAX_NESTING = 64

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


class Invalid:
    """The type of INVALID: what a reader gives for a value it has already reported as an error."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID = Invalid()

T = TypeVar("T")
Fields = dict[str, tuple[yaml.Node, yaml.Node]]  # key -> (key node, value node)


# What a character a name may not hold is, by its Unicode category, for the error that names it.
_UNFIT_KINDS = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zs": "a space",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


class Reader:
    """Walks the YAML node tree, building dataclasses and collecting every located error.

    It also holds what one reading of a file learns on the way, for the parts read later.
    """

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

    def inherited(self, keys: Collection[str]) -> dict[str, Any]:
        """The values of `defaults:` that something taking `keys` inherits."""
        return {key: value for key, value in self.defaults.items() if key in keys}

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
        return text if self.fit_name(node, what, text) else INVALID

    def fit_name(self, node: yaml.Node, what: str, text: str) -> bool:
        """Whether `text` is printable without spaces, as every name must be; else an error says why."""
        unfit = next((character for character in text if character.isspace() or not character.isprintable()), None)
        if unfit is None:
            return True
        kind = _UNFIT_KINDS.get(unicodedata.category(unfit), "a character that is not printable")
        self.error(node, f"{what}: {text!r} holds U+{ord(unfit):04X} ({kind}); a name is printable text without spaces")
        return False

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


Parser = Callable[[Reader, yaml.Node, str], Any]  # reads one key's value, reporting what is wrong with it


@dataclass(frozen=True)
class Section:
    """The keys of one kind of mapping in the file.

    Each key of `parsers` is read by its parser into the schema's field of the same name (absent,
    the field keeps the dataclass's default); the `by_hand` keys are read by the section's own code.
    """

    parsers: Mapping[str, Parser]
    by_hand: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.parsers, *self.by_hand)


def at_least_one(reader: Reader, node: yaml.Node, key: str) -> int | Invalid:
    return reader.integer(node, key, 1)


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
