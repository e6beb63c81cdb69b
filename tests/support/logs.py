"""Reading the proxy's text log: the key=value pairs of one line."""

from __future__ import annotations

import re

_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_LOGFMT_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")
_LOGFMT_SHORT = {"n": "\n", "r": "\r", "t": "\t"}


def _unescape(match: re.Match) -> str:
    escape = match.group(1)
    return chr(int(escape[1:], 16)) if len(escape) > 1 else _LOGFMT_SHORT.get(escape, escape)


def logfmt(line: str) -> dict[str, str]:
    """The key=value pairs of one text log line (quotes removed, escapes decoded)."""
    fields = {}
    for key, value in _LOGFMT.findall(line):
        if value.startswith('"'):
            value = _LOGFMT_ESCAPE.sub(_unescape, value[1:-1])
        fields[key] = value
    return fields
