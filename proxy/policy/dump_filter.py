"""Which connections a `--dump-only` filter selects (placeholder until the full module lands)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxy.config.schema import DumpCondition

UNKNOWN: Any = object()


def holds(
    conditions: Sequence[DumpCondition],
    *,
    conn: int,
    listener: str,
    route: Any = UNKNOWN,
    client: Any = UNKNOWN,
    servers: Any = UNKNOWN,
) -> bool | None:
    verdict: bool | None = True
    for condition in conditions:
        key, value = condition.key, condition.value
        if key == "conn":
            ok: bool | None = conn == value
        elif key == "listener":
            ok = listener == value
        elif key == "route":
            ok = None if route is UNKNOWN else route is not None and str(route) == str(value)
        elif key == "client":
            ok = None if client is UNKNOWN else client is not None and client in value
        else:
            ok = None if servers is UNKNOWN else value in servers
        if ok is False:
            return False
        if ok is None:
            verdict = None
    return verdict
