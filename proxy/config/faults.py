"""Toxics as people write them: Toxiproxy's types, keys and units in, a FaultConfig out (and back).

Shared by the YAML loader (one key at a time, so each error is located), the command line's
`--fault TYPE:KEY=VALUE,...` and the run-time `fault add`. Every mistake is a ValueError with a
message for people, with a did-you-mean for misspelt types and keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from proxy.config.schema import FAULT_STREAMS, FaultConfig
from proxy.config.units import did_you_mean, parse_duration, parse_size

# Each type's own keys (besides `stream` and `toxicity`), Toxiproxy's names.
FAULT_KEYS: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slicer": ("average_size", "size_variation", "delay"),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "limit_data": ("bytes",),
}
FAULT_TYPES = tuple(FAULT_KEYS)
Faults = tuple[FaultConfig, ...]
COMMON_KEYS = ("stream", "toxicity")
# Keys without which the toxic would mean nothing (a rate of 0, slices of 0 bytes).
_REQUIRED = {"bandwidth": "rate", "slicer": "average_size", "limit_data": "bytes"}
_EXAMPLE = "latency:latency=100ms,stream=downstream"


def parse_fault_type(value: object) -> str:
    if value not in FAULT_KEYS:
        types = ", ".join(FAULT_TYPES)
        raise ValueError(f"unknown fault type {value!r}{did_you_mean(str(value), FAULT_TYPES)}; types: {types}")
    return str(value)


def check_fault_key(kind: str, key: str) -> None:
    """ValueError when `key` is not a key of toxics of type `kind`."""
    keys = (*FAULT_KEYS[kind], *COMMON_KEYS)
    if key not in keys:
        raise ValueError(f"unknown key {key!r} for a {kind} fault{did_you_mean(key, keys)}; keys: {', '.join(keys)}")


def parse_fault_value(key: str, value: object) -> object:
    """The value of `key` in the schema's unit: seconds, bytes, bytes per second, a chance."""
    return _VALUE_PARSERS[key](value)


def make_fault(kind: str, values: Mapping[str, object]) -> FaultConfig:
    """A toxic of type `kind` from parsed `values`; ValueError when a key it needs is missing."""
    required = _REQUIRED.get(kind)
    if required is not None and required not in values:
        raise ValueError(f"a {kind} fault needs {required!r}")
    fault = FaultConfig(kind, **values)  # type: ignore[arg-type]
    if fault.type == "slicer" and fault.size_variation >= fault.average_size:
        raise ValueError("size_variation must be below average_size (a slice has at least one byte)")
    return fault


def parse_fault(text: str) -> FaultConfig:
    """`TYPE:KEY=VALUE,...` (e.g. `latency:latency=100ms,stream=downstream`), as `--fault` takes it."""
    kind, _, rest = text.strip().partition(":")
    kind = parse_fault_type(kind.strip())
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not value:
            raise ValueError(f"fault {text!r}: {item!r} is not KEY=VALUE (e.g. {_EXAMPLE})")
        check_fault_key(kind, key)
        if key in values:
            raise ValueError(f"fault {text!r}: {key!r} is given twice")
        try:
            values[key] = parse_fault_value(key, value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return make_fault(kind, values)


def format_fault(fault: FaultConfig) -> str:
    """The fault as `parse_fault` reads it back, with every key of its type spelt out."""
    keys = (*FAULT_KEYS[fault.type], "stream")
    items = [f"{key}={_FORMATTERS.get(key, str)(getattr(fault, key))}" for key in keys]
    if fault.toxicity != 1.0:
        items.append(f"toxicity={fault.toxicity:g}")
    return f"{fault.type}:{','.join(items)}"


def fault_names(faults: Faults) -> str:
    """`latency,slicer`: the types of `faults`, each once, in order (for the access line)."""
    return ",".join(dict.fromkeys(fault.type for fault in faults))


def _duration(value: object) -> float:
    return parse_duration(value)  # type: ignore[arg-type]


def _size(value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)  # from the command line: a bare number of bytes
    return parse_size(value)  # type: ignore[arg-type]


def _positive_size(value: object) -> int:
    size = _size(value)
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return size


def _stream(value: object) -> str:
    if value not in FAULT_STREAMS:
        raise ValueError(f"{value!r} is not upstream or downstream{did_you_mean(str(value), FAULT_STREAMS)}")
    return str(value)


def _toxicity(value: object) -> float:
    try:
        chance = float(value) if not isinstance(value, bool) else -1.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        chance = -1.0
    if not 0.0 <= chance <= 1.0:
        raise ValueError(f"must be a chance from 0 to 1, got {value!r}")
    return chance


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


_VALUE_PARSERS: dict[str, Callable[[object], object]] = {
    "latency": _duration,
    "jitter": _duration,
    "delay": _duration,
    "timeout": _duration,
    "rate": _positive_size,
    "average_size": _positive_size,
    "size_variation": _size,
    "bytes": _size,
    "stream": _stream,
    "toxicity": _toxicity,
}
_FORMATTERS: dict[str, Callable[[object], str]] = {
    "latency": _seconds,  # type: ignore[dict-item]
    "jitter": _seconds,  # type: ignore[dict-item]
    "delay": _seconds,  # type: ignore[dict-item]
    "timeout": _seconds,  # type: ignore[dict-item]
}
