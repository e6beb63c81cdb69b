"""The access-log line: one per connection, written by the pair's `finish`, however it ended."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.relay.side import Side

if TYPE_CHECKING:
    from proxy.relay.pair import Pair


def access_fields(pair: Pair, result: str, reason: str | None, close_by: str) -> dict[str, object]:
    """The fields of `pair`'s access line, which ended with `result` (`reason`), by `close_by`, in
    the line's order (None: left out). Without a reason, a TLS stream that ended without
    close_notify says so, else the routing note. A plain side adds nothing: only a TLS side is
    asked for its fields, once a connection's every line would otherwise pay for two calls."""
    client, upstream = pair.client, pair.upstream
    plain = type(client) is Side and (upstream is None or type(upstream) is Side)
    if reason is None:
        reason = pair.note if plain else _no_close_notify(client, upstream) or pair.note
    fields: dict[str, object] = {
        "conn": pair.conn,
        "listener": pair.settings.listener,
        "route": pair.route,
        "client": client.address,
        "server": pair.server if upstream is None else upstream.address,
        "bytes_up": client.bytes_read,
        "bytes_down": 0 if upstream is None else upstream.bytes_read,
        "duration_ms": int((pair.runtime.reactor.now - pair.started) * 1000),
        "result": result,
        "reason": reason,
        "close_by": close_by,
        "connect_ms": None if pair.connect_ms is None else f"{pair.connect_ms:.3f}",
        "faults": None if pair.inspection is None else pair.inspection.fault_names,
        "sni": pair.sni,
    }
    if not plain:
        fields.update(client.log_fields())
    if pair.protocol is not None:  # a peek at the first bytes found out what they are
        fields.update(protocol=pair.protocol, alpn=pair.alpn, host=pair.host)
    if not plain and upstream is not None:
        fields.update(upstream.log_fields())
    if pair.credentials is not None:
        fields.update(pair.credentials)
    return fields


def _no_close_notify(client: Side, upstream: Side | None) -> str | None:
    """The reason for the first side whose TLS stream ended without close_notify, if any did."""
    for side in (client, upstream):
        if side is not None and side.truncated():
            return f"{side.name}: no close_notify"
    return None
