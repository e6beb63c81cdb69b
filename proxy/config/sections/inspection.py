"""What a listener or route inspects: its capture (`pcap:`), its dump filters (`dump_only:`) and
its toxics (`faults:`); the first two are read under `defaults:` too.
"""

from __future__ import annotations

from typing import Any

import yaml

from proxy.config.checks import OutputFile
from proxy.config.dumping import parse_dump_condition
from proxy.config.faults import check_fault_key, make_fault, parse_fault_type, parse_fault_value
from proxy.config.reader import INVALID, Fields, Invalid, Reader, Section
from proxy.config.schema import MAX_PCAP_KEEP, MIN_PCAP_MAX_SIZE, DumpCondition, FaultConfig, PcapConfig
from proxy.config.sections.files import output_path


def pcap(reader: Reader, node: yaml.Node, what: str) -> PcapConfig | Invalid:
    """`pcap: PATH` or `pcap: {file: PATH, max_size: SIZE, keep: N}`."""
    fields: Fields | None = {}
    if isinstance(node, yaml.MappingNode):
        fields = reader.fields_with(node, what, PCAP, "file", f"{what} needs 'file:', the capture's path")
        if fields is None:
            return INVALID
    path_node = fields["file"][1] if fields else node
    path = output_path(reader, path_node, "file" if fields else what)
    options = reader.options(fields, PCAP)
    if isinstance(path, Invalid) or not reader.all_valid(options, fields, PCAP):
        return INVALID
    if path == "-" and "max_size" in options:
        reader.error(fields["max_size"][0], "max_size: rotation needs a file, not '-' (standard output)")
        return INVALID
    if "keep" in options and "max_size" not in options:
        reader.error(fields["keep"][0], "keep: needs max_size (files are only rotated by size)")
        return INVALID
    pcap = PcapConfig(path, **options)
    if path == "-":
        reader.stdout_capture = reader.stdout_capture or reader.place(path_node)
    else:
        reader.outputs.append(OutputFile.capture(pcap, reader.place(path_node)))
    return pcap


def dump_only(reader: Reader, node: yaml.Node, what: str) -> tuple[DumpCondition, ...]:
    """Filters such as `client=10.0.0.0/8`, each once; invalid ones are reported and left out."""

    def parse(value: Any) -> DumpCondition:
        if not isinstance(value, str):
            raise ValueError(f"expected a filter such as 'client=10.0.0.0/8', got {value!r}")
        return parse_dump_condition(value)

    found = (reader.parsed(item, what, parse) for item in reader.items(node, what))
    return tuple(dict.fromkeys(condition for condition in found if not isinstance(condition, Invalid)))


def faults(reader: Reader, node: yaml.Node, what: str) -> tuple[FaultConfig, ...]:
    """Toxics such as `{type: latency, latency: 100ms}`; invalid ones are reported and left out."""
    found = (fault(reader, item) for item in reader.sequence(node, what))
    return tuple(dict.fromkeys(toxic for toxic in found if not isinstance(toxic, Invalid)))


def fault(reader: Reader, node: yaml.Node) -> FaultConfig | Invalid:
    fields = reader.mapping(node, "fault", any_name=True)
    if not isinstance(node, yaml.MappingNode):
        return INVALID
    if "type" not in fields:
        reader.error(node, "fault needs a 'type:' (latency, bandwidth, slicer, slow_close, timeout, ...)")
        return INVALID
    kind = reader.parsed(fields.pop("type")[1], "type", parse_fault_type)
    if isinstance(kind, Invalid):
        return INVALID
    values, valid = {}, True
    for key, (key_node, value_node) in fields.items():
        try:
            check_fault_key(kind, key)
        except ValueError as exc:
            reader.error(key_node, str(exc))
            valid = False
            continue
        value = reader.parsed(value_node, key, lambda value, key=key: parse_fault_value(key, value))
        valid = valid and not isinstance(value, Invalid)
        values[key] = value
    if not valid:
        return INVALID
    try:
        return make_fault(kind, values)
    except ValueError as exc:
        reader.error(node, str(exc))
        return INVALID


PCAP = Section(
    {
        "max_size": lambda reader, node, key: reader.size(node, key, MIN_PCAP_MAX_SIZE),
        "keep": lambda reader, node, key: reader.integer(node, key, 1, MAX_PCAP_KEEP),
    },
    by_hand=("file",),
)
