"""The event log's lines, byte for byte: what a log reader parses must not move when the way a
line is made does."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import pytest

from proxy.log import Clock, EventLog

# Every kind of value a line may carry: numbers, names and addresses written bare, text that needs
# quotes or escapes, non-ASCII text, and values that are not text at all.
FIELDS = {
    "conn": 7,
    "listener": "edge",
    "route": "api",
    "client": "10.1.2.3:51234",
    "server": "[::1]:9001",
    "bytes_up": 18,
    "bytes_down": 0,
    "duration_ms": -1,
    "result": "closed",
    "reason": None,
    "empty": "",
    "spaced": "client: Connection reset by peer",
    "quoted": 'say "hi"',
    "equals": "a=b",
    "slash": "unix:\\x00name",
    "control": "esc\x1b[31m\n",
    "accent": "café",
    "wide": "a\u2028b",
    "flag": True,
    "ratio": 0.5,
    "tuple": ("a", 1),
}
# As the log wrote them before lines were made with a clock of their own and one pass over the fields.
TEXT = (
    b"INFO access conn=7 listener=edge route=api client=10.1.2.3:51234 server=[::1]:9001 bytes_up=18"
    b' bytes_down=0 duration_ms=-1 result=closed empty="" spaced="client: Connection reset by peer"'
    b' quoted="say \\"hi\\"" equals="a=b" slash="unix:\\\\x00name" control="esc\\x1b[31m\\n"'
    b' accent=caf\xc3\xa9 wide="a\\u2028b" flag=True ratio=0.5 tuple="(\'a\', 1)"\n'
)
JSON = (
    b'"level": "INFO", "event": "access", "conn": 7, "listener": "edge", "route": "api",'
    b' "client": "10.1.2.3:51234", "server": "[::1]:9001", "bytes_up": 18, "bytes_down": 0, "duration_ms": -1,'
    b' "result": "closed", "empty": "", "spaced": "client: Connection reset by peer", "quoted": "say \\"hi\\"",'
    b' "equals": "a=b", "slash": "unix:\\\\x00name", "control": "esc\\u001b[31m\\n", "accent": "caf\\u00e9",'
    b' "wide": "a\\u2028b", "flag": true, "ratio": 0.5, "tuple": ["a", 1]}\n'
)
STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


def test_a_text_line_is_its_time_then_the_fields_as_logfmt_writes_them():
    line = EventLog("info", "text", io.StringIO()).line("info", "access", FIELDS)
    stamp, rest = line.split(b" ", 1)
    assert STAMP.fullmatch(stamp), line
    assert rest == TEXT


def test_a_json_line_is_one_ascii_object_with_its_time_first():
    line = EventLog("info", "json", io.StringIO()).line("info", "access", FIELDS)
    head, rest = line.split(b", ", 1)
    assert STAMP.fullmatch(head.removeprefix(b'{"time": "').removesuffix(b'"')), line
    assert rest == JSON


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_line_without_fields_ends_with_its_event(fmt):
    line = EventLog("info", fmt, io.StringIO()).line("warning", "log_dropped", {"lines": None})
    ending = b" WARNING log_dropped\n" if fmt == "text" else b'"level": "WARNING", "event": "log_dropped"}\n'
    assert line.endswith(ending)


def _isoformat(ns: int) -> str:
    """What the log wrote before it had a clock: datetime.now(UTC) keeps whole microseconds."""
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(
    "ns",
    [
        0,
        999_999_999,  # the last nanosecond of a second: its milliseconds are 999, not rounded up
        1_000_000_000,
        1_764_064_802_410_999_999,
        1_798_761_599_999_000_000,  # the last millisecond of 2026
        1_798_761_600_000_000_000,  # the first of 2027
        951_782_400_123_456_789,  # 29 February 2000
    ],
)
def test_the_clock_writes_a_time_as_isoformat_does(ns):
    clock = Clock()
    clock.stamp(ns - 1_000_000_000)  # a second made before: the next one is made anew
    assert clock.stamp(ns) == _isoformat(ns)


def test_the_clock_writes_every_millisecond_of_a_second_it_has_made_once():
    clock = Clock()
    base = 1_764_064_802_000_000_000
    for ms in range(0, 1000, 7):
        ns = base + ms * 1_000_000 + 654_321
        assert clock.stamp(ns) == _isoformat(ns)


def test_the_clock_tells_the_time_now():
    before = datetime.now(UTC).isoformat(timespec="milliseconds")
    stamp = Clock().stamp()
    after = datetime.now(UTC).isoformat(timespec="milliseconds")
    assert before <= stamp <= after
