"""The event log for people: logfmt or JSON lines on stderr, and the escaping of every value.

An EventLog is a plain object handed to whoever needs it; nothing here is global. It writes
through an `Output` (proxy/output/queue.py), so a reader that does not keep up never stalls the loop.

No text a client chose reaches a screen raw: logfmt quotes every value holding a character that
is not printable (C0 and C1 controls, DEL, U+2028/U+2029, ...) and escapes it the way a Python
string literal would (`\\x1b`, `\\u2028`, `\\U000e0001`; `\\n`, `\\r`, `\\t` for the usual three),
and JSON lines are pure ASCII with every such character as `\\u001b`. One event is one line.

Every connection writes a line (the access line), so making one is kept cheap: its time is made
once per second and given its milliseconds per line (`Clock`), and its fields are written in one
pass in which a number costs no call and a plain ASCII value one match (`logfmt_pairs`).
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback
from typing import Any, TextIO

from proxy.output import LOG_QUEUE_LIMIT, Output, StreamOutput, output_for

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_LEVEL_NAMES = {name: name.upper() for name in LEVELS}
# json.dumps(record, default=str) would make this encoder anew for every line.
_JSON = json.JSONEncoder(default=str)  # ensure_ascii: every control character is \u-escaped
# Printable ASCII but the space, the quote, "=" and the backslash: logfmt writes such a value bare.
# Most values are (numbers, addresses, names), and one match decides it; any other value goes
# through `logfmt_value`, which says the same for these.
_bare_ascii = re.compile(r"[!#-<>-\[\]-~]+").fullmatch


_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape_text(text: str) -> str:
    """`text` with backslashes, quotes and every character that is not printable escaped."""
    if text.isprintable():
        return text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join([_escape_char(char) for char in text])


def logfmt_value(value: Any) -> str:
    """A value as logfmt writes it: bare when safe, else double-quoted with escapes."""
    text = value if isinstance(value, str) else str(value)
    # isprintable() is False for every control character (and for "\n", "\t"), True for " ".
    if text and text.isprintable() and " " not in text and '"' not in text and "=" not in text and "\\" not in text:
        return text
    return f'"{escape_text(text)}"'


def logfmt_pairs(fields: dict[str, Any]) -> str:
    """`key=value ...` for the fields that are not None, each value as `logfmt_value` writes it."""
    return " ".join(
        [
            f"{key}={value}"
            if value.__class__ is int or (value.__class__ is str and _bare_ascii(value))
            else f"{key}={logfmt_value(value)}"
            for key, value in fields.items()
            if value is not None
        ]
    )


class Clock:
    """The time of a log line as `datetime.now(UTC).isoformat(timespec="milliseconds")` writes
    it (`2026-11-25T10:00:02.410+00:00`), or to the microsecond with `digits=6` as the hex dump
    writes it, without a datetime per line: the date and the time of day are made once per
    second, and each line adds its fraction (truncated, as isoformat does)."""

    __slots__ = ("_second", "_text", "_unit", "_modulus", "_digits")

    def __init__(self, digits: int = 3) -> None:
        self._second = -1
        self._text = ""
        self._unit = 10 ** (9 - digits)  # nanoseconds per shown unit of the fraction
        self._modulus = 10**digits
        self._digits = digits

    def stamp(self, ns: int | None = None) -> str:
        """The time `ns` (nanoseconds since the epoch; now if None) as the log writes it."""
        if ns is None:
            ns = time.time_ns()
        second = ns // 1_000_000_000
        if second != self._second:
            day = time.gmtime(second)
            self._text = (
                f"{day.tm_year:04d}-{day.tm_mon:02d}-{day.tm_mday:02d}"
                f"T{day.tm_hour:02d}:{day.tm_min:02d}:{day.tm_sec:02d}"
            )
            self._second = second
        return f"{self._text}.{ns // self._unit % self._modulus:0{self._digits}d}+00:00"


def _printable_lines(text: str) -> str:
    """Multi-line text (a traceback) with everything but its newlines escaped."""
    return "".join([char if char.isprintable() or char == "\n" else _escape_char(char) for char in text])


class EventLog:
    """Writes one line per event: `TIME LEVEL event key=value ...`, or one JSON object.

    `None` values are left out. With level `debug`, `failure` also writes the traceback.
    Lines go to `stream` (stderr by default) through `self.output`, a bounded queue of
    LOG_QUEUE_LIMIT bytes; lines it had to drop are counted in one `log_dropped` warning.
    """

    def __init__(self, level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS[level]
        self.json = fmt == "json"
        self.stream = stream if stream is not None else sys.stderr
        self.clock = Clock()
        self.output: Output | StreamOutput = output_for(self.stream, LOG_QUEUE_LIMIT)
        self.output.on_recovered = lambda lines, _size: self.line("warning", "log_dropped", {"lines": lines})

    @property
    def debugging(self) -> bool:
        return self.threshold <= LEVELS["debug"]

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def line(self, level: str, event: str, fields: dict[str, Any]) -> bytes:
        """One event as the bytes of its line."""
        stamp = self.clock.stamp()
        if self.json:
            record = {"time": stamp, "level": _LEVEL_NAMES[level], "event": event}
            record.update({key: value for key, value in fields.items() if value is not None})
            text = _JSON.encode(record)
        else:
            head = f"{stamp} {_LEVEL_NAMES[level]} {event}"
            pairs = logfmt_pairs(fields)
            text = f"{head} {pairs}" if pairs else head
        return (text + "\n").encode("utf-8", "backslashreplace")

    def write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] >= self.threshold:
            self.output.write(self.line(level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self.write("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self.write("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.write("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self.write("error", event, fields)

    def failure(self, event: str, exc: BaseException, **fields: Any) -> None:
        """An unexpected exception: one error line, plus the traceback when debugging."""
        self.write("error", event, {**fields, "error": f"{type(exc).__name__}: {exc}"})
        if self.debugging:
            text = "".join(traceback.format_exception(exc))
            self.output.write(_printable_lines(text).encode("utf-8", "backslashreplace"))
