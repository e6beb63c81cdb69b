"""Output for people: the event log (logfmt or JSON on stderr) and the hex dump (stdout).

Both writers are plain objects handed to whoever needs them; nothing here is global.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

from proxy.hexdump import dump_lines

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_LEVEL_NAMES = {number: name.upper() for name, number in LEVELS.items()}


def _needs_quotes(text: str) -> bool:
    return not text or any(c in text for c in ' "=\\\n\t')


def logfmt_value(value: Any) -> str:
    """A value as logfmt writes it: bare when safe, else double-quoted with escapes."""
    text = value if isinstance(value, str) else str(value)
    if not _needs_quotes(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class EventLog:
    """Writes one line per event: `TIME LEVEL event key=value ...`, or one JSON object.

    `None` values are left out. With level `debug`, `failure` also writes the traceback.
    """

    def __init__(self, level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS[level]
        self.json = fmt == "json"
        self.stream = stream if stream is not None else sys.stderr

    @property
    def debugging(self) -> bool:
        return self.threshold <= LEVELS["debug"]

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        number = LEVELS[level]
        if number < self.threshold:
            return
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        if self.json:
            record = {"time": stamp, "level": _LEVEL_NAMES[number], "event": event}
            record.update((k, v) for k, v in fields.items() if v is not None)
            line = json.dumps(record, default=str)
        else:
            pairs = " ".join(f"{k}={logfmt_value(v)}" for k, v in fields.items() if v is not None)
            line = f"{stamp} {_LEVEL_NAMES[number]} {event} {pairs}".rstrip()
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr went away; serving traffic matters more than reporting it

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
            try:
                traceback.print_exception(exc, file=self.stream)
            except (OSError, ValueError):
                pass


def timestamp_us() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class HexdumpWriter:
    """Writes the contract's hex dump: event lines and, per chunk, a header and dump lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def _emit(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not take connections down with it

    def opened(self, conn: int, source: str, destination: str) -> None:
        self._emit(f"{timestamp_us()} conn={conn} open {source} -> {destination}\n")

    def closed(self, conn: int, result: str) -> None:
        self._emit(f"{timestamp_us()} conn={conn} close result={result}\n")

    def chunk(self, conn: int, direction: str, offset: int, data: memoryview, source: str, destination: str) -> None:
        header = f"{timestamp_us()} conn={conn} {direction} offset={offset} len={len(data)} {source} -> {destination}\n"
        self._emit(header + "\n".join(dump_lines(data)) + "\n")
